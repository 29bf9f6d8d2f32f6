"""Aggregation of a run: the shards streamed into samples.parquet and per_sample.parquet, the
distribution metrics over every sample, and summary.csv's rows (means with bootstrap CIs over cases)
in the config's model and metric order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from audit import rundir
from audit.atomic import atomic_path
from audit.cases import Manifest
from audit.config import StudyConfig
from audit.evaluation import ALL_CASES, Evaluation, entry_metrics
from audit.metrics import catalogue
from audit.models.base import ModelAdapter, derive_seed
from audit.run_plan import METRIC_SHARD_SCHEMA, SAMPLE_SHARD_SCHEMA, Plan, RunOptions
from audit.stats import bootstrap_mean_ci, bootstrap_median_ci


def aggregate(
    plan: Plan, adapters: Sequence[ModelAdapter], n_cases: int
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


def append_per_sample(
    out: Path, rows: pd.DataFrame, per_case: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
) -> None:
    """Add a later stage's per-sample rows (the privacy stage's) to per_sample.parquet and to the
    per-case values the summary aggregates, exactly as :func:`aggregate` does for the shards' rows."""
    path = out / rundir.PER_SAMPLE
    table = pa.Table.from_pandas(
        rows[list(rundir.PER_SAMPLE_COLUMNS)], schema=METRIC_SHARD_SCHEMA, preserve_index=False
    )
    source = pq.ParquetFile(path)
    try:
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, METRIC_SHARD_SCHEMA) as writer:
            # Row group by row group: the existing rows never sit in memory at once.
            for i in range(source.num_row_groups):
                writer.write_table(source.read_row_group(i).cast(METRIC_SHARD_SCHEMA))
            writer.write_table(table)
    finally:
        source.close()
    frame = rows.assign(case_id=rows["case_id"].astype(str))
    means = frame.groupby(["model", "metric", "case_id"], sort=False)["value"].mean().reset_index()
    for (model, metric), grp in means.groupby(["model", "metric"], sort=False):
        per_case[(str(model), str(metric))] = (
            grp["case_id"].to_numpy(str),
            grp["value"].to_numpy(np.float64),
        )


def summarise(
    per_case: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    config: StudyConfig,
    cases: pd.DataFrame | None = None,
    distribution_rows: Sequence[dict] = (),
    evaluation: Evaluation | None = None,
    evaluators: Mapping[str, str] | None = None,
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
    # What computes each metric: the scoring networks, and ``evaluators`` for the other stages' metrics.
    evaluators = {**(metric_evaluators(evaluation) if evaluation is not None else {}), **(evaluators or {})}
    rows = []
    # A stage may hand over a per-sample metric's finished row when its interval needs more than the
    # per-case values (memorised_fraction: thresholds recalibrated in every replicate): that row wins.
    finished = {(r["model"], r["metric"], r["group"]) for r in distribution_rows}
    for (model, metric), (case_ids, all_values) in per_case.items():
        for group, members in groups:
            if (model, metric, group) in finished:
                continue
            values = all_values if group == ALL_CASES else all_values[np.isin(case_ids, members)]
            values = values[~np.isnan(values)]
            seed_key = f"bootstrap:{metric}" if group == ALL_CASES else f"bootstrap:{metric}:{group}"
            rng = np.random.default_rng(derive_seed(config.study.seed, model, seed_key, 0))
            median = catalogue.spec(metric).aggregation == "per_sample_median"
            ci = bootstrap_median_ci if median else bootstrap_mean_ci
            lo, hi = ci(values, rng, m.bootstrap_resamples, m.confidence)
            centre = np.median if median else np.mean
            rows.append(
                {
                    "model": model,
                    "metric": metric,
                    "value": float(centre(values)) if values.size else float("nan"),
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
    if config.privacy is not None:
        names += catalogue.names(family="privacy")
    return names


def compute_distribution(
    plan: Plan, adapters: Sequence[ModelAdapter], manifest: Manifest, options: RunOptions
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


def metric_evaluators(evaluation: Evaluation) -> dict[str, str]:
    """The network that computes each metric (summary.csv's and run.json's "evaluator")."""
    from audit.evaluators.suite import ENTRY_ROLE

    out = {}
    for entry in (*evaluation.config.metrics.clinical, *evaluation.config.metrics.distribution):
        role = ENTRY_ROLE[entry]
        if entry in evaluation.unavailable or role not in evaluation.plans:
            continue
        for metric in entry_metrics(entry):
            out[metric] = evaluation.plans[role].name
    return out
