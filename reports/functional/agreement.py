"""Reader agreement on 1-5 ordinal scores, and the visual Turing test (pure functions, torch-free).

Inputs are long frames with one row per rating (the reader-study export: ``reader``, ``case_id`` or
``item``, ``score``, ...), filtered by the caller to one criterion and, for inter-reader agreement, to
one read per reader (``read_number == 1``) and without calibration items. Intra-reader agreement is the
same computation with the read as the rater: one reader's rows, ``rater="read_number"``.

- :func:`icc`: ICC(2,1) and ICC(2,k) (Shrout & Fleiss 1979; McGraw & Wong's ICC(A,1)/ICC(A,k)).
- :func:`weighted_kappa`, :func:`mean_pairwise_kappa`: Cohen's weighted kappa on a fixed label set.
- :func:`krippendorff_alpha`: Krippendorff's alpha from the coincidence matrix, missing ratings allowed.
- :func:`turing_stats`, :func:`turing_by_reader`: accuracy, sensitivity, specificity and AUC of
  real-vs-synthetic answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

SCORE_LABELS = (1, 2, 3, 4, 5)
CONFIDENCE_LEVELS = 5


def _numeric(values: pd.Series, name: str) -> pd.Series:
    """float64 with NaN for missing (the export's nullable Int64 ``<NA>`` included)."""
    try:
        return pd.to_numeric(values).astype("float64")
    except (TypeError, ValueError) as err:
        raise ValueError(f"column {name!r} must be numeric: {err}") from err


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame in long form, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {missing}; the frame has {list(frame.columns)}. "
            "Pass the column names as arguments (e.g. target='case_id')."
        )


def _wide(frame: pd.DataFrame, target: str, rater: str, score: str, what: str) -> pd.DataFrame:
    """targets × raters table of scores, NaN where a rater did not rate a target."""
    _require_columns(frame, (target, rater, score), what)
    long = frame[[target, rater]].assign(_score=_numeric(frame[score], score))
    long = long[long._score.notna()]
    dup = long.duplicated([target, rater], keep=False)
    if dup.any():
        first = long[dup].iloc[0]
        rows = list(long.index[dup & (long[target] == first[target]) & (long[rater] == first[rater])])
        raise ValueError(
            f"{what}: {target}={first[target]!r} is scored more than once by {rater}={first[rater]!r} "
            f"(rows {rows}); agreement needs one score per ({target}, {rater}). Filter to one criterion "
            "and one read (read_number == 1) first, or use rater='read_number' for intra-reader agreement."
        )
    return long.pivot(index=target, columns=rater, values="_score")


# --- intraclass correlation -------------------------------------------------------------------------


