"""What the dashboard pages show, computed from a run directory: torch-free and, apart from the
cached loaders at the bottom, pure functions of pandas frames and numpy arrays (unit-tested).

Loading reuses :func:`reports.run.load_run` and thumbnails :mod:`reports.thumbnail`, so the report and
the dashboard read a run and its images the same way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from audit import images, rundir
from audit.metrics import catalogue
from dashboards.serve import COMPARE_ENV, RUN_ENV, STUDY_ENV  # noqa: F401  (pages use data.*)
from reader_study.studydir import RATINGS_PARQUET
from reports.privacy import PrivacyFiles, Withheld, load_privacy, withheld_samples
from reports.run import (
    MetricColumn,
    ModelRow,
    RunFiles,
    load_run,
    metric_columns,
    order_models,
)
from reports.thumbnail import overlay, present, read_thumb, shrink, to_uint8

ALL_CASES = "all cases"  # label of summary.csv's group "" in the UI
THUMB_PX = 256
CONDITION_COLUMNS = (
    ("anatomy_mask", "anatomy mask"),
    ("pathology_mask", "pathology mask"),
    ("control", "control"),
)


# ------------------------------------------------------------------------------------------------
# Run context
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunView:
    """A loaded run plus what every page needs: model order, metric metadata, per-case values."""

    files: RunFiles
    models: list[ModelRow]
    metrics: list[MetricColumn]
    per_case: pd.DataFrame  # model, case_id, metric, value (mean over a case's samples)

    @property
    def run_dir(self) -> Path:
        return self.files.run_dir

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def metric(self, name: str) -> MetricColumn:
        for m in self.metrics:
            if m.name == name:
                return m
        return MetricColumn(name, None, "")

    @property
    def groups(self) -> list[str]:
        """summary.csv groups, "" (all cases) first."""
        present = sorted(set(self.files.summary["group"]) - {""})
        return ["", *present]

    @property
    def case_groups(self) -> list[str]:
        cases = self.files.cases
        if cases is None or "group" not in cases.columns:
            return []
        return sorted(str(g) for g in cases["group"].dropna().unique() if str(g).strip())

    def cases_in_group(self, group: str) -> set[str] | None:
        """Case ids of a cases.parquet group; None means all cases."""
        cases = self.files.cases
        if not group or cases is None or "group" not in cases.columns:
            return None
        return set(cases.loc[cases["group"].astype(str) == group, "case_id"])


def build_view(files: RunFiles) -> RunView:
    return RunView(
        files,
        order_models(files),
        metric_columns(files, files.settings.pixel_range),
        per_case_values(files.per_sample),
    )


def group_label(group: str) -> str:
    return group or ALL_CASES


def metric_family(name: str) -> str:
    """The heading of the results table the metric belongs to (from :mod:`audit.metrics.catalogue`)."""
    try:
        table = catalogue.spec(name).table
    except KeyError:
        return "Other"
    return next(t.heading for t in catalogue.TABLES if t.id == table)


# ------------------------------------------------------------------------------------------------
# Aggregations (pure)
# ------------------------------------------------------------------------------------------------


def per_case_values(per_sample: pd.DataFrame) -> pd.DataFrame:
    """Mean over a case's samples, so each case counts once (as in summary.csv and the report).

    NaN samples are skipped; a case whose samples are all NaN stays NaN (it is a failure to hunt).
    """
    if per_sample.empty:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in (("model", str), ("case_id", str), ("metric", str), ("value", float))
            }
        )
    out = per_sample.groupby(["model", "case_id", "metric"], sort=True, observed=True)["value"].mean()
    return out.reset_index()


def leaderboard(
    summary: pd.DataFrame, models: Sequence[str], metrics: Sequence[str], group: str = ""
) -> pd.DataFrame:
    """One row per (model, metric) of ``group``: value, ci_low, ci_high, n, in model then metric order.

    Only the models and metrics asked for; a (model, metric) pair without a summary row is left out.
    """
    rows = summary[
        (summary["group"] == group) & summary["model"].isin(models) & summary["metric"].isin(metrics)
    ]
    rows = rows.drop_duplicates(["model", "metric"], keep="last")
    model_rank = {m: i for i, m in enumerate(models)}
    metric_rank = {m: i for i, m in enumerate(metrics)}
    rows = rows.assign(_m=rows["model"].map(model_rank), _k=rows["metric"].map(metric_rank))
    rows = rows.sort_values(["_m", "_k"], kind="stable").drop(columns=["_m", "_k"])
    return rows.loc[:, ["model", "metric", "value", "ci_low", "ci_high", "n"]].reset_index(drop=True)


def rank_models(values: pd.Series, higher_is_better: bool | None) -> pd.Series:
    """Rank 1 = best (ties share the lowest rank, "min"); NaN stays NaN; all NaN without a direction."""
    if higher_is_better is None:
        return pd.Series(np.nan, index=values.index)
    return values.rank(ascending=not higher_is_better, method="min", na_option="keep")


def wide_leaderboard(
    table: pd.DataFrame, metrics: Sequence[MetricColumn], models: Sequence[str], contenders: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values, ranks): model x metric; ranks only among ``contenders`` (the real row does not compete)."""
    names = [m.name for m in metrics if m.name in set(table["metric"])]
    values = table.pivot(index="model", columns="metric", values="value").reindex(index=models, columns=names)
    ranks = pd.DataFrame(np.nan, index=values.index, columns=names)
    contenders = [m for m in contenders if m in values.index]
    for metric in metrics:
        if metric.name in names:
            ranks.loc[contenders, metric.name] = rank_models(
                values.loc[contenders, metric.name], metric.higher_is_better
            )
    return values, ranks


