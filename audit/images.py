"""Pixel conventions: the one place where image files become arrays and arrays become files.

Every image the suite touches is held as an :class:`XrayImage`: ``float32``, shape ``(H, W)``,
values in ``[0, 1]``, read-only, with an :class:`ImageMeta` that says where the numbers came from.
The rules, by source:

PNG, JPEG, TIFF (decoded by Pillow)
    Integer samples are divided by the largest value their stored bit depth can hold
    (8-bit: ``/255``; 16-bit: ``/65535``; 1-bit: ``0``/``1``), so 16-bit data is never clipped
    to 8 bits.  Float TIFFs (mode ``"F"``) must already lie in ``[0, 1]``.  Colour inputs become
    luminance with the ITU-R BT.601 weights ``Y = 0.299 R + 0.587 G + 0.114 B`` computed in
    float64; alpha channels are dropped (not composited).  Palette images are expanded through
    their palette first.  TIFFs stored "min-is-white" are inverted so that larger always means
    brighter.  EXIF orientation and ICC profiles are ignored: pixels are used as stored.

DICOM (decoded by pydicom, imported lazily)
    Stored values go through the Modality LUT (Rescale Slope/Intercept or Modality LUT
    Sequence), then the VOI stage of PS3.3 C.11.2, then MONOCHROME1 inversion (``1 - y``):

    * Window Center/Width (first pair when several are given) with the VOI LUT Function
      ``LINEAR`` (default), ``LINEAR_EXACT`` or ``SIGMOID``; the standard's formulas are
      evaluated with output range ``[0, 1]``.
    * VOI LUT Sequence (preferred over a window when both are present, like pydicom's
      ``apply_voi_lut``): the first LUT is applied (inputs rounded to integers, out-of-domain
      inputs take the first/last entry) and divided by the LUT's output range ``2**n - 1``,
      where ``n`` is the LUT Descriptor's bits per entry, lowered to the bits the LUT data
      actually use (vendors often declare 16 bits for 12-bit LUTs).
    * Neither present, or an unusable window (warned): min-max over the image's modality
      values; a constant image maps to zeros (before any MONOCHROME1 inversion).

    Files are recognised by ``DICM`` at offset 128; files without the preamble are tried (pydicom
    ``force=True``) only when named ``*.dcm``.  Multi-frame, float-pixel and palette-colour DICOMs
    are rejected.  RGB/YBR DICOMs are
    divided by ``2**BitsStored - 1`` and converted to BT.601 luminance.

Writing (:mod:`audit.png`, re-exported here: :func:`encode_png`, :func:`write_png`,
:func:`encode_png_fixed_size`)
    Metadata-free PNGs assembled chunk by chunk; see that module.

Anything unreadable raises :class:`ImageReadError` whose message names the file, the problem
and what to do about it.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from audit.png import PNG_SIGNATURE as _PNG_SIGNATURE

# The writer lives in audit.png; these names are the suite's one image API.
from audit.png import encode_png, encode_png_fixed_size, fixed_png_size, write_png  # noqa: F401

PathLike = str | os.PathLike[str]

BT601_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
SUPPORTED_FORMATS: tuple[str, ...] = ("png", "jpeg", "tiff", "dicom")

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_HEAD_BYTES = 132  # DICOM's "DICM" sits at offset 128
_PIL_FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
_EXIF_ORIENTATION = 0x0112
_TIFF_BITS_PER_SAMPLE = 258
_TIFF_PHOTOMETRIC = 262
_TIFF_MIN_IS_WHITE = 0

# Pillow's own exceptions for bad data are a mix of these; anything else is a bug of ours and
# should surface as such.
_PIL_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)

# pip packages that provide pydicom decoders, by transfer syntax UID prefix/UID.
_DICOM_PLUGIN_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.8": "pip install pyjpegls   (or: pip install pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.9": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.20": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.5": "pip install pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.7": "pip install pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",
}
_DICOM_PLUGIN_FALLBACK = (
    "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg   (or: pip install python-gdcm)"
)


@dataclass(frozen=True)
class ImageMeta:
    """Where an image's numbers came from.

    ``bit_depth`` is bits per sample as stored (1, 2, 4, 8, 16, 32 for float TIFF; DICOM
    Bits Stored, e.g. 12).  ``photometric`` uses DICOM's vocabulary where one applies
    (``MONOCHROME2``, ``MONOCHROME1``, ``RGB``, ``YBR_FULL``...) and Pillow-style names for the
    rest (``RGBA``, ``LA``, ``PALETTE``).
    """

    source_format: str
    bit_depth: int
    photometric: str
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        if self.source_format not in SUPPORTED_FORMATS:
            raise ValueError(f"source_format must be one of {SUPPORTED_FORMATS}, got {self.source_format!r}")
        if len(self.shape) != 2:
            raise ValueError(f"shape must be (H, W), got {self.shape!r}")


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays elementwise has no single truth value
class XrayImage:
    """A decoded image: ``pixels`` is float32 ``(H, W)`` in ``[0, 1]`` and read-only."""

    pixels: np.ndarray
    meta: ImageMeta

    def __post_init__(self) -> None:
        px = self.pixels
        if not isinstance(px, np.ndarray) or px.dtype != np.float32 or px.ndim != 2:
            raise ValueError(
                "XrayImage.pixels must be a 2-D float32 array, got "
                f"{type(px).__name__} {getattr(px, 'dtype', None)} {getattr(px, 'shape', None)}"
            )
        if px.shape != tuple(self.meta.shape):
            raise ValueError(f"pixels shape {px.shape} does not match meta.shape {self.meta.shape}")
        if px.size:
            lo, hi = float(px.min()), float(px.max())
            if not (lo >= 0.0 and hi <= 1.0):  # written this way so NaN fails too
                raise ValueError(f"XrayImage.pixels must lie in [0, 1], got min {lo} max {hi}")
        if px.flags.writeable:
            # A read-only view keeps callers from editing an image that others may share.
            px = px.view()
            px.flags.writeable = False
            object.__setattr__(self, "pixels", px)


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file, the problem and the fix."""


