"""Thumbnails and mask overlays of a run's images, shared by report.html's image grid and the dashboard.

Reading a recorded path (:func:`present`, :func:`read_thumb`), downscaling (:func:`shrink`,
:func:`fit_mask`), the two overlay styles (:func:`blend_overlay`: the page's flat tint;
:func:`overlay`: the dashboard's tint with opaque contours, which reads better at its larger size) and
PNG data URIs (:func:`data_uri`). Torch-free.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from audit import images

# Colours of mask channels in the overlays: RGB anatomy masks keep R lungs, G heart, B aorta; single-channel
# masks (pathology) are drawn orange so they stand out on grey.
SINGLE_MASK_COLOUR = np.array([1.0, 0.45, 0.0], dtype=np.float32)
OVERLAY_ALPHA = 0.35
BLEND_COLOUR = np.array([1.0, 0.35, 0.0], dtype=np.float32)
BLEND_ALPHA = 0.45


def present(value: Any) -> str | None:
    """A recorded path (or other text) stripped, or None when missing, NaN or blank."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def thumb_size(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """PIL's (width, height) of an (h, w) image scaled so its longer side is at most ``size``."""
    h, w = shape
    scale = min(1.0, size / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def shrink(pixels: np.ndarray, size: int) -> np.ndarray:
    """Float image downscaled (Lanczos) so its longer side is at most ``size``; never upscaled."""
    target = thumb_size(pixels.shape[:2], size)
    if target == (pixels.shape[1], pixels.shape[0]):
        return np.asarray(pixels, dtype=np.float32)
    im = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
    return np.clip(np.asarray(im.resize(target, Image.Resampling.LANCZOS)), 0.0, 1.0)


def fit_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool (H, W, C) mask resized (nearest neighbour) to ``shape`` (h, w)."""
    if mask.shape[:2] == tuple(shape):
        return mask
    h, w = shape
    channels = [
        np.asarray(
            Image.fromarray(mask[..., c].astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)
        )
        > 127
        for c in range(mask.shape[2])
    ]
    return np.stack(channels, axis=-1)


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """bool (H, W, C): mask pixels with at least one 4-neighbour outside the mask (image border counts
    as outside)."""
    padded = np.pad(mask, ((1, 1), (1, 1), (0, 0)), constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def overlay(reference: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 RGB: the grey ``reference`` tinted by ``alpha`` inside each mask channel's colour, with
    the channel's contour drawn opaque. RGB masks keep their channel colours; 1-channel masks are orange."""
    mask = fit_mask(mask, reference.shape[:2])
    colours = np.eye(3, dtype=np.float32) if mask.shape[2] == 3 else SINGLE_MASK_COLOUR[None, :]
    out = np.repeat(np.asarray(reference, dtype=np.float32)[..., None], 3, axis=2)
    edges = mask_edges(mask)
    for c in range(mask.shape[2]):
        inside = mask[..., c]
        out[inside] = out[inside] * (1.0 - alpha) + colours[c] * alpha
        out[edges[..., c]] = colours[c]
    return to_uint8(out)


def blend_overlay(reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Float RGB: the grey ``reference`` with the bool mask (resized to it) blended in at
    :data:`BLEND_ALPHA`; RGB masks keep their channel colours, 1-channel masks are orange."""
    weights = fit_mask(mask, reference.shape[:2]).astype(np.float32)
    rgb = np.repeat(reference[..., None], 3, axis=2)
    colour = weights if weights.shape[2] == 3 else weights[..., :1] * BLEND_COLOUR
    alpha = BLEND_ALPHA * weights.max(axis=2, keepdims=True)
    return rgb * (1.0 - alpha) + colour * alpha


def data_uri(pixels: np.ndarray) -> str:
    """A float image in [0, 1] as an 8-bit PNG ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(images.encode_png(pixels)).decode("ascii")


def read_thumb(
    path: str | None, size: int, shown: Callable[[str], str] = str
) -> tuple[np.ndarray | None, str]:
    """(float thumbnail, "") or (None, why not); ``shown`` turns a missing file's path into the text
    of the reason (the page names only the file, the dashboard the whole path)."""
    if path is None:
        return None, "no path recorded"
    try:
        return shrink(images.read_image(path).pixels, size), ""
    except FileNotFoundError:
        return None, f"file not found: {shown(path)}"
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {exc}"
