"""Tests of the reader-study library without a browser: which items a study shows and in what order,
study creation and its blinding, the pixels readers see, the ratings database (SQLite, and a real
PostgreSQL when ``pgserver`` is installed), the unblinding export and the CLI.

The app is tested in test_reader_study_app.py (Streamlit AppTest) and test_reader_study_e2e.py.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import logging
import math
import re
import sqlite3
import struct
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from PIL import Image

from audit import rundir
from audit.cli import main as cli_main
from reader_study import admin, assignment, placement, rendering, study, studydir, text
from reader_study.create import CreateError, CreateOptions, create_study
from reader_study.criteria import FLAG, TURING, resolve
from reader_study.store import (
    Answer,
    Shown,
    SignedIn,
    StaleForm,
    Store,
    StoreError,
    TokenRetired,
    assignments,
    audit_log,
    items,
    ratings,
    readers,
    responses,
    sqlite_url,
    submissions,
)
from reader_study.store import (
    landmarks as landmarks_table,
)
from tests.reader_study_fixtures import LEAKY_TEXT, MODELS, make_run, make_study

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CRITERIA = ("anatomy", "pathology", "quality")


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk, parsed by hand with each CRC checked."""
    assert data[:8] == PNG_SIGNATURE
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        out.append((kind, body))
        pos += 12 + length
    return out


def ihdr(data: bytes) -> tuple[int, ...]:
    """(width, height, bit depth, colour type, compression, filter, interlace)."""
    kind, body = png_chunks(data)[0]
    assert kind == b"IHDR"
    return struct.unpack(">IIBBBBB", body)


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def decode_source(path: str | Path) -> np.ndarray:
    """A source PNG as floats in [0, 1], decoded with PIL (not with audit.images)."""
    with Image.open(path) as im:
        arr = np.asarray(im)
        full = 65535.0 if im.mode.startswith("I") else 255.0
    return arr.astype(np.float64) / full


def open_study_store(path: Path) -> Store:
    root, info = study.load(path)
    return Store(study.database_url(root, info))


# --- assignment ---------------------------------------------------------------------------------


def test_select_cases_is_a_function_of_the_seed():
    avail = {s: [f"c{i:02d}" for i in range(30)] for s in ("real", "a", "b")}
    counts = {"real": 6, "a": 6, "b": 6}
    first = assignment.select_cases(avail, counts, rng(7))
    assert first == assignment.select_cases(avail, counts, rng(7))
    assert first[0] != assignment.select_cases(avail, counts, rng(8))[0]


def test_select_cases_disjoint_while_cases_suffice():
    r = rng(0)
    for trial in range(200):
        cases = [f"c{i:02d}" for i in range(int(r.integers(4, 40)))]
        strata = ["real", *(f"m{j}" for j in range(int(r.integers(1, 5))))]
        # Models may lack a few cases (failed samples); the real stratum has them all.
        missing = {
            s: set() if s == "real" else set(r.choice(cases, size=int(r.integers(0, 3)), replace=False))
            for s in strata
        }
        avail = {s: [c for c in cases if c not in missing[s]] for s in strata}
        budget = len(cases) - max(len(m) for m in missing.values())
        total = int(r.integers(0, budget + 1))
        counts = dict(zip(strata, (int(n) for n in r.multinomial(total, [1 / len(strata)] * len(strata)))))
        chosen, reuse = assignment.select_cases(avail, counts, rng(trial))
        for s in strata:
            assert len(chosen[s]) == counts[s]
            assert set(chosen[s]) <= set(avail[s])
        everything = [c for s in strata for c in chosen[s]]
        assert len(everything) == len(set(everything)), (avail, counts, chosen)
        assert reuse == (1 if total else 0)


def test_select_cases_reuses_as_little_as_possible():
    r = rng(1)
    for trial in range(200):
        cases = [f"c{i:02d}" for i in range(int(r.integers(2, 12)))]
        strata = ["real", *(f"m{j}" for j in range(int(r.integers(1, 6))))]
        counts = {s: int(r.integers(1, len(cases) + 1)) for s in strata}
        total = sum(counts.values())
        chosen, reuse = assignment.select_cases({s: cases for s in strata}, counts, rng(trial))
        uses = Counter(c for s in strata for c in chosen[s])
        for s in strata:
            assert len(chosen[s]) == len(set(chosen[s])) == counts[s]  # a stratum never repeats a case
        assert reuse == max(uses.values())
        assert reuse == math.ceil(total / len(cases)), (counts, chosen)


def test_select_cases_refuses_more_than_a_stratum_has():
    with pytest.raises(ValueError, match="m0: 4 items asked"):
        assignment.select_cases(
            {"real": ["a", "b", "c"], "m0": ["a", "b", "c"]}, {"real": 1, "m0": 4}, rng(0)
        )


def _strata(sizes: list[int]) -> dict[str, list[tuple[int, int]]]:
    return {f"s{i:02d}": [(i, k) for k in range(n)] for i, n in enumerate(sizes)}


def test_balanced_order_is_a_function_of_the_seed():
    strata = _strata([8, 8, 8])
    first = assignment.balanced_order(strata, rng(3))
    assert sorted(first) == sorted(x for v in strata.values() for x in v)
    assert first == assignment.balanced_order(strata, rng(3))
    assert first != assignment.balanced_order(strata, rng(4))


@pytest.mark.parametrize("n_strata", [2, 4, 5])
def test_balanced_order_has_no_block_structure_to_exploit(n_strata):
    """With equal strata, the first version dealt exactly one item of every stratum per run of
    ``n_strata`` items: a reader who noticed could answer "real" once per block, and the last item
    of a block without a real image so far was real for sure. Runs must look like a shuffle's."""
    strata = _strata([30] * n_strata)
    exact, last_forced, last_real, reals = 0, 0, 0, Counter()
    item_orders = set()
    seeds = 60
    for seed in range(seeds):
        order = [s for s, _ in assignment.balanced_order(strata, rng(seed))]
        item_orders.add(tuple(k for s, k in assignment.balanced_order(strata, rng(seed)) if s == 0))
        for start in range(0, len(order), n_strata):
            block = order[start : start + n_strata]
            exact += sorted(block) == list(range(n_strata))
            reals[block.count(0)] += 1  # stratum 0 plays "real"
            if 0 not in block[:-1]:
                last_forced += 1
                last_real += block[-1] == 0
    blocks = seeds * 30
    assert exact / blocks < 0.5, exact / blocks  # the old order: 1.0
    assert last_real / last_forced < 0.6, last_real / last_forced  # the old order: 1.0
    assert reals[0] / blocks > 0.1 and reals[2] / blocks > 0.1, reals  # the old order: always 1
    assert len(item_orders) > 50  # every stratum's own items are shuffled too


def _prefix_deviation(order: list[tuple[int, int]], sizes: list[int]) -> tuple[float, float]:
    """(most ahead, most behind) any stratum is of its proportional share, over all prefixes."""
    total, taken = sum(sizes), [0] * len(sizes)
    ahead = behind = 0.0
    for m, (s, _) in enumerate(order, 1):
        taken[s] += 1
        for i, n in enumerate(sizes):
            excess = (taken[i] * total - m * n) / total
            ahead, behind = max(ahead, excess), max(behind, -excess)
    return ahead, behind


def test_balanced_order_unequal_strata_stay_within_two_items_of_their_share():
    # One large stratum among many small ones is the hard case (jittered sort keys drift by 3).
    configs = [[30, 5], [10, 3, 7], [50, 1, 1], [50, 1, 1, 1, 1], [30, 5, 5, 5, 5], [10] + [1] * 7]
    configs += [[40] * 5 + [1] * 7, [30, 30, 30, 30] + [1] * 10]
    r = rng(5)
    for _ in range(150):
        configs.append([int(n) for n in r.integers(1, 40, size=int(r.integers(2, 9)))])
    for trial, sizes in enumerate(configs):
        for seed in range(3):
            order = assignment.balanced_order(_strata(sizes), rng(1000 * trial + seed))
            assert sorted(order) == sorted(x for v in _strata(sizes).values() for x in v)
            ahead, behind = _prefix_deviation(order, sizes)
            assert ahead <= 1, (sizes, ahead)  # never more than a whole item ahead of its share
            assert behind < 2, (sizes, behind)


def test_balanced_order_skips_empty_strata():
    assert assignment.balanced_order({"a": [], "b": []}, rng(0)) == []
    assert sorted(assignment.balanced_order({"a": [], "b": [1, 2]}, rng(0))) == [1, 2]


def test_pick_rereads_takes_a_share_of_every_stratum():
    strata = {"real": list(range(30)), "a": list(range(100, 110)), "b": [200, 201, 202], "c": [300]}
    for fraction in (0.1, 0.25, 0.5):
        picked = assignment.pick_rereads(strata, fraction, rng(1))
        assert len(picked) == len(set(picked))
        for members in strata.values():
            k = sum(p in members for p in picked)
            share = fraction * len(members)
            assert k >= 1
            assert abs(k - share) <= 0.5 or (k == 1 and share < 1), (fraction, len(members), k)
        assert picked == assignment.pick_rereads(strata, fraction, rng(1))
    assert assignment.pick_rereads(strata, 0.0, rng(1)) == []
    assert sorted(assignment.pick_rereads(strata, 1.0, rng(1))) == sorted(
        x for v in strata.values() for x in v
    )
    assert assignment.pick_rereads(strata, 0.5, rng(1)) != assignment.pick_rereads(strata, 0.5, rng(2))


# --- create -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def created(tmp_path_factory):
    """One study to look at (read-only): Turing question, prompts, calibration and re-reads."""
    root = tmp_path_factory.mktemp("created")
    return make_study(
        root, turing=True, show_prompt=True, per_model=3, calibration=3, reread_percent=50, washout="0d"
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run to create studies from (read-only)."""
    return make_run(tmp_path_factory.mktemp("run"))


def _options(**kw: Any) -> CreateOptions:
    base: dict[str, Any] = {"readers": ("alice", "bob"), "criteria": resolve(None, None), "size": 64}
    return CreateOptions(**{**base, **kw})


def _sequences(study_dir: Path) -> dict[str, list[tuple]]:
    """Each reader's session as (model, case_id, sample, read_number, calibration)."""
    key = pd.read_parquet(study_dir / studydir.KEY).set_index("item")
    store = open_study_store(study_dir)
    try:
        names = {r["id"]: r["name"] for r in store.table(readers)}
        out: dict[str, list[tuple]] = {}
        for row in sorted(store.table(assignments), key=lambda r: (r["reader_id"], r["position"])):
            k = key.loc[row["item_id"]]
            out.setdefault(names[row["reader_id"]], []).append(
                (k.model, k.case_id, k["sample"], row["read_number"], bool(row["calibration"]))
            )
        return out
    finally:
        store.close()


def test_item_ids_are_random_hex_unrelated_to_the_source(run_dir, tmp_path):
    a = create_study(run_dir, tmp_path / "a", _options(seed=3), progress=False)
    b = create_study(run_dir, tmp_path / "b", _options(seed=3), progress=False)
    key_a, key_b = (pd.read_parquet(s.path / studydir.KEY) for s in (a, b))
    for key in (key_a, key_b):
        assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in key.item)
        assert key.item.is_unique
    # The same seed does not replay a study: study.json holds the seed (0 by default) and the app
    # shows the counts, so a seed-only order would tell a reader the stratum at each position.
    assert _sequences(a.path) != _sequences(b.path)
    # The key is stored in item-id order, which says nothing.
    assert list(key_a.item) == sorted(key_a.item)
    assert not set(key_a.item) & set(key_b.item)
    c = create_study(run_dir, tmp_path / "c", _options(seed=4), progress=False)
    assert _sequences(c.path) != _sequences(a.path)
    assert {(m, cs) for m, cs in zip(key_a.model, key_a.case_id)} != {
        (m, cs) for m, cs in zip(*(pd.read_parquet(c.path / studydir.KEY)[k] for k in ("model", "case_id")))
    }