def format_ci(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return "—" if np.isnan(value) else str(value)
    text = f"{value:.4g}"
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{low:.4g}, {high:.4g}]"
    return text


def case_table(per_case: pd.DataFrame, case_ids: set[str] | None = None) -> pd.DataFrame:
    """Per-case values restricted to ``case_ids`` (None: all)."""
    if case_ids is None:
        return per_case
    return per_case[per_case["case_id"].isin(case_ids)]


def describe(per_case: pd.DataFrame, metric: str, models: Sequence[str]) -> pd.DataFrame:
    """n (finite), mean, sd (ddof 1), median, min, max and non-finite count of one metric's per-case values."""
    rows = []
    for model in models:
        v = per_case.loc[(per_case["model"] == model) & (per_case["metric"] == metric), "value"].to_numpy(
            float
        )
        if v.size == 0:
            continue
        f = v[np.isfinite(v)]
        rows.append(
            {
                "model": model,
                "n": int(f.size),
                "mean": float(f.mean()) if f.size else np.nan,
                "sd": float(f.std(ddof=1)) if f.size > 1 else np.nan,
                "median": float(np.median(f)) if f.size else np.nan,
                "min": float(f.min()) if f.size else np.nan,
                "max": float(f.max()) if f.size else np.nan,
                "non-finite": int(v.size - f.size),
            }
        )
    return pd.DataFrame(rows, columns=["model", "n", "mean", "sd", "median", "min", "max", "non-finite"])


def worst_cases(
    per_case: pd.DataFrame, metric: str, higher_is_better: bool | None, models: Sequence[str], k: int
) -> pd.DataFrame:
    """The ``k`` worst (model, case) pairs of ``metric``: NaN first (a metric that could not be computed
    is the first failure to look at), then lowest values when higher is better, highest otherwise.
    Without a known direction, the lowest values come first. Ties are broken by model, then case id."""
    rows = per_case[(per_case["metric"] == metric) & per_case["model"].isin(models)]
    rows = rows.loc[:, ["model", "case_id", "value"]]
    sign = -1.0 if higher_is_better is False else 1.0
    key = rows["value"].to_numpy(float) * sign
    key = np.where(np.isnan(key), -np.inf, key)
    rows = rows.assign(_nan=~np.isnan(rows["value"].to_numpy(float)), _key=key)
    rows = rows.sort_values(["_nan", "_key", "model", "case_id"], kind="stable")
    return rows.drop(columns=["_nan", "_key"]).head(max(k, 0)).reset_index(drop=True)


def sample_metrics(per_sample: pd.DataFrame, case_id: str, sample: int) -> dict[str, dict[str, float]]:
    """model -> {metric: value} of one (case, sample)."""
    rows = per_sample[(per_sample["case_id"] == case_id) & (per_sample["sample"] == sample)]
    out: dict[str, dict[str, float]] = {}
    for r in rows.itertuples(index=False):
        out.setdefault(r.model, {})[r.metric] = float(r.value)
    return out


