"""PNG writer: metadata-free PNGs assembled chunk by chunk (signature, ``IHDR``, one ``IDAT``,
``IEND``), so that no text, EXIF, ICC, ``pHYs`` or ``tIME`` metadata can leak into images shown to
readers, and identical pixels always give identical bytes (for a given zlib build).

Floats are clipped to ``[0, 1]`` and quantised with ``np.rint`` (round half to even).
:func:`encode_png` compresses (zlib, per-row filters chosen like libpng);
:func:`encode_png_fixed_size` stores the scanlines uncompressed, so that every image of one shape
has one byte length whatever its content (:func:`fixed_png_size`): the reader study's images,
whose compressed size would tell a noisy real radiograph from a smooth synthetic one.

Re-exported by :mod:`audit.images`, the suite's one image module.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from audit.atomic import write_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_ZLIB_LEVEL = 6
_STORED_BLOCK = 65535  # the largest deflate stored block

PathLike = str | os.PathLike[str]


def _quantise(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    """Samples as uint8/uint16 for ``bit_depth``; floats/bools are read as [0, 1]."""
    out_dtype = np.uint8 if bit_depth == 8 else np.uint16
    top = 2**bit_depth - 1
    if arr.dtype == np.bool_:
        return arr.astype(out_dtype) * out_dtype(top)
    if arr.dtype == np.uint8:
        # x/255 * 65535 == 257 x exactly
        return arr if bit_depth == 8 else arr.astype(np.uint16) * np.uint16(257)
    if arr.dtype == np.uint16:
        return arr if bit_depth == 16 else np.rint(arr / 257.0).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            raise ValueError(f"cannot encode {bad} non-finite (NaN/inf) pixel(s) as PNG; fix the image first")
        x = np.clip(arr.astype(np.float64), 0.0, 1.0) * top
        return np.rint(x).astype(out_dtype)
    raise ValueError(
        f"cannot encode dtype {arr.dtype} as PNG: pass float in [0, 1], bool, uint8 or uint16 pixels"
    )


def _filter_candidates(rows: np.ndarray, bpp: int) -> np.ndarray:
    """All five PNG filter types (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) of every row.

    Encoding only looks at the raw bytes (decoding is the sequential direction), so each filter
    is a whole-array operation.  uint8 arithmetic wraps modulo 256, as PNG's does.
    Returns uint8 (5, H, rowbytes).
    """
    left = np.zeros_like(rows)
    left[:, bpp:] = rows[:, :-bpp]
    up = np.zeros_like(rows)
    up[1:] = rows[:-1]
    up_left = np.zeros_like(rows)
    up_left[1:, bpp:] = rows[:-1, :-bpp]
    a, b, c = left.astype(np.int16), up.astype(np.int16), up_left.astype(np.int16)
    # Paeth distances |p - a|, |p - b|, |p - c| with p = a + b - c, simplified.
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    out = np.empty((5, *rows.shape), dtype=np.uint8)
    out[0] = rows
    np.subtract(rows, left, out=out[1])
    np.subtract(rows, up, out=out[2])
    np.subtract(rows, ((a + b) >> 1).astype(np.uint8), out=out[3])
    np.subtract(rows, paeth, out=out[4])
    return out


def _filter_rows(rows: np.ndarray, bpp: int, filter_type: int | None = None) -> np.ndarray:
    """Filtered scanlines, each prefixed by its filter byte: uint8 (H, 1 + rowbytes).

    ``filter_type=None`` picks, per row, the filter with the smallest sum of absolute signed bytes
    (libpng's heuristic): deterministic and much smaller IDATs for smooth images.
    """
    candidates = _filter_candidates(rows, bpp)
    if filter_type is None:
        # |byte as int8| == min(b, 256 - b), computed without leaving uint8.
        magnitude = np.minimum(candidates, np.uint8(0) - candidates)
        choice = np.argmin(magnitude.sum(axis=2, dtype=np.uint32), axis=0)
    else:
        choice = np.full(rows.shape[0], filter_type)
    return _scanlines(candidates, choice)


def _scanlines(candidates: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """Row ``i`` filtered with ``choice[i]``, prefixed by that filter byte."""
    height = candidates.shape[1]
    out = np.empty((height, candidates.shape[2] + 1), dtype=np.uint8)
    out[:, 0] = choice
    out[:, 1:] = candidates[choice, np.arange(height)]
    return out


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_rows(samples: np.ndarray, bit_depth: int) -> tuple[np.ndarray, int, bytes]:
    """The raw scanline bytes ``(H, rowbytes)``, bytes per pixel and the IHDR payload."""
    height, width = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    big_endian = samples.astype(">u2" if bit_depth == 16 else np.uint8)  # PNG samples are big-endian
    rows = np.ascontiguousarray(big_endian).view(np.uint8).reshape(height, -1)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0 if channels == 1 else 2, 0, 0, 0)
    return rows, channels * bit_depth // 8, ihdr


def _png_file(ihdr: bytes, idat: bytes) -> bytes:
    return PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png_bytes(samples: np.ndarray, bit_depth: int, filter_type: int | None = None) -> bytes:
    rows, bpp, ihdr = _png_rows(samples, bit_depth)
    return _png_file(ihdr, zlib.compress(_filter_rows(rows, bpp, filter_type).tobytes(), _PNG_ZLIB_LEVEL))


def encode_png(pixels: np.ndarray, bit_depth: int = 8) -> bytes:
    """PNG bytes with only IHDR, IDAT and IEND chunks (no metadata), deterministic for given pixels.

    ``pixels``: ``(H, W)`` or ``(H, W, 1)`` greyscale, written at ``bit_depth`` 8 or 16; or
    ``(H, W, 3)`` RGB, written 8-bit.  Float input is clipped to [0, 1] and rounded half to even
    (``np.rint(x * (2**bit_depth - 1))``); NaN/inf raise ValueError.  Bool is 0 or full scale
    (a mask becomes 0/255 at 8 bits).  uint8/uint16 are taken as ``x/255``/``x/65535``.
    """
    return _png_bytes(_checked_samples(pixels, bit_depth), bit_depth)


def _checked_samples(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """``pixels`` as PNG samples, ``(H, W)`` or ``(H, W, 3)``, or a ValueError saying what is wrong."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 3:
        if bit_depth != 8:
            raise ValueError(
                "RGB PNGs are written 8-bit only (16-bit colour cannot be read back); use bit_depth=8"
            )
    elif arr.ndim != 2:
        raise ValueError(f"pixels must be (H, W), (H, W, 1) or (H, W, 3), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"cannot encode an empty image of shape {arr.shape}")
    return _quantise(arr, bit_depth)


def _stored_zlib(data: bytes) -> bytes:
    """A zlib stream of deflate *stored* (uncompressed) blocks: its length depends only on
    ``len(data)``, never on the bytes, unlike any compressing level of zlib."""
    out = bytearray(b"\x78\x01")  # deflate, 32 KiB window, no preset dictionary, check bits valid
    if not data:
        out += b"\x01\x00\x00\xff\xff"
    for start in range(0, len(data), _STORED_BLOCK):
        block = data[start : start + _STORED_BLOCK]
        final = start + _STORED_BLOCK >= len(data)
        out += struct.pack("<BHH", 1 if final else 0, len(block), len(block) ^ 0xFFFF)
        out += block
    out += struct.pack(">I", zlib.adler32(data))
    return bytes(out)


def encode_png_fixed_size(
    pixels: np.ndarray, bit_depth: int = 8, row_filters: np.ndarray | None = None
) -> bytes:
    """Like :func:`encode_png`, but the byte length is a function of shape, bit depth and colour
    type only, never of the pixels: the IDAT holds the filtered scanlines in deflate stored blocks.

    Compressed PNGs give their content away by their size (a noisy radiograph compresses worse than
    a smooth synthetic one); these do not. ``row_filters`` (ints 0-4, one per row) picks each row's
    PNG filter: the bytes change, the length does not, so identical pixels can be sent as different
    files of the same size. None: filter 0 (None) on every row.
    """
    rows, bpp, ihdr = _png_rows(_checked_samples(pixels, bit_depth), bit_depth)
    height = rows.shape[0]
    if row_filters is None:
        choice = np.zeros(height, dtype=np.intp)
    else:
        choice = np.asarray(row_filters)
        if choice.shape != (height,) or choice.dtype.kind not in "iu" or choice.min() < 0 or choice.max() > 4:
            raise ValueError(f"row_filters must be {height} integers 0-4, got shape {choice.shape}")
    return _png_file(ihdr, _stored_zlib(_scanlines(_filter_candidates(rows, bpp), choice).tobytes()))


def fixed_png_size(height: int, width: int, channels: int = 1, bit_depth: int = 8) -> int:
    """The byte length of every :func:`encode_png_fixed_size` PNG of this shape (the published
    layout: signature, three chunks of 12 bytes framing, zlib header, 5 bytes per stored block,
    Adler-32)."""
    raw = height * (1 + width * channels * bit_depth // 8)
    blocks = max(1, -(-raw // _STORED_BLOCK))
    return 8 + (12 + 13) + (12 + 2 + 5 * blocks + raw + 4) + 12


def write_png(path: PathLike, pixels: np.ndarray, bit_depth: int = 8) -> None:
    """Atomically write :func:`encode_png` output to ``path`` (encoding errors leave nothing behind)."""
    write_bytes(path, encode_png(pixels, bit_depth))
