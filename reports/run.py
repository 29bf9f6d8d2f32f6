"""The run model shared by ``report.html``, the comparison exports and the dashboard.

Read only from the files of a run directory (see :mod:`audit.rundir`), torch-free: the metric
families and their labels, :class:`RunFiles` and :func:`load_run`, the models in report order
(:func:`order_models`), the metric columns (:func:`metric_columns`), the ``"evaluation"`` block of
run.json (:class:`EvaluationInfo`), what every results table needs (:class:`TableContext`,
:func:`best_value`, :func:`split_tables`) and the rows the model-vs-model tests and the reader study
add (:func:`nonfinite_metrics`, :func:`reader_score_rows`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit import rundir
from audit.metrics import catalogue

log = logging.getLogger(__name__)

# The metric families the report's notes and cells single out, all read from audit.metrics.catalogue.
PIXEL_METRICS = catalogue.names(family="pixel")
PATHOLOGY_METRICS = catalogue.names(table="clinical", evaluator="classifier")
DICE_METRICS = catalogue.names(table="clinical", evaluator="segmenter")
DICE_MASK_METRICS = catalogue.names(table="mask")
FEATURE_METRICS = catalogue.names(family="distribution")
FRECHET_METRICS = ("fid", "fxd", "fd_raddino")
KID_METRICS = ("kid", "kid_raddino")
PRDC_METRICS = tuple(n for n in FEATURE_METRICS if catalogue.METRICS[n].entry == "prdc")
NORBERG_METRICS = catalogue.names(family="norberg")
METRIC_LABELS = {m.name: m.label for m in catalogue.CATALOGUE}
# (id, heading, metrics) of the results tables; metrics in none of them get an "other" table.
RESULT_TABLES = tuple((t.id, t.heading, catalogue.names(table=t.id)) for t in catalogue.TABLES)
# Why the real row has no value: it would be compared with itself.
_SELF_PAIRED = "not computed: real compared with itself is identical by construction"
_SELF_DICE = "not computed: the real image's segmentation compared with itself has Dice 1 by construction"
_SELF_SET = (
    "not computed: the reference set compared with itself is degenerate (FID, FXD and KID are 0, "
    "precision, recall and coverage 1 by construction)"
)
SELF_COMPARISON_REASONS = {
    **dict.fromkeys(PIXEL_METRICS, _SELF_PAIRED),
    **dict.fromkeys(DICE_METRICS, _SELF_DICE),
    **dict.fromkeys(FEATURE_METRICS, _SELF_SET),
}
# Metrics that compare a sample with its own reference: meaningless for the real model itself.
PAIRED_METRICS = frozenset(PIXEL_METRICS)
# run.json "feature_metrics" has one record per config entry, and prdc covers four metric names.
FEATURE_ENTRY = {n: catalogue.METRICS[n].entry for n in FEATURE_METRICS}
ALL_CASES_KEY = "all cases"  # run.json's name for the summary rows with group ""
# Reader-study criteria join the results as metrics "reader_<criterion>" (reports.comparison, reports.statistics and the page).
READER_PREFIX = "reader_"


GENERATOR_COLOURS = (
    "#4C72B0",
    "#DD8452",
    "#55A868",
    "#C44E52",
    "#8172B3",
    "#937860",
    "#DA8BC3",
    "#8C8C8C",
    "#CCB974",
    "#64B5CD",
)
BASELINE_COLOUR = "#A0A0A0"
# Model kinds that are sanity baselines, not models under evaluation: known degradations of the
# reference (`degrade`) and noisy copies of training images (`training-copy`, the privacy audit's
# positive control). They are labelled as such and never compete for "best".
BASELINE_KINDS = frozenset({"degrade", "training-copy"})
REAL_COLOUR = "#333333"


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """Everything the report reads from a run directory, loaded once."""

    run_dir: Path
    summary: pd.DataFrame
    per_sample: pd.DataFrame
    samples: pd.DataFrame
    cases: pd.DataFrame | None
    settings: rundir.RunSettings  # config.toml, parsed once (defaults when it is missing)
    info: Mapping[str, Any]
    failures: pd.DataFrame | None

    @property
    def config(self) -> Mapping[str, Any]:
        """config.toml as parsed TOML ({} when missing or invalid); read settings from ``settings``."""
        return self.settings.raw

    @property
    def config_text(self) -> str:
        return self.settings.text


@dataclasses.dataclass(frozen=True)
class ModelRow:
    name: str
    kind: str
    params: Mapping[str, Any]  # kind-specific config keys (e.g. degradation, level)

    @property
    def is_real(self) -> bool:
        return self.kind == "real"

    @property
    def is_baseline(self) -> bool:
        return self.kind in BASELINE_KINDS


@dataclasses.dataclass(frozen=True)
class MetricColumn:
    name: str
    higher_is_better: bool | None
    unit: str
    evaluator: str = ""  # the evaluator(s) that produced the column's numbers; "" for pixel metrics

    @property
    def base(self) -> str:
        """``pathology_auc`` for ``pathology_auc:Nodule``."""
        return self.name.split(":", 1)[0]

    @property
    def label(self) -> str:
        if self.name.startswith(READER_PREFIX):
            return "reader " + self.name[len(READER_PREFIX) :]
        if ":" in self.name:
            return f"{METRIC_LABELS.get(self.base, self.base)} · {self.name.split(':', 1)[1]}"
        return METRIC_LABELS.get(self.name, self.name)

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓", None: ""}[self.higher_is_better]


SUMMARY_TEXT_COLUMNS = ("model", "metric", "group", "evaluator")


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))}); "
            "it was not written by this version of xray-audit — re-run `xray-audit run STUDY.toml`"
        )


def load_run(run_dir: str | Path) -> RunFiles:
    """Read the run directory's files; optional ones (cases, config, failures) may be absent."""
    run = rundir.require_run_dir(run_dir)

    summary_path = run / rundir.SUMMARY
    # No NA parsing: a model named "NA" stays a name and an empty group means "all cases"; the numeric
    # columns are converted below ("" and "nan" become NaN, "inf" stays infinite).
    summary = pd.read_csv(summary_path, dtype=str, keep_default_na=False)
    _require_columns(summary, rundir.SUMMARY_COLUMNS, summary_path)
    for col in SUMMARY_TEXT_COLUMNS:
        if col not in summary.columns:  # runs from before clinical metrics: every row is over all cases
            summary[col] = ""
        summary[col] = summary[col].astype(str).str.strip()
    for col in ("value", "ci_low", "ci_high", "n"):
        summary[col] = pd.to_numeric(summary[col], errors="coerce")

    per_sample_path = run / rundir.PER_SAMPLE
    per_sample = pd.read_parquet(per_sample_path)
    _require_columns(per_sample, rundir.PER_SAMPLE_COLUMNS, per_sample_path)
    per_sample = per_sample.loc[:, list(rundir.PER_SAMPLE_COLUMNS)]
    per_sample["value"] = pd.to_numeric(per_sample["value"], errors="coerce").astype(np.float64)

    samples_path = run / rundir.SAMPLES
    samples = pd.read_parquet(samples_path)
    _require_columns(samples, ("model", "case_id", "sample", "path"), samples_path)
    for frame in (per_sample, samples):
        frame["model"] = frame["model"].astype(str)
        frame["case_id"] = frame["case_id"].astype(str)

    cases: pd.DataFrame | None = None
    cases_path = run / rundir.CASES
    if cases_path.exists():
        cases = pd.read_parquet(cases_path)
        _require_columns(cases, ("case_id", "image"), cases_path)
        cases["case_id"] = cases["case_id"].astype(str)

    # An invalid config.toml is logged by RunSettings and shown as text only.
    settings = rundir.RunSettings.read(run)

    info_path = run / rundir.RUN_JSON
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{info_path}: not valid JSON ({exc}); re-run `xray-audit run STUDY.toml`") from None
    if not isinstance(info, Mapping):
        # The file's content is wrong, not the caller's argument type.
        raise ValueError(f"{info_path}: expected a JSON object, got {type(info).__name__}")  # noqa: TRY004

    failures: pd.DataFrame | None = None
    failures_path = run / rundir.FAILURES
    if failures_path.exists():
        failures = pd.read_csv(failures_path, dtype=str, keep_default_na=False)
        for col in rundir.FAILURES_COLUMNS:
            if col not in failures.columns:
                failures[col] = ""

    return RunFiles(run, summary, per_sample, samples, cases, settings, info, failures)


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _group_key(group: str) -> str:
    return group or ALL_CASES_KEY