def sample_paths(samples: pd.DataFrame, run_dir: Path, case_id: str, sample: int) -> dict[str, str | None]:
    """model -> image path of (case, sample); run-relative paths made absolute."""
    rows = samples[(samples["case_id"] == case_id) & (samples["sample"] == sample)]
    out: dict[str, str | None] = {}
    for r in rows.itertuples(index=False):
        path = present(r.path)
        if path is not None and not Path(path).is_absolute():
            path = str(run_dir / path)
        out[r.model] = path
    return out


def reader_scores(
    ratings: pd.DataFrame, include_calibration: bool = False, include_flagged: bool = True
) -> pd.DataFrame:
    """Mean 1-5 score per (model, criterion): n, mean, sd (ddof 1), readers. Turing and flag rows are
    not scores and are left out; calibration (practice) items are left out unless asked for."""
    rows = _reader_rows(ratings, include_calibration, include_flagged)
    rows = rows[rows["score"].notna() & ~rows["criterion"].isin(("turing", "flag"))]
    if rows.empty:
        return pd.DataFrame(columns=["model", "criterion", "n", "mean", "sd", "readers"])
    rows = rows.assign(score=rows["score"].astype(float))
    out = rows.groupby(["model", "criterion"], sort=True).agg(
        n=("score", "size"), mean=("score", "mean"), sd=("score", "std"), readers=("reader", "nunique")
    )
    return out.reset_index()


