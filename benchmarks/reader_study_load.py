"""Load checks of the reader study: many readers submitting ratings at the same time.

    python benchmarks/reader_study_load.py [--readers 20] [--ratings 50] [--database URL] [--out results.json]
    python benchmarks/reader_study_load.py --mode websocket [--readers 20] [--ratings 20] [--think 5] [--size 512]

``--mode websocket`` drives the real app through its websocket protocol, as readers' browsers do
(see ``benchmarks/reader_study_ws.py``). The default, ``--mode store``, loads the database layer
alone, as follows.

A study is created (the test fixtures' small run, images at 64 px) with one reader per simulated
reader plus one ``baseline`` reader, so every reader's queue holds at least ``--ratings`` items.
Every simulated reader is its own subprocess with its own :class:`~reader_study.store.Store` (its
own engine and connection pool) on the one database, as every Streamlit server process would be.
Each child signs in with its token and reads its queue, reports ready, and waits for the parent's
``go`` on stdin; the parent sends ``go`` to all children at once, so the timed part is submits only.

What a reader does, with no think time (the worst case for the database): for each of its first
``--ratings`` queue items, one submit of every answer of the study (the three built-in criteria and
the Turing question with its confidence) under a fresh UUID, then a read of its queue (the app does
that after every submit). Besides:

* **double clicks** (``--duplicates``, a fraction of the items): the same submit, same UUID, sent
  twice at the same moment from two threads. Exactly one of the two may report ``created``.
* **back-edits** (``--edits``, a fraction of the items): after an item, the reader goes back to an
  earlier one and changes one criterion's score under a new UUID; exactly one change is audited.

Measured twice in the same run: the ``baseline`` reader alone (no contention), then the
``--readers`` readers at once, with the same per-reader workload. Reported: ratings/s (one rating is
one item's first submit, with all its answers; wall time from ``go`` to the last child's result,
double clicks and back-edits included), the latency of every submit call (p50, p95, max), errors
(any exception; "database is locked" also counted on its own), peak RSS of each reader process
(its own ``VmHWM``), and the ratios concurrent/baseline of throughput, p95 latency and peak RSS.

Then the database is read back and checked against what every reader was told was stored: one
``responses`` row per rated item, one ``ratings`` row per answer holding the last value the reader
submitted (missing or different = lost), no row the reader did not make, one ``submissions`` row
per new UUID (a double click adds none), one ``create`` audit row per answer and one ``update`` row
per back-edit. The script exits with status 1 when anything errored, was lost or duplicated.

``--database`` takes an empty PostgreSQL database (``postgresql://...``); the study's tables are
left there for inspection. By default the database is a SQLite file in a temporary study directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Heavy imports (sqlalchemy, pandas, audit.*) happen inside the functions: a child's peak RSS is
# then what a reader process needs, not what the study creation in the parent needed.

_REPO = Path(__file__).resolve().parent.parent
BASELINE_READER = "baseline"
LOCKED = "database is locked"
log = logging.getLogger(__name__)


def _peak_rss_mb() -> float:
    """This process's peak resident memory since it started its program, in MiB.

    Not ``ru_maxrss``: Linux carries that over from the parent through fork and exec, so every
    reader child would report at least the parent's peak (pandas and the study creation, ~150 MB).
    ``VmHWM`` is the high-water mark of the child's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, bytes on macOS


# --------------------------------------------------------------------------------------------- child