def _read_error(path: PathLike, problem: str, fix: str) -> ImageReadError:
    return ImageReadError(f"cannot read image {os.fspath(path)}: {problem}. Fix: {fix}")


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(_HEAD_BYTES)


def _detect_format(path: Path, head: bytes) -> str:
    """Format from magic bytes; the extension only licenses a forced read of preamble-less DICOM."""
    if not head:
        raise _read_error(path, "the file is empty", "re-export or re-download it")
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if head[128:132] == b"DICM" or path.suffix.lower() == ".dcm":
        return "dicom"
    raise _read_error(
        path,
        f"not a PNG, JPEG, TIFF or DICOM file (first bytes {head[:8].hex(' ')})",
        "convert it to one of those formats; if it is a DICOM file without the 128-byte preamble, "
        "give it a .dcm extension",
    )


# --------------------------------------------------------------------------------------------
# Pillow formats
# --------------------------------------------------------------------------------------------


def _open_pil(path: Path, fmt: str) -> Image.Image:
    try:
        return Image.open(path, formats=[_PIL_FORMAT_NAMES[fmt]])
    except (*_PIL_DATA_ERRORS, Image.DecompressionBombError) as exc:
        raise _read_error(
            path, f"the {fmt.upper()} header is corrupt or unsupported ({exc})", "re-export or re-download it"
        ) from exc


def _load_pil(im: Image.Image, path: Path, fmt: str) -> None:
    try:
        n_frames = int(getattr(im, "n_frames", 1))
        if n_frames == 1:
            im.load()
    except (*_PIL_DATA_ERRORS, Image.DecompressionBombError) as exc:
        raise _read_error(
            path, f"the {fmt.upper()} data is corrupt or truncated ({exc})", "re-export or re-download it"
        ) from exc
    if n_frames > 1:
        raise _read_error(
            path,
            f"it holds {n_frames} frames/pages; multi-frame images are not supported",
            "save the frame you need as a single-frame image",
        )


def _png_ihdr(head: bytes) -> tuple[int, int]:
    """(bit depth, colour type) from the IHDR chunk, which PNG requires to come first."""
    return head[24], head[25]


def _tiff_tag(im: Image.Image, tag: int) -> Any:
    tags = getattr(im, "tag_v2", None)
    return None if tags is None else tags.get(tag)


def _tiff_bits(im: Image.Image) -> int | None:
    bits = _tiff_tag(im, _TIFF_BITS_PER_SAMPLE)
    if bits is None:
        return None
    if isinstance(bits, Sequence):
        return int(max(bits))
    return int(bits)


