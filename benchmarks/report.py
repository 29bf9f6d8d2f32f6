"""How long ``xray-audit report`` takes on a large run (issue 6: 10 models x 1,000 cases in under 60 s).

    python benchmarks/report.py [--models 10] [--cases 1000] [--readers 4] [--items 200] [--quick]
                                [--json FILE] [--keep DIR]

Builds a synthetic finished run directory in the runner's format with :mod:`audit.fake_run`, without
running any network: ``--models`` models (generators of several kinds, two ``degrade`` sanity baselines
and ``real``) x ``--cases`` cases x 1 sample, with per-sample pixel metrics (mse, mae, psnr, ssim,
ms_ssim) and Dice (sample vs reference, and vs the input anatomy mask), a ``summary.csv`` written by the
runner's own :func:`audit.summary.summarise` (bootstrap CIs over cases) plus pathology AUC/F1 (macro and
per class, with CIs) and distribution rows (FID, FXD, KID, PRDC), ``samples.parquet``,
``cases.parquet``, 64 px PNGs (radiograph-like references, their anatomy masks, every sample the
reference plus noise), ``config.toml`` and ``run.json`` with the runner's keys. With
``--readers`` > 0 a reader study of the run is created (``reader_study.create``, 64 px) and every
reader rates all ``--items`` items (three criteria and the Turing question) through the store.

Then ``xray-audit report RUN --format html,md,tex,csv [--reader-study STUDY]`` runs in a fresh
subprocess (``audit.cli.main``, what the ``xray-audit`` script calls). Its wall time, measured by the
parent from spawn to exit, is the true CLI time (interpreter start and imports included); peak
memory is the child's own ``VmHWM`` (``ru_maxrss`` would carry the parent's peak over through fork
and exec). Inside, the functions the command calls are wrapped to time its stages, wall and CPU,
each exclusive of the stages it calls: loading the run directory, the comparison tables (md, tex,
csv), the paired tests, report.html and the reader statistics (export and models).

The baselines are measured in the same run with the same code: the report of the same cohort with one
generator and the real row (what does not grow with the number of models) and of the same models on a
tenth of the cases (what does not grow with the cohort); the table prints the large run's times as
ratios of theirs. ``--quick`` is a smoke run (4 models x 200 cases, 2 readers x 40 items).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from audit.fake_run import FakeModel

_REPO = Path(__file__).resolve().parent.parent
FORMATS = "html,md,tex,csv"
TARGET_S = 60.0
IMAGE_PX = 64
PIXEL = ("mse", "mae", "psnr", "ssim", "ms_ssim")
STRUCTURES = ("lungs", "heart", "aorta")
CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Nodule")
# Generators cycle through these kinds so the comparison groups rows by kind as it would for a real study.
GENERATOR_KINDS = (
    {"kind": "diffusers-controlnet", "path": "/models/sd15-cxr", "controlnet": "/models/cn-anatomy",
     "condition": "anatomy_mask", "steps": 50, "guidance": 7.5},
    {"kind": "diffusers-text2img", "path": "/models/roentgen", "steps": 50, "guidance": 4.0},
    {"kind": "diffusers-img2img", "path": "/models/sd15-cxr", "condition": "anatomy_mask", "strength": 0.6,
     "steps": 50, "guidance": 7.5},
    {"kind": "python", "callable": "kneegen.sample:generate", "options": {"steps": 200}},
    {"kind": "folder"},
)  # fmt: skip
BASELINES = (
    {"name": "blur-2", "kind": "degrade", "degradation": "blur", "level": 2.0},
    {"name": "noise-0.05", "kind": "degrade", "degradation": "noise", "level": 0.05},
)
PRDC = ("precision", "recall", "density", "coverage")
STAGES = ("load", "tables", "paired_tests", "html", "reader_stats")


def _peak_rss_mb() -> float:
    """This process's own peak resident memory (``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


# ------------------------------------------------------------------------------------------------
# The synthetic run
# ------------------------------------------------------------------------------------------------


