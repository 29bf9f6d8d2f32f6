"""Privacy/memorisation kernels (issue 19) against independent references.

References: ``scipy.spatial.distance.cdist`` (cosine; euclidean / √d) with a stable argsort for exact
neighbours, scikit-learn's ``NearestNeighbors(algorithm="brute")`` (also for ``exclude_self``: its
``kneighbors()`` without X skips each point itself), Pillow's BILINEAR resize for the pixel vectors,
``np.quantile``'s published linear formula written out, a per-sample loop of Alaa et al.'s
authenticity definition, and ``sklearn.metrics.roc_auc_score`` / ``scipy.stats.mannwhitneyu`` for the
AUC. Tolerances: distances agree to 1e-12 (both sides are float64; measured ≤ 1e-15).

The planted-copy tests say what each space is expected to catch, on synthetic images whose "anatomy"
is a smooth random field plus a sharp stripe pattern (ribs) at a random angle, and a deterministic
"feature extractor" that average-pools 8×8 blocks (a blurred downsample, so it ignores stripe phase):

* exact copies and copies + N(0, 0.02) noise: caught in both spaces (pixel distance ≈ the noise RMS);
* 2-px shifts: caught in feature space (pooling hides the shift); in pixel space only when the stripes
  happen to run along the shift, so not reliably;
* horizontal flips: caught in pixel space, which searches each sample as given and mirrored
  (mirror_pixel_vectors + nearest_of_both); the pooled features are not flip-invariant and catch them
  at the chance rate only.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial.distance import cdist
from scipy.stats import binomtest, mannwhitneyu
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from audit.metrics.functional import privacy
from audit.metrics.functional.privacy import (
    Neighbours,
    authenticity,
    calibration_threshold,
    flag_memorised,
    mann_whitney_auc,
    mirror_pixel_vectors,
    nearest_neighbours,
    nearest_of_both,
    pixel_vectors,
    reid_scores,
)


def _features(rng: np.random.Generator, n: int, d: int, dtype=np.float64) -> np.ndarray:
    """Correlated, non-negative 'network features' (ReLU of a mixed Gaussian)."""
    mix = np.random.default_rng(99).standard_normal((d, d)) / math.sqrt(d)
    return np.maximum(rng.standard_normal((n, d)) @ mix + 0.3, 0.0).astype(dtype)


def _reference_knn(query: np.ndarray, reference: np.ndarray, metric: str, k: int, exclude_self: bool = False):
    """Exact neighbours from cdist in float64: (distances, indices), ties to the lower index."""
    q, r = query.astype(np.float64), reference.astype(np.float64)
    if metric == "cosine":
        dist = cdist(q, r, "cosine")
    else:
        dist = cdist(q, r, "euclidean") / math.sqrt(q.shape[1])
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    idx = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, idx, axis=1), idx


def _uneven_blocks(x: np.ndarray, sizes=(1, 37, 200, 3, 511)):
    """A generator of reference blocks of uneven sizes (cycled), as a feature cache would stream them."""
    start, i = 0, 0
    while start < len(x):
        size = sizes[i % len(sizes)]
        yield x[start : start + size]
        start, i = start + size, i + 1


# ----------------------------------------------------------------------------------------- k-NN


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_distances_match_cdist(metric, dtype):
    rng = np.random.default_rng(1)
    train, gen = _features(rng, 900, 48, dtype), _features(rng, 300, 48, dtype)
    nb = nearest_neighbours(gen, train, metric=metric, k=4, block_rows=64)
    dist, idx = _reference_knn(gen, train, metric, 4)
    assert nb.distances.dtype == np.float64 and nb.indices.dtype == np.int64
    assert nb.distances.shape == nb.indices.shape == (300, 4)
    np.testing.assert_array_equal(nb.indices, idx)
    np.testing.assert_allclose(nb.distances, dist, rtol=0, atol=1e-12)
    assert (np.diff(nb.distances, axis=1) >= 0).all()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("k", [1, 7])
def test_streamed_blocks_match_sklearn_brute(metric, k):
    rng = np.random.default_rng(2)
    train, gen = _features(rng, 1500, 32, np.float32), _features(rng, 250, 32, np.float32)
    nb = nearest_neighbours(gen, _uneven_blocks(train), metric=metric, k=k, block_rows=100)
    sk = NearestNeighbors(
        n_neighbors=k, algorithm="brute", metric="cosine" if metric == "cosine" else "euclidean"
    )
    dist, idx = sk.fit(train.astype(np.float64)).kneighbors(gen.astype(np.float64))
    if metric == "l2":
        dist = dist / math.sqrt(32)
    np.testing.assert_array_equal(nb.indices, idx)
    np.testing.assert_allclose(nb.distances, dist, rtol=0, atol=1e-9)  # sklearn's GEMM form: ~1e-15


def test_tiny_budget_reblocks_the_stream(monkeypatch):
    """With a budget of a few hundred elements, blocks are cut up and small ones gathered (also from a
    reader that reuses its array, and across dtypes): same answer."""
    monkeypatch.setitem(privacy._BLOCK_ELEMENTS, "cpu", 2**9)
    rng = np.random.default_rng(3)
    train = _features(rng, 700, 16, np.float32).astype(np.float64)  # its float32 copy is exact
    gen = _features(rng, 90, 16)
    dist, idx = _reference_knn(gen, train, "l2", 3)

    def reused(x: np.ndarray, size: int = 45):
        """A reader that fills one array for every block it yields (then overwrites it)."""
        out = np.empty((size, x.shape[1]), x.dtype)
        for s in range(0, len(x), size):
            out[: len(x[s : s + size])] = x[s : s + size]
            yield out[: len(x[s : s + size])]
            out[:] = np.nan

    for stream in (_uneven_blocks(train), reused(train), [train[:12].astype(np.float32), train[12:]]):
        nb = nearest_neighbours(gen, stream, metric="l2", k=3)
        np.testing.assert_array_equal(nb.indices, idx)
        np.testing.assert_allclose(nb.distances, dist, rtol=0, atol=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exclude_self_matches_sklearn(metric):
    rng = np.random.default_rng(4)
    train = _features(rng, 800, 24)
    nb = nearest_neighbours(
        train, _uneven_blocks(train), metric=metric, k=3, exclude_self=True, block_rows=128
    )
    sk = NearestNeighbors(
        n_neighbors=3, algorithm="brute", metric="cosine" if metric == "cosine" else "euclidean"
    )
    dist, idx = sk.fit(train).kneighbors()  # no X: each point is not its own neighbour
    np.testing.assert_array_equal(nb.indices, idx)
    np.testing.assert_allclose(nb.distances, dist / (1.0 if metric == "cosine" else math.sqrt(24)), atol=1e-9)
    assert (nb.indices != np.arange(800)[:, None]).all()


def test_exclude_self_keeps_duplicates_and_ties_go_to_the_lower_index():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((50, 8))
    train = np.concatenate([base, base[[7, 7, 3]]])  # rows 50, 51 copy row 7; row 52 copies row 3
    nb = nearest_neighbours(train, train, metric="l2", k=2, exclude_self=True, block_rows=16)
    # Row 7's copies are at distance exactly 0, listed by index; row 50 sees 7 then 51.
    assert nb.indices[7].tolist() == [50, 51] and nb.distances[7].tolist() == [0.0, 0.0]
    assert nb.indices[50].tolist() == [7, 51] and nb.indices[51].tolist() == [7, 50]
    assert nb.indices[3, 0] == 52 and nb.indices[52, 0] == 3 and nb.distances[52, 0] == 0.0
    # Without exclusion, a query equal to several reference rows lists them all by index.
    q = nearest_neighbours(base[[7]], train, metric="cosine", k=3, block_rows=1)
    assert q.indices[0].tolist() == [7, 50, 51] and q.distances[0].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_near_ties_below_float32_resolution_are_ranked_exactly(metric):
    """Reference points at distances 1 + j·1e-9 from the query, shuffled: float32 sees one distance for
    all of them, so this needs the wide candidate pass and float64 re-scoring to rank them."""
    rng = np.random.default_rng(6)
    d, m = 64, 300
    centre = rng.standard_normal(d) * 5
    directions = rng.standard_normal((m, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = 1.0 + rng.permutation(m) * 1e-9
    if metric == "l2":
        reference = centre + radii[:, None] * directions
    else:  # same angle from the centre up to 1e-9: points on a cone around the centre's direction
        unit = centre / np.linalg.norm(centre)
        ortho = directions - (directions @ unit)[:, None] * unit
        ortho /= np.linalg.norm(ortho, axis=1, keepdims=True)
        angle = 0.3 * radii
        reference = (np.cos(angle)[:, None] * unit + np.sin(angle)[:, None] * ortho) * rng.uniform(
            1, 3, (m, 1)
        )
    far = centre + 50 * rng.standard_normal((200, d))
    reference = np.concatenate([far[:100], reference, far[100:]])
    nb = nearest_neighbours(centre[None, :], _uneven_blocks(reference), metric=metric, k=10)
    dist, idx = _reference_knn(centre[None, :], reference, metric, 10)
    np.testing.assert_array_equal(nb.indices, idx)
    np.testing.assert_allclose(nb.distances, dist, rtol=1e-12, atol=0)


def test_torch_gemm_path_and_a_looser_bound_stay_exact(monkeypatch):
    """The GPU's code path (torch's GEMM instead of numpy's), run on the CPU; with a TF32/bfloat16-sized
    error bound the candidate sets only widen, and the answer is still the exact one."""
    monkeypatch.setattr(privacy, "_numpy_gemm", lambda dev: False)
    rng = np.random.default_rng(14)
    train = _features(rng, 600, 20, np.float32)
    for roundoff in (2.0**-24, 2.0**-8):
        monkeypatch.setattr(privacy, "_input_roundoff", lambda roundoff=roundoff: roundoff)
        for metric in ("cosine", "l2"):
            nb = nearest_neighbours(
                train, _uneven_blocks(train), metric=metric, k=3, exclude_self=True, block_rows=50
            )
            dist, idx = _reference_knn(train, train, metric, 3, exclude_self=True)
            np.testing.assert_array_equal(nb.indices, idx)
            np.testing.assert_allclose(nb.distances, dist, rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(15)
    train, gen = _features(rng, 3000, 64, np.float32), _features(rng, 700, 64, np.float32)
    for metric in ("cosine", "l2"):
        cpu = nearest_neighbours(gen, _uneven_blocks(train), metric=metric, k=5)
        gpu = nearest_neighbours(gen, _uneven_blocks(train), metric=metric, k=5, device="cuda")
        np.testing.assert_array_equal(gpu.indices, cpu.indices)
        np.testing.assert_allclose(gpu.distances, cpu.distances, rtol=0, atol=1e-12)


def test_read_only_inputs_need_no_copy_and_raise_no_warning():
    rng = np.random.default_rng(16)
    train = _features(rng, 100, 8, np.float32)
    train.setflags(write=False)  # as a memory-mapped feature cache or an audit.images array is
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nb = nearest_neighbours(train[:10], train, metric="l2", k=1)
    np.testing.assert_array_equal(nb.indices[:, 0], np.arange(10))


def test_neighbours_is_frozen():
    nb = nearest_neighbours(np.eye(3), np.eye(3), metric="l2")
    assert isinstance(nb, Neighbours)
    with pytest.raises(dataclasses.FrozenInstanceError):
        nb.indices = np.zeros((3, 1), np.int64)  # type: ignore[misc]


def test_empty_query_gives_empty_result():
    nb = nearest_neighbours(np.zeros((0, 4)), np.ones((5, 4)), metric="l2", k=2)
    assert nb.distances.shape == nb.indices.shape == (0, 2)


def test_knn_input_errors():
    good = np.ones((4, 3))
    with pytest.raises(ValueError, match="reference is empty"):
        nearest_neighbours(good, np.zeros((0, 3)), metric="l2")
    with pytest.raises(ValueError, match="reference is empty"):
        nearest_neighbours(good, iter([]), metric="l2")
    with pytest.raises(ValueError, match=r"reference block 1 has 5 columns but the query has 3"):
        nearest_neighbours(good, [np.ones((2, 3)), np.ones((2, 5))], metric="l2")
    q = good.copy()
    q[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"query contains NaN or ±inf in 1 row\(s\) \(row \[2\]\)"):
        nearest_neighbours(q, good, metric="l2")
    with pytest.raises(ValueError, match=r"reference contains NaN or ±inf in 1 row\(s\) \(row \[5\]\)"):
        nearest_neighbours(
            good, [np.ones((4, 3)), np.array([[1.0, 1.0, 1.0], [np.inf, 0.0, 0.0]])], metric="l2"
        )
    with pytest.raises(ValueError, match="floating-point"):
        nearest_neighbours(np.ones((4, 3), dtype=np.int64), good, metric="l2")
    with pytest.raises(ValueError, match="2-D"):
        nearest_neighbours(np.ones(3), good, metric="l2")
    with pytest.raises(ValueError, match="metric must be"):
        nearest_neighbours(good, good, metric="euclidean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        nearest_neighbours(good, good, metric="l2", k=0)
    with pytest.raises(ValueError, match="reference offers only 3 per query row"):
        nearest_neighbours(good, good, metric="l2", k=4, exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self=True needs the reference to be the query itself"):
        nearest_neighbours(good, np.ones((6, 3)), metric="l2", exclude_self=True)
    with pytest.raises(ValueError, match=r"all-zero row\(s\) \(row \[1\]\).*metric='l2'"):
        nearest_neighbours(np.array([[1.0, 0, 0], [0, 0, 0]]), good, metric="cosine")
    with pytest.raises(ValueError, match="too large to square in float32"):
        nearest_neighbours(good * 1e20, good, metric="l2")


# ---------------------------------------------------------------------------------------- pixels


def test_pixel_vectors_do_not_wrap_integers():
    """CheXGenBench subtracts uint8 images: 0 − 255 wraps to 1. Here black vs white is the maximal 1."""
    for dtype in (np.uint8, np.uint16):
        black, white = np.zeros((40, 40), dtype), np.full((40, 40), np.iinfo(dtype).max, dtype)
        vecs = pixel_vectors([black, white], 16)
        assert vecs.dtype == np.float32 and vecs.shape == (2, 256)
        assert vecs[0].max() == 0.0 and vecs[1].min() == 1.0
        nb = nearest_neighbours(vecs[:1], vecs[1:], metric="l2")
        assert nb.distances[0, 0] == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(7)
    img8 = rng.integers(0, 256, (30, 50), dtype=np.uint8)
    np.testing.assert_allclose(
        pixel_vectors([img8], 20), pixel_vectors([img8.astype(np.float64) / 255], 20), rtol=0, atol=1e-6
    )


def test_pixel_vectors_match_pillow_centre_crop_and_bilinear():
    rng = np.random.default_rng(8)
    tall, wide = rng.random((90, 60)).astype(np.float32), rng.random((40, 70)).astype(np.float32)
    vecs = pixel_vectors([tall, wide], 24)
    crops = [tall[15:75, :], wide[:, 15:55]]  # centre squares: offsets (90-60)//2 and (70-40)//2
    for vec, crop in zip(vecs, crops, strict=True):
        expected = np.asarray(Image.fromarray(crop, mode="F").resize((24, 24), Image.BILINEAR))
        np.testing.assert_allclose(vec.reshape(24, 24), expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(pixel_vectors([tall], 60)[0].reshape(60, 60), tall[15:75])  # no resize


def test_pixel_vectors_errors():
    with pytest.raises(ValueError, match=r"image 1 has values outside \[0, 1\]"):
        pixel_vectors([np.zeros((4, 4)), np.full((4, 4), 2.0)], 4)
    with pytest.raises(ValueError, match="image 0 has dtype int16"):
        pixel_vectors([np.zeros((4, 4), np.int16)], 4)
    with pytest.raises(ValueError, match="image 0 must be a non-empty 2-D"):
        pixel_vectors([np.zeros((4, 4, 3))], 4)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        pixel_vectors([np.zeros((4, 4))], 0)
    assert pixel_vectors([], 8).shape == (0, 64)


# ----------------------------------------------------------------------- calibration and planting


def test_calibration_threshold_is_the_linear_quantile():
    rng = np.random.default_rng(9)
    values = rng.gamma(2.0, 1.0, 257)
    for q in (0.0, 0.01, 0.05, 0.5, 1.0):
        s = np.sort(values)
        h = (len(s) - 1) * q  # Hyndman & Fan type 7: the linear method
        lo = math.floor(h)
        expected = s[lo] + (h - lo) * (s[min(lo + 1, len(s) - 1)] - s[lo])
        assert calibration_threshold(values, q) == pytest.approx(expected, rel=1e-15, abs=0)
    with pytest.raises(ValueError, match="quantile must be a number in"):
        calibration_threshold(values, 1.5)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        calibration_threshold(np.array([]), 0.01)
    with pytest.raises(ValueError, match="NaN"):
        calibration_threshold(np.array([1.0, np.nan]), 0.01)


def test_flagging_is_strict():
    distances = np.array([0.0, 0.1, 0.2, 0.2000001, 0.3])
    assert flag_memorised(distances, 0.2).tolist() == [True, True, False, False, False]
    values = np.array([0.5, 0.1, 0.3])
    assert not flag_memorised(values, calibration_threshold(values, 0.0)).any()  # the minimum itself
    with pytest.raises(ValueError, match="NaN"):
        flag_memorised(np.array([np.nan]), 0.1)


def test_held_out_features_are_flagged_at_the_quantile_rate():
    """A generator that copies nothing (fresh draws from the training distribution): its flag rate is
    the calibration quantile, within a binomial test."""
    rng = np.random.default_rng(10)
    train, calib, fresh = _features(rng, 2000, 32), _features(rng, 4000, 32), _features(rng, 1000, 32)
    q = 0.05
    threshold = calibration_threshold(nearest_neighbours(calib, train, metric="cosine").distances[:, 0], q)
    flags = flag_memorised(nearest_neighbours(fresh, train, metric="cosine").distances[:, 0], threshold)
    assert binomtest(int(flags.sum()), flags.size, q).pvalue > 0.001


def _images(rng: np.random.Generator, n: int, size: int = 64) -> np.ndarray:
    """Smooth random 'anatomy' (bicubic upsampled 6×6 noise) plus sharp 'ribs': stripes of period 5-8 px
    at a random angle and phase; each image stretched to [0, 1]."""
    coarse = torch.from_numpy(rng.random((n, 1, 6, 6)))
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).numpy()[:, 0]
    y, x = np.mgrid[0:size, 0:size]
    theta, period = rng.uniform(0, np.pi, (n, 1, 1)), rng.uniform(5, 8, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    stripes = np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period + phase) > 0
    img = 0.6 * smooth + 0.4 * stripes
    img = (img - img.min(axis=(1, 2), keepdims=True)) / np.ptp(img, axis=(1, 2), keepdims=True)
    return img.astype(np.float32)


def _pooled_features(images: np.ndarray) -> np.ndarray:
    """A deterministic stand-in feature extractor: 8×8 average pooling (a blurred 8× downsample)."""
    return (
        F.avg_pool2d(torch.from_numpy(np.ascontiguousarray(images))[:, None], 8).flatten(1).double().numpy()
    )


def test_planted_copies_in_pixel_and_feature_space():
    rng = np.random.default_rng(7)
    train, calib, fresh = _images(rng, 400), _images(rng, 400), _images(rng, 200)
    src = train[:10]
    planted = {
        "copy": src,
        "noise": np.clip(src + rng.normal(0, 0.02, src.shape), 0, 1).astype(np.float32),
        "shift": np.roll(src, 2, axis=2),
        "flip": src[:, :, ::-1].copy(),
    }
    q = 0.05
    spaces = {
        "pixels": (lambda im: pixel_vectors(list(im), 64), "l2", True),
        "features": (_pooled_features, "cosine", False),
    }
    flagged: dict[tuple[str, str], np.ndarray] = {}
    for space, (embed, metric, mirror) in spaces.items():
        reference = embed(train)

        def nearest(im, reference=reference, embed=embed, metric=metric, mirror=mirror):
            given = nearest_neighbours(embed(im), reference, metric=metric)
            if not mirror:
                return given
            return nearest_of_both(
                given, nearest_neighbours(mirror_pixel_vectors(embed(im), 64), reference, metric=metric)
            )[0]

        threshold = calibration_threshold(nearest(calib).distances[:, 0], q)
        for name, images in {**planted, "fresh": fresh}.items():
            nb = nearest(images)
            flagged[space, name] = flag_memorised(nb.distances[:, 0], threshold)
            # The nearest is the source image whenever it is caught, in the space that catches it (a
            # pixel-space shift is flagged at the chance rate only, by whichever image is nearest).
            if name in ("copy", "noise") or (name, space) in (("flip", "pixels"), ("shift", "features")):
                caught = flagged[space, name]
                assert (nb.indices[caught, 0] == np.arange(10)[caught]).all()
        assert (nearest(planted["copy"]).distances[:, 0] == 0).all()
        # Fresh samples: the calibration quantile's false-positive rate, within a binomial test.
        assert binomtest(int(flagged[space, "fresh"].sum()), 200, q).pvalue > 0.001
    for space in spaces:
        assert flagged[space, "copy"].all() and flagged[space, "noise"].all()
    assert flagged["pixels", "flip"].all()
    assert flagged["features", "flip"].mean() <= 0.2  # chance level: pooled features are not flip-invariant
    assert flagged["features", "shift"].all()
    assert flagged["pixels", "shift"].mean() <= 0.5  # only shifts along the stripes come close


# ------------------------------------------------------------------------------------ authenticity


def _authenticity_loop(gen: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Alaa et al. 2022, per sample, by brute force: j is unauthentic iff d(g_j, x_i*) < d(x_i*, its
    nearest other training point), where x_i* is g_j's nearest training point (lowest index on ties)."""
    out = np.empty(len(gen), dtype=bool)
    for j, g in enumerate(gen):
        d_gen = [float(np.linalg.norm(g - x)) for x in train]
        i_star = int(np.argmin(d_gen))
        d_train = min(float(np.linalg.norm(train[i_star] - x)) for i, x in enumerate(train) if i != i_star)
        out[j] = not d_gen[i_star] < d_train
    return out


