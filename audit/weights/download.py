"""Downloads that only ever leave verified files in the store.

A URL download streams into ``NAME.part`` beside the store; an interrupted download keeps that part
and the next ``fetch`` resumes it with an HTTP ``Range`` request (or starts over when the server
ignores the range). The part is renamed into place only once its size and then its sha256 match the
pin; a part that grew past the pinned size or hashes wrong is deleted. Hub entries go through
``huggingface_hub.snapshot_download`` at the pinned commit into a staging folder (which resumes
itself), and each file is checked before it is moved into the store.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from audit.weights import manifest, store
from audit.weights.manifest import WeightsEntry, WeightsError

PART_SUFFIX = ".part"


def fetch(
    name: str,
    sha256: str | None = None,
    *,
    trust: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    config: Mapping[str, str] | None = None,
) -> Path:
    """Download ``name``, verify it and return its store path.

    ``sha256``: the user's hash for an entry this release does not pin (recorded as their pin);
    ``trust``: pin whatever arrives (recorded with the date and source). Pinned entries ignore both
    (a contradicting ``sha256`` is an error).
    """
    e = manifest.entry(name)
    if sha256 and trust:
        raise WeightsError("pass either --sha256 or --trust, not both")
    if e.hub:
        if sha256:
            raise WeightsError(
                f"{name} has several files, so one --sha256 cannot pin it: fetch it with --trust, and put the "
                "hashes you trust in the study's [evaluators].hf_sha256, which every run checks"
            )
        return _fetch_hub(e, trust=trust, progress=progress, config=config)
    return _fetch_url(e, sha256, trust=trust, progress=progress, timeout=timeout)


def _expected(e: WeightsEntry, sha256: str | None, trust: bool) -> store.Pin | None:
    pin = store.pins_of(e)[e.filename]
    given = store.check_sha256(sha256) if sha256 else None
    if given and pin and pin.source == "user-trust":
        # A hash from a source the user trusts is better evidence than their own first download.
        return store.Pin(given, None, "user-sha256")
    if given and pin and given != pin.sha256:
        raise WeightsError(f"--sha256 {given} contradicts the pin {pin.sha256} ({pin.source}) for {e.name}")
    if pin:
        return pin
    if given:
        return store.Pin(given, None, "user-sha256")
    if trust:
        return None
    raise WeightsError(
        f"this release pins no sha256 for {e.name!r}, so a download could not be verified. Pass --sha256 "
        "<HEX> from a source you trust, or --trust to pin what this first download delivers (shown as "
        "'pinned by you on first download' wherever its numbers appear)."
    )


def _fetch_url(e: WeightsEntry, sha256: str | None, *, trust: bool, progress: bool, timeout: float) -> Path:
    previous = store.pins_of(e)[e.filename]
    expected = _expected(e, sha256, trust)
    record = previous is None or (expected is not None and expected.source != previous.source)
    dest = store.entry_path(e)
    part = dest.with_name(dest.name + PART_SUFFIX)
    if expected is None:
        # Nothing can check a resumed part, so a stale one (an error page, another version) would be
        # pinned as if it came from the URL: a --trust download always starts from nothing.
        part.unlink(missing_ok=True)
    if dest.is_file() and expected is not None and not store.check_file(dest, expected):
        if record:
            store.record_pin(e.name, {e.filename: (expected.sha256, dest.stat().st_size)}, "sha256", e.url)
        return dest
    _download(e, part, expected.size if expected else None, progress, timeout)
    size = part.stat().st_size
    actual = _accept(
        part, expected, e.url, "a changed upstream file, a proxy rewriting it, or a wrong --sha256"
    )
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)
    if record:
        store.record_pin(
            e.name, {e.filename: (actual, size)}, "trust" if expected is None else "sha256", e.url
        )
    return dest


def _accept(path: Path, pin: store.Pin | None, what: str, likely: str) -> str:
    """The sha256 of a fresh download (hashed once); one that does not match its pin is deleted."""
    problem, sha = store.measure_file(path, pin)
    if problem:
        path.unlink()
        raise WeightsError(
            f"download of {what} does not match its pin ({problem}); the file was discarded ({likely})"
        )
    return sha


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None); None when absent or malformed."""
    if not value or not value.startswith("bytes "):
        return None
    span, _, total = value[6:].partition("/")
    start = span.split("-", 1)[0]
    if not start.isdigit():
        return None
    return int(start), int(total) if total.isdigit() else None


