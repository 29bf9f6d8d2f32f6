"""Agreement between real and generated Norberg angles of the same cases: pure numpy kernels.

Each pair is one hip side of one case: the Norberg angle measured on the real radiograph and on the
image generated for that case (or, for the ``real`` row of a run, the annotation and the detector on the
same real image). Every statistic is given per side (``norberg_r:left``, ``norberg_r:right``: the suite's
``metric:subgroup`` convention, as ``pathology_auc:Nodule``) and pooled (bare name) over both sides'
pairs together.

* ``norberg_r``: Pearson correlation of generated against real angles.
* ``norberg_r2``: what the canine-hip paper reports as "R-squared", the square of Pearson r. The paper
  describes it as "the proportion of variance in the dependent variable predictable from the independent
  variables" (section 4.2.2), i.e. the R² of a least-squares line of generated on real angles, and five
  of the six values in its Table 1 are the square of the correlation beside it to within rounding (LLCM
  left 0.2026² = 0.0410 vs 0.0411, Stable Diffusion right 0.2747² = 0.0755 vs 0.0754, Dreambooth right
  0.1338² = 0.0179). The exception is Stable Diffusion left: r = 0.1307 gives r² in [0.01707, 0.01710),
  i.e. 0.0171, where 0.0170 is printed. It is not agreement with the identity line: a generator that is biased or rescales
  the angles can still score 1, which is why MAE, Bland–Altman and ICC are reported beside it.
* ``norberg_mae``: mean absolute difference, degrees.
* Bland–Altman (Bland & Altman 1986): ``norberg_ba_bias`` = mean of generated − real, and the 95% limits
  of agreement ``norberg_ba_loa_low`` / ``norberg_ba_loa_high`` = bias ∓ 1.96 SD of the differences
  (SD with ddof=1).
* ``norberg_icc``: ICC(2,1) (Shrout & Fleiss 1979; McGraw & Wong 1996 "ICC(A,1)"): two-way random
  effects, absolute agreement, single rater, the two "raters" being real and generated.
* ``norberg_kappa``: Cohen's κ on the normal/dysplastic call, normal = angle >= 105° (an angle of exactly
  105.0 is normal; no tolerance is applied, so round to the reading precision before scoring if needed).

The two sides of one dog are not independent (same dog, same image, same generation), so the pooled
statistics treat them as 2n pairs for the point estimate but :func:`norberg_table` bootstraps *cases*:
a resampled case brings both its sides, and every CI (per side and pooled) comes from the same case
resamples. The ``n`` of a table row is the number of cases, the resampling unit (as for the pathology
rows); the number of pairs is reported beside it.

Degenerate input is not an error: a statistic that is undefined (fewer than 3 pairs, a constant angle
set for r, a single class for κ) is NaN and the reason is returned with it. Malformed input (mismatched
lengths, NaN or out-of-range angles, unknown sides, duplicate case/side pairs) raises ValueError saying
what to fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.stats import case_resample_weights, percentile_ci

__all__ = [
    "LOA_Z",
    "METRIC_ORDER",
    "MIN_PAIRS",
    "NORMAL_THRESHOLD_DEG",
    "SIDES",
    "Agreement",
    "NorbergRow",
    "measure_agreement",
    "norberg_agreement",
    "norberg_summary_rows",
    "norberg_table",
    "side_metric_name",
]

# Same values as audit.norberg.geometry (kept here so this kernel depends on nothing but numpy).
SIDES: tuple[str, ...] = ("left", "right")
NORMAL_THRESHOLD_DEG = 105.0
# Bland & Altman's 95% limits use the normal quantile 1.96 (not 2, not a t quantile).
LOA_Z = 1.96
# Two points always correlate perfectly (r = ±1) and leave one degree of freedom for the SD, so no
# statistic is reported below three pairs.
MIN_PAIRS = 3

METRIC_ORDER: tuple[str, ...] = (
    "norberg_r",
    "norberg_r2",
    "norberg_mae",
    "norberg_ba_bias",
    "norberg_ba_loa_low",
    "norberg_ba_loa_high",
    "norberg_icc",
    "norberg_kappa",
)

# Above this many (resample × pair) elements the bootstrap works through the resamples in blocks.
_BLOCK_ELEMENTS = 2**20


# ------------------------------------------------------------------------------------------------ names


def side_metric_name(metric: str, side: str) -> str:
    """The name of one side's value, e.g. ``norberg_r:left``."""
    return f"{metric}:{side}"


# ------------------------------------------------------------------------------------------- validation


def _first(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f" … {rows.size - limit} more" if rows.size > limit else "")