def _worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One simulated reader: set up, wait for ``go`` on stdin, submit, report (runs in a child)."""
    import sqlalchemy as sa

    from reader_study.store import Answer, Shown, Store

    store = Store(cfg["url"])
    races = [0]

    @sa.event.listens_for(store.engine, "handle_error")
    def _count_race(ctx: Any) -> None:
        # A unique-constraint violation inside submit is a double click's second insert losing the
        # race (PostgreSQL); Store.submit retries it. Counted to show the load reached that path.
        if isinstance(ctx.sqlalchemy_exception, sa.exc.IntegrityError):
            races[0] += 1

    who = store.authenticate(cfg["token"])
    if who is None:
        raise RuntimeError(f"reader {cfg['name']}: the token was not accepted")
    reader_id = who.reader_id
    entries = [e for e in store.queue(reader_id) if e.available_after is None][: cfg["ratings"]]
    if len(entries) < cfg["ratings"]:
        raise RuntimeError(f"reader {cfg['name']}: {len(entries)} items in the queue, {cfg['ratings']} asked")
    rng = random.Random(cfg["seed"])
    n = len(entries)
    double_clicks = set(rng.sample(range(n), round(cfg["duplicates"] * n)))
    edits = set(rng.sample(range(1, n), min(n - 1, round(cfg["edits"] * n)))) if n > 1 else set()
    criteria, turing = cfg["criteria"], cfg["turing"]

    def answers_for(values: dict[str, list[Any]]) -> list[Answer]:
        out = [Answer(c, score=values[c][0]) for c in criteria]
        if turing:
            out.append(Answer("turing", turing_answer=values["turing"][1], confidence=values["turing"][2]))
        return out

    latencies: list[float] = []
    queue_latencies: list[float] = []
    errors: list[str] = []
    final: dict[str, dict[str, list[Any]]] = {}  # item -> criterion -> [score, turing, confidence]
    counts = Counter()
    lock = threading.Lock()

    def submit(entry: Any, sid: str, values: dict[str, list[Any]], shown: Any) -> Any:
        t = time.perf_counter()
        try:
            result = store.submit(
                reader_id, entry.item_id, entry.read_number, sid, answers_for(values), shown=shown
            )
        except Exception as exc:  # noqa: BLE001 - every failure is a finding of the load check, counted
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            with lock:
                errors.append(message)
            return None
        finally:
            with lock:
                latencies.append(time.perf_counter() - t)
        return result

    store.check_schema()  # one more round trip, so that the pool holds a live connection before go
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise RuntimeError("the parent did not say go")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as second_click:
        for k, entry in enumerate(entries):
            values = {c: [rng.randint(1, 5), None, None] for c in criteria}
            if turing:
                values["turing"] = [None, rng.choice(("real", "synthetic")), rng.randint(1, 5)]
            sid = str(uuid.uuid4())
            # What the app's form is drawn from (its token generation and the answer's revision).
            shown = Shown(who.token_generation, 0)
            if k in double_clicks:
                other = second_click.submit(submit, entry, sid, values, shown)
                results = [submit(entry, sid, values, shown), other.result()]
                counts["double_clicks"] += 1
                created = [r.created for r in results if r is not None]
                if len(created) == 2 and sorted(created) != [False, True]:
                    errors.append(f"double click on {entry.item_id}: created={created}, expected one True")
            else:
                result = submit(entry, sid, values, shown)
                if result is not None and not result.created:
                    errors.append(f"fresh submission id on {entry.item_id} reported as already stored")
            counts["ratings"] += 1
            final[entry.item_id] = values
            t = time.perf_counter()
            store.queue(reader_id)
            queue_latencies.append(time.perf_counter() - t)
            if k in edits:
                back = entries[rng.randrange(k)]
                changed = {c: list(v) for c, v in final[back.item_id].items()}
                criterion = rng.choice(criteria)
                changed[criterion][0] = changed[criterion][0] % 5 + 1
                result = submit(back, str(uuid.uuid4()), changed, store.shown(reader_id, back.item_id, 1))
                counts["edits"] += 1
                if result is not None:
                    final[back.item_id] = changed
                    if result.changes != 1:
                        errors.append(f"back-edit of {back.item_id}: {result.changes} changes, expected 1")
    seconds = time.perf_counter() - start
    store.close()
    return {
        "name": cfg["name"],
        "reader_id": reader_id,
        "seconds": seconds,
        "submit_calls": len(latencies),
        "ratings": counts["ratings"],
        "double_clicks": counts["double_clicks"],
        "edits": counts["edits"],
        "constraint_races": races[0],
        "latencies": latencies,
        "queue_latencies": queue_latencies,
        "errors": errors,
        "final": final,
        "peak_mb": _peak_rss_mb(),
    }


# --------------------------------------------------------------------------------------------- parent


def _run_readers(cfgs: list[dict[str, Any]], work: Path, label: str) -> tuple[float, list[dict[str, Any]]]:
    """Start one child per reader, release them together, and return (wall seconds, their results)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])),
    }
    procs = []
    try:
        for i, cfg in enumerate(cfgs):
            err = (work / f"{label}-{i}.stderr").open("w")
            proc = subprocess.Popen(
                [sys.executable, __file__, "--child"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )
            err.close()
            proc.stdin.write(json.dumps(cfg) + "\n")
            proc.stdin.flush()
            procs.append(proc)
        for i, proc in enumerate(procs):
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(_child_failure(proc, work / f"{label}-{i}.stderr"))
        start = time.perf_counter()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        lines = [proc.stdout.readline() for proc in procs]
        wall = time.perf_counter() - start
        results = []
        for i, (proc, line) in enumerate(zip(procs, lines, strict=True)):
            if proc.wait() != 0 or not line.strip():
                raise RuntimeError(_child_failure(proc, work / f"{label}-{i}.stderr"))
            results.append(json.loads(line))
        return wall, results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _child_failure(proc: subprocess.Popen, stderr: Path) -> str:
    proc.wait()
    return f"reader child failed (exit {proc.returncode}); its stderr ({stderr}):\n{stderr.read_text()}"


def _summary(wall: float, results: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    lat = np.array([x for r in results for x in r["latencies"]]) * 1000.0
    queue = np.array([x for r in results for x in r["queue_latencies"]]) * 1000.0
    errors = [e for r in results for e in r["errors"]]
    ratings = sum(r["ratings"] for r in results)
    peaks = [r["peak_mb"] for r in results]
    return {
        "readers": len(results),
        "ratings": ratings,
        "submit_calls": int(lat.size),
        "double_clicks": sum(r["double_clicks"] for r in results),
        "edits": sum(r["edits"] for r in results),
        "constraint_races": sum(r["constraint_races"] for r in results),
        "wall_seconds": wall,
        "ratings_per_s": ratings / wall,
        "submits_per_s": lat.size / wall,
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)),
            "max": float(lat.max()),
        },
        "queue_read_ms": {"p50": float(np.percentile(queue, 50)), "p95": float(np.percentile(queue, 95))},
        "errors": len(errors),
        "locked_errors": sum(LOCKED in e for e in errors),
        "error_messages": sorted(Counter(errors).items(), key=lambda kv: -kv[1])[:20],
        "peak_rss_mb": {"max": max(peaks), "median": float(np.median(peaks)), "per_process": peaks},
    }


