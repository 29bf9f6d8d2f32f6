"""`xray-audit run`: cases → samples → paired metrics → run directory.

Work is split into chunks of cases. For every (model, chunk) the runner writes a samples shard and
a metrics shard atomically under ``parts/``, keyed by a hash of everything that determines their
content. A rerun skips every shard that exists, so killing the process at any point and rerunning
gives the same files as one clean run, and adding a model computes only that model.

Chunks are the outer loop so each reference image is decoded once per run and shared by every
model, and memory stays bounded by one chunk whatever the cohort size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from audit import __version__, images, rundir
from audit.atomic import TMP_PREFIX, atomic_path, sha256_file, write_text
from audit.cases import PATH_COLUMNS, Case, Manifest, load_manifest
from audit.config import StudyConfig, dump_toml, stable_hash
from audit.evaluation import ALL_CASES, Evaluation, EvaluationError, entry_metrics
from audit.evaluators import speed
from audit.feature_cache import FeatureCache
from audit.models.base import (
    ModelAdapter,
    ModelLoadError,
    SampleFailure,
    SampleRequest,
    derive_seed,
    safe_name,
)
from audit.registry import build_adapter
from audit.stats import bootstrap_mean_ci

log = logging.getLogger(__name__)

# Bump when the meaning of a shard changes, so stale shards are recomputed rather than trusted.
SAMPLES_FORMAT = 3
METRICS_FORMAT = 2
# Pixels per scoring batch: 32 images at 256², 2 at 1024²; bounds peak memory of SSIM's buffers.
BATCH_PIXELS = 1 << 21

SAMPLE_SHARD_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("case_id", pa.string()),
        ("sample", pa.int64()),
        ("seed", pa.int64()),
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("kind", pa.string()),
        ("error", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("steps", pa.int64()),
        ("guidance", pa.float64()),
        ("strength", pa.float64()),
        ("scheduler", pa.string()),
        ("dtype", pa.string()),
        ("weights", pa.string()),
        ("prompt", pa.string()),
        ("perturbation", pa.string()),
        ("seconds", pa.float64()),
    ]
)
METRIC_SHARD_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("case_id", pa.string()),
        ("sample", pa.int64()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)
FAILURE_SCHEMA = pa.schema(
    [(c, pa.int64() if c == "sample" else pa.string()) for c in rundir.FAILURES_COLUMNS]
)


class RunError(RuntimeError):
    """The run cannot continue; the message says what failed and how to proceed."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
    keep_going: bool = False
    progress: bool = True
    chunk_size: int = 64
    report: bool = True
    # (i, n): this process does chunks ci with ci % n == i, then stops before aggregation;
    # `xray-audit merge` finishes the run once every shard is done.
    shard: tuple[int, int] | None = None
    # merge: every chunk of every model must already be done; nothing is generated or scored.
    require_complete: bool = False


@dataclasses.dataclass(frozen=True)
class RunResult:
    path: Path
    n_samples: int
    n_failures: int
    report: Path | None


