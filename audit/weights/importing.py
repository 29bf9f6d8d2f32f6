"""Importing files users already have: a folder brought from another machine, or the caches of
torchxrayvision, torch hub and Hugging Face. Every file is checked (size, then sha256) against its pin
before it is copied into the store, and the copy is checked again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from audit.atomic import atomic_path, sha256_file
from audit.weights import manifest, store
from audit.weights.manifest import WeightsEntry, WeightsError


@dataclasses.dataclass
class ImportReport:
    imported: list[tuple[str, Path]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)  # "path: why", for files that were found
    mismatched: list[str] = dataclasses.field(default_factory=list)  # found, pinned, and wrong
    searched: list[Path] = dataclasses.field(default_factory=list)


def default_search_dirs() -> list[Path]:
    """Where users already keep these files (the same resolution rules as the tools that wrote them)."""
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    torch_home = Path(os.environ.get("TORCH_HOME") or xdg / "torch")
    hf_hub = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]) / "hub")
        if os.environ.get("HF_HOME")
        else str(xdg / "huggingface" / "hub")
    )
    return [home / ".torchxrayvision" / "models_data", torch_home / "hub" / "checkpoints", Path(hf_hub)]


def _hub_entries() -> list[WeightsEntry]:
    names = [n for n, e in manifest.MANIFEST.items() if e.hub]
    names += [n for n in store.user_pins() if manifest.is_hub_spec(n) and n not in names]
    return [e for e in map(store.entry_or_none, names) if e is not None]


def _files_for(e: WeightsEntry, directory: Path) -> dict[str, Path]:
    """The files of ``e`` in ``directory`` (a hub entry's also in the Hugging Face cache layout)."""
    if e.hub:
        snap = directory / f"models--{e.repo.replace('/', '--')}" / "snapshots" / e.revision
        for root in (snap, directory):
            found = {f.filename: root / f.filename for f in e.files if (root / f.filename).is_file()}
            if found:
                return found
        return {}
    for name in (e.filename, *e.aliases):
        if (directory / name).is_file():
            return {e.filename: directory / name}
    return {}


def _candidates(directory: Path, explicit: bool) -> Iterator[tuple[WeightsEntry, dict[str, Path]]]:
    """(entry, filename -> found path) for every entry whose files are in ``directory``."""
    for e in manifest.MANIFEST.values():
        if e.hub:
            continue
        for name in (e.filename, *e.aliases):
            if (directory / name).is_file():
                yield e, {e.filename: directory / name}
                break
    for e in _hub_entries():
        # The Hugging Face cache layout: models--ORG--NAME/snapshots/REVISION/FILE (symlinks to blobs).
        snap = directory / f"models--{e.repo.replace('/', '--')}" / "snapshots" / e.revision
        for root in (snap, directory) if explicit else (snap,):
            found = {f.filename: root / f.filename for f in e.files if (root / f.filename).is_file()}
            if found and (root == snap or _matches_release(e, found)):
                yield e, found
                break


def _matches_release(e: WeightsEntry, found: Mapping[str, Path]) -> bool:
    """A plain folder of hub files (config.json, ...) is this entry only if its weights file is pinned
    and matches: the file names alone say nothing about which model it is."""
    weights = next((f for f in e.files if f.filename == e.filename), None)
    if weights is None or not weights.sha256 or e.filename not in found:
        return False
    return not store.check_file(found[e.filename], store.Pin(weights.sha256, weights.size, "release"))


def import_dir(
    source: Path | None = None,
    pins: Mapping[str, str] | None = None,
    *,
    trust: bool = False,
    name: str | None = None,
) -> ImportReport:
    """Copy the known weights found in ``source`` (default: the usual caches) into the store.

    ``pins`` maps a weights name to a user-supplied sha256 for single-file entries this release does
    not pin; ``trust`` pins whatever unpinned file is found (recorded with the date and the path).
    ``name`` says which entry ``source`` holds (needed for an ``hf:ORG/NAME@REVISION`` folder, whose
    file names alone do not say which model it is).
    """
    pins = {k: store.check_sha256(v) for k, v in (pins or {}).items()}
    if name is not None:
        if source is None:
            raise WeightsError("--name says which entry DIR holds; give DIR as well")
        e = manifest.entry(name)
        source = Path(source).expanduser()
        found = _files_for(e, source) if source.is_dir() else {}
        if not found:
            wanted = ", ".join(f.filename for f in e.files)
            raise WeightsError(f"{source} holds none of {wanted} for {name}")
        report = ImportReport(searched=[source])
        _import_entry(e, found, pins.get(name), trust, report)
        return report
    for pinned in pins:
        if manifest.entry(pinned).hub:
            raise WeightsError(
                f"--sha256 {pinned}=...: a hub entry has several files; use --trust or hf_sha256"
            )
    explicit = source is not None
    if explicit:
        source = Path(source).expanduser()
        if not source.is_dir():
            raise WeightsError(f"{source} is not a directory")
        dirs = [source]
    else:
        dirs = default_search_dirs()
    report = ImportReport(searched=dirs)
    done: set[str] = set()
    for directory in dirs:
        if not directory.is_dir():
            continue
        for e, found in _candidates(directory, explicit):
            if e.name in done:
                continue
            if _import_entry(e, found, pins.get(e.name), trust, report):
                done.add(e.name)
    if explicit and not (report.imported or report.skipped or report.mismatched):
        wanted = ", ".join(e.filename for e in manifest.MANIFEST.values() if not e.hub)
        raise WeightsError(
            f"no known weights files in {source}; expected file names: {wanted}, a Hugging Face cache "
            "(models--ORG--NAME/snapshots/REVISION/) or RadDino's config.json, preprocessor_config.json and "
            "model.safetensors"
        )
    return report


def _import_entry(
    e: WeightsEntry, found: dict[str, Path], given: str | None, trust: bool, report: ImportReport
) -> bool:
    where = ", ".join(str(p) for p in found.values())
    missing = [f.filename for f in e.files if f.filename not in found]
    if missing:
        report.skipped.append(f"{where}: {e.name} also needs {', '.join(missing)}, which are not there")
        return False
    pins = store.pins_of(e)
    if given:
        if pins[e.filename] and pins[e.filename].sha256 != given:  # type: ignore[union-attr]
            raise WeightsError(f"--sha256 {given} contradicts the pin {pins[e.filename].sha256} for {e.name}")  # type: ignore[union-attr]
        pins[e.filename] = pins[e.filename] or store.Pin(given, None, "user-sha256")
    unpinned = [f for f, p in pins.items() if p is None]
    if unpinned and not trust:
        folder = Path(next(iter(found.values()))).parent
        named = f" --name {e.name}" if e.hub else ""
        report.skipped.append(
            f"{where}: {e.name} is not pinned by this release; run `xray-audit weights import "
            f"{folder}{named} --trust` to pin it"
            + (f" (or --sha256 {e.name}=<HEX> from a source you trust)" if not e.hub else "")
        )
        return False
    for filename, path in found.items():
        pin = pins[filename]
        if pin is not None:
            problem = store.check_file(path, pin)
            if problem:
                report.mismatched.append(f"{path}: {e.name} does not match its pin ({problem}); not imported")
                return False
    dest_dir = store.entry_dir(e)
    if store.status(e.name).state == "ok" and not unpinned:
        report.imported.append((e.name, store.entry_path(e)))
        return True
    hashes: dict[str, tuple[str, int]] = {}
    for filename, path in found.items():
        dest = dest_dir / filename
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)
        hashes[filename] = (sha256_file(dest), dest.stat().st_size)
        expected = pins[filename].sha256 if pins[filename] else sha256_file(path)  # type: ignore[union-attr]
        if hashes[filename][0] != expected:  # the copy itself must not have been damaged
            dest.unlink()
            raise WeightsError(f"copying {path} to {dest} damaged the file; check the disk")
    new = {f: hashes[f] for f in found if store.pins_of(e)[f] is None}
    if new:
        origin = str(next(iter(found.values())).parent)
        store.record_pin(e.name, new, "trust" if trust and not given else "sha256", origin)
    report.imported.append((e.name, store.entry_path(e)))
    return True