def _reject_wide_colour(im: Image.Image, path: Path, fmt: str, head: bytes) -> None:
    """Pillow silently keeps only the high byte of 16-bit colour samples; refuse instead."""
    if fmt == "png":
        bit_depth, colour_type = _png_ihdr(head)
        wide = bit_depth == 16 and colour_type in (2, 4, 6)
    elif fmt == "tiff":
        bits = _tiff_bits(im)
        wide = im.mode in ("RGB", "RGBA", "LA", "CMYK") and bits is not None and bits > 8
    else:
        wide = False
    if wide:
        raise _read_error(
            path,
            "it is a 16-bit colour/grey+alpha image and Pillow would silently reduce it to 8 bits",
            "save it as 16-bit single-channel greyscale (PNG or TIFF)",
        )


def _warn_orientation(im: Image.Image, path: Path) -> None:
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION)
    except (*_PIL_DATA_ERRORS, KeyError, TypeError):  # bad EXIF must not fail a readable image
        return
    if orientation not in (None, 1):
        warnings.warn(
            f"{path}: EXIF Orientation={orientation} is ignored; pixels are used as stored",
            stacklevel=3,
        )


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of float RGB in [0, 1], shape (H, W, 3), computed in float64."""
    r, g, b = BT601_WEIGHTS
    rgb = rgb.astype(np.float64, copy=False)
    y = r * rgb[..., 0] + g * rgb[..., 1] + b * rgb[..., 2]
    return np.clip(y, 0.0, 1.0)


def _scale_uint(arr: np.ndarray, bits: int) -> np.ndarray:
    # float32 division is correctly rounded, so this equals (arr / maxval) in float64 cast to float32.
    return arr.astype(np.float32) / np.float32(2**bits - 1)


def _decode_pil(im: Image.Image, path: Path, fmt: str, head: bytes) -> tuple[np.ndarray, str, int]:
    """(float pixels in [0, 1], photometric, stored bit depth) for a loaded Pillow image."""
    mode = im.mode
    png_bits = _png_ihdr(head)[0] if fmt == "png" else None
    stored_bits = png_bits if png_bits is not None else _tiff_bits(im)
    min_is_white = fmt == "tiff" and _tiff_tag(im, _TIFF_PHOTOMETRIC) == _TIFF_MIN_IS_WHITE
    grey = "MONOCHROME1" if min_is_white else "MONOCHROME2"

    if mode == "1":
        return np.asarray(im, dtype=bool).astype(np.float32), grey, 1
    if mode in ("L", "LA"):
        # Pillow expands 1/2/4-bit greys to the full 0..255 range, so /255 holds for them too.
        arr = np.asarray(im)
        arr = arr[..., 0] if arr.ndim == 3 else arr
        return _scale_uint(arr, 8), "LA" if mode == "LA" else grey, stored_bits or 8
    if mode in ("P", "PA"):
        # RGBA, not RGB: Pillow warns when converting palettes with transparency straight to RGB.
        rgb = np.asarray(im.convert("RGBA"))[..., :3]
        return _luminance(rgb / 255.0).astype(np.float32), "PALETTE", 8
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(im)[..., :3]
        return _luminance(rgb / 255.0).astype(np.float32), mode, stored_bits or 8
    if mode.startswith("I;16"):
        arr = np.asarray(im)
        if arr.dtype.kind != "u" or arr.dtype.itemsize != 2:
            raise _read_error(path, f"unsupported 16-bit pixel mode {mode!r}", "save it as unsigned 16-bit")
        pixels = _scale_uint(arr, 16)
        return (1.0 - pixels if min_is_white else pixels), grey, 16
    if mode == "I":
        # Older Pillow opens 16-bit PNGs as 32-bit "I"; a TIFF in this mode stores 32-bit integers,
        # which have no agreed [0, 1] scale.
        bits = 16 if fmt == "png" else stored_bits
        if bits != 16:
            raise _read_error(
                path,
                f"it stores {bits}-bit integers, which have no defined mapping to [0, 1]",
                "save it as 8- or 16-bit unsigned integers, or as float32 scaled to [0, 1]",
            )
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise _read_error(path, "16-bit samples outside 0..65535", "re-export it as unsigned 16-bit")
        pixels = _scale_uint(arr, 16)
        return (1.0 - pixels if min_is_white else pixels), grey, 16
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        finite = bool(np.isfinite(arr).all())
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size and finite else (0.0, 0.0)
        if not finite or lo < 0.0 or hi > 1.0:
            found = "non-finite values (NaN/inf)" if not finite else f"values in [{lo:g}, {hi:g}]"
            raise _read_error(
                path,
                f"float images must already lie in [0, 1], found {found}",
                "rescale it to [0, 1] before saving, or save it as 8/16-bit integers",
            )
        pixels = np.array(arr, dtype=np.float32)
        return (1.0 - pixels if min_is_white else pixels), grey, 32
    raise _read_error(
        path,
        f"unsupported pixel mode {mode!r}",
        "convert it to greyscale (8- or 16-bit) or 8-bit RGB",
    )


def _read_pil(path: Path, fmt: str, head: bytes) -> XrayImage:
    with _open_pil(path, fmt) as im:
        _load_pil(im, path, fmt)
        _reject_wide_colour(im, path, fmt, head)
        if fmt in ("jpeg", "tiff"):
            _warn_orientation(im, path)
        pixels, photometric, bits = _decode_pil(im, path, fmt, head)
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    meta = ImageMeta(fmt, int(bits), photometric, (int(pixels.shape[0]), int(pixels.shape[1])))
    return XrayImage(pixels, meta)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _dcmread(path: Path, head: bytes, *, stop_before_pixels: bool) -> Any:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a hard dependency
        raise ImportError("reading DICOM files needs pydicom: pip install pydicom") from exc
    force = head[128:132] != b"DICM"
    try:
        return pydicom.dcmread(path, force=force, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many unrelated types for bad data
        raise _read_error(path, f"not a readable DICOM file ({exc})", "re-export or re-download it") from exc


def _dicom_size(ds: Any, path: Path) -> tuple[int, int]:
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:
        raise _read_error(
            path, "the DICOM has no Rows/Columns (not an image, or truncated)", "check it is a complete image"
        )
    return int(rows), int(cols)


def _dicom_plugin_hint(ts: Any) -> str | None:
    """A decoder install hint when pydicom has no working decoder for ``ts``, else None."""
    uid = str(ts)
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3

        decoder = get_decoder(ts)
        if decoder.is_available:
            return None
        missing = "; ".join(decoder.missing_dependencies)
    except ImportError:  # pydicom 2.x has no decoder registry; assume the decoder is missing
        missing = ""
    except NotImplementedError:  # a transfer syntax pydicom has no decoder for at all
        missing = ""
    hint = next((v for k, v in _DICOM_PLUGIN_HINTS.items() if uid.startswith(k)), _DICOM_PLUGIN_FALLBACK)
    return hint + (f"  [pydicom: {missing}]" if missing else "")


def _transfer_syntax(ds: Any) -> Any:
    """The dataset's Transfer Syntax UID, inferred from how it was parsed when the file has none.

    Bare datasets (no preamble, no file meta; old raw exports) are otherwise undecodable by pydicom.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None:
        file_meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in file_meta:
        implicit, little = getattr(ds, "original_encoding", (None, None))
        if implicit is None:  # pydicom 2.x
            implicit, little = getattr(ds, "is_implicit_VR", True), getattr(ds, "is_little_endian", True)
        if implicit:
            file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return file_meta.TransferSyntaxUID