def icc(
    ratings: pd.DataFrame,
    target: str = "case",
    rater: str = "reader",
    score: str = "score",
    confidence: float = 0.95,
) -> dict[str, float | int | tuple[float, float]]:
    """ICC(2,1) and ICC(2,k): two-way random effects, absolute agreement (Shrout & Fleiss 1979).

    Complete cases only: a target enters when every rater present in ``ratings`` scored it; the others
    are dropped and counted in ``n_targets_dropped`` (rows with a missing score count as not rated).
    With n targets, k raters and the two-way ANOVA mean squares for targets (MSR), raters (MSC) and
    error (MSE)::

        ICC(2,1) = (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)
        ICC(2,k) = (MSR - MSE) / (MSR + (MSC - MSE) / n)

    The ICC(2,1) interval is McGraw & Wong's (1996) F-based interval with Satterthwaite degrees of
    freedom; the ICC(2,k) interval is its Spearman-Brown step-up, as pingouin's ``intraclass_corr``
    computes them. ``F``/``pvalue`` test ICC = 0 (F = MSR / MSE on n-1 and (n-1)(k-1) df). Scores that
    do not vary at all give NaN (0/0), and a zero error mean square leaves the interval undefined (NaN).

    Raises ValueError for fewer than 2 raters or fewer than 2 complete targets, naming the counts.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    wide = _wide(ratings, target, rater, score, "icc")
    k = wide.shape[1]
    if k < 2:
        raise ValueError(f"icc: needs at least 2 raters in column {rater!r}, found {k}")
    complete = wide.dropna(axis=0, how="any")
    n = complete.shape[0]
    if n < 2:
        raise ValueError(
            f"icc: needs at least 2 targets scored by all {k} raters, found {n} of {wide.shape[0]}; "
            "ICC is complete-case: drop raters who scored few targets, or use krippendorff_alpha, "
            "which tolerates missing ratings."
        )
    y = complete.to_numpy(dtype=np.float64)
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((y - grand) ** 2).sum() - ss_rows - ss_cols
    df1, df_cols, df2 = n - 1, k - 1, (n - 1) * (k - 1)
    msr, msc, mse = ss_rows / df1, ss_cols / df_cols, max(ss_err, 0.0) / df2

    with np.errstate(divide="ignore", invalid="ignore"):
        icc1 = np.float64(msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
        icck = np.float64(msr - mse) / (msr + (msc - mse) / n)
        f_stat = np.float64(msr) / mse
        # Satterthwaite df of the denominator's linear combination of mean squares (McGraw & Wong, A,1).
        fj = np.float64(msc) / mse
        vn = df2 * (k * icc1 * fj + n * (1 + (k - 1) * icc1) - k * icc1) ** 2
        vd = df1 * k**2 * icc1**2 * fj**2 + (n * (1 + (k - 1) * icc1) - k * icc1) ** 2
        v = vn / vd
    alpha = 1.0 - confidence
    lo = hi = float("nan")
    if np.isfinite(v) and v > 0 and mse > 0:
        f_up = sps.f.ppf(1 - alpha / 2, df1, v)
        f_lo = sps.f.ppf(1 - alpha / 2, v, df1)
        lo = n * (msr - f_up * mse) / (f_up * (k * msc + (k * n - k - n) * mse) + n * msr)
        hi = n * (f_lo * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f_lo * msr)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo_k = np.float64(lo) * k / (1 + lo * (k - 1))
        hi_k = np.float64(hi) * k / (1 + hi * (k - 1))
    pvalue = float(sps.f.sf(f_stat, df1, df2)) if np.isfinite(f_stat) else float("nan")
    if np.isinf(f_stat):
        pvalue = 0.0
    return {
        "icc2_1": float(icc1),
        "icc2_1_ci": (float(lo), float(hi)),
        "icc2_k": float(icck),
        "icc2_k_ci": (float(lo_k), float(hi_k)),
        "F": float(f_stat),
        "df1": int(df1),
        "df2": int(df2),
        "pvalue": pvalue,
        "ms_targets": float(msr),
        "ms_raters": float(msc),
        "ms_error": float(mse),
        "n_targets": int(n),
        "n_raters": int(k),
        "n_targets_dropped": int(wide.shape[0] - n),
    }


# --- weighted kappa ---------------------------------------------------------------------------------

Weights = Literal["quadratic", "linear"] | None


def _label_index(values: np.ndarray, labels: np.ndarray, name: str) -> np.ndarray:
    eq = values[:, None] == labels[None, :]
    bad = ~eq.any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"weighted_kappa: {name}[{i}] = {float(values[i])} is not one of the labels {labels.tolist()} "
            f"({int(bad.sum())} such value(s)); drop missing ratings first or pass the full label set."
        )
    return eq.argmax(axis=1)


def weighted_kappa(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    labels: Sequence[float] = SCORE_LABELS,
    weights: Weights = "quadratic",
) -> float:
    """Cohen's weighted kappa of two raters' paired ratings: ``1 - sum(W*O) / sum(W*E)``.

    O is the K×K table of observed proportions over ``labels`` (in the given order), E the outer
    product of its margins, and W the disagreement weights on label positions: ``(i-j)^2/(K-1)^2``
    (quadratic), ``|i-j|/(K-1)`` (linear) or ``i != j`` (None: unweighted). The labels are fixed, so a
    score level nobody used still spaces the weights (with 1-5 scores, 2 vs 4 is always 2 steps apart).
    NaN when the expected disagreement is 0 (both raters gave one and the same level throughout).
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"weighted_kappa: a and b must be paired, got {x.size} and {y.size} ratings")
    if x.size == 0:
        raise ValueError("weighted_kappa: no ratings")
    lab = np.asarray(labels, dtype=np.float64)
    K = lab.size
    if K < 2 or np.unique(lab).size != K:
        raise ValueError(f"weighted_kappa: labels must be at least 2 distinct values, got {list(labels)}")
    ia, ib = _label_index(x, lab, "a"), _label_index(y, lab, "b")
    observed = np.bincount(ia * K + ib, minlength=K * K).reshape(K, K) / x.size
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    pos = np.arange(K, dtype=np.float64)
    steps = np.abs(pos[:, None] - pos[None, :])
    if weights == "quadratic":
        w = (steps / (K - 1)) ** 2
    elif weights == "linear":
        w = steps / (K - 1)
    elif weights is None:
        w = (steps > 0).astype(np.float64)
    else:
        raise ValueError(f"weighted_kappa: weights must be 'quadratic', 'linear' or None, got {weights!r}")
    den = (w * expected).sum()
    if den == 0:
        return float("nan")
    return float(1.0 - (w * observed).sum() / den)


