"""Reader-study statistics from the export (``xray-audit reader-study export``): torch-free, no I/O.

:func:`reader_statistics` turns the long export frame (one row per reader, item, criterion and read)
into tidy tables for the report:

- ``scores``: mean 1-5 score per model and criterion with a two-way (readers × items) bootstrap CI.
- ``mixed``: ``score ~ model + (1|reader) + (1|case)`` per criterion (statsmodels MixedLM, REML),
  model coefficients against the reference level (``real``).
- ``ordinal``: proportional-odds logit (statsmodels OrderedModel) on the same contrast, a
  sensitivity check that does not treat 1-5 as an interval scale.
- ``agreement``: inter-reader ICC(2,1)/ICC(2,k), mean pairwise quadratic kappa, Krippendorff's alpha.
- ``intra``: intra-reader agreement on re-reads (read 1 vs read 2 of the same item).
- ``turing``: accuracy, sensitivity, specificity and AUC of real-vs-synthetic answers, per reader
  and pooled.

:func:`metric_validity` correlates the automatic metrics of a run with the reader scores: per-sample
metrics per image and per model, set-level metrics (FID etc., from summary.csv) per model.

Calibration (practice) items and the ``flag`` rows of flagged items without answers are dropped
first; every table except ``intra`` uses first reads (``read_number == 1``) only, so a re-read item
does not count twice. A flagged item that was also scored keeps its scores.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats as sps

from audit.rundir import PER_SAMPLE_COLUMNS
from reader_study.criteria import FLAG, TURING
from reader_study.studydir import EXPORT_COLUMNS
from reports.functional.agreement import (
    SCORE_LABELS,
    icc,
    krippendorff_alpha,
    mean_pairwise_kappa,
    turing_by_reader,
    turing_stats,
    weighted_kappa,
)
from reports.functional.paired import two_way_bootstrap_mean

if TYPE_CHECKING:
    from audit.rundir import RunSettings

log = logging.getLogger(__name__)

# The columns of the ratings export (reader_study.studydir) the statistics read.
REQUIRED_COLUMNS = (*(c for c in EXPORT_COLUMNS if c != "created_at"), "calibration")
REFERENCE = "real"
# The reader value of the pooled rows in ``intra`` and ``turing``; reader names are study tokens'
# owner names, which never hold parentheses in practice.
POOLED = "(pooled)"

SCORES_COLUMNS = [
    "model",
    "criterion",
    "mean",
    "ci_low",
    "ci_high",
    "n_ratings",
    "n_readers",
    "n_items",
    "n_cases",
]
MIXED_COLUMNS = [
    "criterion", "model", "coef", "se", "ci_low", "ci_high", "pvalue", "reference_mean",
    "var_reader", "var_case", "var_residual", "n_ratings", "n_readers", "n_cases", "converged", "warnings",
]  # fmt: skip
ORDINAL_COLUMNS = [
    "criterion", "model", "coef", "se", "ci_low", "ci_high", "pvalue", "n_ratings", "converged", "warnings",
]  # fmt: skip
AGREEMENT_COLUMNS = [
    "criterion", "icc2_1", "icc2_1_ci_low", "icc2_1_ci_high", "icc2_k", "icc2_k_ci_low", "icc2_k_ci_high",
    "icc_n_items", "kappa_quadratic", "n_reader_pairs", "alpha_ordinal", "n_items", "n_readers",
    "n_ratings", "note",
]  # fmt: skip
INTRA_COLUMNS = ["reader", "criterion", "kappa_quadratic", "exact_agreement", "n_pairs"]
TURING_COLUMNS = ["reader", "n", "n_synthetic", "n_real", "accuracy", "sensitivity", "specificity", "auc"]
VALIDITY_COLUMNS = [
    "metric", "criterion", "rho_image", "p_image", "n_image", "rho_model", "p_model", "n_model",
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ReaderStatistics:
    """The reader-study tables; see the module docstring. Every table is a plain tidy DataFrame."""

    scores: pd.DataFrame
    mixed: pd.DataFrame
    ordinal: pd.DataFrame
    agreement: pd.DataFrame
    intra: pd.DataFrame
    turing: pd.DataFrame


# --- input -------------------------------------------------------------------------------------------


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {missing}; the frame has {list(frame.columns)}. "
            f"Expected columns: {list(columns)}."
        )


def split_reads(ratings: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(score rows of every read, Turing rows of every read): calibration and flag rows dropped.

    Score rows get a float ``score`` and string ``reader``/``item``/``model``/``case_id``; rows of a
    1-5 criterion without a score (nothing to analyse) are dropped.
    """
    what = "reader_statistics (ratings export)"
    _require(ratings, REQUIRED_COLUMNS, what)
    calibration = ratings["calibration"].astype("boolean").fillna(False).astype(bool)
    rows = ratings[~calibration & (ratings["criterion"] != FLAG)].copy()
    try:
        rows["read_number"] = pd.to_numeric(rows["read_number"]).astype("float64")
        rows["score"] = pd.to_numeric(rows["score"]).astype("float64")
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: read_number and score must be numeric: {err}") from err
    bad_read = ~rows["read_number"].isin([1.0, 2.0])
    if bad_read.any():
        i = rows.index[bad_read][0]
        raise ValueError(f"{what}: row {i} has read_number {rows.at[i, 'read_number']!r}; expected 1 or 2")
    for col in ("reader", "item", "model", "case_id"):
        rows[col] = rows[col].astype(str)
    turing = rows[rows["criterion"] == TURING]
    scored = rows[(rows["criterion"] != TURING) & rows["score"].notna()]
    bad = ~scored["score"].isin([float(v) for v in SCORE_LABELS])
    if bad.any():
        i = scored.index[bad][0]
        raise ValueError(
            f"{what}: row {i} (criterion {scored.at[i, 'criterion']!r}) has score {scored.at[i, 'score']}; "
            f"scores must be integers in {list(SCORE_LABELS)}"
        )
    dup = scored.duplicated(["reader", "item", "criterion", "read_number"], keep=False)
    if dup.any():
        i = scored.index[dup][0]
        raise ValueError(
            f"{what}: reader {scored.at[i, 'reader']!r} scored item {scored.at[i, 'item']!r} on "
            f"{scored.at[i, 'criterion']!r} more than once in read {int(scored.at[i, 'read_number'])} "
            f"(rows {list(scored.index[dup][:4])}); the export has one row per (reader, item, criterion, read)"
        )
    return scored, turing


