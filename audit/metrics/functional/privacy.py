"""Privacy and memorisation kernels: exact nearest neighbours to the training set, and what follows.

Numpy in, numpy out. :func:`nearest_neighbours` works in blocks on ``device`` ("cpu", "cuda",
"cuda:N"): torch's matrix products on a GPU, numpy's BLAS on a CPU (faster there, see :func:`_scores`),
torch's top-k and sorts on either. Everything is deterministic: no random numbers are drawn.

* :func:`nearest_neighbours`: exact k-NN of generated images (query) among training images
  (reference) in feature space (``metric="cosine"``: 1 − cos(a, b)) or pixel space (``metric="l2"``:
  ‖a − b‖ / √d, a per-pixel RMS difference on :func:`pixel_vectors`). The reference may be a stream of
  blocks, so memory is O(block_rows × block_cols), flat in both set sizes.
* :func:`calibration_threshold` / :func:`flag_memorised`: the memorisation threshold is the
  ``quantile`` of held-out real patients' distances to the training set, so "closer to training than
  all but 1 % of genuinely new patients are" is flagged; a generator that copies nothing is flagged at
  about ``quantile``.
* :func:`authenticity`: Alaa, van Breugel, Saveliev & van der Schaar, "How Faithful is your
  Synthetic Data? Sample-level Metrics for Evaluating and Auditing Generative Models", ICML 2022,
  §3.3: a generated sample is *not* authentic when it is strictly closer to its nearest training point
  than that training point is to its own nearest other training point.
* :func:`mann_whitney_auc`: P(gen > real) + ½ P(gen = real) over nearest-training distances of
  generated samples vs held-out real ones; below 0.5 the generator sits closer to its training set
  than new patients do.
* :func:`reid_scores`: mean and max of a re-identification model's scores over the k nearest
  training images.

What this avoids from CheXGenBench's memorisation check: images there are subtracted as uint8, so
``0 − 255`` wraps to 1 and a maximally different pair looks nearly identical (here every image is
float before any arithmetic); and a sample is called memorised against no threshold at all (here the
threshold is calibrated on held-out real patients, so the false-positive rate is known).

The same paper's α-precision and β-recall are in :mod:`audit.metrics.functional.alpha_beta`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

# The pixel vectors live in their own module; imported here, where callers have always found them.
from audit.metrics.functional.privacy_pixels import (
    mirror_pixel_vectors,
    pixel_shifts,
    pixel_vectors,
    pixel_views,
    pixel_window,
)

# torch (and audit.evaluators.base, which imports it) is imported inside the functions that multiply
# matrices or resize images: the calibration, authenticity, AUC and re-ID kernels are pure numpy, and
# aggregating a run whose features are all cached must not import torch.

__all__ = [
    "Neighbours",
    "authenticity",
    "calibration_threshold",
    "flag_memorised",
    "mann_whitney_auc",
    "mirror_pixel_vectors",
    "nearest_neighbours",
    "nearest_of_both",
    "pixel_shifts",
    "pixel_vectors",
    "pixel_views",
    "pixel_window",
    "reid_scores",
    "union_thresholds",
]

Metric = Literal["cosine", "l2"]

# Elements per distance block (query rows × reference rows) and per reference block (rows × d): 32 MiB
# of float32 on a CPU, 512 MiB on a GPU. On 2 CPU cores, 512 × 11k to 4096² blocks ran at the same
# GEMM rate (numpy's OpenBLAS, ~200 GFLOP/s), so the budget only bounds memory.
_BLOCK_ELEMENTS = {"cpu": 2**23, "cuda": 2**27}
_QUERY_ROWS = {"cpu": 512, "cuda": 2048}  # default block_rows; reference rows per block follow
# Candidates taken per query and block beyond k by the float32 pass: the (k + _EXTRA)-th proves that
# nothing outside the candidates can be among the k nearest (see _merge_block); queries where it cannot
# (near-ties at float32 precision) take a wider second pass.
_EXTRA = 3
# Columns per partial matrix product (see _scores): bounds the float32 accumulation error of a dot
# product by ~(1024 + d/1024)·u instead of d·u. Feature vectors (768-d) are one part; 128² pixel rows
# 16, at no measurable cost.
_GEMM_DEPTH = 1024
_U32 = 2.0**-24  # float32 unit roundoff
_SENTINEL = int(np.iinfo(np.int64).max)  # "no neighbour yet": sorts after every real index


@dataclass(frozen=True)
class Neighbours:
    """The k nearest reference rows of each query row.

    ``distances``: float64 (n, k), ascending along each row; ``indices``: int64 (n, k), rows of the
    concatenated reference (every block of a stream, in order). Equal distances keep the lower index
    first.
    """

    distances: np.ndarray
    indices: np.ndarray


# --------------------------------------------------------------------------------------------- checks


def _check_features(x: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array shaped (N, D); got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"{name} must hold floating-point vectors; got dtype {x.dtype}. Pass features as the extractor "
            "returns them, or images through pixel_vectors"
        )
    if x.dtype.itemsize > 8:  # torch has no long double: say so before it fails with a TypeError
        raise ValueError(
            f"{name} has dtype {x.dtype}; pass float16, float32 or float64 (x.astype(np.float64))"
        )
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D, shaped (N rows, D >= 1 columns); got shape {x.shape}")
    return x


def _nonfinite_error(name: str, bad: np.ndarray, offset: int = 0) -> ValueError:
    rows = (bad[:10] + offset).tolist()
    more = " …" if bad.size > 10 else ""
    return ValueError(
        f"{name} contains NaN or ±inf in {bad.size} row(s) (row {rows}{more}); fix the feature extraction "
        "(NaN usually comes from a blank or unreadable image) or drop those rows"
    )


def _zero_rows_error(name: str, bad: np.ndarray, offset: int = 0) -> ValueError:
    rows = (bad[:10] + offset).tolist()
    more = " …" if bad.size > 10 else ""
    return ValueError(
        f"{name} has {bad.size} all-zero row(s) (row {rows}{more}): their cosine distance is undefined. "
        "Use metric='l2', or drop those rows (an all-zero feature vector usually means a failed extraction)"
    )


def _vector(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array; got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers; got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(
            f"{name} contains NaN or ±inf at index {np.flatnonzero(~np.isfinite(a))[:10].tolist()}"
        )
    return a


# ---------------------------------------------------------------------------------------------- k-NN


def _input_roundoff() -> float:
    """Unit roundoff of torch's float32 GEMM inputs under torch's current precision settings.

    ``torch.set_float32_matmul_precision("high")`` (TF32) or ``"medium"`` (bfloat16), or the per-backend
    ``fp32_precision`` switches, make float32 matrix products round their inputs to 10 or 7 mantissa
    bits; the error bound must widen with them or candidates could be missed.
    """
    import torch

    settings = {torch.get_float32_matmul_precision()}
    for backend in (torch.backends, torch.backends.cuda.matmul, torch.backends.mkldnn.matmul):
        settings.add(str(getattr(backend, "fp32_precision", "ieee")))
    if "medium" in settings or "bf16" in settings:
        return 2.0**-8
    if "high" in settings or "tf32" in settings or torch.backends.cuda.matmul.allow_tf32:
        return 2.0**-11
    return _U32


def _blocks(reference: np.ndarray | Iterable[np.ndarray], d: int, cols: int) -> Iterator[np.ndarray]:
    """The reference as consecutive blocks of exactly ``cols`` rows (the last may be shorter).

    Whole ``cols``-row slices of a block are passed on as views. Remainders are copied into one
    ``cols``-row buffer until it is full, so many small cache blocks still make full-size matrix
    products, each row is copied at most once, and a stream that reuses one array for every block it
    yields is safe. Each yielded block is finished with before the next is drawn.
    """

    def check(block: np.ndarray, name: str) -> None:
        _check_features(block, name)
        if block.shape[1] != d:
            raise ValueError(
                f"{name} has {block.shape[1]} columns but the query has {d}: both sets must come from the "
                "same feature extractor (or the same pixel_size)"
            )

    if isinstance(reference, np.ndarray):  # one array: views only
        check(reference, "reference")
        for start in range(0, reference.shape[0], cols):
            yield reference[start : start + cols]
        return
    buffer: np.ndarray | None = None
    held = 0
    for b, block in enumerate(reference):
        check(block, f"reference block {b}")
        start = 0
        while start < block.shape[0]:
            if held == 0 and block.shape[0] - start >= cols:
                yield block[start : start + cols]
                start += cols
                continue
            if buffer is None or buffer.dtype != np.result_type(buffer.dtype, block.dtype):
                dtype = block.dtype if buffer is None else np.result_type(buffer.dtype, block.dtype)
                grown = np.empty((cols, d), dtype)
                if buffer is not None:
                    grown[:held] = buffer[:held]
                buffer = grown
            take = min(cols - held, block.shape[0] - start)
            buffer[held : held + take] = block[start : start + take]
            held, start = held + take, start + take
            if held == cols:
                yield buffer
                held = 0
    if held and buffer is not None:
        yield buffer[:held]


@dataclass(frozen=True)
class _Rows:
    """One side (query, or a reference block) on the device, as the two passes need it."""

    gemm: torch.Tensor  # float32 rows for the candidate GEMM (unit rows for cosine)
    source: torch.Tensor  # the input rows, as given: re-scoring gathers and upcasts them (exactly)
    source_norm: torch.Tensor  # float64 ‖row‖ (l2: less the centre); cosine re-scoring divides by it
    # float64 ‖v‖² of the vectors v multiplied (1 for cosine; for l2 the rows less the centre)
    sq_norm: torch.Tensor
    norm: torch.Tensor  # float64 ‖v‖ of those vectors (1 for cosine)
    max_norm: float
    cosine: bool


def _read_only_tensor(x: np.ndarray, dev: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``dev`` without a copy on a CPU, also when ``x`` is read-only (a memory map,
    an audit.images array): these tensors are only ever read, so torch's not-writable warning is noise."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x).to(dev)


def _numpy_gemm(dev: torch.device) -> bool:
    """Whether the float32 scores go through numpy's BLAS (CPU, see :func:`_scores`) or torch's."""
    return dev.type == "cpu"


def _prepare(
    x: np.ndarray,
    metric: Metric,
    chunk: int,
    name: str,
    offset: int,
    dev: torch.device,
    center: np.ndarray | None = None,
    scale: float = 1.0,
) -> _Rows:
    """Check ``x`` and build its float32 rows and norms, ``chunk`` rows at a time, in numpy.

    ``center`` (l2 only): a vector subtracted from every row of both sides before the matrix product.
    Distances do not change, but the rows' norms, which the float32 error bound scales with, shrink to
    the spread around it (pixel rows in [0, 1]: by 3 to 5 times), and so does the candidate set.
    ``scale`` (l2 only, a power of two, so exact): multiplies those rows of both sides so the query's
    largest is about 1, keeping float32 products of tiny or huge vectors in float32's normal range,
    where the relative error bound holds. Re-scoring uses the input rows, so distances are unscaled.

    numpy, single-threaded, rather than torch: these are cheap passes over memory, and on a busy
    machine every multi-threaded torch op on a CPU waits at an OpenMP barrier.
    """
    import torch

    n, d = x.shape
    cosine = metric == "cosine"
    # l2 on float32 input, not centred, multiplies the input itself; otherwise a float32 copy (unit
    # rows for cosine, centred rows for l2 with a centre).
    itself = not cosine and x.dtype == np.float32 and center is None
    gemm = x if itself else np.empty((n, d), np.float32)
    norm = np.empty(n, np.float64)
    for s in range(0, n, chunk):
        part = x[s : s + chunk].astype(np.float64)
        if center is not None:
            part -= center
            part *= scale
        sq = np.einsum("ij,ij->i", part, part)
        bad = np.flatnonzero(~np.isfinite(sq))
        if bad.size:
            nonfinite = bad[~np.isfinite(part[bad]).all(axis=1)]
            if nonfinite.size:
                raise _nonfinite_error(name, nonfinite + s, offset)
            raise ValueError(
                f"{name} row {int(bad[0]) + s + offset} is too large to square in float64; rescale both "
                "sets by one common factor"
            )
        norm[s : s + chunk] = np.sqrt(sq)
        if cosine:
            zero = np.flatnonzero(sq == 0)
            if zero.size:
                raise _zero_rows_error(name, zero + s, offset)
            gemm[s : s + chunk] = part / norm[s : s + chunk, None]
        elif gemm is not x:
            gemm[s : s + chunk] = part
    max_norm = 1.0 if cosine else float(norm.max(initial=0.0))
    if max_norm >= 1e18:  # float32 overflows at 3.4e38: its squares must stay finite in the GEMM
        raise ValueError(
            f"{name} has a row of norm {max_norm:.3g}: too large to square in float32; rescale both sets "
            "by one common factor"
        )
    source_norm = torch.from_numpy(norm).to(dev)
    unit = torch.ones_like(source_norm)
    return _Rows(
        _read_only_tensor(gemm, dev),
        _read_only_tensor(x, dev),
        source_norm,
        unit if cosine else source_norm.square(),
        unit if cosine else source_norm,
        max_norm,
        cosine,
    )


def _exact(q: _Rows, qi: torch.Tensor, r: _Rows, ri: torch.Tensor, chunk: int) -> torch.Tensor:
    """float64 ‖a − b‖² for the pairs (qi, ri) from the input rows (unit rows for cosine), by
    differences: no cancellation, and exact copies give exactly 0."""
    import torch

    if qi.device.type == "cpu":
        return torch.from_numpy(_exact_numpy(q, qi.numpy(), r, ri.numpy()))
    out = torch.empty(qi.shape[0], dtype=torch.float64, device=qi.device)
    for s in range(0, qi.shape[0], chunk):
        i, j = qi[s : s + chunk], ri[s : s + chunk]
        a, b = q.source.index_select(0, i).double(), r.source.index_select(0, j).double()
        if q.cosine:
            a /= q.source_norm.index_select(0, i)[:, None]
            b /= r.source_norm.index_select(0, j)[:, None]
        a -= b
        out[s : s + chunk] = a.square_().sum(dim=1)
    return out


def _exact_numpy(q: _Rows, qi: np.ndarray, r: _Rows, ri: np.ndarray) -> np.ndarray:
    """:func:`_exact` on a CPU, in numpy: single-threaded passes over memory, as in :func:`_prepare`,
    rather than torch ops that each wait at an OpenMP barrier behind the BLAS threads (measured: 20 µs
    against 88 µs per 128²-pixel pair inside the privacy stage). Pairs go in chunks of 2 MiB of float64
    per side, which stay in cache."""
    qs, rs = q.source.numpy(), r.source.numpy()
    out = np.empty(qi.shape[0], dtype=np.float64)
    step = max(1, (1 << 18) // max(1, qs.shape[1]))
    for s in range(0, qi.shape[0], step):
        i, j = qi[s : s + step], ri[s : s + step]
        a, b = qs[i].astype(np.float64), rs[j].astype(np.float64)
        if q.cosine:
            a /= q.source_norm.numpy()[i][:, None]
            b /= r.source_norm.numpy()[j][:, None]
        a -= b
        out[s : s + step] = np.einsum("ij,ij->i", a, a)
    return out


def _mean_row(x: np.ndarray, chunk: int) -> np.ndarray | None:
    """The float64 mean of ``x``'s rows (summed ``chunk`` rows at a time), None when it is not finite
    (the row checks in :func:`_prepare` then name the bad rows)."""
    total = np.zeros(x.shape[1], np.float64)
    for s in range(0, x.shape[0], chunk):
        total += x[s : s + chunk].sum(axis=0, dtype=np.float64)
    mean = total / max(x.shape[0], 1)
    return mean if np.isfinite(mean).all() else None


def _power_of_two_scale(x: np.ndarray, center: np.ndarray, chunk: int) -> float:
    """2^-e with 2^e the power of two nearest the largest ‖row − center‖ of ``x`` (1 when that is 0 or
    not finite: the row checks in :func:`_prepare` then speak)."""
    largest = 0.0
    for s in range(0, x.shape[0], chunk):
        part = x[s : s + chunk].astype(np.float64) - center
        largest = max(largest, float(np.sqrt(np.einsum("ij,ij->i", part, part).max(initial=0.0))))
    if not (math.isfinite(largest) and largest > 0.0):
        return 1.0
    return math.ldexp(1.0, -round(math.log2(largest)))


def _scores(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, buffer: np.ndarray | None, depth: int
) -> torch.Tensor:
    """float32 a·bᵀ (+ bias per column): larger is nearer.

    On a CPU through numpy's BLAS into a reused buffer: torch's CPU matmul (MKL) ran at 120 GFLOP/s
    on this project's AMD EPYC test machine where numpy's OpenBLAS ran at 200 (512 × 768 × 11k blocks,
    2 cores). The float32 arithmetic, and so the error bound, is the same. On a GPU, torch's own.

    ``depth`` columns at a time, the partial products summed in float32: the rounding error of one
    dot product then grows with ``depth`` + the number of parts instead of its whole length (see the
    bound in :func:`nearest_neighbours`), whatever order the BLAS sums in.
    """
    import torch

    d = a.shape[1]
    if buffer is None:
        out = (
            a[:, :depth] @ b[:, :depth].T
            if bias is None
            else torch.addmm(bias[None, :], a[:, :depth], b[:, :depth].T)
        )
        for s in range(depth, d, depth):
            out.addmm_(a[:, s : s + depth], b[:, s : s + depth].T)
        return out
    rows, cols = a.shape[0], b.shape[0]
    out = buffer[: rows * cols].reshape(rows, cols)
    an, bn = a.numpy(), b.numpy()
    np.matmul(an[:, :depth], bn[:, :depth].T, out=out)
    if d > depth:
        part = np.empty_like(out)
        for s in range(depth, d, depth):
            np.matmul(an[:, s : s + depth], bn[:, s : s + depth].T, out=part)
            out += part
    if bias is not None:
        out += bias.numpy()
    return torch.from_numpy(out)


def _sort_pairs(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (value, index): a stable sort by index, then a stable sort by value."""
    import torch

    order = torch.sort(indices, dim=1, stable=True).indices
    values, indices = values.gather(1, order), indices.gather(1, order)
    order = torch.sort(values, dim=1, stable=True).indices
    return values.gather(1, order), indices.gather(1, order)


