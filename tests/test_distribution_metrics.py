"""Distribution metrics (FID/FXD, KID, PRDC) against independent references.

References: the pytorch-fid formula with ``scipy.linalg.sqrtm`` and torchmetrics' ``_compute_fid`` for
the Fréchet distance, closed forms for Gaussians with known covariances, a direct numpy unbiased-MMD²
and torchmetrics' ``poly_mmd``/``KernelInceptionDistance`` for KID, a ``cdist`` implementation of
Naeem et al.'s definitions and the authors' ``prdc`` package for PRDC.
Tolerances were measured first and set with a wide margin; each says what limits it.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.spatial.distance import cdist
from scipy.stats import ortho_group

from audit.metrics.functional.distribution import (
    FeatureStats,
    frechet_distance,
    gaussian_frechet_distance,
    kernel_inception_distance,
    poly_mmd2,
    prdc,
)


def _features(rng: np.random.Generator, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Correlated, non-negative 'network features' (ReLU of a mixed Gaussian), mean ≈ std like real ones."""
    mix = np.linalg.qr(np.random.default_rng(1234).normal(size=(d, d)))[0] * np.linspace(0.5, 1.5, d)
    z = rng.normal(size=(n, d)) @ mix * scale + shift
    return np.maximum(z + 0.5, 0.0)


# ---------------------------------------------------------------------------------------------------
# Fréchet distance


def _pytorch_fid_reference(feats1: np.ndarray, feats2: np.ndarray, eps: float = 1e-6) -> float:
    """pytorch-fid's calculate_activation_statistics + calculate_frechet_distance, verbatim in numpy."""
    mu1, s1 = np.mean(feats1, axis=0), np.cov(feats1, rowvar=False)
    mu2, s2 = np.mean(feats2, axis=0), np.cov(feats2, rowvar=False)
    diff = mu1 - mu2
    covmean = sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3), "reference: imaginary component"
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize(
    ("n1", "n2", "d", "shift", "scale"), [(400, 300, 8, 0.3, 1.0), (1500, 900, 48, 0.0, 1.3)]
)
def test_frechet_matches_pytorch_fid_sqrtm(n1, n2, d, shift, scale):
    rng = np.random.default_rng(d)
    real = _features(rng, n1, d)
    gen = _features(rng, n2, d, shift=shift, scale=scale)
    got = frechet_distance(FeatureStats.from_features(real), FeatureStats.from_features(gen))
    want = _pytorch_fid_reference(real, gen)
    # Measured agreement 3e-15 to 5e-14 relative (D = 8 to 256); the margin is for other BLAS builds.
    assert got.value == pytest.approx(want, rel=1e-6)
    assert (got.n_real, got.n_gen, got.dim, got.rank_deficient) == (n1, n2, d, False)


def test_frechet_matches_torchmetrics_compute_fid():
    import torch
    import torchmetrics.image.fid as fid_mod

    rng = np.random.default_rng(5)
    real, gen = _features(rng, 600, 24), _features(rng, 500, 24, shift=0.2, scale=0.8)
    got = frechet_distance(FeatureStats.from_features(real), FeatureStats.from_features(gen)).value
    t = [
        torch.from_numpy(a)
        for a in (real.mean(0), np.cov(real, rowvar=False), gen.mean(0), np.cov(gen, rowvar=False))
    ]
    want = float(fid_mod._compute_fid(*t))
    assert got == pytest.approx(want, rel=1e-6)


def test_gaussian_frechet_closed_forms():
    """Known covariances, no sampling: commuting pair Σ = Q diag(a) Qᵀ, Q diag(b) Qᵀ gives
    ‖Δμ‖² + Σ(√a − √b)²; s²I against Q diag(λ) Qᵀ gives Tr((Σ₁Σ₂)^½) = s·Σ√λ."""
    rng = np.random.default_rng(0)
    d = 12
    q = ortho_group.rvs(d, random_state=1)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = gaussian_frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-12)

    s, lam = 1.7, rng.uniform(0.05, 3.0, d)
    want = s**2 * d + lam.sum() - 2 * s * np.sqrt(lam).sum()
    got = gaussian_frechet_distance(np.zeros(d), s**2 * np.eye(d), np.zeros(d), q @ np.diag(lam) @ q.T)
    assert got == pytest.approx(want, rel=1e-10)