def _check_database(url: str, results: list[dict[str, Any]], answer_names: list[str]) -> dict[str, Any]:
    """Compare the database with what every reader was told was stored."""
    from reader_study.store import Store, audit_log, ratings, responses, submissions

    store = Store(url)
    try:
        tables = {t.name: store.table(t) for t in (ratings, responses, submissions, audit_log)}
    finally:
        store.close()
    c: Counter[str] = Counter()
    problems: list[str] = []
    for r in results:
        rid, name = r["reader_id"], r["name"]
        want = {(item, k): tuple(v) for item, values in r["final"].items() for k, v in values.items()}
        rows = [row for row in tables["ratings"] if row["reader_id"] == rid]
        got = {(row["item_id"], row["criterion"]): (row["score"], row["turing_answer"], row["confidence"])
               for row in rows}  # fmt: skip
        missing = [k for k in want if k not in got]
        stale = [k for k in want if k in got and got[k] != want[k]]
        c["expected_rating_rows"] += len(want)
        c["rating_rows"] += len(rows)
        c["lost_ratings"] += len(missing)
        c["stale_ratings"] += len(stale)
        c["extra_rating_rows"] += len(rows) - (len(want) - len(missing))
        problems += [f"{name}: no rating row for item {i}, {k}" for i, k in missing[:5]]
        problems += [f"{name}: {k} is {got[k]}, the reader last submitted {want[k]}" for k in stale[:5]]

        items = [row["item_id"] for row in tables["responses"] if row["reader_id"] == rid]
        c["expected_response_rows"] += len(r["final"])
        c["response_rows"] += len(items)
        c["lost_responses"] += len(set(r["final"]) - set(items))
        c["extra_response_rows"] += len(items) - len(set(r["final"]) & set(items))

        # One row per new UUID: the items' first submits and the back-edits; a double click adds none.
        n_sub = sum(row["reader_id"] == rid for row in tables["submissions"])
        expected = r["ratings"] + r["edits"]
        c["expected_submission_rows"] += expected
        c["submission_rows"] += n_sub
        c["lost_submissions"] += max(0, expected - n_sub)
        c["extra_submission_rows"] += max(0, n_sub - expected)

        mine = [
            a for a in tables["audit_log"] if a["actor"] == f"reader:{rid}" and a["field"] in answer_names
        ]
        c["audit_create_rows"] += sum(a["action"] == "create" for a in mine)
        c["audit_update_rows"] += sum(a["action"] == "update" for a in mine)
        c["expected_audit_updates"] += r["edits"]
    out: dict[str, Any] = {k: c[k] for k in sorted(c)}
    for key in ("expected_rating_rows", "expected_response_rows", "expected_submission_rows"):
        out.setdefault(key, 0)
    out["audit_matches"] = (
        c["audit_create_rows"] == c["expected_rating_rows"]
        and c["audit_update_rows"] == c["expected_audit_updates"]
    )
    out["lost"] = c["lost_ratings"] + c["stale_ratings"] + c["lost_responses"] + c["lost_submissions"]
    out["duplicates"] = c["extra_rating_rows"] + c["extra_response_rows"] + c["extra_submission_rows"]
    if not out["audit_matches"]:
        problems.append(
            f"audit log: {c['audit_create_rows']} create rows for {c['expected_rating_rows']} answers, "
            f"{c['audit_update_rows']} update rows for {c['expected_audit_updates']} back-edits"
        )
    out["problems"] = problems[:20]
    return out


