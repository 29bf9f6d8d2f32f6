"""Case bootstrap of the distribution metrics: each metric on resampled feature sets, given as per-row
frequency weights (how often each row's case was drawn), one value per replicate, for percentile
confidence intervals over cases.

:func:`frechet_distance_bootstrap`, :func:`kid_bootstrap` and :func:`prdc_bootstrap` are the
bootstraps of :func:`~audit.metrics.functional.distribution.frechet_distance`,
:func:`~audit.metrics.functional.distribution.kernel_inception_distance` and
:func:`~audit.metrics.functional.distribution.prdc`, with those kernels' input rules (2-D, finite,
same D; float64 arithmetic), and the same values when every weight is 1.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from audit.metrics.functional.distribution import (
    _DISTANCE_BLOCK_ELEMENTS,
    _as_features,
    _check_same_dim,
    _gram_sq_distances,
    _pair_distances,
    _poly_kernel,
    _resolved,
    _sq_norms,
    gaussian_frechet_distance,
)

__all__ = ["frechet_distance_bootstrap", "kid_bootstrap", "prdc_bootstrap"]


# Fréchet low-rank route: largest n_real·n_gen for the cross-Gram matrix kept in memory (256 MiB).
_FRECHET_GRAM_MAX = 2**25
# KID bootstrap: kernel blocks and (replicates × block) weight products of about this many entries.
_KID_BLOCK_ELEMENTS = 2**22
# PRDC bootstrap: largest (distinct real + generated vectors)² for the pairwise-distance matrix (512 MiB).
_PRDC_BOOTSTRAP_MAX = 2**26


def _as_weights(w: np.ndarray, n: int, name: str) -> np.ndarray:
    """``w`` as a float64 (B, n) matrix of non-negative frequency weights, checked."""
    if not isinstance(w, np.ndarray):
        raise TypeError(f"{name} must be a numpy array shaped (B replicates, N rows); got {type(w).__name__}")
    if w.ndim != 2 or w.shape[1] != n or w.shape[0] == 0:
        raise ValueError(
            f"{name} must be shaped (B replicates, {n}) with one weight per feature row; got shape {w.shape}"
        )
    a = np.asarray(w, dtype=np.float64)
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(
            f"{name} must hold finite, non-negative weights (how often each row was drawn); got NaN, ±inf or "
            "a negative value"
        )
    return a


def _bootstrap_inputs(
    real: np.ndarray, gen: np.ndarray, real_weights: np.ndarray, gen_weights: np.ndarray, centre: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = _as_features(real, "real features")
    y = _as_features(gen, "generated features")
    _check_same_dim(x, y)
    w1 = _as_weights(real_weights, x.shape[0], "real_weights")
    w2 = _as_weights(gen_weights, y.shape[0], "gen_weights")
    if w1.shape[0] != w2.shape[0]:
        raise ValueError(
            f"real_weights and gen_weights must describe the same replicates; got {w1.shape[0]} and "
            f"{w2.shape[0]} rows"
        )
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if centre:
        # Fréchet distances and Euclidean distances are invariant to a common shift of both sets;
        # removing the pooled mean keeps the Gram products below from cancelling on offset features.
        c = (x.sum(axis=0) + y.sum(axis=0)) / (x.shape[0] + y.shape[0])
        x, y = x - c, y - c
    return x, y, w1, w2


def frechet_distance_bootstrap(
    real: np.ndarray,
    gen: np.ndarray,
    real_weights: np.ndarray,
    gen_weights: np.ndarray,
    route: str = "auto",
) -> np.ndarray:
    """Fréchet distance for each replicate of row weights: (B,) from features (N₁, D), (N₂, D) and
    weights (B, N₁), (B, N₂).

    Replicate b is the Fréchet distance of the sets in which row i appears ``weights[b, i]`` times:
    weighted mean μ = Σwx/Σw and covariance Σw(x−μ)(x−μ)ᵀ/(Σw − 1), the n−1 convention of
    :class:`FeatureStats`. A replicate with fewer than 2 draws in a set has no covariance: NaN.

    Routes (``route="auto"`` picks by size; both give the same value to round-off, tested to 1e-6
    against ``scipy.linalg.sqrtm`` on explicitly repeated rows):

    * ``"low_rank"`` (when a set has fewer rows than dimensions): with Aᵢ the weighted centred rows
      scaled so that Σᵢ = AᵢᵀAᵢ, the non-zero eigenvalues of Σ₁Σ₂ are the squared singular values of
      A₁A₂ᵀ (n₁×n₂), so Tr((Σ₁Σ₂)^½) is its nuclear norm. A₁A₂ᵀ is the cross-Gram matrix XYᵀ, computed
      once, gathered to the drawn rows and centred per replicate; its singular values come from the
      symmetric eigenvalues of its smaller Gram matrix. Cost per replicate: about n₁n₂·min(n₁, n₂),
      not a D×D square root.
    * ``"full"``: the weighted D×D covariances and :func:`gaussian_frechet_distance` per replicate.

    Raises:
        ValueError: bad features or weights, dimensions differ, or an unknown route.
    """
    if route not in ("auto", "low_rank", "full"):
        raise ValueError(f"route must be 'auto', 'low_rank' or 'full'; got {route!r}")
    x, y, w1, w2 = _bootstrap_inputs(real, gen, real_weights, gen_weights, centre=True)
    (n1, d), n2 = x.shape, y.shape[0]
    if route == "auto":
        route = "low_rank" if min(n1, n2) < d and n1 * n2 <= _FRECHET_GRAM_MAX else "full"
    big1, big2 = w1.sum(axis=1), w2.sum(axis=1)
    ok = (big1 >= 2) & (big2 >= 2)
    mu1 = (w1 @ x) / np.where(ok, big1, 1.0)[:, None]
    mu2 = (w2 @ y) / np.where(ok, big2, 1.0)[:, None]
    dmu = _sq_norms(mu1 - mu2)
    out = np.full(w1.shape[0], np.nan)
    # OpenBLAS's threaded symmetric eigensolvers cost several times the CPU of the single-threaded ones
    # at these sizes (measured on 2 shared cores: 7x at n = 632, 4x at D = 2048), so the replicates
    # run on one BLAS thread.
    if route == "low_rank":
        cross = x @ y.T
        x_mu2 = x @ mu2.T  # (n1, B)
        mu1_y = mu1 @ y.T  # (B, n2)
        mu12 = np.einsum("bd,bd->b", mu1, mu2)
        with np.errstate(invalid="ignore", divide="ignore"):
            tr1 = (w1 @ _sq_norms(x) - big1 * _sq_norms(mu1)) / (big1 - 1)
            tr2 = (w2 @ _sq_norms(y) - big2 * _sq_norms(mu2)) / (big2 - 1)
        scale = np.sqrt(np.where(ok, (big1 - 1) * (big2 - 1), 1.0))
        root1, root2 = np.sqrt(w1), np.sqrt(w2)
        tr_sqrt = np.full(w1.shape[0], np.nan)
        with threadpool_limits(limits=1, user_api="blas"):
            for b in np.flatnonzero(ok):
                r, c = np.flatnonzero(w1[b]), np.flatnonzero(w2[b])
                # (x_i − μ₁)·(y_j − μ₂) from the stored x_i·y_j, for the drawn rows only.
                a = cross[np.ix_(r, c)]
                a -= x_mu2[r, b, None]
                a -= mu1_y[b, c]
                a += mu12[b]
                a *= root1[b, r, None]
                a *= root2[b, c]
                p = a @ a.T if r.size <= c.size else a.T @ a
                tr_sqrt[b] = np.sqrt(_resolved(np.linalg.eigvalsh(p))).sum() / scale[b]
        with np.errstate(invalid="ignore"):
            out = np.where(ok, np.maximum(dmu + tr1 + tr2 - 2.0 * tr_sqrt, 0.0), np.nan)
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            for b in np.flatnonzero(ok):
                covs = []
                for feats, w, mu, big in ((x, w1[b], mu1[b], big1[b]), (y, w2[b], mu2[b], big2[b])):
                    rows = np.flatnonzero(w)
                    a = (feats[rows] - mu) * np.sqrt(w[rows])[:, None]
                    covs.append(a.T @ a / (big - 1))
                out[b] = gaussian_frechet_distance(mu1[b], covs[0], mu2[b], covs[1])
    return out


def _weighted_kernel_sums(a: np.ndarray, b: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """Σᵢⱼ wa[r, i]·k(aᵢ, bⱼ)·wb[r, j] for every replicate r; each kernel block is computed once."""
    replicates = wa.shape[0]
    cols = min(b.shape[0], max(1, _KID_BLOCK_ELEMENTS // replicates))
    rows = max(1, _KID_BLOCK_ELEMENTS // cols)
    out = np.zeros(replicates, dtype=np.float64)
    for s in range(0, a.shape[0], rows):
        for t in range(0, b.shape[0], cols):
            kernel = _poly_kernel(a[s : s + rows], b[t : t + cols])
            out += np.einsum("rj,rj->r", wa[:, s : s + rows] @ kernel, wb[:, t : t + cols])
    return out


def kid_bootstrap(
    real: np.ndarray, gen: np.ndarray, real_weights: np.ndarray, gen_weights: np.ndarray
) -> np.ndarray:
    """Unbiased polynomial-kernel MMD² (the kernel of :func:`kernel_inception_distance`) for each
    replicate of row weights: (B,) from features (N₁, D), (N₂, D) and weights (B, N₁), (B, N₂).

    A replicate is a multiset of draws: row i drawn wᵢ times gives wᵢ draws, and the unbiased estimator
    excludes only each draw's pair with itself, so two draws of the same row do count as a pair
    (k(xᵢ, xᵢ)), as they would in the materialised resample. With m₁ = Σw, m₂ = Σv:

        MMD² = (wᵀK_xx w − Σᵢ wᵢK_xx,ᵢᵢ)/(m₁(m₁−1)) + (vᵀK_yy v − Σⱼ vⱼK_yy,ⱼⱼ)/(m₂(m₂−1)) − 2wᵀK_xy v/(m₁m₂)

    the estimator of :func:`poly_mmd2` generalised to unequal sizes, on the whole resampled sets (no
    subsets). The kernel matrices are computed once, block by block, and every replicate's sums are
    weight products with them. A replicate with fewer than 2 draws in a set: NaN.
    """
    x, y, w1, w2 = _bootstrap_inputs(real, gen, real_weights, gen_weights, centre=False)
    m1, m2 = w1.sum(axis=1), w2.sum(axis=1)
    self_x = (_sq_norms(x) / x.shape[1] + 1.0) ** 3  # k(xᵢ, xᵢ)
    self_y = (_sq_norms(y) / y.shape[1] + 1.0) ** 3
    within_x = _weighted_kernel_sums(x, x, w1, w1) - w1 @ self_x
    within_y = _weighted_kernel_sums(y, y, w2, w2) - w2 @ self_y
    between = _weighted_kernel_sums(x, y, w1, w2)
    ok = (m1 >= 2) & (m2 >= 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = within_x / (m1 * (m1 - 1)) + within_y / (m2 * (m2 - 1)) - 2.0 * between / (m1 * m2)
    return np.where(ok, value, np.nan)


def _distance_matrix(u: np.ndarray) -> np.ndarray:
    """All pairwise Euclidean distances between the rows of u (distinct vectors), float64.

    From the Gram product, with every pair whose squared distance is within the product's rounding
    bound of 0 (the diagonal, near-duplicates) re-measured exactly from the differences.
    """
    n = u.shape[0]
    sq = _sq_norms(u)
    out = np.empty((n, n), dtype=np.float64)
    step = max(1, _DISTANCE_BLOCK_ELEMENTS // n)
    for s in range(0, n, step):
        d2, tol = _gram_sq_distances(u[s : s + step], u, sq[s : s + step], sq)
        rows, cols = np.nonzero(d2 <= tol)
        np.sqrt(np.maximum(d2, 0.0), out=out[s : s + step])
        out[rows + s, cols] = _pair_distances(u, u, rows + s, cols)
    return out


def _neighbour_lists(dist: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of a set's rows (indices into ``dist``), its nearest rows of the same set, nearest
    first, and their distances: the first few dozen, of which any bootstrap resample keeps about 63 %."""
    within = dist[np.ix_(rows, rows)]
    length = min(rows.size, 8 * (k + 1))
    if length < rows.size:
        near = np.argpartition(within, length - 1, axis=1)[:, :length]
    else:
        near = np.broadcast_to(np.arange(rows.size), within.shape)
    d = np.take_along_axis(within, near, axis=1)
    order = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(near, order, axis=1), np.take_along_axis(d, order, axis=1)