def test_frechet_shift_of_same_samples_is_squared_mean_shift():
    """gen = real + Δ: identical covariances, so d² = ‖Δ‖² exactly (analytically)."""
    rng = np.random.default_rng(3)
    real = _features(rng, 800, 16)
    delta = rng.normal(0, 0.5, 16)
    got = frechet_distance(FeatureStats.from_features(real), FeatureStats.from_features(real + delta))
    # Raw-moment covariances of real and real+Δ differ by cancellation round-off only (~1e-14).
    assert got.value == pytest.approx(float(delta @ delta), rel=1e-9)


def test_frechet_identical_and_same_distribution():
    rng = np.random.default_rng(4)
    real = _features(rng, 3000, 6)
    stats = FeatureStats.from_features(real)
    assert frechet_distance(stats, stats).value == pytest.approx(0.0, abs=1e-10)
    same = frechet_distance(stats, FeatureStats.from_features(_features(rng, 3000, 6))).value
    shifted = frechet_distance(stats, FeatureStats.from_features(_features(rng, 3000, 6, shift=0.5))).value
    # Sampling bias of two n=3000 draws in 6-D is ~D²/n ≈ 0.01; a 0.5 shift per dimension gives ≈ 6·0.5².
    assert 0.0 <= same < 0.05
    assert shifted > 20 * same + 0.5


def test_merged_shards_equal_single_pass():
    rng = np.random.default_rng(6)
    real, gen = _features(rng, 257, 20), _features(rng, 190, 20, shift=0.1, scale=1.2)
    edges = [0, 1, 2, 50, 51, 200, 257]  # uneven, two 1-row shards and an empty one appended below
    shards = [FeatureStats.from_features(real[a:b]) for a, b in itertools.pairwise(edges)]
    shards.append(FeatureStats.from_features(np.empty((0, 20))))
    merged = FeatureStats.merge_all(shards[::-1])
    single = FeatureStats.from_features(real)
    assert merged.n == single.n == 257
    np.testing.assert_allclose(merged.mean(), real.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.cov(), np.cov(real, rowvar=False), rtol=1e-9, atol=1e-12)
    gstats = FeatureStats.from_features(gen)
    a, b = frechet_distance(merged, gstats).value, frechet_distance(single, gstats).value
    assert a == pytest.approx(b, rel=1e-6, abs=1e-6)
    assert shards[0].merge(shards[1]).n == 2


def test_stats_accept_float32_and_are_immutable():
    rng = np.random.default_rng(7)
    x32 = _features(rng, 100, 5).astype(np.float32)
    s32, s64 = FeatureStats.from_features(x32), FeatureStats.from_features(x32.astype(np.float64))
    assert s32.sum.dtype == s32.outer_sum.dtype == np.float64
    np.testing.assert_array_equal(s32.outer_sum, s64.outer_sum)
    with pytest.raises(ValueError, match="read-only"):
        s32.sum[0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s32.n = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", ["stats.npz", "stats.bin"])
def test_stats_save_load_roundtrip(tmp_path, name):
    rng = np.random.default_rng(8)
    stats = FeatureStats.from_features(_features(rng, 30, 7))
    path = tmp_path / "shards" / name
    stats.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temp file left, no ".npz" added
    back = FeatureStats.load(path)
    assert back.n == stats.n
    np.testing.assert_array_equal(back.sum, stats.sum)
    np.testing.assert_array_equal(back.outer_sum, stats.outer_sum)


def test_stats_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        FeatureStats.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        FeatureStats.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ValueError, match="missing format, n, outer_sum, sum"):
        FeatureStats.load(other)


