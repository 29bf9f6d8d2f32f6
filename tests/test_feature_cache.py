"""Feature cache: exact round trips, key isolation, damage recovery, only-misses computing, atomicity."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from audit.atomic import TMP_PREFIX
from audit.feature_cache import (
    ENTRY_SUFFIX,
    KEY_JSON,
    MAGIC,
    EvaluatorKey,
    FeatureCache,
    FeatureCacheError,
    compute_with_cache,
    default_cache_root,
)

WEIGHTS = hashlib.sha256(b"checkpoint").hexdigest()
KEY = EvaluatorKey("densenet121-res224-all", WEIGHTS, "xrv-v1")


def sha(i: int | str) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def outputs_for(i: int, size: int = 13) -> dict[str, np.ndarray]:
    """Deterministic outputs for image i; odd mask size so bit packing has a ragged last byte."""
    rng = np.random.default_rng(i)
    return {
        "probs": rng.random(18, dtype=np.float32),
        "features": rng.standard_normal(64).astype(np.float32),
        "masks": rng.random((3, size, size)) > 0.5,
    }


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for name, arr in a.items():
        assert arr.dtype == b[name].dtype, name
        assert arr.shape == b[name].shape, name
        np.testing.assert_array_equal(arr, b[name])


def entry_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != KEY_JSON)


class Counter:
    """A compute function that records every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, payloads: list[int]) -> list[dict[str, np.ndarray]]:
        self.batches.append(list(payloads))
        return [outputs_for(p) for p in payloads]

    @property
    def items(self) -> list[int]:
        return [p for batch in self.batches for p in batch]


def test_round_trip_is_exact_for_float_int_and_bool(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    out = outputs_for(1)
    out["scalar"] = np.float64(np.pi)
    out["counts"] = np.arange(7, dtype=np.int16).reshape(7, 1)
    out["flag"] = np.array(True)
    out["empty"] = np.zeros((0, 4), dtype=bool)
    out["nan"] = np.array([np.nan, -np.inf, 1e-45], dtype=np.float32)
    assert cache.get(sha(1)) is None
    cache.put(sha(1), out)
    got = cache.get(sha(1))
    assert got is not None
    assert_same(got, {k: np.asarray(v) for k, v in out.items()})
    # A fresh instance (another process, a later run) reads the same thing.
    assert_same(FeatureCache(tmp_path, KEY).get(sha(1)), got)


def test_bool_masks_are_stored_packed(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    rng = np.random.default_rng(0)
    masks = rng.random((3, 256, 256)) > 0.5  # incompressible bits: only packing can shrink it
    cache.put(sha(0), {"masks": masks})
    stored = cache.path(sha(0)).stat().st_size
    assert stored < masks.nbytes / 7
    np.testing.assert_array_equal(cache.get(sha(0))["masks"], masks)


def test_layout_and_key_json(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    assert not tmp_path.joinpath(KEY.dirname).exists()  # reading never creates files
    cache.put(sha(5), outputs_for(5))
    path = cache.path(sha(5))
    assert path == tmp_path / KEY.dirname / sha(5)[:2] / f"{sha(5)}{ENTRY_SUFFIX}"
    assert path.is_file()
    recorded = json.loads((cache.dir / KEY_JSON).read_text())
    assert recorded["evaluator"] == KEY.evaluator
    assert recorded["weights_sha256"] == WEIGHTS
    assert recorded["preprocessing"] == "xrv-v1"


@pytest.mark.parametrize(
    "other",
    [
        EvaluatorKey("densenet121-res224-chex", WEIGHTS, "xrv-v1"),
        EvaluatorKey("densenet121-res224-all", hashlib.sha256(b"other").hexdigest(), "xrv-v1"),
        EvaluatorKey("densenet121-res224-all", "random-init", "xrv-v1"),
        EvaluatorKey("densenet121-res224-all", WEIGHTS, "xrv-v2"),
    ],
)
def test_keys_differing_in_any_field_do_not_collide(tmp_path, other):
    assert other.hash != KEY.hash and other.dirname != KEY.dirname
    a, b = FeatureCache(tmp_path, KEY), FeatureCache(tmp_path, other)
    a.put(sha(1), outputs_for(1))
    assert b.get(sha(1)) is None
    b.put(sha(1), outputs_for(2))
    assert_same(a.get(sha(1)), outputs_for(1))
    assert_same(b.get(sha(1)), outputs_for(2))


def test_key_hash_is_stable_and_field_sensitive():
    assert EvaluatorKey(KEY.evaluator, WEIGHTS, "xrv-v1").hash == KEY.hash
    assert len(KEY.hash) == 16
    # Fields are hashed as a structure, not concatenated: moving a character between fields changes it.
    assert EvaluatorKey("ab", "none", "c").hash != EvaluatorKey("a", "none", "bc").hash


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"evaluator": "", "weights_sha256": WEIGHTS, "preprocessing": "v1"}, "evaluator"),
        ({"evaluator": "x", "weights_sha256": "abc", "preprocessing": "v1"}, "weights_sha256"),
        ({"evaluator": "x", "weights_sha256": WEIGHTS.upper(), "preprocessing": "v1"}, "weights_sha256"),
        ({"evaluator": "x", "weights_sha256": "", "preprocessing": "v1"}, "random-init"),
        ({"evaluator": "x", "weights_sha256": "none", "preprocessing": " "}, "preprocessing"),
    ],
)
def test_evaluator_key_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EvaluatorKey(**kwargs)