@dataclasses.dataclass(frozen=True)
class EvaluationInfo:
    """run.json's ``"evaluation"`` block; every part empty when the run has none (pixel metrics only)."""

    evaluators: Mapping[str, Mapping[str, Any]]  # role -> {name, source, label, weights_sha256, ...}
    metric_evaluators: Mapping[str, str]
    unavailable: Mapping[str, str]  # metric -> why it was requested but not computed
    pathology: Mapping[str, Any]
    feature_metrics: Mapping[str, Any]  # model -> group key -> entry -> record
    raw: Mapping[str, Any]

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> EvaluationInfo:
        block = mapping(info.get("evaluation"))
        return cls(
            evaluators={str(role): mapping(d) for role, d in mapping(block.get("evaluators")).items()},
            metric_evaluators={str(k): str(v) for k, v in mapping(block.get("metric_evaluators")).items()},
            unavailable={str(k): str(v) for k, v in mapping(block.get("unavailable")).items()},
            pathology=mapping(block.get("pathology")),
            feature_metrics=mapping(block.get("feature_metrics")),
            raw=block,
        )

    def evaluator(self, name: str) -> Mapping[str, Any]:
        for desc in self.evaluators.values():
            if str(desc.get("name", "")) == name:
                return desc
        return {}

    def feature_record(self, model: str, group: str, metric: str) -> Mapping[str, Any]:
        entry = FEATURE_ENTRY.get(metric)
        if entry is None:
            return {}
        return mapping(mapping(mapping(self.feature_metrics.get(model)).get(_group_key(group))).get(entry))

    def skipped(self, model: str, group: str, metric: str) -> Mapping[str, str]:
        """{class: reason} of the classes ``metric`` (pathology_auc/_f1) could not score."""
        per_model = mapping(mapping(self.pathology.get("skipped")).get(model))
        return {
            str(c): str(r) for c, r in mapping(mapping(per_model.get(_group_key(group))).get(metric)).items()
        }

    @property
    def classes(self) -> list[str]:
        classes = self.pathology.get("classes")
        return [str(c) for c in classes] if isinstance(classes, list) else []