def turing_rates(
    ratings: pd.DataFrame, include_calibration: bool = False, include_flagged: bool = True
) -> pd.DataFrame:
    """Per model: answers, how many said "real", that fraction, and mean confidence of the answers."""
    rows = _reader_rows(ratings, include_calibration, include_flagged)
    rows = rows[(rows["criterion"] == "turing") & rows["turing_answer"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=["model", "answers", "said_real", "fraction_real", "mean_confidence"])
    rows = rows.assign(
        said=(rows["turing_answer"] == "real").astype(int),
        conf=pd.to_numeric(rows["confidence"], errors="coerce"),
    )
    out = rows.groupby("model", sort=True).agg(
        answers=("said", "size"), said_real=("said", "sum"), mean_confidence=("conf", "mean")
    )
    out.insert(2, "fraction_real", out["said_real"] / out["answers"])
    return out.reset_index()


def _reader_rows(ratings: pd.DataFrame, include_calibration: bool, include_flagged: bool) -> pd.DataFrame:
    rows = ratings
    if not include_calibration and "calibration" in rows.columns:
        rows = rows[~rows["calibration"].fillna(False).astype(bool)]
    if not include_flagged and "flagged" in rows.columns:
        rows = rows[~rows["flagged"].fillna(False).astype(bool)]
    return rows


def compare_summaries(a: pd.DataFrame, b: pd.DataFrame, group: str = "") -> pd.DataFrame:
    """Outer join of two summary.csv frames on (model, metric) for one group: value_a, value_b,
    delta (b - a) and where the pair is present ("both", "only A", "only B")."""
    cols = ["model", "metric", "value", "ci_low", "ci_high"]
    left = a.loc[a["group"] == group, cols].drop_duplicates(["model", "metric"], keep="last")
    right = b.loc[b["group"] == group, cols].drop_duplicates(["model", "metric"], keep="last")
    out = left.merge(right, on=["model", "metric"], how="outer", suffixes=("_a", "_b"), indicator=True)
    out["present"] = (
        out.pop("_merge").map({"both": "both", "left_only": "only A", "right_only": "only B"}).astype(str)
    )
    out["delta"] = out["value_b"] - out["value_a"]
    return out.sort_values(["model", "metric"], kind="stable").reset_index(drop=True)


def improved(delta: float, higher_is_better: bool | None) -> str:
    """Whether B is better than A by ``delta`` = B - A: "better", "worse", "same" or "" (unknown)."""
    if higher_is_better is None or not np.isfinite(delta):
        return ""
    if delta == 0:
        return "same"
    return "better" if (delta > 0) == higher_is_better else "worse"


# ------------------------------------------------------------------------------------------------
# Images (pure)
# ------------------------------------------------------------------------------------------------


def condition_image(
    case: Mapping[str, Any], reference: np.ndarray | None, size: int = THUMB_PX
) -> tuple[np.ndarray | None, str]:
    """(uint8 image, caption) of a case's condition: a mask over the reference, or the control image.
    (None, reason) when the case has none or it cannot be read."""
    for column, caption in CONDITION_COLUMNS:
        path = present(case.get(column))
        if path is None:
            continue
        if column == "control":
            thumb, why = read_thumb(path, size)
            return (to_uint8(thumb), caption) if thumb is not None else (None, f"{caption}: {why}")
        try:
            mask = images.read_mask(path)
        except FileNotFoundError:
            return None, f"{caption} not found: {path}"
        except (OSError, ValueError) as exc:
            return None, f"{caption} unreadable: {exc}"
        base = reference if reference is not None else shrink(np.zeros(mask.shape[:2], np.float32), size)
        if column == "anatomy_mask" and mask.shape[2] == 3:
            caption = "anatomy mask (R lungs · G heart · B aorta)"
        return overlay(base, mask), caption
    return None, "no condition recorded for this case"


# ------------------------------------------------------------------------------------------------
# Cached loaders (Streamlit)
# ------------------------------------------------------------------------------------------------


def _stamp(run_dir: Path) -> tuple[float, ...]:
    """Modification times of the files a run view reads: a re-run of the same directory reloads."""
    names = (
        rundir.SUMMARY,
        rundir.PER_SAMPLE,
        rundir.SAMPLES,
        rundir.CASES,
        rundir.RUN_JSON,
        rundir.FAILURES,
    )
    return tuple((run_dir / n).stat().st_mtime if (run_dir / n).exists() else 0.0 for n in names)


@st.cache_resource(max_entries=4, show_spinner="Loading the run…")
def _view(run_dir: str, stamp: tuple[float, ...]) -> RunView:
    return build_view(load_run(run_dir))


def view(run_dir: str | Path) -> RunView:
    path = rundir.require_run_dir(Path(run_dir).expanduser())
    return _view(str(path.resolve()), _stamp(path))


@st.cache_data(max_entries=2048, show_spinner=False)
def thumb(path: str | None, size: int = THUMB_PX) -> tuple[np.ndarray | None, str]:
    return read_thumb(path, size)


@st.cache_data(max_entries=1024, show_spinner=False)
def condition(case: dict[str, Any], size: int = THUMB_PX) -> tuple[np.ndarray | None, str]:
    reference, _ = thumb(present(case.get("image")), size)
    return condition_image(case, reference, size)


def _privacy_stamp(run_dir: Path) -> tuple[float, ...]:
    names = (rundir.PRIVACY, rundir.PRIVACY_TRAINING, rundir.RUN_JSON)
    return tuple((run_dir / n).stat().st_mtime if (run_dir / n).exists() else 0.0 for n in names)


@st.cache_resource(max_entries=4, show_spinner="Loading the privacy audit…")
def _privacy(run_dir: str, stamp: tuple[float, ...]) -> PrivacyFiles | None:
    return load_privacy(run_dir)


def privacy(view: RunView) -> PrivacyFiles | None:
    """The run's privacy audit (:func:`reports.privacy.load_privacy`), None without privacy.parquet."""
    return _privacy(str(view.run_dir.resolve()), _privacy_stamp(view.run_dir))


def withheld(view: RunView) -> Withheld:
    """The samples no page may show (:func:`reports.privacy.withheld_samples`): training images while
    the run's [privacy].show_training_images is not true."""
    return withheld_samples(view.models, view.files.info, privacy(view))


@st.cache_data(max_entries=4, show_spinner=False)
def _ratings(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_parquet(path)


def ratings(study_dir: str | Path) -> pd.DataFrame | None:
    """STUDY_DIR/ratings.parquet, or None when it has not been exported."""
    path = Path(study_dir).expanduser() / RATINGS_PARQUET
    if not path.is_file():
        return None
    return _ratings(str(path.resolve()), path.stat().st_mtime)


def env_path(name: str) -> str | None:
    return present(os.environ.get(name))