def run_load(
    work: str | Path,
    readers: int = 20,
    ratings: int = 50,
    database: str | None = None,
    duplicates: float = 0.1,
    edits: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Create a study under ``work``, run the baseline reader then ``readers`` at once, check the database.

    Returns every figure (see the module docstring); ``ok`` is False when anything errored, was lost
    or was stored twice.
    """
    if readers < 1 or ratings < 1:
        raise ValueError(f"readers and ratings must be >= 1, got {readers} and {ratings}")
    if not (0 <= duplicates <= 1 and 0 <= edits <= 1):
        raise ValueError(f"duplicates and edits are fractions 0-1, got {duplicates} and {edits}")
    if str(_REPO) not in sys.path:
        sys.path.insert(0, str(_REPO))  # for tests.reader_study_fixtures when run as a script
    from reader_study import study
    from reader_study.criteria import TURING
    from reader_study.store import Store
    from tests.reader_study_fixtures import MODELS, make_study

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    # Items per reader = per_model x (real + models); as many cases as items keeps the strata disjoint.
    per_model = -(-ratings // (1 + len(MODELS)))
    names = [BASELINE_READER] + [f"reader-{i:02d}" for i in range(1, readers + 1)]
    t = time.perf_counter()
    created = make_study(
        work, tuple(names), n_cases=per_model * (1 + len(MODELS)), per_model=per_model, turing=True,
        size=64, database=database,
    )  # fmt: skip
    setup_s = time.perf_counter() - t
    root, info = study.load(created.path)
    url = study.database_url(root, info)
    criteria = [c.name for c in info.criteria]
    answer_names = criteria + ([TURING] if info.turing else [])

    def cfg(i: int, name: str) -> dict[str, Any]:
        return {"url": url, "name": name, "token": created.tokens[name], "ratings": ratings,
                "criteria": criteria, "turing": info.turing, "duplicates": duplicates, "edits": edits,
                "seed": seed * 100_003 + i}  # fmt: skip

    load_before = os.getloadavg()[0]
    base_wall, base = _run_readers([cfg(0, BASELINE_READER)], work, "baseline")
    conc_wall, conc = _run_readers([cfg(i, n) for i, n in enumerate(names) if i > 0], work, "concurrent")
    load_after = os.getloadavg()[0]
    baseline, concurrent = _summary(base_wall, base), _summary(conc_wall, conc)
    integrity = _check_database(url, base + conc, answer_names)
    store = Store(url)
    dialect = store.engine.dialect.name
    store.close()
    ratios = {
        "ratings_per_s": concurrent["ratings_per_s"] / baseline["ratings_per_s"],
        "latency_p95": concurrent["latency_ms"]["p95"] / baseline["latency_ms"]["p95"],
        "peak_rss": concurrent["peak_rss_mb"]["max"] / baseline["peak_rss_mb"]["max"],
    }
    errors = baseline["errors"] + concurrent["errors"]
    config = {
        "readers": readers,
        "ratings": ratings,
        "duplicates": duplicates,
        "edits": edits,
        "seed": seed,
        "database": dialect,
        "answers_per_rating": len(answer_names),
        "cpu_count": os.cpu_count(),
        # Other work on the machine slows the 21 processes unevenly: read the timings with it.
        "load_average": [load_before, load_after],
        "setup_seconds": setup_s,
    }
    ok = errors == 0 and integrity["lost"] == 0 and integrity["duplicates"] == 0
    keep = ("name", "reader_id", "seconds", "peak_mb", "constraint_races", "errors", "final")
    return {
        "config": config,
        "baseline": baseline,
        "concurrent": concurrent,
        "ratios": ratios,
        "integrity": integrity,
        "errors": errors,
        "ok": ok and integrity["audit_matches"],
        # What each reader was told was stored: item -> answer -> [score, turing answer, confidence].
        "workers": [{k: r[k] for k in keep} for r in base + conc],
    }


def tables(result: dict[str, Any]) -> str:
    cfg, ratios, integ = result["config"], result["ratios"], result["integrity"]
    header = (
        f"{cfg['database']}, {cfg['cpu_count']} cores (1-min load average {cfg['load_average'][0]:.1f} "
        f"before / {cfg['load_average'][1]:.1f} after); each reader: {cfg['ratings']} ratings "
        f"({cfg['answers_per_rating']} answers each), {cfg['duplicates']:.0%} double-clicked, "
        f"{cfg['edits']:.0%} back-edits, no think time. Latency: every submit call."
    )
    columns = (
        "run",
        "readers",
        "ratings",
        "submit calls",
        "wall s",
        "ratings/s",
        "latency p50 ms",
        "p95 ms",
        "max ms",
        "queue read p95 ms",
        "errors (locked)",
        "peak RSS MB per process (max)",
    )
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for key, label in (("baseline", "baseline: 1 reader alone"), ("concurrent", "concurrent")):
        r = result[key]
        lat = r["latency_ms"]
        lines.append(
            f"| {label} | {r['readers']} | {r['ratings']} | {r['submit_calls']} | {r['wall_seconds']:.2f} "
            f"| {r['ratings_per_s']:.1f} | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['max']:.1f} "
            f"| {r['queue_read_ms']['p95']:.1f} | {r['errors']} ({r['locked_errors']}) "
            f"| {r['peak_rss_mb']['median']:.0f} ({r['peak_rss_mb']['max']:.0f}) |"
        )
    ratio_line = (
        f"Concurrent / baseline: throughput {ratios['ratings_per_s']:.2f}×, latency p95 "
        f"{ratios['latency_p95']:.2f}×, peak RSS per process {ratios['peak_rss']:.2f}×."
    )
    races = result["concurrent"]["constraint_races"] + result["baseline"]["constraint_races"]
    ratio_line += (
        f" {races} double-click inserts lost a unique-constraint race and were retried by Store.submit."
    )
    lines += ["", ratio_line, "", "| table | expected rows | rows in DB | lost | extra (duplicates) |"]
    lines.append("|---|---|---|---|---|")
    for label, key, lost in (
        ("ratings (answers)", "rating", f"{integ['lost_ratings']} (+{integ['stale_ratings']} stale)"),
        ("responses (items)", "response", str(integ["lost_responses"])),
        ("submissions (UUIDs)", "submission", str(integ["lost_submissions"])),
    ):
        lines.append(
            f"| {label} | {integ[f'expected_{key}_rows']} | {integ[f'{key}_rows']} | {lost} "
            f"| {integ[f'extra_{key}_rows']} |"
        )
    audit_line = (
        f"Audit log: {integ['audit_create_rows']} create rows for {integ['expected_rating_rows']} answers, "
        f"{integ['audit_update_rows']} update rows for {integ['expected_audit_updates']} back-edits."
    )
    lines += ["", audit_line]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode", choices=("store", "websocket"), default="store",
        help="store: the database layer, one process per reader; websocket: the real app and server",
    )  # fmt: skip
    parser.add_argument("--readers", type=int, default=20, help="simulated readers at once (default 20)")
    parser.add_argument(
        "--ratings", type=int, help="ratings per reader (default 50 for store, 20 for websocket)"
    )
    parser.add_argument("--think", type=float, default=5.0, help="websocket: think time per item, s (5)")
    parser.add_argument("--size", type=int, default=512, help="websocket: study image size, px (512)")
    parser.add_argument(
        "--database",
        help="an empty PostgreSQL database (postgresql://...); default: SQLite in a temporary study",
    )
    parser.add_argument("--duplicates", type=float, default=0.1, help="fraction of double clicks (0.1)")
    parser.add_argument("--edits", type=float, default=0.1, help="fraction of back-edits (0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write all figures to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_worker(json.loads(sys.stdin.readline()))), flush=True)
        return 0
    if args.ratings is None:
        args.ratings = 50 if args.mode == "store" else 20
    if args.readers < 1 or args.ratings < 1:
        parser.error("--readers and --ratings must be >= 1")
    if not (0 <= args.duplicates <= 1 and 0 <= args.edits <= 1):
        parser.error("--duplicates and --edits are fractions between 0 and 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.mode == "websocket":
        return _websocket(args)
    with tempfile.TemporaryDirectory(prefix="xray-audit-load-") as tmp:
        result = run_load(
            tmp, args.readers, args.ratings, args.database, args.duplicates, args.edits, args.seed
        )
    print(tables(result))
    if args.out:
        from audit.atomic import write_text

        write_text(args.out, json.dumps(result, indent=2) + "\n")
    if not result["ok"]:
        messages = result["baseline"]["error_messages"] + result["concurrent"]["error_messages"]
        details = [f"{n}x {m}" for m, n in messages] + result["integrity"]["problems"]
        print("\nThe load check FAILED:\n" + "\n".join(f"  - {d}" for d in details), file=sys.stderr)
        return 1
    print("\nNothing lost, nothing stored twice, no errors.")
    return 0


def _websocket(args: argparse.Namespace) -> int:
    if args.database:
        raise SystemExit("--database is for --mode store; the websocket mode serves its own SQLite study")
    if str(_REPO) not in sys.path:
        sys.path.insert(0, str(_REPO))
    from benchmarks import reader_study_ws

    with tempfile.TemporaryDirectory(prefix="xray-audit-ws-load-") as tmp:
        result = reader_study_ws.run_ws_load(
            tmp, args.readers, args.ratings, args.think, args.seed, args.size
        )
    print(reader_study_ws.tables(result))
    if args.out:
        from audit.atomic import write_text

        write_text(args.out, json.dumps(result, indent=2, default=list) + "\n")
    if not result["ok"]:
        details = [
            f"{n}x {m}"
            for m, n in result["baseline"]["error_messages"] + result["concurrent"]["error_messages"]
        ]
        print("\nThe load check FAILED:\n" + "\n".join(f"  - {d}" for d in details + result["integrity"]["problems"]),
              file=sys.stderr)  # fmt: skip
        return 1
    print("\nNothing lost, nothing stored twice, no errors.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