# ------------------------------------------------------------------------------------------------
# Models and metrics
# ------------------------------------------------------------------------------------------------


def order_models(run: RunFiles) -> list[ModelRow]:
    """Generators in config order, then degrade baselines, then the real (upper-bound) row last."""
    spec = {}
    for table in run.settings.models:
        if "name" in table:
            spec[str(table["name"])] = table
    names = list(spec)
    for frame in (run.summary, run.samples, run.per_sample):
        for name in pd.unique(frame["model"]):
            if name not in spec and name not in names:
                names.append(name)
    sample_kinds: dict[str, str] = {}
    if "kind" in run.samples.columns:
        kinds = run.samples.dropna(subset=["kind"]).drop_duplicates("model")
        sample_kinds = dict(zip(kinds["model"], kinds["kind"].astype(str), strict=True))
    rows = []
    for name in names:
        table = spec.get(name, {})
        kind = sample_kinds.get(name) or str(table.get("kind", "unknown"))
        params = {k: v for k, v in table.items() if k not in ("name", "kind")}
        rows.append(ModelRow(name, kind, params))
    generators = [m for m in rows if not m.is_real and not m.is_baseline]
    baselines = [m for m in rows if m.is_baseline]
    real = [m for m in rows if m.is_real]
    return generators + baselines + real


def as_bool(value: Any) -> bool | None:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and not pd.isna(value):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def default_unit(metric: str, pixel_range: float) -> str:
    """The catalogue's unit at the run's pixel_range, for a summary.csv that carries none."""
    try:
        return catalogue.spec(metric).unit_at(pixel_range)
    except KeyError:
        return ""


def metric_columns(
    run: RunFiles, pixel_range: float, evaluation: EvaluationInfo | None = None
) -> list[MetricColumn]:
    evaluation = evaluation or EvaluationInfo.from_info(run.info)
    summary = run.summary
    names = sorted(set(summary["metric"]) | set(pd.unique(run.per_sample["metric"])), key=catalogue.order_key)
    has_unit = "unit" in summary.columns
    columns = []
    for name in names:
        rows = summary[summary["metric"] == name]
        hib_values = [b for b in map(as_bool, rows["higher_is_better"]) if b is not None]
        unit = ""
        if has_unit:
            units = [str(u) for u in rows["unit"] if isinstance(u, str) and u.strip()]
            unit = units[0] if units else ""
        evaluators = list(dict.fromkeys(e for e in rows["evaluator"] if e))
        if not evaluators:
            fallback = evaluation.metric_evaluators.get(name) or evaluation.metric_evaluators.get(
                name.split(":")[0]
            )
            evaluators = [fallback] if fallback else []
        columns.append(
            MetricColumn(
                name,
                hib_values[0] if hib_values else None,
                unit or default_unit(name, pixel_range),
                ", ".join(evaluators),
            )
        )
    return columns