def _model_order(models: Sequence[str], reference: str) -> list[str]:
    others = sorted(m for m in set(models) if m != reference)
    return ([reference] if reference in set(models) else []) + others


def _warning_text(caught: list[warnings.WarningMessage]) -> str:
    seen: list[str] = []
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


# --- tables ------------------------------------------------------------------------------------------


def _scores_table(
    first: pd.DataFrame, reference: str, rng: np.random.Generator, resamples: int, confidence: float
):
    rows = []
    for criterion in sorted(first["criterion"].unique()):
        crit = first[first["criterion"] == criterion]
        for model in _model_order(crit["model"].unique(), reference):
            group = crit[crit["model"] == model]
            # The item is the rated unit: a model's case can appear as several samples.
            out = two_way_bootstrap_mean(
                group,
                reader="reader",
                case="item",
                score="score",
                rng=rng,
                resamples=resamples,
                confidence=confidence,
            )
            rows.append(
                {
                    "model": model,
                    "criterion": criterion,
                    "mean": out["mean"],
                    "ci_low": out["ci"][0],
                    "ci_high": out["ci"][1],
                    "n_ratings": out["n_ratings"],
                    "n_readers": out["n_readers"],
                    "n_items": out["n_cases"],
                    "n_cases": int(group["case_id"].nunique()),
                }
            )
    return pd.DataFrame(rows, columns=SCORES_COLUMNS)


