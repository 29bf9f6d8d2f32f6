"""Case-bootstrap kernels of the distribution metrics, and their CIs in a run's summary.

References: each replicate is the metric of the materialised resample, the feature rows repeated as
often as their case was drawn: the pytorch-fid formula with ``scipy.linalg.sqrtm`` for the Fréchet
distance, a direct numpy unbiased MMD² for KID, and the authors' ``prdc`` package functions on the
distinct drawn points (radii) with the draws expanded (counts) for PRDC.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import sqrtm

from audit import rundir
from audit.config import load_config
from audit.metrics.functional import distribution as fd
from audit.metrics.functional import distribution_bootstrap as fb
from audit.run_plan import RunOptions
from audit.runner import run_study
from audit.stats import case_resample_weights
from tests.test_evaluation import N_CASES, study


def _features(
    rng: np.random.Generator, n: int, d: int, shift: float = 0.0, offset: float = 0.0
) -> np.ndarray:
    """Correlated non-negative 'network features' (ReLU of mixed Gaussians), optionally offset."""
    mix = np.linalg.qr(np.random.default_rng(99).normal(size=(d, d)))[0] * np.linspace(0.5, 1.5, d)
    return np.maximum(rng.normal(size=(n, d)) @ mix + 0.5 + shift, 0.0) + offset


def _weights(seed: int, n: int, resamples: int) -> np.ndarray:
    return case_resample_weights(np.random.default_rng(seed), n, resamples)


def _repeat(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.repeat(x, w.astype(np.int64), axis=0)


def _fid_reference(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid: np.cov (n−1) and scipy.linalg.sqrtm of the product, real part."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ---------------------------------------------------------------------------------------------------
# Fréchet distance


@pytest.mark.parametrize(("n1", "n2", "d"), [(24, 30, 48), (160, 140, 10)])
@pytest.mark.parametrize("route", ["low_rank", "full", "auto"])
def test_frechet_bootstrap_matches_sqrtm_on_repeated_rows(n1, n2, d, route):
    rng = np.random.default_rng(n1)
    # The offset checks that the pooled-mean shift keeps the cross-Gram products from cancelling.
    real, gen = _features(rng, n1, d, offset=20.0), _features(rng, n2, d, shift=0.3, offset=20.0)
    w1, w2 = _weights(1, n1, 4), _weights(2, n2, 4)
    got = fb.frechet_distance_bootstrap(real, gen, w1, w2, route=route)
    want = [_fid_reference(_repeat(real, w1[b]), _repeat(gen, w2[b])) for b in range(4)]
    # Measured 1e-9 (n < D: sqrtm of a singular product limits the reference) and 1e-14 (n > D).
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_frechet_bootstrap_routes_agree_and_all_ones_is_the_point_estimate():
    rng = np.random.default_rng(3)
    real, gen = _features(rng, 40, 64), _features(rng, 35, 64, shift=0.2)
    w1, w2 = np.vstack([np.ones(40), _weights(4, 40, 3)]), np.vstack([np.ones(35), _weights(5, 35, 3)])
    low = fb.frechet_distance_bootstrap(real, gen, w1, w2, route="low_rank")
    full = fb.frechet_distance_bootstrap(real, gen, w1, w2, route="full")
    np.testing.assert_allclose(low, full, rtol=1e-9)
    point = fd.frechet_distance(fd.FeatureStats.from_features(real), fd.FeatureStats.from_features(gen))
    assert low[0] == pytest.approx(point.value, rel=1e-9)
    # Non-integer frequency weights are the weighted-moment formula: doubling every weight changes N
    # but not the mean; with ddof 1 the covariance scales by (N−1)/(2N−1).
    doubled = fb.frechet_distance_bootstrap(real, gen, 2 * w1[:1], 2 * w2[:1])
    assert doubled[0] == pytest.approx(
        _fid_reference(np.repeat(real, 2, axis=0), np.repeat(gen, 2, axis=0)), rel=1e-6
    )


@pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")
def test_frechet_bootstrap_degenerate_replicates_and_errors():
    rng = np.random.default_rng(6)
    real, gen = _features(rng, 6, 4), _features(rng, 5, 4)
    w1, w2 = np.ones((3, 6)), np.ones((3, 5))
    w2[1] = 0
    w2[1, 2] = 1  # one draw: no covariance
    w2[2] = 0
    w2[2, 3] = 5  # one row five times: covariance 0, still defined
    got = fb.frechet_distance_bootstrap(real, gen, w1, w2)
    assert np.isfinite(got[[0, 2]]).all() and np.isnan(got[1])
    assert got[2] == pytest.approx(_fid_reference(real, np.repeat(gen[3:4], 5, axis=0)), rel=1e-9)
    with pytest.raises(ValueError, match=r"real_weights must be shaped \(B replicates, 6\)"):
        fb.frechet_distance_bootstrap(real, gen, np.ones((3, 5)), w2)
    with pytest.raises(ValueError, match="non-negative"):
        fb.frechet_distance_bootstrap(real, gen, -w1, w2)
    with pytest.raises(ValueError, match="same replicates"):
        fb.frechet_distance_bootstrap(real, gen, w1[:2], w2)
    with pytest.raises(ValueError, match="route"):
        fb.frechet_distance_bootstrap(real, gen, w1, w2, route="fast")


# ---------------------------------------------------------------------------------------------------
# KID


def _mmd2_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two samples of any sizes, written out: every pair of distinct draws."""
    k = lambda a, b: (a @ b.T / a.shape[1] + 1.0) ** 3
    m, n = x.shape[0], y.shape[0]
    kxx, kyy = k(x, x), k(y, y)
    off = lambda a: a.sum() - np.trace(a)
    return float(off(kxx) / (m * (m - 1)) + off(kyy) / (n * (n - 1)) - 2 * k(x, y).mean())


