"""The reader-study load check (``benchmarks/reader_study_load.py``) loses nothing and stores nothing twice.

20 reader processes x 50 ratings at once on SQLite, and a smaller run on a real PostgreSQL server
(``pgserver``). Each run's result is checked here against the database itself, read back
independently of the benchmark's own checks: rows per table, the last submitted values, and one
audit ``create`` row per answer. No timing is asserted (the benchmark reports timings).
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from reader_study import study
from reader_study.store import Store, audit_log, ratings, readers, responses, submissions

_BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "reader_study_load.py"
_spec = importlib.util.spec_from_file_location("reader_study_load", _BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _url(root: Path) -> str:
    path, info = study.load(root / "study")
    return study.database_url(path, info)


def _check(result: dict[str, Any], url: str, n_readers: int, n_ratings: int) -> None:
    conc, base = result["concurrent"], result["baseline"]
    assert result["errors"] == 0, conc["error_messages"] + base["error_messages"]
    assert conc["locked_errors"] == base["locked_errors"] == 0
    assert result["integrity"]["lost"] == 0, result["integrity"]["problems"]
    assert result["integrity"]["duplicates"] == 0, result["integrity"]["problems"]
    assert result["ok"]
    assert (conc["readers"], conc["ratings"]) == (n_readers, n_readers * n_ratings)
    assert base["ratings"] == n_ratings
    # The workload really had double clicks and back-edits in it (10 % each, rounded).
    per_reader = round(0.1 * n_ratings)
    assert conc["double_clicks"] == conc["edits"] == n_readers * per_reader
    assert conc["submit_calls"] == n_readers * (n_ratings + 2 * per_reader)

    # Independently of the benchmark's bookkeeping: the database itself.
    store = Store(url)
    try:
        names = {r["id"]: r["name"] for r in store.table(readers)}
        rows = {t.name: store.table(t) for t in (ratings, responses, submissions, audit_log)}
    finally:
        store.close()
    answers = result["config"]["answers_per_rating"]
    assert answers == 4  # three built-in criteria + the Turing question
    participants = n_readers + 1  # the baseline reader too
    assert len(names) == participants
    total_ratings = participants * n_ratings
    edits = participants * per_reader
    per_item = Counter((r["reader_id"], r["item_id"]) for r in rows["ratings"])
    assert len(per_item) == total_ratings
    assert set(per_item.values()) == {answers}
    keys = Counter((r["reader_id"], r["item_id"], r["criterion"], r["read_number"]) for r in rows["ratings"])
    assert max(keys.values()) == 1
    assert len(rows["responses"]) == total_ratings
    # One submission row per fresh UUID (first submits and back-edits); double clicks add none.
    assert len(rows["submissions"]) == total_ratings + edits
    assert len({r["id"] for r in rows["submissions"]}) == len(rows["submissions"])

    creates = Counter(
        (a["reader_id"], a["item_id"], a["field"])
        for a in rows["audit_log"]
        if a["action"] == "create" and a["actor"].startswith("reader:")
    )
    rated = Counter((r["reader_id"], r["item_id"], r["criterion"]) for r in rows["ratings"])
    assert creates == rated  # exactly one create row per stored answer, none for anything else
    updates = [a for a in rows["audit_log"] if a["action"] == "update"]
    assert len(updates) == edits
    # Every stored rating holds the last value its reader submitted (a back-edit included).
    final = {
        (r["reader_id"], item, criterion): tuple(v)
        for r in result["workers"]
        for item, values in r["final"].items()
        for criterion, v in values.items()
    }
    stored = {
        (r["reader_id"], r["item_id"], r["criterion"]): (r["score"], r["turing_answer"], r["confidence"])
        for r in rows["ratings"]
    }
    assert stored == final


def test_twenty_readers_at_once_on_sqlite(tmp_path: Path) -> None:
    result = bench.run_load(tmp_path, readers=20, ratings=50)
    assert result["config"]["database"] == "sqlite"
    _check(result, _url(tmp_path), 20, 50)


def test_readers_at_once_on_postgres(tmp_path: Path) -> None:
    pgserver = pytest.importorskip("pgserver", reason="needs pgserver for a throw-away PostgreSQL server")
    pytest.importorskip("psycopg", reason="needs psycopg (pip install 'xray-audit[postgres]')")
    server = pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop")
    try:
        result = bench.run_load(tmp_path / "work", readers=8, ratings=10, database=server.get_uri())
        assert result["config"]["database"] == "postgresql"
        _check(result, server.get_uri(), 8, 10)
    finally:
        server.cleanup()
