"""Per-image evaluator outputs (features, probabilities, segmentations), cached by content.

An entry is keyed by the sha256 of the image's content and by an :class:`EvaluatorKey` (evaluator
name, weights sha256, preprocessing version). Nothing about the run, the model that generated the
image or its path enters the key, so rerunning a study or adding a model only computes images the
evaluator has never seen, and two studies sharing a cache directory share their work.

Layout::

    <root>/<evaluator-slug>-<key-hash>/key.json           the key's fields, for humans and checks
    <root>/<evaluator-slug>-<key-hash>/<sha[:2]>/<sha>.xfc  one entry per image (see encode_entry)

One file per image rather than packed shards: every entry is written with an atomic rename, so
concurrent writers (two studies, or two processes of one) never need a lock, a killed writer
leaves at most a ``.tmp-*`` file, and two writers racing on one entry write the same arrays, so
whichever rename lands last is as good as the other. At 100k images the layout is ~400 files per
fan-out directory, which local and network filesystems handle without trouble; packed shards
would save inodes but need locking or an index to append safely, which is not worth it here.

Boolean arrays (segmentation masks) are stored bit-packed and zlib-compressed: a
3 x 1024 x 1024 mask set is 3 MiB as ``bool`` and a few KiB on disk. Every entry also records
its own key hash and image sha256; a file that does not decode, fails a crc32, or names another
entry is treated as absent, logged, removed and recomputed, never returned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.atomic import TMP_PREFIX, atomic_path, write_text
from audit.hashing import stable_hash
from audit.paths import home_dir

log = logging.getLogger(__name__)

# Bump when the on-disk meaning of an entry changes; it is part of every key hash, so old
# entries are simply never looked up again.
CACHE_FORMAT = 2
KEY_JSON = "key.json"
NO_WEIGHTS = ("random-init", "none")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_OUTPUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ENTRY_SUFFIX = ".xfc"
# Entry file: MAGIC, then the header's byte length and crc32 (little-endian uint32 each), the JSON
# header, then each array's stored bytes back to back. The header lists, per array: name, dtype,
# shape, whether it is bit-packed bool, codec ("raw" or "zlib"), offset and length in the data
# section, and the crc32 of those stored bytes.
MAGIC = b"XAFC\x02\r\n\x1a"
_PREFIX = struct.Struct("<8sII")
# Compressing float features buys little and costs reads; only keep zlib where it pays.
_ZLIB_MIN_SAVING = 0.8
# What a damaged entry raises while decoding (bad JSON, CRC mismatches, truncation, bad dtypes).
_LOAD_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, IndexError, zlib.error, struct.error)


class FeatureCacheError(RuntimeError):
    """The cache directory is inconsistent in a way the suite cannot repair on its own."""


def check_sha256(value: str, what: str = "image sha256") -> str:
    """Return ``value`` if it is 64 lowercase hex digits, else raise ``ValueError``."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ValueError(
            f"{what} must be 64 lowercase hex digits (hashlib.sha256(...).hexdigest()), got {value!r}"
        )
    return value


@dataclasses.dataclass(frozen=True)
class EvaluatorKey:
    """Everything besides the image that determines an evaluator's outputs.

    ``weights_sha256`` is the sha256 of the checkpoint file, or ``"random-init"`` / ``"none"``
    said explicitly, so a cache can never silently mix outputs of two different checkpoints.
    ``preprocessing`` is a version string the evaluator bumps whenever resizing, windowing or
    normalisation change.
    """

    evaluator: str
    weights_sha256: str
    preprocessing: str

    def __post_init__(self) -> None:
        if not isinstance(self.evaluator, str) or not self.evaluator.strip():
            raise ValueError(f"EvaluatorKey.evaluator must be a non-empty name, got {self.evaluator!r}")
        if not isinstance(self.preprocessing, str) or not self.preprocessing.strip():
            raise ValueError(
                f"EvaluatorKey.preprocessing must be a non-empty version string, got {self.preprocessing!r}"
            )
        if self.weights_sha256 not in NO_WEIGHTS:
            check_sha256(
                self.weights_sha256,
                what=f"EvaluatorKey.weights_sha256 (or one of {', '.join(map(repr, NO_WEIGHTS))})",
            )

    def fields(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, **dataclasses.asdict(self)}

    @functools.cached_property
    def hash(self) -> str:
        """16 hex digits of the sha256 of the key's canonical JSON (64 bits: no accidental clash)."""
        return stable_hash(self.fields())[:16]

    @property
    def dirname(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.evaluator).strip("-.")[:40] or "evaluator"
        return f"{slug}-{self.hash}"