def _dicom_stored_values(ds: Any, path: Path) -> np.ndarray:
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise _read_error(
                path, "float pixel data DICOMs are not supported", "export it with integer Pixel Data"
            )
        raise _read_error(path, "the DICOM has no pixel data (not an image, or truncated)", "re-export it")
    ts = _transfer_syntax(ds)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # decoders raise anything from RuntimeError to struct.error
        if ts is not None and getattr(ts, "is_compressed", False):
            hint = _dicom_plugin_hint(ts)
            if hint is not None:
                raise _read_error(
                    path,
                    f"its pixel data is compressed as {ts.name} ({ts}) and no installed decoder handles it",
                    f"{hint}; or decompress it first (e.g. `gdcmconv --raw` or `dcmdjpeg`)",
                ) from exc
        raise _read_error(
            path, f"its pixel data could not be decoded ({exc})", "check the file is complete; re-export it"
        ) from exc


def _first_value(value: Any) -> float | None:
    """First of a possibly multi-valued DS element (several windows may be offered; we use the first)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    return float(value)


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 / C.11.2.1.3 windowing with output range [0, 1] (float64).

    ``values`` are modality values (after Rescale/Modality LUT).  Raises ValueError for a width
    the standard forbids (LINEAR: ``< 1``; LINEAR_EXACT, SIGMOID: ``<= 0``) or an unknown function.
    """
    x = np.asarray(values, dtype=np.float64)
    function = function.strip().upper()
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"Window Width {width} < 1 is invalid for LINEAR")
        c, w = center - 0.5, width - 1.0
        if w == 0:
            # Width 1 is a hard threshold; the general formula would divide by zero.
            return (x > c).astype(np.float64)
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"Window Width {width} <= 0 is invalid for LINEAR_EXACT")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"Window Width {width} <= 0 is invalid for SIGMOID")
        with np.errstate(over="ignore"):  # exp overflow -> inf -> exactly 0, which is the limit
            return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    raise ValueError(f"unknown VOI LUT Function {function!r} (expected LINEAR, LINEAR_EXACT or SIGMOID)")