class PairwiseKappa(NamedTuple):
    mean: float
    """Mean kappa over the reader pairs whose kappa is defined (NaN when none is)."""
    pairs: pd.DataFrame
    """One row per reader pair: rater_a, rater_b, n_shared, kappa."""


def mean_pairwise_kappa(
    frame: pd.DataFrame,
    target: str = "case",
    rater: str = "reader",
    score: str = "score",
    labels: Sequence[float] = SCORE_LABELS,
    weights: Weights = "quadratic",
    min_shared: int = 2,
) -> PairwiseKappa:
    """Weighted kappa of every pair of raters on the targets both scored, and its unweighted mean.

    A pair sharing fewer than ``min_shared`` targets, or whose kappa is undefined (no expected
    disagreement), has kappa NaN in the table and is left out of the mean.
    """
    wide = _wide(frame, target, rater, score, "mean_pairwise_kappa")
    if wide.shape[1] < 2:
        raise ValueError(f"mean_pairwise_kappa: needs at least 2 raters in {rater!r}, found {wide.shape[1]}")
    raters = list(wide.columns)
    values = wide.to_numpy(dtype=np.float64)
    rows = []
    for i in range(len(raters)):
        for j in range(i + 1, len(raters)):
            both = ~np.isnan(values[:, i]) & ~np.isnan(values[:, j])
            n_shared = int(both.sum())
            kappa = float("nan")
            if n_shared >= max(min_shared, 1):
                kappa = weighted_kappa(values[both, i], values[both, j], labels=labels, weights=weights)
            rows.append((raters[i], raters[j], n_shared, kappa))
    pairs = pd.DataFrame(rows, columns=["rater_a", "rater_b", "n_shared", "kappa"])
    defined = pairs.kappa.dropna()
    return PairwiseKappa(float(defined.mean()) if len(defined) else float("nan"), pairs)


# --- Krippendorff's alpha ---------------------------------------------------------------------------


def _value_counts(data: pd.DataFrame | np.ndarray, target: str, rater: str, score: str):
    """(values, units × values counts) from a long frame or a raters × units matrix with NaN gaps."""
    if isinstance(data, pd.DataFrame):
        wide = _wide(data, target, rater, score, "krippendorff_alpha")
        matrix = wide.to_numpy(dtype=np.float64).T
    else:
        matrix = np.asarray(data, dtype=np.float64)
        if matrix.ndim != 2:
            raise ValueError(
                f"krippendorff_alpha: a reliability matrix must be 2-D (raters × units), got shape "
                f"{matrix.shape}"
            )
    if np.isinf(matrix).any():
        raise ValueError("krippendorff_alpha: ratings must be finite (use NaN for a missing rating)")
    values = np.unique(matrix[~np.isnan(matrix)])
    counts = (matrix.T[:, :, None] == values[None, None, :]).sum(axis=1).astype(np.float64)
    return values, counts