class FeatureCache:
    """Outputs of one evaluator (one :class:`EvaluatorKey`) under ``root``, keyed by image sha256.

    Outputs are small dicts of named numpy arrays, e.g. ``probs`` float32 (C,), ``features``
    float32 (D,), ``masks`` bool (3, H, W). Arrays come back with the dtype and shape they were
    stored with. Reading never creates files; the key directory appears on the first ``put``.
    """

    def __init__(self, root: str | os.PathLike[str], key: EvaluatorKey) -> None:
        self.root = Path(root)
        self.key = key
        self.dir = self.root / key.dirname
        self._dir_str = os.fspath(self.dir)
        self._key_written = False
        self._check_key_json()

    def path(self, sha256: str) -> Path:
        return Path(self._file(sha256))

    def _file(self, sha256: str) -> str:
        # Plain strings: pathlib's joins cost more than the decode on a warm run of 1000 entries.
        check_sha256(sha256)
        return f"{self._dir_str}{os.sep}{sha256[:2]}{os.sep}{sha256}{ENTRY_SUFFIX}"

    def get(self, sha256: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray] | None:
        """The stored outputs, or None when absent. A damaged entry is removed and reads as absent."""
        path = self._file(sha256)
        try:
            with open(path, "rb") as fh:
                opened = os.fstat(fh.fileno())
                blob = fh.read()
        except FileNotFoundError:
            return None
        try:
            return self._decode(blob, sha256, names)
        except _LOAD_ERRORS as exc:
            log.warning("feature cache: discarding damaged entry %s (%s); it will be recomputed", path, exc)
            self._discard(Path(path), opened)
            return None

    def missing(self, shas: Sequence[str]) -> list[str]:
        """The shas without an entry file, each once, in first-seen order (no entry is decoded).

        A damaged entry counts as present here; :meth:`get` discards and recomputes it when read.
        """
        out: list[str] = []
        seen: set[str] = set()
        for sha in shas:
            if sha not in seen:
                seen.add(sha)
                if not os.path.exists(self._file(sha)):
                    out.append(sha)
        return out

    def get_many(
        self, shas: Sequence[str], names: Sequence[str] | None = None
    ) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
        """``(hits, misses)``: hits by sha256; misses in first-seen order, each listed once."""
        hits: dict[str, dict[str, np.ndarray]] = {}
        misses: list[str] = []
        seen: set[str] = set()
        for sha in shas:
            if sha in seen:
                continue
            seen.add(sha)
            found = self.get(sha, names)
            if found is None:
                misses.append(sha)
            else:
                hits[sha] = found
        return hits, misses

    def put(self, sha256: str, outputs: Mapping[str, Any]) -> None:
        """Store ``outputs`` for ``sha256`` atomically (readers see the old entry or the new one)."""
        path = self.path(sha256)
        arrays = normalise_outputs(outputs)
        blob = encode_entry(arrays, self._entry_id(sha256))
        self._ensure_key_json()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(blob)

    def put_many(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        for sha, outputs in entries.items():
            self.put(sha, outputs)

    def remove_stale_temps(self, max_age_s: float = 24 * 3600) -> int:
        """Delete ``.tmp-*`` files killed writers left behind; young ones may be live writes."""
        cutoff = time.time() - max_age_s
        removed = 0
        if not self.dir.is_dir():
            return 0
        for tmp in self.dir.rglob(f"{TMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
        return removed

    def _entry_id(self, sha256: str) -> str:
        return f"{CACHE_FORMAT}:{self.key.hash}:{sha256}"

    def _decode(self, blob: bytes, sha256: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return decode_entry(blob, self._entry_id(sha256), names)

    def _discard(self, path: Path, opened: os.stat_result) -> None:
        # Only unlink the file we read: a concurrent writer may have renamed a good entry over it.
        with contextlib.suppress(FileNotFoundError):
            now = path.stat()
            if (now.st_ino, now.st_dev, now.st_mtime_ns) == (
                opened.st_ino,
                opened.st_dev,
                opened.st_mtime_ns,
            ):
                path.unlink()

    def _check_key_json(self) -> None:
        path = self.dir / KEY_JSON
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        try:
            recorded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FeatureCacheError(
                f"{path} is not valid JSON ({exc}); delete {self.dir} to rebuild this evaluator's cache"
            ) from exc
        if recorded != self.key.fields():
            raise FeatureCacheError(
                f"{path} records {recorded} but this cache is for {self.key.fields()}; the directory "
                f"was edited or copied by hand. Delete {self.dir} to rebuild this evaluator's cache"
            )
        self._key_written = True

    def _ensure_key_json(self) -> None:
        if self._key_written:
            return
        path = self.dir / KEY_JSON
        if path.exists():
            self._check_key_json()
        else:
            write_text(path, json.dumps(self.key.fields(), indent=2, sort_keys=True) + "\n")
            self._key_written = True


def normalise_outputs(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Outputs as a dict of numpy arrays, or ``ValueError`` naming what cannot be cached."""
    if not isinstance(outputs, Mapping) or not outputs:
        raise ValueError(
            f"outputs must be a non-empty mapping of name -> array, got {type(outputs).__name__}"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        if not isinstance(name, str) or not _OUTPUT_NAME.fullmatch(name):
            raise ValueError(
                f"output name {name!r} is not cacheable; use letters, digits, '_', '.', '-' "
                f"and do not start with '_' (reserved for the cache's own fields)"
            )
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise ValueError(
                f"output {name!r} has dtype {arr.dtype}, which cannot be stored without pickle; "
                f"convert it to a numeric or bool array"
            )
        arrays[name] = arr
    return arrays


def encode_entry(arrays: Mapping[str, np.ndarray], entry_id: str) -> bytes:
    """One cache entry as bytes: a checksummed JSON header naming ``entry_id``, then the arrays.

    A custom layout rather than npz: reading an npz member costs a zip directory parse and an
    ``ast.literal_eval`` of its header, about 1 ms per image for three outputs, which dominated a
    warm-cache run; this decodes in tens of microseconds with the same damage detection (a crc32
    per array and one for the header).
    """
    specs: list[list[Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for name, arr in arrays.items():
        packed = arr.dtype == np.bool_
        raw = np.packbits(arr.reshape(-1)).tobytes() if packed else np.ascontiguousarray(arr).tobytes()
        stored, codec = raw, "raw"
        if raw:
            squeezed = zlib.compress(raw, 6)
            if len(squeezed) < _ZLIB_MIN_SAVING * len(raw):
                stored, codec = squeezed, "zlib"
        dtype = "bool" if packed else arr.dtype.str
        specs.append([name, dtype, list(arr.shape), codec, offset, len(stored), zlib.crc32(stored)])
        chunks.append(stored)
        offset += len(stored)
    header = json.dumps({"entry": entry_id, "arrays": specs}, separators=(",", ":")).encode()
    return b"".join([_PREFIX.pack(MAGIC, len(header), zlib.crc32(header)), header, *chunks])


def decode_entry(blob: bytes, entry_id: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an :func:`encode_entry` blob (only ``names`` when given), as writable copies.

    Raises ``ValueError`` (or another of the errors a damaged file can cause) when the blob is
    truncated, fails a crc32, records another entry id, or lacks a requested output.
    """
    magic, header_len, header_crc = _PREFIX.unpack_from(blob, 0)
    if magic != MAGIC:
        raise ValueError("not a feature-cache entry (bad magic bytes)")
    start = _PREFIX.size
    header = blob[start : start + header_len]
    if len(header) != header_len or zlib.crc32(header) != header_crc:
        raise ValueError("entry header is truncated or fails its crc32")
    meta = json.loads(header)
    if meta.get("entry") != entry_id:
        raise ValueError(f"entry records {meta.get('entry')!r}, expected {entry_id!r}")
    data = memoryview(blob)[start + header_len :]
    specs = {spec[0]: spec for spec in meta["arrays"]}
    if not specs:
        raise ValueError("entry holds no outputs")
    wanted = list(specs) if names is None else list(names)
    if set(wanted) - set(specs):
        raise ValueError(f"entry lacks output(s) {sorted(set(wanted) - set(specs))}")
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        _, dtype_str, shape, codec, offset, length, crc = specs[name]
        shape = tuple(int(n) for n in shape)
        if offset < 0 or offset + length > len(data):
            raise ValueError(f"output {name!r} runs past the end of the entry (truncated file)")
        stored = data[offset : offset + length]
        if zlib.crc32(stored) != crc:
            raise ValueError(f"output {name!r} fails its crc32")
        if codec == "zlib":
            raw: bytes | memoryview = zlib.decompress(stored)
        elif codec == "raw":
            raw = stored
        else:
            raise ValueError(f"output {name!r} has unknown codec {codec!r}")
        count = int(np.prod(shape, dtype=np.int64))
        if dtype_str == "bool":
            if len(raw) != (count + 7) // 8:
                raise ValueError(f"packed mask {name!r} has {len(raw)} bytes for shape {shape}")
            bits = np.frombuffer(raw, dtype=np.uint8)
            out[name] = np.unpackbits(bits, count=count).astype(bool).reshape(shape)
            continue
        dtype = np.dtype(dtype_str)
        if dtype.hasobject or dtype.kind not in "biufc":
            raise ValueError(f"output {name!r} has dtype {dtype}, which the cache never stores")
        if len(raw) != count * dtype.itemsize:
            raise ValueError(f"output {name!r} has {len(raw)} bytes for {dtype} of shape {shape}")
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return out


def compute_with_cache(
    cache: FeatureCache,
    items: Sequence[tuple[str, Any]],
    compute: Callable[[list[Any]], Sequence[Mapping[str, Any]]],
    batch_size: int,
    names: Sequence[str] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Outputs for every ``(sha256, payload)`` in ``items``, in input order.

    ``compute`` receives batches of at most ``batch_size`` payloads of images the cache lacks
    (each sha256 once, however often it repeats in ``items``) and returns one outputs mapping per
    payload. Each batch is stored as soon as it is computed, so a killed run keeps its progress.
    Repeated sha256s share one outputs dict. ``names`` limits what is read from cached entries
    (freshly computed ones are returned whole). All outputs are held in memory; callers with large
    masks call this per chunk of images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    payloads: dict[str, Any] = {}
    for sha, payload in items:
        check_sha256(sha)
        payloads.setdefault(sha, payload)
    results, misses = cache.get_many(list(payloads), names)
    for start in range(0, len(misses), batch_size):
        batch = misses[start : start + batch_size]
        outputs = list(compute([payloads[sha] for sha in batch]))
        if len(outputs) != len(batch):
            raise ValueError(
                f"compute returned {len(outputs)} outputs for a batch of {len(batch)} images; "
                f"it must return exactly one mapping per input, in order"
            )
        for sha, out in zip(batch, outputs, strict=True):
            arrays = normalise_outputs(out)
            cache.put(sha, arrays)
            results[sha] = arrays
    return [results[sha] for sha, _ in items]


def default_cache_root(run_dir: str | os.PathLike[str] | None = None) -> Path:
    """``<run_dir>/cache/features`` when a run directory is given, else ``<home_dir()>/features``."""
    if run_dir is not None:
        return Path(run_dir) / "cache" / "features"
    return home_dir() / "features"
