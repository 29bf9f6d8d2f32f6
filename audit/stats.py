"""Aggregation statistics shared by the runner and the reports (numpy only, torch-free)."""

from __future__ import annotations

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
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        return float("nan"), float("nan")
    # Blocks bound the (resamples × n) index matrix so memory stays flat for large cohorts.
    block = max(1, (1 << 22) // n)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    # Linear interpolation turns ±inf into nan (inf - inf); order statistics keep them.
    method = "linear" if np.isfinite(means).all() else "inverted_cdf"
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha], method=method)
    return float(lo), float(hi)
