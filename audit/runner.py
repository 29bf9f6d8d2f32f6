"""`xray-audit run`: cases → samples → paired metrics → run directory.

Work is split into chunks of cases. For every (model, chunk) the run writes a samples shard and
a metrics shard atomically under ``parts/`` (see audit.run_plan), keyed by a hash of everything that
determines their content. A rerun skips every shard that exists, so killing the process at any point
and rerunning gives the same files as one clean run, and adding a model computes only that model.

Chunks are the outer loop so each reference image is decoded once per run and shared by every
model, and memory stays bounded by one chunk whatever the cohort size. This module orchestrates the
steps: producing samples (audit.samples), scoring them (audit.scoring), aggregating (audit.summary)
and the shards' bookkeeping (audit.shards); the report is the command line's to write.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from audit import __version__, rundir
from audit.atomic import atomic_path, sha256_file, write_text
from audit.cases import Case, Manifest, load_manifest
from audit.config import StudyConfig, dump_toml
from audit.evaluation import entry_metrics
from audit.hashing import stable_hash
from audit.models.base import ModelAdapter
from audit.privacy import PrivacyPlan, PrivacyResult, prepare_privacy, privacy_work, run_privacy
from audit.registry import build_adapter
from audit.run_plan import Plan, RunError, RunOptions, write_parquet
from audit.samples import References, ensure_references, ensure_samples, preflight
from audit.scoring import ensure_metrics, prepare_evaluation, warn_if_slow_on_cpu
from audit.shards import (
    check_complete,
    fingerprint_files,
    gather_shards,
    prune_stale_parts,
    record_shard,
    remove_orphan_temps,
)
from audit.summary import aggregate, append_per_sample, compute_distribution, metric_evaluators, summarise

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunResult:
    path: Path
    n_samples: int
    n_failures: int


_DEFAULT_OPTIONS = RunOptions()


def run_study(config: StudyConfig, options: RunOptions = _DEFAULT_OPTIONS) -> RunResult:
    started = dt.datetime.now(dt.UTC)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    out = config.study.output
    out.mkdir(parents=True, exist_ok=True)

    manifest = load_manifest(config.study.cases, check_pixels=False)
    cases = manifest.cases()
    cases_hash = stable_hash(
        {"manifest": manifest.frame.astype(str).to_dict(orient="list"), "files": fingerprint_files(manifest)}
    )
    write_text(out / rundir.CONFIG_TOML, dump_toml(config))
    write_parquet(pa.Table.from_pandas(manifest.frame, preserve_index=False), out / rundir.CASES)
    timings["load_cases_s"] = time.perf_counter() - t

    adapters = [build_adapter(spec, config.study) for spec in config.models]
    evaluation = prepare_evaluation(config, cases, list(manifest.frame.columns), options)
    if not options.keep_going:
        preflight(adapters, cases)
    plan = Plan(config, options, out, cases_hash, evaluation)
    # Before any generation, so a bad annotation file or detector fails in seconds, not hours.
    norberg = _prepare_norberg(config, manifest) if options.shard is None else None
    # Likewise the training manifest, its overlap with the references and the re-ID file's hash;
    # the privacy stage itself runs only where the run aggregates (never in a --shard process).
    privacy = prepare_privacy(config, manifest, out) if options.shard is None else None
    if (evaluation is not None or privacy is not None) and not options.require_complete:
        extra = (
            []
            if privacy is None
            else [privacy_work(privacy, config, _privacy_queries(privacy, plan, adapters, cases))]
        )
        warn_if_slow_on_cpu(plan, adapters, cases, extra)

    t = time.perf_counter()
    if options.require_complete:
        check_complete(plan, adapters, cases)
    _process(plan, adapters, cases, options)
    timings["samples_and_metrics_s"] = time.perf_counter() - t
    if options.shard is not None:
        n_samples, n_failures = record_shard(plan, adapters, cases, timings)
        return RunResult(path=out, n_samples=n_samples, n_failures=n_failures)

    t = time.perf_counter()
    n_samples, failures, per_case = aggregate(plan, adapters, len(cases))
    timings["aggregate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    distribution_rows: list[dict] = []
    evaluation_info: dict = {}
    if evaluation is not None:
        distribution_rows, evaluation_info = compute_distribution(plan, adapters, manifest, options)
        timings["distribution_metrics_s"] = time.perf_counter() - t
    norberg_info: dict = {}
    if norberg is not None:
        t = time.perf_counter()
        norberg_rows, norberg_info = _measure_norberg(plan, norberg, options)
        distribution_rows = [*distribution_rows, *norberg_rows]
        timings["norberg_s"] = time.perf_counter() - t
    privacy_info: dict = {}
    stage_evaluators: dict[str, str] = {}
    if privacy is not None:
        t = time.perf_counter()
        result = _audit_privacy(privacy, plan, adapters, manifest, options)
        append_per_sample(out, result.per_sample, per_case)
        distribution_rows = [*distribution_rows, *result.summary_rows]
        privacy_info = result.info
        stage_evaluators |= result.evaluators
        timings["privacy_s"] = time.perf_counter() - t
    else:
        # An earlier run into this directory with [privacy]: its files describe another configuration
        # (and may name training images the report must no longer show).
        for name in (rundir.PRIVACY, rundir.PRIVACY_TRAINING):
            (out / name).unlink(missing_ok=True)
    t = time.perf_counter()
    failures_path = out / rundir.FAILURES
    if len(failures):
        with atomic_path(failures_path) as tmp:
            failures.to_csv(tmp, index=False)
    else:
        failures_path.unlink(missing_ok=True)
    summary = summarise(per_case, config, manifest.frame, distribution_rows, evaluation, stage_evaluators)
    with atomic_path(out / rundir.SUMMARY) as tmp:
        summary.to_csv(tmp, index=False)
    prune_stale_parts(plan, adapters)
    remove_orphan_temps(out, started)
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
        "versions": collect_versions(),
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
    if privacy_info:
        run_info["privacy"] = privacy_info
    generation = _generation_info(plan, adapters, len(cases))
    if generation:
        run_info["generation"] = generation
    if evaluation is not None:
        run_info["evaluation"] = {
            "evaluators": evaluation.describe(),
            "metric_evaluators": metric_evaluators(evaluation),
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
    write_text(out / rundir.RUN_JSON, json.dumps(run_info, indent=2) + "\n")
    return RunResult(path=out, n_samples=n_samples, n_failures=len(failures))


def merge_runs(run_dirs: Sequence[Path], options: RunOptions, out: Path | None = None) -> RunResult:
    """Finish a run whose work was split with ``--shard i/n``: gather the shards' parts (see
    audit.shards), then aggregate them; nothing is generated or scored again."""
    config = gather_shards(run_dirs, out)
    return run_study(config, dataclasses.replace(options, shard=None, require_complete=True))


def record_timing(run_dir: Path, name: str, seconds: float) -> None:
    """Add a step that ran after the run (the report) to run.json's timings."""
    path = run_dir / rundir.RUN_JSON
    run_info = json.loads(path.read_text(encoding="utf-8"))
    run_info["timings"][name] = round(seconds, 3)
    write_text(path, json.dumps(run_info, indent=2) + "\n")


