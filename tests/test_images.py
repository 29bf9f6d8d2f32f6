"""Tests for audit.images: pixel conventions on read, metadata-free deterministic PNGs on write.

Every expectation is computed independently of the module: Pillow's own decoder, pydicom's LUT
functions, a hand-rolled PNG builder (zlib + struct), tifffile, or the published BT.601 formula.
"""

from __future__ import annotations

import io
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from audit.atomic import sha256_file
from audit.images import (
    ImageMeta,
    ImageReadError,
    XrayImage,
    _decode_pil,
    apply_window,
    encode_png,
    image_size,
    read_image,
    read_mask,
    write_png,
)
from audit.png import _png_bytes

try:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BT601 = np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------------------------
# Fixture builders (independent of audit.images)
# ----------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_by_hand(samples: np.ndarray, bit_depth: int, colour_type: int) -> bytes:
    """A minimal PNG (filter 0 on every row) built with zlib + struct only."""
    height, width = samples.shape[:2]
    if bit_depth < 8:
        per_byte = 8 // bit_depth
        padded = np.zeros((height, -(-width // per_byte) * per_byte), dtype=np.uint8)
        padded[:, :width] = samples
        groups = padded.reshape(height, -1, per_byte).astype(np.uint16)
        shifts = bit_depth * np.arange(per_byte - 1, -1, -1)
        rows = (groups << shifts).sum(axis=2).astype(np.uint8)
    else:
        dtype = ">u2" if bit_depth == 16 else np.uint8
        rows = np.ascontiguousarray(samples.astype(dtype)).view(np.uint8).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def png_chunks(data: bytes) -> list[bytes]:
    """Chunk types in order; asserts every CRC and that nothing trails IEND."""
    assert data[:8] == PNG_SIGNATURE
    kinds, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        kinds.append(kind)
        pos += 12 + length
    assert pos == len(data)
    return kinds


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    signed: bool = False,
    preamble: bool = True,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    **attrs: object,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape[:2]
    colour = stored.ndim == 3
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if colour else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if colour:
        ds.PlanarConfiguration = 0
        default = stored.astype(np.uint8).tobytes()
    else:
        default = stored.astype("<i2" if signed else "<u2").tobytes()
    ds.PixelData = default if pixel_data is None else pixel_data
    for key, value in attrs.items():
        setattr(ds, key, value)
    if transfer_syntax != ExplicitVRLittleEndian:
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=preamble)
    return pydicom.dcmread(path, force=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def smooth_image(rng: np.random.Generator, shape: tuple[int, int] = (64, 80)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = 0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 7.0)
    return np.clip(base + 0.03 * rng.standard_normal(shape), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# PNG reading
# ----------------------------------------------------------------------------------------------


def test_png16_ramp_reads_exact_values(tmp_path: Path) -> None:
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    img = read_image(path)
    assert img.pixels.dtype == np.float32
    np.testing.assert_array_equal(img.pixels, (ramp / 65535.0).astype(np.float32))
    assert img.meta == ImageMeta("png", 16, "MONOCHROME2", (256, 256))
    assert img.pixels[0, 0] == 0.0 and img.pixels[-1, -1] == 1.0


def test_png8_ramp_reads_exact_values(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (3, 1))
    path = tmp_path / "ramp8.png"
    Image.fromarray(ramp).save(path)
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, (ramp / 255.0).astype(np.float32))
    assert img.meta == ImageMeta("png", 8, "MONOCHROME2", (3, 256))


def test_png16_is_not_clipped_at_255(tmp_path: Path) -> None:
    samples = np.array([[40000, 300], [255, 65535]], dtype=np.uint16)
    path = tmp_path / "hand16.png"
    path.write_bytes(png_by_hand(samples, 16, 0))
    px = read_image(path).pixels
    assert px[0, 0] == np.float32(40000 / 65535)
    assert px[0, 1] == np.float32(300 / 65535)
    assert px[1, 0] == np.float32(255 / 65535)  # 8-bit clipping would make this 1.0
    assert len(np.unique(px)) == 4


def test_pixels_are_read_only(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    img = read_image(path)
    assert not img.pixels.flags.writeable
    with pytest.raises(ValueError):
        img.pixels[0, 0] = 1.0


@pytest.mark.parametrize("bit_depth", [1, 2, 4])
def test_low_bit_depth_grey_png(tmp_path: Path, rng: np.random.Generator, bit_depth: int) -> None:
    top = 2**bit_depth - 1
    samples = rng.integers(0, top + 1, size=(5, 11), dtype=np.uint8)
    path = tmp_path / f"grey{bit_depth}.png"
    path.write_bytes(png_by_hand(samples, bit_depth, 0))
    img = read_image(path)
    np.testing.assert_allclose(img.pixels, samples / top, atol=1e-7)
    assert img.meta.bit_depth == bit_depth


def test_rgb_png_is_bt601_luminance(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, size=(17, 13, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    img = read_image(path)
    expected = (rgb / 255.0) @ BT601
    np.testing.assert_allclose(img.pixels, expected, atol=1e-7)
    assert img.meta == ImageMeta("png", 8, "RGB", (17, 13))


def test_rgba_png_ignores_alpha(tmp_path: Path, rng: np.random.Generator) -> None:
    rgba = rng.integers(0, 256, size=(9, 6, 4), dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    img = read_image(path)
    np.testing.assert_allclose(img.pixels, (rgba[..., :3] / 255.0) @ BT601, atol=1e-7)
    assert img.meta.photometric == "RGBA"


def test_pillow_int32_mode_for_16bit_png(tmp_path: Path) -> None:
    """Older Pillow opens 16-bit grey PNGs as mode "I"; they must scale by 65535 too."""
    samples = np.array([[0, 300, 40000, 65535]], dtype=np.uint16)
    path = tmp_path / "hand16.png"
    path.write_bytes(png_by_hand(samples, 16, 0))
    as_int32 = Image.fromarray(samples.astype(np.int32))
    assert as_int32.mode == "I"
    pixels, photometric, bits = _decode_pil(as_int32, path, "png", path.read_bytes()[:132])
    np.testing.assert_array_equal(pixels, (samples / 65535).astype(np.float32))
    assert (photometric, bits) == ("MONOCHROME2", 16)


def test_grey_alpha_png_uses_grey_channel(tmp_path: Path, rng: np.random.Generator) -> None:
    la = rng.integers(0, 256, size=(7, 5, 2), dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, (la[..., 0] / 255.0).astype(np.float32))
    assert img.meta.photometric == "LA"


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png_goes_through_palette(
    tmp_path: Path, rng: np.random.Generator, transparency: bool
) -> None:
    palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, size=(12, 10), dtype=np.uint8)
    im = Image.fromarray(index, mode="L").convert("P")
    im.putpalette(palette.ravel().tolist())
    im.putdata(index.ravel().tolist())
    path = tmp_path / "palette.png"
    im.save(path, transparency=3) if transparency else im.save(path)
    img = read_image(path)
    np.testing.assert_allclose(img.pixels, (palette[index] / 255.0) @ BT601, atol=1e-7)
    assert img.meta == ImageMeta("png", 8, "PALETTE", (12, 10))


def test_bilevel_png(tmp_path: Path, rng: np.random.Generator) -> None:
    bits = rng.random((6, 19)) > 0.5
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, bits.astype(np.float32))
    assert img.meta.bit_depth == 1


@pytest.mark.parametrize("colour_type,channels", [(2, 3), (6, 4), (4, 2)])
def test_16bit_colour_png_is_refused_not_truncated(tmp_path: Path, colour_type: int, channels: int) -> None:
    samples = np.full((3, 4, channels), 40000, dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_by_hand(samples, 16, colour_type))
    with pytest.raises(ImageReadError, match="16-bit") as err:
        read_image(path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------------------------
# JPEG and TIFF
# ----------------------------------------------------------------------------------------------


def test_grey_jpeg_matches_pillow(tmp_path: Path, rng: np.random.Generator) -> None:
    grey = np.rint(smooth_image(rng) * 255).astype(np.uint8)
    path = tmp_path / "grey.jpg"
    Image.fromarray(grey).save(path, quality=90)
    img = read_image(path)
    reference = np.asarray(Image.open(path).convert("L")) / 255.0
    np.testing.assert_allclose(img.pixels, reference, atol=1e-7)
    assert np.abs(img.pixels - grey / 255.0).max() < 0.1  # and it is the image we wrote
    assert img.meta == ImageMeta("jpeg", 8, "MONOCHROME2", grey.shape)


def test_rgb_jpeg_matches_pillow_luma(tmp_path: Path, rng: np.random.Generator) -> None:
    base = smooth_image(rng)
    rgb = np.rint(np.stack([base, base[::-1], base[:, ::-1]], axis=-1) * 255).astype(np.uint8)
    path = tmp_path / "rgb.jpeg"
    Image.fromarray(rgb).save(path, quality=90)
    img = read_image(path)
    # Pillow's "L" conversion is BT.601 in 16-bit fixed point, rounded to 8 bits.
    reference = np.asarray(Image.open(path).convert("L")) / 255.0
    np.testing.assert_allclose(img.pixels, reference, atol=0.51 / 255)
    assert img.meta.photometric == "RGB"


def test_jpeg_exif_orientation_is_warned(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(path, exif=exif)
    with pytest.warns(UserWarning, match="Orientation=6"):
        img = read_image(path)
    assert img.meta.shape == (8, 16)  # pixels as stored, not rotated


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255), (np.uint16, 65535)])
def test_integer_tiff(tmp_path: Path, rng: np.random.Generator, dtype: type, top: int) -> None:
    samples = rng.integers(0, top + 1, size=(21, 9)).astype(dtype)
    path = tmp_path / "img.tif"
    Image.fromarray(samples).save(path)
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, (samples / top).astype(np.float32))
    assert img.meta == ImageMeta("tiff", 8 * np.dtype(dtype).itemsize, "MONOCHROME2", (21, 9))


def test_float_tiff_in_range(tmp_path: Path, rng: np.random.Generator) -> None:
    values = rng.random((10, 12)).astype(np.float32)
    values[0, 0], values[0, 1] = 0.0, 1.0
    path = tmp_path / "float.tiff"
    Image.fromarray(values).save(path)
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, values)
    assert img.meta.bit_depth == 32


@pytest.mark.parametrize("bad", [1.5, -0.25, np.nan])
def test_float_tiff_out_of_range_is_refused(tmp_path: Path, bad: float) -> None:
    values = np.full((4, 4), 0.5, dtype=np.float32)
    values[2, 3] = bad
    path = tmp_path / "float_bad.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ImageReadError, match=r"\[0, 1\]") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_int32_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "int32.tif"
    Image.fromarray(np.full((3, 3), 70000, dtype=np.int32)).save(path)
    with pytest.raises(ImageReadError, match="32-bit"):
        read_image(path)


def test_multipage_tiff_is_refused(tmp_path: Path) -> None:
    pages = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (10, 20)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(ImageReadError, match="2 frames"):
        read_image(path)


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255), (np.uint16, 65535)])
def test_min_is_white_tiff_is_inverted(
    tmp_path: Path, rng: np.random.Generator, dtype: type, top: int
) -> None:
    import tifffile

    samples = rng.integers(0, top + 1, size=(6, 7)).astype(dtype)
    path = tmp_path / "miniswhite.tif"
    tifffile.imwrite(path, samples, photometric="miniswhite")
    img = read_image(path)
    np.testing.assert_allclose(img.pixels, 1.0 - samples / top, atol=1e-7)
    assert img.meta.photometric == "MONOCHROME1"


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------