def _as_angles(values: Any, name: str, labels: Sequence[str] | None = None) -> np.ndarray:
    """``values`` as float64 (N,) Norberg angles in degrees, checked; ``labels`` name the rows in errors."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of angles (one per pair); got shape {a.shape}")
    if a.size and not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must hold numbers (angles in degrees); got dtype {a.dtype}")
    a = a.astype(np.float64)

    def where(rows: np.ndarray) -> str:
        if labels is None:
            return f"index {_first(rows)}"
        more = f" … {rows.size - 10} more" if rows.size > 10 else ""
        return "; ".join(labels[int(r)] for r in rows[:10]) + more

    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} NaN or infinite angle(s) ({where(bad)}). An angle is NaN when its "
            "landmarks could not be found: fix the landmarks or drop those pairs from both sets"
        )
    bad = np.flatnonzero((a < 0.0) | (a > 180.0))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} angle(s) outside [0, 180] degrees ({where(bad)}; range "
            f"{a.min():g} to {a.max():g}). Norberg angles are in degrees between 0 and 180"
        )
    return a


def _check_pairs(real: Any, gen: Any, labels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    x = _as_angles(real, "real", labels)
    y = _as_angles(gen, "gen", labels)
    if x.shape != y.shape:
        raise ValueError(
            f"real and gen must hold the same pairs: got {x.size} real and {y.size} generated angles. "
            "Align them by case and side first"
        )
    return x, y


# ------------------------------------------------------------------------------------------- statistics


def _statistics(x: np.ndarray, y: np.ndarray, w: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Every statistic per weight vector: (B,) arrays from pairs ``x``, ``y`` (R,) and counts ``w`` (B, R).

    With integer counts each value equals the statistic of the data set in which pair r appears w[b, r]
    times (a bootstrap resample), so the point estimate is the special case of one all-ones row.
    """
    m = w.sum(axis=1)
    live = w > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (w @ x) / m
        my = (w @ y) / m
        dx = x[None, :] - mx[:, None]
        dy = y[None, :] - my[:, None]
        # Exact constancy (over the pairs drawn), so a constant set is never mistaken for one with a
        # rounding-error variance.
        x_const = _lowest(x, live) == -_lowest(-x, live)
        y_const = _lowest(y, live) == -_lowest(-y, live)
        sxx = np.where(x_const, 0.0, (w * dx * dx).sum(axis=1))
        syy = np.where(y_const, 0.0, (w * dy * dy).sum(axis=1))
        sxy = np.where(x_const | y_const, 0.0, (w * dx * dy).sum(axis=1))

        r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
        r = np.where(x_const | y_const, np.nan, r)

        d = y - x
        bias = (w @ d) / m
        dd = d[None, :] - bias[:, None]
        sd = np.sqrt((w * dd * dd).sum(axis=1) / (m - 1.0))
        mae = (w @ np.abs(d)) / m

        # ICC(2,1) for k = 2 raters: with s = x + y, MSR = var(s)/2, MSE = var(d)/2 and
        # MSC = m·mean(d)²/2, so (MSR − MSE) / (MSR + MSE + 2(MSC − MSE)/m) reduces to the line below
        # (var(s) − var(d) = 4 cov(x, y)). Its denominator is 0 only when all 2m angles are equal.
        var_d = (sxx + syy - 2.0 * sxy) / (m - 1.0)
        num = 4.0 * sxy / (m - 1.0)
        den = (sxx + syy + 2.0 * sxy) / (m - 1.0) + var_d + 2.0 * bias**2 - 2.0 * var_d / m
        icc = np.where(x_const & y_const & (bias == 0.0), np.nan, num / den)

        # Cohen's κ from exact counts, so "one class only" is an exact zero denominator:
        # κ = (m·agree − Σ_c n_real,c n_gen,c) / (m² − Σ_c n_real,c n_gen,c).
        a = (x >= threshold).astype(np.float64)
        b = (y >= threshold).astype(np.float64)
        na = w @ a
        nb = w @ b
        agree = w @ (a * b + (1.0 - a) * (1.0 - b))
        chance = na * nb + (m - na) * (m - nb)
        kden = m * m - chance
        kappa = np.where(kden > 0, (m * agree - chance) / kden, np.nan)

    out = {
        "norberg_r": r,
        "norberg_r2": r * r,
        "norberg_mae": mae,
        "norberg_ba_bias": bias,
        "norberg_ba_loa_low": bias - LOA_Z * sd,
        "norberg_ba_loa_high": bias + LOA_Z * sd,
        "norberg_icc": icc,
        "norberg_kappa": kappa,
    }
    few = m < MIN_PAIRS
    return {k: np.where(few, np.nan, v) for k, v in out.items()}


