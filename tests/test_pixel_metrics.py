"""Pixel metrics against independent references (scikit-image, pytorch-msssim, scikit-learn).

Tolerances were measured on these fixtures first and set with a 2-3× margin; each test states why a
difference exists at all.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pytorch_msssim
import skimage.metrics as skm
import sklearn.metrics as sklearn_metrics
import torch
from scipy.ndimage import gaussian_filter

from audit.metrics import catalogue
from audit.metrics.functional import pixel as fp
from audit.metrics.pixel import PIXEL_KERNELS, score_pixels

FIVE = ("mse", "mae", "psnr", "ssim", "ms_ssim")
ALL = tuple(PIXEL_KERNELS)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Run single-threaded: on a loaded 2-core machine (pytest-xdist, other jobs), torch's spinning
    OpenMP threads make these small workloads several times slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _structured(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Smooth 'anatomy' plus a few hard-edged discs, each image scaled to exactly [0, 1]."""
    yy, xx = np.mgrid[:h, :w]
    out = np.empty((n, h, w))
    for i in range(n):
        x = gaussian_filter(rng.random((h, w)), rng.uniform(2, 8))
        for _ in range(3):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, h / 3)
            x = x + 0.3 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
        out[i] = (x - x.min()) / np.ptp(x)
    return out.astype(np.float32)


def _damaged(rng: np.random.Generator, ref: np.ndarray) -> np.ndarray:
    """Blur by a random sigma plus random-strength noise; the first pair is left identical."""
    out = np.empty_like(ref)
    for i, x in enumerate(ref):
        y = gaussian_filter(x.astype(np.float64), rng.uniform(0.5, 3)) + rng.normal(
            0, rng.uniform(0, 0.1), x.shape
        )
        out[i] = np.clip(y, 0, 1)
    out[0] = ref[0]
    return out


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x)[:, None]


@pytest.fixture(scope="module")
def pairs_256() -> tuple[np.ndarray, np.ndarray]:
    """(generated, reference), 5 pairs of 256×256; pair 0 is identical."""
    rng = np.random.default_rng(20240601)
    ref = _structured(rng, 5, 256, 256)
    return _damaged(rng, ref), ref


@pytest.fixture(scope="module")
def pairs_odd() -> tuple[np.ndarray, np.ndarray]:
    """(generated, reference), 3 non-square pairs of 200×300, odd sizes at the coarser MS-SSIM scales."""
    rng = np.random.default_rng(7)
    ref = _structured(rng, 3, 200, 300)
    return _damaged(rng, ref), ref


# --- against scikit-image, per image ------------------------------------------------------------


@pytest.mark.parametrize("pixel_range", [1.0, 255.0])
def test_mse_mae_psnr_match_skimage_and_numpy(pairs_256, pixel_range):
    gen, ref = pairs_256
    g64, r64 = gen.astype(np.float64) * pixel_range, ref.astype(np.float64) * pixel_range
    mse = fp.mse(_t(gen), _t(ref), pixel_range).numpy()
    mae = fp.mae(_t(gen), _t(ref), pixel_range).numpy()
    psnr = fp.psnr(_t(gen), _t(ref), pixel_range).numpy()
    assert mse.dtype == mae.dtype == psnr.dtype == np.float64
    assert mse.shape == mae.shape == psnr.shape == (5,)
    want_mse = np.array([skm.mean_squared_error(r, g) for g, r in zip(g64, r64, strict=True)])
    want_mae = np.abs(g64 - r64).mean(axis=(1, 2))
    # float32 accumulation vs float64: measured ≤ 1.4e-7 relative.
    np.testing.assert_allclose(mse, want_mse, rtol=1e-6, atol=0)
    np.testing.assert_allclose(mae, want_mae, rtol=1e-6, atol=0)
    assert mse[0] == 0 and mae[0] == 0
    # Identical images: +inf, as skimage (which also warns about division by zero).
    assert psnr[0] == np.inf
    want_psnr = [
        skm.peak_signal_noise_ratio(r, g, data_range=pixel_range)
        for g, r in zip(g64[1:], r64[1:], strict=True)
    ]
    np.testing.assert_allclose(psnr[1:], want_psnr, rtol=0, atol=1e-5)  # measured ≤ 2.6e-6 dB