def _minmax(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros(v.shape, dtype=np.float64)
    return (v - lo) / (hi - lo)


def _apply_modality_lut(stored: np.ndarray, ds: Any) -> np.ndarray:
    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut
    return np.asarray(apply_modality_lut(stored, ds))


def _has_voi_lut_sequence(ds: Any) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None


def _voi_lut_table(ds: Any) -> tuple[np.ndarray, int, int]:
    """(LUT entries as int64, first mapped value, declared bits per entry) of the first VOI LUT.

    Decoded here rather than with pydicom's ``apply_voi``, which indexes 8-bit LUTs through a
    uint8 array and so wraps inputs beyond entry 255 (pydicom 3.0).
    """
    item = ds.VOILUTSequence[0]
    n_entries, first_map, bits = (int(v) for v in item.LUTDescriptor)
    n_entries = n_entries or 2**16
    elem = item["LUTData"]
    if isinstance(elem.value, bytes):  # OW: raw words in the dataset's byte order
        file_meta = getattr(ds, "file_meta", None)
        ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
        little = True if ts is None else bool(getattr(ts, "is_little_endian", True))
        if bits <= 8:  # two 8-bit entries per 16-bit word, first entry in the low byte
            words = np.frombuffer(elem.value, dtype="<u2" if little else ">u2")
            table = np.stack([words & 0xFF, words >> 8], axis=-1).ravel()
        else:
            table = np.frombuffer(elem.value, dtype="<u2" if little else ">u2")
    else:
        value = elem.value
        table = np.atleast_1d(np.asarray(list(value) if isinstance(value, Sequence) else value))
    table = table.astype(np.int64)
    if table.size < n_entries:
        raise ValueError(f"LUT Data has {table.size} entries, LUT Descriptor promises {n_entries}")
    return table[:n_entries], first_map, bits


def _apply_voi_lut_sequence(values: np.ndarray, ds: Any) -> np.ndarray:
    table, first_map, declared_bits = _voi_lut_table(ds)
    # LUT inputs are integers; inputs outside the LUT's domain take its first/last entry (C.11.2.1.1).
    idx = np.clip(np.rint(values).astype(np.int64) - first_map, 0, table.size - 1)
    used_bits = max(1, int(table.max()).bit_length())
    top = float(2 ** min(declared_bits, used_bits) - 1)
    return np.clip(table[idx] / top, 0.0, 1.0)


def _dicom_grey(stored: np.ndarray, ds: Any, path: Path) -> np.ndarray:
    values = _apply_modality_lut(stored, ds)
    if _has_voi_lut_sequence(ds):
        try:
            return _apply_voi_lut_sequence(values, ds)
        except (ValueError, TypeError, AttributeError) as exc:
            raise _read_error(
                path, f"its VOI LUT Sequence cannot be applied ({exc})", "remove or fix it"
            ) from exc
    center = _first_value(ds.get("WindowCenter"))
    width = _first_value(ds.get("WindowWidth"))
    if center is not None and width is not None:
        function = str(ds.get("VOILUTFunction") or "LINEAR")
        try:
            return apply_window(values, center, width, function)
        except ValueError as exc:
            warnings.warn(f"{path}: {exc}; falling back to min-max normalisation", stacklevel=4)
    return _minmax(values)


def _read_dicom(path: Path, head: bytes) -> XrayImage:
    ds = _dcmread(path, head, stop_before_pixels=False)
    shape = _dicom_size(ds, path)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise _read_error(
            path,
            f"multi-frame DICOM ({frames} frames) is not supported",
            "export the frame you need as a single-frame DICOM or PNG",
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    stored = _dicom_stored_values(ds, path)
    if samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = _dicom_grey(stored, ds, path)
        if photometric == "MONOCHROME1":
            grey = 1.0 - grey
    elif samples == 3 and (photometric == "RGB" or photometric.startswith("YBR")):
        # pydicom >= 3 returns RGB for YBR data by default.
        if stored.ndim != 3 or stored.shape[-1] != 3:
            raise _read_error(path, f"unexpected colour pixel shape {stored.shape}", "re-export it as RGB")
        if bits <= 0:
            raise _read_error(path, "Bits Stored is missing", "re-export it with Bits Stored set")
        grey = _luminance(stored / float(2**bits - 1))
    else:
        raise _read_error(
            path,
            f"Photometric Interpretation {photometric!r} with {samples} sample(s) per pixel is not supported",
            "export it as MONOCHROME1/MONOCHROME2 (or RGB)",
        )
    pixels = np.ascontiguousarray(np.clip(grey, 0.0, 1.0), dtype=np.float32)
    if pixels.shape != shape:
        raise _read_error(
            path, f"decoded shape {pixels.shape} differs from Rows/Columns {shape}", "re-export it"
        )
    return XrayImage(pixels, ImageMeta("dicom", bits, photometric, shape))


# --------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------


def read_image(path: PathLike) -> XrayImage:
    """Decode ``path`` (PNG, JPEG, TIFF or DICOM, detected from its bytes) to an :class:`XrayImage`.

    Raises :class:`ImageReadError` for empty, truncated, corrupt, unknown or unsupported files and
    ``OSError`` (e.g. ``FileNotFoundError``) when the file cannot be opened at all.
    """
    path = Path(path)
    head = _read_head(path)
    fmt = _detect_format(path, head)
    if fmt == "dicom":
        return _read_dicom(path, head)
    return _read_pil(path, fmt, head)


def read_mask(path: PathLike) -> np.ndarray:
    """Read a segmentation mask as bool ``(H, W, C)``: nonzero is True.

    ``C`` is 1 for greyscale masks and 3 for RGB masks (one structure per channel); alpha is
    dropped.  Palette masks are expanded through their palette and collapse to ``C = 1`` when every
    palette colour is grey (PNG optimisers turn grey and RGB masks into palettes losslessly).
    DICOM masks use the stored values, without any LUT.  JPEG masks are read but warned about:
    compression noise turns background pixels True.
    """
    path = Path(path)
    head = _read_head(path)
    fmt = _detect_format(path, head)
    if fmt == "dicom":
        ds = _dcmread(path, head, stop_before_pixels=False)
        _dicom_size(ds, path)
        if int(ds.get("NumberOfFrames") or 1) > 1:
            raise _read_error(path, "multi-frame DICOM masks are not supported", "export a single frame")
        stored = _dicom_stored_values(ds, path)
        mask = stored != 0
        return np.ascontiguousarray(mask[..., None] if mask.ndim == 2 else mask[..., :3])
    if fmt == "jpeg":
        warnings.warn(
            f"{path}: JPEG masks are lossy; compression noise makes background pixels True. "
            "Store masks as PNG.",
            stacklevel=2,
        )
    with _open_pil(path, fmt) as im:
        _load_pil(im, path, fmt)
        _reject_wide_colour(im, path, fmt, head)
        mode = im.mode
        if mode in ("P", "PA"):
            rgb = np.asarray(im.convert("RGBA"))[..., :3]
            grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
            mask = rgb[..., :1] != 0 if grey else rgb != 0
        elif mode in ("RGB", "RGBA"):
            mask = np.asarray(im)[..., :3] != 0
        elif mode == "1" or mode in ("L", "LA", "I", "F") or mode.startswith("I;16"):
            arr = np.asarray(im)
            arr = arr[..., 0] if arr.ndim == 3 else arr
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise _read_error(path, "the float mask contains NaN/inf", "store masks as 8-bit PNG")
            mask = (arr != 0)[..., None]
        else:
            raise _read_error(path, f"unsupported mask pixel mode {mode!r}", "store masks as 8-bit PNG")
    return np.ascontiguousarray(mask, dtype=bool)


def image_size(path: PathLike) -> tuple[int, int]:
    """``(H, W)`` from the file header, without decoding pixels (so it does not validate them)."""
    path = Path(path)
    head = _read_head(path)
    fmt = _detect_format(path, head)
    if fmt == "dicom":
        return _dicom_size(_dcmread(path, head, stop_before_pixels=True), path)
    with _open_pil(path, fmt) as im:
        width, height = im.size
    return int(height), int(width)


def resize_to(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with antialiasing (the `to_reference` policy), float32 in [0,1]."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        x = torch.from_numpy(np.array(pixels, dtype=np.float32))[None, None]  # a writable copy
        y = F.interpolate(x, size=tuple(shape), mode="bilinear", antialias=True, align_corners=False)
        return y[0, 0].clamp_(0.0, 1.0).numpy().copy()