def test_every_image_is_encoded_alike_with_no_metadata(created):
    key = pd.read_parquet(created.path / studydir.KEY)
    files = sorted((created.path / studydir.IMAGES_DIR).iterdir())
    assert sorted(f.name for f in files) == sorted(f"{i}.png" for i in key.item)
    headers = set()
    for f in files:
        data = f.read_bytes()
        assert [kind for kind, _ in png_chunks(data)] == [b"IHDR", b"IDAT", b"IEND"], f.name
        headers.add(ihdr(data))
    # 64x64, 8-bit, greyscale (colour type 0), no interlace, for real and both models alike.
    assert headers == {(64, 64, 8, 0, 0, 0, 0)}
    assert set(key.model) == {"real", *MODELS}


def test_nothing_but_the_key_names_a_model_or_a_case(created):
    run = created.path.parent / "run"
    needles = [m.encode() for m in MODELS] + [b"case-0", LEAKY_TEXT.encode(), str(run).encode(), b"samples/"]
    checked = []
    key = pd.read_parquet(created.path / studydir.KEY)
    for path in sorted(created.path.rglob("*")):
        if path.is_file() and path.name != studydir.KEY:
            data = path.read_bytes()
            checked.append(path.name)
            # blinding.json (owner-only, never read by the app) reports the byte-size AUC per model
            # by name; like every other file it names no item or case, so it maps nothing to a model.
            allowed = [m.encode() for m in MODELS] if path.name == studydir.BLINDING_FILE else []
            for needle in needles:
                assert needle in allowed or needle not in data, f"{path} contains {needle!r}"
            if path.name == studydir.BLINDING_FILE:
                assert not [i for i in key.item if i.encode() in data]
                assert path.stat().st_mode & 0o777 == 0o600
    assert studydir.STUDY_JSON in checked and studydir.DB_FILE in checked and len(checked) > 10
    assert studydir.BLINDING_FILE in checked
    # The key does hold them (so the needles are the right ones to look for).
    assert set(key.model) >= set(MODELS) and key.case_id.str.startswith("case-0").all()


def _runs(labels: list[str]) -> int:
    """How many runs of equal neighbours: len(set(labels)) when grouped, about len(labels) when not."""
    return 1 + sum(a != b for a, b in itertools.pairwise(labels))


def test_the_folder_and_database_do_not_group_items_by_model(tmp_path):
    """Without the key, neither the database's row order nor the image files' times and inode
    numbers may tell which items came from one model (the first version wrote and inserted them
    stratum by stratum: real..., model-a..., model-b...)."""
    models = ("m-a", "m-b", "m-c")
    run = make_run(tmp_path, n_cases=16, models=models)
    made = create_study(run, tmp_path / "study", _options(per_model=4, calibration=4), progress=False)
    key = pd.read_parquet(made.path / studydir.KEY).set_index("item")["model"]
    n_strata = len(models) + 1
    with sqlite3.connect(made.path / studydir.DB_FILE) as db:
        by_rowid = [row[0] for row in db.execute("SELECT id FROM items ORDER BY rowid")]
    images = {i: (made.path / studydir.IMAGES_DIR / f"{i}.png").stat() for i in key.index}
    by_inode = sorted(images, key=lambda i: images[i].st_ino)
    assert len(by_rowid) == len(key) == 20
    for order in (by_rowid, by_inode):
        assert _runs([key[i] for i in order]) >= 2 * n_strata, [key[i] for i in order]
    assert len({st.st_mtime_ns for st in images.values()}) == 1  # one time for every image
    assert len({st.st_atime_ns for st in images.values()}) == 1
    for name in (studydir.KEY, studydir.DB_FILE, studydir.BLINDING_FILE):
        assert (made.path / name).stat().st_mode & 0o777 == 0o600, name
    # Each reader gets the practice items in an order of their own, drawn with the study's secret: two
    # readers' orders of 4 items coincide by chance (about 1 in 24), so fresh studies are drawn until
    # they differ; three coinciding in a row (p ~ 1e-4) means the orders are not drawn per reader.
    differed = False
    for attempt in range(3):
        study_dir = (
            made.path
            if attempt == 0
            else create_study(
                run, tmp_path / f"study-{attempt}", _options(per_model=4, calibration=4), progress=False
            ).path
        )
        sessions = _sequences(study_dir)
        practice = {r: [x[:2] for x in seq if x[4]] for r, seq in sessions.items()}
        assert sorted(practice["alice"]) == sorted(practice["bob"])
        if practice["alice"] != practice["bob"]:
            differed = True
            break
    assert differed


def test_key_maps_every_item_back_to_its_source(created):
    run = created.path.parent / "run"
    key = pd.read_parquet(created.path / studydir.KEY)
    samples = pd.read_parquet(run / "samples.parquet")
    cases = pd.read_parquet(run / "cases.parquet").set_index("case_id")
    store = open_study_store(created.path)
    try:
        stored_sha = {r["id"]: r["image_sha256"] for r in store.table(items)}
    finally:
        store.close()
    assert set(stored_sha) == set(key.item)
    for row in key.itertuples():
        if row.model == "real":
            assert row.source_path == cases.loc[row.case_id, "image"] and pd.isna(row.sample)
        else:
            match = samples[(samples.model == row.model) & (samples.case_id == row.case_id)]
            assert row.source_path == match.path[match["sample"] == row.sample].item()
        assert hashlib.sha256(Path(row.source_path).read_bytes()).hexdigest() == row.source_sha256
        png = (created.path / studydir.IMAGES_DIR / f"{row.item}.png").read_bytes()
        assert hashlib.sha256(png).hexdigest() == stored_sha[row.item]
        expected = rendering.normalise(decode_source(row.source_path), 64)
        np.testing.assert_array_equal(decode(png), expected)


def test_calibration_first_rereads_last(created):
    key = pd.read_parquet(created.path / studydir.KEY)
    calibration = set(key.item[key.calibration])
    main = key[~key.calibration]
    assert len(calibration) == 3 and len(main) == 9  # 3 per stratum, 3 strata
    store = open_study_store(created.path)
    try:
        for name in ("alice", "bob"):
            reader_id = next(r["id"] for r in store.table(readers) if r["name"] == name)
            queue = store.queue(reader_id)
            assert [e.position for e in queue] == list(range(len(queue)))
            assert {e.item_id for e in queue[:3]} == calibration
            assert all(e.calibration and e.read_number == 1 for e in queue[:3])
            first = [e for e in queue[3:] if e.read_number == 1]
            rereads = queue[3 + len(first) :]
            assert sorted(e.item_id for e in first) == sorted(main.item)
            assert not any(e.calibration for e in queue[3:])
            assert rereads and all(e.read_number == 2 for e in rereads)
            assert len({e.item_id for e in rereads}) == len(rereads)
            by_model = Counter(main.set_index("item").model[[e.item_id for e in rereads]])
            assert set(by_model) == set(main.model)  # every stratum, half of 3 each
            assert all(abs(n - 1.5) <= 0.5 for n in by_model.values())
            # Washout "0d": hidden until the first read of the same item.
            assert all(e.available_after is not None for e in rereads)
    finally:
        store.close()