def test_kid_bootstrap_matches_numpy_on_repeated_rows(monkeypatch):
    rng = np.random.default_rng(7)
    real, gen = _features(rng, 30, 16), _features(rng, 45, 16, shift=0.2)
    w1, w2 = _weights(8, 30, 5), _weights(9, 45, 5)
    got = fb.kid_bootstrap(real, gen, w1, w2)
    want = [_mmd2_reference(_repeat(real, w1[b]), _repeat(gen, w2[b])) for b in range(5)]
    # Measured 1e-15 relative; KID values are differences of kernel means (cancellation ~1e2 here).
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # Kernel blocks smaller than the sets: the same sums, gathered in pieces.
    monkeypatch.setattr(fb, "_KID_BLOCK_ELEMENTS", 16)
    np.testing.assert_allclose(fb.kid_bootstrap(real, gen, w1, w2), got, rtol=1e-12)


def test_kid_bootstrap_all_ones_is_the_whole_set_kid_and_degenerate_is_nan():
    rng = np.random.default_rng(10)
    real, gen = _features(rng, 20, 8), _features(rng, 20, 8, shift=0.3)
    ones = np.ones((1, 20))
    got = fb.kid_bootstrap(real, gen, ones, ones)[0]
    assert got == pytest.approx(fd.poly_mmd2(real, gen), rel=1e-12)
    # subset_size = N: every subset is the whole set, so the subset-KID point estimate is this value.
    kid = fd.kernel_inception_distance(real, gen, np.random.default_rng(0), subsets=3, subset_size=20)
    assert got == pytest.approx(kid.mean, rel=1e-12)
    one_draw = np.zeros((1, 20))
    one_draw[0, 4] = 1
    assert np.isnan(fb.kid_bootstrap(real, gen, one_draw, ones)[0])


# ---------------------------------------------------------------------------------------------------
# PRDC