def _drawn_radii(
    dist: np.ndarray, rows: np.ndarray, drawn: np.ndarray, lists: tuple[np.ndarray, np.ndarray], k: int
) -> np.ndarray:
    """(replicates, n): distance from each drawn row to its k-th nearest other drawn row of the same
    set, -1 for undrawn rows; ``drawn`` (replicates, n) bool, each replicate with more than k drawn.

    The (k+1)-th drawn entry of a row's sorted neighbour list (the row itself, at distance 0, is the
    first): every row outside the list is at least as far as the list's last entry, so this is the
    (k+1)-th smallest distance to the drawn rows, ties included. Rows whose list holds k or fewer
    drawn rows (rare: the list has 8(k+1) entries) fall back to a partition over all drawn rows.
    """
    near, near_d = lists
    # (list position, row, replicate): the running count goes along the outermost axis, which numpy
    # accumulates in long contiguous inner loops (along a short last axis it is ~10x slower).
    hits = np.cumsum(drawn.T[near.T], axis=0, dtype=np.int32)
    # The counts never decrease, so the first position past k is the number of positions at most k.
    first = np.minimum(np.count_nonzero(hits <= k, axis=0), near.shape[1] - 1)
    radii = near_d[np.arange(near.shape[0])[:, None], first].T
    for i, b in np.argwhere((hits[-1] <= k) & drawn.T):
        radii[b, i] = np.partition(dist[rows[i], rows[drawn[b]]], k)[k]
    radii[~drawn] = -1.0
    return radii