def test_tokens_are_stored_only_hashed(created):
    store = open_study_store(created.path)
    try:
        rows = {r["name"]: r for r in store.table(readers)}
        assert set(rows) == set(created.tokens) == {"alice", "bob"}
        for name, token in created.tokens.items():
            assert len(token) >= 32  # 192 bits
            assert rows[name]["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
            assert store.authenticate(token) == SignedIn(rows[name]["id"], name, 1)
    finally:
        store.close()
    for path in created.path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for token in created.tokens.values():
                assert token.encode() not in data, path


def test_create_errors(run_dir, tmp_path):
    def fails(match: str, out: Path | None = None, **kw: Any) -> None:
        target = out or tmp_path / "study"
        with pytest.raises(CreateError, match=match):
            create_study(run_dir, target, _options(**kw), progress=False)
        assert not (target / studydir.STUDY_JSON).exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep")
    fails("already exists and is not empty", out=busy)
    assert (busy / "notes.txt").read_text() == "keep"
    fails(r"--models: \['model-gamma'\] not in .*model-alpha, model-beta", models=("model-gamma",))
    fails("not enough usable images: real has 12 case", per_model=13)
    fails("--washout must be a date", washout="two weeks", reread_percent=10)
    fails("--washout must be a date", washout="2026-13-01", reread_percent=10)
    fails("--reread needs --washout", reread_percent=10)
    fails("a reader is listed twice", readers=("alice", "bob", "alice"))
    fails("letters, digits", readers=("alice smith",))
    fails("--reread is a percentage", reread_percent=150, washout="1d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # nothing half made


def test_create_into_an_existing_empty_directory(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    made = create_study(run_dir, tmp_path / "empty", _options(per_model=2), progress=False)
    assert (made.path / studydir.STUDY_JSON).is_file() and made.n_items == 6


@pytest.mark.parametrize(
    "kw, per_model",
    # 12 cases, 3 strata: calibration items and a fixed --real leave fewer cases for the models.
    [({}, 4), ({"calibration": 3}, 3), ({"real": 6}, 3), ({"real": 2, "calibration": 2}, 4)],
)
def test_default_per_model_keeps_cases_disjoint(run_dir, tmp_path, kw, per_model):
    made = create_study(run_dir, tmp_path / "study", _options(**kw), progress=False)
    key = pd.read_parquet(made.path / studydir.KEY)
    assert made.case_reuse == 1 and key.case_id.is_unique
    main = key[~key.calibration]
    assert Counter(main.model) == {"real": kw.get("real", per_model), **dict.fromkeys(MODELS, per_model)}
    assert key.calibration.sum() == kw.get("calibration", 0)


def test_create_refuses_a_sample_changed_after_the_run(tmp_path):
    run = make_run(tmp_path)
    changed = sorted((run / "samples" / "model-alpha").glob("*.png"))
    for path in changed:
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    with pytest.raises(CreateError, match="changed after the run recorded it") as err:
        create_study(run, tmp_path / "study", _options(), progress=False)
    assert any(str(p) in str(err.value) for p in changed), err.value
    assert not (tmp_path / "study").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".study")]


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_create_leaves_no_study(run_dir, tmp_path, monkeypatch, interrupt):
    calls = []

    def add_assignments(self, rows):
        calls.append(len(rows))
        if len(calls) == 2:  # after the first reader's queue is written
            raise interrupt
        return real(self, rows)

    real = Store.add_assignments
    monkeypatch.setattr(Store, "add_assignments", add_assignments)
    with pytest.raises(type(interrupt)):
        create_study(run_dir, tmp_path / "study", _options(), progress=False)
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []  # neither the study nor its temporary directory


# --- rendering ----------------------------------------------------------------------------------


def _linear_exact(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.3.2 LINEAR_EXACT VOI LUT with output range [0, 1]."""
    y = (x - center) / width + 0.5
    return np.where(x <= center - width / 2, 0.0, np.where(x > center + width / 2, 1.0, y))


def test_window_is_the_linear_exact_voi_lut():
    x = np.array([0.0, 0.1, 0.125, 0.25, 0.3, 0.5, 0.75, 0.9, 1.0])
    # By hand: level 0.25, width 0.5 maps [0, 0.5] onto [0, 1].
    np.testing.assert_allclose(
        rendering.window(x, 0.25, 0.5), [0.0, 0.2, 0.25, 0.5, 0.6, 1.0, 1.0, 1.0, 1.0], atol=1e-12
    )
    np.testing.assert_allclose(rendering.window(x, 0.5, 1.0), x, atol=1e-12)
    for level, width in [(0.5, 1.0), (0.25, 0.5), (0.7, 0.2), (0.1, 1.6), (0.5, 2.0)]:
        np.testing.assert_allclose(
            rendering.window(x, level, width), _linear_exact(x, level, width), atol=1e-12
        )
    for width in (0.0, -0.1, 2.5):
        with pytest.raises(ValueError, match="window width"):
            rendering.window(x, 0.5, width)


def test_crop_stays_inside_the_image():
    img = np.arange(100.0).reshape(10, 10)
    np.testing.assert_array_equal(rendering.crop(img, 1.0, 0.5, 0.5), img)
    np.testing.assert_array_equal(rendering.crop(img, 2.0, 0.5, 0.5), img[2:7, 2:7])
    np.testing.assert_array_equal(rendering.crop(img, 2.0, 0.0, 0.0), img[:5, :5])
    np.testing.assert_array_equal(rendering.crop(img, 2.0, 1.0, 1.0), img[5:, 5:])
    np.testing.assert_array_equal(rendering.crop(img, 2.0, 1.0, 0.0), img[:5, 5:])
    np.testing.assert_array_equal(rendering.crop(img, 4.0, 0.9, 0.2), img[1:3, 8:10])  # round(2.5) = 2
    wide = np.arange(60.0).reshape(6, 10)
    np.testing.assert_array_equal(rendering.crop(wide, 2.0, 0.0, 1.0), wide[3:6, 0:5])
    assert rendering.crop(img, 40.0, 0.5, 0.5).shape == (1, 1)
    with pytest.raises(ValueError, match="zoom"):
        rendering.crop(img, 0.5, 0.5, 0.5)


def test_normalise_centre_crops_a_non_square_image():
    tall = np.full((9, 6), 0.9)
    tall[1:7] = np.linspace(0, 1, 36).reshape(6, 6)  # (9 - 6) // 2 = 1 row off the top
    np.testing.assert_array_equal(rendering.normalise(tall, 6), np.rint(tall[1:7] * 255).astype(np.uint8))
    wide = np.full((8, 12), 1.0)
    wide[:, 2:10] = np.linspace(0, 0.5, 64).reshape(8, 8)
    out = rendering.normalise(wide, 8)
    assert out.dtype == np.uint8 and out.shape == (8, 8)
    np.testing.assert_array_equal(out, np.rint(wide[:, 2:10] * 255).astype(np.uint8))
    # Resampled: a constant crop stays constant, out-of-range values are clipped.
    np.testing.assert_array_equal(rendering.normalise(np.full((30, 50), 0.4), 16), np.full((16, 16), 102))
    assert rendering.normalise(np.full((5, 7), 1.7), 5).max() == 255
    with pytest.raises(ValueError, match="greyscale"):
        rendering.normalise(np.zeros((4, 4, 3)), 4)


def test_view_is_the_windowed_zoomed_stored_image():
    stored = rng(0).integers(0, 256, size=(32, 32), dtype=np.uint8)
    x = stored / 255.0
    # Zoom 1, no resampling: exactly the window of the stored pixels.
    data = rendering.view(stored, level=0.4, width=0.5)
    assert [k for k, _ in png_chunks(data)] == [b"IHDR", b"IDAT", b"IEND"]
    assert ihdr(data)[:4] == (32, 32, 8, 0)
    # Each output is the exact windowed value, rounded (ties may go either way in float32).
    assert np.abs(decode(data) - _linear_exact(x, 0.4, 0.5) * 255).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(decode(rendering.view(stored)), stored)
    # Zoom 2 at the bottom-right corner, shown at the crop's own size.
    data = rendering.view(stored, zoom=2.0, cx=1.0, cy=1.0, out_size=16)
    np.testing.assert_array_equal(decode(data), stored[16:, 16:])
    # Zoom 2 enlarged to 32: a Lanczos resample of that crop (PIL as the reference), then windowed.
    ref = Image.fromarray(x[8:24, 8:24].astype(np.float32), mode="F").resize(
        (32, 32), Image.Resampling.LANCZOS
    )
    expected = np.rint(_linear_exact(np.clip(np.asarray(ref), 0, 1), 0.5, 0.8) * 255)
    got = decode(rendering.view(stored, zoom=2.0, width=0.8))
    assert np.abs(got.astype(int) - expected).max() <= 1


# --- store --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver", reason="PostgreSQL tests need pgserver (pip install pgserver)")
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (pip install 'psycopg[binary]')")
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    yield server
    server.cleanup()


def _new_pg_database(server: Any) -> str:
    import psycopg

    name = f"rs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.get_uri(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "ratings.sqlite")
    return _new_pg_database(request.getfixturevalue("pg_server"))


FUTURE = "2999-01-01T00:00:00Z"
ITEMS = [f"{i:016x}" for i in (0xA0, 0xA1, 0xA2, 0xA3)]


class Tiny:
    """A hand-built study database: alice reads items 0, 1, 3 then re-reads 0 (washout 0 days),
    1 (from a date far ahead) and 3 (14 days after her first read); bob reads items 1 and 2."""

    def __init__(self, url: str):
        self.store = Store(url)
        self.store.create_schema()
        self.store.add_items([{"id": i, "image_sha256": "0" * 64, "prompt": None} for i in ITEMS])
        self.tokens = {"alice": "alice-token-" + "x" * 20, "bob": "bob-token-" + "y" * 22}
        self.alice = self.store.add_reader("alice", self.tokens["alice"])
        self.bob = self.store.add_reader("bob", self.tokens["bob"])
        i0, i1, i2, i3 = ITEMS
        rows = [
            (self.alice, i0, 1, None, None),
            (self.alice, i1, 1, None, None),
            (self.alice, i3, 1, None, None),
            (self.alice, i0, 2, None, 0),
            (self.alice, i1, 2, FUTURE, None),
            (self.alice, i3, 2, None, 14),
            (self.bob, i1, 1, None, None),
            (self.bob, i2, 1, None, None),
        ]
        position: Counter[int] = Counter()
        asg = []
        for reader, item, read, after, days in rows:
            asg.append(
                {"reader_id": reader, "position": position[reader], "item_id": item, "read_number": read,
                 "calibration": False, "available_after": after, "washout_days": days}
            )  # fmt: skip
            position[reader] += 1
        self.store.add_assignments(asg)

    def submit(self, reader: int, item: str, read: int = 1, sid: str | None = None, **kw: Any) -> Any:
        answers = kw.pop("answers", [Answer("anatomy", score=3)])
        kw.setdefault("shown", self.store.shown(reader, item, read))  # a form drawn just now
        return self.store.submit(reader, item, read, sid or str(uuid.uuid4()), answers, **kw)

    def rows(self, table: sa.Table) -> list[dict[str, Any]]:
        return self.store.table(table)


@pytest.fixture
def tiny(db_url) -> Iterator[Tiny]:
    t = Tiny(db_url)
    yield t
    t.store.close()


def test_sqlite_connections_are_configured(tmp_path):
    t = Tiny(sqlite_url(tmp_path / "db.sqlite"))
    try:
        # Three distinct pooled connections (read transactions: a write one would take the lock).
        conns = [t.store.engine.connect().execution_options(sqlite_begin="DEFERRED") for _ in range(3)]
        for conn in conns:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        for conn in conns:
            conn.close()
        plain = sqlite3.connect(tmp_path / "db.sqlite", timeout=0)
        assert plain.execute("PRAGMA foreign_keys").fetchone()[0] == 0  # per connection: not inherited
        # A write transaction takes the lock at BEGIN (IMMEDIATE), so a second writer waits for it.
        with t.store.engine.begin() as conn:
            conn.execute(sa.select(readers.c.id)).all()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                plain.execute("BEGIN IMMEDIATE")
        plain.execute("BEGIN IMMEDIATE")
        plain.rollback()
        plain.close()
    finally:
        t.store.close()


def test_database_constraints_hold_against_raw_inserts(tiny):
    i0, i1, i2, _ = ITEMS
    now = "2026-01-01T00:00:00Z"
    good = {"reader_id": tiny.alice, "item_id": i0, "criterion": "anatomy", "read_number": 1, "score": 3,
            "turing_answer": None, "confidence": None, "created_at": now, "updated_at": now}  # fmt: skip
    with tiny.store.engine.begin() as conn:
        conn.execute(ratings.insert().values(**good))
    bad = [
        {"criterion": "quality", "score": 0},
        {"criterion": "quality", "score": 6},
        {"criterion": TURING, "score": None, "turing_answer": "real", "confidence": 0},
        {"criterion": TURING, "score": None, "turing_answer": "maybe", "confidence": 3},
        {"criterion": "quality", "score": None},  # no answer at all
        {},  # duplicate (reader, item, criterion, read_number)
        {"criterion": "quality", "item_id": i2},  # bob's item, not in alice's queue
        {"criterion": "quality", "read_number": 3},  # no such read
    ]
    for change in bad:
        with pytest.raises(sa.exc.IntegrityError), tiny.store.engine.begin() as conn:
            conn.execute(ratings.insert().values(**{**good, **change}))
    assert [(r["criterion"], r["score"]) for r in tiny.rows(ratings)] == [("anatomy", 3)]
    # The same bounds let the extremes through.
    with tiny.store.engine.begin() as conn:
        conn.execute(ratings.insert().values(**{**good, "criterion": "quality", "score": 5}))
        conn.execute(ratings.insert().values(**{**good, "criterion": "pathology", "score": 1}))
    sub = {"id": "s-1", "reader_id": tiny.alice, "item_id": i1, "read_number": 1, "at": now}
    with tiny.store.engine.begin() as conn:
        conn.execute(submissions.insert().values(**sub))
    with pytest.raises(sa.exc.IntegrityError), tiny.store.engine.begin() as conn:
        conn.execute(submissions.insert().values(**sub))


def test_submit_is_idempotent_in_its_submission_id(tiny):
    i0 = ITEMS[0]
    sid = str(uuid.uuid4())
    first = tiny.submit(tiny.alice, i0, sid=sid, answers=[Answer("anatomy", score=2)], seconds=4.0)
    assert first.created and first.changes == 1
    audit_before = len(tiny.rows(audit_log))
    again = tiny.submit(tiny.alice, i0, sid=sid, answers=[Answer("anatomy", score=5)], seconds=9.0)
    assert not again.created and again.changes == 0
    assert [(r["criterion"], r["score"]) for r in tiny.rows(ratings)] == [("anatomy", 2)]
    assert len(tiny.rows(submissions)) == 1
    assert len(tiny.rows(audit_log)) == audit_before
    assert [r["seconds"] for r in tiny.rows(responses)] == [4.0]


def test_back_edit_keeps_the_old_value_in_the_audit_log(tiny):
    i0 = ITEMS[0]
    tiny.submit(tiny.alice, i0, answers=[Answer("anatomy", score=3), Answer("quality", score=4)], seconds=2.0)
    before = tiny.rows(responses)[0]
    edit = tiny.submit(
        tiny.alice, i0, answers=[Answer("anatomy", score=5), Answer("quality", score=4)], seconds=3.0
    )
    assert edit.created and edit.changes == 1  # quality is unchanged
    assert {r["criterion"]: r["score"] for r in tiny.rows(ratings)} == {"anatomy": 5, "quality": 4}
    trail = [(r["action"], r["field"], r["old"], r["new"], r["actor"]) for r in tiny.rows(audit_log)]
    actor = f"reader:{tiny.alice}"
    assert ("create", "anatomy", None, "score=3", actor) in trail
    assert ("update", "anatomy", "score=3", "score=5", actor) in trail
    assert [t for t in trail if t[1] == "quality"] == [("create", "quality", None, "score=4", actor)]
    after = tiny.rows(responses)[0]
    assert after["seconds"] == 5.0  # time on the item, summed over both visits
    assert after["updated_at"] > before["updated_at"] and after["created_at"] == before["created_at"]
    assert tiny.store.response(tiny.alice, i0, 1).answers["anatomy"].score == 5
    # Flag with a reason, then take the flag back: both changes are audited.
    tiny.submit(tiny.alice, i0, answers=[], flagged=True, flag_reason="  motion  ")
    assert tiny.store.response(tiny.alice, i0, 1).flag_reason == "motion"
    tiny.submit(tiny.alice, i0, answers=[Answer("anatomy", score=5)])
    trail = [(r["field"], r["old"], r["new"]) for r in tiny.rows(audit_log) if r["action"] == "update"]
    assert ("flagged", "False", "True") in trail and ("flagged", "True", "False") in trail
    assert ("flag_reason", "motion", None) in trail


def test_audit_log_is_append_only(tiny):
    tiny.submit(tiny.alice, ITEMS[0])
    before = tiny.rows(audit_log)
    assert before
    for statement in (
        audit_log.update().values(actor="someone else"),
        audit_log.delete(),
        audit_log.delete().where(audit_log.c.id == before[0]["id"]),
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), tiny.store.engine.begin() as conn:
            conn.execute(statement)
    assert tiny.rows(audit_log) == before


def test_a_reader_only_reaches_their_own_queue(tiny):
    i0, i1, i2, _ = ITEMS
    with pytest.raises(StoreError, match="not in your queue"):
        tiny.submit(tiny.alice, i2)  # bob's item
    with pytest.raises(StoreError, match="not in your queue"):
        tiny.submit(tiny.alice, i0, read=3)
    with pytest.raises(StoreError, match="not in your queue"):
        tiny.submit(tiny.bob, i0)
    assert tiny.rows(submissions) == [] and tiny.rows(ratings) == []
    tiny.submit(tiny.bob, i1, answers=[Answer("anatomy", score=1)])
    assert tiny.store.response(tiny.alice, i1, 1) is None
    tiny.submit(tiny.alice, i1, answers=[Answer("anatomy", score=4)])
    assert tiny.store.response(tiny.alice, i1, 1).answers == {"anatomy": Answer("anatomy", score=4)}
    assert tiny.store.response(tiny.bob, i1, 1).answers == {"anatomy": Answer("anatomy", score=1)}
    assert {e.item_id for e in tiny.store.queue(tiny.bob)} == {i1, i2}


def test_submit_validates_answers(tiny):
    i0 = ITEMS[0]
    for answers, kw, match in [
        ([Answer("anatomy", score=0)], {}, "integer 1-5"),
        ([Answer("anatomy", score=6)], {}, "integer 1-5"),
        ([Answer("anatomy", score=True)], {}, "integer 1-5"),
        ([Answer("anatomy", score=2.5)], {}, "integer 1-5"),  # type: ignore[arg-type]
        ([Answer(TURING, turing_answer="maybe", confidence=3)], {}, "'real' or 'synthetic'"),
        ([Answer(TURING, turing_answer="real", confidence=9)], {}, "confidence must be"),
        ([Answer("anatomy")], {}, "no answer"),
        ([Answer("anatomy", score=2), Answer("anatomy", score=3)], {}, "twice"),
        ([], {}, "nothing to submit"),
        ([], {"flagged": True, "flag_reason": "   "}, "needs a reason"),
    ]:
        with pytest.raises(StoreError, match=match):
            tiny.submit(tiny.alice, i0, answers=answers, **kw)
    assert tiny.rows(responses) == [] and tiny.rows(submissions) == []


def test_authenticate(tiny, monkeypatch):
    assert tiny.store.authenticate(tiny.tokens["alice"]) == SignedIn(tiny.alice, "alice", 1)
    assert tiny.store.authenticate(f"  {tiny.tokens['bob']}\n") == SignedIn(tiny.bob, "bob", 1)
    for wrong in ("", "   ", "nope", tiny.tokens["alice"][:-1], tiny.tokens["alice"] + "x", "a" * 201):
        assert tiny.store.authenticate(wrong) is None
    # Every stored digest is compared (no early exit on a match), each in constant time.
    calls = []
    real = hmac.compare_digest

    def compare_digest(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    assert tiny.store.authenticate(tiny.tokens["alice"]) == SignedIn(tiny.alice, "alice", 1)
    assert tiny.store.authenticate("wrong") is None
    assert len(calls) == 4


def test_washout_hides_rereads_until_due(tiny):
    i0, i1, _, i3 = ITEMS
    queue = {(e.item_id, e.read_number): e for e in tiny.store.queue(tiny.alice)}
    assert all(queue[(i, 1)].available_after is None for i in (i0, i1, i3))
    assert queue[(i1, 2)].available_after == datetime(2999, 1, 1, tzinfo=UTC)
    assert queue[(i0, 2)].available_after is not None  # "0d": not before the first read
    assert queue[(i3, 2)].available_after is not None
    tiny.submit(tiny.alice, i0)
    tiny.submit(tiny.alice, i3)
    first_read = datetime.fromisoformat(
        next(r["created_at"] for r in tiny.rows(responses) if r["item_id"] == i3)
    )
    queue = {(e.item_id, e.read_number): e for e in tiny.store.queue(tiny.alice)}
    assert queue[(i0, 2)].available_after is None  # right after the first read
    assert queue[(i1, 2)].available_after is not None  # the date is still ahead
    assert queue[(i3, 2)].available_after == first_read + timedelta(days=14)
    later = {
        (e.item_id, e.read_number): e
        for e in tiny.store.queue(tiny.alice, now=first_read + timedelta(days=15))
    }
    assert later[(i3, 2)].available_after is None
    far = {
        (e.item_id, e.read_number): e
        for e in tiny.store.queue(tiny.alice, now=datetime(2999, 1, 2, tzinfo=UTC))
    }
    assert far[(i1, 2)].available_after is None
    # A re-read is answered apart from the first read of the same item.
    tiny.submit(tiny.alice, i0, read=2, answers=[Answer("anatomy", score=5)])
    scores = {(r["item_id"], r["read_number"]): r["score"] for r in tiny.rows(ratings)}
    assert scores[(i0, 1)] == 3 and scores[(i0, 2)] == 5


def test_reissue_retires_the_old_token(tiny):
    old = tiny.tokens["bob"]
    tiny.store.reissue_token("bob", "a-brand-new-token-for-bob-123456")
    assert tiny.store.authenticate(old) is None
    assert tiny.store.authenticate("a-brand-new-token-for-bob-123456") == SignedIn(tiny.bob, "bob", 2)
    assert tiny.store.authenticate(tiny.tokens["alice"]) == SignedIn(tiny.alice, "alice", 1)
    assert any(r["action"] == "reissue_token" and r["reader_id"] == tiny.bob for r in tiny.rows(audit_log))
    with pytest.raises(StoreError, match="no reader named 'carol'"):
        tiny.store.reissue_token("carol", "whatever-token-000000000000000")


def test_a_retired_token_cannot_write_and_every_write_names_its_token_generation(tiny):
    """A session signed in before a reissue is refused at its next submit (the app also checks on
    every run); the refusal is audited, and each write records the generation that made it."""
    i1 = ITEMS[1]
    before = tiny.store.shown(tiny.bob, i1, 1)
    assert before == Shown(token_generation=1, revision=0)
    tiny.submit(tiny.bob, i1, shown=before)
    tiny.store.reissue_token("bob", "a-brand-new-token-for-bob-123456")
    assert tiny.store.token_generation(tiny.bob) == 2
    with pytest.raises(TokenRetired, match="reissued"):
        tiny.submit(tiny.bob, i1, answers=[Answer("anatomy", score=1)], shown=Shown(1, 1))
    assert [(r["criterion"], r["score"]) for r in tiny.rows(ratings)] == [("anatomy", 3)]  # unchanged
    tiny.submit(tiny.bob, i1, answers=[Answer("anatomy", score=5)], shown=Shown(2, 1))
    trail = [(r["action"], r["token_generation"]) for r in tiny.rows(audit_log) if r["reader_id"] == tiny.bob]
    assert trail == [
        ("add_reader", None), ("create", 1), ("reissue_token", None), ("refuse_retired_token", 1), ("update", 2),
    ]  # fmt: skip


def test_a_form_that_is_out_of_date_is_refused_with_the_stored_answer(tiny):
    """Two tabs of one reader: the second submit, made from a form drawn before the first was
    stored, must not silently overwrite it."""
    i0 = ITEMS[0]
    tab_a = tab_b = tiny.store.shown(tiny.alice, i0, 1)  # both tabs drew the empty form
    tiny.submit(tiny.alice, i0, answers=[Answer("anatomy", score=2)], shown=tab_a)
    with pytest.raises(StaleForm, match="changed in another tab") as refused:
        tiny.submit(tiny.alice, i0, answers=[Answer("anatomy", score=5)], shown=tab_b)
    assert "anatomy: 2" in str(refused.value) and refused.value.stored.answers["anatomy"].score == 2
    assert [(r["criterion"], r["score"]) for r in tiny.rows(ratings)] == [("anatomy", 2)]
    refusals = [r for r in tiny.rows(audit_log) if r["action"] == "refuse_stale_form"]
    assert len(refusals) == 1 and refusals[0]["old"] == "revision=1" and "anatomy=5" in refusals[0]["new"]
    # A form drawn from the stored answer goes through, and counts as an edit.
    tiny.submit(
        tiny.alice, i0, answers=[Answer("anatomy", score=5)], shown=tiny.store.shown(tiny.alice, i0, 1)
    )
    assert tiny.store.response(tiny.alice, i0, 1).edits == 1
    assert tiny.store.shown(tiny.alice, i0, 1).revision == 2
    # A double click repeats the submission id: still one stored submit, not a stale refusal.
    sid = str(uuid.uuid4())
    shown = tiny.store.shown(tiny.alice, i0, 1)
    tiny.submit(tiny.alice, i0, sid=sid, answers=[Answer("anatomy", score=1)], shown=shown)
    assert not tiny.submit(tiny.alice, i0, sid=sid, answers=[Answer("anatomy", score=1)], shown=shown).created


@pytest.mark.parametrize("second", ["double click", "other tab"])
def test_two_submits_of_one_answer_are_serialised_on_postgresql(pg_server, second):
    """PostgreSQL runs READ COMMITTED. Two submits of one answer drawn from the same revision: a
    double click (one submission id) or two tabs (two ids, two answers). The first is held just
    after its checks passed, before it writes; the second starts then, in another thread. It must
    wait for the first, and then count as the same submit (double click) or be refused as stale
    (other tab). Without the lock on the answer's row the second passed its checks meanwhile and
    the two tabs overwrote each other. (SQLite's BEGIN IMMEDIATE serialises every write.)"""
    tiny = Tiny(_new_pg_database(pg_server))
    other = Store(tiny.store.url)
    try:
        i0 = ITEMS[0]
        shown = tiny.store.shown(tiny.alice, i0, 1)
        first_sid = str(uuid.uuid4())
        second_sid = first_sid if second == "double click" else str(uuid.uuid4())
        outcome: dict[str, Any] = {}

        def submit_second() -> None:
            try:
                outcome["result"] = other.submit(
                    tiny.alice, i0, 1, second_sid, [Answer("anatomy", score=5)], shown=shown
                )
            except StoreError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=submit_second)

        @sa.event.listens_for(tiny.store.engine, "before_cursor_execute")
        def _hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if (
                statement.startswith("INSERT INTO submissions")
                and not thread.is_alive()
                and "result" not in outcome
            ):
                thread.start()
                thread.join(timeout=1.0)  # the second submit runs now, as far as it can

        first = tiny.store.submit(tiny.alice, i0, 1, first_sid, [Answer("anatomy", score=2)], shown=shown)
        thread.join(timeout=30)
        assert first.created and not thread.is_alive()
        if second == "double click":
            assert not outcome["result"].created and "error" not in outcome
        else:
            assert isinstance(outcome.get("error"), StaleForm), outcome
        assert [(r["criterion"], r["score"]) for r in tiny.rows(ratings)] == [("anatomy", 2)]
        assert [r["edits"] for r in tiny.rows(responses)] == [0]
        assert len(tiny.rows(submissions)) == 1
    finally:
        other.close()
        tiny.store.close()


def test_a_reissue_waits_for_a_submit_in_flight_on_postgresql(pg_server):
    """A reissue that commits while an old session's submit is between its token check and its
    commit would let that submit through after the token was retired. The reissue must wait."""
    tiny = Tiny(_new_pg_database(pg_server))
    admin_store = Store(tiny.store.url)
    try:
        i1 = ITEMS[1]
        shown = tiny.store.shown(tiny.bob, i1, 1)
        thread = threading.Thread(
            target=admin_store.reissue_token, args=("bob", "new-token-for-bob-0123456789")
        )
        waited: list[bool] = []

        @sa.event.listens_for(tiny.store.engine, "before_cursor_execute")
        def _hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.startswith("INSERT INTO submissions") and not waited:
                thread.start()
                thread.join(timeout=1.0)
                waited.append(thread.is_alive())  # still waiting for this submit's lock

        tiny.submit(tiny.bob, i1, shown=shown)
        thread.join(timeout=30)
        assert waited == [True] and not thread.is_alive()
        actions = [
            r["action"]
            for r in sorted(tiny.rows(audit_log), key=lambda r: r["id"])
            if r["reader_id"] == tiny.bob
        ]
        assert actions == ["add_reader", "create", "reissue_token"]  # the submit, then the reissue
        assert tiny.store.token_generation(tiny.bob) == 2
    finally:
        admin_store.close()
        tiny.store.close()


def test_free_text_is_capped_and_cleaned(tiny):
    i0, i1 = ITEMS[0], ITEMS[1]
    with pytest.raises(StoreError, match="at most 2000"):
        tiny.submit(tiny.alice, i0, comment="x" * 2001)
    with pytest.raises(StoreError, match="at most 2000"):
        tiny.submit(tiny.alice, i0, flagged=True, flag_reason="y" * 2001)
    assert tiny.rows(responses) == []  # nothing of a refused submit is kept
    tiny.submit(tiny.alice, i0, comment="ok\x00 \u202eevil\u202c  \x1b[31mred\r\nline2 " + "z" * 1960)
    stored = tiny.store.response(tiny.alice, i0, 1).comment
    assert stored.startswith("ok evil  [31mred\nline2 ") and len(stored) <= 2000
    assert not any(ch in stored for ch in "\x00\u202e\u202c\x1b\r")
    # The database holds the line too, whatever writes to it.
    with pytest.raises(sa.exc.IntegrityError), tiny.store.engine.begin() as conn:
        conn.execute(responses.update().where(responses.c.item_id == i0).values(comment="c" * 2001))
    tiny.submit(tiny.alice, i1, comment="c" * 2000)  # the limit itself is allowed


def test_text_helpers():
    assert text.clean(None) is None and text.clean(" \x00 ") is None
    assert text.clean("a\u2066b\u2069c\u200fd\x07e\tf") == "abcde\tf"
    for cell in ("=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert text.spreadsheet_safe(cell) == "'" + cell
    assert text.spreadsheet_safe("fine") == "fine" and text.spreadsheet_safe(-2) == -2
    assert text.printable("a\x1b[2J\x1b]0;pwned\x07b\x9b31mc\nd") == "abc d"


def test_exports_defuse_spreadsheet_formulas(tmp_path):
    made = make_study(tmp_path, comment=True, per_model=1, criteria="quality")
    _, _, store = admin.open_store(made.path)
    try:
        rid = store.authenticate(made.tokens["alice"]).reader_id
        first, second = store.queue(rid)[:2]
        for entry, kw in (
            (first, {"comment": '=HYPERLINK("http://x","y")'}),
            (second, {"flagged": True, "flag_reason": "@SUM(1)"}),
        ):
            store.submit(
                rid, entry.item_id, 1, str(uuid.uuid4()), [Answer("quality", score=3)],
                shown=store.shown(rid, entry.item_id, 1), **kw,
            )  # fmt: skip
    finally:
        store.close()
    admin.export(made.path)
    ratings_csv = (made.path / "ratings.csv").read_text()
    comments_csv = (made.path / "comments.csv").read_text()
    assert "'@SUM(1)" in ratings_csv and ",@SUM" not in ratings_csv
    assert "'=HYPERLINK" in comments_csv and ',"=HYPERLINK' not in comments_csv
    # The Parquet files keep the exact text.
    assert "@SUM(1)" in set(pd.read_parquet(made.path / "ratings.parquet").flag_reason)
    assert pd.read_parquet(made.path / "comments.parquet").comment.tolist() == ['=HYPERLINK("http://x","y")']


def test_status_prints_no_terminal_escape_sequences(tmp_path, capsys):
    made = make_study(tmp_path, per_model=1, criteria="quality")
    _, _, store = admin.open_store(made.path)
    try:
        rid = store.authenticate(made.tokens["alice"]).reader_id
        entry = store.queue(rid)[0]
        # Store.submit strips ESC itself; a row written around it (an older version) must not reach
        # the terminal either.
        store.submit(rid, entry.item_id, 1, str(uuid.uuid4()), [], flagged=True, flag_reason="dark",
                     shown=store.shown(rid, entry.item_id, 1))  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(responses.update().values(flag_reason="dark\x1b[2J\x1b]0;owned\x07 image"))
    finally:
        store.close()
    capsys.readouterr()
    assert cli_main(["reader-study", "status", str(made.path)]) == 0
    out = capsys.readouterr().out
    assert "dark image" in out and "\x1b" not in out and "\x07" not in out


def test_a_version_1_database_is_upgraded_by_the_admin_commands(tmp_path):
    made = make_study(tmp_path, per_model=1, criteria="quality")
    db = made.path / studydir.DB_FILE
    with sqlite3.connect(db) as conn:  # what a study made by the previous release holds
        for table, column in (
            ("readers", "token_generation"),
            ("responses", "edits"),
            ("audit_log", "token_generation"),
        ):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute("UPDATE study_meta SET value = '1' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 1.*reader-study status STUDY_DIR` upgrades it"):
        open_study_store(made.path).check_schema()
    _, _, store = admin.open_store(made.path)  # status, export and reissue open it like this
    try:
        store.check_schema()
        assert store.authenticate(made.tokens["alice"]).token_generation == 1
        assert any(r["action"] == "upgrade_schema" for r in store.table(audit_log))
    finally:
        store.close()


def test_schema_is_created_once_and_checked(db_url):
    store = Store(db_url)
    try:
        with pytest.raises(StoreError):
            store.check_schema()  # empty database
        store.create_schema()
        store.check_schema()
        with pytest.raises(StoreError, match="already holds a reader study"):
            store.create_schema()
    finally:
        store.close()


# --- admin: status and export -------------------------------------------------------------------


EXPECTED_COLUMNS = [
    "reader", "item", "model", "case_id", "sample", "criterion", "score", "turing_answer", "confidence",
    "created_at", "read_number", "calibration", "flagged", "flag_reason", "seconds", "updated_at",
    "position", "edits",
]  # fmt: skip
COMMENT_COLUMNS = [
    "reader", "item", "model", "case_id", "sample", "read_number", "position", "comment", "created_at",
    "updated_at",
]  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def rated_study(request, tmp_path):
    """A study with answers from alice (every first read, two flags, one re-read) and bob (two items),
    and the answers as the test gave them: {(reader, item, read): (answers, flagged, reason, comment)}."""
    database = None if request.param == "sqlite" else _new_pg_database(request.getfixturevalue("pg_server"))
    made = make_study(
        tmp_path, turing=True, comment=True, per_model=2, calibration=2, reread_percent=50, washout="0d",
        database=database,
    )  # fmt: skip
    given: dict[tuple[str, str, int], tuple[list[Answer], bool, str | None, str | None]] = {}
    _, _, store = admin.open_store(made.path)
    try:
        ids = {r["name"]: r["id"] for r in store.table(readers)}
        alice = [e for e in store.queue(ids["alice"]) if e.read_number == 1]
        for n, entry in enumerate(alice):
            answers = [Answer(c, score=1 + (n + j) % 5) for j, c in enumerate(CRITERIA)]
            answers.append(Answer(TURING, turing_answer=("real", "synthetic")[n % 2], confidence=1 + n % 5))
            flagged, reason, comment = False, None, f"note {n}" if n % 3 == 0 else None
            if n == 1:
                answers, flagged, reason = [], True, "blurry"  # flagged instead of rated
            if n == 2:
                flagged, reason = True, "cropped"  # flagged and rated
            given[("alice", entry.item_id, 1)] = (answers, flagged, reason, comment)
        reread = next(e for e in store.queue(ids["alice"]) if e.read_number == 2)
        given[("alice", reread.item_id, 2)] = ([Answer("anatomy", score=5)], False, None, None)
        for entry in store.queue(ids["bob"])[:2]:
            given[("bob", entry.item_id, 1)] = ([Answer("quality", score=2)], False, None, None)
        for (reader, item, read), (answers, flagged, reason, comment) in given.items():
            store.submit(ids[reader], item, read, str(uuid.uuid4()), answers, flagged=flagged,
                         flag_reason=reason, comment=comment, seconds=1.5,
                         shown=store.shown(ids[reader], item, read))  # fmt: skip
    finally:
        store.close()
    return made, given, request.param


def store_rows(path: Path, table: sa.Table) -> list[Any]:
    _, _, store = admin.open_store(path)
    try:
        return [SimpleNamespace(**r) for r in store.table(table)]
    finally:
        store.close()


def test_export_is_the_right_unblinding_join(rated_study):
    made, given, backend = rated_study
    frame = admin.export_frame(made.path)
    assert list(frame.columns) == EXPECTED_COLUMNS
    key = pd.read_parquet(made.path / studydir.KEY).set_index("item")
    expected = set()
    for (reader, item, read), (answers, flagged, reason, comment) in given.items():
        k = key.loc[item]
        sample = None if pd.isna(k["sample"]) else int(k["sample"])
        for a in answers or [Answer(FLAG)]:
            expected.add(
                (reader, item, k.model, k.case_id, sample, a.criterion, a.score, a.turing_answer, a.confidence,
                 read, bool(k.calibration), flagged, reason, 0)
            )  # fmt: skip

    def plain(v: Any) -> Any:
        return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v

    got = {
        tuple(plain(v) for v in row)
        for row in frame[
            [c for c in EXPECTED_COLUMNS if c not in ("created_at", "seconds", "updated_at", "position")]
        ]
        .astype(object)
        .itertuples(index=False)
    }
    assert got == expected
    assert len(frame) == len(expected)
    assert frame.created_at.notna().all() and frame.updated_at.notna().all()
    assert (frame.seconds == 1.5).all()
    flag_only = frame[frame.criterion == FLAG]
    assert len(flag_only) == 1 and flag_only.flag_reason.item() == "blurry" and flag_only.score.isna().all()
    assert frame.calibration.any() and (frame.read_number == 2).any()
    if backend == "postgresql":
        assert not (made.path / studydir.DB_FILE).exists()
        assert study.load(made.path)[1].database.startswith("postgresql")

    # position: the item's place in that reader's queue, as the database has it.
    positions = {
        (r.reader_id, r.item_id, r.read_number): r.position for r in store_rows(made.path, assignments)
    }
    ids = {r.name: r.id for r in store_rows(made.path, readers)}
    assert [positions[(ids[r.reader], r.item, r.read_number)] for r in frame.itertuples()] == list(
        frame.position
    )

    # Comments: once per response, in their own file, not repeated on every criterion row.
    notes = admin.comments_frame(made.path)
    assert list(notes.columns) == COMMENT_COLUMNS
    assert sorted(zip(notes.reader, notes.item, notes.comment)) == sorted(
        (r, i, c) for (r, i, _), (_, _, _, c) in given.items() if c is not None
    )

    paths = admin.export(made.path)
    assert sorted(p.name for p in paths) == [
        "comments.csv",
        "comments.parquet",
        "ratings.csv",
        "ratings.parquet",
    ]
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o600, path  # exports unblind: owner-only

    def nulls_as_none(f: pd.DataFrame) -> pd.DataFrame:
        f = f.astype(object)
        return f.where(f.notna(), None)

    pd.testing.assert_frame_equal(
        nulls_as_none(pd.read_parquet(made.path / "ratings.parquet")), nulls_as_none(frame)
    )
    csv = pd.read_csv(made.path / "ratings.csv", dtype={"case_id": str, "item": str})
    assert list(csv.columns) == EXPECTED_COLUMNS and len(csv) == len(frame)
    assert list(csv.item) == list(frame.item) and list(csv.model) == list(frame.model)
    assert csv.score.fillna(-1).astype(int).tolist() == frame.score.fillna(-1).astype(int).tolist()
    single = admin.export(made.path, made.path.parent / "out" / "x.parquet")
    assert single == [made.path.parent / "out" / "x.parquet", made.path.parent / "out" / "x-comments.parquet"]
    assert all(p.is_file() for p in single)
    with pytest.raises(study.StudyError, match=r"\.csv or \.parquet"):
        admin.export(made.path, made.path.parent / "x.txt")


def test_status_counts(rated_study):
    made, given, _ = rated_study
    progress, flagged = admin.status(made.path)
    by_name = {r.reader: r for r in progress}
    assert set(by_name) == {"alice", "bob"}
    _, _, store = admin.open_store(made.path)
    try:
        ids = {r["name"]: r["id"] for r in store.table(readers)}
        rows = store.table(assignments)
    finally:
        store.close()
    for name, reader_id in ids.items():
        mine = [row for row in rows if row["reader_id"] == reader_id]
        answered = [k for k in given if k[0] == name]
        first_done = {item for (_, item, read) in answered if read == 1}
        r = by_name[name]
        assert r.done == len(answered)
        assert r.total == len(mine)
        assert r.flagged == sum(given[k][1] for k in answered)
        assert r.median_seconds == 1.5
        # A re-read waits (washout 0 days) until the first read of its item.
        assert r.rereads_waiting == sum(
            row["read_number"] == 2 and row["item_id"] not in first_done for row in mine
        )
    assert by_name["alice"].rereads_waiting == 0 and by_name["bob"].rereads_waiting > 0
    assert sorted(zip(flagged.reader, flagged.reason)) == [("alice", "blurry"), ("alice", "cropped")]
    assert set(flagged.item) <= {i for (_, i, _) in given}


def test_export_of_a_study_without_answers(tmp_path):
    made = make_study(tmp_path, per_model=1)
    frame = admin.export_frame(made.path)
    assert list(frame.columns) == EXPECTED_COLUMNS and len(frame) == 0
    progress, flagged = admin.status(made.path)
    assert [(r.reader, r.done, r.total, r.flagged) for r in progress] == [
        ("alice", 0, 3, 0),
        ("bob", 0, 3, 0),
    ]
    assert len(flagged) == 0


def test_export_needs_the_key(tmp_path):
    made = make_study(tmp_path, per_model=1)
    (made.path / studydir.KEY).unlink()
    with pytest.raises(study.StudyError, match="key.parquet is missing"):
        admin.export_frame(made.path)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_create_status_export_reissue(tmp_path, capsys):
    run = make_run(tmp_path)
    out = tmp_path / "cli-study"
    argv = ["-q", "reader-study", "create", str(run), "--out", str(out), "--readers", "alice,bob",
            "--per-model", "2", "--size", "64", "--turing", "--calibration", "1"]  # fmt: skip
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    tokens = dict(re.findall(r"^  ([a-z]+): (\S+)$", printed, re.MULTILINE))
    assert set(tokens) == {"alice", "bob"} and tokens["alice"] != tokens["bob"]
    for path in out.rglob("*"):
        if path.is_file():
            assert not any(t.encode() in path.read_bytes() for t in tokens.values()), path
    store = open_study_store(out)
    try:
        alice = store.authenticate(tokens["alice"]).reader_id
        assert store.authenticate(tokens["bob"]).name == "bob"
        entry = store.queue(alice)[0]
        store.submit(
            alice, entry.item_id, 1, str(uuid.uuid4()), [], flagged=True, flag_reason="dark",
            shown=store.shown(alice, entry.item_id, 1),
        )  # fmt: skip
    finally:
        store.close()

    assert cli_main(["reader-study", "status", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in printed.splitlines()[1:3]}
    assert rows["alice"][1:5] == ["1", "7", "0", "1"]  # done, total (1 + 3 x 2), waiting, flagged
    assert rows["bob"][1:5] == ["0", "7", "0", "0"]
    assert f"{entry.item_id} (read 1) by alice" in printed and "dark" in printed
    assert "model-alpha" not in printed  # status stays blinded

    assert cli_main(["reader-study", "export", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / "ratings.csv"), str(out / "ratings.parquet")]
    assert pd.read_parquet(out / "ratings.parquet").criterion.tolist() == [FLAG]

    assert cli_main(["reader-study", "reissue", str(out), "--reader", "bob"]) == 0
    new = capsys.readouterr().out.splitlines()[-1].strip()
    store = open_study_store(out)
    try:
        assert store.authenticate(tokens["bob"]) is None
        assert store.authenticate(new).name == "bob"
    finally:
        store.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "{run}", "--out", "{busy}", "--readers", "alice"], "already exists and is not empty"),
        (
            ["create", "{run}", "--out", "{new}", "--readers", "alice", "--reread", "10"],
            "--reread needs --washout",
        ),
        (["create", "{run}", "--out", "{new}", "--readers", "alice", "--models", "nope"], "--models"),
        (
            ["create", "{run}", "--out", "{new}", "--readers", "alice", "--criteria", "beauty"],
            "unknown criterion",
        ),
        (
            ["create", "{run}", "--out", "{new}", "--readers", "alice", "--per-model", "99"],
            "not enough usable",
        ),
        (["status", "{new}"], "is not a reader study directory"),
        (["export", "{study}", "--out", "{new}/x.txt"], r"\.csv or \.parquet"),
        (["reissue", "{study}", "--reader", "carol"], "no reader named 'carol'"),
    ],
)
def test_cli_errors_are_one_line(run_dir, tmp_path, capsys, caplog, args, message):
    places = {"run": run_dir, "busy": tmp_path / "busy", "new": tmp_path / "new", "study": tmp_path / "study"}
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    create_study(run_dir, tmp_path / "study", _options(per_model=1), progress=False)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        rc = cli_main(["-q", "reader-study", *(a.format(**places) for a in args)])
    assert rc != 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith("error: ") and re.search(message, errors[0])
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "new" / studydir.STUDY_JSON).exists()