def test_authenticity_matches_the_definition():
    rng = np.random.default_rng(11)
    train = _features(rng, 120, 6)
    gen = np.concatenate([_features(rng, 60, 6), train[:5] + 1e-3, train[5:8]])  # near copies, exact copies
    to_train = nearest_neighbours(gen, train, metric="l2")
    train_nn = nearest_neighbours(train, train, metric="l2", exclude_self=True)
    auth = authenticity(to_train.distances[:, 0], train_nn.distances[to_train.indices[:, 0], 0])
    np.testing.assert_array_equal(auth, _authenticity_loop(gen, train))
    assert not auth[60:].any() and auth.dtype == np.bool_
    # Exactly as far as the training point's own neighbour: not strictly closer, so authentic.
    assert authenticity(np.array([0.5, 0.4999]), np.array([0.5, 0.5])).tolist() == [True, False]
    with pytest.raises(ValueError, match="has 2 entries but train_nn_of_that_train 3"):
        authenticity(np.ones(2), np.ones(3))


# ------------------------------------------------------------------------------------ AUC and re-ID


def test_mann_whitney_auc_matches_sklearn_and_scipy():
    rng = np.random.default_rng(12)
    gen = np.round(rng.gamma(2.0, 1.0, 301), 1)  # rounded: many ties within and across the sets
    real = np.round(rng.gamma(2.2, 1.0, 187), 1)
    auc = mann_whitney_auc(gen, real)
    labels = np.r_[np.ones(gen.size), np.zeros(real.size)]
    assert auc == pytest.approx(roc_auc_score(labels, np.r_[gen, real]), abs=1e-12)
    u = mannwhitneyu(gen, real, alternative="two-sided").statistic
    assert auc == pytest.approx(u / (gen.size * real.size), abs=1e-12)
    assert mann_whitney_auc(np.zeros(4), np.zeros(3)) == 0.5
    assert mann_whitney_auc(np.ones(4), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="generated must be a non-empty 1-D"):
        mann_whitney_auc(np.array([]), real)