def _skimage_ssim_reflect_padded(g: np.ndarray, r: np.ndarray, data_range: float) -> float:
    """skimage SSIM with torchmetrics' border convention.

    torchmetrics reflect-pads by 5 px (torch "reflect" = numpy "reflect", edge pixel not repeated) and
    averages the SSIM map over all H×W pixels; skimage averages only its interior. Computing skimage's
    full map on the padded image and averaging its central H×W reproduces torchmetrics' definition
    with skimage's independent arithmetic.
    """
    gp, rp = np.pad(g, 5, mode="reflect"), np.pad(r, 5, mode="reflect")
    _, full = skm.structural_similarity(
        gp,
        rp,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
        full=True,
    )
    return float(full[5:-5, 5:-5].mean())


@pytest.mark.parametrize("pixel_range", [1.0, 255.0])
def test_ssim_matches_skimage(pairs_256, pixel_range):
    gen, ref = pairs_256
    g64, r64 = gen.astype(np.float64) * pixel_range, ref.astype(np.float64) * pixel_range
    got = fp.ssim(_t(gen), _t(ref), pixel_range).numpy()
    assert got.dtype == np.float64 and got.shape == (5,)
    assert got[0] == pytest.approx(1.0, abs=1e-6)
    # Same definition, float32 (torchmetrics, E[x²]-µ² cancellation) vs float64: measured ≤ 1e-5.
    same_border = [_skimage_ssim_reflect_padded(g, r, pixel_range) for g, r in zip(g64, r64, strict=True)]
    np.testing.assert_allclose(got, same_border, rtol=0, atol=3e-5)
    # Plain skimage (interior-only mean) differs only by the 5-px border: 7.7% of a 256² image; on
    # these fixtures measured ≤ 2.6e-3, larger for smaller images (1.8e-2 at 64²).
    plain = [
        skm.structural_similarity(
            g, r, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=pixel_range
        )
        for g, r in zip(g64, r64, strict=True)
    ]
    np.testing.assert_allclose(got, plain, rtol=0, atol=6e-3)


@pytest.mark.parametrize("fixture", ["pairs_256", "pairs_odd"])
@pytest.mark.parametrize("pixel_range", [1.0, 255.0])
def test_ms_ssim_matches_pytorch_msssim(request, fixture, pixel_range):
    gen, ref = request.getfixturevalue(fixture)
    tg, tr = _t(gen), _t(ref)
    got = fp.ms_ssim(tg, tr, pixel_range).numpy()
    want = (
        pytorch_msssim.ms_ssim(
            tg * pixel_range,
            tr * pixel_range,
            data_range=pixel_range,
            win_size=11,
            win_sigma=1.5,
            size_average=False,
        )
        .double()
        .numpy()
    )
    # The contrast terms of scales 1-4 are computed on the same valid region by both. They differ in
    # (a) the coarsest scale's SSIM term: torchmetrics averages the reflect-padded map (at 256² the
    # coarsest image is 16×16, mostly border), pytorch-msssim only the valid 6×6 centre; it enters with
    # weight 0.1333; and (b) odd sizes between scales: torchmetrics' avg_pool2d drops the last
    # row/column, pytorch-msssim zero-pads it. Measured ≤ 6.4e-4 at 256² (a only) and ≤ 1.6e-3 at
    # 200×300 (a and b).
    atol = 2e-3 if fixture == "pairs_256" else 5e-3
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_identical_images_score_perfectly(pairs_256):
    _, ref = pairs_256
    x = _t(ref)
    got = score_pixels(x, x, ALL)
    assert np.all(got["mse"] == 0) and np.all(got["mae"] == 0)
    assert np.all(got["psnr"] == np.inf)
    np.testing.assert_allclose(got["ssim"], 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["ms_ssim"], 1.0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fp.ms_ssim(x, x).numpy(), 1.0, rtol=0, atol=1e-6)
    for key in ("overlap_precision", "overlap_recall", "overlap_f1"):
        assert np.all(got[key] == 1.0)


# --- the fast path used by score_pixels equals torchmetrics -------------------------------------


@pytest.mark.parametrize("fixture", ["pairs_256", "pairs_odd"])
@pytest.mark.parametrize("pixel_range", [1.0, 255.0])
def test_fused_ssim_ms_ssim_match_torchmetrics(request, fixture, pixel_range):
    gen, ref = request.getfixturevalue(fixture)
    tg, tr = _t(gen), _t(ref)
    both = fp.ssim_and_ms_ssim(tg, tr, pixel_range)
    want_ssim = fp.ssim(tg, tr, pixel_range)
    want_ms = fp.ms_ssim(tg, tr, pixel_range)
    # Same float32 operations; only the order of the final mean differs (measured ≤ 3e-7).
    torch.testing.assert_close(both["ssim"], want_ssim, rtol=0, atol=1e-6)
    torch.testing.assert_close(both["ms_ssim"], want_ms, rtol=0, atol=1e-6)
    only_ssim = fp.ssim_and_ms_ssim(tg, tr, pixel_range, with_ms_ssim=False)
    only_ms = fp.ssim_and_ms_ssim(tg, tr, pixel_range, with_ssim=False)
    assert set(only_ssim) == {"ssim"} and set(only_ms) == {"ms_ssim"}
    torch.testing.assert_close(only_ssim["ssim"], want_ssim, rtol=0, atol=1e-6)
    torch.testing.assert_close(only_ms["ms_ssim"], want_ms, rtol=0, atol=1e-6)


