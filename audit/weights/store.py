"""The verified local store: where each entry's files live, which pin each is checked against, and
whether the files on disk match it.

Files live in ``$XRAY_AUDIT_HOME/weights`` (default: the user cache dir): single files at the top, a
hub entry's files under ``hub/ORG--NAME/REVISION/``. Every lookup checks the size first (cheap, and it
catches truncated copies) and then the sha256, so nothing unverified is ever returned.

Where a pin comes from, in order: this release (``release``, or ``release-one-source`` where only
one public project published the hash), the study config (``config``: ``[evaluators].hf_sha256``),
or the user's own record in ``pins.json``: ``user-sha256`` (``--sha256 HEX`` from a source they
trust) or ``user-trust`` (``--trust``: the hash of whatever the first download delivered, with its
date and source; it protects later runs from a changed file, not the first one).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

from audit.atomic import sha256_file, write_text
from audit.paths import home_dir
from audit.weights import manifest
from audit.weights.manifest import WeightsEntry, WeightsError

PINS_FILE = "pins.json"
_HEX = frozenset("0123456789abcdef")

PinSource = Literal["release", "release-one-source", "config", "user-sha256", "user-trust"]
PIN_WORDS: dict[str, str] = {
    "release": "verified against the hash pinned by this release",
    "release-one-source": "verified against the hash pinned by this release (one public source only)",
    "config": "verified against the hash given in the study config",
    "user-sha256": "verified against the hash you recorded with --sha256",
    "user-trust": "pinned by you on first download (--trust); not independently verified",
}


def weights_dir() -> Path:
    d = home_dir() / "weights"
    d.mkdir(parents=True, exist_ok=True)
    return d


def entry_dir(e: WeightsEntry) -> Path:
    if e.hub:
        return weights_dir() / "hub" / e.repo.replace("/", "--") / e.revision
    return weights_dir()


def entry_path(e: WeightsEntry) -> Path:
    """What an evaluator loads: the file of a single-file entry, the snapshot directory of a hub entry."""
    return entry_dir(e) if e.hub else entry_dir(e) / e.filename


def check_sha256(value: str) -> str:
    value = str(value).strip().lower()
    if len(value) != 64 or not set(value) <= _HEX:
        raise WeightsError(f"{value!r} is not a sha256 (64 hex characters)")
    return value


# --------------------------------------------------------------------------------------------- pins


@dataclasses.dataclass(frozen=True)
class Pin:
    sha256: str
    size: int | None
    source: PinSource
    date: str = ""
    origin: str = ""  # where the user's pinned bytes came from (a URL or a path)

    @property
    def note(self) -> str:
        words = PIN_WORDS[self.source]
        if self.source == "user-trust":
            return f"pinned by you on first download ({self.date}, from {self.origin}); not independently verified"
        if self.source == "user-sha256" and self.date:
            return f"{words} on {self.date}"
        return words


def _pins_path() -> Path:
    return weights_dir() / PINS_FILE


def user_pins() -> dict[str, dict]:
    """``pins.json``: name -> {"how", "date", "source", "files": {filename: {"sha256", "size"}}}."""
    path = _pins_path()
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}); delete it and pin again") from None
    out = {}
    for name, value in raw.items():
        if isinstance(value, str):  # an earlier release stored the bare hash of a single-file entry
            try:
                filename = manifest.entry(name).filename
            except WeightsError:
                continue
            value = {"how": "sha256", "date": "", "source": "", "files": {filename: {"sha256": value}}}
        out[name] = value
    return out


def record_pin(
    name: str, files: Mapping[str, tuple[str, int]], how: Literal["sha256", "trust"], origin: str
) -> None:
    """Record the user's pin of ``name`` (filename -> (sha256, size)) with today's date."""
    pins = user_pins()
    pins[name] = {
        "how": how,
        "date": dt.date.today().isoformat(),
        "source": origin,
        "files": {f: {"sha256": check_sha256(s), "size": int(n)} for f, (s, n) in sorted(files.items())},
    }
    write_text(_pins_path(), json.dumps(pins, indent=2, sort_keys=True) + "\n")


def pins_of(e: WeightsEntry, config: Mapping[str, str] | None = None) -> dict[str, Pin | None]:
    """filename -> the pin it is checked against (None: nothing pins it)."""
    user = user_pins().get(e.name, {})
    out: dict[str, Pin | None] = {}
    for f in e.files:
        if f.sha256:
            kind: PinSource = "release" if e.public_sources != 1 else "release-one-source"
            out[f.filename] = Pin(f.sha256, f.size, kind)
        elif config and f.filename in config:
            out[f.filename] = Pin(check_sha256(config[f.filename]), None, "config")
        elif f.filename in user.get("files", {}):
            rec = user["files"][f.filename]
            how: PinSource = "user-trust" if user.get("how") == "trust" else "user-sha256"
            out[f.filename] = Pin(
                check_sha256(rec["sha256"]),
                rec.get("size"),
                how,
                user.get("date", ""),
                user.get("source", ""),
            )
        else:
            out[f.filename] = None
    return out


def expected_sha256(name: str) -> str | None:
    """The pin of a single-file entry's file (a hub entry's weights file), or None."""
    e = manifest.entry(name)
    pin = pins_of(e)[e.filename]
    return pin.sha256 if pin else None


# --------------------------------------------------------------------------------------------- status


@dataclasses.dataclass(frozen=True)
class Status:
    name: str
    state: Literal["ok", "missing", "mismatch", "unpinned"]
    path: Path
    detail: str = ""
    pin: str = ""  # the weakest pin source among the entry's files
    pin_note: str = ""
    weights_sha256: str = ""  # the weights file's pin


_STRENGTH = ("release", "release-one-source", "config", "user-sha256", "user-trust")


def check_file(path: Path, pin: Pin) -> str:
    """Why ``path`` does not match ``pin`` ("" when it does): size first, then the hash."""
    return measure_file(path, pin)[0]


def measure_file(path: Path, pin: Pin | None) -> tuple[str, str]:
    """(why ``path`` does not match ``pin`` or "", its sha256): the size is checked first, and the
    file is hashed at most once (no hash when the size already fails). ``pin`` None: only hashed."""
    size = path.stat().st_size
    if pin is not None and pin.size is not None and size != pin.size:
        return f"{path.name}: {size:,} bytes, expected {pin.size:,} (truncated or a different file)", ""
    actual = sha256_file(path)
    if pin is not None and actual != pin.sha256:
        return f"{path.name}: sha256 {actual}, expected {pin.sha256}", actual
    return "", actual


def status(name: str, config: Mapping[str, str] | None = None) -> Status:
    e = manifest.entry(name)
    root = entry_dir(e)
    pins = pins_of(e, config)
    present = [f.filename for f in e.files if (root / f.filename).is_file()]
    path = entry_path(e)
    weakest = max((p.source for p in pins.values() if p), key=_STRENGTH.index, default="")
    notes = {p.note for p in pins.values() if p}
    pin_note = "; ".join(sorted(notes)) if weakest else ""
    weights_pin = pins.get(e.filename)
    common = {
        "pin": weakest,
        "pin_note": pin_note,
        "weights_sha256": weights_pin.sha256 if weights_pin else "",
    }
    if len(present) < len(e.files):
        missing = [f.filename for f in e.files if f.filename not in present]
        detail = f"missing {', '.join(missing)}" if present else ""
        return Status(name, "missing", path, detail, **common)
    unpinned = [f for f, p in pins.items() if p is None]
    if unpinned:
        return Status(
            name, "unpinned", path, f"no pin for {', '.join(unpinned)}; nothing to verify against", **common
        )
    for f in e.files:
        problem = check_file(root / f.filename, pins[f.filename])  # type: ignore[arg-type]
        if problem:
            return Status(name, "mismatch", path, problem, **common)
    return Status(name, "ok", path, **common)


def entry_or_none(name: str) -> WeightsEntry | None:
    """The entry ``name``, or None for a name this release does not know (a hand-edited pins.json)."""
    try:
        return manifest.entry(name)
    except WeightsError:
        return None


def statuses() -> Iterator[Status]:
    for name in manifest.MANIFEST:
        yield status(name)
    for name in sorted(user_pins()):
        if manifest.is_hub_spec(name) and name not in manifest.MANIFEST and entry_or_none(name):
            yield status(name)


def fix_hint(e: WeightsEntry) -> str:
    if e.hub:
        files = " ".join(f.filename for f in e.files)
        trust = "" if e.released_pins() else " --trust"
        named = "" if e.released_pins() else f" --name {e.name}"
        return (
            f"Fix: `xray-audit weights fetch {e.name}{trust}` (needs internet), or on another machine run "
            f"`huggingface-cli download {e.repo} {files} --revision {e.revision} --local-dir DIR`, copy DIR "
            f"here and run `xray-audit weights import DIR{named}{trust}`."
        )
    pin = "" if e.released_pins() else " --trust (or --sha256 <HEX> from a source you trust)"
    import_pin = "" if e.released_pins() else " --trust"
    return (
        f"Fix: `xray-audit weights fetch {e.name}{pin}` (needs internet), or download {e.url} on another "
        f"machine, put {e.filename} in a folder DIR here and run `xray-audit weights import DIR{import_pin}`."
    )


def weights_path(name: str, config: Mapping[str, str] | None = None) -> Path:
    """The verified local file (hub: snapshot dir) of ``name``; raises WeightsError naming the fix."""
    return require(status(name, config))


def require(st: Status) -> Path:
    """The path of an ``ok`` status; otherwise the WeightsError that names the fix. Callers that also
    need the pin take the status once and pass it here, so a 270 MB file is hashed once."""
    name = st.name
    e = manifest.entry(name)
    if st.state == "ok":
        return st.path
    if st.state == "missing":
        what = e.filename if not e.hub else f"{e.repo}@{e.revision[:12]}"
        extra = f" ({st.detail})" if st.detail else ""
        raise WeightsError(f"weights {name!r} ({what}) are not in {entry_dir(e)}{extra}. {fix_hint(e)}")
    if st.state == "unpinned":
        raise WeightsError(
            f"weights {name!r} at {st.path} cannot be verified: {st.detail}. Pin them with "
            f"`xray-audit weights import {entry_dir(e)}{f' --name {name}' if e.hub else ''} --trust`"
            + (" or [evaluators].hf_sha256 in the study config" if e.hub else "")
            + (f" or `--sha256 {name}=<HEX>`" if not e.hub else "")
            + "."
        )
    raise WeightsError(
        f"weights {name!r} at {st.path} do not match their pin ({st.detail}); delete the file. {fix_hint(e)}"
    )