def _pydicom_window_reference(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """pydicom's modality + VOI output, normalised by the output range pydicom documents."""
    out = apply_voi_lut(apply_modality_lut(stored, ds), ds)
    bits, slope, intercept = ds.BitsStored, float(ds.RescaleSlope), float(ds.RescaleIntercept)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    y_min, y_max = lo * slope + intercept, hi * slope + intercept
    return (out - y_min) / (y_max - y_min)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("signed", [False, True])
def test_monochrome1_dicom_matches_pydicom(
    tmp_path: Path, rng: np.random.Generator, function: str, signed: bool
) -> None:
    if signed:
        stored = rng.integers(-2048, 2048, size=(24, 20)).astype(np.int16)
        attrs = {
            "RescaleSlope": 1.0,
            "RescaleIntercept": -1024.0,
            "WindowCenter": -900.0,
            "WindowWidth": 1500.0,
        }
    else:
        stored = rng.integers(0, 4096, size=(24, 20)).astype(np.uint16)
        attrs = {
            "RescaleSlope": 0.5,
            "RescaleIntercept": 100.0,
            "WindowCenter": 1100.0,
            "WindowWidth": 1200.0,
        }
    path = tmp_path / "m1.dcm"
    ds = write_dicom(
        path,
        stored,
        photometric="MONOCHROME1",
        bits_stored=12,
        signed=signed,
        VOILUTFunction=function,
        **attrs,
    )
    img = read_image(path)
    expected = 1.0 - _pydicom_window_reference(ds, ds.pixel_array)
    np.testing.assert_allclose(img.pixels, expected, atol=2e-6)
    assert img.meta == ImageMeta("dicom", 12, "MONOCHROME1", (24, 20))
    assert 0.0 < img.pixels.mean() < 1.0  # the window is not saturating everything


def test_window_width_one_is_a_threshold_like_pydicom(tmp_path: Path) -> None:
    stored = np.arange(0, 40, dtype=np.uint16).reshape(4, 10)
    path = tmp_path / "w1.dcm"
    ds = write_dicom(path, stored, WindowCenter=20.0, WindowWidth=1.0, RescaleSlope=1.0, RescaleIntercept=0.0)
    np.testing.assert_allclose(read_image(path).pixels, _pydicom_window_reference(ds, stored), atol=1e-7)
    # and the standard's LINEAR formula directly: x > c - 0.5 is full scale
    np.testing.assert_array_equal(apply_window(stored, 20.0, 1.0), (stored > 19.5).astype(float))


def test_first_of_multiple_windows_is_used(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(0, 4096, size=(8, 8)).astype(np.uint16)
    path = tmp_path / "multi_window.dcm"
    ds = write_dicom(
        path,
        stored,
        WindowCenter=[2000.0, 500.0],
        WindowWidth=[1000.0, 200.0],
        RescaleSlope=1.0,
        RescaleIntercept=0.0,
    )
    np.testing.assert_allclose(read_image(path).pixels, _pydicom_window_reference(ds, stored), atol=2e-6)


def test_monochrome2_without_window_is_min_max(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = rng.integers(100, 3000, size=(16, 12)).astype(np.uint16)
    path = tmp_path / "m2.dcm"
    write_dicom(path, stored, RescaleSlope=2.0, RescaleIntercept=-50.0)
    img = read_image(path)
    modality = stored * 2.0 - 50.0
    expected = (modality - modality.min()) / (modality.max() - modality.min())
    np.testing.assert_allclose(img.pixels, expected, atol=1e-7)
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0


@pytest.mark.parametrize("photometric,value", [("MONOCHROME2", 0.0), ("MONOCHROME1", 1.0)])
def test_constant_dicom_without_window(tmp_path: Path, photometric: str, value: float) -> None:
    path = tmp_path / "flat.dcm"
    write_dicom(path, np.full((5, 5), 1234, np.uint16), photometric=photometric)
    np.testing.assert_array_equal(read_image(path).pixels, np.full((5, 5), value, np.float32))


def _voi_lut_item(lut: np.ndarray, first_map: int, bits: int, vr: str = "US") -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(lut), first_map, bits])  # LUT Descriptor
    data = lut.astype("<u2").tobytes() if vr == "OW" else lut.astype(int).tolist()
    item.add_new(0x00283006, vr, data)  # LUT Data
    return item


@pytest.mark.parametrize(
    "lut_top,declared_bits,vr", [(4095, 16, "US"), (65535, 16, "US"), (65535, 16, "OW"), (255, 8, "US")]
)
def test_voi_lut_sequence(
    tmp_path: Path, rng: np.random.Generator, lut_top: int, declared_bits: int, vr: str
) -> None:
    first_map, n = 100, 1000
    lut = np.rint(lut_top * (np.linspace(0, 1, n) ** 0.5)).astype(int)  # a gamma-like curve
    stored = rng.integers(0, 1300, size=(10, 10)).astype(np.uint16)  # spans below and above the LUT
    path = tmp_path / "voilut.dcm"
    ds = write_dicom(
        path,
        stored,
        VOILUTSequence=DicomSequence([_voi_lut_item(lut, first_map, declared_bits, vr)]),
        WindowCenter=500.0,
        WindowWidth=100.0,  # ignored: a LUT wins over a window, as in pydicom
    )
    img = read_image(path)
    expected = lut[np.clip(stored.astype(int) - first_map, 0, n - 1)] / lut_top
    np.testing.assert_allclose(img.pixels, expected, atol=1e-7)
    if declared_bits == 16:  # pydicom 3.0 wraps 8-bit LUT indices past 255, so compare only here
        np.testing.assert_allclose(img.pixels, apply_voi_lut(ds.pixel_array, ds) / lut_top, atol=1e-7)


def test_monochrome2_dicom_without_preamble_needs_dcm_extension(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    stored = rng.integers(0, 4096, size=(6, 9)).astype(np.uint16)
    path = tmp_path / "nopreamble.dcm"
    write_dicom(path, stored, preamble=False, WindowCenter=2048.0, WindowWidth=4096.0)
    assert path.read_bytes()[128:132] != b"DICM"
    assert read_image(path).meta.source_format == "dicom"
    other = tmp_path / "nopreamble.bin"
    other.write_bytes(path.read_bytes())
    with pytest.raises(ImageReadError, match="not a PNG, JPEG, TIFF or DICOM"):
        read_image(other)


def test_bare_dicom_dataset_without_file_meta(tmp_path: Path) -> None:
    ds = Dataset()
    ds.Rows, ds.Columns = 2, 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.array([0, 10, 20, 30, 40, 50], dtype="<u2").tobytes()
    path = tmp_path / "bare.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)
    img = read_image(path)
    np.testing.assert_allclose(img.pixels, np.arange(6).reshape(2, 3) / 5, atol=1e-7)
    assert image_size(path) == (2, 3)


def test_rgb_dicom_is_luminance(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = tmp_path / "rgb.dcm"
    write_dicom(path, rgb, photometric="RGB", bits_stored=8)
    img = read_image(path)
    np.testing.assert_allclose(img.pixels, (rgb / 255.0) @ BT601, atol=1e-7)
    assert img.meta == ImageMeta("dicom", 8, "RGB", (5, 7))


def test_multiframe_dicom_is_refused(tmp_path: Path) -> None:
    frames = np.zeros((2, 4, 4), dtype=np.uint16)
    path = tmp_path / "frames.dcm"
    write_dicom(path, frames[0], pixel_data=frames.tobytes(), NumberOfFrames=2)
    with pytest.raises(ImageReadError, match="multi-frame") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_compressed_dicom_without_decoder_names_plugin(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = tmp_path / "jpegls.dcm"
    write_dicom(
        path,
        np.zeros((4, 4), np.uint16),
        transfer_syntax=JPEGLSLossless,
        pixel_data=encapsulate([b"\xff\xd8\xff\xf7not-really-jpeg-ls\xff\xd9"]),
    )
    with pytest.raises(ImageReadError, match="pip install pyjpegls") as err:
        read_image(path)
    assert str(path) in str(err.value) and "JPEG-LS" in str(err.value)


def test_truncated_dicom_pixel_data(tmp_path: Path) -> None:
    path = tmp_path / "short.dcm"
    write_dicom(path, np.zeros((8, 8), np.uint16))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value)
    assert image_size(path) == (8, 8)  # the header alone is intact


# ----------------------------------------------------------------------------------------------
# Corrupt and unknown files
# ----------------------------------------------------------------------------------------------


def _corrupt(kind: str, tmp_path: Path, rng: np.random.Generator) -> Path:
    good_png = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 65536, size=(64, 64), dtype=np.uint16)).save(good_png)
    good_jpg = tmp_path / "good.jpg"
    Image.fromarray(rng.integers(0, 256, size=(64, 64), dtype=np.uint8)).save(good_jpg)
    if kind == "truncated_png":
        path, data = tmp_path / "cut.png", good_png.read_bytes()[:3000]
    elif kind == "truncated_jpeg":
        path, data = tmp_path / "cut.jpg", good_jpg.read_bytes()[:600]
    elif kind == "bad_ihdr":
        path, data = tmp_path / "bad_ihdr.png", PNG_SIGNATURE + rng.bytes(200)
    elif kind == "random":
        path, data = tmp_path / "noise.png", rng.bytes(4096)
    elif kind == "empty":
        path, data = tmp_path / "empty.png", b""
    elif kind == "text":
        path, data = tmp_path / "notes.png", b"<html>404 Not Found</html>\n"
    elif kind == "random_dcm":
        path, data = tmp_path / "noise.dcm", rng.bytes(4096)
    else:
        raise AssertionError(kind)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "kind", ["truncated_png", "truncated_jpeg", "bad_ihdr", "random", "empty", "text", "random_dcm"]
)
def test_corrupt_files_raise_image_read_error(tmp_path: Path, rng: np.random.Generator, kind: str) -> None:
    path = _corrupt(kind, tmp_path, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns while force-parsing noise; the error is what matters
        with pytest.raises(ImageReadError) as err:
            read_image(path)
        with pytest.raises(ImageReadError):
            read_mask(path)
    message = str(err.value)
    assert str(path) in message and "Fix:" in message


@pytest.mark.parametrize("kind", ["random", "empty", "text", "bad_ihdr"])
def test_image_size_of_corrupt_headers_raises(tmp_path: Path, rng: np.random.Generator, kind: str) -> None:
    path = _corrupt(kind, tmp_path, rng)
    with pytest.raises(ImageReadError, match=str(path).replace("\\", "\\\\")):
        image_size(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "nope.png")


# ----------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------


def test_writer_strips_all_metadata(tmp_path: Path, rng: np.random.Generator) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Dr. Secret")  # tEXt
    info.add_itxt("Comment", "patient: Jane Doe", lang="en", tkey="Kommentar")  # iTXt
    info.add_text("Model", "diffusion-v3 " * 20, zip=True)  # zTXt
    exif = Image.Exif()
    exif[0x010F] = "ScannerCorp"
    icc = b"\x00" * 128 + b"fake-icc-profile"
    src = tmp_path / "tagged.png"
    Image.fromarray(np.rint(smooth_image(rng) * 65535).astype(np.uint16)).save(
        src, pnginfo=info, exif=exif, icc_profile=icc, dpi=(300, 300)
    )
    source_chunks = set(png_chunks(src.read_bytes()))
    assert {b"tEXt", b"iTXt", b"zTXt", b"eXIf", b"iCCP", b"pHYs"} <= source_chunks  # the test can fail

    out = tmp_path / "clean.png"
    write_png(out, read_image(src).pixels, bit_depth=16)
    assert png_chunks(out.read_bytes()) == [b"IHDR", b"IDAT", b"IEND"]
    reopened = Image.open(out)
    assert reopened.info == {} and not reopened.getexif()


def test_encoding_is_deterministic(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = smooth_image(rng).astype(np.float32)
    assert encode_png(pixels, 16) == encode_png(pixels.copy(), 16)
    write_png(tmp_path / "a.png", pixels)
    write_png(tmp_path / "b.png", pixels.astype(np.float64))
    assert sha256_file(tmp_path / "a.png") == sha256_file(tmp_path / "b.png")


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_write_read_round_trip(tmp_path: Path, rng: np.random.Generator, bit_depth: int) -> None:
    top = 2**bit_depth - 1
    pixels = np.concatenate([smooth_image(rng), rng.random((64, 80))]).astype(np.float32)
    pixels[0, :3] = [0.0, 1.0, 0.5]
    path = tmp_path / f"rt{bit_depth}.png"
    write_png(path, pixels, bit_depth=bit_depth)
    # Pillow's decoder sees exactly the round-half-to-even quantisation
    decoded = np.asarray(Image.open(path))
    np.testing.assert_array_equal(decoded, np.rint(pixels.astype(np.float64) * top))
    img = read_image(path)
    assert img.meta.bit_depth == bit_depth
    assert np.abs(img.pixels.astype(np.float64) - pixels).max() <= 0.5 / top + 1e-7
    # re-encoding what was read reproduces the file byte for byte
    assert encode_png(img.pixels, bit_depth) == path.read_bytes()


def test_round_half_to_even_and_clipping() -> None:
    pixels = np.array([[0.5, -0.3, 1.7, 0.0, 1.0]])
    decoded8 = np.asarray(Image.open(io.BytesIO(encode_png(pixels, 8))))
    np.testing.assert_array_equal(decoded8, [[128, 0, 255, 0, 255]])  # 127.5 -> 128 (even)
    decoded16 = np.asarray(Image.open(io.BytesIO(encode_png(pixels, 16))))
    np.testing.assert_array_equal(decoded16, [[32768, 0, 65535, 0, 65535]])  # 32767.5 -> 32768 (even)
    # a half-way value that rounds down under half-to-even (2.5 -> 2, half-up would give 3)
    assert np.asarray(Image.open(io.BytesIO(encode_png(np.array([[2.5 / 255]]), 8))))[0, 0] == np.rint(
        np.float64(2.5 / 255) * 255
    )


@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4, None])
@pytest.mark.parametrize("kind", ["grey8", "grey16", "rgb8"])
def test_every_png_filter_decodes_with_pillow(
    rng: np.random.Generator, filter_type: int | None, kind: str
) -> None:
    if kind == "grey8":
        samples, bit_depth = rng.integers(0, 256, size=(13, 29), dtype=np.uint8), 8
    elif kind == "grey16":
        samples, bit_depth = rng.integers(0, 65536, size=(13, 29), dtype=np.uint16), 16
    else:
        samples, bit_depth = rng.integers(0, 256, size=(13, 29, 3), dtype=np.uint8), 8
    data = _png_bytes(samples, bit_depth, filter_type)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), samples)


