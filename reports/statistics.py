"""The model-vs-model statistics of a run, computed once for every output (paired_tests.csv, the
note of comparison.md, report.html).

- :func:`paired_tests`: Wilcoxon signed-rank tests (Pratt zeros) of every pair of models other than
  ``real`` on their shared cases, with Holm-adjusted p-values and bootstrap CIs of the mean difference
  and the rank-biserial correlation.
- :func:`run_paired_tests`: those tests with the run's settings (:class:`audit.rundir.RunSettings`:
  ``[study].seed``, ``[metrics].bootstrap_resamples`` and ``confidence``), metrics with non-finite
  per-sample values (an identical image's +∞ PSNR, :func:`reports.run.nonfinite_metrics`) left out
  and named in :attr:`PairedTests.skipped`; :func:`skipped_note` says so in one sentence.
- :func:`read_paired_tests`: paired_tests.csv back as the frame :func:`paired_tests` returned.
- What the tests and the comparison tables (:mod:`reports.comparison`) share: the order of the
  compared models (:func:`comparison_models`) and the per-case values (:func:`per_case_means`).

Torch-free.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.functional.paired import holm, paired_effect, wilcoxon_pratt
from reports.provenance import MARK_COLUMNS, mark_fields, metric_mark
from reports.run import (
    METRIC_LABELS,
    MetricColumn,
    ModelRow,
    RunFiles,
    as_bool,
    metric_columns,
    nonfinite_metrics,
    order_models,
)

log = logging.getLogger(__name__)

PAIRED_COLUMNS = [
    "metric",
    "label",
    "higher_is_better",
    "model_a",
    "model_b",
    "n",
    "n_zero",
    "mean_a",
    "mean_b",
    "mean_difference",
    "mean_difference_ci_low",
    "mean_difference_ci_high",
    "rank_biserial",
    "rank_biserial_ci_low",
    "rank_biserial_ci_high",
    "statistic",
    "pvalue",
    "pvalue_holm",
    "better",
    *MARK_COLUMNS,
]


def comparison_models(run: RunFiles) -> list[ModelRow]:
    """:func:`reports.run.order_models`, generators grouped by kind (first appearance order), so
    e.g. two diffusers models stay together even when the config interleaves them; real stays last."""
    models = order_models(run)
    generators = [m for m in models if not m.is_real and not m.is_baseline]
    kinds = list(dict.fromkeys(m.kind for m in generators))
    generators.sort(key=lambda m: kinds.index(m.kind))  # stable: config order within a kind
    return generators + [m for m in models if m.is_baseline] + [m for m in models if m.is_real]


def per_case_means(run: RunFiles) -> pd.DataFrame:
    """model, case_id, metric, value: samples of a case averaged first (they are not independent)."""
    ps = run.per_sample.dropna(subset=["value"])
    return ps.groupby(["model", "metric", "case_id"], as_index=False, sort=False)["value"].mean()


def paired_tests(
    run: RunFiles,
    metrics: Sequence[str] | None = None,
    *,
    rng: np.random.Generator,
    resamples: int = 2000,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Wilcoxon signed-rank (Pratt zeros) of model_a - model_b for every per-sample metric and every
    pair of models other than ``real``, on the cases both have (samples averaged per case first).

    ``pvalue_holm`` is Holm-adjusted across every comparison in the returned frame. The mean difference
    and the rank-biserial correlation carry percentile-bootstrap CIs over cases (:func:`paired_effect`).
    ``better`` is the model the signed ranks favour (sign of the rank-biserial, read with the metric's
    direction), whatever the p-value; "" when they favour neither or the direction is unknown. A pair
    with no shared case is kept with n = 0 and NaN statistics (not counted by Holm).
    """
    per_case = per_case_means(run)
    available = list(dict.fromkeys(per_case["metric"]))
    if metrics is None:
        metrics = available
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ValueError(
            f"paired_tests: no per-sample values for metric(s) {', '.join(unknown)} in "
            f"{run.run_dir / 'per_sample.parquet'}; available: {', '.join(available) or 'none'}"
        )
    columns = {m.name: m for m in metric_columns(run, run.settings.pixel_range)}
    models = [m.name for m in comparison_models(run) if not m.is_real]
    rows = []
    for metric in metrics:
        column = columns.get(metric, MetricColumn(metric, None, ""))
        mark = mark_fields(metric_mark(run.info, metric, column.evaluator))
        values = per_case[per_case["metric"] == metric].pivot(
            index="case_id", columns="model", values="value"
        )
        # One array per metric: selecting two columns of the frame and dropping NaN rows per pair
        # cost as much as the pair's statistics.
        table = values.to_numpy(dtype=np.float64)
        column_of = {name: j for j, name in enumerate(values.columns)}
        for a, b in itertools.combinations(models, 2):
            row: dict[str, Any] = {
                "metric": metric,
                "label": column.label,
                "higher_is_better": column.higher_is_better,
                "model_a": a,
                "model_b": b,
                "n": 0,
                **mark,
            }
            if a in column_of and b in column_of:
                x, y = table[:, column_of[a]], table[:, column_of[b]]
                shared = ~(np.isnan(x) | np.isnan(y))
                x, y = x[shared], y[shared]
            else:
                x = y = np.empty(0)
            if x.size:
                test = wilcoxon_pratt(x, y)
                effect = paired_effect(x, y, rng, resamples, confidence)
                rbc = float(test["rank_biserial"])
                better = ""
                if column.higher_is_better is not None and math.isfinite(rbc) and rbc != 0:
                    better = a if (rbc > 0) == column.higher_is_better else b
                row.update(
                    n=int(x.size),
                    n_zero=test["n_zero"],
                    mean_a=float(x.mean()),
                    mean_b=float(y.mean()),
                    mean_difference=effect["mean_difference"],
                    mean_difference_ci_low=effect["mean_difference_ci"][0],
                    mean_difference_ci_high=effect["mean_difference_ci"][1],
                    rank_biserial=rbc,
                    rank_biserial_ci_low=effect["rank_biserial_ci"][0],
                    rank_biserial_ci_high=effect["rank_biserial_ci"][1],
                    statistic=test["statistic"],
                    pvalue=test["pvalue"],
                    better=better,
                )
            rows.append(row)
    frame = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    frame["pvalue_holm"] = holm(frame["pvalue"].astype(np.float64).to_numpy()) if len(frame) else []
    frame["better"] = frame["better"].fillna("")
    return frame