def test_reid_scores():
    rng = np.random.default_rng(13)
    pairwise = rng.random((20, 5))
    mean, top = reid_scores(pairwise)
    np.testing.assert_allclose(mean, [sum(row) / 5 for row in pairwise.tolist()], rtol=1e-15)
    np.testing.assert_array_equal(top, [max(row) for row in pairwise.tolist()])
    with pytest.raises(ValueError, match="k >= 1"):
        reid_scores(np.ones(5))
    bad = pairwise.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"sample row\(s\) \[3\]"):
        reid_scores(bad)


# ------------------------------------------------------------------------------------------ mirrors


def test_mirror_pixel_vectors_equal_pixel_vectors_of_flipped_images():
    rng = np.random.default_rng(11)
    imgs = [rng.random((40, 52)).astype(np.float32), (rng.random((61, 33)) * 65535).astype(np.uint16)]
    flipped = pixel_vectors([np.fliplr(im) for im in imgs], 24)
    # float32 resampling is symmetric only up to rounding (measured max 1.2e-6 on [0, 1]).
    np.testing.assert_allclose(mirror_pixel_vectors(pixel_vectors(imgs, 24), 24), flipped, atol=5e-6)
    with pytest.raises(ValueError, match="shaped"):
        mirror_pixel_vectors(np.zeros((2, 10), np.float32), 24)