def _process(
    plan: Plan, adapters: Sequence[ModelAdapter], cases: Sequence[Case], options: RunOptions
) -> None:
    """Produce and score this process's chunks, writing each (model, chunk)'s shards."""
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
                    ensure_samples(plan, adapter, ci, chunk, References())
                    bar.update(len(chunk) * adapter.samples_per_case())
            finally:
                adapter.release()
    total = sum(len(chunks[ci]) * a.samples_per_case() for a in adapters for ci in mine)
    with tqdm(total=total, desc="auditing", unit="sample", disable=not options.progress) as bar:
        for ci, chunk in enumerate(chunks):
            if ci not in mine:
                continue
            refs = References(ensure_references(plan, ci, chunk) if plan.evaluation else None)
            if plan.evaluation is not None:
                plan.evaluation.new_chunk()
            for adapter in adapters:
                bar.set_postfix_str(adapter.spec.name, refresh=False)
                samples = ensure_samples(plan, adapter, ci, chunk, refs)
                ensure_metrics(plan, adapter, ci, chunk, samples, refs)
                bar.update(len(chunk) * adapter.samples_per_case())


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


def _measure_norberg(plan: Plan, norberg: _NorbergPlan, options: RunOptions) -> tuple[list[dict], dict]:
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


def _privacy_queries(
    privacy: PrivacyPlan, plan: Plan, adapters: Sequence[ModelAdapter], cases: Sequence[Case]
) -> int:
    """Images the privacy embedding evaluates beyond the training set, at most: none when a scoring
    network is the same one (scoring caches them first), else every reference and sample."""
    if plan.evaluation is not None and privacy.features.key in {
        p.key for p in plan.evaluation.plans.values()
    }:
        return 0
    return len(cases) * (1 + sum(a.samples_per_case() for a in adapters if not a.self_reference))


def _audit_privacy(
    privacy: PrivacyPlan,
    plan: Plan,
    adapters: Sequence[ModelAdapter],
    manifest: Manifest,
    options: RunOptions,
) -> PrivacyResult:
    """The privacy stage over every sample of samples.parquet (see audit.privacy)."""
    samples = pd.read_parquet(
        plan.out / rundir.SAMPLES, columns=["model", "case_id", "sample", "path", "sha256"]
    )
    self_reference = [a.spec.name for a in adapters if a.self_reference]
    return run_privacy(
        privacy, plan.config, samples, self_reference, manifest.frame, progress=options.progress
    )


def _generation_info(plan: Plan, adapters: Sequence[ModelAdapter], n_cases: int) -> dict[str, dict]:
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


def collect_versions() -> dict[str, str]:
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