def test_bool_and_uint8_inputs(tmp_path: Path, rng: np.random.Generator) -> None:
    mask = rng.random((9, 11)) > 0.5
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(mask))))
    assert decoded.dtype == np.uint8 and set(np.unique(decoded)) == {0, 255}
    np.testing.assert_array_equal(decoded == 255, mask)
    grey = rng.integers(0, 256, size=(9, 11), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(grey)))), grey)
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(encode_png(grey, 16)))), grey.astype(np.uint16) * 257
    )
    rgb = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(rgb)))), rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(rgb / 255.0)))), rgb)


@pytest.mark.parametrize(
    "pixels,bit_depth,match",
    [
        (np.array([[0.1, np.nan]]), 8, "non-finite"),
        (np.array([[0.1, np.inf]]), 16, "non-finite"),
        (np.zeros((2, 2)), 12, "bit_depth"),
        (np.zeros((2, 2, 3)), 16, "8-bit only"),
        (np.zeros((2, 2, 4)), 8, "shape"),
        (np.zeros((0, 3)), 8, "empty"),
        (np.zeros((2, 2), dtype=np.int32), 8, "dtype"),
    ],
)
def test_writer_rejects_bad_input(tmp_path: Path, pixels: np.ndarray, bit_depth: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_png(tmp_path / "bad.png", pixels, bit_depth=bit_depth)
    assert os.listdir(tmp_path) == []  # nothing half-written


def test_write_png_is_atomic_and_overwrites(tmp_path: Path, rng: np.random.Generator) -> None:
    dest = tmp_path / "sub" / "img.png"
    write_png(dest, np.zeros((4, 4)))
    write_png(dest, rng.random((4, 4)))
    assert os.listdir(dest.parent) == ["img.png"]
    assert png_chunks(dest.read_bytes()) == [b"IHDR", b"IDAT", b"IEND"]


def test_encode_speed_256_16bit(rng: np.random.Generator) -> None:
    pixels = smooth_image(rng, (256, 256))
    encode_png(pixels, 16)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        encode_png(pixels, 16)
        times.append(time.perf_counter() - start)
    # ~5-10 ms on a busy 2-core box, dominated by zlib; a per-pixel Python loop would take seconds.
    assert np.median(times) < 0.05


# ----------------------------------------------------------------------------------------------
# Masks and sizes
# ----------------------------------------------------------------------------------------------


def test_read_mask_grey(tmp_path: Path) -> None:
    samples = np.array([[0, 1, 255], [0, 0, 7]], dtype=np.uint8)
    path = tmp_path / "mask.png"
    Image.fromarray(samples).save(path)
    mask = read_mask(path)
    assert mask.dtype == np.bool_ and mask.shape == (2, 3, 1)
    np.testing.assert_array_equal(mask[..., 0], samples != 0)


def test_read_mask_16bit_keeps_small_labels(tmp_path: Path) -> None:
    samples = np.array([[0, 1], [256, 0]], dtype=np.uint16)
    path = tmp_path / "mask16.png"
    path.write_bytes(png_by_hand(samples, 16, 0))
    np.testing.assert_array_equal(read_mask(path)[..., 0], samples != 0)


def test_read_mask_rgb_and_rgba(tmp_path: Path, rng: np.random.Generator) -> None:
    rgb = (rng.random((6, 5, 3)) > 0.5).astype(np.uint8) * rng.integers(
        1, 256, size=(6, 5, 3), dtype=np.uint8
    )
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), rgb != 0)
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    mask = read_mask(tmp_path / "rgba.png")
    assert mask.shape == (6, 5, 3)
    np.testing.assert_array_equal(mask, rgb != 0)