def _download(e: WeightsEntry, part: Path, size: int | None, progress: bool, timeout: float) -> None:
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    request = urllib.request.Request(e.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        unsatisfiable = _content_range((exc.headers or {}).get("Content-Range", "").replace("*", "0-0"))
        if exc.code == 416 and have and unsatisfiable and unsatisfiable[1] == have:
            return  # the part holds exactly the bytes the server has; the pin check follows
        if exc.code == 416 and have:
            part.unlink()  # the part does not fit this file: the next try starts over
            raise WeightsError(
                f"the partial download {part} does not fit {e.url}; it was deleted, run the command again"
            ) from None
        raise WeightsError(f"cannot download {e.url} (HTTP {exc.code}). {store.fix_hint(e)}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsError(f"cannot download {e.url} ({exc}). {store.fix_hint(e)}") from None
    from tqdm.auto import tqdm

    with response:
        resumed = have > 0 and response.status == 206
        expected_total = None
        if resumed:
            span = _content_range(response.headers.get("Content-Range"))
            if span is None or span[0] != have:
                resumed = False  # a range we did not ask for: never stitch it onto our part
            else:
                expected_total = span[1]
        if not resumed:
            have = 0  # the server ignored the range: start over
        length = int(response.headers.get("Content-Length") or 0)
        if not resumed and response.status == 206:
            part.unlink(missing_ok=True)  # so the next try asks for the whole file
            raise WeightsError(
                f"{e.url} answered with a range we did not ask for; the partial file was deleted, run the "
                "command again to download the whole file"
            )
        total = size or expected_total or (have + length if length else None)
        with (
            open(part, "ab" if resumed else "wb") as fh,
            tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=e.filename, disable=not progress
            ) as bar,
        ):
            try:
                for block in iter(lambda: response.read(1 << 20), b""):
                    fh.write(block)
                    have += len(block)
                    bar.update(len(block))
                    if size is not None and have > size:
                        break
            except (OSError, http.client.HTTPException) as exc:
                fh.close()
                raise WeightsError(
                    f"download of {e.url} broke off after {have:,} bytes ({exc!r}); the partial file {part} "
                    "was kept: run the same command again to resume it"
                ) from None
    if size is not None and have > size:
        part.unlink()
        raise WeightsError(
            f"download of {e.url} is larger than the pinned {size:,} bytes; the file was discarded (a "
            "changed upstream file or a proxy error page)"
        )
    complete = expected_total if resumed else (length or None)
    if complete and have < complete:
        raise WeightsError(
            f"download of {e.url} ended after {have:,} of {complete:,} bytes; the partial file {part} was "
            "kept: run the same command again to resume it"
        )
    if complete and have > complete:
        part.unlink()
        raise WeightsError(f"download of {e.url} gave more bytes than the server announced; discarded")


def _fetch_hub(e: WeightsEntry, *, trust: bool, progress: bool, config: Mapping[str, str] | None) -> Path:
    pins = store.pins_of(e, config)
    unpinned = [f for f, p in pins.items() if p is None]
    if unpinned and not trust:
        raise WeightsError(
            f"nothing pins {', '.join(unpinned)} of {e.repo}@{e.revision}; pass --trust to pin what this "
            "first download delivers (a study's [evaluators].hf_sha256, where given, is checked again "
            "against these files at every run)"
        )
    final = store.entry_dir(e)
    if store.status(e.name, config).state == "ok":
        return final
    staging = store.weights_dir() / "hub" / ".incoming" / f"{e.repo.replace('/', '--')}@{e.revision}"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        quiet_before = are_progress_bars_disabled()
        if not progress:
            disable_progress_bars()
        try:
            snapshot_download(
                e.repo, revision=e.revision, allow_patterns=[f.filename for f in e.files], local_dir=staging
            )
        finally:
            if not progress and not quiet_before:
                enable_progress_bars()
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many kinds (offline, 404, auth, disk)
        raise WeightsError(
            f"cannot download {e.repo} at {e.revision} ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0]}). {store.fix_hint(e)}"
        ) from None
    found: dict[str, tuple[str, int]] = {}
    for f in e.files:
        src = staging / f.filename
        if not src.is_file():
            raise WeightsError(
                f"{e.repo}@{e.revision} has no {f.filename}; a feature backbone needs "
                f"{', '.join(manifest.HUB_FILES)} (safetensors weights, no pickles)"
            )
        sha = _accept(src, pins[f.filename], f"{e.repo}@{e.revision}", "a changed file at that commit")
        found[f.filename] = (sha, src.stat().st_size)
    final.mkdir(parents=True, exist_ok=True)
    for f in e.files:
        os.replace(staging / f.filename, final / f.filename)
    shutil.rmtree(staging, ignore_errors=True)
    if unpinned:
        origin = f"https://huggingface.co/{e.repo} at {e.revision}"
        store.record_pin(e.name, {f: found[f] for f in unpinned}, "trust", origin)
    return final