def _prdc_reference(real, gen, w1, w2, k):
    """The prdc package's radii on the distinct drawn points, its formulas on the draws expanded;
    density counts each distinct real ball once (the documented duplicates rule)."""
    from prdc import prdc as pkg

    r, c = w1 > 0, w2 > 0
    x, y = real[r], gen[c]
    rx, ry = pkg.compute_nearest_neighbour_distances(x, k), pkg.compute_nearest_neighbour_distances(y, k)
    x_all, rx_all = _repeat(x, w1[r]), _repeat(rx, w1[r])
    y_all = _repeat(y, w2[c])
    real_vs_draws = pkg.compute_pairwise_distance(x, y_all)
    return {
        "precision": (real_vs_draws < rx[:, None]).any(axis=0).mean(),
        "recall": (pkg.compute_pairwise_distance(x_all, y) < ry[None, :]).any(axis=1).mean(),
        "density": (real_vs_draws < rx[:, None]).sum(axis=0).mean() / k,
        "coverage": (pkg.compute_pairwise_distance(x_all, y_all).min(axis=1) < rx_all).mean(),
    }


def _assert_prdc(got, b, want):
    for name, value in want.items():
        assert got[name][b] == pytest.approx(value, abs=1e-12), (name, b)


def test_prdc_bootstrap_matches_prdc_package_on_distinct_points():
    rng = np.random.default_rng(11)
    real, gen = _features(rng, 60, 12), _features(rng, 70, 12, shift=0.4)
    w1, w2 = _weights(12, 60, 4), _weights(13, 70, 4)
    got = fb.prdc_bootstrap(real, gen, w1, w2, k=3)
    for b in range(4):
        _assert_prdc(got, b, _prdc_reference(real, gen, w1[b], w2[b], 3))


def test_prdc_bootstrap_sparse_draws_use_the_fallback_radii():
    # k = 1: neighbour lists of 16 rows; drawing every 10th row leaves most lists with < 2 drawn rows.
    rng = np.random.default_rng(14)
    real, gen = _features(rng, 80, 6), _features(rng, 80, 6, shift=0.2)
    w = np.zeros((1, 80))
    w[0, ::10] = np.arange(1, 9)
    got = fb.prdc_bootstrap(real, gen, w, w, k=1)
    _assert_prdc(got, 0, _prdc_reference(real, gen, w[0], w[0], 1))


def test_prdc_bootstrap_all_ones_is_prdc_including_ties(capsys):
    import prdc as pkg

    rng = np.random.default_rng(15)
    real = _features(rng, 40, 8, offset=1e3)
    # Two cases with identical features stay two points (radius 0 for both, as in prdc), not one
    # deduplicated vector; the offset checks the pooled-mean shift before the Gram distances.
    real[5] = real[9]
    gen = _features(rng, 30, 8, shift=0.2, offset=1e3)
    gen[:6] = real[10:16]  # memorised images: exact ties with the real radii
    ones_r, ones_g = np.ones((1, 40)), np.ones((1, 30))
    got = fb.prdc_bootstrap(real, gen, ones_r, ones_g, k=4)
    point = fd.prdc(real, gen, k=4).as_dict()
    ref = pkg.compute_prdc(real_features=real, fake_features=gen, nearest_k=4)
    capsys.readouterr()  # the package prints its set sizes
    for name in point:
        assert got[name][0] == pytest.approx(point[name], abs=1e-12), name
        assert got[name][0] == pytest.approx(ref[name], abs=1e-12), name


def test_prdc_bootstrap_degenerate_replicates_and_limit(monkeypatch):
    rng = np.random.default_rng(16)
    real, gen = _features(rng, 12, 4), _features(rng, 12, 4)
    w = np.ones((2, 12))
    w[1] = 0
    w[1, :5] = 2  # 5 distinct cases with k = 5: no k-NN ball
    got = fb.prdc_bootstrap(real, gen, w, w, k=5)
    assert all(np.isfinite(v[0]) and np.isnan(v[1]) for v in got.values())
    monkeypatch.setattr(fb, "_PRDC_BOOTSTRAP_MAX", 100)
    with pytest.raises(ValueError, match="24 distinct feature vectors"):
        fb.prdc_bootstrap(real, gen, w, w, k=5)