def test_nearest_of_both_is_the_k_nearest_of_the_union():
    """Reference: per row, the distinct reference rows of both lists with their smaller distance,
    ordered by (distance, index, first before second), written as a plain loop."""
    rng = np.random.default_rng(12)
    n, k = 200, 4
    # Few distinct values and indices, so shared indices and ties are common.
    a = Neighbours(
        rng.integers(0, 4, (n, k)) / 4.0, np.stack([rng.choice(8, k, replace=False) for _ in range(n)])
    )
    b = Neighbours(
        rng.integers(0, 4, (n, k)) / 4.0, np.stack([rng.choice(8, k, replace=False) for _ in range(n)])
    )
    got, source = nearest_of_both(a, b)
    for i in range(n):
        best: dict[int, tuple[float, int]] = {}
        for side, nb in enumerate((a, b)):
            for j in range(k):
                key = (float(nb.distances[i, j]), side)
                idx = int(nb.indices[i, j])
                if idx not in best or key < best[idx]:
                    best[idx] = key
        want = sorted(best.items(), key=lambda item: (item[1][0], item[0], item[1][1]))[:k]
        assert got.indices[i].tolist() == [idx for idx, _ in want]
        assert got.distances[i].tolist() == [d for _, (d, _) in want]
        assert ((source[i] >= k) == np.array([side == 1 for _, (_, side) in want])).all()
        both = np.concatenate([a.indices[i], b.indices[i]])
        assert (both[source[i]] == got.indices[i]).all()