def krippendorff_alpha(
    data: pd.DataFrame | np.ndarray,
    level: Literal["ordinal", "interval", "nominal"] = "ordinal",
    target: str = "case",
    rater: str = "reader",
    score: str = "score",
) -> float:
    """Krippendorff's alpha, ``1 - D_o / D_e``, from the coincidence matrix (Krippendorff 2011).

    ``data`` is a long frame (columns ``target``, ``rater``, ``score``) or a raters × units
    reliability matrix with NaN for a missing rating. Units with fewer than two ratings are not
    pairable and drop out. With n_u pairable ratings in unit u, the coincidences are
    ``o_ck = sum_u (n_uc n_uk - [c=k] n_uc) / (n_u - 1)``, the value totals ``n_c = sum_k o_ck``, and
    ``alpha = 1 - (n - 1) sum o_ck d_ck / sum n_c n_k d_ck``. Distances d: nominal ``[c != k]``,
    interval ``(c - k)^2``, ordinal ``(sum_{g=c..k} n_g - (n_c + n_k)/2)^2``, i.e. the squared
    difference of the values' mid-ranks among the pooled pairable ratings (unused levels carry no
    rank, so the label set need not be given).

    NaN when the ratings have no expected disagreement (a single value throughout); ValueError when no
    unit has two ratings.
    """
    if level not in ("ordinal", "interval", "nominal"):
        raise ValueError(
            f"krippendorff_alpha: level must be 'ordinal', 'interval' or 'nominal', got {level!r}"
        )
    values, counts = _value_counts(data, target, rater, score)
    per_unit = counts.sum(axis=1)
    pairable = per_unit >= 2
    if not pairable.any():
        raise ValueError("krippendorff_alpha: no unit has ratings from two raters; nothing to compare")
    c = counts[pairable]
    inv = 1.0 / (per_unit[pairable] - 1.0)
    coincidence = (c * inv[:, None]).T @ c - np.diag((c * inv[:, None]).sum(axis=0))
    n_c = coincidence.sum(axis=0)
    n = n_c.sum()
    if level == "nominal":
        d = 1.0 - np.eye(values.size)
    elif level == "interval":
        d = (values[:, None] - values[None, :]) ** 2
    else:
        midrank = np.cumsum(n_c) - n_c / 2.0
        d = (midrank[:, None] - midrank[None, :]) ** 2
    expected = (np.outer(n_c, n_c) * d).sum()
    if expected == 0:
        return float("nan")
    return float(1.0 - (n - 1.0) * (coincidence * d).sum() / expected)


# --- visual Turing test -----------------------------------------------------------------------------


def _as_bool(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr.ravel()
    flat = arr.ravel()
    ok = np.isin(flat, [0, 1]) if flat.dtype.kind in "iuf" else np.zeros(flat.size, dtype=bool)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"turing_stats: {name}[{i}] = {str(flat[i])!r} is not a boolean (True/False or 1/0)")
    return flat.astype(bool)


