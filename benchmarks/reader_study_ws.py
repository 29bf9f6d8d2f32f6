"""Readers through the real server: the websocket half of ``benchmarks/reader_study_load.py``.

    python benchmarks/reader_study_load.py --mode websocket [--readers 20] [--ratings 20] [--think 5]

A study is created (the test fixtures' run, images at ``--size`` px, 512 by default as in a real
study) and served by ``xray-audit reader-study serve``'s own Streamlit command in a subprocess. Each
simulated reader is a :class:`benchmarks.streamlit_ws.Client`, a browser tab without a browser: it
opens the websocket, signs in with its token, and for each of its first ``--ratings`` items thinks
(uniformly 0.5-1.5 x ``--think`` seconds), answers every question, presses Submit and, once the
page shows the next item, downloads that item's image as the browser would.

Measured twice in the same run, with the same per-reader workload: the ``baseline`` reader alone,
then ``--readers`` readers at once. Reported: submits/s, the submit latency (from sending the
Submit click to the page having settled on the next item, i.e. what the reader waits for; p50, p95,
max), the image download time, errors, the server's CPU seconds per submit and its peak RSS, and
the ratios concurrent/baseline. Then the database is read back: every reader's answers must be
stored once each, at the queue positions they were given for, with one submission per submit.

All readers run in one asyncio process beside the server, on the same cores: on the 2-core
machine the load generator's own work is part of what the server competes with.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.streamlit_ws import Client, free_port, wait_healthy

BASELINE_READER = "baseline"
START_TIMEOUT_S = 60.0
SCORES = (1, 2, 3, 4, 5)


class Server:
    """The reader-study app as ``reader-study serve`` runs it, in a subprocess on a free port."""

    def __init__(self, study_dir: Path, log: Path):
        from reader_study.serve import streamlit_command

        self.port = free_port()
        self.url = f"http://localhost:{self.port}"
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            streamlit_command(self.port),
            env={**os.environ, "XRAY_AUDIT_STUDY_DIR": str(study_dir)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait_healthy(self.url, self.proc, START_TIMEOUT_S):
            return
        self.stop()
        raise RuntimeError(f"the reader-study app did not start within {START_TIMEOUT_S:.0f} s; see {log}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


async def _reader(
    url: str, name: str, token: str, questions: dict[str, str], turing: bool, ratings: int, think: float,
    seed: int,
) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    c = Client(url)
    out: dict[str, Any] = {
        "name": name,
        "latencies": [],
        "image": [],
        "errors": [],
        "given": [],
        "sizes": set(),
    }
    try:
        await c.connect()
        c.type_text("Access token", token)
        await c.click("Sign in")
        for k in range(ratings):
            await asyncio.sleep(rng.uniform(0.5 * think, 1.5 * think))
            answers: dict[str, Any] = {name_: rng.choice(SCORES) for name_ in questions}
            for criterion, question in questions.items():
                c.choose(f"**{question}**", answers[criterion])
            if turing:
                answers["turing"] = (rng.choice(("real", "synthetic")), rng.choice(SCORES))
                c.choose("**Is this image real or synthetic?**", answers["turing"][0])
                c.choose("How sure are you?", answers["turing"][1])
            out["latencies"].append(await c.click("Submit"))
            texts = c.page.texts()
            if not any(t.startswith(f"{k + 1} of ") for t in texts):
                errors = [t for t in texts if "NOT" in t or "Please" in t or "wrong" in t]
                out["errors"].append(
                    f"item {k + 1}: the page did not count the rating ({errors or texts[:3]})"
                )
            out["given"].append(answers)
            urls = c.page.image_urls()
            if urls and k + 1 < ratings:
                t = time.perf_counter()
                status, headers, body = await asyncio.to_thread(c.fetch, urls[0])
                out["image"].append(time.perf_counter() - t)
                out["sizes"].add(len(body))
                if status != 200 or headers.get("cache-control") != "no-store":
                    out["errors"].append(
                        f"image {urls[0]}: HTTP {status}, Cache-Control {headers.get('cache-control')}"
                    )
    except Exception as exc:  # noqa: BLE001 - a failure of one reader is a finding, reported with the rest
        out["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        await c.close()
    return out


async def _phase(url: str, readers: list[tuple[str, str]], **kw: Any) -> tuple[float, list[dict[str, Any]]]:
    start = time.perf_counter()
    results = await asyncio.gather(
        *(_reader(url, name, token, seed=i, **kw) for i, (name, token) in enumerate(readers))
    )
    return time.perf_counter() - start, list(results)


def _summary(wall: float, results: list[dict[str, Any]], cpu: float, rss: float) -> dict[str, Any]:
    import numpy as np

    lat = np.array([x for r in results for x in r["latencies"]]) * 1000.0
    img = np.array([x for r in results for x in r["image"]] or [np.nan]) * 1000.0
    errors = [e for r in results for e in r["errors"]]
    return {
        "readers": len(results),
        "submits": int(lat.size),
        "wall_seconds": wall,
        "submits_per_s": lat.size / wall if wall else 0.0,
        "latency_ms": {
            "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p95": float(np.percentile(lat, 95)) if lat.size else float("nan"),
            "max": float(lat.max()) if lat.size else float("nan"),
        },
        "image_ms": {"p50": float(np.nanpercentile(img, 50)), "p95": float(np.nanpercentile(img, 95))},
        "image_bytes": sorted({n for r in results for n in r["sizes"]}),
        "server_cpu_seconds": cpu,
        "server_cpu_ms_per_submit": 1000.0 * cpu / lat.size if lat.size else float("nan"),
        "server_peak_rss_mb": rss,
        "errors": len(errors),
        "error_messages": sorted(Counter(errors).items(), key=lambda kv: -kv[1])[:20],
    }


def _check_database(url: str, results: list[dict[str, Any]], criteria: list[str]) -> dict[str, Any]:
    """Every reader's k-th submit is stored once, on the k-th item of their queue, as given."""
    from reader_study.store import Store, assignments, ratings, readers, responses, submissions

    store = Store(url)
    try:
        t = {x.name: store.table(x) for x in (readers, assignments, ratings, responses, submissions)}
    finally:
        store.close()
    ids = {r["name"]: r["id"] for r in t["readers"]}
    c: Counter[str] = Counter()
    problems: list[str] = []
    for r in results:
        rid = ids[r["name"]]
        queue = sorted((a["position"], a["item_id"]) for a in t["assignments"] if a["reader_id"] == rid)
        stored: dict[tuple[str, str], tuple[Any, ...]] = {}
        for row in t["ratings"]:
            if row["reader_id"] == rid:
                key = (row["item_id"], row["criterion"])
                c["duplicates"] += key in stored
                stored[key] = (row["score"], row["turing_answer"], row["confidence"])
        want = {}
        for (_, item), given in zip(queue, r["given"], strict=False):
            for criterion in criteria:
                want[(item, criterion)] = (given[criterion], None, None)
            if "turing" in given:
                want[(item, "turing")] = (None, *given["turing"])
        c["expected_answers"] += len(want)
        c["stored_answers"] += len(stored)
        lost = [k for k in want if stored.get(k) != want[k]]
        extra = [k for k in stored if k not in want]
        c["lost"] += len(lost)
        c["extra"] += len(extra)
        problems += [f"{r['name']}: {k} stored {stored.get(k)}, given {want[k]}" for k in lost[:3]]
        n_resp = sum(row["reader_id"] == rid for row in t["responses"])
        n_sub = sum(row["reader_id"] == rid for row in t["submissions"])
        c["lost"] += max(0, len(r["given"]) - n_resp) + max(0, len(r["given"]) - n_sub)
        c["duplicates"] += max(0, n_resp - len(r["given"])) + max(0, n_sub - len(r["given"]))
    return {**{k: c[k] for k in ("expected_answers", "stored_answers", "lost", "extra", "duplicates")},
            "problems": problems[:20]}  # fmt: skip


