"""α-precision and β-recall (Alaa, van Breugel, Saveliev & van der Schaar, ICML 2022), with case weights.

Numpy in, numpy out. The formula is the authors' reference implementation (``compute_alpha_precision``
in vanderschaarlab/evaluating-generative-models, ``AlphaPrecision.metrics`` in synthcity), applied to
the vectors as given, i.e. its "naive" variant without the learned one-class embedding:

* the α-support of the real data is the ball about the real mean whose radius is the α-quantile of the
  real rows' distances to that mean (``np.quantile``, linear), for α on ``linspace(0, 1, 30)``;
  α-precision(α) is the share of synthetic rows inside it;
* β-recall(β) is the share of real rows whose nearest synthetic row is no farther than their nearest
  other real row, *and* whose nearest synthetic row lies within the β-quantile of those rows'
  distances to the synthetic mean;
* each curve is summarised as 1 − 2·Σ|α − curve(α)|·Δα (1: the curve is the diagonal).

The paper's supports live in a one-class network's embedding trained on the real data; without that
network the supports are balls in the feature space itself, which the audit uses (its features are
already a trained embedding). Distances are Euclidean; the privacy stage passes unit rows, so the
geometry is its cosine one (‖a − b‖² = 2·(1 − cos)).

Bootstrap replicates weight each case by how often it was drawn (:func:`audit.stats.case_resample_weights`):
means and quantiles are those of the resampled multiset, while nearest neighbours are sought among the
*distinct* drawn cases, as if each was drawn once, so a case drawn twice is not its own nearest neighbour
at distance 0 (which would collapse β-recall in every replicate). With all weights 1 this is exactly the
reference formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALPHAS",
    "SUMMARY_RANGE",
    "AlphaBeta",
    "Supports",
    "alpha_beta",
    "alpha_precision_beta_recall",
    "prepare_supports",
]

ALPHAS = np.linspace(0.0, 1.0, 30)  # the reference implementation's grid
# The summaries' range for monotone curves: 1 at the diagonal, 1 − 2·Σα·Δα = −1/29 for a curve stuck
# at 0 (or 1) everywhere.
SUMMARY_RANGE = (float(1.0 - 2.0 * ALPHAS.sum() * (ALPHAS[1] - ALPHAS[0])), 1.0)
NEIGHBOURS = 32  # nearest rows kept per real row; a replicate that drew none of them searches all rows
_ELEMENTS = 1 << 24  # (replicates × rows × columns) elements of one chunk's temporaries


@dataclass(frozen=True)
class AlphaBeta:
    """Curves (B, len(ALPHAS)) and their summaries (B,), one row per weight vector."""

    alphas: np.ndarray
    precision_curve: np.ndarray
    recall_curve: np.ndarray
    alpha_precision: np.ndarray
    beta_recall: np.ndarray


@dataclass(frozen=True)
class Supports:
    """What every replicate shares: the rows (float64, as given), which case each synthetic row
    belongs to, and each real row's nearest real (other) and synthetic rows."""

    real: np.ndarray  # (n, d)
    synthetic: np.ndarray  # (m, d)
    synthetic_case: np.ndarray  # (m,) int: the real row (case) each synthetic row was drawn for
    offset: np.ndarray  # (d,) the real mean: batched distances to centres are taken about it
    real_sq: np.ndarray  # (n,) ‖real − offset‖²
    synthetic_sq: np.ndarray  # (m,) ‖synthetic − offset‖²
    rr_dist: np.ndarray  # (n, K) distances to the nearest other real rows, ascending
    rr_idx: np.ndarray
    rs_dist: np.ndarray  # (n, K') distances to the nearest synthetic rows, ascending
    rs_idx: np.ndarray