def model_tables(n_models: int) -> list[dict[str, Any]]:
    """``[[models]]`` tables: generators, then up to two degrade baselines, ``real`` last."""
    if n_models < 1:
        raise ValueError(f"--models must be >= 1, got {n_models}")
    n_baselines = min(len(BASELINES), max(0, n_models - 2))
    n_real = 1 if n_models >= 2 else 0
    tables = []
    for i in range(n_models - n_baselines - n_real):
        kind = dict(GENERATOR_KINDS[i % len(GENERATOR_KINDS)])
        name = f"gen{i:02d}-{kind['kind'].removeprefix('diffusers-')}"
        if kind["kind"] == "folder":
            kind["path"] = f"generated/{name}/{{case_id}}.png"
        tables.append({"name": name, **kind})
    tables += [dict(b) for b in BASELINES[:n_baselines]]
    if n_real:
        tables.append({"name": "real", "kind": "real"})
    return tables


def _reference(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A radiograph-like 64 px image (two dark lung fields, a heart shadow) and its RGB anatomy mask."""
    cx, cy, r = 0.5 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02), 0.22 + rng.normal(0, 0.01)
    lungs = (((x - (cx - 0.2)) / 0.14) ** 2 + ((y - cy) / r) ** 2 < 1) | (
        ((x - (cx + 0.2)) / 0.14) ** 2 + ((y - cy) / r) ** 2 < 1
    )
    heart = ((x - cx - 0.05) / 0.12) ** 2 + ((y - cy - 0.1) / 0.1) ** 2 < 1
    aorta = ((x - cx) / 0.03) ** 2 + ((y - cy + 0.12) / 0.12) ** 2 < 1
    img = 0.75 - 0.45 * lungs + 0.3 * (heart & lungs) + 0.05 * np.sin(30 * y) + rng.normal(0, 0.03, x.shape)
    return np.clip(img, 0, 1).astype(np.float32), np.stack([lungs, heart, aorta], axis=2)


def _per_case_metrics(
    quality: float, difficulty: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    n = difficulty.size
    ssim = np.clip(0.55 + 0.35 * quality - 0.05 * difficulty + rng.normal(0, 0.03, n), 0, 1)
    psnr = 18 + 12 * quality - 1.5 * difficulty + rng.normal(0, 1.0, n)
    mse = 10 ** (-psnr / 10)  # pixel_range 1: PSNR = -10 log10(MSE)
    values = {
        "mse": mse,
        "mae": np.sqrt(mse) * 0.8 * np.exp(rng.normal(0, 0.05, n)),
        "psnr": psnr,
        "ssim": ssim,
        "ms_ssim": np.clip(ssim + 0.05 + rng.normal(0, 0.01, n), 0, 1),
    }
    for prefix, base in (("dice", 0.7), ("dice_mask", 0.65)):
        # Rounded like a Dice of a 64 px mask, so tied cases exist and Pratt's zero handling is exercised.
        parts = [
            np.round(np.clip(base + 0.25 * quality - 0.03 * difficulty + rng.normal(0, 0.02, n), 0, 1), 3)
            for _ in STRUCTURES
        ]
        values.update({f"{prefix}_{s}": p for s, p in zip(STRUCTURES, parts, strict=True)})
        values[f"{prefix}_mean"] = np.mean(parts, axis=0)
    return values


def build_run(root: Path, n_models: int, n_cases: int, seed: int = 0) -> Path:
    """A finished run directory at ``root/run`` (see the module docstring)."""
    from audit.config import parse_config
    from audit.fake_run import FakeRun, write_fake_run
    from audit.runner import collect_versions
    from audit.summary import summarise

    rng = np.random.default_rng(seed)
    tables = model_tables(n_models)
    raw = {
        "study": {"name": f"benchmark {n_models} models x {n_cases} cases", "cases": "cases.csv",
                  "output": "run", "seed": seed, "samples_per_case": 1},
        "models": tables,
        "metrics": {"pixel": list(PIXEL), "clinical": ["pathology_auc", "pathology_f1", "dice"],
                    "distribution": ["fid", "fxd", "kid", "prdc"], "bootstrap_resamples": 1000},
        "evaluators": {"classifier": "xrv", "segmenter": "xrv", "features": "inception"},
    }  # fmt: skip
    config = parse_config(raw, source=root / "study.toml")

    y, x = np.mgrid[0:IMAGE_PX, 0:IMAGE_PX].astype(np.float32) / IMAGE_PX
    case_ids = [f"case{i:05d}" for i in range(n_cases)]
    labels = rng.random((n_cases, len(CLASSES))) < 0.25
    references, masks = zip(*(_reference(rng, y, x) for _ in case_ids), strict=True)
    found = [[c for c, on in zip(CLASSES, row, strict=True) if on] for row in labels]
    columns = {
        "prompt": ["chest x-ray, frontal view" + "".join(f", {f.lower()}" for f in fs) for fs in found],
        "labels": [";".join(fs) or "No Finding" for fs in found],
        "view": ["PA" if i % 3 else "AP" for i in range(n_cases)],
    }

    difficulty = rng.normal(0, 1, n_cases)
    quality = dict(zip([t["name"] for t in tables], np.linspace(0.9, 0.3, len(tables)), strict=True))
    per_sample, per_case = [], {}
    for spec in config.models:
        for metric, v in _per_case_metrics(float(quality[spec.name]), difficulty, rng).items():
            if spec.kind == "real" and not metric.startswith("dice_mask"):
                continue  # real against itself: not computed (the runner writes no such rows)
            per_case[(spec.name, metric)] = (np.array(case_ids), v.astype(np.float64))
            per_sample.append(
                pd.DataFrame(
                    {"model": spec.name, "case_id": case_ids, "sample": 0, "metric": metric, "value": v}
                )
            )

    names = {"classifier": "xrv-densenet121-res224-all", "segmenter": "xrv-pspnet-chestx-det",
             "features": "inception-v3-fid"}  # fmt: skip
    set_rows = _set_level_rows(tables, quality, n_cases, names, rng)
    summary = summarise(per_case, config, None, set_rows)
    summary.loc[summary["metric"].str.startswith("dice"), "evaluator"] = names["segmenter"]
    spec = FakeRun(
        models=tuple(_fake_model(t, float(quality[t["name"]])) for t in tables),
        case_ids=tuple(case_ids),
        name=config.study.name,
        seed=seed,
        draw_seed=seed + 1,
        image_shape=(IMAGE_PX, IMAGE_PX),
        references=references,
        masks=masks,
        columns=columns,
        per_sample=pd.concat(per_sample, ignore_index=True),
        summary=summary,
        config={"metrics": raw["metrics"], "evaluators": raw["evaluators"]},
        run_info=_run_info(root, config, tables, case_ids, names, collect_versions()),
    )
    return write_fake_run(root, spec)


def _fake_model(table: dict[str, Any], quality: float) -> FakeModel:
    """The model of a ``[[models]]`` table: samples are its cases' references plus noise that
    shrinks with ``quality``; generators record how they generated."""
    from audit.fake_run import FakeModel
    from audit.hashing import stable_hash

    kind = table["kind"]
    generation = {}
    if kind not in ("real", "degrade", "folder"):
        generation = {
            "steps": int(table.get("steps", table.get("options", {}).get("steps", 0))),
            "guidance": float(table.get("guidance", 1.0)),
            "strength": table.get("strength"),
            "scheduler": "DDIMScheduler",
            "dtype": "fp16",
            "weights": "sha256:" + stable_hash(table)[:16],
            "perturbation": None,
            "seconds": 1.2,
        }
    return FakeModel(
        table["name"],
        kind,
        {k: v for k, v in table.items() if k not in ("name", "kind")},
        noise=0.02 + 0.1 * (1 - quality),
        generation=generation,
        path="generated/{model}/{case_id}.png" if kind == "folder" else None,
    )


def _set_level_rows(tables, quality, n_cases, names, rng) -> list[dict[str, Any]]:
    """Pathology AUC/F1 (macro and per class, with CIs over cases) and distribution rows (no CIs, N =
    samples), as audit.evaluation returns them."""
    rows = []

    def row(model: str, metric: str, value: float, half: float | None, evaluator: str) -> dict[str, Any]:
        lo, hi = (value - half, value + half) if half is not None else (float("nan"), float("nan"))
        return {"model": model, "metric": metric, "value": float(value), "ci_low": float(lo),
                "ci_high": float(hi), "n": n_cases, "group": "", "evaluator": evaluator}  # fmt: skip

    for table in tables:
        name, q = table["name"], float(quality[table["name"]])
        for metric, base in (("pathology_auc", 0.55), ("pathology_f1", 0.3)):
            per_class = np.clip(base + 0.35 * q + rng.normal(0, 0.03, len(CLASSES)), 0, 1)
            rows.append(row(name, metric, per_class.mean(), 0.03, names["classifier"]))
            rows += [
                row(name, f"{metric}:{c}", v, 0.05, names["classifier"])
                for c, v in zip(CLASSES, per_class, strict=True)
            ]
        if table["kind"] == "real":
            continue
        # Set-level distances have one value per model and no CI in summary.csv, as the runner writes them.
        rows += [
            row(name, "fid", 5 + 60 * (1 - q) + rng.normal(0, 1), None, names["features"]),
            row(name, "fxd", 1 + 20 * (1 - q) + rng.normal(0, 0.5), None, names["classifier"]),
            row(name, "kid", 0.002 + 0.05 * (1 - q), None, names["features"]),
        ]
        prdc = np.clip(0.3 + 0.6 * q + rng.normal(0, 0.02, len(PRDC)), 0, 1.5)
        rows += [row(name, m, v, None, names["classifier"]) for m, v in zip(PRDC, prdc, strict=True)]
    return rows


def _run_info(root, config, tables, case_ids, names, versions) -> dict[str, Any]:
    """run.json's keys as the runner writes them (besides the counts the fake run fills in)."""
    from audit.fake_run import RUN_DIR
    from audit.hashing import stable_hash

    n_cases = len(case_ids)

    now = dt.datetime.now(dt.UTC)
    generating = [t["name"] for t in tables if t["kind"] not in ("real", "degrade", "folder")]
    feature = {
        t["name"]: {"all cases": {
            "fid": {"n_real": n_cases, "n_gen": n_cases, "dim": 2048, "rank_deficient": n_cases <= 2048},
            "fxd": {"n_real": n_cases, "n_gen": n_cases, "dim": 1024, "rank_deficient": n_cases <= 1024},
            "kid": {"n_real": n_cases, "n_gen": n_cases, "std": 0.001, "subset_size": min(1000, n_cases),
                    "subsets": 100, "clamped": n_cases < 1000, "requested_subset_size": 1000},
            "prdc": {"n_real": n_cases, "n_gen": n_cases, "k": 5},
        }}
        for t in tables if t["kind"] != "real"
    }  # fmt: skip
    evaluator = {
        role: {"name": name, "role": role, "source": "inception" if role == "features" else "xrv",
               "label": name, "weights": name, "weights_sha256": stable_hash(name), "preprocessing": "v1",
               "note": ""}
        for role, name in names.items()
    }  # fmt: skip
    return {
        "config_hash": config.hash(),
        "cases_hash": stable_hash(case_ids),
        "started": (now - dt.timedelta(hours=3)).isoformat(),
        "finished": now.isoformat(),
        "timings": {"load_s": 1.2, "samples_and_metrics_s": 9000.0, "aggregate_s": 3.1, "summary_s": 2.0},
        "versions": versions,
        "policies": {
            "pixel_range": 1.0,
            "resize": "none",
            "overlap_threshold": 0.5,
            "ci": "95% percentile bootstrap over cases, 1000 resamples; per-case value = mean over samples",
            "self_reference_models": ["real"],
            "group_by": [],
        },
        "generation": {
            name: {
                "samples": n_cases,
                "failed": 0,
                "generation_seconds": 1.2 * n_cases,
                "images_per_s": 0.83,
                "this_process": {"device": "cuda:0", "gpu": "NVIDIA H100", "load_s": 12.0},
            }
            for name in generating
        },
        "evaluation": {
            "evaluators": evaluator,
            "metric_evaluators": {},
            "unavailable": {},
            "device": "auto",
            "dtype": "fp32",
            "cache_dir": str(root / RUN_DIR / "cache" / "features"),
            "pathology": {
                "classes": list(CLASSES),
                "threshold_policy": "operating_point",
                "thresholds": dict.fromkeys(CLASSES, 0.5),
                "skipped": {},
            },
            "feature_metrics": feature,
        },
    }


def build_study(run: Path, root: Path, n_readers: int, n_items: int, seed: int = 0) -> Path:
    """A reader study of ``run`` with about ``n_items`` items, every one rated by every reader."""
    if str(_REPO) not in sys.path:
        sys.path.insert(0, str(_REPO))  # for tests.reader_study_fixtures when run as a script
    from audit import rundir
    from tests.reader_study_fixtures import rated_study

    n_strata = pd.read_parquet(run / rundir.SAMPLES)["model"].nunique()
    return rated_study(
        run, root / "study", readers=tuple(f"reader{i}" for i in range(n_readers)),
        per_model=max(1, n_items // n_strata), rng=np.random.default_rng(seed), said_real=(0.7, 0.45), seconds=3.0,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Children
# ------------------------------------------------------------------------------------------------


def _cli_args(run: str, out: str, study: str) -> list[str]:
    args = ["report", run, "--format", FORMATS, "--out", out]
    return args + (["--reader-study", study] if study != "-" else [])


class _StageClock:
    """Exclusive wall and CPU seconds of the report's stages, by wrapping the functions the CLI calls
    (time in a stage called from another stage, e.g. a load inside the HTML, counts for the inner one)."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(STAGES, 0.0)
        self.cpu = dict.fromkeys(STAGES, 0.0)
        self._stack: list[list[float]] = []  # per open stage: [inner wall, inner cpu]

    def wrap(self, module: Any, name: str, stage: str) -> None:
        inner = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([0.0, 0.0])
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                nested_wall, nested_cpu = self._stack.pop()
                self.wall[stage] += wall - nested_wall
                self.cpu[stage] += cpu - nested_cpu
                if self._stack:
                    self._stack[-1][0] += wall
                    self._stack[-1][1] += cpu

        setattr(module, name, timed)


def _child(run_dir: str, out: str, study: str) -> dict[str, Any]:
    """``xray-audit report`` in this process, with its stages timed; the parent times the process."""
    import audit.cli
    import reports.comparison
    import reports.html
    import reports.run
    import reports.statistics

    # The CLI imports these inside its handler (audit.cli.report), so it calls the wrapped functions;
    # html and comparison bind load_run (used when given a path) and run_paired_tests call its own.
    clock = _StageClock()
    clock.wrap(reports.run, "load_run", "load")
    clock.wrap(reports.html, "load_run", "load")
    clock.wrap(reports.comparison, "load_run", "load")
    clock.wrap(reports.comparison, "write_exports", "tables")
    clock.wrap(reports.statistics, "run_paired_tests", "paired_tests")
    clock.wrap(reports.statistics, "paired_tests", "paired_tests")
    clock.wrap(reports.html, "write_html_report", "html")
    if study != "-":
        import reader_study.admin
        import reports.reader_stats

        clock.wrap(reader_study.admin, "export_frame", "reader_stats")
        clock.wrap(reports.reader_stats, "run_reader_statistics", "reader_stats")
        clock.wrap(reports.reader_stats, "reader_statistics", "reader_stats")
    wall, cpu = time.perf_counter(), time.process_time()
    rc = audit.cli.main(["-q", *_cli_args(run_dir, out, study)])
    if rc != 0:
        raise RuntimeError(f"xray-audit report exited {rc}")
    return {
        "report_wall_s": time.perf_counter() - wall,
        "report_cpu_s": time.process_time() - cpu,
        "process_cpu_s": time.process_time(),
        "stage_wall_s": clock.wall,
        "stage_cpu_s": clock.cpu,
        "paired_comparisons": len(pd.read_csv(Path(out) / "paired_tests.csv")),
        "html_mb": (Path(out) / "report.html").stat().st_size / 2**20,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _spawn(run: Path, out: Path, study: Path | None) -> tuple[float, dict[str, Any]]:
    cmd = [sys.executable, __file__, "--child", str(run), str(out), str(study or "-")]
    path = os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child on {run} failed:\n{proc.stderr[-4000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def measure(label: str, root: Path, n_models: int, n_cases: int, readers: int, items: int) -> dict[str, Any]:
    t = time.perf_counter()
    run = build_run(root, n_models, n_cases)
    study = build_study(run, root, readers, items) if readers > 0 else None
    build_s = time.perf_counter() - t
    wall, child = _spawn(run, root / "out", study)
    result = {
        "label": label,
        "models": n_models,
        "cases": n_cases,
        "readers": readers if study else 0,
        "items": items if study else 0,
        "build_s": build_s,
        "cli_wall_s": wall,
        **child,
    }
    print(
        f"{label}: {n_models} models x {n_cases} cases: CLI {wall:.1f} s wall, "
        f"{child['process_cpu_s']:.1f} s CPU, peak RSS {child['peak_rss_mb']:.0f} MiB "
        f"(build {build_s:.1f} s)",
        file=sys.stderr,
    )
    return result


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}×" if a is not None and b else "–"


def table(results: list[dict[str, Any]], load: tuple[float, float]) -> str:
    main, *baselines = results

    def other(r: dict[str, Any], key: str) -> float:
        total = r["cli_wall_s"] if key == "wall" else r["process_cpu_s"]
        return total - sum(r[f"stage_{key}_s"].values())

    rows = [
        ("CLI, process start to exit", lambda r, k: r["cli_wall_s"] if k == "wall" else r["process_cpu_s"]),
        *((f"  {stage}", lambda r, k, s=stage: r[f"stage_{k}_s"][s]) for stage in STAGES),
        ("  imports, start-up, rest", other),
    ]
    head = [f"{r['label']} ({r['models']}×{r['cases']})" for r in results]
    lines = [
        (
            f"xray-audit report --format {FORMATS}{' --reader-study' if main['readers'] else ''} "
            f"({main['readers']} readers x {main['items']} items); {os.cpu_count()} CPU cores, "
            f"1-min load average {load[0]:.1f} before / {load[1]:.1f} after. Seconds wall (CPU of the "
            "process in brackets); "
            f"paired comparisons {', '.join(str(r['paired_comparisons']) for r in results)}; "
            f"report.html {main['html_mb']:.1f} MB."
        ),
        "",
        "| seconds | " + " | ".join([*head, *(f"run vs {b['label']}" for b in baselines)]) + " |",
        "|---|" + "---:|" * (len(results) + len(baselines)),
    ]
    for name, get in rows:
        cells = [f"{get(r, 'wall'):.2f} ({get(r, 'cpu'):.2f})" for r in results]
        ratios = [
            f"{_ratio(get(main, 'wall'), get(b, 'wall'))} ({_ratio(get(main, 'cpu'), get(b, 'cpu'))})"
            for b in baselines
        ]
        lines.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    rss = [f"{r['peak_rss_mb']:.0f}" for r in results]
    rss += [_ratio(main["peak_rss_mb"], b["peak_rss_mb"]) for b in baselines]
    lines.append("| peak RSS MiB (VmHWM) | " + " | ".join(rss) + " |")
    verdict = "meets" if main["cli_wall_s"] < TARGET_S else "MISSES"
    lines += [
        "",
        (
            f"{main['models']} models × {main['cases']} cases: {main['cli_wall_s']:.1f} s wall, {verdict} the "
            f"{TARGET_S:.0f} s target."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--readers", type=int, default=4, help="reader-study readers (0: no reader study)")
    parser.add_argument("--items", type=int, default=200, help="reader-study items, each rated by all")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 4 models x 200 cases, 2 readers x 40 items"
    )
    parser.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    parser.add_argument("--keep", type=Path, help="build the runs under this directory and keep them")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    if args.quick:
        args.models, args.cases, args.readers, args.items = 4, 200, 2, 40
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        specs = [
            ("run", args.models, args.cases),
            ("1 generator + real", 2, args.cases),
            ("1/10 cases", args.models, max(10, args.cases // 10)),
        ]
        results = [
            measure(label, base / label.replace(" ", "_").replace("/", "_"), m, n, args.readers, args.items)
            for label, m, n in specs
        ]
    text = table(results, (load_before, os.getloadavg()[0]))
    print(text)
    if args.json:
        payload = {"results": results, "table": text}
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0 if results[0]["cli_wall_s"] < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