def test_read_mask_palette(tmp_path: Path, rng: np.random.Generator) -> None:
    index = rng.integers(0, 3, size=(5, 8), dtype=np.uint8)
    grey_palette = [0, 0, 0, 128, 128, 128, 255, 255, 255]
    colour_palette = [0, 0, 0, 255, 0, 0, 0, 0, 255]
    for name, palette in (("grey", grey_palette), ("colour", colour_palette)):
        im = Image.fromarray(index, mode="L").convert("P")
        im.putpalette(palette + [0] * (768 - len(palette)))
        im.putdata(index.ravel().tolist())
        im.save(tmp_path / f"{name}.png")
    grey = read_mask(tmp_path / "grey.png")
    assert grey.shape == (5, 8, 1)
    np.testing.assert_array_equal(grey[..., 0], index != 0)
    colour = read_mask(tmp_path / "colour.png")
    expected = np.array(colour_palette).reshape(3, 3)[index] != 0
    np.testing.assert_array_equal(colour, expected)


def test_read_mask_dicom_and_jpeg_warning(tmp_path: Path) -> None:
    stored = np.array([[0, 3], [0, 4095]], dtype=np.uint16)
    write_dicom(tmp_path / "mask.dcm", stored)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.dcm")[..., 0], stored != 0)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mask.jpg")
    with pytest.warns(UserWarning, match="lossy"):
        assert read_mask(tmp_path / "mask.jpg").shape == (8, 8, 1)