def test_invalid_sha256_and_outputs_are_rejected(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    for bad in ("abc", sha(1).upper(), sha(1) + "0", "../" + sha(1)[3:], 123):
        with pytest.raises(ValueError, match="64 lowercase hex"):
            cache.get(bad)
        with pytest.raises(ValueError, match="64 lowercase hex"):
            cache.put(bad, outputs_for(1))
    with pytest.raises(ValueError, match="dtype object"):
        cache.put(sha(1), {"x": np.array([1, "a", None], dtype=object)})
    with pytest.raises(ValueError, match="not cacheable"):
        cache.put(sha(1), {"__entry__": np.zeros(2)})
    with pytest.raises(ValueError, match="non-empty mapping"):
        cache.put(sha(1), {})
    assert entry_files(tmp_path) == []


def _header(blob: bytes) -> tuple[dict, int]:
    _, length, _ = struct.unpack_from("<8sII", blob, 0)
    return json.loads(blob[16 : 16 + length]), 16 + length


def _array_offset(blob: bytes, name: str) -> int:
    meta, data_start = _header(blob)
    spec = next(s for s in meta["arrays"] if s[0] == name)
    return data_start + spec[4]


def _forged(blob: bytes, edit) -> bytes:
    """The entry with its header edited by ``edit(spec)`` per array, re-checksummed (valid framing)."""
    meta, data_start = _header(blob)
    for spec in meta["arrays"]:
        edit(spec)
    header = json.dumps(meta).encode()
    return struct.pack("<8sII", MAGIC, len(header), zlib.crc32(header)) + header + blob[data_start:]


@pytest.mark.parametrize(
    "damage",
    ["truncate", "garbage", "empty", "flip_byte", "flip_header", "wrong_entry", "object_array", "bad_codec"],
)
def test_damaged_entry_is_a_miss_removed_and_recomputed(tmp_path, damage):
    cache = FeatureCache(tmp_path, KEY)
    cache.put(sha(1), outputs_for(1))
    path = cache.path(sha(1))
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(len(blob)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "flip_byte":
        # Flip a byte inside the stored data of the features array: only its crc32 catches it.
        data = bytearray(blob)
        data[_array_offset(blob, "features") + 5] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "flip_header":
        data = bytearray(blob)
        data[blob.index(b'"entry"') + 3] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "wrong_entry":
        # A valid entry copied into another image's slot must not be served for it.
        cache.put(sha(2), outputs_for(2))
        path.write_bytes(cache.path(sha(2)).read_bytes())
    elif damage == "object_array":
        # A well-formed entry that claims an object dtype must never reach np.frombuffer.
        path.write_bytes(_forged(blob, lambda spec: spec[1] == "<f4" and spec.__setitem__(1, "|O")))
    elif damage == "bad_codec":
        path.write_bytes(_forged(blob, lambda spec: spec.__setitem__(3, "lzma")))

    assert cache.get(sha(1)) is None
    assert not path.exists()
    counter = Counter()
    (got,) = compute_with_cache(cache, [(sha(1), 1)], counter, batch_size=4)
    assert counter.items == [1]
    assert_same(got, outputs_for(1))
    assert_same(cache.get(sha(1)), outputs_for(1))


def test_compute_with_cache_computes_only_misses(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    items = [(sha(i), i) for i in range(10)]
    counter = Counter()
    first = compute_with_cache(cache, items, counter, batch_size=4)
    assert [len(b) for b in counter.batches] == [4, 4, 2]
    assert counter.items == list(range(10))
    for i, out in enumerate(first):
        assert_same(out, outputs_for(i))

    counter = Counter()
    second = compute_with_cache(cache, items, counter, batch_size=4)
    assert counter.batches == []
    for a, b in zip(first, second, strict=True):
        assert_same(a, b)

    # Adding a model's images: only the new ones are computed, and order follows the input.
    counter = Counter()
    mixed = [(sha(i), i) for i in (12, 3, 10, 7, 11)]
    out = compute_with_cache(cache, mixed, counter, batch_size=2)
    assert counter.items == [12, 10, 11]
    assert [len(b) for b in counter.batches] == [2, 1]
    for (_, i), o in zip(mixed, out, strict=True):
        assert_same(o, outputs_for(i))


def test_duplicate_shas_are_computed_once(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    counter = Counter()
    # Two cases generating identical images share a sha256: compute sees it once.
    items = [(sha(1), 1), (sha(2), 2), (sha(1), 1), (sha(3), 3), (sha(2), 2), (sha(1), 1)]
    out = compute_with_cache(cache, items, counter, batch_size=8)
    assert counter.items == [1, 2, 3]
    for (_, i), o in zip(items, out, strict=True):
        assert_same(o, outputs_for(i))
    hits, misses = cache.get_many([sha(3), sha(9), sha(1), sha(9), sha(8)])
    assert set(hits) == {sha(1), sha(3)}
    assert misses == [sha(9), sha(8)]


def test_compute_returning_wrong_count_is_an_error_and_stores_nothing(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    with pytest.raises(ValueError, match="returned 1 outputs for a batch of 2"):
        compute_with_cache(cache, [(sha(1), 1), (sha(2), 2)], lambda p: [outputs_for(1)], batch_size=2)
    assert entry_files(tmp_path) == []
    with pytest.raises(ValueError, match="batch_size"):
        compute_with_cache(cache, [(sha(1), 1)], Counter(), batch_size=0)


def test_batches_done_before_a_crash_are_kept(tmp_path):
    cache = FeatureCache(tmp_path, KEY)

    def crash_on_third(payloads):
        if 2 in payloads:
            raise RuntimeError("killed")
        return [outputs_for(p) for p in payloads]

    with pytest.raises(RuntimeError, match="killed"):
        compute_with_cache(cache, [(sha(i), i) for i in range(3)], crash_on_third, batch_size=1)
    counter = Counter()
    compute_with_cache(cache, [(sha(i), i) for i in range(3)], counter, batch_size=1)
    assert counter.items == [2]


def test_writes_leave_no_temp_files(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    compute_with_cache(cache, [(sha(i), i) for i in range(20)], Counter(), batch_size=7)
    cache.put(sha(0), outputs_for(0))  # overwrite an existing entry
    files = entry_files(tmp_path)
    assert len(files) == 20
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TMP_PREFIX)]

    # A failed write (here: the arrays cannot be serialised) leaves neither temp nor entry behind.
    class Boom:
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.put(sha(99), {"x": Boom()})
    assert entry_files(tmp_path) == files


def test_remove_stale_temps_spares_young_ones(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    cache.put(sha(1), outputs_for(1))
    old = cache.path(sha(1)).parent / f"{TMP_PREFIX}old.npz"
    young = cache.path(sha(1)).parent / f"{TMP_PREFIX}young.npz"
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    past = time.time() - 2 * 24 * 3600
    os.utime(old, (past, past))
    assert cache.remove_stale_temps() == 1
    assert not old.exists() and young.exists()
    assert cache.get(sha(1)) is not None


def test_key_json_mismatch_is_a_clear_error(tmp_path):
    FeatureCache(tmp_path, KEY).put(sha(1), outputs_for(1))
    key_json = tmp_path / KEY.dirname / KEY_JSON
    fields = json.loads(key_json.read_text())
    fields["preprocessing"] = "edited"
    key_json.write_text(json.dumps(fields))
    with pytest.raises(FeatureCacheError, match=f"Delete .*{KEY.dirname}"):
        FeatureCache(tmp_path, KEY)
    key_json.write_text("{not json")
    with pytest.raises(FeatureCacheError, match="not valid JSON"):
        FeatureCache(tmp_path, KEY)


def _writer(root: str, start: int) -> None:
    cache = FeatureCache(Path(root), KEY)
    # Both writers cover the same 50 entries, in different orders, so they race on every one.
    order = list(range(50))
    order = order[start:] + order[:start]
    for i in order:
        cache.put(sha(i), outputs_for(i, size=64))
        assert cache.get(sha(i)) is not None


def test_concurrent_writers_leave_only_valid_entries(tmp_path):
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), start)) for start in (0, 25)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = FeatureCache(tmp_path, KEY)
    files = entry_files(tmp_path)
    assert len(files) == 50
    assert all(p.suffix == ENTRY_SUFFIX for p in files)
    for i in range(50):
        assert_same(cache.get(sha(i)), outputs_for(i, size=64))


def test_default_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_AUDIT_HOME", str(tmp_path / "home"))
    assert default_cache_root(None) == tmp_path / "home" / "features"
    assert default_cache_root() == tmp_path / "home" / "features"
    assert default_cache_root(tmp_path / "run") == tmp_path / "run" / "cache" / "features"


def test_get_reads_only_the_named_outputs(tmp_path):
    from audit.feature_cache import EvaluatorKey, FeatureCache

    cache = FeatureCache(tmp_path, EvaluatorKey("u-net", "none", "v1"))
    sha = hashlib.sha256(b"img").hexdigest()
    masks = np.random.default_rng(0).random((3, 64, 64)) > 0.5
    feats = np.arange(4, dtype=np.float32)
    cache.put(sha, {"masks": masks, "features": feats})
    got = cache.get(sha, names=["features"])
    assert set(got) == {"features"}
    np.testing.assert_array_equal(got["features"], feats)
    whole = cache.get(sha)
    np.testing.assert_array_equal(whole["masks"], masks)


def test_entries_are_compact_and_reads_are_private_copies(tmp_path):
    cache = FeatureCache(tmp_path, KEY)
    masks = np.zeros((3, 512, 512), dtype=bool)
    masks[:, 100:300, 50:200] = True  # a segmentation: large uniform regions compress well
    features = np.asfortranarray(np.arange(12, dtype=">f8").reshape(3, 4))  # non-native, non-C order
    cache.put(sha(3), {"masks": masks, "features": features})
    assert cache.path(sha(3)).stat().st_size < 4096  # 96 KiB packed, zlib does the rest
    got = cache.get(sha(3))
    np.testing.assert_array_equal(got["masks"], masks)
    np.testing.assert_array_equal(got["features"], features)
    assert got["features"].dtype == np.dtype(">f8")
    got["features"][0, 0] = -1.0  # writable, and the cache is not changed through it
    assert cache.get(sha(3))["features"][0, 0] == 0.0
    only = cache.get(sha(3), names=["features"])
    assert set(only) == {"features"}