def test_bootstrap_kernels_are_deterministic_under_a_seed():
    rng = np.random.default_rng(17)
    real, gen = _features(rng, 25, 6), _features(rng, 25, 6, shift=0.1)
    runs = []
    for _ in range(2):
        w = _weights(42, 25, 20)
        runs.append(
            (
                fb.frechet_distance_bootstrap(real, gen, w, w),
                fb.kid_bootstrap(real, gen, w, w),
                fb.prdc_bootstrap(real, gen, w, w, k=3)["coverage"],
            )
        )
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.unique(runs[0][0]).size > 10  # the replicates do differ from each other


# ---------------------------------------------------------------------------------------------------
# In a run


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """test_evaluation's cohort at 64 px: a fraction of the rendering time; the demo networks resize
    their inputs to their own frames anyway."""
    from audit.demo.cohort import build_cohort

    return build_cohort(
        n_cases=N_CASES, size=64, seed=5, root=tmp_path_factory.mktemp("cohort"), progress=False
    )


def test_run_summary_has_bootstrap_cis_for_feature_metrics(small_demo, tmp_path):
    # prdc_k = 3: the 5-case label groups have PRDC values, but fewer than half of their resamples keep
    # 4 distinct cases (P = 0.42), so no CI, with the reason in run.json.
    cfg = study(tmp_path, small_demo, metrics='group_by = ["labels"]\nprdc_k = 3', cache=tmp_path / "cache")
    # Only the distribution metrics: no pixel metrics (torchmetrics) and no clinical ones.
    text = cfg.read_text().replace('pixel = ["psnr"]', "pixel = []")
    cfg.write_text(text.replace('clinical = ["pathology_auc", "pathology_f1", "dice"]', "clinical = []"))
    run_study(load_config(cfg), RunOptions(progress=False))
    summary = pd.read_csv(tmp_path / "run" / rundir.SUMMARY, dtype={"group": str}).fillna({"group": ""})
    s = summary.set_index(["model", "metric", "group"])
    for name in ("fid", "fxd", "kid", "precision", "recall", "density", "coverage"):
        row = s.loc[("blur", name, "")]
        assert np.isfinite([row.value, row.ci_low, row.ci_high]).all(), name
        assert row.ci_low <= row.ci_high, name
    fid = s.loc[("blur", "fid", "")]
    assert fid.ci_low <= fid.value <= fid.ci_high
    assert fid.ci_low < fid.ci_high
    info = json.loads((tmp_path / "run" / rundir.RUN_JSON).read_text())["evaluation"]["feature_metrics"]
    record = info["blur"]["all cases"]
    assert record["fid"]["ci"].startswith("bias-corrected percentile bootstrap over cases, 200 replicates")
    # The shift is the bootstrap's bias estimate: mean replicate minus the full-set value.
    assert "shifted by the bootstrap bias" in record["fid"]["ci"]
    assert record["kid"]["ci"] == "percentile bootstrap over cases, 200 replicates"
    assert record["fid"]["ci_replicates"] == 200 and "ci_error" not in record["fid"]
    nodule = s.loc[("blur", "coverage", "labels=Nodule")]
    assert np.isfinite(nodule.value) and np.isnan([nodule.ci_low, nodule.ci_high]).all()
    prdc = info["blur"]["labels=Nodule"]["prdc"]
    assert prdc["ci_replicates"] < 100
    assert f"only {prdc['ci_replicates']} of 200 bootstrap replicates" in prdc["ci_error"]
    assert np.isfinite(s.loc[("blur", "fid", "labels=Nodule"), "ci_low"])