# --- landmarks (--landmarks norberg) ------------------------------------------------------------


def _click(x: float, y: float, width: float, height: float | None = None, t: int = 1) -> dict[str, Any]:
    """What streamlit-image-coordinates reports for a click."""
    return {"x": x, "y": y, "width": width, "height": width if height is None else height, "unix_time": t}


def test_a_click_maps_back_to_the_source_pixel_by_hand():
    # Source 80 wide, 96 tall: the study keeps rows 8..87 (80 x 80), resampled to 64 (x 1.25 back).
    top, left, side = rendering.square_box(96, 80)
    assert (top, left, side) == (8, 0, 80)
    # Zoom 2 panned right: the view is stored columns 32..63, rows 16..47, drawn at 512 px.
    box = placement.ViewBox(*rendering.crop_box(64, 64, 2.0, 0.75, 0.5), out=placement.drawn_size(64))
    assert box == placement.ViewBox(top=16, left=32, height=32, width=32, out=512)
    # Shown 500 px wide. The middle of the top half, (250, 125), is the edge between stored columns
    # 47 and 48 (x = 47.5) and rows 23 and 24; in the source, edges 60 and 8 + 24 * 1.25 = 38.
    stored = placement.display_to_stored(_click(250, 125, 500), box)
    assert stored == (47.5, 23.5)
    assert placement.stored_to_original(*stored, 64, left, top, side) == (59.5, 37.5)
    # The view's top-left corner is the top-left edge of stored pixel (32, 16).
    assert placement.display_to_stored(_click(0, 0, 500), box) == (31.5, 15.5)
    # A wide source (100 x 60, columns 20..79 kept) enlarged to 64, shown 400 x 400 at zoom 1.
    top, left, side = rendering.square_box(60, 100)
    assert (top, left, side) == (0, 20, 60)
    whole = placement.ViewBox(0, 0, 64, 64, 512)
    stored = placement.display_to_stored(_click(100, 300, 400), whole)
    assert stored == (15.5, 47.5)
    # Edges 16 and 48 of the stored image are 16 * 60/64 = 15 and 45 in the kept square.
    assert placement.stored_to_original(*stored, 64, left, top, side) == (34.5, 44.5)
    # The drawn height counts for y on its own (a browser may round the two differently).
    assert placement.display_to_stored(_click(100, 150, 400, 200), whole) == (15.5, 47.5)
    # Off the image, or without a size: no point.
    for off in (_click(-1, 5, 400), _click(5, 401, 400), _click(5, 5, 0), {"x": 1}, None):
        assert placement.display_to_stored(off or {}, whole) is None
    # And back: a stored point is drawn where it was clicked.
    x, y = box.from_stored(47.5, 23.5)
    assert (x, y) == (255.5, 127.5)  # drawn pixel centres at integers: edge 256 is 255.5