def test_pixel_shifts_and_windows_against_slicing():
    from audit.metrics.functional.privacy import pixel_shifts, pixel_views, pixel_window

    shifts = pixel_shifts(2)
    assert shifts[0] == (0, 0) and len(shifts) == 25 and len(set(shifts)) == 25
    assert [max(abs(a), abs(b)) for a, b in shifts] == sorted(max(abs(a), abs(b)) for a, b in shifts)
    assert pixel_shifts(0) == [(0, 0)]
    rng = np.random.default_rng(0)
    size = 16
    v = rng.random((3, size * size)).astype(np.float32)
    img = v.reshape(3, size, size)
    np.testing.assert_array_equal(pixel_window(v, size, 0), v)
    np.testing.assert_array_equal(pixel_window(v, size, 2), img[:, 2:14, 2:14].reshape(3, -1))
    np.testing.assert_array_equal(pixel_window(v, size, 2, (1, -2)), img[:, 3:15, 0:12].reshape(3, -1))
    views = pixel_views(v, size, 1).reshape(2 * 9, 3, -1)  # view after view
    for k, shift in enumerate(pixel_shifts(1)):
        np.testing.assert_array_equal(views[k], pixel_window(v, size, 1, shift))
        np.testing.assert_array_equal(
            views[9 + k], pixel_window(mirror_pixel_vectors(v, size), size, 1, shift)
        )
    np.testing.assert_array_equal(views[0], img[:, 1:15, 1:15].reshape(3, -1))
    np.testing.assert_array_equal(views[9], img[:, 1:15, ::-1][:, :, 1:15].reshape(3, -1))
    # A copy moved by (dy, dx) within max_shift is found at distance 0 by the view with that shift.
    moved = np.zeros_like(img)
    moved[:, 1:, :-2] = img[:, :-1, 2:]  # content down 1 row, left 2 columns
    train_window = pixel_window(v, size, 2)
    best = min(
        float(np.abs(view - train_window).max())
        for view in pixel_views(moved.reshape(3, -1), size, 2).reshape(50, 3, -1)[:25]
        if view.shape == train_window.shape
    )
    assert best == 0.0
    with pytest.raises(ValueError, match="max_shift must leave a window"):
        pixel_window(v, size, 8)
    with pytest.raises(ValueError, match="exceeds max_shift"):
        pixel_window(v, size, 1, (2, 0))
    with pytest.raises(ValueError, match="non-negative integer"):
        pixel_shifts(-1)


