"""Per-image pixel metrics between generated and reference X-rays: pure kernels.

Every kernel takes float tensors shaped (N, 1, H, W) with values in [0, 1] (``preds`` = generated,
``target`` = reference, same shape) and returns a float64 tensor of shape (N,): one value per image pair,
never a batch mean. Only shapes and dtypes are checked here; value checks (finite, in [0, 1]) are done
once per batch by :func:`audit.metrics.pixel.score_pixels`.

``pixel_range`` rescales the images before scoring, so that MSE/MAE can be reported on the scale a paper
uses (255 for 8-bit). PSNR, SSIM and MS-SSIM are computed on the rescaled images with
``data_range=pixel_range`` and are therefore invariant to it (up to float32 rounding).

MSE, MAE, PSNR, SSIM and MS-SSIM are torchmetrics' functional implementations. :func:`ssim_and_ms_ssim`
is a faster re-implementation of the same two torchmetrics computations that shares the full-resolution
SSIM pass between SSIM and MS-SSIM; it matches torchmetrics to 1e-6 (tested) and is what the batched
scorer uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# torchmetrics is imported inside the kernels that use it: importing it pulls in torchvision and
# torch._dynamo (several seconds), which the fast SSIM/MS-SSIM path and the CLI do not need.

__all__ = [
    "MS_SSIM_BETAS",
    "MS_SSIM_MIN_SIZE",
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_KERNEL_SIZE",
    "SSIM_MIN_SIZE",
    "SSIM_SIGMA",
    "ImageTooSmallError",
    "check_ms_ssim_size",
    "check_ssim_size",
    "mae",
    "ms_ssim",
    "mse",
    "overlap",
    "psnr",
    "ssim",
    "ssim_and_ms_ssim",
]

# Wang et al. 2004 constants, as torchmetrics' defaults.
SSIM_SIGMA = 1.5
SSIM_KERNEL_SIZE = 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Wang, Simoncelli & Bovik 2003 scale weights (torchmetrics' default betas): five scales.
MS_SSIM_BETAS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# torchmetrics sizes a gaussian window from sigma alone (2 * int(3.5 * sigma + 0.5) + 1, ignoring
# kernel_size); for sigma 1.5 that is the same 11 px, and the image is reflect-padded by 5 px.
_PAD = (SSIM_KERNEL_SIZE - 1) // 2
# Reflect padding by 5 px needs at least 6 px per side (torch's "reflect" excludes the edge pixel).
SSIM_MIN_SIZE = _PAD + 1
# torchmetrics rejects a side unless side // 2**(scales-1) > kernel_size - 1, i.e. side // 16 >= 11:
# the smallest accepted side is 11 * 16 = 176 px (175 is rejected; checked in tests), not the 161 px a
# strict "> 160" reading of its error message suggests.
MS_SSIM_MIN_SIZE = SSIM_KERNEL_SIZE * 2 ** (len(MS_SSIM_BETAS) - 1)


# ssim_and_ms_ssim works on chunks of about this many pixels (16 images of 256², 4 of 1024²), but at
# least this many images, because the convolution vectorises across images: larger chunks fall out of
# the CPU caches and get slower per image as well as bigger (see benchmarks/pixel_metrics.py).
_CHUNK_PIXELS = 2**20
_MIN_CHUNK_IMAGES = 4


class ImageTooSmallError(ValueError):
    """The images are smaller than a metric's window needs."""


def check_ssim_size(height: int, width: int) -> None:
    """Raise :class:`ImageTooSmallError` unless SSIM's 11-px window fits an image of this size."""
    if min(height, width) < SSIM_MIN_SIZE:
        raise ImageTooSmallError(
            f"SSIM with an {SSIM_KERNEL_SIZE}-px gaussian window needs images of at least "
            f"{SSIM_MIN_SIZE}×{SSIM_MIN_SIZE} px; got {height}×{width}. Resize, or drop ssim from [metrics].pixel"
        )