@pytest.mark.parametrize(
    "height, width, x0, y0, zoom, cx, cy, shown",
    [(120, 90, 50.3, 70.8, 2.0, 0.6, 0.55, 437), (60, 100, 33.2, 20.6, 3.0, 0.2, 0.3, 611)],
)
def test_clicking_a_spot_in_the_view_finds_it_in_the_source(height, width, x0, y0, zoom, cx, cy, shown):
    """Independent of the formulas: a blob drawn in the source at a known place is located in the
    image the browser gets (after PIL's resampling, zoom and pan), clicked there, and mapped back."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    source = 0.1 + 0.8 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 3.0**2))
    stored = rendering.normalise(source, 64)
    top, left, side = rendering.square_box(height, width)
    box = placement.ViewBox(*rendering.crop_box(64, 64, zoom, cx, cy), out=placement.drawn_size(64))
    view = rendering.view_pixels(stored, zoom=zoom, cx=cx, cy=cy, out_size=64)
    drawn = placement.draw(view, placement.Placement(), box)[..., 0].astype(np.float64)
    assert drawn.shape == (box.out, box.out)
    weight = np.clip(drawn - np.median(drawn), 0, None)
    py, px = np.mgrid[0 : box.out, 0 : box.out]
    centre = ((weight * px).sum() / weight.sum(), (weight * py).sum() / weight.sum())
    # The pixel at drawn position c covers [c, c + 1) of the drawn image, shown `shown` px wide.
    click = _click((centre[0] + 0.5) * shown / box.out, (centre[1] + 0.5) * shown / box.out, shown)
    got = placement.stored_to_original(*placement.display_to_stored(click, box), 64, left, top, side)
    # Half a pixel off at either resampling would be 0.2-0.5 px here.
    np.testing.assert_allclose(got, (x0, y0), atol=0.03)


def test_placement_steps_undo_and_clear():
    p = placement.Placement()
    assert placement.screen_sides() == ("right", "left")  # standard display: patient's right on the left
    assert p.next_step() == placement.Step("right_head_1", "right", 1)
    assert "patient's **RIGHT** hip, on the image's left" in placement.instruction(p.next_step())
    for i in range(3):
        assert not p.can_finish_outline()
        p = p.place(10 + i, 20 - i)
    assert p.can_finish_outline() and p.next_step().name == "right_head_4"
    p = p.finish_outline()
    assert p.next_step() == placement.Step("right_rim", "right", None)
    p = p.place(5, 5)
    assert p.next_step().name == "left_head_1"
    assert "image's right" in placement.instruction(p.next_step())
    assert p.undo().next_step().name == "right_rim"  # the outline stays finished
    assert p.undo().undo().next_step().name == "right_head_3"  # an outline point reopens it
    for i in range(placement.MAX_OUTLINE):
        p = p.place(50 + i, 30 + (i % 3))
    assert p.next_step().name == "left_rim"  # the outline is full
    p = p.place(60, 10)
    assert p.next_step() is None and placement.problems(p.as_dict()) == []
    assert placement.instruction(None).startswith("All landmarks are placed")
    with pytest.raises(placement.PlacementError, match="every landmark is placed"):
        p.place(1, 1)
    cleared = p.clear("right")
    assert {placement.side_of(n) for n in cleared.as_dict()} == {"left"}
    assert cleared.next_step().name == "right_head_1"
    assert placement.problems(cleared.as_dict()) == [
        "3 more outline point(s) of the patient's right femoral head",
        "the patient's right acetabular rim point",
    ]
    # Resumed from stored points, in any order: the same points, same next step.
    back = placement.Placement.from_points(dict(reversed(list(p.as_dict().items()))))
    assert back.as_dict() == p.as_dict() and back.next_step() is None
    assert placement.Placement.from_points(cleared.as_dict()).next_step().name == "right_head_1"
    assert [n for n, _, _ in back.points][:4] == ["right_head_1", "right_head_2", "right_head_3", "right_rim"]
    with pytest.raises(placement.PlacementError, match="at least 3"):
        placement.Placement().finish_outline()


def test_handle_click_takes_each_click_once():
    box = placement.ViewBox(0, 0, 64, 64, 512)
    p = placement.handle_click(placement.Placement(), _click(80, 40, 640, t=1), box)
    assert p.as_dict() == {"right_head_1": (7.5, 3.5)}
    # The component reports its last click on every rerun: the same click again changes nothing.
    assert placement.handle_click(p, _click(80, 40, 640, t=1), box) == p
    # The same spot clicked again later is a new point.
    p = placement.handle_click(p, _click(80, 40, 640, t=2), box)
    assert list(p.as_dict()) == ["right_head_1", "right_head_2"]
    # A click off the image is used up without a point; so is None (nothing clicked yet).
    off = placement.handle_click(p, _click(700, 40, 640, t=3), box)
    assert off.as_dict() == p.as_dict() and off.last_click != p.last_click
    assert placement.handle_click(p, None, box) == p


def test_check_points_refuses_what_is_not_a_landmark():
    assert placement.check_points({"left_rim": (1, 2.5)}) == {"left_rim": (1.0, 2.5)}
    for bad, match in [
        ({"left_head_center": (1, 1)}, "unknown landmark"),
        ({"left_head_0": (1, 1)}, "unknown landmark"),
        ({f"left_head_{placement.MAX_OUTLINE + 1}": (1, 1)}, "unknown landmark"),
        ({"nose": (1, 1)}, "unknown landmark"),
        ({"left_rim": (float("nan"), 1)}, "finite"),
        ({"left_rim": ("a", 1)}, "two numbers"),
        ({"left_rim": (1, 2, 3)}, "two numbers"),
        ({"left_head_1": (1, 1), "left_head_3": (1, 1)}, "without gaps"),
    ]:
        with pytest.raises(placement.PlacementError, match=match):
            placement.check_points(bad)


POINTS = {
    "right_head_1": (10.0, 20.0), "right_head_2": (14.0, 16.0), "right_head_3": (18.0, 20.0),
    "right_rim": (12.5, 12.25), "left_head_1": (40.0, 20.0), "left_head_2": (44.0, 16.0),
    "left_head_3": (48.0, 20.0), "left_rim": (47.0, 12.0),
}  # fmt: skip


def test_landmark_rows_are_unique_and_in_the_readers_own_queue(tiny):
    i0, _, i2, _ = ITEMS
    now = "2026-01-01T00:00:00Z"
    good = {"reader_id": tiny.alice, "item_id": i0, "read_number": 1, "landmark": "left_rim", "x": 1.5,
            "y": 2.5, "created_at": now, "updated_at": now}  # fmt: skip
    with tiny.store.engine.begin() as conn:
        conn.execute(landmarks_table.insert().values(**good))
    for change in ({}, {"item_id": i2}, {"read_number": 3}, {"reader_id": tiny.bob}, {"x": None}):
        with pytest.raises(sa.exc.IntegrityError), tiny.store.engine.begin() as conn:
            conn.execute(landmarks_table.insert().values(**{**good, **change}))
    assert [(r["landmark"], r["x"], r["y"]) for r in tiny.rows(landmarks_table)] == [("left_rim", 1.5, 2.5)]


def test_submitted_landmarks_are_stored_idempotent_and_audited(tiny):
    i0, i1, i2, _ = ITEMS
    sid = str(uuid.uuid4())
    first = tiny.submit(tiny.alice, i0, sid=sid, points=POINTS)
    assert first.created and first.changes == 1 + len(POINTS)  # the anatomy score and 8 points
    assert tiny.store.landmarks(tiny.alice, i0, 1) == POINTS
    again = tiny.submit(tiny.alice, i0, sid=sid, points={"left_rim": (1.0, 1.0)})
    assert not again.created and tiny.store.landmarks(tiny.alice, i0, 1) == POINTS
    rows = tiny.rows(landmarks_table)
    assert len(rows) == len(POINTS) and all(r["created_at"] == r["updated_at"] for r in rows)
    created = [(r["field"], r["new"]) for r in tiny.rows(audit_log) if r["action"] == "create"]
    assert ("landmark:right_rim", "x=12.5,y=12.25") in created

    # A back-edit: the rim moves, a fourth outline point is added; then the fourth goes again.
    moved = {**POINTS, "left_rim": (46.0, 11.5), "left_head_4": (44.0, 24.0)}
    edit = tiny.submit(tiny.alice, i0, points=moved)
    assert edit.changes == 2 and tiny.store.landmarks(tiny.alice, i0, 1) == moved
    tiny.submit(tiny.alice, i0, points=POINTS)
    assert tiny.store.landmarks(tiny.alice, i0, 1) == POINTS
    trail = [
        (r["action"], r["field"], r["old"], r["new"], r["actor"])
        for r in tiny.rows(audit_log)
        if r["submission_id"] not in (None, sid)
    ]
    actor = f"reader:{tiny.alice}"
    assert trail == [
        ("create", "landmark:left_head_4", None, "x=44.0,y=24.0", actor),
        ("update", "landmark:left_rim", "x=47.0,y=12.0", "x=46.0,y=11.5", actor),
        ("update", "landmark:left_rim", "x=46.0,y=11.5", "x=47.0,y=12.0", actor),
        ("delete", "landmark:left_head_4", "x=44.0,y=24.0", None, actor),
    ]
    # None leaves the stored points alone; an empty set (a flagged image) removes them.
    tiny.submit(tiny.alice, i0, answers=[Answer("anatomy", score=1)])
    assert tiny.store.landmarks(tiny.alice, i0, 1) == POINTS
    tiny.submit(tiny.alice, i0, answers=[], flagged=True, flag_reason="no hips", points={})
    assert tiny.store.landmarks(tiny.alice, i0, 1) == {}
    assert sum(r["action"] == "delete" for r in tiny.rows(audit_log)) == 1 + len(POINTS)
    # Points alone are a submission; points outside the queue or not landmarks are refused.
    assert tiny.submit(tiny.bob, i2, answers=[], points={"left_rim": (3.0, 4.0)}).created
    with pytest.raises(StoreError, match="not in your queue"):
        tiny.submit(tiny.bob, i0, points=POINTS)
    with pytest.raises(StoreError, match="unknown landmark 'left_head_center'"):
        tiny.submit(tiny.alice, i1, points={"left_head_center": (1.0, 1.0)})
    with pytest.raises(StoreError, match="finite"):
        tiny.submit(tiny.alice, i1, points={"left_rim": (math.inf, 1.0)})
    assert tiny.store.landmarks(tiny.alice, i1, 1) == {} and tiny.store.landmarks(tiny.bob, i0, 1) == {}


@pytest.fixture
def landmark_study(tmp_path):
    """A --landmarks norberg study with alice's points on two items (one a re-read) and bob's on one.
    SQLite only: the landmark queries themselves run on PostgreSQL in the tests above."""
    made = make_study(
        tmp_path, per_model=1, landmarks="norberg", criteria="quality", reread_percent=50, washout="0d"
    )
    _, _, store = admin.open_store(made.path)
    given: dict[tuple[str, str, int], dict[str, tuple[float, float]]] = {}
    try:
        ids = {r["name"]: r["id"] for r in store.table(readers)}
        alice = store.queue(ids["alice"])
        first = alice[0]
        reread = next(e for e in alice if e.read_number == 2)
        shifted = {n: (x + 1.0, y + 2.0) for n, (x, y) in POINTS.items()}
        given[("alice", reread.item_id, 1)] = POINTS
        given[("alice", reread.item_id, 2)] = shifted
        if first.item_id != reread.item_id:
            given[("alice", first.item_id, 1)] = shifted
        given[("bob", store.queue(ids["bob"])[1].item_id, 1)] = POINTS
        for (reader, item, read), pts in given.items():
            store.submit(
                ids[reader], item, read, str(uuid.uuid4()), [Answer("quality", score=3)], points=pts,
                shown=store.shown(ids[reader], item, read),
            )  # fmt: skip
    finally:
        store.close()
    return made, given


def test_landmark_export_is_in_the_source_frame(landmark_study):
    made, given = landmark_study
    frame = admin.landmarks_frame(made.path)
    assert list(frame.columns) == [
        "reader", "item", "model", "case_id", "sample", "read_number", "landmark", "x", "y",
    ]  # fmt: skip
    key = pd.read_parquet(made.path / studydir.KEY).set_index("item")
    run = made.path.parent / "run"
    expected = {}
    for (reader, item, read), pts in given.items():
        k = key.loc[item]
        # The key's crop box, checked against the source file itself.
        h, w = decode_source(k.source_path).shape
        assert (k.source_width, k.source_height) == (w, h)
        side = min(h, w)
        assert (k.crop_top, k.crop_left, k.crop_side) == ((h - side) // 2, (w - side) // 2, side)
        scale = side / 64
        for name, (x, y) in pts.items():
            sample = None if pd.isna(k["sample"]) else int(k["sample"])
            expected[(reader, item, k.model, k.case_id, sample, read, name)] = (
                k.crop_left + (x + 0.5) * scale - 0.5,
                k.crop_top + (y + 0.5) * scale - 0.5,
            )
    got = {
        (r.reader, r.item, r.model, r.case_id, None if pd.isna(r.sample) else int(r.sample), r.read_number,
         r.landmark): (r.x, r.y)
        for r in frame.itertuples()
    }  # fmt: skip
    assert got.keys() == expected.keys() and len(frame) == len(expected)
    for k, xy in expected.items():
        np.testing.assert_allclose(got[k], xy, rtol=0, atol=1e-12)
    assert {m for m in frame.model} <= {"real", *MODELS} and str(run) not in frame.to_csv()
    # Written beside the ratings, as CSV and Parquet.
    paths = admin.export(made.path)
    assert [p.name for p in paths] == ["ratings.csv", "ratings.parquet", "landmarks.csv", "landmarks.parquet"]
    csv = pd.read_csv(made.path / "landmarks.csv", dtype={"case_id": str, "item": str})
    assert list(csv.columns) == list(frame.columns) and len(csv) == len(frame)
    np.testing.assert_allclose(csv[["x", "y"]].to_numpy(), frame[["x", "y"]].to_numpy(), rtol=1e-15)
    parquet = pd.read_parquet(made.path / "landmarks.parquet")
    pd.testing.assert_frame_equal(parquet, frame)
    single = admin.export(made.path, made.path.parent / "out" / "r.csv")
    assert [p.name for p in single] == ["r.csv", "r-landmarks.csv"] and all(p.is_file() for p in single)

    # One reader's first reads of one model are an annotation file for `xray-audit norberg angles`.
    norberg_landmarks = pytest.importorskip("audit.norberg.landmarks")
    bob = frame[(frame.reader == "bob") & (frame.read_number == 1)]
    assert bob.model.nunique() == 1
    bob[["case_id", "landmark", "x", "y"]].to_csv(made.path.parent / "bob.csv", index=False)
    [(case, points)] = norberg_landmarks.read_landmarks(made.path.parent / "bob.csv").items()
    assert case == bob.case_id.iloc[0] and set(points) == set(POINTS)
    assert list(norberg_landmarks.angles_frame({case: points}).side) == ["left", "right"]


def test_create_with_landmarks(tmp_path, run_dir, capsys):
    out = tmp_path / "lm"
    argv = ["-q", "reader-study", "create", str(run_dir), "--out", str(out), "--readers", "alice",
            "--per-model", "1", "--size", "64", "--landmarks", "norberg"]  # fmt: skip
    assert cli_main(argv) == 0
    capsys.readouterr()
    assert study.load(out)[1].landmarks == "norberg"
    key = pd.read_parquet(out / studydir.KEY)
    assert list(key.columns) == list(studydir.KEY_COLUMNS)
    sizes = set(zip(key.source_width, key.source_height, key.crop_side))
    assert sizes == {(80, 96, 80), (64, 64, 64), (48, 48, 48)}
    # The crop box stays in the key: nothing the app reads holds a source size.
    store = open_study_store(out)
    try:
        assert set(store.table(items)[0]) == {"id", "image_sha256", "prompt"}
    finally:
        store.close()
    assert "crop" not in (out / studydir.STUDY_JSON).read_text()
    with pytest.raises(CreateError, match="--landmarks: unknown task 'hips'; available: norberg"):
        create_study(run_dir, tmp_path / "x", _options(landmarks="hips"), progress=False)
    # Landmarks alone are something to ask; a study without them has no landmark export.
    only = create_study(
        run_dir, tmp_path / "only", _options(criteria=(), landmarks="norberg", per_model=1), progress=False
    )
    assert study.load(only.path)[1].criteria == ()
    empty = admin.landmarks_frame(only.path)
    assert len(empty) == 0 and list(empty.columns) == list(studydir.LANDMARK_COLUMNS)
    plain = create_study(run_dir, tmp_path / "plain", _options(per_model=1), progress=False)
    assert study.load(plain.path)[1].landmarks is None
    with pytest.raises(study.StudyError, match="without --landmarks"):
        admin.landmarks_frame(plain.path)


def test_patient_left_comes_from_the_flag_or_the_run_config(tmp_path, capsys):
    # Default: the standard display; a run measured under [norberg] patient_left = "image-left" makes
    # mirrored studies, so the sides readers are asked for match the annotations.
    run_dir = make_run(tmp_path, n_cases=4)
    std = create_study(run_dir, tmp_path / "std", _options(landmarks="norberg", per_model=1), progress=False)
    assert study.load(std.path)[1].patient_left == "image-right"
    (run_dir / rundir.CONFIG_TOML).write_text('[norberg]\npatient_left = "image-left"\n')
    mirrored = create_study(
        run_dir, tmp_path / "mirrored", _options(landmarks="norberg", per_model=1), progress=False
    )
    assert study.load(mirrored.path)[1].patient_left == "image-left"
    argv = ["-q", "reader-study", "create", str(run_dir), "--out", str(tmp_path / "flag"), "--readers",
            "alice", "--per-model", "1", "--size", "64", "--landmarks", "norberg", "--patient-left",
            "image-right"]  # fmt: skip
    assert cli_main(argv) == 0
    assert study.load(tmp_path / "flag")[1].patient_left == "image-right"
    capsys.readouterr()
    with pytest.raises(CreateError, match="--patient-left only matters for --landmarks norberg"):
        create_study(run_dir, tmp_path / "x", _options(patient_left="image-left"), progress=False)
    with pytest.raises(CreateError, match="--patient-left must be one of"):
        create_study(
            run_dir, tmp_path / "y", _options(landmarks="norberg", patient_left="left"), progress=False
        )


def test_both_apps_are_served_with_the_same_locked_down_settings():
    from audit import streamlit_server
    from dashboards import serve as dashboard_serve
    from reader_study import serve as study_serve

    for module in (dashboard_serve, study_serve):
        argv = module.streamlit_command(8600, "127.0.0.1")
        # The ASGI wrapper (no-store, no metrics) runs the app's page script, named after "--".
        assert argv[1:5] == ["-m", "streamlit", "run", str(streamlit_server.ASGI_MODULE)]
        assert argv[-2:] == ["--", str(module.APP)]
        flags = dict(zip(argv[5:-2:2], argv[6:-2:2], strict=True))
        assert flags == {
            "--server.port": "8600", "--server.address": "127.0.0.1", "--server.headless": "true",
            "--server.fileWatcherType": "none", "--server.runOnSave": "false",
            "--server.enableStaticServing": "false", "--server.enableXsrfProtection": "true",
            "--server.enableAgentApi": "false", "--server.enableWebsocketCompression": "false",
            "--server.maxWidgetStateSize": "1", "--runner.postScriptGC": "false",
            "--browser.gatherUsageStats": "false",
            "--client.toolbarMode": "minimal", "--client.showErrorDetails": "none",
            "--global.developmentMode": "false",
        }  # fmt: skip


def test_training_copy_samples_reach_readers_only_when_the_run_allows(tmp_path):
    """A training-copy baseline's samples are training images: never a default stratum, and refused
    when asked for unless the run's privacy audit says training images may be shown."""
    from audit.fake_run import FakePrivacy, write_fake_run
    from reader_study.create import _sources
    from tests.test_report_privacy import PRIVACY
    from tests.test_report_privacy import _spec as privacy_spec

    shown = write_fake_run(tmp_path / "shown", privacy_spec(PRIVACY))
    hidden = write_fake_run(
        tmp_path / "hidden", privacy_spec(FakePrivacy(closeness=PRIVACY.closeness, show_training_images=False))
    )
    for run in (shown, hidden):
        sources, _ = _sources(run, None)
        assert set(sources) == {"real", "gen_a", "gen_b"}  # no "copy"
    assert "copy" in _sources(shown, ("gen_a", "copy"))[0]
    with pytest.raises(CreateError, match=r"--models: copy is a training-copy baseline.*show_training_images"):
        _sources(hidden, ("gen_a", "copy"))