def run_ws_load(
    work: str | Path, readers: int = 20, ratings: int = 20, think: float = 5.0, seed: int = 0, size: int = 512
) -> dict[str, Any]:
    """Create and serve a study under ``work``; the baseline reader alone, then ``readers`` at once."""
    if readers < 1 or ratings < 1 or think < 0:
        raise ValueError(
            f"readers and ratings must be >= 1 and think >= 0, got {readers}, {ratings}, {think}"
        )
    from reader_study import study
    from tests.reader_study_fixtures import MODELS, make_study

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    per_model = -(-(ratings + 1) // (1 + len(MODELS)))
    names = [BASELINE_READER] + [f"reader-{i:02d}" for i in range(1, readers + 1)]
    t = time.perf_counter()
    created = make_study(
        work, tuple(names), n_cases=per_model * (1 + len(MODELS)), per_model=per_model, turing=True, size=size
    )
    setup_s = time.perf_counter() - t
    root, info = study.load(created.path)
    questions = {c.name: c.question for c in info.criteria}
    kw = {"questions": questions, "turing": info.turing, "ratings": ratings, "think": think}
    server = Server(root, work / "server.log")
    try:
        load_before = os.getloadavg()[0]
        cpu0 = server.cpu_seconds()
        base_wall, base = asyncio.run(
            _phase(server.url, [(BASELINE_READER, created.tokens[BASELINE_READER])], **kw)
        )
        cpu1 = server.cpu_seconds()
        rss_base = server.peak_rss_mb()
        group = [(n, created.tokens[n]) for n in names[1:]]
        conc_wall, conc = asyncio.run(_phase(server.url, group, **kw))
        cpu2 = server.cpu_seconds()
        rss_conc = server.peak_rss_mb()
        load_after = os.getloadavg()[0]
    finally:
        server.stop()
    log_text = server.log_text()
    baseline = _summary(base_wall, base, cpu1 - cpu0, rss_base)
    concurrent = _summary(conc_wall, conc, cpu2 - cpu1, rss_conc)
    integrity = _check_database(study.database_url(root, info), base + conc, list(questions))
    errors = baseline["errors"] + concurrent["errors"] + log_text.count("Traceback")
    ratios = {
        "submits_per_s": concurrent["submits_per_s"] / baseline["submits_per_s"],
        "latency_p50": concurrent["latency_ms"]["p50"] / baseline["latency_ms"]["p50"],
        "latency_p95": concurrent["latency_ms"]["p95"] / baseline["latency_ms"]["p95"],
        "server_peak_rss": rss_conc / rss_base,
    }
    return {
        "config": {
            "mode": "websocket",
            "readers": readers,
            "ratings": ratings,
            "think_seconds": think,
            "image_size": size,
            "seed": seed,
            "cpu_count": os.cpu_count(),
            "load_average": [load_before, load_after],
            "setup_seconds": setup_s,
            "python": sys.version.split()[0],
        },
        "baseline": baseline,
        "concurrent": concurrent,
        "ratios": ratios,
        "integrity": integrity,
        "errors": errors,
        "ok": errors == 0
        and integrity["lost"] == 0
        and integrity["duplicates"] == 0
        and integrity["extra"] == 0,
    }


def tables(result: dict[str, Any]) -> str:
    cfg, ratios, integ = result["config"], result["ratios"], result["integrity"]
    lines = [
        (
            f"Websocket load: {cfg['cpu_count']} cores (1-min load {cfg['load_average'][0]:.1f} before / "
            f"{cfg['load_average'][1]:.1f} after), {cfg['image_size']} px images; each reader: {cfg['ratings']} "
            f"submits, think time {cfg['think_seconds']:g} s (uniform 0.5-1.5x). Latency: Submit click to the "
            "next item on the page."
        ),
        "",
        (
            "| run | readers | submits | submits/s | latency p50 ms | p95 ms | max ms | image p95 ms "
            "| server CPU ms/submit | server peak RSS MB | errors |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in (("baseline", "baseline: 1 reader alone"), ("concurrent", "concurrent")):
        r = result[key]
        lat = r["latency_ms"]
        lines.append(
            f"| {label} | {r['readers']} | {r['submits']} | {r['submits_per_s']:.2f} | {lat['p50']:.0f} "
            f"| {lat['p95']:.0f} | {lat['max']:.0f} | {r['image_ms']['p95']:.0f} "
            f"| {r['server_cpu_ms_per_submit']:.0f} | {r['server_peak_rss_mb']:.0f} | {r['errors']} |"
        )
    lines += [
        "",
        (
            f"Concurrent / baseline: submits/s {ratios['submits_per_s']:.2f}x, latency p50 "
            f"{ratios['latency_p50']:.2f}x, p95 {ratios['latency_p95']:.2f}x, server peak RSS "
            f"{ratios['server_peak_rss']:.2f}x. Image bytes: {result['concurrent']['image_bytes']}."
        ),
        (
            f"Database: {integ['stored_answers']} answers stored for {integ['expected_answers']} given; lost "
            f"{integ['lost']}, duplicated {integ['duplicates']}, unexpected {integ['extra']}."
        ),
    ]
    return "\n".join(lines)
