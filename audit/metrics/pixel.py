"""Batched pixel-metric scoring of generated/reference image pairs: the runner's entry point.

:func:`score_pixels` validates a batch once, then computes each requested metric on the whole batch
(one value per pair, no per-pair Python loop) with the kernels of
:mod:`audit.metrics.functional.pixel`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from audit.metrics.functional import pixel as fp

__all__ = ["PIXEL_KERNELS", "score_pixels"]


@dataclass(frozen=True)
class _Options:
    pixel_range: float
    overlap_threshold: float
    wanted: frozenset[str]


# A kernel returns the values of every metric it computes; metrics that share work (SSIM and MS-SSIM
# share their first scale, the overlap ratios their masks) share one kernel, which runs once.
Kernel = Callable[[Tensor, Tensor, _Options], dict[str, Tensor]]


def _mse(p: Tensor, t: Tensor, o: _Options) -> dict[str, Tensor]:
    return {"mse": fp.mse(p, t, o.pixel_range)}


def _mae(p: Tensor, t: Tensor, o: _Options) -> dict[str, Tensor]:
    return {"mae": fp.mae(p, t, o.pixel_range)}


def _psnr(p: Tensor, t: Tensor, o: _Options) -> dict[str, Tensor]:
    return {"psnr": fp.psnr(p, t, o.pixel_range)}


def _ssim(p: Tensor, t: Tensor, o: _Options) -> dict[str, Tensor]:
    return fp.ssim_and_ms_ssim(
        p, t, o.pixel_range, with_ssim="ssim" in o.wanted, with_ms_ssim="ms_ssim" in o.wanted
    )


def _overlap(p: Tensor, t: Tensor, o: _Options) -> dict[str, Tensor]:
    return fp.overlap(p, t, o.overlap_threshold)


# Every pixel metric of audit.metrics.catalogue and the kernel that computes it.
PIXEL_KERNELS: dict[str, Kernel] = {
    "ms_ssim": _ssim,
    "ssim": _ssim,
    "psnr": _psnr,
    "mse": _mse,
    "mae": _mae,
    "overlap_precision": _overlap,
    "overlap_recall": _overlap,
    "overlap_f1": _overlap,
}
# Checked before anything is computed, so a too-small image fails the batch with one clear error.
_SIZE_CHECKS: dict[str, Callable[[int, int], None]] = {
    "ms_ssim": fp.check_ms_ssim_size,
    "ssim": fp.check_ssim_size,
}


def _as_batch(x: Tensor | np.ndarray, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(
                f"{name} must hold floats in [0, 1]; got dtype {x.dtype} (divide 8-bit images by 255 first)"
            )
        if not x.dtype.isnative:
            x = x.astype(x.dtype.newbyteorder("="))
        with warnings.catch_warnings():
            # Read-only arrays (np.load with mmap_mode="r") are fine: nothing here writes to the input.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(x)  # shares memory; converted below only if not float32
    elif not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array; got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must hold floats in [0, 1]; got dtype {x.dtype} (divide 8-bit images by 255 first)"
        )
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must be shaped (N, H, W) or (N, 1, H, W) grey images; got {tuple(x.shape)}")
    # float32 compute on CPU: other dtypes/devices are converted once here.
    return x.to(device="cpu", dtype=torch.float32)


def _check_values(x: Tensor, name: str) -> None:
    # One pass: NaN propagates through min/max and ±inf falls outside [0, 1], so a single aminmax
    # catches all three problems; the slower diagnosis runs only when something is wrong.
    lo, hi = torch.aminmax(x)
    if bool(lo >= 0.0) and bool(hi <= 1.0):
        return
    nan = torch.isnan(x)
    if bool(nan.any()):
        bad = torch.nonzero(nan.flatten(1).any(1)).flatten().tolist()
        raise ValueError(
            f"{name} contains NaN (in image(s) at batch index {bad[:10]}); fix the image loading"
        )
    inf = torch.isinf(x)
    if bool(inf.any()):
        bad = torch.nonzero(inf.flatten(1).any(1)).flatten().tolist()
        raise ValueError(
            f"{name} contains ±inf (in image(s) at batch index {bad[:10]}); fix the image loading"
        )
    raise ValueError(
        f"{name} has values in [{float(lo):g}, {float(hi):g}], outside [0, 1]; images must be scaled to [0, 1] "
        "(use [metrics].pixel_range to report metrics on another scale)"
    )


@torch.inference_mode()
def score_pixels(
    preds: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    metrics: Sequence[str],
    pixel_range: float = 1.0,
    overlap_threshold: float = 0.5,
) -> dict[str, np.ndarray]:
    """Score each generated image (``preds``) against its reference (``target``).

    Args:
        preds, target: (N, H, W) or (N, 1, H, W) float images in [0, 1], same shape.
        metrics: names from :data:`PIXEL_KERNELS` (the pixel metrics of :mod:`audit.metrics.catalogue`).
        pixel_range: scale the images to [0, pixel_range] before scoring (255 for 8-bit-scale MSE/MAE;
            PSNR/SSIM/MS-SSIM are invariant to it).
        overlap_threshold: foreground threshold for the overlap metrics (on the [0, 1] images).

    Returns:
        ``{metric: float64 array of length N}`` in the order of ``metrics``. PSNR is +inf for identical
        images; overlap ratios are NaN where undefined (0/0).

    Raises:
        ValueError: unknown metric, bad pixel_range/threshold, shape mismatch, non-finite or out-of-range
            values. :class:`~audit.metrics.functional.pixel.ImageTooSmallError` (a ValueError) for images
            too small for ssim/ms_ssim, before anything is computed.
    """
    unknown = [m for m in metrics if m not in PIXEL_KERNELS]
    if unknown:
        raise ValueError(
            f"unknown pixel metric(s) {', '.join(unknown)}; known are {', '.join(PIXEL_KERNELS)}"
        )
    if not pixel_range > 0:
        raise ValueError(f"pixel_range must be > 0 (1 for [0, 1] images, 255 for 8-bit); got {pixel_range}")
    if not 0.0 < overlap_threshold < 1.0:
        raise ValueError(f"overlap_threshold must be in (0, 1); got {overlap_threshold}")
    p = _as_batch(preds, "preds (generated images)")
    t = _as_batch(target, "target (reference images)")
    if p.shape != t.shape:
        raise ValueError(
            f"generated and reference batches differ in shape: {tuple(p.shape)} vs {tuple(t.shape)}; "
            "resize the generated images to the reference size before scoring"
        )
    n, _, h, w = p.shape
    for name, check in _SIZE_CHECKS.items():
        if name in metrics:
            check(h, w)
    if n == 0:
        return {m: np.empty(0, dtype=np.float64) for m in metrics}
    _check_values(p, "preds (generated images)")
    _check_values(t, "target (reference images)")

    options = _Options(pixel_range, overlap_threshold, frozenset(metrics))
    out: dict[str, Tensor] = {}
    for kernel in dict.fromkeys(PIXEL_KERNELS[m] for m in metrics):
        out.update(kernel(p, t, options))
    return {m: out[m].numpy() for m in metrics}