def nearest_neighbours(
    query: np.ndarray,
    reference: np.ndarray | Iterable[np.ndarray],
    *,
    metric: Metric,
    k: int = 1,
    exclude_self: bool = False,
    device: str = "cpu",
    block_rows: int | None = None,
) -> Neighbours:
    """Exact k nearest reference rows of every query row, in blocks.

    cosine distance = 1 − cos(a, b); l2 distance = ‖a − b‖ / √d. ``reference`` is one (m, d) array or an
    iterable of (m_i, d) blocks (read once, in order; indices count across blocks). With
    ``exclude_self`` the query *is* the reference and each row's own row is skipped (a duplicate row
    elsewhere still counts, at distance 0). ``block_rows`` query rows go through each matrix product;
    by default it and the reference block size follow an element budget per device.

    How it stays exact: each (query block × reference block) is scored by one float32 matrix product,
    a·b − ‖b‖²/2 (larger is nearer: ‖a − b‖² = ‖a‖² − 2·score, and ‖a‖² is constant per row; for l2
    both sides less the query's mean row, which leaves distances as they are and shrinks the norms the
    error bound scales with; taken 1024 columns at a time, see :func:`_scores`), of which
    ``torch.topk`` keeps k + 3 candidates. A rigorous bound on the float32 error decides which
    candidates can still be among the k nearest: those are re-scored in float64 from the input rows and
    merged into a running top-k sorted by (distance, index). When the bound cannot exclude the
    (k + 3)-th candidate (near-ties), that query takes every candidate within the bound. Distances are
    therefore those of a float64 computation, and ties fall to the lower index.
    """
    import torch

    from audit.evaluators.base import resolve_device

    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' (feature space) or 'l2' (pixel space); got {metric!r}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    k = int(k)
    _check_features(query, "query")
    n, d = query.shape
    dev = resolve_device(device)
    budget_key = "cuda" if dev.type == "cuda" else "cpu"
    budget = _BLOCK_ELEMENTS[budget_key]
    if block_rows is not None and (not isinstance(block_rows, (int, np.integer)) or block_rows < 1):
        raise ValueError(f"block_rows must be a positive integer or None; got {block_rows!r}")
    # Few query rows against many reference rows: a candidate enters the running top-k about
    # k·(1 + ½ + … + 1/blocks) times per query, each entry re-scored in float64, so fewer reference
    # blocks mean less re-scoring, while the GEMM runs as fast at 512 rows as at 4096 (measured).
    rows = max(1, min(n, int(block_rows) if block_rows else _QUERY_ROWS[budget_key]))
    cols = max(1, min(budget // rows, budget // d))
    if n == 0:
        return Neighbours(np.zeros((0, k), np.float64), np.zeros((0, k), np.int64))
    # Rigorous bound on |float32 ‖a − b‖² − exact| for one pair: the dot product's accumulation error
    # (≤ d·u·‖a‖‖b‖, doubled by the −2a·b), the inputs' rounding to float32 and to the GEMM's precision
    # (≤ 2u(‖a‖ + ‖b‖)² each way) and a few roundings of the sums, all within
    # coefficient · (‖a‖ + ‖b‖)². Realistic errors are ~√d smaller: this only widens the candidate set.
    # With the product taken _GEMM_DEPTH columns at a time and the parts summed in float32
    # (:func:`_scores`), the accumulation term is (depth + parts)·u instead of d·u.
    depth = min(d, _GEMM_DEPTH)
    parts = -(-d // depth)
    coefficient = 4 * (_U32 if _numpy_gemm(dev) else _input_roundoff()) + (2 * (depth + parts) + 16) * _U32
    chunk = max(1, 2**20 // d)  # rows upcast to float64 at a time while preparing: 8 MiB
    pair_chunk = max(1, budget // (8 * d))  # pairs re-scored at a time: 8 MiB per float64 side on a CPU

    with torch.inference_mode():
        center = _mean_row(query, chunk) if metric == "l2" else None
        scale = _power_of_two_scale(query, center, chunk) if center is not None else 1.0
        q = _prepare(np.ascontiguousarray(query), metric, chunk, "query", 0, dev, center, scale)
        best = torch.full((n, k), math.inf, dtype=torch.float64, device=dev)
        best_index = torch.full((n, k), _SENTINEL, dtype=torch.int64, device=dev)
        buffer = np.empty(rows * cols, np.float32) if _numpy_gemm(dev) else None
        offset = 0
        for block in _blocks(reference, d, cols):
            r = _prepare(np.ascontiguousarray(block), metric, chunk, "reference", offset, dev, center, scale)
            # a·b − ‖b‖²/2 ranks ‖a − b‖² per row (cosine: every ‖b‖ is 1, so the offset is a constant,
            # left out of the product and put back in `base`).
            bias = None if metric == "cosine" else (r.sq_norm * -0.5).float()
            shift = 1.0 if metric == "cosine" else 0.0
            m = r.gemm.shape[0]
            for q0 in range(0, n, rows):
                q1 = min(n, q0 + rows)
                scores = _scores(q.gemm[q0:q1], r.gemm, bias, buffer, depth)
                if exclude_self:
                    lo, hi = max(q0, offset), min(q1, offset + m)
                    if lo < hi:
                        diag = torch.arange(lo, hi, device=dev)
                        scores[diag - q0, diag - offset] = -math.inf
                # Per query row, the bound for every pair of this block (‖b‖ ≤ max_norm).
                error = coefficient * (q.norm[q0:q1] + r.max_norm).square()
                _merge_block(
                    scores, q, r, k, q0, offset, error, q.sq_norm[q0:q1] + shift,
                    best[q0:q1], best_index[q0:q1], pair_chunk,
                )  # fmt: skip
            offset += m

        if offset == 0:
            raise ValueError(
                "reference is empty: no training rows to search. Check the training manifest (or the "
                "feature cache it was read from)"
            )
        if exclude_self and offset != n:
            raise ValueError(
                f"exclude_self=True needs the reference to be the query itself, but the query has {n} rows "
                f"and the reference {offset}"
            )
        if bool((best_index == _SENTINEL).any()):
            have = offset - 1 if exclude_self else offset
            raise ValueError(f"k={k} neighbours requested but the reference offers only {have} per query row")
        sq = best.clamp_(min=0.0).cpu().numpy()
        distances = sq / 2.0 if metric == "cosine" else np.sqrt(sq) / math.sqrt(d)
        return Neighbours(distances, best_index.cpu().numpy())


def _merge_block(
    scores: torch.Tensor,
    q: _Rows,
    r: _Rows,
    k: int,
    q0: int,
    offset: int,
    error: torch.Tensor,
    base: torch.Tensor,
    best: torch.Tensor,
    best_index: torch.Tensor,
    pair_chunk: int,
) -> None:
    """Fold one block's candidates into the running (best, best_index) of its query rows, in place.

    ``scores`` (rows × m, float32, larger = nearer): approximate ‖a − b‖² = base − 2·score, within
    ``error`` of the exact value per row. Notation: D̃ the float32 distance, D the exact one, E the bound.

    * The block's true k-th smallest D is ≤ (k-th smallest D̃) + E, and a pair enters the top-k only if
      D ≤ the running k-th; so only pairs with D ≤ T = min(running k-th, k-th D̃ + E), i.e. with
      D̃ ≤ T + E, can matter. These are re-scored exactly.
    * ``topk`` keeps c = k + _EXTRA candidates; if the c-th still has D̃ ≤ T + E there may be more, and
      those rows take every column with D̃ ≤ T + E instead.
    """
    import torch

    m = scores.shape[1]
    c = min(m, k + _EXTRA)
    values, columns = torch.topk(scores, c, dim=1, largest=True, sorted=True)
    approx = base[:, None] - 2.0 * values.double()  # -inf scores (excluded self) become +inf
    kth = approx[:, k - 1] if c >= k else torch.full_like(base, math.inf)
    limit = torch.minimum(best[:, k - 1], kth + error) + error
    wide = (approx[:, c - 1] <= limit) if c < m else torch.zeros_like(base, dtype=torch.bool)
    groups = [(torch.nonzero(~wide).flatten(), values, columns)]
    if bool(wide.any()):
        rows = torch.nonzero(wide).flatten()
        full = base[rows, None] - 2.0 * scores[rows].double()
        width = int((full <= limit[rows, None]).sum(dim=1).max())
        v, cidx = torch.topk(scores[rows], width, dim=1, largest=True, sorted=True)
        groups = [(groups[0][0], values[groups[0][0]], columns[groups[0][0]]), (rows, v, cidx)]
    for rows, v, cidx in groups:
        if rows.numel() == 0:
            continue
        approx = base[rows, None] - 2.0 * v.double()
        keep = (approx <= limit[rows, None]) & torch.isfinite(approx)
        pr, pc = torch.nonzero(keep, as_tuple=True)
        exact = torch.full(v.shape, math.inf, dtype=torch.float64, device=v.device)
        index = torch.full(v.shape, _SENTINEL, dtype=torch.int64, device=v.device)
        if pr.numel():
            exact[pr, pc] = _exact(q, q0 + rows[pr], r, cidx[pr, pc], pair_chunk)
            index[pr, pc] = offset + cidx[pr, pc]
        exact, index = _sort_pairs(exact, index)
        # Every running index is below every index of this block, so a stable sort by distance of
        # [running, block] keeps ties in index order.
        merged = torch.cat([best[rows], exact], dim=1)
        merged_index = torch.cat([best_index[rows], index], dim=1)
        order = torch.sort(merged, dim=1, stable=True).indices[:, :k]
        best[rows] = merged.gather(1, order)
        best_index[rows] = merged_index.gather(1, order)


def nearest_of_both(first: Neighbours, second: Neighbours) -> tuple[Neighbours, np.ndarray]:
    """Per row, the k nearest of two searches of the same reference (e.g. a sample and its mirror
    image), and where each came from: an int (n, k), its column in ``[first, second]`` side by side
    (``>= k``: found by ``second``).

    A reference row found by both keeps its smaller distance; on equal distance ``first`` wins, and
    equal distances otherwise keep the lower index first, as :func:`nearest_neighbours` orders them.
    """
    if first.distances.shape != second.distances.shape:
        raise ValueError(
            f"both searches must have the same shape (n, k); got {first.distances.shape} and "
            f"{second.distances.shape}"
        )
    n, k = first.distances.shape
    dist = np.concatenate([first.distances, second.distances], axis=1)
    index = np.concatenate([first.indices, second.indices], axis=1)
    source = np.broadcast_to(np.arange(2 * k), (n, 2 * k))
    # Sort by (distance, index, source): lexsort's last key is the primary one.
    order = np.lexsort((source, index, dist), axis=1)
    dist, index, source = (np.take_along_axis(a, order, axis=1) for a in (dist, index, source))
    # Drop the later (farther, or same distance from `second`) occurrence of an index found by both.
    seen_before = (index[:, :, None] == index[:, None, :]) & np.tri(2 * k, k=-1, dtype=bool)[None]
    keep = ~seen_before.any(axis=2)
    rank = np.cumsum(keep, axis=1) - 1
    rows, cols = np.nonzero(keep & (rank < k))
    slot = rank[rows, cols]
    out_d, out_i, out_s = np.empty((n, k), np.float64), np.empty((n, k), np.int64), np.empty((n, k), np.int64)
    out_d[rows, slot], out_i[rows, slot], out_s[rows, slot] = (
        dist[rows, cols],
        index[rows, cols],
        source[rows, cols],
    )
    return Neighbours(out_d, out_i), out_s


# ------------------------------------------------------------------------------------ calibration


def calibration_threshold(real_distances: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of held-out real patients' nearest-training distances (``np.quantile``, linear).

    With ``quantile=0.01`` about 1 % of genuinely new patients fall below it: that is the false-positive
    rate :func:`flag_memorised` has on a generator that memorises nothing.
    """
    values = _vector(real_distances, "real_distances")
    if isinstance(quantile, bool) or not (
        isinstance(quantile, (int, float, np.floating)) and 0.0 <= float(quantile) <= 1.0
    ):
        raise ValueError(f"quantile must be a number in [0, 1] (e.g. 0.01); got {quantile!r}")
    return float(np.quantile(values, float(quantile), method="linear"))


def _sorted_quantile(ordered: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Per row of ``ordered`` (each row sorted ascending), its quantile at that row's ``level``: the
    arithmetic of ``np.quantile(row, level, method="linear")``, index and interpolation alike, so the
    values are numpy's own, bit for bit."""
    n = ordered.shape[1]
    virtual = level * (n - 1)
    lower = np.floor(virtual).astype(np.int64)
    upper = np.minimum(lower + 1, n - 1)
    gamma = virtual - lower
    rows = np.arange(ordered.shape[0])
    a, b = ordered[rows, lower], ordered[rows, upper]
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def union_thresholds(
    features: np.ndarray, pixels: np.ndarray, quantile: float, steps: int = 60
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both spaces' thresholds at one common quantile level of held-out patients' nearest-training
    distances, for each row of (sets, patients) arrays at once: (features threshold, pixels threshold,
    level), each shaped (sets,).

    ``features[i, j]`` and ``pixels[i, j]`` are one patient's distances in the two spaces (a row is one
    set of held-out patients, e.g. one bootstrap replicate of them). The level is the largest one <=
    ``quantile`` at which at most ``quantile`` of the row's patients are flagged by either space
    (:func:`flag_memorised` on each, a sample being flagged when any space flags it): thresholds at
    ``quantile`` in each space alone would flag up to twice ``quantile`` of unseen patients. Bisection
    over the level, ``steps`` halvings (2⁻⁶⁰ of ``quantile`` by default); each threshold is
    ``np.quantile(row, level)`` (:func:`calibration_threshold`).
    """
    f = np.atleast_2d(np.asarray(features, dtype=np.float64))
    p = np.atleast_2d(np.asarray(pixels, dtype=np.float64))
    if f.shape != p.shape or f.shape[1] == 0:
        raise ValueError(
            f"features and pixels must be paired (sets, patients) distances of the same shape; got {f.shape} "
            f"and {p.shape}"
        )
    if np.isnan(f).any() or np.isnan(p).any():
        raise ValueError("distances contain NaN; every held-out patient needs a distance in both spaces")
    if isinstance(quantile, bool) or not (
        isinstance(quantile, (int, float, np.floating)) and 0.0 < float(quantile) < 1.0
    ):
        raise ValueError(f"quantile must be a number in (0, 1) (e.g. 0.01); got {quantile!r}")
    q = float(quantile)
    f_sorted, p_sorted = np.sort(f, axis=1), np.sort(p, axis=1)

    def share(level: np.ndarray) -> np.ndarray:
        tf, tp = _sorted_quantile(f_sorted, level), _sorted_quantile(p_sorted, level)
        return ((f < tf[:, None]) | (p < tp[:, None])).mean(axis=1)

    low = np.zeros(f.shape[0])
    high = np.full(f.shape[0], q)
    done = share(high) <= q
    low[done] = q
    for _ in range(steps):
        # share() is a non-decreasing step function of the level: bisect for its last step <= quantile.
        mid = (low + high) / 2
        ok = share(mid) <= q
        low = np.where(done, low, np.where(ok, mid, low))
        high = np.where(done, high, np.where(ok, high, mid))
    return _sorted_quantile(f_sorted, low), _sorted_quantile(p_sorted, low), low


def flag_memorised(distances: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean per sample: ``distance < threshold``, strictly (a sample exactly at it is not flagged)."""
    values = np.asarray(distances, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError(
            "distances contain NaN; every sample needs a nearest-training distance to be flagged"
        )
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite; got {threshold!r}")
    return values < float(threshold)


def authenticity(generated_to_train_nn: np.ndarray, train_nn_of_that_train: np.ndarray) -> np.ndarray:
    """Per generated sample, True when authentic (Alaa et al. 2022); the metric is the mean.

    ``generated_to_train_nn[j]``: distance of sample j to its nearest training point i*;
    ``train_nn_of_that_train[j]``: distance of i* to its own nearest *other* training point. Sample j is
    not authentic when it is strictly closer to i* than i*'s nearest training neighbour is.
    """
    gen = _vector(generated_to_train_nn, "generated_to_train_nn")
    train = _vector(train_nn_of_that_train, "train_nn_of_that_train")
    if gen.shape != train.shape:
        raise ValueError(
            f"generated_to_train_nn has {gen.size} entries but train_nn_of_that_train {train.size}: pass, "
            "per generated sample, the training neighbour's own nearest-other-training distance"
        )
    return ~(gen < train)


def mann_whitney_auc(generated: np.ndarray, real: np.ndarray) -> float:
    """P(gen > real) + ½ P(gen = real) over all (generated, real) pairs: the Mann–Whitney U / (n₁n₂).

    Inputs are nearest-training distances. 0.5: generated samples are as far from the training set as
    held-out real patients; below 0.5: closer (memorisation pressure); above: farther (often just a
    distribution shift). Computed by sorting, O((n₁ + n₂) log n₂).
    """
    gen = _vector(generated, "generated")
    ref = np.sort(_vector(real, "real"))
    below = np.searchsorted(ref, gen, side="left")
    equal = np.searchsorted(ref, gen, side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (gen.size * ref.size))


def reid_scores(pairwise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, max) per generated sample of re-ID scores (n, k) against its k nearest training images."""
    scores = np.asarray(pairwise)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(
            f"pairwise must be (n samples, k >= 1 nearest training images) re-ID scores; got shape {scores.shape}"
        )
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores).all(axis=1))
        raise ValueError(f"re-ID scores contain NaN or ±inf in sample row(s) {bad[:10].tolist()}")
    return scores.mean(axis=1), scores.max(axis=1)
