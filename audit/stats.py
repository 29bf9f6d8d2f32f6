"""Aggregation statistics shared by the runner and the reports (numpy only, torch-free)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_mean_ci(
    values: np.ndarray,
    rng: np.random.Generator,
    resamples: int = 1000,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (one value per case, resampled with replacement).

    Returns (nan, nan) for fewer than 2 values, where a resampling CI means nothing.
    """
    return _bootstrap_ci(values, rng, resamples, confidence, np.mean)


def bootstrap_median_ci(
    values: np.ndarray,
    rng: np.random.Generator,
    resamples: int = 1000,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the median of ``values``: the same resamples as
    :func:`bootstrap_mean_ci` draws from the same generator, each reduced by its median."""
    return _bootstrap_ci(values, rng, resamples, confidence, np.median)


def _bootstrap_ci(
    values: np.ndarray,
    rng: np.random.Generator,
    resamples: int,
    confidence: float,
    reduce: Callable[..., np.ndarray],
) -> tuple[float, float]:
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        return float("nan"), float("nan")
    # Blocks bound the (resamples × n) index matrix so memory stays flat for large cohorts.
    block = max(1, (1 << 22) // n)
    stats = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        stats[start:stop] = reduce(x[idx], axis=1)
    alpha = (1.0 - confidence) / 2.0
    # Linear interpolation turns ±inf into nan (inf - inf); order statistics keep them.
    method = "linear" if np.isfinite(stats).all() else "inverted_cdf"
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha], method=method)
    return float(lo), float(hi)


def percentile_ci(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, ignoring NaN ones (resamples where the statistic
    was undefined); (nan, nan) when fewer than half of the replicates are defined."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size < max(2, np.asarray(samples).size // 2):
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(x, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def case_resample_weights(rng: np.random.Generator, n_cases: int, resamples: int) -> np.ndarray:
    """(resamples, n_cases) counts: how often each case is drawn in each bootstrap resample.

    Drawing n cases with replacement and counting is the same resample as materialising the drawn
    cases, so statistics that accept per-row weights are computed without copying the data.
    """
    idx = rng.integers(0, n_cases, size=(resamples, n_cases))
    out = np.zeros((resamples, n_cases), dtype=np.float64)
    np.add.at(out, (np.arange(resamples)[:, None], idx), 1.0)
    return out


def half_sample_weights(rng: np.random.Generator, n_cases: int, resamples: int) -> np.ndarray:
    """(resamples, n_cases) 0/1 weights: each row keeps a random ⌈n/2⌉ of the cases, without
    replacement (the subsets of :func:`jackknife_interval`)."""
    keep = (n_cases + 1) // 2
    order = np.argsort(rng.random((resamples, n_cases)), axis=1)
    out = np.zeros((resamples, n_cases), dtype=np.float64)
    np.put_along_axis(out, order[:, :keep], 1.0, axis=1)
    return out


def jackknife_interval(
    estimate: float, replicates: np.ndarray, n_cases: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Normal interval about ``estimate`` from a delete-d jackknife over half-samples (Shao & Wu 1989):
    with r = ⌈n/2⌉ cases kept and d = n − r deleted, var = (r / d) · mean((θ_s − θ̄)²) over random
    subsets s (:func:`half_sample_weights`).

    For statistics whose resampled value is biased, as set-level nearest-neighbour statistics are (a
    with-replacement resample holds duplicate cases, which coarsen every step), a percentile bootstrap
    interval can miss its own estimate; this one is centred on it and only estimates the spread.
    (nan, nan) when fewer than half of the replicates are defined or fewer than 2 cases.
    """
    from scipy.stats import norm

    x = np.asarray(replicates, dtype=np.float64)
    defined = x[~np.isnan(x)]
    if n_cases < 2 or not np.isfinite(estimate) or defined.size < max(2, x.size // 2):
        return float("nan"), float("nan")
    keep = (n_cases + 1) // 2
    deleted = n_cases - keep
    sd = float(np.sqrt(keep / deleted * np.mean((defined - defined.mean()) ** 2)))
    z = float(norm.ppf(0.5 + confidence / 2))
    return float(estimate - z * sd), float(estimate + z * sd)


def weighted_auc(probs: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per weight vector and class: (B, C) from probs (R, C), bool targets (R, C), weights (B, R).

    With integer weights this is exactly the Mann-Whitney AUC of the data set in which row r appears
    weights[b, r] times (ties count one half), i.e. of a bootstrap resample. NaN where the weighted
    set has no positive or no negative.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=bool)
    w = np.asarray(weights, dtype=np.float64)
    out = np.full((w.shape[0], p.shape[1]), np.nan)
    for j in range(p.shape[1]):
        order = np.argsort(p[:, j], kind="stable")
        sp = p[order, j]
        starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
        pos = np.where(t[order, j], w[:, order], 0.0)
        neg = w[:, order] - pos
        gpos = np.add.reduceat(pos, starts, axis=1)
        gneg = np.add.reduceat(neg, starts, axis=1)
        below = np.cumsum(gneg, axis=1) - gneg  # negatives scoring strictly lower than the tie group
        num = (gpos * (below + 0.5 * gneg)).sum(axis=1)
        den = gpos.sum(axis=1) * gneg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, j] = np.where(den > 0, num / den, np.nan)
    return out


def weighted_f1(
    probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """F1 = 2TP / (n_predicted + n_positive) per weight vector and class, (B, C); predictions are
    ``probs >= thresholds`` (NaN threshold: class not scored). NaN where there is no positive."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=bool)
    thr = np.asarray(thresholds, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        pred = p >= thr[None, :]
    tp = w @ (pred & t).astype(np.float64)
    n_pred = w @ pred.astype(np.float64)
    n_pos = w @ t.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(n_pos > 0, 2.0 * tp / (n_pred + n_pos), np.nan)
    f1[:, np.isnan(thr)] = np.nan
    return f1