def turing_score(answer_is_synthetic: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """The 10-level "synthetic-ness" score: synthetic at confidence c → 5 + c, real at c → 6 - c.

    So "certainly real" is 1, the two guesses are 5 (real) and 6 (synthetic), "certainly synthetic" 10.
    """
    ans = np.asarray(answer_is_synthetic, dtype=bool)
    conf = np.asarray(confidence, dtype=np.float64)
    return np.where(ans, CONFIDENCE_LEVELS + conf, CONFIDENCE_LEVELS + 1 - conf)


def turing_stats(
    truth_is_synthetic: Sequence[bool] | np.ndarray,
    answer_is_synthetic: Sequence[bool] | np.ndarray,
    confidence: Sequence[int] | np.ndarray,
) -> dict[str, float | int]:
    """How well answers separate synthetic from real images; "positive" means synthetic.

    accuracy = share of correct answers; sensitivity = synthetic images called synthetic; specificity
    = real images called real; auc = ROC AUC of :func:`turing_score` (answer × 1-5 confidence) for
    synthetic vs real, by the Mann-Whitney formula with ties counted 1/2: the probability that a random
    synthetic image scores above a random real one. 0.5 means readers cannot tell the images apart.
    Sensitivity, specificity and auc are NaN when a class is absent.
    """
    truth = _as_bool(truth_is_synthetic, "truth_is_synthetic")
    answer = _as_bool(answer_is_synthetic, "answer_is_synthetic")
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    if not truth.size == answer.size == conf.size:
        raise ValueError(
            f"turing_stats: inputs must be paired, got {truth.size} truths, {answer.size} answers and "
            f"{conf.size} confidences"
        )
    if truth.size == 0:
        raise ValueError("turing_stats: no answers")
    bad = ~np.isin(conf, np.arange(1, CONFIDENCE_LEVELS + 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"turing_stats: confidence[{i}] = {float(conf[i])} is not an integer 1-{CONFIDENCE_LEVELS} "
            f"({int(bad.sum())} such value(s))"
        )
    n_syn, n_real = int(truth.sum()), int((~truth).sum())
    level = turing_score(answer, conf).astype(np.int64) - 1  # 0..9
    pos = np.bincount(level[truth], minlength=2 * CONFIDENCE_LEVELS).astype(np.float64)
    neg = np.bincount(level[~truth], minlength=2 * CONFIDENCE_LEVELS).astype(np.float64)
    below = np.cumsum(neg) - neg
    nan = float("nan")
    return {
        "n": int(truth.size),
        "n_synthetic": n_syn,
        "n_real": n_real,
        "accuracy": float((truth == answer).mean()),
        "sensitivity": float(answer[truth].mean()) if n_syn else nan,
        "specificity": float((~answer[~truth]).mean()) if n_real else nan,
        "auc": float((pos * (below + 0.5 * neg)).sum() / (n_syn * n_real)) if n_syn and n_real else nan,
    }


def turing_by_reader(
    frame: pd.DataFrame,
    reader: str = "reader",
    model: str = "model",
    answer: str = "turing_answer",
    confidence: str = "confidence",
    real_model: str = "real",
) -> pd.DataFrame:
    """:func:`turing_stats` per reader from a long frame (one row per answer), indexed by reader.

    An image is real when ``model == real_model`` and synthetic otherwise; ``answer`` holds
    ``"real"``/``"synthetic"``. Rows without an answer (the export's rows for the 1-5 criteria) are
    skipped; an answer without a 1-5 confidence is an error.
    """
    _require_columns(frame, (reader, model, answer, confidence), "turing_by_reader")
    rows = frame[frame[answer].notna()]
    unknown = ~rows[answer].isin(["real", "synthetic"])
    if unknown.any():
        i = rows.index[unknown][0]
        raise ValueError(
            f"turing_by_reader: row {i}: {answer} = {rows.at[i, answer]!r}; expected 'real' or 'synthetic'"
        )
    conf = _numeric(rows[confidence], confidence)
    if conf.isna().any():
        i = conf.index[conf.isna()][0]
        raise ValueError(f"turing_by_reader: row {i} has a Turing answer but no {confidence!r} (1-5)")
    out = {}
    for name, group in rows.groupby(reader, sort=True):
        try:
            out[name] = turing_stats(
                group[model].to_numpy() != real_model,
                group[answer].to_numpy() == "synthetic",
                conf.loc[group.index].to_numpy(),
            )
        except ValueError as err:
            raise ValueError(f"turing_by_reader: {reader} = {name!r}: {err}") from err
    columns = ["n", "n_synthetic", "n_real", "accuracy", "sensitivity", "specificity", "auc"]
    return pd.DataFrame.from_dict(out, orient="index", columns=columns).rename_axis(reader)
