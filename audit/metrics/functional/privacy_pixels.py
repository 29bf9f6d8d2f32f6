"""Pixel vectors for the privacy audit's pixel-space search (:mod:`audit.metrics.functional.privacy`).

Numpy in, numpy out. :func:`pixel_vectors` turns images into float rows on [0, 1] (no integer
wrap-around: CheXGenBench subtracts uint8 arrays); :func:`mirror_pixel_vectors`, :func:`pixel_shifts`,
:func:`pixel_window` and :func:`pixel_views` make the mirrored and shifted versions of a sample that
the search compares with the training images' centred windows, so a flipped or slightly moved copy
is still found.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["mirror_pixel_vectors", "pixel_shifts", "pixel_vectors", "pixel_views", "pixel_window"]

_IMAGE_CHUNK = 64  # images converted and resized at a time in pixel_vectors


def _to_unit_float(image: np.ndarray, i: int) -> np.ndarray:
    """One image as float32 in [0, 1], converted before any arithmetic (no uint8/uint16 wrap-around)."""
    arr = np.asarray(image)
    if arr.ndim != 2 or min(arr.shape) == 0:
        raise ValueError(
            f"image {i} must be a non-empty 2-D greyscale array (H, W) as audit.images returns it; got "
            f"shape {arr.shape}"
        )
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        # The stored range, as audit.images does for 8- and 16-bit files: /255, /65535.
        return (arr.astype(np.float64) / np.iinfo(arr.dtype).max).astype(np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"image {i} has dtype {arr.dtype}; pass float images in [0, 1] (audit.images.read_image) or "
            "unsigned integers (divided by their dtype's maximum)"
        )
    out = arr.astype(np.float32)
    if not np.isfinite(out).all() or out.min() < 0.0 or out.max() > 1.0:
        raise ValueError(
            f"image {i} has values outside [0, 1] (min {np.nanmin(arr):.4g}, max {np.nanmax(arr):.4g}, or "
            "NaN); read images with audit.images.read_image, which maps every format onto [0, 1]"
        )
    return out


def pixel_vectors(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Images as float32 rows (n, size·size) for pixel-space neighbours (``metric="l2"``).

    Each image becomes float in [0, 1] first (float images must already be; unsigned integers are
    divided by their dtype's maximum), then goes through the evaluators' own preprocessing
    (:class:`audit.evaluators.base.InputContract`): centre-square crop, bilinear antialiased resize to
    ``size`` × ``size``. With ``metric="l2"`` the distance is then the RMS pixel difference,
    L2 / √(size²), on [0, 1]: identical images give 0, black vs white gives 1.
    """
    import torch

    from audit.evaluators.base import InputContract

    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer number of pixels; got {size!r}")
    contract = InputContract("privacy-pixels", channels=1, size=int(size), value_range=(0.0, 1.0))
    out = np.empty((len(images), int(size) * int(size)), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(images), _IMAGE_CHUNK):
            batch = [_to_unit_float(images[i], i) for i in range(s, min(len(images), s + _IMAGE_CHUNK))]
            out[s : s + len(batch)] = contract.prepare(batch).reshape(len(batch), -1).numpy()
    return out


def mirror_pixel_vectors(vectors: np.ndarray, size: int) -> np.ndarray:
    """The :func:`pixel_vectors` rows of the left-right mirrored images: each row read as a
    ``size`` × ``size`` image and its columns reversed.

    A flip is a training augmentation as common as a shift, and a mirrored copy of a training radiograph
    is still that patient's radiograph; pixel distance on its own is not flip-invariant, so the audit
    searches each sample as given and mirrored (:func:`nearest_of_both`). The centre-square crop and
    the bilinear resize are symmetric, so this equals ``pixel_vectors`` of the flipped images up to
    float32 rounding.
    """
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] != size * size:
        raise ValueError(
            f"vectors must be pixel_vectors rows shaped (n, {size}·{size}={size * size}); got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr.reshape(-1, size, size)[:, :, ::-1]).reshape(arr.shape[0], -1)


def pixel_shifts(max_shift: int) -> list[tuple[int, int]]:
    """Every integer shift (dy, dx) with |dy|, |dx| <= ``max_shift``: (0, 0) first, then by growing
    Chebyshev radius, then by (dy, dx), so a tie between views keeps the least moved one."""
    if not isinstance(max_shift, (int, np.integer)) or isinstance(max_shift, bool) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative integer number of pixels; got {max_shift!r}")
    r = int(max_shift)
    shifts = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    return sorted(shifts, key=lambda s: (max(abs(s[0]), abs(s[1])), abs(s[0]) + abs(s[1]), s))


def pixel_window(
    vectors: np.ndarray, size: int, max_shift: int, shift: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """The ``(size − 2·max_shift)``² window of each :func:`pixel_vectors` row, moved by ``shift`` =
    (dy, dx) from the centre, as float32 rows.

    Pixel distance with shifts compares a sample's window at every shift with the training image's
    centred window (shift (0, 0)): the smallest RMS difference is the distance after the best
    alignment within ``max_shift`` pixels, so a copy moved by a few pixels, a common augmentation and a
    common failure of diffusion models' memorised samples, is still found. ``max_shift = 0`` is the
    whole image.
    """
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] != size * size:
        raise ValueError(
            f"vectors must be pixel_vectors rows shaped (n, {size}·{size}={size * size}); got shape {arr.shape}"
        )
    r = int(max_shift)
    if not 0 <= 2 * r < size:
        raise ValueError(f"max_shift must leave a window: 0 <= 2·max_shift < size={size}; got {max_shift}")
    dy, dx = shift
    if abs(dy) > r or abs(dx) > r:
        raise ValueError(f"shift {shift} exceeds max_shift={r}")
    if r == 0:
        return arr.astype(np.float32, copy=False)
    img = arr.reshape(-1, size, size)
    window = img[:, r + dy : size - r + dy, r + dx : size - r + dx]
    return np.ascontiguousarray(window, dtype=np.float32).reshape(arr.shape[0], -1)


def pixel_views(vectors: np.ndarray, size: int, max_shift: int) -> np.ndarray:
    """The versions of each sample the pixel search compares with training windows
    (:func:`pixel_window` at shift (0, 0)), stacked view after view in one float32 array
    (views·n, (size − 2·max_shift)²): rows ``v·n … (v+1)·n − 1`` are view ``v``. The views are every
    shift of :func:`pixel_shifts`, as given, then every shift of the left-right mirror image
    (:func:`mirror_pixel_vectors`): view ``v`` is mirrored when ``v >= len(pixel_shifts(max_shift))``;
    view 0 is the sample itself, centred. Each window is written once, straight into the result."""
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] != size * size:
        raise ValueError(
            f"vectors must be pixel_vectors rows shaped (n, {size}·{size}={size * size}); got shape {arr.shape}"
        )
    shifts = pixel_shifts(max_shift)
    r, n = int(max_shift), arr.shape[0]
    if not 0 <= 2 * r < size:
        raise ValueError(f"max_shift must leave a window: 0 <= 2·max_shift < size={size}; got {max_shift}")
    side = size - 2 * r
    out = np.empty((2 * len(shifts), n, side, side), dtype=np.float32)
    img = arr.reshape(n, size, size)
    for m, source in enumerate((img, img[:, :, ::-1])):
        for k, (dy, dx) in enumerate(shifts):
            out[m * len(shifts) + k] = source[:, r + dy : size - r + dy, r + dx : size - r + dx]
    return out.reshape(2 * len(shifts) * n, side * side)