def _lowest(v: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Per row of ``live`` (B, R), the smallest of ``v`` (R,) over the pairs drawn (inf when none)."""
    return np.where(live, v, np.inf).min(axis=1, initial=np.inf)


def _reasons(x: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, str]:
    """Why each undefined statistic of the pairs (x, y) is NaN; empty when all are defined."""
    n = x.size
    if n < MIN_PAIRS:
        why = "no pairs" if n == 0 else f"only {n} pair(s); agreement statistics need at least {MIN_PAIRS}"
        return dict.fromkeys(METRIC_ORDER, why)
    out: dict[str, str] = {}
    constant = [
        f"{name} angles are all {v[0]:g}°" for name, v in (("real", x), ("generated", y)) if (v == v[0]).all()
    ]
    if constant:
        why = " and ".join(constant) + "; a correlation needs spread in both sets"
        out["norberg_r"] = out["norberg_r2"] = why
    if (x == x[0]).all() and (y == x[0]).all():
        out["norberg_icc"] = f"every real and generated angle is {x[0]:g}°: nothing to partition"
    a, b = x >= threshold, y >= threshold
    if a.all() == a.any() and b.all() == b.any() and a[0] == b[0]:
        call = "normal" if a[0] else "dysplastic"
        out["norberg_kappa"] = (
            f"every real and generated angle is {call} (normal = >= {threshold:g}°): κ needs two classes"
        )
    return out


@dataclass(frozen=True)
class Agreement:
    """Agreement statistics of one set of (real, generated) angle pairs.

    ``values`` maps the bare metric names of :data:`METRIC_ORDER` to floats (NaN where undefined);
    ``undefined`` maps each NaN metric to the reason; ``n_pairs`` counts the pairs.
    """

    values: dict[str, float]
    undefined: dict[str, str]
    n_pairs: int


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 < t < 180.0:
        raise ValueError(f"threshold must be an angle in degrees between 0 and 180; got {threshold!r}")
    return t


def measure_agreement(real: Any, gen: Any, *, threshold: float = NORMAL_THRESHOLD_DEG) -> Agreement:
    """Every agreement statistic between ``real`` and ``gen`` angles (degrees, (N,) each, pair i being
    the same case and side), with the reason for each undefined one."""
    threshold = _check_threshold(threshold)
    x, y = _check_pairs(real, gen)
    stats = _statistics(x, y, np.ones((1, x.size)), threshold)
    values = {k: float(v[0]) for k, v in stats.items()}
    reasons = _reasons(x, y, threshold)
    undefined = {k: reasons.get(k, "undefined") for k, v in values.items() if math.isnan(v)}
    return Agreement(values=values, undefined=undefined, n_pairs=int(x.size))


def norberg_agreement(real: Any, gen: Any, *, threshold: float = NORMAL_THRESHOLD_DEG) -> dict[str, float]:
    """``{metric: value}`` for one set of (real, generated) pairs; see :func:`measure_agreement` for the
    reasons behind NaN values."""
    return measure_agreement(real, gen, threshold=threshold).values


# ------------------------------------------------------------------------------------------------ table


@dataclass(frozen=True)
class NorbergRow:
    """One metric of :func:`norberg_table`: value with its percentile-bootstrap CI over cases.

    ``n`` is the number of cases with at least one pair in the row (the resampling unit); ``n_pairs``
    the number of pairs. ``note`` says why the value or its CI is NaN ("" otherwise).
    """

    metric: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    n_pairs: int
    note: str = ""


def _check_labels(case_ids: Any, sides: Any, real: Any, gen: Any) -> tuple[np.ndarray, np.ndarray]:
    cases = np.asarray(case_ids)
    side = np.asarray(sides)
    shapes = {
        "case_ids": cases.shape,
        "sides": side.shape,
        "real": np.shape(real),
        "gen": np.shape(gen),
    }
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
        shown = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise ValueError(
            f"case_ids, sides, real and gen must be 1-D and the same length (one entry per pair); got "
            f"shapes {shown}. Align the real and generated angles by case and side first"
        )
    cases = cases.astype(str)
    side = side.astype(str)
    unknown = sorted(set(side.tolist()) - set(SIDES))
    if unknown:
        raise ValueError(
            f"unknown side(s) {', '.join(map(repr, unknown))}; sides are {', '.join(SIDES)} (lower case)"
        )
    keys = np.char.add(np.char.add(cases, "\0"), side)
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    dupes = first[counts > 1]
    if dupes.size:
        shown = ", ".join(f"{str(cases[i])!r} {side[i]}" for i in np.sort(dupes)[:10])
        raise ValueError(
            f"{dupes.size} case/side pair(s) appear more than once ({shown}); give one angle per case and "
            "side (average repeated readings first)"
        )
    return cases, side


def norberg_table(
    case_ids: Any,
    sides: Any,
    real: Any,
    gen: Any,
    *,
    rng: np.random.Generator,
    resamples: int = 1000,
    confidence: float = 0.95,
    threshold: float = NORMAL_THRESHOLD_DEG,
) -> list[NorbergRow]:
    """Every metric pooled and per side, with percentile-bootstrap CIs that resample cases.

    Row i of ``case_ids``, ``sides`` ("left"/"right"), ``real`` and ``gen`` is one pair. One draw of
    ``resamples`` case resamples (:func:`audit.stats.case_resample_weights`, from ``rng``) serves every
    metric and side, and a drawn case brings all its pairs. CIs are :func:`audit.stats.percentile_ci` of
    the replicates (NaN replicates, where a resample made the statistic undefined, are dropped; NaN when
    fewer than half are defined). Rows come metric by metric in :data:`METRIC_ORDER`, each as pooled,
    ``:left``, ``:right``.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy Generator (np.random.default_rng(seed)); got {type(rng).__name__}"
        )
    if isinstance(resamples, bool) or not isinstance(resamples, int | np.integer) or resamples < 2:
        raise ValueError(f"resamples must be an integer >= 2; got {resamples!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    threshold = _check_threshold(threshold)
    cases, side = _check_labels(case_ids, sides, real, gen)
    labels = [f"row {i}: case {c!r} {s}" for i, (c, s) in enumerate(zip(cases.tolist(), side.tolist()))]
    x, y = _check_pairs(real, gen, labels)

    unique_cases, row_case = np.unique(cases, return_inverse=True)
    counts = case_resample_weights(rng, unique_cases.size, int(resamples)) if unique_cases.size else None

    subsets = [("", np.ones(x.size, dtype=bool))] + [(s, side == s) for s in SIDES]
    results: dict[str, list[NorbergRow]] = {k: [] for k in METRIC_ORDER}
    for label, mask in subsets:
        xs, ys = x[mask], y[mask]
        point = measure_agreement(xs, ys, threshold=threshold)
        n_cases = int(np.unique(row_case[mask]).size)
        if counts is not None and xs.size:
            boot = _bootstrap(xs, ys, counts[:, row_case[mask]], threshold)
        else:
            boot = {k: np.full(int(resamples), np.nan) for k in METRIC_ORDER}
        for metric in METRIC_ORDER:
            value = point.values[metric]
            note = point.undefined.get(metric, "")
            lo, hi = (math.nan, math.nan) if math.isnan(value) else percentile_ci(boot[metric], confidence)
            if not note and math.isnan(lo):
                defined = int(np.count_nonzero(~np.isnan(boot[metric])))
                note = (
                    f"no CI: the statistic was defined in only {defined} of {int(resamples)} case resamples "
                    "(too few cases or too little spread)"
                )
            name = side_metric_name(metric, label) if label else metric
            results[metric].append(NorbergRow(name, value, lo, hi, n_cases, int(xs.size), note))
    return [row for metric in METRIC_ORDER for row in results[metric]]


def _bootstrap(x: np.ndarray, y: np.ndarray, weights: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """:func:`_statistics` over the rows of ``weights`` (B, R), in blocks that bound the temporaries."""
    block = max(1, _BLOCK_ELEMENTS // max(1, x.size))
    parts = [_statistics(x, y, weights[s : s + block], threshold) for s in range(0, weights.shape[0], block)]
    return {k: np.concatenate([p[k] for p in parts]) for k in METRIC_ORDER}


def norberg_summary_rows(
    model: str, table: Sequence[NorbergRow], *, group: str = "", evaluator: str = ""
) -> list[dict[str, Any]]:
    """summary.csv-shaped rows (model, metric, value, ci_low, ci_high, n, group, evaluator) of a
    :func:`norberg_table`; ``n`` is the number of cases. The runner adds higher_is_better and unit."""
    return [
        {
            "model": model,
            "metric": row.metric,
            "value": float(row.value),
            "ci_low": float(row.ci_low),
            "ci_high": float(row.ci_high),
            "n": int(row.n),
            "group": group,
            "evaluator": evaluator,
        }
        for row in table
    ]