def _dummies(models: pd.Series, others: list[str]) -> pd.DataFrame:
    """Treatment-coded model indicators named m0, m1, ... so odd model names never reach a formula."""
    return pd.DataFrame(
        {f"m{i}": (models == m).astype("float64").to_numpy() for i, m in enumerate(others)},
        index=models.index,
    )


def _fit_mixed(crit: pd.DataFrame, others: list[str]):
    import statsmodels.api as sm

    data = pd.concat([crit[["score", "reader", "case_id"]], _dummies(crit["model"], others)], axis=1)
    data["single_group"] = 0
    fixed = " + ".join(f"m{i}" for i in range(len(others)))
    # Crossed random effects as statsmodels documents them: one group holding every row, with the
    # reader and case intercepts as variance components (re_formula "0": the group itself has none).
    model = sm.MixedLM.from_formula(
        f"score ~ {fixed}",
        groups="single_group",
        re_formula="0",
        vc_formula={"reader": "0 + C(reader)", "case": "0 + C(case_id)"},
        data=data,
    )
    return model, model.fit(reml=True)


def _mixed_table(first: pd.DataFrame, reference: str, confidence: float) -> pd.DataFrame:
    z = sps.norm.ppf(0.5 + confidence / 2)
    rows = []
    nan = float("nan")
    for criterion in sorted(first["criterion"].unique()):
        crit = first[first["criterion"] == criterion]
        others = [m for m in _model_order(crit["model"].unique(), reference) if m != reference]
        if not others or reference not in set(crit["model"]):
            continue
        base = {
            "criterion": criterion,
            "n_ratings": len(crit),
            "n_readers": crit["reader"].nunique(),
            "n_cases": crit["case_id"].nunique(),
        }
        fit = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if base["n_readers"] < 2 or base["n_cases"] < 2:
                    raise ValueError("needs at least 2 readers and 2 cases for the reader and case variances")
                model, fit = _fit_mixed(crit, others)
            except (ValueError, np.linalg.LinAlgError) as err:
                warnings.warn(f"not fitted: {err}", RuntimeWarning, stacklevel=1)
        text = _warning_text(caught)
        if text:
            log.warning("mixed model for criterion %r: %s", criterion, text)
        if fit is None:
            for m in others:
                rows.append({**base, "model": m, "converged": False, "warnings": text})
            continue
        vcomp = dict(zip(model.exog_vc.names, np.asarray(fit.vcomp, dtype=np.float64), strict=True))
        for i, m in enumerate(others):
            name = f"m{i}"
            coef, se = float(fit.fe_params[name]), float(fit.bse_fe[name])
            rows.append(
                {
                    **base,
                    "model": m,
                    "coef": coef,
                    "se": se,
                    "ci_low": coef - z * se,
                    "ci_high": coef + z * se,
                    "pvalue": float(fit.pvalues[name]),
                    "reference_mean": float(fit.fe_params["Intercept"]),
                    "var_reader": vcomp.get("reader", nan),
                    "var_case": vcomp.get("case", nan),
                    "var_residual": float(fit.scale),
                    "converged": bool(fit.converged),
                    "warnings": text,
                }
            )
    return pd.DataFrame(rows, columns=MIXED_COLUMNS)


def ordinal_design(crit: pd.DataFrame, others: list[str]) -> tuple[pd.Series, pd.DataFrame]:
    """(ordered-categorical score, exog) of the proportional-odds fit: model indicators against the
    reference, then reader indicators (first reader in sorted order as baseline) for reader severity.
    Only the score levels in use are categories, since an empty level has no estimable threshold."""
    levels = sorted(crit["score"].unique())
    endog = pd.Series(pd.Categorical(crit["score"], categories=levels, ordered=True), index=crit.index)
    readers = sorted(crit["reader"].unique())
    exog = _dummies(crit["model"], others)
    for j, r in enumerate(readers[1:]):
        exog[f"r{j}"] = (crit["reader"] == r).astype("float64").to_numpy()
    return endog, exog