def _rows(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (rows, features); got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must hold floating-point vectors; got dtype {a.dtype}")
    a = a.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
    if bad.size:
        raise ValueError(f"{name} contains NaN or ±inf in row(s) {bad[:10].tolist()}")
    return a


def _nearest(
    query: np.ndarray, reference: np.ndarray, k: int, exclude_self: bool, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest (Euclidean), through the privacy audit's blocked search."""
    from audit.metrics.functional.privacy import nearest_neighbours

    # Distances on nearest_neighbours' scale, ‖a − b‖ / √d, which _brute keeps too: only neighbour
    # distances are compared with each other, so the scale is free.
    found = nearest_neighbours(query, reference, metric="l2", k=k, exclude_self=exclude_self, device=device)
    return found.distances, found.indices


def prepare_supports(
    real: np.ndarray, synthetic: np.ndarray, synthetic_case: np.ndarray | None = None, *, device: str = "cpu"
) -> Supports:
    """Check the inputs and find the neighbours every replicate draws from.

    ``synthetic_case[j]``: the real row (case) synthetic row j belongs to, so that a replicate that
    draws case i twice weighs its synthetic rows twice too; by default row j belongs to case j (one
    synthetic row per real row, the reference implementation's setting).
    """
    r = _rows(real, "real")
    s = _rows(synthetic, "synthetic")
    if r.shape[1] != s.shape[1]:
        raise ValueError(
            f"real has {r.shape[1]} features per row but synthetic {s.shape[1]}: both must come from the "
            "same feature extractor"
        )
    if r.shape[0] < 2:
        raise ValueError(
            f"real needs at least 2 rows (each real row's nearest other real row); got {r.shape[0]}"
        )
    if synthetic_case is None:
        if s.shape[0] != r.shape[0]:
            raise ValueError(
                f"real has {r.shape[0]} rows and synthetic {s.shape[0]}: pass synthetic_case to say which "
                "real row (case) each synthetic row belongs to"
            )
        case = np.arange(s.shape[0])
    else:
        case = np.asarray(synthetic_case)
        if case.shape != (s.shape[0],) or not np.issubdtype(case.dtype, np.integer):
            raise ValueError(
                f"synthetic_case must be {s.shape[0]} integers (one per synthetic row); got {case!r}"
            )
        if case.size and (case.min() < 0 or case.max() >= r.shape[0]):
            raise ValueError(
                f"synthetic_case must index the {r.shape[0]} real rows; got values outside 0..{r.shape[0] - 1}"
            )
    offset = r.mean(axis=0)
    # Enough synthetic neighbours per real row to span NEIGHBOURS distinct cases even when one case's
    # samples are all alike (a deterministic or memorising model), so replicates rarely search all rows.
    per_case = int(np.bincount(case, minlength=r.shape[0]).max()) if case.size else 1
    rr_dist, rr_idx = _nearest(r, r, min(NEIGHBOURS, r.shape[0] - 1), exclude_self=True, device=device)
    rs_dist, rs_idx = _nearest(
        r, s, min(NEIGHBOURS * per_case, s.shape[0]), exclude_self=False, device=device
    )
    return Supports(
        r,
        s,
        case.astype(np.int64),
        offset,
        _sq(r - offset),
        _sq(s - offset),
        rr_dist,
        rr_idx,
        rs_dist,
        rs_idx,
    )


def _sq(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _to_centres(x: np.ndarray, x_sq: np.ndarray, offset: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(B, rows) ‖x − c_b‖: by differences for a single centre (the estimate itself: the reference's
    arithmetic, so points equally far from the centre stay equal), by one matrix product about
    ``offset`` for a batch of replicates (the interval only); ``x_sq`` is ‖x − offset‖²."""
    if centres.shape[0] == 1:
        out = np.empty((1, x.shape[0]))
        step = max(1, _ELEMENTS // (4 * x.shape[1]))
        for s in range(0, x.shape[0], step):
            out[0, s : s + step] = np.sqrt(((x[s : s + step] - centres[0]) ** 2).sum(axis=1))
        return out
    c = centres - offset
    # (x − o)·(c − o) = x·(c − o) − o·(c − o): no shifted copy of x is made.
    cross = x @ c.T - (offset @ c.T)[None, :]
    sq = x_sq[:, None] - 2.0 * cross + _sq(c)[None, :]
    return np.sqrt(np.maximum(sq, 0.0)).T


def _means(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, d) weighted means; all-ones weights take numpy's mean, the reference's arithmetic."""
    if weights.shape[0] == 1 and (weights == 1).all():
        return x.mean(axis=0)[None, :]
    total = weights.sum(axis=1)
    return (weights @ x) / np.where(total > 0, total, 1.0)[:, None]


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(B, A) ``np.quantile(..., method="linear")`` of each row's multiset: value i repeated weights[b, i]
    times (integer weights; zero-weight values are absent), with numpy's own index and interpolation
    arithmetic, so a replicate of all-ones weights gives numpy's bits."""
    order = np.argsort(values, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)
    cw = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)  # exact: integer counts
    total = cw[:, -1]
    out = np.empty((values.shape[0], levels.size))
    rows = np.arange(values.shape[0])
    for a, level in enumerate(levels):
        virtual = (total - 1.0) * level  # numpy's virtual index for "linear"
        lo = np.floor(virtual)
        gamma = virtual - lo
        above = virtual >= total - 1.0
        lo = np.where(above, total - 1.0, np.maximum(lo, 0.0))
        hi = np.where(above, total - 1.0, np.minimum(lo + 1.0, total - 1.0))
        # The element at (0-based) position t of the sorted multiset: the first value whose cumulative
        # count exceeds t.
        a_ = v[rows, (cw > lo[:, None]).argmax(axis=1)]
        b_ = v[rows, (cw > hi[:, None]).argmax(axis=1)]
        diff = b_ - a_
        out[:, a] = np.where(gamma >= 0.5, b_ - diff * (1.0 - gamma), a_ + diff * gamma)  # numpy's _lerp
    return out


def _brute(query: np.ndarray, reference: np.ndarray, allowed: np.ndarray) -> tuple[float, int]:
    """Nearest allowed reference row of one query row, by differences, as ‖a − b‖ / √d (inf, -1 when
    none is allowed)."""
    cand = np.flatnonzero(allowed)
    if cand.size == 0:
        return np.inf, -1
    d = np.sqrt(((reference[cand] - query[None, :]) ** 2).sum(axis=1)) / np.sqrt(query.size)
    j = int(np.argmin(d))  # ties: the lowest index, as nearest_neighbours orders them
    return float(d[j]), int(cand[j])


def _first_present(
    dist: np.ndarray,
    idx: np.ndarray,
    present: np.ndarray,
    query: np.ndarray,
    reference: np.ndarray,
    exclude_self: bool,
    wanted: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(B, n) distance and index of each row's nearest reference row that is present in replicate b.

    ``present`` (B, reference rows) bool. Rows whose K listed neighbours are all absent, and that the
    replicate needs (``wanted``), search every present reference row."""
    n = dist.shape[0]
    hit = present[:, idx]  # (B, n, K)
    first = hit.argmax(axis=2)
    out_d = dist[np.arange(n)[None, :], first]
    out_i = idx[np.arange(n)[None, :], first]
    missing = np.argwhere(~hit.any(axis=2) & wanted)
    for rb, i in missing:
        allowed = present[rb].copy()
        if exclude_self:
            allowed[i] = False
        out_d[rb, i], out_i[rb, i] = _brute(query[i], reference, allowed)
    return out_d, out_i


def _summary(curve: np.ndarray) -> np.ndarray:
    return 1.0 - 2.0 * np.abs(ALPHAS[None, :] - curve).sum(axis=1) * (ALPHAS[1] - ALPHAS[0])


def _chunk(s: Supports, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = w[:, s.synthetic_case]  # synthetic rows weigh as their case
    wr, wu = w.sum(axis=1), u.sum(axis=1)
    real_present, synth_present = w > 0, u > 0
    # α-precision: the real α-supports, and the synthetic rows inside each.
    centre = _means(s.real, w)
    radii = _weighted_quantile(_to_centres(s.real, s.real_sq, s.offset, centre), w, ALPHAS)
    to_centre = _to_centres(s.synthetic, s.synthetic_sq, s.offset, centre)
    inside = (to_centre[:, :, None] <= radii[:, None, :]) * u[:, :, None]
    precision = inside.sum(axis=1) / np.where(wu > 0, wu, np.nan)[:, None]
    # β-recall: real rows covered by a synthetic row, within the β-support of those synthetic rows.
    rr, _ = _first_present(s.rr_dist, s.rr_idx, real_present, s.real, s.real, True, real_present)
    rs, arg = _first_present(s.rs_dist, s.rs_idx, synth_present, s.real, s.synthetic, False, real_present)
    arg = np.maximum(arg, 0)  # -1 only where no synthetic row is present: those replicates are NaN below
    synth_centre = _means(s.synthetic, u)
    to_synth_centre = _to_centres(s.synthetic, s.synthetic_sq, s.offset, synth_centre)
    closest = np.take_along_axis(to_synth_centre, arg, axis=1)
    radii_s = _weighted_quantile(closest, w, ALPHAS)
    covered = (rs <= rr) & real_present
    within = (closest[:, :, None] <= radii_s[:, None, :]) & covered[:, :, None]
    recall = (within * w[:, :, None]).sum(axis=1) / wr[:, None]
    # A replicate with fewer than two distinct cases, or no synthetic row, has no nearest neighbours.
    undefined = (real_present.sum(axis=1) < 2) | (wu == 0)
    precision[undefined], recall[undefined] = np.nan, np.nan
    return precision, recall


def alpha_beta(supports: Supports, weights: np.ndarray) -> AlphaBeta:
    """The curves and summaries for each weight vector: ``weights`` (B, n) case counts (or (n,)).

    Weights must be non-negative integers (bootstrap counts); all ones is the reference formula.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    n = supports.real.shape[0]
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"weights must be (replicates, {n}) case counts; got shape {w.shape}")
    if (w < 0).any() or (w != np.round(w)).any():
        raise ValueError("weights must be non-negative integer counts (how often each case was drawn)")
    k = max(supports.rr_idx.shape[1], supports.rs_idx.shape[1], 1)
    per = max(n * k, supports.synthetic.shape[0] * ALPHAS.size, n * ALPHAS.size)
    step = max(1, _ELEMENTS // per)
    parts = [_chunk(supports, w[start : start + step]) for start in range(0, w.shape[0], step)]
    precision = np.concatenate([p for p, _ in parts])
    recall = np.concatenate([r for _, r in parts])
    return AlphaBeta(ALPHAS.copy(), precision, recall, _summary(precision), _summary(recall))


def alpha_precision_beta_recall(real: np.ndarray, synthetic: np.ndarray) -> tuple[float, float]:
    """(α-precision, β-recall) of equally many real and synthetic rows, row j of each a pair."""
    supports = prepare_supports(real, synthetic)
    out = alpha_beta(supports, np.ones(supports.real.shape[0]))
    return float(out.alpha_precision[0]), float(out.beta_recall[0])