@dataclasses.dataclass(frozen=True)
class PairedTests:
    """The model-vs-model tests of a run as every output shows them (paired_tests.csv, the note of
    comparison.md, report.html); made once by :func:`run_paired_tests` and handed to each writer.

    ``frame`` has :data:`PAIRED_COLUMNS` and no row for a metric in ``skipped`` ({metric: why}, from
    :func:`reports.run.nonfinite_metrics`): the CSV keeps its columns, and comparison.md and
    report.html name the metrics left out and why. ``seed`` and ``resamples`` are None for a frame
    given by a caller (e.g. :func:`read_paired_tests` of a paired_tests.csv).
    """

    frame: pd.DataFrame
    skipped: Mapping[str, str]
    confidence: float
    seed: int | None = None
    resamples: int | None = None
    # The generator's state after the tests: write_exports' per-group bootstraps continue from it, as
    # when the tests and those bootstraps drew from one generator (their numbers stay the same).
    rng_state: Mapping[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def given(cls, run: RunFiles, frame: pd.DataFrame) -> PairedTests:
        """A frame computed elsewhere (e.g. read back from paired_tests.csv), with the run's exclusions."""
        return cls(frame, nonfinite_metrics(run), run.settings.confidence)

    @property
    def provenance(self) -> str:
        if self.seed is None:
            return "given by the caller (read from paired_tests.csv)"
        return f"seed {self.seed}, {self.resamples} bootstrap resamples"


def skipped_note(skipped: Mapping[str, str]) -> str:
    """One sentence naming the metrics left out of the model-vs-model tests and why; "" if none."""
    if not skipped:
        return ""
    why = "; ".join(f"{METRIC_LABELS.get(m, m)} ({m}): {reason}" for m, reason in skipped.items())
    return f"Left out of the model-vs-model tests (paired_tests.csv, report.html): {why}."


def run_paired_tests(run: RunFiles, *, seed: int | None = None, resamples: int | None = None) -> PairedTests:
    """:func:`paired_tests` of every per-sample metric with finite values, drawn from a generator seeded
    with ``seed`` (default ``[study].seed``) with ``resamples`` (default
    ``[metrics].bootstrap_resamples``) and the run's ``[metrics].confidence``
    (:class:`audit.rundir.RunSettings`). Metrics with an infinite per-sample value among the compared
    models (:func:`reports.run.nonfinite_metrics`, e.g. the +∞ PSNR of a sample identical to its
    reference) are left out and listed in ``skipped``: a difference of ∞ has no rank or mean."""
    settings = run.settings
    seed = settings.seed if seed is None else int(seed)
    resamples = settings.bootstrap_resamples if resamples is None else int(resamples)
    skipped = nonfinite_metrics(run)
    if skipped:
        log.warning("%s", skipped_note(skipped))
    metrics = [
        m for m in dict.fromkeys(run.per_sample.dropna(subset=["value"])["metric"]) if m not in skipped
    ]
    rng = np.random.default_rng(seed)
    frame = paired_tests(run, metrics, rng=rng, resamples=resamples, confidence=settings.confidence)
    return PairedTests(frame, skipped, settings.confidence, seed, resamples, rng.bit_generator.state)


def read_paired_tests(path: str | Path) -> pd.DataFrame:
    """paired_tests.csv (written by :func:`reports.comparison.write_exports`) back as the frame
    :func:`paired_tests` returned: pandas writes floats exactly, so the page can reuse the file instead
    of recomputing its bootstrap."""
    path = Path(path)
    # Model names such as "NA" or "" stay text: nothing is parsed as missing but the empty numbers.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in MARK_COLUMNS:  # files written before the evaluator columns
        if col not in frame.columns:
            frame[col] = ""
    missing = [c for c in PAIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; rewrite it with `xray-audit report`"
        )
    text = {"metric", "label", "model_a", "model_b", "better", "higher_is_better", *MARK_COLUMNS}
    for col in PAIRED_COLUMNS:
        if col not in text:
            frame[col] = pd.to_numeric(frame[col].replace("", np.nan), errors="raise")
    frame["higher_is_better"] = frame["higher_is_better"].map(as_bool)
    return frame.loc[:, list(PAIRED_COLUMNS)]