def test_fused_chunking_does_not_change_values(pairs_256):
    gen, ref = pairs_256
    whole = fp.ssim_and_ms_ssim(_t(gen), _t(ref), chunk_size=len(gen))
    uneven = fp.ssim_and_ms_ssim(_t(gen), _t(ref), chunk_size=2)  # chunks of 2, 2, 1
    for key in ("ssim", "ms_ssim"):
        torch.testing.assert_close(uneven[key], whole[key], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        fp.ssim_and_ms_ssim(_t(gen), _t(ref), chunk_size=0)


def test_fused_ssim_matches_torchmetrics_on_small_odd_images():
    rng = np.random.default_rng(3)
    ref = _structured(rng, 4, 23, 41)
    gen = _damaged(rng, ref)
    got = fp.ssim_and_ms_ssim(_t(gen), _t(ref), with_ms_ssim=False)["ssim"]
    torch.testing.assert_close(got, fp.ssim(_t(gen), _t(ref)), rtol=0, atol=1e-6)


# --- image size limits ---------------------------------------------------------------------------


def test_ms_ssim_minimum_size_is_what_torchmetrics_accepts():
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim

    m = fp.MS_SSIM_MIN_SIZE
    assert m == 176
    x = torch.rand(1, 1, m, m, generator=torch.Generator().manual_seed(0))
    tm_ms_ssim(x, x * 0.9, data_range=1.0)  # accepted
    with pytest.raises(ValueError):
        tm_ms_ssim(x[..., : m - 1, :], x[..., : m - 1, :] * 0.9, data_range=1.0)
    with pytest.raises(ValueError):
        tm_ms_ssim(x[..., : m - 1], x[..., : m - 1] * 0.9, data_range=1.0)


@pytest.mark.parametrize("shape", [(175, 300), (300, 175), (64, 64)])
def test_ms_ssim_too_small_names_minimum(shape):
    h, w = shape
    x = torch.full((2, 1, h, w), 0.5)
    expected = (
        f"MS-SSIM with 5 scales and an 11-px gaussian window needs images of at least 176×176 px; got {h}×{w}. "
        "Resize, or drop ms_ssim from [metrics].pixel"
    )
    for call in (
        lambda: fp.ms_ssim(x, x),
        lambda: fp.ssim_and_ms_ssim(x, x),
        lambda: score_pixels(x, x, ["mse", "ms_ssim"]),
    ):
        with pytest.raises(fp.ImageTooSmallError) as err:
            call()
        assert str(err.value) == expected
        assert isinstance(err.value, ValueError)


def test_ssim_works_on_small_images_and_rejects_tiny_ones():
    rng = np.random.default_rng(11)
    ref = _structured(rng, 3, 32, 32)
    gen = _damaged(rng, ref)
    got = score_pixels(gen, ref, ["ssim", "psnr"])
    assert got["ssim"].shape == (3,) and np.all(np.isfinite(got["ssim"]))
    want = [_skimage_ssim_reflect_padded(g, r, 1.0) for g, r in zip(gen.astype(np.float64), ref, strict=True)]
    np.testing.assert_allclose(got["ssim"], want, rtol=0, atol=3e-5)
    six = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    assert np.all(np.isfinite(score_pixels(six, six.flip(-1), ["ssim"])["ssim"]))
    five = six[..., :5, :5]
    with pytest.raises(fp.ImageTooSmallError, match="at least 6×6 px; got 5×5"):
        score_pixels(five, five, ["ssim"])
    # MSE needs no window: tiny images are fine without ssim.
    assert score_pixels(five, five, ["mse"])["mse"].tolist() == [0.0, 0.0]


# --- thresholded overlap -------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_overlap_matches_sklearn(pairs_256, threshold):
    gen, ref = pairs_256
    gen = gen.copy()
    gen[1, :10] = threshold  # exactly at the threshold: background (foreground is > threshold)
    got = score_pixels(
        gen, ref, ["overlap_precision", "overlap_recall", "overlap_f1"], overlap_threshold=threshold
    )
    for i in range(len(gen)):
        y_pred, y_true = (gen[i] > threshold).ravel(), (ref[i] > threshold).ravel()
        assert got["overlap_precision"][i] == pytest.approx(
            sklearn_metrics.precision_score(y_true, y_pred), rel=1e-12
        )
        assert got["overlap_recall"][i] == pytest.approx(
            sklearn_metrics.recall_score(y_true, y_pred), rel=1e-12
        )
        assert got["overlap_f1"][i] == pytest.approx(sklearn_metrics.f1_score(y_true, y_pred), rel=1e-12)


def test_overlap_undefined_ratios_are_nan_like_sklearn_zero_division_nan():
    empty = np.zeros((16, 16), np.float32)
    some = empty.copy()
    some[4:8, 4:8] = 0.9
    gen = np.stack([empty, empty, some])
    ref = np.stack([empty, some, empty])
    got = fp.overlap(_t(gen), _t(ref), threshold=0.5)
    for i in range(3):
        y_pred, y_true = gen[i].ravel() > 0.5, ref[i].ravel() > 0.5
        for key, fn in (
            ("overlap_precision", sklearn_metrics.precision_score),
            ("overlap_recall", sklearn_metrics.recall_score),
            ("overlap_f1", sklearn_metrics.f1_score),
        ):
            want = fn(y_true, y_pred, zero_division=np.nan)
            np.testing.assert_equal(got[key][i].item(), want)
    # Spelled out: both empty -> all NaN; empty generated -> precision NaN, recall 0, F1 0.
    assert np.isnan(got["overlap_f1"][0].item()) and got["overlap_f1"][1].item() == 0.0
    assert np.isnan(got["overlap_precision"][1].item()) and got["overlap_recall"][1].item() == 0.0
    assert np.isnan(got["overlap_recall"][2].item()) and got["overlap_precision"][2].item() == 0.0


# --- batching, ranking, invariance -------------------------------------------------------------


def test_batch_scores_equal_single_pair_scores():
    rng = np.random.default_rng(5)
    ref = _structured(rng, 8, 192, 192)
    gen = _damaged(rng, ref)
    batch = score_pixels(gen, ref, ALL)
    for name in ALL:
        assert batch[name].dtype == np.float64 and batch[name].shape == (8,)
    for i in range(8):
        alone = score_pixels(gen[i : i + 1], ref[i : i + 1], ALL)
        for name in ALL:
            np.testing.assert_allclose(batch[name][i], alone[name][0], rtol=1e-6, atol=1e-6, err_msg=name)
    # Different pairs must give different values: a batch mean would make them all equal.
    assert len(np.unique(batch["ssim"])) == 8


def test_batch_scores_match_the_torchmetrics_kernels(pairs_256):
    gen, ref = pairs_256
    got = score_pixels(gen, ref, FIVE, pixel_range=255.0)
    tg, tr = _t(gen), _t(ref)
    for name, fn in (
        ("mse", fp.mse),
        ("mae", fp.mae),
        ("psnr", fp.psnr),
        ("ssim", fp.ssim),
        ("ms_ssim", fp.ms_ssim),
    ):
        np.testing.assert_allclose(got[name], fn(tg, tr, 255.0).numpy(), rtol=1e-6, atol=1e-6, err_msg=name)


def test_less_blur_ranks_better():
    rng = np.random.default_rng(9)
    ref = _structured(rng, 3, 192, 192)
    blur1 = np.stack([gaussian_filter(x, 1.0) for x in ref])
    blur3 = np.stack([gaussian_filter(x, 3.0) for x in ref])
    s1, s3 = score_pixels(blur1, ref, FIVE), score_pixels(blur3, ref, FIVE)
    for name in ("ssim", "psnr", "ms_ssim"):
        assert np.all(s1[name] > s3[name]), name
        assert catalogue.spec(name).higher_is_better
    for name in ("mse", "mae"):
        assert np.all(s1[name] < s3[name]), name
        assert not catalogue.spec(name).higher_is_better


def test_pixel_range_invariance_and_scaling(pairs_256):
    gen, ref = pairs_256
    gen, ref = gen[1:], ref[1:]  # PSNR of the identical pair is inf either way
    one = score_pixels(gen, ref, FIVE, pixel_range=1.0)
    byte = score_pixels(gen, ref, FIVE, pixel_range=255.0)
    for name in ("psnr", "ssim", "ms_ssim"):
        np.testing.assert_allclose(byte[name], one[name], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(byte["mse"], one["mse"] * 255.0**2, rtol=1e-5)
    np.testing.assert_allclose(byte["mae"], one["mae"] * 255.0, rtol=1e-5)


# --- input handling ------------------------------------------------------------------------------


def test_accepts_numpy_and_tensors_in_both_layouts(pairs_256):
    gen, ref = pairs_256
    a = score_pixels(gen, ref, ["mse", "ssim"])
    b = score_pixels(torch.from_numpy(gen)[:, None], torch.from_numpy(ref)[:, None], ["ssim", "mse"])
    c = score_pixels(gen.astype(np.float64), ref.astype(np.float64), ["mse", "ssim"])
    assert list(a) == ["mse", "ssim"] and list(b) == ["ssim", "mse"]
    for name in ("mse", "ssim"):
        np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_array_equal(a[name], c[name])
    # Read-only (memory-mapped) and big-endian arrays are accepted as they are, without warnings.
    frozen = ref.astype(">f4")
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = score_pixels(gen, frozen, ["mse", "ssim"])
    for name in ("mse", "ssim"):
        np.testing.assert_array_equal(a[name], d[name])
    empty = score_pixels(gen[:0], ref[:0], FIVE)
    assert all(v.shape == (0,) and v.dtype == np.float64 for v in empty.values())


def _bad(x: np.ndarray, i: int, value: float) -> np.ndarray:
    y = x.copy()
    y[i, 3, 3] = value
    return y


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda g, r: (g[:, :, :-1], r), "differ in shape"),
        (lambda g, r: (g[:3], r), "differ in shape"),
        (lambda g, r: (_bad(g, 2, np.nan), r), r"preds .*contains NaN .*\[2\]"),
        (lambda g, r: (g, _bad(r, 1, np.nan)), r"target .*contains NaN .*\[1\]"),
        (lambda g, r: (_bad(g, 0, np.inf), r), "contains ±inf"),
        (lambda g, r: (_bad(g, 0, 1.5), r), r"outside \[0, 1\]"),
        (lambda g, r: (g, _bad(r, 0, -0.1)), r"outside \[0, 1\]"),
        (lambda g, r: ((g * 255).astype(np.uint8), r), "floats in"),
        (lambda g, r: (np.stack([g, g], axis=1), np.stack([r, r], axis=1)), "grey images"),
    ],
)
def test_bad_input_raises_value_error(pairs_256, make, message):
    gen, ref = pairs_256
    p, t = make(gen, ref)
    with pytest.raises(ValueError, match=message):
        score_pixels(p, t, FIVE)


