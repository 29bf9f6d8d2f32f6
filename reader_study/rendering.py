"""Pixels for readers: one re-encoding for every study image, and the window/level/zoom view.

Every image, real or generated, goes through :func:`normalise` when the study is created: centre
crop to a square, resample to ``size`` x ``size`` (Lanczos on float32), 8-bit greyscale PNG written by
:func:`encode`, which emits only ``IHDR``, ``IDAT`` and ``IEND``. Bit depth, dimensions, format,
metadata *and byte length* are therefore the same for every item whatever its source.

The byte length matters: a compressed PNG's size follows its content (real radiographs carry noise
grain and compress worse than smooth synthetic ones; on the demo, 92-124 kB against 56-65 kB, a
perfect real/synthetic classifier). :func:`encode` stores the scanlines uncompressed
(:func:`audit.images.encode_png_fixed_size`), so every image of one size has one length.

:func:`view` makes what the browser receives from a stored image: a window (level = centre,
width, both in ``[0, 1]`` of the display range) and a zoomed crop around a chosen centre, again
through :func:`encode`. The browser never gets the stored file itself, only these bytes. A view's
``variant`` picks the PNG row filters (:func:`row_filters`): the same pixels sent under two
variants are different bytes of the same length, so a re-read is not served at its first read's
(content-hashed) URL.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from audit.png import encode_png_fixed_size

ZOOMS = (1.0, 1.5, 2.0, 3.0, 4.0)


def _resample(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)


def square_box(height: int, width: int) -> tuple[int, int, int]:
    """``(top, left, side)`` of the centred square that :func:`normalise` keeps of an image."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def normalise(pixels: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` floats in [0, 1] to the study's common ``(size, size)`` uint8 form."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a greyscale (H, W) image, got shape {pixels.shape}")
    top, left, side = square_box(*pixels.shape)
    square = pixels[top : top + side, left : left + side]
    out = _resample(square, (size, size)) if side != size else square.astype(np.float32)
    return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def window(pixels: np.ndarray, level: float, width: float) -> np.ndarray:
    """Linear window: ``level - width/2`` maps to black, ``level + width/2`` to white."""
    if not 0 < width <= 2:
        raise ValueError(f"window width must be in (0, 2], got {width}")
    low = level - width / 2.0
    return np.clip((pixels - low) / width, 0.0, 1.0)


def crop_box(height: int, width: int, zoom: float, cx: float, cy: float) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` of the part :func:`crop` keeps."""
    if zoom < 1:
        raise ValueError(f"zoom must be >= 1, got {zoom}")
    ch, cw = max(1, round(height / zoom)), max(1, round(width / zoom))
    top = int(np.clip(round(cy * height - ch / 2), 0, height - ch))
    left = int(np.clip(round(cx * width - cw / 2), 0, width - cw))
    return top, left, ch, cw


def crop(pixels: np.ndarray, zoom: float, cx: float, cy: float) -> np.ndarray:
    """The ``1/zoom`` part of the image centred as near ``(cx, cy)`` (fractions) as the edges allow."""
    top, left, ch, cw = crop_box(*pixels.shape, zoom, cx, cy)
    return pixels[top : top + ch, left : left + cw]


def view_pixels(
    stored: np.ndarray, *, level: float = 0.5, width: float = 1.0, zoom: float = 1.0,
    cx: float = 0.5, cy: float = 0.5, out_size: int | None = None,
) -> np.ndarray:  # fmt: skip
    """What :func:`view` encodes: floats in [0, 1], ``out_size`` pixels square."""
    pixels = stored.astype(np.float32) / 255.0
    part = crop(pixels, zoom, cx, cy)
    size = out_size or stored.shape[0]
    if part.shape != (size, size):
        part = _resample(part, (size, size))
    return window(np.clip(part, 0.0, 1.0), level, width)


def row_filters(variant: bytes, height: int) -> np.ndarray:
    """PNG filter types (0-4) for ``height`` rows, a function of ``variant`` only."""
    seed = int.from_bytes(hashlib.sha256(b"xray-audit row filters\0" + variant).digest()[:16], "big")
    return np.random.default_rng(seed).integers(0, 5, height)


def encode(pixels: np.ndarray, variant: bytes = b"") -> bytes:
    """8-bit PNG of ``pixels`` (greyscale or RGB) whose length depends on its shape only."""
    return encode_png_fixed_size(pixels, 8, row_filters(variant, pixels.shape[0]))


def view(
    stored: np.ndarray, *, level: float = 0.5, width: float = 1.0, zoom: float = 1.0,
    cx: float = 0.5, cy: float = 0.5, out_size: int | None = None, variant: bytes = b"",
) -> bytes:  # fmt: skip
    """PNG bytes of ``stored`` (uint8) as the reader asked to see it, ``out_size`` pixels square."""
    pixels = view_pixels(stored, level=level, width=width, zoom=zoom, cx=cx, cy=cy, out_size=out_size)
    return encode(pixels, variant)


MAX_DISPLAY = 1024  # the largest view sent to a browser (larger studies are shown resampled)


def display_size(image_size: int) -> int:
    """The size of every view the app sends for a study of ``image_size`` pixels."""
    return min(MAX_DISPLAY, image_size)