# ------------------------------------------------------------------------------------------------
# Results tables
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TableContext:
    """What every results table needs besides its metrics."""

    run: RunFiles
    models: Sequence[ModelRow]
    evaluation: EvaluationInfo
    confidence: float

    @property
    def contenders(self) -> list[ModelRow]:
        # Bold marks the winner among the models under evaluation; baselines compete only when there is
        # no generator at all (a demo run), and the real row never does.
        models = self.models
        return [r for r in models if not r.is_real and not r.is_baseline] or [
            r for r in models if r.is_baseline
        ]


def summary_index(summary: pd.DataFrame, group: str) -> pd.DataFrame:
    """The rows of one group ("" = all cases), indexed by (model, metric)."""
    rows = summary[summary["group"] == group]
    return rows.drop_duplicates(["model", "metric"], keep="last").set_index(["model", "metric"])


def best_value(index: pd.DataFrame, contenders: Sequence[ModelRow], metric: MetricColumn) -> float | None:
    if metric.higher_is_better is None:
        return None
    candidates = [
        index.at[(r.name, metric.name), "value"] for r in contenders if (r.name, metric.name) in index.index
    ]
    candidates = [v for v in candidates if not pd.isna(v)]
    if len(candidates) < 2:
        return None
    return max(candidates) if metric.higher_is_better else min(candidates)


def split_tables(metrics: Sequence[MetricColumn]) -> list[tuple[str, str, list[MetricColumn]]]:
    """(id, heading, columns) of the non-empty results tables; per-class metrics are not in them."""
    placed: set[str] = set()
    out = []
    for table_id, heading, names in RESULT_TABLES:
        columns = [m for m in metrics if m.name in names]
        placed.update(m.name for m in columns)
        if columns:
            out.append((table_id, heading, columns))
    reader = [m for m in metrics if m.name.startswith(READER_PREFIX) and m.name not in placed]
    if reader:
        out.append(("reader", "Reader study", reader))
        placed.update(m.name for m in reader)
    other = [m for m in metrics if m.name not in placed and ":" not in m.name]
    if other:
        out.append(("other", "Other metrics", other))
    return out


def model_colours(models: Sequence[ModelRow]) -> dict[str, str]:
    colours: dict[str, str] = {}
    i = 0
    for m in models:
        if m.is_real:
            colours[m.name] = REAL_COLOUR
        elif m.is_baseline:
            colours[m.name] = BASELINE_COLOUR
        else:
            colours[m.name] = GENERATOR_COLOURS[i % len(GENERATOR_COLOURS)]
            i += 1
    return colours


# ------------------------------------------------------------------------------------------------
# Model-vs-model tests and reader scores
# ------------------------------------------------------------------------------------------------


def nonfinite_metrics(run: RunFiles) -> dict[str, str]:
    """{metric: why} for the per-sample metrics with infinite per-case values among the compared models
    (e.g. PSNR of an identical image): a paired difference of ∞ has no rank or mean. The one rule of
    what the model-vs-model tests leave out, in every output (:func:`reports.statistics.run_paired_tests`).
    """
    ps = run.per_sample
    compared = ps[ps["model"].isin([m.name for m in order_models(run) if not m.is_real])]
    values = compared["value"].to_numpy(dtype=np.float64)
    bad = compared[np.isinf(values)]
    out = {}
    for metric, rows in bad.groupby("metric", sort=True):
        models = ", ".join(sorted(pd.unique(rows["model"])))
        out[str(metric)] = (
            f"{len(rows)} infinite per-sample value(s) ({models}); paired differences need finite values"
        )
    return out


def reader_score_rows(scores: pd.DataFrame, models: Sequence[ModelRow]) -> pd.DataFrame:
    """summary.csv-shaped rows ("reader_<criterion>", group "") of ``ReaderStatistics.scores`` for the
    models of the run; the value is the mean score, n the number of ratings."""
    known = {m.name for m in models}
    unknown = sorted(set(scores["model"].astype(str)) - known)
    if unknown:
        log.warning(
            "reader scores for model(s) %s that are not in the run are left out of the results",
            ", ".join(unknown),
        )
    rows = scores[scores["model"].astype(str).isin(known)]
    return pd.DataFrame(
        {
            "model": rows["model"].astype(str),
            "metric": READER_PREFIX + rows["criterion"].astype(str),
            "value": pd.to_numeric(rows["mean"], errors="coerce"),
            "ci_low": pd.to_numeric(rows["ci_low"], errors="coerce"),
            "ci_high": pd.to_numeric(rows["ci_high"], errors="coerce"),
            "n": pd.to_numeric(rows["n_ratings"], errors="coerce"),
            "higher_is_better": "True",
            "group": "",
            "evaluator": "",
        }
    )
