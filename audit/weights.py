"""Pretrained weights: one explicit manifest, a verified local store, and nothing used unverified.

Files live in ``$XRAY_AUDIT_HOME/weights`` (default: the user cache dir). A download goes to a
temp file in that directory, is hashed while it streams, and is renamed into place only when its
sha256 matches; a corrupt or partial file is never used. ``weights_path`` re-hashes the file
before returning it, so ``torch.load`` never sees bytes that were not verified.

Pins: the manifest carries a sha256 for every file this project has hashed itself. Entries the
project could not yet hash (weights are published without checksums and this project's build
machines are offline) carry ``sha256 = None``; for those, the user supplies the hash from a
trusted source with ``--sha256`` once, and it is recorded in ``pins.json`` beside the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from audit.atomic import atomic_path, sha256_file, write_text
from audit.paths import home_dir

PINS_FILE = "pins.json"
_HEX = frozenset("0123456789abcdef")


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    name: str
    url: str
    filename: str
    sha256: str | None  # None: not pinned by this release; see module docstring
    size: int | None
    description: str


_XRV = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
_DENSENET = "densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"

MANIFEST: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry(
            "densenet121-res224-all",
            _XRV + f"nih-pc-chex-mimic_ch-google-openi-kaggle-{_DENSENET}",
            f"nih-pc-chex-mimic_ch-google-openi-kaggle-{_DENSENET}",
            None,
            None,
            "torchxrayvision DenseNet-121, all datasets (default pathology classifier)",
        ),
        WeightsEntry(
            "densenet121-res224-nih",
            _XRV + f"nih-{_DENSENET}",
            f"nih-{_DENSENET}",
            None,
            None,
            "torchxrayvision DenseNet-121, NIH ChestX-ray14",
        ),
        WeightsEntry(
            "densenet121-res224-pc",
            _XRV + f"pc-{_DENSENET}",
            f"pc-{_DENSENET}",
            None,
            None,
            "torchxrayvision DenseNet-121, PadChest",
        ),
        WeightsEntry(
            "densenet121-res224-chex",
            _XRV + f"chex-{_DENSENET}",
            f"chex-{_DENSENET}",
            None,
            None,
            "torchxrayvision DenseNet-121, CheXpert",
        ),
        WeightsEntry(
            "densenet121-res224-rsna",
            _XRV + f"kaggle-{_DENSENET}",
            f"kaggle-{_DENSENET}",
            None,
            None,
            "torchxrayvision DenseNet-121, RSNA pneumonia",
        ),
        WeightsEntry(
            "densenet121-res224-mimic_nb",
            _XRV + f"mimic_nb-{_DENSENET}",
            f"mimic_nb-{_DENSENET}",
            None,
            None,
            "torchxrayvision DenseNet-121, MIMIC-CXR (NegBio labels)",
        ),
        WeightsEntry(
            "densenet121-res224-mimic_ch",
            _XRV + f"mimic_ch-{_DENSENET}",
            f"mimic_ch-{_DENSENET}",
            None,
            None,
            "torchxrayvision DenseNet-121, MIMIC-CXR (CheXpert labels)",
        ),
        WeightsEntry(
            "pspnet-chestx-det",
            _XRV + "pspnet_chestxray_best_model_4.pth",
            "pspnet_chestxray_best_model_4.pth",
            None,
            None,
            "torchxrayvision PSPNet anatomy segmenter (ChestX-Det)",
        ),
        WeightsEntry(
            "inception-v3-fid",
            "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",
            "weights-inception-2015-12-05-6726825d.pth",
            None,
            None,
            "torch-fidelity Inception-v3 (TF FID port) for FID",
        ),
    )
}


class WeightsError(RuntimeError):
    """Weights are missing, unverifiable or corrupt; the message says how to fix it."""


def weights_dir() -> Path:
    d = home_dir() / "weights"
    d.mkdir(parents=True, exist_ok=True)
    return d


def entry(name: str) -> WeightsEntry:
    try:
        return MANIFEST[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(MANIFEST)}") from None


def check_sha256(value: str) -> str:
    value = value.strip().lower()
    if len(value) != 64 or not set(value) <= _HEX:
        raise WeightsError(f"{value!r} is not a sha256 (64 hex characters)")
    return value


def _pins() -> dict[str, str]:
    path = weights_dir() / PINS_FILE
    if not path.exists():
        return {}
    try:
        pins = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}); delete it and re-pin with --sha256") from None
    return {k: check_sha256(v) for k, v in pins.items()}


def _record_pin(name: str, sha: str) -> None:
    pins = _pins()
    pins[name] = sha
    write_text(weights_dir() / PINS_FILE, json.dumps(pins, indent=2, sort_keys=True) + "\n")


def expected_sha256(name: str) -> str | None:
    """The manifest's pin, else the user's recorded pin, else None."""
    return entry(name).sha256 or _pins().get(name)


def _fix_hint(e: WeightsEntry) -> str:
    fetch_pin = "" if e.sha256 else " --sha256 <HEX>"
    import_pin = "" if e.sha256 else f" --sha256 {e.name}=<HEX>"
    return (
        f"Fix: `xray-audit weights fetch {e.name}{fetch_pin}` (needs internet), or download {e.url} on another "
        f"machine, put {e.filename} in a folder DIR here and run `xray-audit weights import DIR{import_pin}`."
    )


@dataclasses.dataclass(frozen=True)
class Status:
    name: str
    state: str  # "ok" | "missing" | "corrupt" | "unpinned"
    path: Path
    detail: str = ""


def status(name: str) -> Status:
    e = entry(name)
    path = weights_dir() / e.filename
    if not path.is_file():
        return Status(name, "missing", path)
    expected = expected_sha256(name)
    actual = sha256_file(path)
    if expected is None:
        return Status(name, "unpinned", path, f"sha256 {actual}; no pin to verify against")
    if actual != expected:
        return Status(name, "corrupt", path, f"sha256 {actual}, expected {expected}")
    return Status(name, "ok", path)


def weights_path(name: str) -> Path:
    """The verified local file of ``name``; raises WeightsError naming the file and the fix otherwise."""
    e = entry(name)
    st = status(name)
    if st.state == "ok":
        return st.path
    if st.state == "missing":
        raise WeightsError(f"weights {name!r} ({e.filename}) are not in {weights_dir()}. {_fix_hint(e)}")
    if st.state == "unpinned":
        raise WeightsError(
            f"weights {name!r} at {st.path} cannot be verified: this release pins no sha256 for it. "
            f"Record the hash from a trusted source with "
            f"`xray-audit weights import {st.path.parent} --sha256 {name}=<HEX>`."
        )
    raise WeightsError(
        f"weights {name!r} at {st.path} are corrupt ({st.detail}); delete the file. {_fix_hint(e)}"
    )


def fetch(name: str, sha256: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download, verify while streaming, then rename into place; returns the verified path."""
    e = entry(name)
    expected = _resolve_expected(e, sha256)
    dest = weights_dir() / e.filename
    if dest.is_file() and sha256_file(dest) == expected:
        return dest
    try:
        response = urllib.request.urlopen(e.url, timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsError(f"cannot download {e.url} ({exc}). {_fix_hint(e)}") from None
    with response, atomic_path(dest) as tmp:
        h = hashlib.sha256()
        total = int(response.headers.get("Content-Length") or 0) or e.size
        from tqdm.auto import tqdm

        with (
            open(tmp, "wb") as fh,
            tqdm(total=total, unit="B", unit_scale=True, desc=e.filename, disable=not progress) as bar,
        ):
            try:
                for block in iter(lambda: response.read(1 << 20), b""):
                    fh.write(block)
                    h.update(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise WeightsError(
                    f"download of {e.url} broke off ({exc!r}); the partial file was discarded"
                ) from None
        actual = h.hexdigest()
        if actual != expected:
            raise WeightsError(
                f"download of {e.url} has sha256 {actual}, expected {expected}; the file was discarded "
                "(partial download or changed upstream file)"
            )
    if sha256 and not e.sha256:
        _record_pin(name, expected)
    return dest


def _resolve_expected(e: WeightsEntry, sha256: str | None) -> str:
    given = check_sha256(sha256) if sha256 else None
    pinned = e.sha256 or _pins().get(e.name)
    if given and pinned and given != pinned:
        raise WeightsError(f"--sha256 {given} contradicts the pin {pinned} for {e.name}")
    expected = given or pinned
    if expected is None:
        raise WeightsError(
            f"this release pins no sha256 for {e.name!r}, so a download could not be verified. "
            "Pass --sha256 <HEX> from a trusted source; it is recorded for later verification."
        )
    return expected


def import_dir(
    source: Path, pins: Mapping[str, str] | None = None
) -> tuple[list[tuple[str, Path]], list[str]]:
    """Copy manifest files found in ``source`` into the store, verifying each.

    ``pins`` maps a weights name to a user-supplied sha256 for entries the manifest does not pin.
    Returns (imported (name, path) pairs, reasons for files found but skipped). A file whose hash
    does not match is an error: it must not be silently ignored.
    """
    source = Path(source)
    if not source.is_dir():
        raise WeightsError(f"{source} is not a directory")
    pins = dict(pins or {})
    for name in pins:
        entry(name)
    imported: list[tuple[str, Path]] = []
    skipped: list[str] = []
    for e in MANIFEST.values():
        src = source / e.filename
        if not src.is_file():
            continue
        try:
            expected = _resolve_expected(e, pins.get(e.name))
        except WeightsError as exc:
            skipped.append(f"{src.name}: {exc}")
            continue
        actual = sha256_file(src)
        if actual != expected:
            raise WeightsError(f"{src} has sha256 {actual}, expected {expected} for {e.name}; not imported")
        dest = weights_dir() / e.filename
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        if sha256_file(dest) != expected:  # the copy itself must not have been damaged
            dest.unlink()
            raise WeightsError(f"copying {src} to {dest} damaged the file; check the disk")
        if pins.get(e.name) and not e.sha256:
            _record_pin(e.name, expected)
        imported.append((e.name, dest))
    if not imported and not skipped:
        wanted = ", ".join(e.filename for e in MANIFEST.values())
        raise WeightsError(f"no known weights files in {source}; expected file names: {wanted}")
    return imported, skipped


def statuses() -> Iterator[Status]:
    for name in MANIFEST:
        yield status(name)