def _bisect_union(f: np.ndarray, p: np.ndarray, q: float) -> tuple[float, float, float]:
    """union_thresholds for one set, written out with np.quantile (the reference for the kernel)."""

    def share(level: float) -> float:
        return float(((f < np.quantile(f, level)) | (p < np.quantile(p, level))).mean())

    low, high = 0.0, q
    if share(high) <= q:
        low = high
    else:
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if share(mid) <= q else (low, mid)
    return float(np.quantile(f, low)), float(np.quantile(p, low)), low


def test_union_thresholds_rows_match_a_per_set_bisection():
    from audit.metrics.functional.privacy import union_thresholds

    rng = np.random.default_rng(5)
    for n, q in ((48, 0.05), (200, 0.01), (13, 0.2)):
        f = rng.gamma(3.0, size=(40, n))
        p = 0.5 * f + rng.gamma(2.0, size=(40, n))  # correlated spaces, as real distances are
        f[:5, :4] = f[:5, :1]  # ties
        t_f, t_p, level = union_thresholds(f, p, q)
        for i in range(f.shape[0]):
            assert (t_f[i], t_p[i], level[i]) == _bisect_union(f[i], p[i], q)
            assert ((f[i] < t_f[i]) | (p[i] < t_p[i])).mean() <= q
    with pytest.raises(ValueError, match="paired"):
        union_thresholds(np.ones((2, 3)), np.ones((2, 4)), 0.1)
    with pytest.raises(ValueError, match="quantile must be"):
        union_thresholds(np.ones((2, 3)), np.ones((2, 3)), 0.0)