def prdc_bootstrap(
    real: np.ndarray,
    gen: np.ndarray,
    real_weights: np.ndarray,
    gen_weights: np.ndarray,
    k: int = 5,
) -> dict[str, np.ndarray]:
    """Precision, recall, density and coverage for each replicate of row weights: a (B,) array per
    metric from features (N₁, D), (N₂, D) and weights (B, N₁), (B, N₂).

    Duplicates rule. A bootstrap resample repeats rows, and a repeated point has a zero-distance
    neighbour, which would shrink its k-NN ball to nothing. So in each replicate the k-NN radii are
    computed among the *distinct* drawn rows of each set (rows with weight > 0; two different rows with
    identical features stay two points, as in :func:`prdc`), and the counts weight each draw by its
    multiplicity: precision and density average over generated draws, recall and coverage over real
    draws. Density counts each distinct real ball once: counting a drawn-twice ball twice would inflate
    density by about N/N_distinct ≈ 1/(1−1/e) ≈ 1.6 in a bootstrap resample, since the balls of the
    N_distinct points already hold about k points each. With all weights 1 this is :func:`prdc` exactly.

    Bias. The radii come from about 63 % as many distinct points as the full sets have, so each ball is
    larger; both sets shrink alike, so the fractions of ball mass that the metrics compare stay about
    the same and the replicates stay centred near the full-set values (measured: see the README), but
    they describe sets of ~0.63 N distinct points, which makes the interval slightly wider than for N.
    A replicate with k or fewer distinct rows in a set has no k-NN ball: NaN in every metric.

    Distances are computed once for all distinct vectors of both sets (from the Gram product, exact
    near 0, so identical vectors are exactly 0 apart and a generated copy of a real image ties with
    it as in :func:`prdc`); that matrix needs (distinct vectors)² float64 entries.

    Raises:
        ValueError: k < 1, bad features or weights, dimensions differ, or more than
            √(2²⁶) = 8192 distinct vectors (the distance matrix would exceed 512 MiB).
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer ≥ 1; got {k!r}")
    k = int(k)
    x, y, w1, w2 = _bootstrap_inputs(real, gen, real_weights, gen_weights, centre=True)
    n1 = x.shape[0]
    vectors, index = np.unique(np.concatenate([x, y]), axis=0, return_inverse=True)
    index = index.reshape(-1)
    if vectors.shape[0] ** 2 > _PRDC_BOOTSTRAP_MAX:
        raise ValueError(
            f"the precision/recall/density/coverage bootstrap keeps all pairwise distances of the "
            f"{vectors.shape[0]} distinct feature vectors in memory, more than its limit of "
            f"{int(np.sqrt(_PRDC_BOOTSTRAP_MAX))}; compute its CI on a subset of cases or per group"
        )
    dist = _distance_matrix(vectors)
    ix, iy = index[:n1], index[n1:]
    lists_x = _neighbour_lists(dist, ix, k)
    lists_y = _neighbour_lists(dist, iy, k)
    # Whole (n_real, n_gen) comparisons with undrawn rows' radii at -1 (never inside) and undrawn columns
    # weighted 0 are cheaper than gathering the drawn rows and columns in every replicate.
    between = dist[np.ix_(ix, iy)]
    # Recall's comparisons in (generated, real) layout: numpy broadcasts the radii over the middle axis
    # and reduces over it several times faster than over the last one (measured 7x at 1000 x 1000).
    between_t = np.ascontiguousarray(between.T)
    out = {name: np.full(w1.shape[0], np.nan) for name in ("precision", "recall", "density", "coverage")}
    drawn_r, drawn_c = w1 > 0, w2 > 0
    defined = np.flatnonzero((drawn_r.sum(axis=1) > k) & (drawn_c.sum(axis=1) > k))
    # Replicates in stacks of about 2²² (n_real, n_gen) comparisons.
    step = max(1, _DISTANCE_BLOCK_ELEMENTS // between.size)
    for s in range(0, defined.size, step):
        b = defined[s : s + step]
        radius_r = _drawn_radii(dist, ix, drawn_r[b], lists_x, k)
        radius_c = _drawn_radii(dist, iy, drawn_c[b], lists_y, k)
        in_real_ball = between[None] < radius_r[:, :, None]  # (replicates, n_real, n_gen)
        gen_ball_holds = between_t[None] < radius_c[:, :, None]  # (replicates, n_gen, n_real)
        count_r, count_c = w1[b], w2[b]
        gen_draws, real_draws = count_c.sum(axis=1), count_r.sum(axis=1)
        out["precision"][b] = np.einsum("bj,bj->b", count_c, in_real_ball.any(axis=1)) / gen_draws
        balls = np.count_nonzero(in_real_ball, axis=1)
        out["density"][b] = np.einsum("bj,bj->b", count_c, balls) / (k * gen_draws)
        out["recall"][b] = np.einsum("bi,bi->b", count_r, gen_ball_holds.any(axis=1)) / real_draws
        covered = np.matmul(in_real_ball, drawn_c[b][:, :, None])[:, :, 0]
        out["coverage"][b] = np.einsum("bi,bi->b", count_r, covered) / real_draws
    return out
