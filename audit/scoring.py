"""Per-sample scoring: preparing the evaluators, estimating their CPU time, and each (model, chunk)'s
metrics shard (paired pixel metrics, evaluator features for the cache, and Dice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from audit import images, rundir
from audit.cases import Case
from audit.config import StudyConfig
from audit.evaluation import Evaluation, EvaluationError, entry_metrics
from audit.evaluators import speed
from audit.feature_cache import FeatureCache
from audit.models.base import ModelAdapter
from audit.run_plan import FAILURE_SCHEMA, METRIC_SHARD_SCHEMA, Plan, RunError, RunOptions, write_parquet
from audit.samples import References

log = logging.getLogger(__name__)

# Pixels per scoring batch: 32 images at 256², 2 at 1024²; bounds peak memory of SSIM's buffers.
BATCH_PIXELS = 1 << 21


def prepare_evaluation(
    config: StudyConfig, cases: Sequence[Case], columns: list[str], options: RunOptions
) -> Evaluation | None:
    """The evaluators the config asks for, or None without clinical or distribution metrics."""
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


def warn_if_slow_on_cpu(
    plan: Plan,
    adapters: Sequence[ModelAdapter],
    cases: Sequence[Case],
    extra: Sequence[speed.NetworkWork] = (),
) -> None:
    """Log a warning, before any work, when the evaluators would take over 30 minutes on CPU.

    ``extra``: network work outside the scoring stage (the privacy audit's training images)."""
    device = plan.config.evaluators.device
    if device.startswith("cuda"):
        return

    def work(cached: bool) -> list[speed.NetworkWork]:
        scoring = _evaluator_work(plan, adapters, cases, cached=cached) if plan.evaluation else []
        return _combine([*scoring, *extra])

    # The upper bound first (arithmetic only); the feature cache is only read for a run that looks slow.
    if speed.cpu_seconds(work(cached=False)) > speed.SLOW_CPU_SECONDS:
        message = speed.slow_cpu_warning(work(cached=True), device, _cuda_available)
        if message:
            log.warning(message)


def _combine(work: Sequence[speed.NetworkWork]) -> list[speed.NetworkWork]:
    """One entry per network: the privacy embedding is often the scoring's feature network too."""
    out: dict[str, speed.NetworkWork] = {}
    for w in work:
        seen = out.get(w.evaluator)
        out[w.evaluator] = (
            w
            if seen is None
            else speed.NetworkWork(w.evaluator, seen.images + w.images, seen.upper_bound or w.upper_bound)
        )
    return list(out.values())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _evaluator_work(
    plan: Plan, adapters: Sequence[ModelAdapter], cases: Sequence[Case], *, cached: bool
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


def ensure_metrics(
    plan: Plan,
    adapter: ModelAdapter,
    ci: int,
    chunk: Sequence[Case],
    samples: pd.DataFrame,
    refs: References,
) -> None:
    """Score the chunk's samples of one model into its metrics shard, unless that shard exists."""
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
            gen = images.resize_to(gen, ref.shape)
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
        write_parquet(
            pa.Table.from_pandas(fail_frame, schema=FAILURE_SCHEMA, preserve_index=False),
            shard.with_suffix(".failures.parquet"),
        )
    # The metrics shard is written last: its presence marks the chunk complete.
    write_parquet(pa.Table.from_pandas(frame, schema=METRIC_SHARD_SCHEMA, preserve_index=False), shard)


def _evaluate_chunk(
    plan: Plan,
    evaluation: Evaluation,
    adapter: ModelAdapter,
    rows: list[dict],
    by_id: dict[str, Case],
    refs: References,
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