def run_study(config: StudyConfig, options: RunOptions = RunOptions()) -> RunResult:
    started = dt.datetime.now(dt.UTC)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    out = config.study.output
    out.mkdir(parents=True, exist_ok=True)

    manifest = load_manifest(config.study.cases, check_pixels=False)
    cases = manifest.cases()
    cases_hash = stable_hash(
        {"manifest": manifest.frame.astype(str).to_dict(orient="list"), "files": _fingerprints(manifest)}
    )
    write_text(out / rundir.CONFIG_TOML, dump_toml(config))
    _write_parquet(pa.Table.from_pandas(manifest.frame, preserve_index=False), out / rundir.CASES)
    timings["load_cases_s"] = time.perf_counter() - t

    adapters = [build_adapter(spec, config.study) for spec in config.models]
    evaluation = _prepare_evaluation(config, cases, list(manifest.frame.columns), options)
    if not options.keep_going:
        _preflight(adapters, cases)
    plan = _Plan(config, options, out, cases_hash, evaluation)
    if evaluation is not None and not options.require_complete:
        _warn_if_slow_on_cpu(plan, adapters, cases)
    # Before any generation, so a bad annotation file or detector fails in seconds, not hours.
    norberg = _prepare_norberg(config, manifest) if options.shard is None else None

    t = time.perf_counter()
    if options.require_complete:
        _check_complete(plan, adapters, cases)
    _process(plan, adapters, cases, options)
    timings["samples_and_metrics_s"] = time.perf_counter() - t
    if options.shard is not None:
        return _finish_shard(plan, adapters, cases, timings)

    t = time.perf_counter()
    n_samples, failures, per_case = _aggregate(plan, adapters, len(cases))
    timings["aggregate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    distribution_rows: list[dict] = []
    evaluation_info: dict = {}
    if evaluation is not None:
        distribution_rows, evaluation_info = _distribution(plan, adapters, manifest, options)
        timings["distribution_metrics_s"] = time.perf_counter() - t
    norberg_info: dict = {}
    if norberg is not None:
        t = time.perf_counter()
        norberg_rows, norberg_info = _measure_norberg(plan, norberg, options)
        distribution_rows = [*distribution_rows, *norberg_rows]
        timings["norberg_s"] = time.perf_counter() - t
    t = time.perf_counter()
    failures_path = out / rundir.FAILURES
    if len(failures):
        with atomic_path(failures_path) as tmp:
            failures.to_csv(tmp, index=False)
    else:
        failures_path.unlink(missing_ok=True)
    summary = summarise(per_case, config, manifest.frame, distribution_rows, evaluation)
    with atomic_path(out / rundir.SUMMARY) as tmp:
        summary.to_csv(tmp, index=False)
    _prune_stale_parts(plan, adapters)
    _remove_orphan_temps(out, started)
    timings["summary_s"] = time.perf_counter() - t

    run_info = {
        "xray_audit_version": __version__,
        "study": config.study.name,
        "config_hash": config.hash(),
        "cases_hash": cases_hash,
        "started": started.isoformat(),
        "finished": dt.datetime.now(dt.UTC).isoformat(),
        "n_cases": len(cases),
        "n_models": len(adapters),
        "n_samples": n_samples,
        "n_failures": len(failures),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "versions": _versions(),
        "policies": {
            "pixel_range": config.metrics.pixel_range,
            "resize": config.metrics.resize,
            "overlap_threshold": config.metrics.overlap_threshold,
            "ci": f"{config.metrics.confidence:.0%} percentile bootstrap over cases, "
            f"{config.metrics.bootstrap_resamples} resamples; per-case value = mean over samples",
            "self_reference_models": [a.spec.name for a in adapters if a.self_reference],
            "group_by": list(config.metrics.group_by),
        },
    }
    if norberg_info:
        run_info["norberg"] = norberg_info
    generation = _generation_info(plan, adapters, len(cases))
    if generation:
        run_info["generation"] = generation
    if evaluation is not None:
        run_info["evaluation"] = {
            "evaluators": evaluation.describe(),
            "metric_evaluators": _metric_evaluators(evaluation),
            "unavailable": {
                metric: reason
                for entry, reason in evaluation.unavailable.items()
                for metric in entry_metrics(entry)
            },
            "device": config.evaluators.device,
            "dtype": config.evaluators.dtype,
            "cache_dir": str(evaluation.cache_root),
            **evaluation_info,
        }
        if evaluation.unavailable:
            for entry, reason in evaluation.unavailable.items():
                log.warning("not computed: %s: %s", ", ".join(entry_metrics(entry)), reason)
    # run.json goes first because the report reads it; it is rewritten with the report's timing.
    write_text(out / rundir.RUN_JSON, json.dumps(run_info, indent=2) + "\n")
    report = None
    if options.report:
        t = time.perf_counter()
        from reports.html import write_html_report

        report = write_html_report(out)
        timings["report_s"] = time.perf_counter() - t

        run_info["timings"]["report_s"] = round(timings["report_s"], 3)
        write_text(out / rundir.RUN_JSON, json.dumps(run_info, indent=2) + "\n")
    return RunResult(path=out, n_samples=n_samples, n_failures=len(failures), report=report)


@dataclasses.dataclass(frozen=True)
class _NorbergPlan:
    reference: dict[str, dict[str, float]]
    detector: object  # audit.norberg.detector.KeypointDetector (imports torch)


def _prepare_norberg(config: StudyConfig, manifest: Manifest) -> _NorbergPlan | None:
    if config.norberg is None:
        return None
    from audit.norberg.detector import KeypointDetector
    from audit.norberg.evaluation import reference_angles

    n = config.norberg
    try:
        reference = reference_angles(n.annotations, manifest.frame["case_id"], patient_left=n.patient_left)
        detector = KeypointDetector.load(n.detector, device=config.evaluators.device)
    except (ValueError, FileNotFoundError) as exc:
        raise RunError(f"[norberg]: {exc}") from None
    return _NorbergPlan(reference, detector)


def _measure_norberg(plan: _Plan, norberg: _NorbergPlan, options: RunOptions) -> tuple[list[dict], dict]:
    """Detector angles of every sample (re-measured on each aggregation: the detector is small and
    the sample files may have been regenerated), written beside the run; summary rows returned."""
    from audit.norberg.evaluation import detector_info, measure_with_detector, write_outputs

    config = plan.config
    samples = pd.read_parquet(plan.out / rundir.SAMPLES)
    samples["case_id"] = samples["case_id"].astype(str)
    angles, summary = measure_with_detector(
        plan.out, samples, norberg.detector, norberg.reference, seed=config.study.seed,
        resamples=config.metrics.bootstrap_resamples, confidence=config.metrics.confidence,
        batch_size=config.evaluators.batch_size, progress=options.progress,
    )  # fmt: skip
    assert config.norberg is not None
    info = {
        "annotations": str(config.norberg.annotations),
        "annotations_sha256": sha256_file(config.norberg.annotations),
        "patient_left": config.norberg.patient_left,
        "bootstrap_resamples": config.metrics.bootstrap_resamples,
        "confidence": config.metrics.confidence,
        "seed": config.study.seed,
        **detector_info(norberg.detector, angles),
    }
    write_outputs(plan.out, angles, summary, {"detector": info})
    return summary.drop(columns="source").to_dict("records"), info


def _check_complete(plan: _Plan, adapters: Sequence[ModelAdapter], cases: Sequence[Case]) -> None:
    """Every (model, chunk) has its samples and metrics shards, each holding exactly the chunk's
    samples once; otherwise a RunError lists what is missing and which shard should have made it."""
    size = plan.options.chunk_size
    problems: list[str] = []
    for ci in range((len(cases) + size - 1) // size):
        chunk = cases[ci * size : (ci + 1) * size]
        for adapter in adapters:
            expected = sorted((c.case_id, s) for c in chunk for s in range(adapter.samples_per_case()))
            where = f"model {adapter.spec.name}, chunk {ci} (cases {chunk[0].case_id} .. {chunk[-1].case_id})"
            samples = plan.shard("samples", adapter, ci)
            if not samples.exists() or not plan.shard("metrics", adapter, ci).exists():
                problems.append(f"{where}: not done")
                continue
            frame = pq.read_table(samples, columns=["case_id", "sample"]).to_pandas()
            got = sorted(zip(frame["case_id"], frame["sample"].astype(int), strict=True))
            if got != expected:
                dupes = len(got) - len(set(got))
                missing = len(set(expected) - set(got))
                problems.append(
                    f"{where}: {missing} sample(s) missing, {dupes} duplicated, "
                    f"{len(set(got) - set(expected))} not in the manifest"
                )
    if problems:
        head = "\n".join(f"  - {p}" for p in problems[:100])
        more = f"\n  … and {len(problems) - 100} more" if len(problems) > 100 else ""
        raise RunError(
            f"{plan.out}: {len(problems)} part(s) of the run are not done:\n{head}{more}\n"
            f"With --shard i/n, chunk k belongs to shard k % n (chunk size {size}). Run the missing "
            "shards (same config, same --chunk-size), then merge again."
        )


def _finish_shard(
    plan: _Plan, adapters: Sequence[ModelAdapter], cases: Sequence[Case], timings: dict[str, float]
) -> RunResult:
    index, count = plan.options.shard  # type: ignore[misc]
    size = plan.options.chunk_size
    chunks = [ci for ci in range((len(cases) + size - 1) // size) if ci % count == index]
    n_samples = n_failures = 0
    for adapter in adapters:
        for ci in chunks:
            frame = pq.read_table(plan.shard("samples", adapter, ci), columns=["error"]).to_pandas()
            n_failures += int(frame["error"].notna().sum())
            n_samples += int(frame["error"].isna().sum())
    record = {
        "shard": [index, count],
        "chunk_size": size,
        "chunks": chunks,
        "config_hash": plan.config.hash(),
        "cases_hash": plan.cases_hash,
        "samples": n_samples,
        "failures": n_failures,
        "finished": dt.datetime.now(dt.UTC).isoformat(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "generation": {a.spec.name: a.stats() for a in adapters if a.loads_model},
    }
    write_text(
        plan.out / rundir.PARTS_DIR / "shards" / f"shard-{index}-of-{count}.json",
        json.dumps(record, indent=2),
    )
    return RunResult(path=plan.out, n_samples=n_samples, n_failures=n_failures, report=None)


def _generation_info(plan: _Plan, adapters: Sequence[ModelAdapter], n_cases: int) -> dict[str, dict]:
    """Per generating model: throughput over all its samples (resumed ones included, from their
    recorded seconds) and what this process measured (load time, peak GPU memory)."""
    n_chunks = (n_cases + plan.options.chunk_size - 1) // plan.options.chunk_size
    out: dict[str, dict] = {}
    for adapter in adapters:
        if not adapter.loads_model:
            continue
        frames = [
            pq.read_table(plan.shard("samples", adapter, ci), columns=["error", "seconds"]).to_pandas()
            for ci in range(n_chunks)
        ]
        frame = pd.concat(frames, ignore_index=True)
        ok = frame[frame["error"].isna()]
        seconds = float(ok["seconds"].sum())
        out[adapter.spec.name] = {
            "samples": len(ok),
            "failed": int(frame["error"].notna().sum()),
            "generation_seconds": round(seconds, 3),
            "images_per_s": round(len(ok) / seconds, 4) if seconds > 0 else None,
            "this_process": adapter.stats(),
        }
    return out


def _fingerprints(manifest: Manifest) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file the manifest names: a replaced reference invalidates all work."""
    out = []
    for column in PATH_COLUMNS:
        if column in manifest.frame.columns:
            for value in manifest.frame[column]:
                if isinstance(value, str):
                    st = os.stat(value)
                    out.append((value, st.st_size, st.st_mtime_ns))
    return out


def _preflight(adapters: Sequence[ModelAdapter], cases: Sequence[Case]) -> None:
    missing: list[str] = []
    hints: list[str] = []
    broken: list[str] = []
    for adapter in adapters:
        try:
            found = adapter.preflight(cases)
        except ModelLoadError as exc:
            broken.append(f"  - model {adapter.spec.name}: {exc}")
            continue
        missing += [
            f"{adapter.spec.name} / {case.case_id} / sample {sample}: {reason}"
            for case, sample, reason in found
        ]
        if found and adapter.spec.kind == "folder" and len(found) == len(cases) * adapter.samples_per_case():
            hints.append(f"none of model {adapter.spec.name}'s samples exist: check its path template")
    if broken:
        raise RunError(
            f"{len(broken)} model(s) cannot run:\n" + "\n".join(broken) + "\nFix the model config, or rerun "
            "with --keep-going to record their samples as failed and score the other models."
        )
    if missing:
        head = "\n".join(f"  - {m}" for m in missing[:200])
        more = f"\n  … and {len(missing) - 200} more" if len(missing) > 200 else ""
        raise RunError(
            f"{len(missing)} sample(s) cannot be produced:\n{head}{more}\n"
            + "".join(f"Hint: {h}.\n" for h in hints)
            + "Fix the paths in the study config or the case manifest, or rerun with --keep-going to record them in failures.csv "
            "and score the rest."
        )


def _prepare_evaluation(
    config: StudyConfig, cases: Sequence[Case], columns: list[str], options: RunOptions
) -> Evaluation | None:
    if not (config.metrics.clinical or config.metrics.distribution):
        return None
    try:
        evaluation = Evaluation.prepare(config, cases, columns)
    except EvaluationError as exc:
        raise RunError(str(exc)) from None
    if evaluation.unavailable and not options.keep_going:
        by_reason: dict[str, list[str]] = {}
        for entry, reason in evaluation.unavailable.items():
            by_reason.setdefault(reason, []).extend(entry_metrics(entry))
        # Metrics that fail for one reason (e.g. one missing weights file) are listed together.
        lines = [f"  - {', '.join(metrics)}: {reason}" for reason, metrics in by_reason.items()]
        raise RunError(
            f"{sum(len(m) for m in by_reason.values())} requested metric(s) cannot be computed:\n"
            + "\n".join(lines)
            + "\nFix the cause above, or rerun with --keep-going to compute everything else; the metrics "
            "that could not be computed are then listed in run.json and the report."
        )
    return evaluation


def _warn_if_slow_on_cpu(plan: _Plan, adapters: Sequence[ModelAdapter], cases: Sequence[Case]) -> None:
    """Log a warning, before any work, when the evaluators would take over 30 minutes on CPU."""
    device = plan.config.evaluators.device
    if device.startswith("cuda"):
        return
    # The upper bound first (arithmetic only); the feature cache is only read for a run that looks slow.
    work = _evaluator_work(plan, adapters, cases, cached=False)
    if speed.cpu_seconds(work) > speed.SLOW_CPU_SECONDS:
        work = _evaluator_work(plan, adapters, cases, cached=True)
        message = speed.slow_cpu_warning(work, device, _cuda_available)
        if message:
            log.warning(message)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _evaluator_work(
    plan: _Plan, adapters: Sequence[ModelAdapter], cases: Sequence[Case], *, cached: bool
) -> list[speed.NetworkWork]:
    """Images each evaluator network evaluates in this process: the references and every sample of a
    non-reference model in this process's chunks. Sample hashes are unknown before generation, so
    this is an upper bound; with ``cached``, images whose hash is known (references and samples
    recorded by an earlier run) and whose outputs the feature cache holds are left out."""
    evaluation = plan.evaluation
    assert evaluation is not None
    size, shard = plan.options.chunk_size, plan.options.shard
    chunks = [
        (ci, cases[start : start + size])
        for ci, start in enumerate(range(0, len(cases), size))
        if shard is None or ci % shard[1] == shard[0]
    ]
    models = [a for a in adapters if not a.self_reference]  # a real row's samples are the references
    bound = sum(len(chunk) * (1 + sum(a.samples_per_case() for a in models)) for _, chunk in chunks)
    networks = {p.key: p.name for p in evaluation.plans.values()}  # roles sharing a network count once
    caches = [FeatureCache(evaluation.cache_root, key) for key in networks] if cached else []
    if not any(c.dir.is_dir() for c in caches):
        return [speed.NetworkWork(name, bound) for name in networks.values()]
    unknown, shas = 0, set()
    try:
        for ci, chunk in chunks:
            if plan.ref_shard(ci).exists():
                shas.update(pq.read_table(plan.ref_shard(ci), columns=["sha256"]).column(0).to_pylist())
            else:
                unknown += len(chunk)
            for a in models:
                if plan.shard("samples", a, ci).exists():
                    table = pq.read_table(plan.shard("samples", a, ci), columns=["sha256"])
                    shas.update(s for s in table.column(0).to_pylist() if s)  # failures have none
                else:
                    unknown += len(chunk) * a.samples_per_case()
        missing = [len(c.missing(sorted(shas))) if c.dir.is_dir() else None for c in caches]
    except (OSError, pa.ArrowException):
        return [speed.NetworkWork(name, bound) for name in networks.values()]  # never stops a run
    return [
        speed.NetworkWork(name, bound) if m is None else speed.NetworkWork(name, m + unknown, unknown > 0)
        for name, m in zip(networks.values(), missing, strict=True)
    ]


def _metric_evaluators(evaluation: Evaluation) -> dict[str, str]:
    from audit.evaluators.suite import ENTRY_ROLE

    out = {}
    for entry in (*evaluation.config.metrics.clinical, *evaluation.config.metrics.distribution):
        role = ENTRY_ROLE[entry]
        if entry in evaluation.unavailable or role not in evaluation.plans:
            continue
        for metric in entry_metrics(entry):
            out[metric] = evaluation.plans[role].name
    return out


@dataclasses.dataclass
class _Plan:
    config: StudyConfig
    options: RunOptions
    out: Path
    cases_hash: str
    evaluation: Evaluation | None = None

    def samples_key(self, adapter: ModelAdapter) -> str:
        return stable_hash(
            {
                "format": SAMPLES_FORMAT,
                "spec": dataclasses.asdict(adapter.spec),
                "seed": self.config.study.seed,
                "samples_per_case": adapter.samples_per_case(),
                "cases": self.cases_hash,
                "chunk_size": self.options.chunk_size,
            }
        )[:16]

    def metrics_key(self, adapter: ModelAdapter) -> str:
        return stable_hash(
            {
                "format": METRICS_FORMAT,
                "samples": self.samples_key(adapter),
                "metrics": self.config.to_dict()["metrics"],
                "segmenter": self.evaluation.segmenter_key() if self.evaluation else None,
                "dice": bool(self.evaluation and self.evaluation.wants("dice")),
            }
        )[:16]

    def ref_shard(self, chunk: int) -> Path:
        key = stable_hash({"cases": self.cases_hash, "chunk_size": self.options.chunk_size})[:16]
        return self.out / rundir.PARTS_DIR / "references" / key / f"{chunk:05d}.parquet"

    def part_dir(self, stage: str, adapter: ModelAdapter) -> Path:
        key = self.samples_key(adapter) if stage == "samples" else self.metrics_key(adapter)
        return self.out / rundir.PARTS_DIR / stage / f"{safe_name(adapter.spec.name)}-{key}"

    def shard(self, stage: str, adapter: ModelAdapter, chunk: int) -> Path:
        return self.part_dir(stage, adapter) / f"{chunk:05d}.parquet"


class _References:
    """Decodes each reference of the current chunk at most once and shares it across models."""

    def __init__(self, shas: dict[str, str] | None = None) -> None:
        self._cache: dict[str, images.XrayImage] = {}
        self.shas = shas or {}

    def __call__(self, case: Case) -> images.XrayImage:
        if case.case_id not in self._cache:
            self._cache[case.case_id] = images.read_image(case.image)
        return self._cache[case.case_id]

    def item(self, case: Case) -> tuple[str, Callable[[], np.ndarray]]:
        """(content sha256, pixel loader) of the reference, for the feature cache."""
        return self.shas[case.case_id], lambda: self(case).pixels


def _ensure_references(plan: _Plan, ci: int, chunk: Sequence[Case]) -> dict[str, str]:
    """sha256 of each reference file of the chunk, hashed once and kept in a shard for resumes."""
    shard = plan.ref_shard(ci)
    if shard.exists():
        frame = pq.read_table(shard).to_pandas()
        return dict(zip(frame["case_id"], frame["sha256"], strict=True))
    shas = {c.case_id: sha256_file(c.image) for c in chunk}
    frame = pd.DataFrame({"case_id": list(shas), "sha256": list(shas.values())})
    _write_parquet(pa.Table.from_pandas(frame, preserve_index=False), shard)
    return shas


def _process(
    plan: _Plan, adapters: Sequence[ModelAdapter], cases: Sequence[Case], options: RunOptions
) -> None:
    from tqdm.auto import tqdm

    if plan.config.metrics.pixel:
        import torchmetrics.functional  # noqa: F401 - its ~5 s import would otherwise skew the first ETA

    size = options.chunk_size
    chunks = [cases[i : i + size] for i in range(0, len(cases), size)]
    mine = set(range(len(chunks)))
    if options.shard is not None:
        index, count = options.shard
        mine = {ci for ci in mine if ci % count == index}
    # Networks are loaded once and freed before the next model, so their samples are all generated
    # first, model by model; scoring then runs chunk by chunk over every model.
    for adapter in adapters:
        if not adapter.loads_model:
            continue
        n = sum(len(chunks[ci]) for ci in mine) * adapter.samples_per_case()
        with tqdm(
            total=n, desc=f"generating {adapter.spec.name}", unit="img", disable=not options.progress
        ) as bar:
            try:
                for ci, chunk in enumerate(chunks):
                    if ci not in mine:
                        continue
                    _ensure_samples(plan, adapter, ci, chunk, _References())
                    bar.update(len(chunk) * adapter.samples_per_case())
            finally:
                adapter.release()
    total = sum(len(chunks[ci]) * a.samples_per_case() for a in adapters for ci in mine)
    with tqdm(total=total, desc="auditing", unit="sample", disable=not options.progress) as bar:
        for ci, chunk in enumerate(chunks):
            if ci not in mine:
                continue
            refs = _References(_ensure_references(plan, ci, chunk) if plan.evaluation else None)
            if plan.evaluation is not None:
                plan.evaluation.new_chunk()
            for adapter in adapters:
                bar.set_postfix_str(adapter.spec.name, refresh=False)
                samples = _ensure_samples(plan, adapter, ci, chunk, refs)
                _ensure_metrics(plan, adapter, ci, chunk, samples, refs)
                bar.update(len(chunk) * adapter.samples_per_case())


def _ensure_samples(
    plan: _Plan, adapter: ModelAdapter, ci: int, chunk: Sequence[Case], refs: _References
) -> pd.DataFrame:
    shard = plan.shard("samples", adapter, ci)
    if shard.exists():
        frame = pq.read_table(shard).to_pandas()
        if _samples_unchanged(frame, keep_failures=adapter.generates):
            return frame
        if plan.options.require_complete:
            raise RunError(
                f"model {adapter.spec.name}, chunk {ci}: sample files changed or vanished since they were "
                f"recorded in {shard}; merge scores nothing anew. Rerun that shard, then merge again."
            )
        # Images were replaced, deleted or (with --keep-going) have appeared since: redo the chunk.
        metrics = plan.shard("metrics", adapter, ci)
        metrics.unlink(missing_ok=True)
        metrics.with_suffix(".failures.parquet").unlink(missing_ok=True)
    spec = adapter.spec
    sample_dir = plan.out / rundir.SAMPLES_DIR / safe_name(spec.name)
    requests = [
        SampleRequest(
            case=case,
            sample=s,
            seed=derive_seed(plan.config.study.seed, adapter.seed_name(), case.case_id, s),
            dest=sample_dir / f"{safe_name(case.case_id)}_s{s}.png",
        )
        for case in chunk
        for s in range(adapter.samples_per_case())
    ]
    journal = _Journal(shard.with_suffix(".journal")) if adapter.generates else None
    rows: dict[tuple[str, int], dict] = {}
    pending = []
    for req in requests:
        done = journal.get(req) if journal is not None else None
        if done is not None:
            rows[(req.case.case_id, req.sample)] = done
        else:
            pending.append(req)
    step = max(1, adapter.batch_size())
    for start in range(0, len(pending), step):
        batch = pending[start : start + step]
        t = time.perf_counter()
        try:
            results = adapter.produce(batch, refs)
        except (images.ImageReadError, ModelLoadError) as exc:
            if not plan.options.keep_going:
                raise RunError(f"model {spec.name}: {exc}") from None
            results = [SampleFailure(str(exc))] * len(batch)
        seconds = (time.perf_counter() - t) / len(batch)
        for req, res in zip(batch, results, strict=True):
            row = _sample_row(spec, req, res)
            if adapter.loads_model and not isinstance(res, SampleFailure):
                row.update(adapter.sample_info(req), seconds=seconds)
            rows[(req.case.case_id, req.sample)] = row
            if journal is not None:
                journal.put(req, row)
    frame = pd.DataFrame(
        [rows[(r.case.case_id, r.sample)] for r in requests], columns=SAMPLE_SHARD_SCHEMA.names
    )
    _write_parquet(pa.Table.from_pandas(frame, schema=SAMPLE_SHARD_SCHEMA, preserve_index=False), shard)
    if journal is not None:
        journal.clear()
    return frame


def _sample_row(spec, req: SampleRequest, res: Path | SampleFailure) -> dict:  # type: ignore[no-untyped-def]
    row = dict.fromkeys(SAMPLE_SHARD_SCHEMA.names)
    row.update(model=spec.name, case_id=req.case.case_id, sample=req.sample, seed=req.seed, kind=spec.kind)
    if isinstance(res, SampleFailure):
        row["error"] = res.reason
    else:
        path = Path(res).resolve()
        st = path.stat()
        row.update(path=str(path), sha256=sha256_file(path), size=st.st_size, mtime_ns=st.st_mtime_ns)
    return row


class _Journal:
    """Finished samples of a chunk that is still being generated, one small JSON file per sample.

    Generation is the expensive step, so a killed run must not redo finished samples: each is
    recorded as soon as its batch is done (atomic write) and reused on resume when its file still
    has the recorded sha256 (a half-written image never gets a record, as PNGs are renamed into
    place). The chunk's samples shard replaces the journal once the chunk is complete.
    """

    def __init__(self, dir: Path) -> None:
        self.dir = dir

    def _file(self, req: SampleRequest) -> Path:
        return self.dir / f"{safe_name(req.case.case_id)}_s{req.sample}.json"

    def get(self, req: SampleRequest) -> dict | None:
        try:
            row = json.loads(self._file(req).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if row.get("case_id") != req.case.case_id or row.get("seed") != req.seed:
            return None
        if row.get("error") is None:
            try:
                if sha256_file(row["path"]) != row["sha256"]:
                    return None
            except (OSError, KeyError, TypeError):
                return None
            st = os.stat(row["path"])
            row.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        return row

    def put(self, req: SampleRequest, row: dict) -> None:
        write_text(self._file(req), json.dumps(row, default=_json_default))

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot record {value!r} in the generation journal")


def _samples_unchanged(frame: pd.DataFrame, keep_failures: bool = False) -> bool:
    """True when every recorded sample file is still the one that was recorded.

    A stat per file; the content is re-hashed only when size or mtime moved, so a rerun over a
    large folder stays cheap while a regenerated image is never scored with stale metrics. Failed
    samples make the chunk stale (a missing file may have appeared since) unless ``keep_failures``:
    a generator's failure is a deterministic function of its seed, so it is kept, not regenerated.
    """
    failed = frame["error"].notna()
    if failed.any() and not keep_failures:
        return False
    ok = frame[~failed]
    for path, sha, size, mtime in zip(ok["path"], ok["sha256"], ok["size"], ok["mtime_ns"], strict=True):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        if (st.st_size, st.st_mtime_ns) != (size, mtime) and sha256_file(path) != sha:
            return False
    return True


def _ensure_metrics(
    plan: _Plan,
    adapter: ModelAdapter,
    ci: int,
    chunk: Sequence[Case],
    samples: pd.DataFrame,
    refs: _References,
) -> None:
    shard = plan.shard("metrics", adapter, ci)
    if shard.exists():
        return
    m = plan.config.metrics
    evaluation = plan.evaluation
    pixel = m.pixel if not adapter.self_reference else ()
    if pixel:
        from audit.metrics.pixel import score_pixels  # imports torch: only when pixel metrics are asked for
    by_id = {c.case_id: c for c in chunk}
    pairs: list[tuple[dict, np.ndarray, np.ndarray]] = []
    failures: list[dict] = []

    failed: set[tuple[str, int]] = set()

    def fail(row: dict, msg: str) -> None:
        failed.add((row["case_id"], row["sample"]))
        if not plan.options.keep_going:
            raise RunError(
                f"model {adapter.spec.name}, case {row['case_id']}, sample {row['sample']}: {msg}\n"
                "Rerun with --keep-going to record such failures in failures.csv and score the rest."
            )
        failures.append(
            {
                "model": row["model"],
                "case_id": row["case_id"],
                "sample": row["sample"],
                "stage": "score",
                "error": msg,
            }
        )

    rows_ok: list[dict] = []
    for row in samples.to_dict(orient="records"):
        if isinstance(row["error"], str):
            continue  # recorded as a generation failure already
        rows_ok.append(row)
        if not pixel:
            continue
        path = Path(row["path"])
        # No re-hash here: a fresh sample was hashed when produced, a resumed one by _samples_unchanged.
        try:
            gen = images.read_image(path).pixels
            ref = refs(by_id[row["case_id"]]).pixels
        except (images.ImageReadError, FileNotFoundError) as exc:
            fail(row, str(exc))
            continue
        if gen.shape != ref.shape:
            if m.resize != "to_reference":
                fail(
                    row,
                    f"size mismatch: sample {path} is {gen.shape[0]}×{gen.shape[1]} px, reference is "
                    f'{ref.shape[0]}×{ref.shape[1]} px; set resize = "to_reference" in [metrics] to resize samples',
                )
                continue
            gen = resize_to(gen, ref.shape)
        pairs.append((row, gen, ref))

    frames = []
    for shape in sorted({p[1].shape for p in pairs}):
        group = [p for p in pairs if p[1].shape == shape]
        step = max(1, BATCH_PIXELS // (shape[0] * shape[1]))
        for i in range(0, len(group), step):
            batch = group[i : i + step]
            try:
                values = score_pixels(
                    np.stack([b[1] for b in batch]),
                    np.stack([b[2] for b in batch]),
                    pixel,
                    pixel_range=m.pixel_range,
                    overlap_threshold=m.overlap_threshold,
                )
            except ValueError as exc:
                for b in batch:
                    fail(b[0], str(exc))
                continue
            ids = pd.DataFrame(
                [
                    {"model": b[0]["model"], "case_id": b[0]["case_id"], "sample": b[0]["sample"]}
                    for b in batch
                ]
            )
            for name in pixel:
                frames.append(ids.assign(metric=name, value=np.asarray(values[name], dtype=np.float64)))
    rows_ok = [r for r in rows_ok if (r["case_id"], r["sample"]) not in failed]
    if evaluation is not None and rows_ok:
        frames += _evaluate_chunk(plan, evaluation, adapter, rows_ok, by_id, refs, fail)
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(
            {c: pd.Series(dtype="float64" if c == "value" else "object") for c in METRIC_SHARD_SCHEMA.names}
        )
    )
    if failures:
        fail_frame = pd.DataFrame(failures, columns=list(rundir.FAILURES_COLUMNS))
        _write_parquet(
            pa.Table.from_pandas(fail_frame, schema=FAILURE_SCHEMA, preserve_index=False),
            shard.with_suffix(".failures.parquet"),
        )
    # The metrics shard is written last: its presence marks the chunk complete.
    _write_parquet(pa.Table.from_pandas(frame, schema=METRIC_SHARD_SCHEMA, preserve_index=False), shard)


def _evaluate_chunk(
    plan: _Plan,
    evaluation: Evaluation,
    adapter: ModelAdapter,
    rows: list[dict],
    by_id: dict[str, Case],
    refs: _References,
    fail: Callable[[dict, str], None],
) -> list[pd.DataFrame]:
    """Run the chunk's images through the evaluators (filling the feature cache) and score Dice.

    Classifier and FID features are only cached here; their metrics need every sample and are
    computed when the run aggregates.
    """
    from audit.evaluation import dice_rows

    gen_items = [(row["sha256"], (lambda p=row["path"]: images.read_image(p).pixels)) for row in rows]
    ref_items = [refs.item(by_id[row["case_id"]]) for row in rows]
    try:
        # Only fill the cache here (existence checks, no decoding): these outputs are read once, when
        # the run aggregates. References are shared by every model of the chunk, so this is cheap after
        # the first model.
        for role in ("classifier", "features", "raddino"):
            if role in evaluation.plans:
                evaluation.ensure(role, gen_items)
                evaluation.ensure(role, ref_items)
        if not evaluation.wants("dice"):
            return []
        masks = [by_id[row["case_id"]].path("anatomy_mask") for row in rows]
        return dice_rows(
            evaluation, rows, gen_items, ref_items, masks, against_reference=not adapter.self_reference
        )
    except (images.ImageReadError, FileNotFoundError, EvaluationError) as exc:
        # Decoding is lazy, so an unreadable file surfaces here; the chunk's pixel rows stand.
        for row in rows:
            fail(row, f"evaluators: {exc}")
        return []


def resize_to(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with antialiasing (the `to_reference` policy), float32 in [0,1]."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        x = torch.from_numpy(np.array(pixels, dtype=np.float32))[None, None]  # a writable copy
        y = F.interpolate(x, size=tuple(shape), mode="bilinear", antialias=True, align_corners=False)
        return y[0, 0].clamp_(0.0, 1.0).numpy().copy()


def _aggregate(
    plan: _Plan, adapters: Sequence[ModelAdapter], n_cases: int
) -> tuple[int, pd.DataFrame, dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]]:
    """Stream the shards into samples.parquet and per_sample.parquet, one shard in memory at a time.

    Returns the sample count, the failures, and per (model, metric) the per-case values (the mean
    over a case's samples) that the summary needs: one float per case, so memory stays small.
    """
    n_chunks = (n_cases + plan.options.chunk_size - 1) // plan.options.chunk_size
    sample_cols = [*rundir.SAMPLES_COLUMNS, "kind", *rundir.GENERATION_COLUMNS]
    failure_frames: list[pd.DataFrame] = []
    per_case: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    n_samples = 0
    with (
        atomic_path(plan.out / rundir.SAMPLES) as samples_tmp,
        atomic_path(plan.out / rundir.PER_SAMPLE) as metrics_tmp,
        pq.ParquetWriter(samples_tmp, pa.schema([SAMPLE_SHARD_SCHEMA.field(c) for c in sample_cols])) as sw,
        pq.ParquetWriter(metrics_tmp, METRIC_SHARD_SCHEMA) as mw,
    ):
        for adapter in adapters:
            for ci in range(n_chunks):
                s = pq.read_table(plan.shard("samples", adapter, ci)).to_pandas()
                failed = s["error"].notna()
                if failed.any():
                    failure_frames.append(s[failed].assign(stage="generate")[list(rundir.FAILURES_COLUMNS)])
                ok = pa.Table.from_pandas(s[~failed][sample_cols], preserve_index=False)
                sw.write_table(ok.cast(sw.schema))
                n_samples += ok.num_rows
                shard = plan.shard("metrics", adapter, ci)
                metrics = pq.read_table(shard)
                mw.write_table(metrics)
                fshard = shard.with_suffix(".failures.parquet")
                if fshard.exists():
                    failure_frames.append(pq.read_table(fshard).to_pandas())
                # A chunk holds every sample of its cases, so per-case means are complete per shard.
                frame = metrics.to_pandas()
                means = frame.groupby(["metric", "case_id"], sort=False)["value"].mean().reset_index()
                for metric, grp in means.groupby("metric", sort=False):
                    per_case.setdefault((adapter.spec.name, metric), []).append(
                        (grp["case_id"].to_numpy(str), grp["value"].to_numpy(np.float64))
                    )
    failures = (
        pd.concat(failure_frames, ignore_index=True)
        if failure_frames
        else pd.DataFrame(columns=list(rundir.FAILURES_COLUMNS))
    )
    return (
        n_samples,
        failures,
        {
            k: (np.concatenate([ids for ids, _ in v]), np.concatenate([vals for _, vals in v]))
            for k, v in per_case.items()
        },
    )


def summarise(
    per_case: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    config: StudyConfig,
    cases: pd.DataFrame | None = None,
    distribution_rows: Sequence[dict] = (),
    evaluation: Evaluation | None = None,
) -> pd.DataFrame:
    """One row per (model, metric, group): mean over cases with a percentile-bootstrap CI over cases.

    Samples of one case are not independent, so they were averaged per case before resampling cases.
    ``per_case`` maps (model, metric) to (case ids, per-case values). Rows over all cases have
    group ""; with ``[metrics].group_by`` each column value adds rows with group "column=value".
    Distribution metrics arrive as finished rows (their CIs need the whole set, see audit.evaluation).
    """
    from audit.evaluation import groups_of
    from audit.registry import metric_info

    m = config.metrics
    groups: list[tuple[str, np.ndarray]] = (
        groups_of(cases, m.group_by) if cases is not None else [(ALL_CASES, np.array([], dtype=str))]
    )
    evaluators = _metric_evaluators(evaluation) if evaluation is not None else {}
    rows = []
    for (model, metric), (case_ids, all_values) in per_case.items():
        for group, members in groups:
            values = all_values if group == ALL_CASES else all_values[np.isin(case_ids, members)]
            values = values[~np.isnan(values)]
            seed_key = f"bootstrap:{metric}" if group == ALL_CASES else f"bootstrap:{metric}:{group}"
            rng = np.random.default_rng(derive_seed(config.study.seed, model, seed_key, 0))
            lo, hi = bootstrap_mean_ci(values, rng, m.bootstrap_resamples, m.confidence)
            rows.append(
                {
                    "model": model,
                    "metric": metric,
                    "value": float(values.mean()) if values.size else float("nan"),
                    "ci_low": lo,
                    "ci_high": hi,
                    "n": int(values.size),
                    "group": group,
                    "evaluator": evaluators.get(metric, ""),
                }
            )
    rows += list(distribution_rows)
    columns = [*rundir.SUMMARY_COLUMNS, "unit", "group", "evaluator"]
    for row in rows:
        info = metric_info(row["metric"], m.pixel_range)
        row["higher_is_better"] = info.higher_is_better
        row["unit"] = info.unit
    frame = pd.DataFrame(rows, columns=columns)
    if len(frame):
        model_order = {spec.name: i for i, spec in enumerate(config.models)}
        metric_order = {name: i for i, name in enumerate(_metric_order(config))}
        group_order = {g: i for i, (g, _) in enumerate(groups)}
        frame["_m"] = frame["model"].map(model_order)
        frame["_g"] = frame["group"].map(group_order)
        frame["_k"] = [
            (metric_order.get(name.split(":", 1)[0], len(metric_order)), name) for name in frame["metric"]
        ]
        frame = frame.sort_values(by=["_g", "_m", "_k"], kind="stable").drop(columns=["_m", "_g", "_k"])
        frame = frame.reset_index(drop=True)
    return frame


def _metric_order(config: StudyConfig) -> list[str]:
    names = list(config.metrics.pixel)
    for entry in (*config.metrics.clinical, *config.metrics.distribution):
        names += entry_metrics(entry)
    return names


def _distribution(
    plan: _Plan, adapters: Sequence[ModelAdapter], manifest: Manifest, options: RunOptions
) -> tuple[list[dict], dict]:
    """Distribution metrics from the cached evaluator outputs of every sample (see audit.evaluation)."""
    from tqdm.auto import tqdm

    from audit.evaluation import distribution_metrics

    evaluation = plan.evaluation
    assert evaluation is not None
    n_chunks = (len(manifest) + plan.options.chunk_size - 1) // plan.options.chunk_size
    ref_shas: dict[str, str] = {}
    for ci in range(n_chunks):
        frame = pq.read_table(plan.ref_shard(ci)).to_pandas()
        ref_shas.update(zip(frame["case_id"], frame["sha256"], strict=True))
    samples = pd.read_parquet(
        plan.out / rundir.SAMPLES, columns=["model", "case_id", "sample", "path", "sha256"]
    )
    models = [(a.spec.name, a.self_reference) for a in adapters]
    seed = plan.config.study.seed
    # Normally every output is cached by the chunk loop; this bar only moves if the cache was cleared.
    with tqdm(
        desc="evaluating (cache misses)", unit="image", disable=not options.progress, leave=False
    ) as bar:
        evaluation.progress = bar.update
        try:
            return distribution_metrics(
                evaluation,
                manifest.frame,
                ref_shas,
                samples,
                models,
                lambda model, key: derive_seed(seed, model, key, 0),
            )
        finally:
            evaluation.progress = None


def _prune_stale_parts(plan: _Plan, adapters: Sequence[ModelAdapter]) -> None:
    """Drop shards of earlier configs so parts/ reflects exactly this run."""
    keep = {plan.part_dir(stage, a) for a in adapters for stage in ("samples", "metrics")}
    keep.add(plan.ref_shard(0).parent)
    for stage in ("samples", "metrics", "references"):
        root = plan.out / rundir.PARTS_DIR / stage
        if root.is_dir():
            for d in root.iterdir():
                if d not in keep:
                    shutil.rmtree(d, ignore_errors=True)


def _remove_orphan_temps(out: Path, started: dt.datetime) -> None:
    """Delete temp files a killed earlier run left behind (never ones younger than this run)."""
    cutoff = started.timestamp()
    for tmp in out.rglob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def _write_parquet(table: pa.Table, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "xray-audit",
        "torch",
        "torchmetrics",
        "numpy",
        "scipy",
        "pandas",
        "pyarrow",
        "pillow",
        "pydicom",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
