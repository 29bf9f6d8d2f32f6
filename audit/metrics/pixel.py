"""Batched pixel-metric scoring of generated/reference image pairs: the runner's entry point.

:func:`score_pixels` validates a batch once, then computes each requested metric on the whole batch
(one value per pair, no per-pair Python loop) with the kernels of
:mod:`audit.metrics.functional.pixel`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from audit.metrics.functional import pixel as fp

__all__ = ["PIXEL_METRICS", "PixelMetric", "metric_unit", "score_pixels"]


@dataclass(frozen=True)
class PixelMetric:
    """What a pixel metric measures and which direction is better (torchmetrics-style metadata).

    ``unit`` is the unit at the default pixel_range of 1; :func:`metric_unit` gives it for other ranges.
    """

    name: str
    higher_is_better: bool
    unit: str
    description: str


PIXEL_METRICS: dict[str, PixelMetric] = {
    m.name: m
    for m in (
        PixelMetric(
            "mse",
            higher_is_better=False,
            unit="intensity² (range 1)",
            description="Mean squared error between generated and reference image, on images scaled to "
            "[0, pixel_range].",
        ),
        PixelMetric(
            "mae",
            higher_is_better=False,
            unit="intensity (range 1)",
            description="Mean absolute error between generated and reference image, on images scaled to "
            "[0, pixel_range].",
        ),
        PixelMetric(
            "psnr",
            higher_is_better=True,
            unit="dB",
            description="Peak signal-to-noise ratio, 10·log10(pixel_range² / MSE); +inf for identical images.",
        ),
        PixelMetric(
            "ssim",
            higher_is_better=True,
            unit="",
            description="Structural similarity (Wang et al. 2004): gaussian window sigma 1.5 / 11 px, K1 0.01, "
            "K2 0.03, reflect-padded borders (torchmetrics); 1 for identical images.",
        ),
        PixelMetric(
            "ms_ssim",
            higher_is_better=True,
            unit="",
            description="Multi-scale SSIM (Wang et al. 2003): 5 scales, standard betas, same window as ssim, "
            f"relu-normalised (torchmetrics); needs images of at least {fp.MS_SSIM_MIN_SIZE}×"
            f"{fp.MS_SSIM_MIN_SIZE} px.",
        ),
        PixelMetric(
            "overlap_precision",
            higher_is_better=True,
            unit="",
            description="|G∩R| / |G| for foreground masks (pixel > overlap_threshold) of generated (G) and "
            "reference (R) image; NaN when G is empty.",
        ),
        PixelMetric(
            "overlap_recall",
            higher_is_better=True,
            unit="",
            description="|G∩R| / |R| for foreground masks (pixel > overlap_threshold) of generated (G) and "
            "reference (R) image; NaN when R is empty.",
        ),
        PixelMetric(
            "overlap_f1",
            higher_is_better=True,
            unit="",
            description="2|G∩R| / (|G| + |R|) (Dice) for foreground masks (pixel > overlap_threshold); NaN when "
            "both are empty.",
        ),
    )
}

_OVERLAP = ("overlap_precision", "overlap_recall", "overlap_f1")


def metric_unit(name: str, pixel_range: float) -> str:
    """The unit of metric ``name`` when images are scaled to [0, pixel_range], e.g. "intensity² (range 255)"."""
    if name not in PIXEL_METRICS:
        raise ValueError(f"unknown pixel metric {name!r}; known are {', '.join(PIXEL_METRICS)}")
    if name == "mse":
        return f"intensity² (range {pixel_range:g})"
    if name == "mae":
        return f"intensity (range {pixel_range:g})"
    return PIXEL_METRICS[name].unit


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
        metrics: names from :data:`PIXEL_METRICS`.
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
    unknown = [m for m in metrics if m not in PIXEL_METRICS]
    if unknown:
        raise ValueError(
            f"unknown pixel metric(s) {', '.join(unknown)}; known are {', '.join(PIXEL_METRICS)}"
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
    if "ms_ssim" in metrics:
        fp.check_ms_ssim_size(h, w)
    if "ssim" in metrics:
        fp.check_ssim_size(h, w)
    if n == 0:
        return {m: np.empty(0, dtype=np.float64) for m in metrics}
    _check_values(p, "preds (generated images)")
    _check_values(t, "target (reference images)")

    out: dict[str, Tensor] = {}
    if "mse" in metrics:
        out["mse"] = fp.mse(p, t, pixel_range)
    if "mae" in metrics:
        out["mae"] = fp.mae(p, t, pixel_range)
    if "psnr" in metrics:
        out["psnr"] = fp.psnr(p, t, pixel_range)
    if "ssim" in metrics or "ms_ssim" in metrics:
        out.update(
            fp.ssim_and_ms_ssim(
                p, t, pixel_range, with_ssim="ssim" in metrics, with_ms_ssim="ms_ssim" in metrics
            )
        )
    if any(m in metrics for m in _OVERLAP):
        out.update(fp.overlap(p, t, overlap_threshold))
    return {m: out[m].numpy() for m in metrics}