def _ordinal_table(first: pd.DataFrame, reference: str, confidence: float) -> pd.DataFrame:
    from statsmodels.miscmodels.ordinal_model import OrderedModel

    z = sps.norm.ppf(0.5 + confidence / 2)
    rows = []
    for criterion in sorted(first["criterion"].unique()):
        crit = first[first["criterion"] == criterion]
        others = [m for m in _model_order(crit["model"].unique(), reference) if m != reference]
        if not others or reference not in set(crit["model"]):
            continue
        base = {"criterion": criterion, "n_ratings": len(crit)}
        fit = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                endog, exog = ordinal_design(crit, others)
                if len(endog.cat.categories) < 2:
                    raise ValueError("every score is the same level; no ordering to model")
                fit = OrderedModel(endog, exog, distr="logit").fit(method="bfgs", maxiter=2000, disp=False)
            except (ValueError, np.linalg.LinAlgError) as err:
                warnings.warn(f"not fitted: {err}", RuntimeWarning, stacklevel=1)
        text = _warning_text(caught)
        if text:
            log.warning("ordinal model for criterion %r: %s", criterion, text)
        for i, m in enumerate(others):
            row = {**base, "model": m, "converged": False, "warnings": text}
            if fit is not None:
                name = f"m{i}"
                coef, se = float(fit.params[name]), float(fit.bse[name])
                row.update(
                    coef=coef,
                    se=se,
                    ci_low=coef - z * se,
                    ci_high=coef + z * se,
                    pvalue=float(fit.pvalues[name]),
                    converged=bool(fit.mle_retvals.get("converged", False)),
                )
            rows.append(row)
    return pd.DataFrame(rows, columns=ORDINAL_COLUMNS)


def _agreement_table(first: pd.DataFrame) -> pd.DataFrame:
    rows = []
    nan = float("nan")
    for criterion in sorted(first["criterion"].unique()):
        crit = first[first["criterion"] == criterion]
        row: dict[str, object] = {
            "criterion": criterion,
            "n_items": crit["item"].nunique(),
            "n_readers": crit["reader"].nunique(),
            "n_ratings": len(crit),
        }
        notes = []
        kw = {"target": "item", "rater": "reader", "score": "score"}
        try:
            out = icc(crit, **kw)
            row.update(
                icc2_1=out["icc2_1"],
                icc2_1_ci_low=out["icc2_1_ci"][0],
                icc2_1_ci_high=out["icc2_1_ci"][1],
                icc2_k=out["icc2_k"],
                icc2_k_ci_low=out["icc2_k_ci"][0],
                icc2_k_ci_high=out["icc2_k_ci"][1],
                icc_n_items=out["n_targets"],
            )
        except ValueError as err:
            notes.append(str(err))
        try:
            pk = mean_pairwise_kappa(crit, labels=SCORE_LABELS, weights="quadratic", **kw)
            row.update(kappa_quadratic=pk.mean, n_reader_pairs=int(pk.pairs["kappa"].notna().sum()))
        except ValueError as err:
            notes.append(str(err))
        try:
            row["alpha_ordinal"] = krippendorff_alpha(crit, level="ordinal", **kw)
        except ValueError as err:
            notes.append(str(err))
        row["note"] = "; ".join(notes)
        rows.append({c: row.get(c, nan) for c in AGREEMENT_COLUMNS})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def _intra_table(scored: pd.DataFrame) -> pd.DataFrame:
    wide = scored.pivot_table(
        index=["criterion", "reader", "item"], columns="read_number", values="score", aggfunc="first"
    )
    if 1.0 not in wide.columns or 2.0 not in wide.columns:
        return pd.DataFrame(columns=INTRA_COLUMNS)
    pairs = wide[[1.0, 2.0]].dropna().reset_index()
    rows = []

    def summarise(reader: str, criterion: str, group: pd.DataFrame) -> None:
        a, b = group[1.0].to_numpy(), group[2.0].to_numpy()
        rows.append(
            {
                "reader": reader,
                "criterion": criterion,
                "kappa_quadratic": weighted_kappa(a, b, labels=SCORE_LABELS, weights="quadratic"),
                "exact_agreement": float((a == b).mean()),
                "n_pairs": int(a.size),
            }
        )

    for criterion, crit in pairs.groupby("criterion", sort=True):
        for reader, group in crit.groupby("reader", sort=True):
            summarise(reader, criterion, group)
        summarise(POOLED, criterion, crit)
    return pd.DataFrame(rows, columns=INTRA_COLUMNS)