def test_image_size_reads_headers_only(tmp_path: Path, rng: np.random.Generator) -> None:
    Image.fromarray(np.zeros((30, 40), np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((31, 41, 3), np.uint8)).save(tmp_path / "b.jpg")
    Image.fromarray(np.zeros((32, 42), np.float32)).save(tmp_path / "c.tif")
    write_dicom(tmp_path / "d.dcm", np.zeros((33, 43), np.uint16))
    assert image_size(tmp_path / "a.png") == (30, 40)
    assert image_size(tmp_path / "b.jpg") == (31, 41)
    assert image_size(tmp_path / "c.tif") == (32, 42)
    assert image_size(tmp_path / "d.dcm") == (33, 43)
    # a PNG whose pixel data is cut off still has a readable size: nothing was decoded
    cut = _corrupt("truncated_png", tmp_path, rng)
    assert image_size(cut) == (64, 64)
    with pytest.raises(ImageReadError):
        read_image(cut)


# ----------------------------------------------------------------------------------------------
# Data classes
# ----------------------------------------------------------------------------------------------


def test_xray_image_validates() -> None:
    meta = ImageMeta("png", 8, "MONOCHROME2", (2, 2))
    XrayImage(np.zeros((2, 2), np.float32), meta)
    with pytest.raises(ValueError, match="float32"):
        XrayImage(np.zeros((2, 2)), meta)
    with pytest.raises(ValueError, match="shape"):
        XrayImage(np.zeros((2, 3), np.float32), meta)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        XrayImage(np.full((2, 2), 1.5, np.float32), meta)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        XrayImage(np.full((2, 2), np.nan, np.float32), meta)
    with pytest.raises(ValueError, match="source_format"):
        ImageMeta("bmp", 8, "MONOCHROME2", (2, 2))