def check_ms_ssim_size(height: int, width: int) -> None:
    """Raise :class:`ImageTooSmallError` unless MS-SSIM's five scales fit an image of this size."""
    if min(height, width) < MS_SSIM_MIN_SIZE:
        raise ImageTooSmallError(
            f"MS-SSIM with {len(MS_SSIM_BETAS)} scales and an {SSIM_KERNEL_SIZE}-px gaussian window needs "
            f"images of at least {MS_SSIM_MIN_SIZE}×{MS_SSIM_MIN_SIZE} px; got {height}×{width}. "
            "Resize, or drop ms_ssim from [metrics].pixel"
        )


def _check_pair(preds: Tensor, target: Tensor) -> None:
    for name, x in (("preds", preds), ("target", target)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor shaped (N, 1, H, W); got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(
                f"{name} must be a float tensor with values in [0, 1]; got dtype {x.dtype} "
                "(divide 8-bit images by 255 first)"
            )
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{name} must be shaped (N, 1, H, W) (one grey channel); got {tuple(x.shape)}")
    if preds.shape != target.shape:
        raise ValueError(
            f"preds and target must have the same shape; got {tuple(preds.shape)} and {tuple(target.shape)}. "
            "Resize the generated images to the reference size before scoring"
        )
    if preds.dtype != target.dtype:
        raise ValueError(f"preds and target must have the same dtype; got {preds.dtype} and {target.dtype}")


def _scaled(x: Tensor, pixel_range: float) -> Tensor:
    if pixel_range <= 0:
        raise ValueError(f"pixel_range must be > 0 (1 for [0, 1] images, 255 for 8-bit); got {pixel_range}")
    return x if pixel_range == 1.0 else x * pixel_range


def _per_image_columns(x: Tensor) -> Tensor:
    # torchmetrics' MSE/MAE reduce over dim 0 with one column per output, so an (H*W, N) view gives
    # one value per image without a copy.
    return x.reshape(x.shape[0], -1).T


def _per_image_error(kernel, preds: Tensor, target: Tensor, pixel_range: float) -> Tensor:
    _check_pair(preds, target)
    n = preds.shape[0]
    p, t = _scaled(preds, pixel_range), _scaled(target, pixel_range)
    return kernel(_per_image_columns(p), _per_image_columns(t), num_outputs=n).reshape(n).double()


@torch.inference_mode()
def mse(preds: Tensor, target: Tensor, pixel_range: float = 1.0) -> Tensor:
    """Mean squared error per image, on images scaled by ``pixel_range`` (unit: intensity²)."""
    from torchmetrics.functional import mean_squared_error

    return _per_image_error(mean_squared_error, preds, target, pixel_range)


@torch.inference_mode()
def mae(preds: Tensor, target: Tensor, pixel_range: float = 1.0) -> Tensor:
    """Mean absolute error per image, on images scaled by ``pixel_range`` (unit: intensity)."""
    from torchmetrics.functional import mean_absolute_error

    return _per_image_error(mean_absolute_error, preds, target, pixel_range)


@torch.inference_mode()
def psnr(preds: Tensor, target: Tensor, pixel_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image in dB, ``data_range=pixel_range``.

    Identical images have zero MSE and get ``+inf``; it is kept rather than capped, because any cap
    would be an arbitrary number that then enters means and confidence intervals.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(preds, target)
    p, t = _scaled(preds, pixel_range), _scaled(target, pixel_range)
    out = peak_signal_noise_ratio(p, t, data_range=float(pixel_range), reduction="none", dim=(1, 2, 3))
    return out.double()


def _ssim_window(pixel_range: float) -> dict[str, object]:
    """The window and constants SSIM and MS-SSIM share (torchmetrics keyword arguments)."""
    return {
        "gaussian_kernel": True,
        "sigma": SSIM_SIGMA,
        "kernel_size": SSIM_KERNEL_SIZE,
        "data_range": float(pixel_range),
        "k1": SSIM_K1,
        "k2": SSIM_K2,
    }


@torch.inference_mode()
def ssim(preds: Tensor, target: Tensor, pixel_range: float = 1.0) -> Tensor:
    """SSIM per image: gaussian window (sigma 1.5, 11 px), K1 0.01, K2 0.03, ``data_range=pixel_range``.

    torchmetrics reflect-pads the image by 5 px and averages the SSIM map over all H×W pixels, whereas
    scikit-image averages only the interior (H-10)×(W-10); the two differ by a border effect that
    shrinks with image size (up to about 3e-3 at 256² and 2e-2 at 64² on the test images).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(preds, target)
    check_ssim_size(preds.shape[-2], preds.shape[-1])
    p, t = _scaled(preds, pixel_range), _scaled(target, pixel_range)
    out = structural_similarity_index_measure(p, t, **_ssim_window(pixel_range), reduction="none")
    return out.double()


@torch.inference_mode()
def ms_ssim(preds: Tensor, target: Tensor, pixel_range: float = 1.0) -> Tensor:
    """MS-SSIM per image: five scales, default betas, the SSIM window above, ``data_range=pixel_range``.

    Raises :class:`ImageTooSmallError` for sides under :data:`MS_SSIM_MIN_SIZE` px.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    _check_pair(preds, target)
    check_ms_ssim_size(preds.shape[-2], preds.shape[-1])
    p, t = _scaled(preds, pixel_range), _scaled(target, pixel_range)
    out = multiscale_structural_similarity_index_measure(
        p,
        t,
        **_ssim_window(pixel_range),
        betas=MS_SSIM_BETAS,
        # torchmetrics' default: relu clips negative per-scale terms to 0, so that fractional powers of
        # negative numbers cannot give NaN (pytorch-msssim, the reference implementation, does the same).
        normalize="relu",
        reduction="none",
    )
    return out.double()


@torch.inference_mode()
def overlap(preds: Tensor, target: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
    """Thresholded foreground overlap per image, as reported in the FracAtlas ControlNet paper.

    Both images are binarised at ``threshold`` (a pixel is foreground when its value is > threshold);
    with G the generated and R the reference foreground:

    * ``overlap_precision`` = |G∩R| / |G|
    * ``overlap_recall`` = |G∩R| / |R|
    * ``overlap_f1`` = 2|G∩R| / (|G| + |R|)

    A ratio whose denominator is zero (0/0: no foreground where one is needed) is undefined and returned
    as NaN rather than a made-up 0 or 1; aggregation drops NaN values and reports the reduced n.
    """
    _check_pair(preds, target)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"overlap threshold must be in (0, 1); got {threshold}")
    generated = preds > threshold
    reference = target > threshold
    n_generated = generated.sum(dim=(1, 2, 3), dtype=torch.float64)
    n_reference = reference.sum(dim=(1, 2, 3), dtype=torch.float64)
    both = generated.logical_and_(reference).sum(dim=(1, 2, 3), dtype=torch.float64)
    # Float division turns 0/0 into NaN, which is the documented result.
    return {
        "overlap_precision": both / n_generated,
        "overlap_recall": both / n_reference,
        "overlap_f1": 2.0 * both / (n_generated + n_reference),
    }


def _gaussian_window(dtype: torch.dtype) -> Tensor:
    # Built with the same operations as torchmetrics' _gaussian/_gaussian_kernel_2d, so that the
    # convolutions below are bit-identical to torchmetrics'.
    size = SSIM_KERNEL_SIZE
    dist = torch.arange(start=(1 - size) / 2, end=(1 + size) / 2, step=1, dtype=dtype)
    gauss = torch.exp(-torch.pow(dist / SSIM_SIGMA, 2) / 2)
    g = (gauss / gauss.sum()).unsqueeze(0)
    return torch.matmul(g.t(), g)


def _reflect_pad_into(buf: Tensor, channels: slice) -> None:
    """Fill the 5-px border of ``buf`` (H+10, W+10, C) by reflecting its centre, like torch's "reflect"."""
    p = _PAD
    b = buf[:, :, channels]
    b[:p, p:-p] = b[p + 1 : 2 * p + 1, p:-p].flip(0)
    b[-p:, p:-p] = b[-2 * p - 1 : -p - 1, p:-p].flip(0)
    b[:, :p] = b[:, p + 1 : 2 * p + 1].flip(1)
    b[:, -p:] = b[:, -2 * p - 1 : -p - 1].flip(1)


def _downsample_into(src: Tensor, dst: Tensor) -> None:
    """2×2 average of ``src`` (H, W, C) into ``dst`` (H//2, W//2, C), dropping an odd last row/column.

    Same summation order as F.avg_pool2d((2, 2)), which torchmetrics uses between scales.
    """
    h, w = dst.shape[0] * 2, dst.shape[1] * 2
    torch.add(src[0:h:2, 0:w:2], src[0:h:2, 1:w:2], out=dst)
    dst.add_(src[1:h:2, 0:w:2]).add_(src[1:h:2, 1:w:2]).div_(4)


def _hwc_buffer(h: int, w: int, c: int, dtype: torch.dtype) -> Tensor:
    """A (1, c, h, w) channels-last tensor, i.e. (h, w, c) in memory; see :func:`_hwc`."""
    return torch.empty(1, c, h, w, dtype=dtype, memory_format=torch.channels_last)


def _hwc(x: Tensor) -> Tensor:
    """The (h, w, c) view of a (1, c, h, w) channels-last tensor, for per-channel-group arithmetic.

    The 4-D tensor itself is what goes to the convolution: a 4-D view re-made from the 3-D one gets a
    batch stride that torch's layout heuristic reads as NCHW, and the convolution then transposes its
    input into a copy and runs the slow planar kernel.
    """
    return x[0].permute(1, 2, 0)


def _fill_stack(buf: Tensor, n: int) -> None:
    """Given p and t in the first 2n channels of ``buf`` (padded), add p², t² and p·t after them."""
    p, t = buf[:, :, :n], buf[:, :, n : 2 * n]
    torch.mul(p, p, out=buf[:, :, 2 * n : 3 * n])
    torch.mul(t, t, out=buf[:, :, 3 * n : 4 * n])
    torch.mul(p, t, out=buf[:, :, 4 * n : 5 * n])


def ssim_and_ms_ssim(
    preds: Tensor,
    target: Tensor,
    pixel_range: float = 1.0,
    *,
    with_ssim: bool = True,
    with_ms_ssim: bool = True,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """SSIM and/or MS-SSIM per image, as :func:`ssim` and :func:`ms_ssim` but faster.

    Same arithmetic as torchmetrics (reflect padding, gaussian window, clamped variances, relu, betas),
    reorganised for CPU speed: the N images become the channels of one channels-last depthwise
    convolution (vectorised across images, about 10× faster than torchmetrics' single-channel
    convolution and bit-identical to it), the full-resolution SSIM map is computed once and serves both
    metrics, the SSIM map is skipped at the scales where MS-SSIM only needs the contrast term, and the
    arithmetic is done in place. Results match torchmetrics to 1e-6 (tested). Returns a dict with keys
    "ssim" and/or "ms_ssim", float64 tensors of shape (N,).

    ``chunk_size`` images are processed at a time (default: about 2**20 pixels, at least 4 images), which
    bounds memory and keeps the working set cache-sized; it does not change the values.
    """
    _check_pair(preds, target)
    if pixel_range <= 0:
        raise ValueError(f"pixel_range must be > 0 (1 for [0, 1] images, 255 for 8-bit); got {pixel_range}")
    n, _, h, w = preds.shape
    if with_ms_ssim:
        check_ms_ssim_size(h, w)
    if with_ssim:
        check_ssim_size(h, w)
    wanted = [k for k, on in (("ssim", with_ssim), ("ms_ssim", with_ms_ssim)) if on]
    if n == 0:
        return {k: torch.empty(0, dtype=torch.float64) for k in wanted}
    if chunk_size is None:
        chunk_size = max(_MIN_CHUNK_IMAGES, _CHUNK_PIXELS // (h * w))
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 images; got {chunk_size}")
    parts = [
        _ssim_ms_ssim_chunk(
            preds[i : i + chunk_size], target[i : i + chunk_size], pixel_range, with_ssim, with_ms_ssim
        )
        for i in range(0, n, chunk_size)
    ]
    return {k: torch.cat([part[k] for part in parts]) for k in wanted}


@torch.inference_mode()
def _ssim_ms_ssim_chunk(
    preds: Tensor, target: Tensor, pixel_range: float, with_ssim: bool, with_ms_ssim: bool
) -> dict[str, Tensor]:
    n, _, h, w = preds.shape
    out: dict[str, Tensor] = {}
    dtype = preds.dtype
    c1 = pow(SSIM_K1 * pixel_range, 2)
    c2 = pow(SSIM_K2 * pixel_range, 2)
    p = _PAD
    weight = _gaussian_window(dtype).expand(5 * n, 1, SSIM_KERNEL_SIZE, SSIM_KERNEL_SIZE).contiguous()

    # Layout (H, W, C): channels are [p, t, p², t², p·t] × N images, i.e. one channels-last tensor.
    buf4 = _hwc_buffer(h + 2 * p, w + 2 * p, 5 * n, dtype)
    buf = _hwc(buf4)
    for i, x in enumerate((preds, target)):
        src = x[:, 0].permute(1, 2, 0)
        dst = buf[p:-p, p:-p, i * n : (i + 1) * n]
        if pixel_range == 1.0:
            dst.copy_(src)
        else:
            torch.mul(src, pixel_range, out=dst)
    scales = len(MS_SSIM_BETAS) if with_ms_ssim else 1
    terms: list[Tensor] = []
    for scale in range(scales):
        last = scale == scales - 1
        _reflect_pad_into(buf, slice(0, 2 * n))
        _fill_stack(buf, n)
        hs, ws = buf.shape[0] - 2 * p, buf.shape[1] - 2 * p
        stats = _hwc(F.conv2d(buf4, weight, groups=5 * n))
        if not last:
            nxt4 = _hwc_buffer(hs // 2 + 2 * p, ws // 2 + 2 * p, 5 * n, dtype)
            _downsample_into(buf[p:-p, p:-p, : 2 * n], _hwc(nxt4)[p:-p, p:-p, : 2 * n])
        # buf's centre p-channels are no longer needed: reuse them as scratch for mu_p * mu_t.
        mu_pt = buf[p:-p, p:-p, :n]
        mu_p, mu_t = stats[..., :n], stats[..., n : 2 * n]
        e_pp, e_tt, e_pt = stats[..., 2 * n : 3 * n], stats[..., 3 * n : 4 * n], stats[..., 4 * n :]
        torch.mul(mu_p, mu_t, out=mu_pt)
        mu_p.pow_(2)
        mu_t.pow_(2)
        e_pp.sub_(mu_p).clamp_(min=0.0)  # sigma_p²
        e_tt.sub_(mu_t).clamp_(min=0.0)  # sigma_t²
        upper = e_pt.sub_(mu_pt).mul_(2).add_(c2)  # 2 sigma_pt + c2
        lower = e_pp.add_(e_tt).add_(c2)  # sigma_p² + sigma_t² + c2
        need_sim = (scale == 0 and with_ssim) or (with_ms_ssim and last)
        if with_ms_ssim and not last:
            cs_map = torch.div(upper, lower, out=e_tt)
            terms.append(cs_map[p:-p, p:-p].mean(dim=(0, 1)))
        if need_sim:
            num = mu_pt.mul_(2).add_(c1).mul_(upper)
            den = mu_p.add_(mu_t).add_(c1).mul_(lower)
            sim = num.div_(den).mean(dim=(0, 1))
            if scale == 0 and with_ssim:
                out["ssim"] = sim.double()
            if with_ms_ssim and last:
                terms.append(sim)
        del stats, mu_pt, mu_p, mu_t, e_pp, e_tt, e_pt, upper, lower
        if not last:
            buf4 = nxt4
            buf = _hwc(buf4)
    if with_ms_ssim:
        # normalize="relu" (torchmetrics' default), applied to each scale's mean as torchmetrics does.
        mcs = torch.relu(torch.stack(terms))
        betas = torch.tensor(MS_SSIM_BETAS, dtype=mcs.dtype).view(-1, 1)
        out["ms_ssim"] = torch.prod(mcs**betas, dim=0).double()
    return {k: out[k] for k in ("ssim", "ms_ssim") if k in out}