def test_memorised_fraction_interval_recalibrates_in_every_replicate():
    """The stage's memorised_fraction rows against a direct loop: materialise each replicate's drawn
    cases, recalibrate on their references, flag their samples, average per case then over cases."""
    from audit.config import MetricsSection
    from audit.models.base import derive_seed
    from audit.privacy_summary import memorised_rows
    from audit.stats import percentile_ci

    rng = np.random.default_rng(9)
    n, q, resamples = 30, 0.1, 64
    ref_cases = np.array([f"c{i:02d}" for i in range(n)])
    ref_f, ref_p = rng.gamma(3.0, size=n), rng.gamma(3.0, size=n)
    rows = []
    for model, shift in (("near", 0.5), ("far", 1.5)):
        for i, c in enumerate(ref_cases):
            for s in range(1 + i % 3):  # 1 to 3 samples per case
                rows.append((model, c, s, shift * rng.gamma(3.0), shift * rng.gamma(3.0)))
    frame = pd.DataFrame(rows, columns=["model", "case_id", "sample", "nn_distance", "nn_distance_pixel"])
    t_f, t_p, _ = _bisect_union(ref_f, ref_p, q)
    frame["flagged"] = (frame.nn_distance < t_f) | (frame.nn_distance_pixel < t_p)
    cases = pd.DataFrame({"case_id": ref_cases, "group": ["a" if i % 2 else "b" for i in range(n)]})
    config = SimpleNamespace(
        metrics=MetricsSection(bootstrap_resamples=resamples, group_by=("group",)),
        study=SimpleNamespace(seed=4),
    )
    got = {
        (r["model"], r["group"]): r for r in memorised_rows(config, frame, ref_cases, ref_f, ref_p, q, cases)
    }
    assert set(got) == {(m, g) for m in ("near", "far") for g in ("", "group=a", "group=b")}

    draws = np.random.default_rng(derive_seed(4, "", "bootstrap:memorised_fraction", 0)).integers(
        0, n, size=(resamples, n)
    )
    thresholds = [_bisect_union(ref_f[drawn], ref_p[drawn], q)[:2] for drawn in draws]
    for (model, group), row in got.items():
        members = set(ref_cases) if not group else set(cases.case_id[cases.group == group[6:]])
        sel = frame[(frame.model == model) & frame.case_id.isin(members)]
        per_case = sel.groupby("case_id").flagged.mean()
        assert row["value"] == pytest.approx(per_case.mean()) and row["n"] == len(per_case)
        by_case = {
            c: (g.nn_distance.to_numpy(), g.nn_distance_pixel.to_numpy()) for c, g in sel.groupby("case_id")
        }
        replicate = []
        for drawn, (tf, tp) in zip(draws, thresholds, strict=True):
            shares = [
                ((f < tf) | (px < tp)).mean()
                for f, px in (by_case[c] for c in ref_cases[drawn] if c in by_case)
            ]
            replicate.append(np.mean(shares) if shares else np.nan)
        lo, hi = percentile_ci(np.array(replicate), 0.95)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert got[("near", "")]["value"] > got[("far", "")]["value"]


def test_unusable_inputs_are_named():
    with pytest.raises(ValueError, match="dtype float128; pass float16, float32 or float64"):
        nearest_neighbours(np.ones((2, 3), np.longdouble), np.ones((2, 3)), metric="l2")
    with pytest.raises(ValueError, match="quantile must be a number in"):
        calibration_threshold(np.ones(5), True)