def test_bad_arguments_raise_value_error(pairs_256):
    gen, ref = pairs_256
    with pytest.raises(ValueError, match="unknown pixel metric"):
        score_pixels(gen, ref, ["mse", "fid"])
    with pytest.raises(ValueError, match="pixel_range must be > 0"):
        score_pixels(gen, ref, ["mse"], pixel_range=0)
    with pytest.raises(ValueError, match="overlap_threshold"):
        score_pixels(gen, ref, ["overlap_f1"], overlap_threshold=1.0)
    with pytest.raises(ValueError, match="same shape"):
        fp.mse(_t(gen), _t(ref)[:2])


# --- metadata ------------------------------------------------------------------------------------


def test_every_catalogued_pixel_metric_has_a_kernel_and_a_config_name():
    from audit.config import PIXEL_METRICS as CONFIG_PIXEL_METRICS

    assert set(PIXEL_KERNELS) == set(catalogue.names(family="pixel")) == set(CONFIG_PIXEL_METRICS)
    # The torch-free catalogue states the kernel's size limit in ms_ssim's description.
    assert catalogue.MS_SSIM_MIN_SIZE == fp.MS_SSIM_MIN_SIZE
    assert f"{fp.MS_SSIM_MIN_SIZE}×{fp.MS_SSIM_MIN_SIZE} px" in catalogue.spec("ms_ssim").description
    assert catalogue.spec("mse").unit_at(255) == "intensity² (range 255)"
    assert catalogue.spec("mae").unit_at(1.0) == "intensity (range 1)"
    assert catalogue.spec("psnr").unit_at(255) == "dB"
    assert catalogue.spec("ssim").unit_at(255) == catalogue.spec("overlap_f1").unit_at(1) == ""
    with pytest.raises(ValueError, match="unknown pixel metric"):
        score_pixels(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), ["fid"])
