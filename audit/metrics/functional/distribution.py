"""Distribution metrics between a real and a generated feature set: pure numpy kernels.

Features in, numbers out: every kernel takes float arrays shaped (N, D), one row per image, as produced
by a feature extractor (Inception pool3 for FID/KID, an X-ray classifier's pooled features for FXD).
float32 input is accepted and upcast; all arithmetic is float64. Inputs must be 2-D, finite, and the two
sets must have the same D.

* **Fréchet distance** (FID on Inception features, FXD on X-ray features: same formula, different
  features) between Gaussians fitted to the two sets, from :class:`FeatureStats` that can be computed per
  shard and merged: d² = ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), unbiased covariances (n−1), as
  pytorch-fid and torchmetrics.
* **KID** (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y/D + 1)³, mean and std over random equal-size subsets.
* **Precision, recall, density, coverage** (Naeem et al. 2020) with k-nearest-neighbour balls.

Their case bootstraps (one value per replicate of per-row frequency weights) are in
:mod:`audit.metrics.functional.distribution_bootstrap`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from audit.atomic import atomic_path

__all__ = [
    "FeatureStats",
    "FrechetResult",
    "KidResult",
    "PrdcResult",
    "frechet_distance",
    "gaussian_frechet_distance",
    "kernel_inception_distance",
    "poly_mmd2",
    "prdc",
]


_STATS_FORMAT = "xray-audit-feature-stats-v1"
# from_features upcasts float32 rows to float64 in blocks of about this many elements (32 MiB), so a
# (50000, 2048) float32 feature matrix is never copied whole.
_UPCAST_BLOCK_ELEMENTS = 2**22
# prdc's distance blocks: about this many float64 distances (32 MiB) per block, times a few temporaries.
_DISTANCE_BLOCK_ELEMENTS = 2**22
_EPS = np.finfo(np.float64).eps


def _as_features(x: np.ndarray, name: str, allow_empty: bool = False) -> np.ndarray:
    """``x`` as a float (N, D) array (dtype kept: callers upcast in blocks or as a whole), checked."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array shaped (N, D); got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{name} must hold floating-point features; got dtype {x.dtype}. Pass the feature extractor's "
            "float output"
        )
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, shaped (N samples, D features); got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no feature columns (shape {x.shape}); D must be at least 1")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} has no rows (shape {x.shape})")
    # Row blocks bound the temporary boolean array for large feature matrices.
    rows = max(1, _UPCAST_BLOCK_ELEMENTS // x.shape[1])
    finite = np.concatenate(
        [np.isfinite(x[s : s + rows]).all(axis=1) for s in range(0, x.shape[0], rows)] or [np.ones(0, bool)]
    )
    if not finite.all():
        bad = np.flatnonzero(~finite)
        more = " …" if bad.size > 10 else ""
        raise ValueError(
            f"{name} contains NaN or ±inf in {bad.size} row(s) (row index {bad[:10].tolist()}{more}); "
            "fix the feature extraction (NaN usually means a broken or blank input image)"
        )
    return x


def _check_same_dim(real: np.ndarray, gen: np.ndarray) -> None:
    if real.shape[1] != gen.shape[1]:
        raise ValueError(
            f"real and generated features differ in dimension: D={real.shape[1]} vs D={gen.shape[1]}; both "
            "sets must come from the same feature extractor and layer"
        )


# ----------------------------------------------------------------------------------------------------
# Fréchet distance (FID / FXD)


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Sufficient statistics of a feature set for the Fréchet distance, mergeable across shards.

    ``n`` rows, ``sum`` = Σᵢ xᵢ (D,) and ``outer_sum`` = Σᵢ xᵢxᵢᵀ (D, D), all float64. Shards computed by
    different processes are combined exactly with :meth:`merge` (sums add), so the merged statistics
    give the same Fréchet distance as a single pass, up to float64 rounding (tested to 1e-6).

    The covariance is derived from raw moments, (Σxxᵀ − n·μμᵀ)/(n−1); this loses about
    log10((|μ|/σ)²) of float64's ~16 digits to cancellation, harmless for network features (|μ| ≈ σ) but
    not for features with a large constant offset. Instances are immutable (arrays are read-only).
    """

    n: int
    sum: np.ndarray
    outer_sum: np.ndarray

    def __post_init__(self) -> None:
        n = int(self.n)
        if n != self.n or n < 0:
            raise ValueError(f"FeatureStats.n must be a non-negative integer; got {self.n!r}")
        s = np.array(self.sum, dtype=np.float64)
        o = np.array(self.outer_sum, dtype=np.float64)
        if s.ndim != 1 or s.shape[0] == 0 or o.shape != (s.shape[0], s.shape[0]):
            raise ValueError(
                f"FeatureStats needs sum shaped (D,) and outer_sum shaped (D, D); got {s.shape} and {o.shape}"
            )
        if not (np.isfinite(s).all() and np.isfinite(o).all()):
            raise ValueError("FeatureStats sum/outer_sum contain NaN or ±inf")
        s.setflags(write=False)
        o.setflags(write=False)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "sum", s)
        object.__setattr__(self, "outer_sum", o)

    @property
    def dim(self) -> int:
        return int(self.sum.shape[0])

    @classmethod
    def from_features(cls, feats: np.ndarray) -> FeatureStats:
        """Statistics of one set (or shard) of features shaped (N, D); N may be 0 for an empty shard."""
        x = _as_features(feats, "features", allow_empty=True)
        n, d = x.shape
        total = np.zeros(d, dtype=np.float64)
        outer = np.zeros((d, d), dtype=np.float64)
        rows = max(1, _UPCAST_BLOCK_ELEMENTS // d)
        for start in range(0, n, rows):
            block = np.asarray(x[start : start + rows], dtype=np.float64)
            total += block.sum(axis=0)
            # numpy computes a.T @ a with a symmetric rank-k update, so the result is exactly symmetric.
            outer += block.T @ block
        return cls(n, total, outer)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of the two sets."""
        if not isinstance(other, FeatureStats):
            raise TypeError(f"can only merge FeatureStats with FeatureStats; got {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(
                f"cannot merge feature statistics of different dimensions ({self.dim} and {other.dim}); the "
                "shards must come from the same feature extractor"
            )
        return FeatureStats(self.n + other.n, self.sum + other.sum, self.outer_sum + other.outer_sum)

    @classmethod
    def merge_all(cls, stats: Iterable[FeatureStats]) -> FeatureStats:
        """Merge any number of shards (at least one)."""
        it = iter(stats)
        try:
            out = next(it)
        except StopIteration:
            raise ValueError("merge_all needs at least one FeatureStats") from None
        for s in it:
            out = out.merge(s)
        return out

    def mean(self) -> np.ndarray:
        """Mean feature vector μ (D,)."""
        if self.n < 1:
            raise ValueError("the mean of an empty feature set is undefined; at least 1 sample is needed")
        return self.sum / self.n

    def cov(self) -> np.ndarray:
        """Unbiased sample covariance Σ (D, D), divided by n−1 like numpy.cov, pytorch-fid, torchmetrics."""
        if self.n < 2:
            raise ValueError(f"the sample covariance needs at least 2 samples; this feature set has {self.n}")
        mu = self.sum / self.n
        c = (self.outer_sum - self.n * np.outer(mu, mu)) / (self.n - 1)
        return (c + c.T) / 2

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the statistics atomically to an ``.npz`` file (any suffix works)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            # A file object, not a path: np.savez would append ".npz" to a path without that suffix.
            np.savez(
                fh,
                format=np.array(_STATS_FORMAT),
                n=np.array(self.n, dtype=np.int64),
                sum=self.sum,
                outer_sum=self.outer_sum,
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureStats:
        """Read statistics written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{path}: not a readable feature-statistics .npz file ({e}); recompute it with "
                "FeatureStats.save"
            ) from e
        missing = {"format", "n", "sum", "outer_sum"} - set(data)
        if missing:
            raise ValueError(
                f"{path}: not a feature-statistics file (missing {', '.join(sorted(missing))}); recompute "
                "it with FeatureStats.save"
            )
        if str(data["format"]) != _STATS_FORMAT:
            raise ValueError(
                f"{path}: feature-statistics format {str(data['format'])!r}, expected {_STATS_FORMAT!r}; "
                "recompute it with this version"
            )
        try:
            return cls(int(data["n"]), data["sum"], data["outer_sum"])
        except ValueError as e:
            raise ValueError(f"{path}: corrupt feature statistics: {e}") from e


@dataclass(frozen=True)
class FrechetResult:
    """A Fréchet distance and what it rests on.

    ``rank_deficient`` is True when either set has at most ``dim`` samples: its sample covariance then
    has rank ≤ n−1 < D, the Gaussian fit is degenerate and the value is strongly biased (it depends on n);
    a report should show it with a visible warning rather than as a comparable number.
    """

    value: float
    n_real: int
    n_gen: int
    dim: int
    rank_deficient: bool


def _resolved(w: np.ndarray) -> np.ndarray:
    """Eigenvalues with those indistinguishable from round-off set to 0.

    A symmetric eigensolver gets each eigenvalue right to about D·ε·λ_max (numpy's matrix_rank
    threshold), so a true 0 comes back as ±1e-16·λ_max, and its square root, ~1e-8·√λ_max, would add
    up over the null space of a rank-deficient covariance (n ≤ D) to a relative error of ~1e-7.
    Anything under the threshold is unresolvable anyway; zeroing it makes singular cases exact.
    """
    top = float(w.max(initial=0.0))
    return np.where(w > w.shape[0] * _EPS * top, w, 0.0)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(_resolved(w))) @ v.T


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ₁Σ₂)^½) for symmetric PSD Σ₁, Σ₂, via symmetric eigendecompositions only.

    Σ₁Σ₂ = Σ₁^½ (Σ₁^½ Σ₂ Σ₁^½) Σ₁^{-½} is similar to the symmetric PSD matrix M = Σ₁^½ Σ₂ Σ₁^½ (when Σ₁
    is singular, by continuity), so the eigenvalues of Σ₁Σ₂ are those of M, real and ≥ 0, and
    Tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(M). Two ``eigh`` calls replace pytorch-fid's ``scipy.linalg.sqrtm`` of the
    non-symmetric product (and torchmetrics' non-symmetric ``eigvals``): no complex round-off, no
    eps-offset retry, and singular covariances (fewer samples than dimensions) stay exact. Eigenvalues
    that round-off makes negative or that are below the solver's resolution are set to 0
    (:func:`_resolved`).
    """
    root1 = _psd_sqrt(sigma1)
    m = root1 @ sigma2 @ root1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(_resolved(lam)).sum())


def gaussian_frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """d² = ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) between N(μ₁, Σ₁) and N(μ₂, Σ₂).

    For given moments, e.g. published reference statistics. Σ₁ and Σ₂ must be symmetric PSD
    covariance matrices (symmetrised here; see :func:`_trace_sqrt_product` for the square root).
    The result is ≥ 0 mathematically; a negative value from round-off (identical inputs) is clipped to 0.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            "gaussian_frechet_distance needs mu1, mu2 shaped (D,) and sigma1, sigma2 shaped (D, D) with the "
            f"same D; got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or ±inf")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.trace(s1) + np.trace(s2)) - 2.0 * _trace_sqrt_product(s1, s2)
    return max(value, 0.0)


def frechet_distance(real: FeatureStats, gen: FeatureStats) -> FrechetResult:
    """Fréchet distance between Gaussians fitted to real and generated features (FID, FXD).

    Raises:
        ValueError: either set has fewer than 2 samples (no covariance), or the dimensions differ.
    """
    for name, s in (("real", real), ("generated", gen)):
        if not isinstance(s, FeatureStats):
            raise TypeError(
                f"{name} must be FeatureStats (use FeatureStats.from_features); got {type(s).__name__}"
            )
        if s.n < 2:
            raise ValueError(
                f"the Fréchet distance needs at least 2 samples per set (for a covariance); the {name} set "
                f"has {s.n}"
            )
    if real.dim != gen.dim:
        raise ValueError(
            f"real and generated feature statistics differ in dimension: D={real.dim} vs D={gen.dim}; both "
            "must come from the same feature extractor and layer"
        )
    value = gaussian_frechet_distance(real.mean(), real.cov(), gen.mean(), gen.cov())
    return FrechetResult(
        value=value,
        n_real=real.n,
        n_gen=gen.n,
        dim=real.dim,
        rank_deficient=min(real.n, gen.n) <= real.dim,
    )


# ----------------------------------------------------------------------------------------------------
# KID


@dataclass(frozen=True)
class KidResult:
    """KID: mean and population std (ddof=0, as torchmetrics) of the unbiased MMD² over ``subsets``.

    ``subset_size`` is the size actually used; when the requested size exceeded the smaller set it was
    clamped to that set's size, ``clamped`` is True and ``requested_subset_size`` keeps the request.
    """

    mean: float
    std: float
    subset_size: int
    subsets: int
    clamped: bool
    requested_subset_size: int
    n_real: int
    n_gen: int


# Largest (n_real + n_gen)² for which KID precomputes whole-set kernel matrices (3 of them, float64):
# 2**24 entries is at most 3 x 128 MiB.
_KID_WHOLE_MAX = 2**24


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² between equal-size samples x, y (m, D) with k(a, b) = (a·b/D + 1)³.

    MMD² = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(m(m−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ)/m²,
    the estimator of Bińkowski et al.'s reference code and torchmetrics' ``poly_mmd``.
    """
    x = _as_features(x, "x")
    y = _as_features(y, "y")
    _check_same_dim(x, y)
    if y.shape[0] != x.shape[0] or x.shape[0] < 2:
        raise ValueError(
            f"poly_mmd2 needs two samples of the same size ≥ 2; got {x.shape[0]} and {y.shape[0]}"
        )
    return _poly_mmd2(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m = x.shape[0]
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    real: np.ndarray,
    gen: np.ndarray,
    rng: np.random.Generator,
    subsets: int = 100,
    subset_size: int = 1000,
) -> KidResult:
    """KID between real and generated features (Bińkowski et al. 2018, defaults as torchmetrics).

    For each of ``subsets`` rounds, draws ``rng.choice(n_real, m, replace=False)`` then
    ``rng.choice(n_gen, m, replace=False)`` (in that order) and computes :func:`poly_mmd2` on the two
    subsets. ``m = min(subset_size, n_real, n_gen)``: a request larger than a set is clamped and recorded.

    Raises:
        ValueError: fewer than 2 samples in a set, subsets < 1 or subset_size < 2, dimensions differ.
        TypeError: ``rng`` is not a ``numpy.random.Generator`` (seeding must be explicit).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(seed)); got {type(rng).__name__}"
        )
    if int(subsets) != subsets or subsets < 1:
        raise ValueError(f"subsets must be an integer ≥ 1; got {subsets!r}")
    if int(subset_size) != subset_size or subset_size < 2:
        raise ValueError(
            f"subset_size must be an integer ≥ 2 (unbiased MMD² needs pairs); got {subset_size!r}"
        )
    x = _as_features(real, "real features")
    y = _as_features(gen, "generated features")
    _check_same_dim(x, y)
    n_real, n_gen = x.shape[0], y.shape[0]
    if min(n_real, n_gen) < 2:
        raise ValueError(f"KID needs at least 2 samples per set; got n_real={n_real}, n_gen={n_gen}")
    m = min(int(subset_size), n_real, n_gen)
    values = np.empty(int(subsets), dtype=np.float64)
    # Kernels over the whole sets once, then each subset's sums gathered from them, when that is
    # less arithmetic than a kernel per subset and the matrices are small; the values are the same
    # kernel entries either way (up to matmul rounding, ~1e-15 relative).
    whole = (n_real + n_gen) ** 2 <= int(subsets) * 3 * m * m and (n_real + n_gen) ** 2 <= _KID_WHOLE_MAX
    if whole:
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        k_xx, k_yy, k_xy = _poly_kernel(x64, x64), _poly_kernel(y64, y64), _poly_kernel(x64, y64)
    for i in range(int(subsets)):
        xi = rng.choice(n_real, m, replace=False)
        yi = rng.choice(n_gen, m, replace=False)
        if whole:
            sxx, syy = k_xx[np.ix_(xi, xi)], k_yy[np.ix_(yi, yi)]
            within = (sxx.sum() - np.trace(sxx) + syy.sum() - np.trace(syy)) / (m * (m - 1))
            values[i] = float(within - 2.0 * k_xy[np.ix_(xi, yi)].sum() / (m * m))
        else:
            # Index first, then upcast: only the subsets are copied to float64.
            values[i] = _poly_mmd2(x[xi].astype(np.float64), y[yi].astype(np.float64))
    return KidResult(
        mean=float(values.mean()),
        std=float(values.std(ddof=0)),
        subset_size=m,
        subsets=int(subsets),
        clamped=m < subset_size,
        requested_subset_size=int(subset_size),
        n_real=n_real,
        n_gen=n_gen,
    )


# ----------------------------------------------------------------------------------------------------
# Precision, recall, density, coverage


@dataclass(frozen=True)
class PrdcResult:
    """Naeem et al. 2020 metrics; all in [0, 1] and higher is better, except density, which can exceed 1
    (generated samples packed where real ones are dense) and is ≈ 1 for matching distributions."""

    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    n_real: int
    n_gen: int

    def as_dict(self) -> dict[str, float]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "density": self.density,
            "coverage": self.coverage,
        }


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _pair_distances(a: np.ndarray, b: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Exact distances ‖a[rows] − b[cols]‖, computed from the differences in fixed-size batches.

    Each value depends only on the two vectors (not on the batch), is symmetric in them and is exactly
    0 for identical vectors, so ties (duplicated samples, a memorised training image) are resolved the
    same way as with ``scipy.spatial.distance.cdist``.
    """
    out = np.empty(rows.shape[0], dtype=np.float64)
    step = max(1, _DISTANCE_BLOCK_ELEMENTS // a.shape[1])
    for s in range(0, rows.shape[0], step):
        diff = a[rows[s : s + step]] - b[cols[s : s + step]]
        out[s : s + step] = np.sqrt(_sq_norms(diff))
    return out


def _gram_sq_distances(
    a: np.ndarray, b: np.ndarray, na: np.ndarray, nb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances ‖a−b‖² by ‖a‖² + ‖b‖² − 2a·b (one matrix product) and an error bound for each.

    The BLAS product makes this ~50× faster than differences, but it cancels: the absolute error is
    at most about D·ε·(‖a‖² + ‖b‖²) (standard dot-product rounding bound). ``tol`` is 8× that, so that it
    also covers the rounding of the exact distances it is compared with. Decisions within ``tol`` of a
    threshold are re-made with :func:`_pair_distances`.
    """
    d2 = na[:, None] + nb[None, :] - 2.0 * (a @ b.T)
    tol = (8.0 * (a.shape[1] + 8) * _EPS) * (na[:, None] + nb[None, :])
    return d2, tol


def _knn_radii(x: np.ndarray, k: int, block_rows: int) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row (exact, ties counted: duplicates at 0)."""
    n = x.shape[0]
    nx = _sq_norms(x)
    radii = np.empty(n, dtype=np.float64)
    for s in range(0, n, block_rows):
        d2, tol = _gram_sq_distances(x[s : s + block_rows], x, nx[s : s + block_rows], nx)
        # Each row's own distance is 0 and counts as its nearest neighbour, hence the (k+1)-th smallest.
        t = np.partition(d2, k, axis=1)[:, k]
        # Any j whose exact distance is ≤ the exact (k+1)-th smallest has d2 ≤ t + 2·max(tol) (see
        # _gram_sq_distances): these candidates are re-measured exactly and the (k+1)-th smallest taken.
        rows, cols = np.nonzero(d2 <= (t + 2.0 * tol.max(axis=1))[:, None])
        exact = _pair_distances(x, x, rows + s, cols)
        order = np.lexsort((exact, rows))
        starts = np.searchsorted(rows[order], np.arange(d2.shape[0]))
        radii[s : s + d2.shape[0]] = exact[order][starts + k]
    return radii


def _inside(
    d2: np.ndarray,
    tol: np.ndarray,
    radii_sq: np.ndarray,
    radii: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    row_offset: int,
) -> np.ndarray:
    """Boolean block: exact ‖a_i − b_j‖ < radii (radii_sq/radii broadcast against the (rows, cols) block)."""
    inside = d2 < radii_sq - tol
    unsure = np.abs(d2 - radii_sq) <= tol
    if unsure.any():
        rows, cols = np.nonzero(unsure)
        exact = _pair_distances(a, b, rows + row_offset, cols)
        r = np.broadcast_to(radii, d2.shape)[rows, cols]
        inside[rows, cols] = exact < r
    return inside


def prdc(real: np.ndarray, gen: np.ndarray, k: int = 5, block_rows: int | None = None) -> PrdcResult:
    """Precision, recall, density and coverage of generated features against real ones (Naeem et al. 2020).

    With r_i the distance from real sample X_i to its k-th nearest other real sample, s_j the same
    within the generated set, and B(c, r) = {z : ‖z − c‖ < r} (strict, as the authors' ``prdc`` package):

    * precision = fraction of generated Y_j inside some real ball B(X_i, r_i)
    * recall = fraction of real X_i inside some generated ball B(Y_j, s_j)
    * density = (1/(k·M)) Σ_j #{i : Y_j ∈ B(X_i, r_i)}
    * coverage = fraction of real X_i whose ball B(X_i, r_i) contains some generated Y_j

    Distances are exact Euclidean distances in float64 over all pairs (no approximate neighbour search):
    they are computed blockwise (``block_rows`` real rows at a time, by default about 2²² distances per
    block) with a matrix product, and every comparison that the product's rounding could get wrong
    is redone from the feature differences, so the result equals a ``cdist``-based computation
    including ties between duplicated samples.

    Raises:
        ValueError: k < 1, a set with k or fewer samples (the k-th neighbour needs k others),
            dimensions differ, or bad features.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer ≥ 1; got {k!r}")
    k = int(k)
    x = _as_features(real, "real features")
    y = _as_features(gen, "generated features")
    _check_same_dim(x, y)
    n, m = x.shape[0], y.shape[0]
    if min(n, m) <= k:
        raise ValueError(
            f"precision/recall/density/coverage with k={k} need at least k+1={k + 1} samples per set (the "
            f"k-th nearest neighbour of each sample among the others); got n_real={n}, n_gen={m}"
        )
    if block_rows is not None and (int(block_rows) != block_rows or block_rows < 1):
        raise ValueError(f"block_rows must be a positive integer or None; got {block_rows!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)

    def rows_for(width: int) -> int:
        return int(block_rows) if block_rows is not None else max(1, _DISTANCE_BLOCK_ELEMENTS // width)

    r = _knn_radii(x, k, rows_for(n))
    s = _knn_radii(y, k, rows_for(m))
    nx, ny = _sq_norms(x), _sq_norms(y)
    r_sq, s_sq = r * r, s * s

    real_balls_per_gen = np.zeros(m, dtype=np.int64)  # #{i : Y_j ∈ B(X_i, r_i)}
    covered = np.zeros(n, dtype=bool)  # X_i's ball holds some Y_j
    recalled = np.zeros(n, dtype=bool)  # X_i lies in some B(Y_j, s_j)
    step = rows_for(m)
    for start in range(0, n, step):
        stop = min(start + step, n)
        d2, tol = _gram_sq_distances(x[start:stop], y, nx[start:stop], ny)
        in_real_ball = _inside(d2, tol, r_sq[start:stop, None], r[start:stop, None], x, y, start)
        real_balls_per_gen += in_real_ball.sum(axis=0)
        covered[start:stop] = in_real_ball.any(axis=1)
        del in_real_ball
        in_gen_ball = _inside(d2, tol, s_sq[None, :], s[None, :], x, y, start)
        recalled[start:stop] = in_gen_ball.any(axis=1)
    return PrdcResult(
        precision=float((real_balls_per_gen > 0).mean()),
        recall=float(recalled.mean()),
        density=float(real_balls_per_gen.sum() / (k * m)),
        coverage=float(covered.mean()),
        k=k,
        n_real=n,
        n_gen=m,
    )