def test_rank_deficient_flag_and_value():
    rng = np.random.default_rng(9)
    d = 40
    real = _features(rng, 25, d)  # n < D: singular covariance
    delta = rng.normal(0, 0.3, d)
    got = frechet_distance(FeatureStats.from_features(real), FeatureStats.from_features(real + delta))
    assert got.rank_deficient
    # The eigen route stays exact for singular covariances (measured 1e-14; pytorch-fid's sqrtm route is
    # off by 5e-8, and so was the eigen route before unresolvable eigenvalues were zeroed: 1e-7).
    assert got.value == pytest.approx(float(delta @ delta), rel=1e-10)
    # Rank ≤ n−1, so n = D is still deficient and n = D+1 is the first full-rank size.
    big = FeatureStats.from_features(_features(rng, 500, d))
    assert frechet_distance(FeatureStats.from_features(_features(rng, d, d)), big).rank_deficient
    assert not frechet_distance(FeatureStats.from_features(_features(rng, d + 1, d)), big).rank_deficient


def test_frechet_errors():
    rng = np.random.default_rng(10)
    ok = FeatureStats.from_features(_features(rng, 10, 4))
    one = FeatureStats.from_features(_features(rng, 1, 4))
    with pytest.raises(ValueError, match="at least 2 samples.*generated set has 1"):
        frechet_distance(ok, one)
    with pytest.raises(ValueError, match="differ in dimension: D=4 vs D=5"):
        frechet_distance(ok, FeatureStats.from_features(_features(rng, 10, 5)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        one.cov()
    with pytest.raises(ValueError, match="cannot merge"):
        ok.merge(FeatureStats.from_features(_features(rng, 10, 5)))
    bad = _features(rng, 10, 4)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or ±inf in 1 row\(s\) \(row index \[3\]\)"):
        FeatureStats.from_features(bad)
    with pytest.raises(ValueError, match="2-D"):
        FeatureStats.from_features(np.zeros(5))
    with pytest.raises(ValueError, match="floating-point"):
        FeatureStats.from_features(np.zeros((5, 3), dtype=np.int64))


# ---------------------------------------------------------------------------------------------------
# KID


def _mmd2_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Bińkowski et al.'s unbiased MMD² with k(a, b) = (a·b/d + 1)³: off-diagonal means within, full
    mean across."""
    m, d = x.shape
    off = ~np.eye(m, dtype=bool)
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    return float(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())


def _kid_subsets(seed: int, n_real: int, n_gen: int, subsets: int, m: int):
    """The documented draw order: per subset, real indices then generated indices."""
    rng = np.random.default_rng(seed)
    for _ in range(subsets):
        yield rng.choice(n_real, m, replace=False), rng.choice(n_gen, m, replace=False)


def test_poly_mmd2_matches_pairwise_loop():
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(6, 3)), rng.normal(0.5, 1, size=(6, 3))

    def k(a, b):
        return (float(np.dot(a, b)) / 3 + 1) ** 3

    m = 6
    want = (
        sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        - 2 * sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    )
    assert poly_mmd2(x, y) == pytest.approx(want, rel=1e-12)


def test_kid_matches_numpy_reference_on_same_subsets():
    rng = np.random.default_rng(12)
    real, gen = _features(rng, 120, 16), _features(rng, 90, 16, shift=0.2)
    got = kernel_inception_distance(real, gen, np.random.default_rng(99), subsets=15, subset_size=50)
    ref = np.array([_mmd2_reference(real[i], gen[j]) for i, j in _kid_subsets(99, 120, 90, 15, 50)])
    assert got.mean == pytest.approx(ref.mean(), rel=1e-10)
    assert got.std == pytest.approx(ref.std(ddof=0), rel=1e-8)  # population std, as torchmetrics
    assert (got.subset_size, got.subsets, got.clamped, got.n_real, got.n_gen) == (50, 15, False, 120, 90)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save all extracted features")
def test_kid_matches_torchmetrics():
    import torch
    import torchmetrics.image.kid as kid_mod

    rng = np.random.default_rng(13)
    real, gen = _features(rng, 80, 12), _features(rng, 70, 12, scale=1.4)
    # Same subsets through torchmetrics' kernel and estimator.
    got = kernel_inception_distance(real, gen, np.random.default_rng(5), subsets=4, subset_size=30)
    ref = [
        float(kid_mod.poly_mmd(torch.from_numpy(real[i]), torch.from_numpy(gen[j])))
        for i, j in _kid_subsets(5, 80, 70, 4, 30)
    ]
    assert got.mean == pytest.approx(np.mean(ref), rel=1e-10)
    # End to end: with subset_size = N every subset is the whole set (permuted), so torchmetrics'
    # global-RNG draws do not matter and the two metric objects must agree.
    real70 = real[:70]
    metric = kid_mod.KernelInceptionDistance(feature=torch.nn.Identity(), subsets=2, subset_size=70)
    metric.update(torch.from_numpy(real70), real=True)
    metric.update(torch.from_numpy(gen), real=False)
    tm_mean, _ = metric.compute()
    ours = kernel_inception_distance(real70, gen, np.random.default_rng(0), subsets=2, subset_size=70)
    assert ours.mean == pytest.approx(float(tm_mean), rel=1e-10)


def test_kid_clamps_subset_size():
    rng = np.random.default_rng(14)
    real, gen = _features(rng, 40, 8), _features(rng, 55, 8, shift=0.3)
    got = kernel_inception_distance(real, gen, np.random.default_rng(0), subsets=5, subset_size=1000)
    assert (got.subset_size, got.requested_subset_size, got.clamped) == (40, 1000, True)
    ref = np.array([_mmd2_reference(real[i], gen[j]) for i, j in _kid_subsets(0, 40, 55, 5, 40)])
    assert got.mean == pytest.approx(ref.mean(), rel=1e-10)


def test_kid_seeded_and_separates_distributions():
    rng = np.random.default_rng(15)
    real = _features(rng, 300, 10)
    same, shifted = _features(rng, 300, 10), _features(rng, 300, 10, shift=0.4)
    a = kernel_inception_distance(real, same, np.random.default_rng(1), subsets=10, subset_size=100)
    b = kernel_inception_distance(real, same, np.random.default_rng(1), subsets=10, subset_size=100)
    c = kernel_inception_distance(real, same, np.random.default_rng(2), subsets=10, subset_size=100)
    far = kernel_inception_distance(real, shifted, np.random.default_rng(1), subsets=10, subset_size=100)
    assert a == b
    assert a.mean != c.mean
    assert abs(a.mean) < 3 * a.std + 1e-3  # unbiased: centred on 0 for equal distributions
    assert far.mean > 10 * (abs(a.mean) + a.std)


def test_kid_errors():
    rng = np.random.default_rng(16)
    x = _features(rng, 10, 4)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        kernel_inception_distance(x, x, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 samples per set; got n_real=10, n_gen=1"):
        kernel_inception_distance(x, x[:1], np.random.default_rng(0))
    with pytest.raises(ValueError, match="subsets must be"):
        kernel_inception_distance(x, x, np.random.default_rng(0), subsets=0)
    with pytest.raises(ValueError, match="subset_size must be"):
        kernel_inception_distance(x, x, np.random.default_rng(0), subset_size=1)
    with pytest.raises(ValueError, match="differ in dimension"):
        kernel_inception_distance(x, _features(rng, 10, 5), np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------
# Precision, recall, density, coverage


def _prdc_reference(real: np.ndarray, gen: np.ndarray, k: int) -> dict[str, float]:
    """Naeem et al. 2020, Eq. 1-4, with scipy's cdist: k-th nearest *other* sample, strict balls."""

    def radii(a):
        d = cdist(a, a)
        np.fill_diagonal(d, np.inf)
        return np.sort(d, axis=1)[:, k - 1]

    r, s = radii(real), radii(gen)
    d_rg = cdist(real, gen)  # (N, M)
    in_real = d_rg < r[:, None]
    in_gen = d_rg < s[None, :]
    return {
        "precision": in_real.any(axis=0).mean(),
        "recall": in_gen.any(axis=1).mean(),
        "density": in_real.sum() / (k * gen.shape[0]),
        "coverage": in_real.any(axis=1).mean(),
    }


@pytest.mark.parametrize(("n", "m", "d", "k"), [(150, 120, 6, 5), (90, 200, 32, 3), (60, 60, 2, 1)])
def test_prdc_matches_cdist_reference(n, m, d, k):
    rng = np.random.default_rng(n + m + d)
    real, gen = _features(rng, n, d), _features(rng, m, d, shift=0.2, scale=1.2)
    got = prdc(real, gen, k=k)
    assert got.as_dict() == pytest.approx(_prdc_reference(real, gen, k), abs=1e-12)
    assert (got.k, got.n_real, got.n_gen) == (k, n, m)
    # Blocking changes nothing.
    assert prdc(real, gen, k=k, block_rows=7) == got


def test_prdc_matches_authors_package(capsys):
    import prdc as prdc_pkg  # the authors' reference package (test extra)

    rng = np.random.default_rng(17)
    real, gen = _features(rng, 200, 16), _features(rng, 150, 16, shift=0.3)
    want = prdc_pkg.compute_prdc(real_features=real, fake_features=gen, nearest_k=5)
    capsys.readouterr()  # the package prints sample counts
    assert prdc(real, gen, k=5).as_dict() == pytest.approx({k: float(v) for k, v in want.items()}, abs=1e-12)


def test_prdc_exact_ties_with_large_offset():
    """Integer lattice points shifted by 1e8: many exactly equal distances and duplicates, and the
    ‖a‖² + ‖b‖² − 2a·b shortcut loses every digit. Differences of these floats are exact, so cdist is
    the exact answer; the blockwise Gram computation must re-decide every unsure comparison."""
    rng = np.random.default_rng(18)
    real = rng.integers(0, 4, size=(120, 3)).astype(np.float64) + 1e8
    gen = rng.integers(0, 4, size=(90, 3)).astype(np.float64) + 1e8
    want = _prdc_reference(real, gen, 5)
    # The fixture must defeat the plain shortcut, or this test would check nothing.
    naive = np.sqrt(np.maximum((real**2).sum(1)[:, None] + (gen**2).sum(1)[None] - 2 * real @ gen.T, 0))
    assert np.abs(naive - cdist(real, gen)).max() > 1.0
    assert prdc(real, gen, k=5, block_rows=16).as_dict() == pytest.approx(want, abs=1e-12)


def test_prdc_known_cases():
    rng = np.random.default_rng(19)
    real = _features(rng, 100, 8)
    same = prdc(real, real.copy())
    # Strict balls: each real ball holds its own centre and the k−1 strictly nearer neighbours, not the
    # k-th (at distance exactly r_i): k generated samples per ball, so density is exactly 1 too.
    assert same.as_dict() == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    far = prdc(real, real + 1e3)
    assert far.as_dict() == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # float32 input is upcast: same result as the float64 copy.
    r32, g32 = real.astype(np.float32), _features(rng, 80, 8, shift=0.2).astype(np.float32)
    assert prdc(r32, g32) == prdc(r32.astype(np.float64), g32.astype(np.float64))


def test_prdc_errors():
    rng = np.random.default_rng(20)
    x = _features(rng, 10, 4)
    with pytest.raises(ValueError, match="need at least k\\+1=6 samples per set.*n_gen=5"):
        prdc(x, x[:5], k=5)
    with pytest.raises(ValueError, match="k must be"):
        prdc(x, x, k=0)
    with pytest.raises(ValueError, match="differ in dimension"):
        prdc(x, _features(rng, 10, 3))
    with pytest.raises(TypeError, match="numpy array"):
        prdc(x.tolist(), x)  # type: ignore[arg-type]