def _turing_table(turing: pd.DataFrame, reference: str) -> pd.DataFrame:
    rows = turing[(turing["read_number"] == 1) & turing["turing_answer"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=TURING_COLUMNS)
    per_reader = turing_by_reader(rows, real_model=reference).reset_index()
    pooled = turing_stats(
        rows["model"].to_numpy() != reference,
        rows["turing_answer"].to_numpy() == "synthetic",
        pd.to_numeric(rows["confidence"]).astype("float64").to_numpy(),
    )
    out = pd.concat([per_reader, pd.DataFrame([{"reader": POOLED, **pooled}])], ignore_index=True)
    return out[TURING_COLUMNS]


def reader_statistics(
    ratings: pd.DataFrame,
    *,
    rng: np.random.Generator,
    resamples: int = 2000,
    reference: str = REFERENCE,
    confidence: float = 0.95,
) -> ReaderStatistics:
    """All reader-study tables from the export frame (``reader_study.admin.export_frame``).

    ``scores`` resamples readers and items (:func:`two_way_bootstrap_mean`), criteria and models in
    sorted order (reference first) from the one ``rng``, so a seeded generator reproduces the CIs.
    ``mixed`` and ``ordinal`` hold one row per non-reference model and criterion. Every CI (the
    scores' percentile intervals and the Wald intervals) has coverage ``confidence``; for a run's
    report use :func:`run_reader_statistics`, which takes it from the run's config. Fit warnings (e.g.
    statsmodels' ConvergenceWarning, a variance on the boundary) go to the ``warnings`` column and the
    log. ``ordinal`` adjusts for reader severity with reader
    indicators; the case effect is left to the mixed model (with disjoint cases per model it would be
    confounded with the model).

    Raises ValueError naming missing columns, scores outside 1-5, or duplicated ratings; and when a
    1-5 criterion has no ``reference`` model rows, since every contrast is against it.
    """
    scored, turing = split_reads(ratings)
    first = scored[scored["read_number"] == 1]
    if len(first) and reference not in set(first["model"]):
        raise ValueError(
            f"reader_statistics: no first-read scores for the reference model {reference!r}; the models "
            f"are {sorted(set(first['model']))}. Pass reference=<one of them>."
        )
    return ReaderStatistics(
        scores=_scores_table(first, reference, rng, resamples, confidence),
        mixed=_mixed_table(first, reference, confidence),
        ordinal=_ordinal_table(first, reference, confidence),
        agreement=_agreement_table(first),
        intra=_intra_table(scored),
        turing=_turing_table(turing, reference),
    )


def run_reader_statistics(
    ratings: pd.DataFrame,
    settings: RunSettings,
    *,
    seed: int | None = None,
    resamples: int | None = None,
    reference: str = REFERENCE,
) -> ReaderStatistics:
    """:func:`reader_statistics` with the settings of the run the study was made from
    (:class:`audit.rundir.RunSettings`): ``[metrics].confidence``, ``[metrics].bootstrap_resamples``
    (or ``resamples``) and a generator seeded with ``[study].seed`` (or ``seed``), as the run's other
    bootstrap CIs. ``xray-audit report --reader-study`` and report.html both use it, so the CIs have the
    coverage the page labels them with, and a rerun gives the same numbers."""
    return reader_statistics(
        ratings,
        rng=np.random.default_rng(settings.seed if seed is None else int(seed)),
        resamples=settings.bootstrap_resamples if resamples is None else int(resamples),
        reference=reference,
        confidence=settings.confidence,
    )


# --- metric validity ---------------------------------------------------------------------------------


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """scipy's Spearman rho and p; NaN for fewer than 3 points or a constant side (no ranking)."""
    if x.size < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return float("nan"), float("nan")
    res = sps.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


SUMMARY_REQUIRED = ("model", "metric", "value")
POINTS_COLUMNS = ["metric", "criterion", "level", "model", "case_id", "sample", "value", "score"]


def _set_metrics(summary: pd.DataFrame, per_sample_metrics: set[str]) -> pd.DataFrame:
    """model, metric, value of the all-cases rows of ``summary`` whose metric has no per-sample values
    (FID, FXD, KID, PRDC, pathology AUC/F1: one number per model)."""
    what = "metric_validity (summary)"
    _require(summary, SUMMARY_REQUIRED, what)
    rows = summary
    if "group" in rows.columns:
        # summary.csv leaves the group empty on the all-cases rows (NaN when read with default NA parsing).
        group = rows["group"].astype("string").fillna("").str.strip()
        rows = rows[(group == "").to_numpy()]
    rows = rows.loc[:, list(SUMMARY_REQUIRED)].copy()
    rows["model"] = rows["model"].astype(str)
    rows["metric"] = rows["metric"].astype(str)
    rows = rows[~rows["metric"].isin(per_sample_metrics)]
    try:
        rows["value"] = pd.to_numeric(rows["value"]).astype("float64")
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: value must be numeric: {err}") from err
    dup = rows.duplicated(["model", "metric"], keep=False)
    if dup.any():
        i = rows.index[dup][0]
        model, metric = rows.at[i, "model"], rows.at[i, "metric"]
        same = rows.index[dup & (rows["model"] == model) & (rows["metric"] == metric)]
        raise ValueError(
            f"{what}: rows {list(same)}: metric {metric!r} appears more than once for model "
            f"{model!r} over all cases (empty group); summary.csv has one row per (model, "
            "metric, group): pass the summary of one run"
        )
    return rows[rows["value"].notna()]


def validity_points(
    per_sample: pd.DataFrame, ratings: pd.DataFrame, summary: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The (metric value, reader score) pairs behind :func:`metric_validity`, columns
    :data:`POINTS_COLUMNS`, sorted by metric and criterion.

    ``level == "image"``: one row per rated image that has the per-sample metric (``score`` is the mean
    over readers of its first-read score). ``level == "model"``: one row per model for the set-level
    metrics of ``summary`` (metrics without per-sample values): ``value`` is the model's all-cases
    summary value and ``score`` the mean image score over every rated image of that model;
    ``case_id`` is "" and ``sample`` -1.
    """
    _require(per_sample, PER_SAMPLE_COLUMNS, "metric_validity (per_sample)")
    scored, _ = split_reads(ratings)
    first = scored[scored["read_number"] == 1]
    keys = ["model", "case_id", "sample"]
    metrics = per_sample[list(PER_SAMPLE_COLUMNS)].copy()
    metrics["model"] = metrics["model"].astype(str)
    metrics["case_id"] = metrics["case_id"].astype(str)
    metrics["metric"] = metrics["metric"].astype(str)
    try:
        metrics["sample"] = pd.to_numeric(metrics["sample"]).astype("int64")
        metrics["value"] = pd.to_numeric(metrics["value"]).astype("float64")
    except (TypeError, ValueError) as err:
        raise ValueError(f"metric_validity (per_sample): sample and value must be numeric: {err}") from err
    dup = metrics.duplicated([*keys, "metric"], keep=False)
    if dup.any():
        i = metrics.index[dup][0]
        raise ValueError(
            f"metric_validity (per_sample): row {i}: metric {metrics.at[i, 'metric']!r} appears more than "
            f"once for {tuple(metrics.loc[i, keys])}; per_sample.parquet has one value per sample and metric"
        )
    per_sample_metrics = set(metrics["metric"])
    metrics = metrics[metrics["value"].notna()]
    # Real items are the cases' reference images and carry no sample number; the run records the
    # real model's image of a case as sample 0.
    images = first.assign(sample=pd.to_numeric(first["sample"]).fillna(0).astype("int64"))
    images = images.groupby(["criterion", *keys], as_index=False)["score"].mean()
    joined = images.merge(metrics, on=keys, how="inner").assign(level="image")
    parts = [joined]
    if summary is not None:
        sets = _set_metrics(summary, per_sample_metrics)
        by_model = images.groupby(["criterion", "model"], as_index=False)["score"].mean()
        per_model = sets.merge(by_model, on="model", how="inner")
        parts.append(per_model.assign(level="model", case_id="", sample=-1))
    points = pd.concat(parts, ignore_index=True).reindex(columns=POINTS_COLUMNS)
    points["sample"] = points["sample"].astype("int64")
    return points.sort_values(["metric", "criterion", "level"], kind="stable").reset_index(drop=True)


def metric_validity(
    per_sample: pd.DataFrame, ratings: pd.DataFrame, summary: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Spearman correlation of each automatic metric with the reader scores, per metric × criterion.

    Per image: each image's score is the mean over readers of its first-read score (calibration and
    flag rows dropped), joined to the metric on (model, case_id, sample); ``rho_image``, ``p_image``
    and ``n_image`` (images with both). Per model: the mean metric and the mean image score of each
    model over those same joined images; ``rho_model``, ``p_model``, ``n_model`` (models). A higher
    rho means the metric ranks as readers do; a metric where lower is better should correlate
    negatively. rho is NaN for fewer than 3 points or a constant side.

    With ``summary`` (summary.csv's rows: model, metric, value, optionally group), the set-level
    metrics it has and ``per_sample`` lacks (FID, FXD, KID, PRDC, ...) get a per-model row too: the
    all-cases value of each model against its mean image score over all its rated images; they have
    no per-image values, so ``rho_image``/``p_image`` are NaN and ``n_image`` is 0. A model without a
    value (real has no FID) is left out.
    """
    return correlate_points(validity_points(per_sample, ratings, summary))


def correlate_points(points: pd.DataFrame) -> pd.DataFrame:
    """:func:`metric_validity`'s table from its :func:`validity_points` (for callers that draw the
    points too and should not join them twice)."""
    rows = []
    nan = float("nan")
    value = points["value"].to_numpy(dtype=np.float64)
    score = points["score"].to_numpy(dtype=np.float64)
    is_image = (points["level"] == "image").to_numpy()
    model_code = pd.factorize(points["model"])[0]
    groups = points.groupby(["metric", "criterion"], sort=True).indices
    # A metric is either per sample (image rows) or set-level (one model row per model), never both.
    for (metric, criterion), idx in sorted(groups.items()):
        images = idx[is_image[idx]]
        rho_i, p_i = _spearman(value[images], score[images]) if images.size else (nan, nan)
        used = images if images.size else idx
        _, which = np.unique(model_code[used], return_inverse=True)
        count = np.bincount(which)
        rho_m, p_m = _spearman(
            np.bincount(which, weights=value[used]) / count, np.bincount(which, weights=score[used]) / count
        )
        rows.append(
            {
                "metric": metric,
                "criterion": criterion,
                "rho_image": rho_i,
                "p_image": p_i,
                "n_image": int(images.size),
                "rho_model": rho_m,
                "p_model": p_m,
                "n_model": int(count.size),
            }
        )
    return pd.DataFrame(rows, columns=VALIDITY_COLUMNS)
