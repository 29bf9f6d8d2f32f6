"""α-precision / β-recall against the authors' reference formula and a direct bootstrap implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from audit.metrics.functional.alpha_beta import (
    ALPHAS,
    alpha_beta,
    alpha_precision_beta_recall,
    prepare_supports,
)
from audit.stats import case_resample_weights, half_sample_weights


def _reference(
    real: np.ndarray, synth: np.ndarray, exact: bool = False
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The reference implementation's steps (synthcity AlphaPrecision.metrics, Alaa et al.'s
    compute_alpha_precision), with scikit-learn's neighbours and numpy's quantiles; ``exact`` takes the
    neighbours from scipy's cdist instead (by differences: copies are at exactly 0, where
    scikit-learn's matrix-product distances can leave 1e-8 and misrank exact ties)."""
    centre = np.mean(real, axis=0)
    radii = np.quantile(np.sqrt(np.sum((real - centre) ** 2, axis=1)), ALPHAS)
    synth_to_centre = np.sqrt(np.sum((synth - centre) ** 2, axis=1))
    if exact:
        rr = cdist(real, real)
        np.fill_diagonal(rr, np.inf)
        real_to_real = rr.min(axis=1)
        rs = cdist(real, synth)
        real_to_synth, arg = rs.min(axis=1), rs.argmin(axis=1)
    else:
        real_to_real = NearestNeighbors(n_neighbors=2).fit(real).kneighbors(real)[0][:, 1]
        real_to_synth, arg = NearestNeighbors(n_neighbors=1).fit(synth).kneighbors(real)
        real_to_synth, arg = real_to_synth[:, 0], arg[:, 0]
    closest = np.sqrt(np.sum((synth[arg] - np.mean(synth, axis=0)) ** 2, axis=1))
    closest_radii = np.quantile(closest, ALPHAS)
    precision = np.array([np.mean(synth_to_centre <= r) for r in radii])
    recall = np.array([np.mean((real_to_synth <= real_to_real) & (closest <= q)) for q in closest_radii])
    step = ALPHAS[1] - ALPHAS[0]
    return (
        precision,
        recall,
        1 - 2 * np.abs(ALPHAS - precision).sum() * step,
        1 - 2 * np.abs(ALPHAS - recall).sum() * step,
    )


def _direct_replicate(real, synth, case, w):
    """One bootstrap replicate by materialising the multiset for means and quantiles, and searching
    neighbours among the distinct drawn cases with scipy's cdist."""
    present = np.flatnonzero(w > 0)
    real_multi = np.repeat(real, w.astype(int), axis=0)
    synth_w = w[case].astype(int)
    synth_multi = np.repeat(synth, synth_w, axis=0)
    centre = real_multi.mean(axis=0)
    radii = np.quantile(np.linalg.norm(real_multi - centre, axis=1), ALPHAS)
    precision = np.array([np.mean(np.linalg.norm(synth_multi - centre, axis=1) <= r) for r in radii])
    rr = cdist(real[present], real[present])
    np.fill_diagonal(rr, np.inf)
    real_to_real = rr.min(axis=1)
    synth_rows = np.flatnonzero(synth_w > 0)
    rs = cdist(real[present], synth[synth_rows])
    real_to_synth = rs.min(axis=1)
    arg = synth_rows[rs.argmin(axis=1)]
    closest = np.linalg.norm(synth[arg] - synth_multi.mean(axis=0), axis=1)
    weights = w[present].astype(int)
    closest_radii = np.quantile(np.repeat(closest, weights), ALPHAS)
    covered = real_to_synth <= real_to_real
    recall = np.array([np.sum(weights * (covered & (closest <= q))) / weights.sum() for q in closest_radii])
    return precision, recall


@pytest.mark.parametrize("shift, spread", [(0.0, 1.0), (0.6, 1.0), (0.0, 0.3), (0.0, 2.5)])
def test_point_estimate_matches_reference(shift, spread):
    rng = np.random.default_rng(int(shift * 10 + spread * 100))
    real = rng.standard_normal((200, 16))
    synth = shift + spread * rng.standard_normal((200, 16))
    supports = prepare_supports(real, synth)
    out = alpha_beta(supports, np.ones(200))
    precision, recall, a, b = _reference(real, synth)
    np.testing.assert_allclose(out.precision_curve[0], precision, atol=1e-12)
    np.testing.assert_allclose(out.recall_curve[0], recall, atol=1e-12)
    assert out.alpha_precision[0] == pytest.approx(a, abs=1e-12)
    assert out.beta_recall[0] == pytest.approx(b, abs=1e-12)
    assert alpha_precision_beta_recall(real, synth) == pytest.approx((a, b), abs=1e-12)


def test_copies_duplicates_and_ties_match_the_reference_bit_for_bit():
    rng = np.random.default_rng(8)
    real = rng.standard_normal((120, 32))
    real[60:70] = real[:10]  # duplicated references: nearest other real row at exactly 0
    synth = rng.standard_normal((120, 32))
    synth[:40] = real[rng.permutation(120)[:40]]  # exact copies of references (a memorising model)
    synth[40:50] = synth[:10]  # duplicated samples
    grid = np.round(rng.standard_normal((120, 4)) * 2) / 2  # integer-ish grid: many equal distances
    for r, g in ((real, synth), (grid, np.round(rng.standard_normal((120, 4)) * 2) / 2)):
        out = alpha_beta(prepare_supports(r, g), np.ones(120))
        precision, recall, a, b = _reference(r, g, exact=True)
        np.testing.assert_array_equal(out.precision_curve[0], precision)
        np.testing.assert_array_equal(out.recall_curve[0], recall)
        assert (out.alpha_precision[0], out.beta_recall[0]) == (a, b)


def test_weighted_quantile_is_numpys_on_the_repeated_multiset():
    from audit.metrics.functional.alpha_beta import _weighted_quantile

    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        values = np.round(rng.standard_normal(n), int(rng.integers(1, 6)))
        weights = rng.integers(0, 4, n).astype(float)
        weights[rng.integers(n)] += 1  # at least one value present
        got = _weighted_quantile(values[None], weights[None], ALPHAS)[0]
        np.testing.assert_array_equal(got, np.quantile(np.repeat(values, weights.astype(int)), ALPHAS))


def test_many_samples_per_case_need_no_fallback_search(monkeypatch):
    import audit.metrics.functional.alpha_beta as ab

    rng = np.random.default_rng(9)
    n, per_case = 60, 16
    real = rng.standard_normal((n, 8))
    # A deterministic model: every case's 16 samples are the same image.
    synth = np.repeat(real + 0.1 * rng.standard_normal((n, 8)), per_case, axis=0)
    case = np.repeat(np.arange(n), per_case)
    supports = prepare_supports(real, synth, case)
    calls = []
    original = ab._brute
    monkeypatch.setattr(ab, "_brute", lambda *a: calls.append(1) or original(*a))
    out = alpha_beta(supports, half_sample_weights(rng, n, 200))
    assert not calls  # 32 distinct cases listed per reference: a half-sample keeps one of them
    w = half_sample_weights(np.random.default_rng(1), n, 1)[0]
    precision, recall = _direct_replicate(real, synth, case, w)
    single = alpha_beta(supports, w)
    np.testing.assert_allclose(single.precision_curve[0], precision, atol=1e-12)
    np.testing.assert_allclose(single.recall_curve[0], recall, atol=1e-12)
    assert np.isfinite(out.beta_recall).all()


def test_metrics_move_the_right_way():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((400, 8))
    same = rng.standard_normal((400, 8))
    collapsed = 0.2 * rng.standard_normal((400, 8))  # inside the real bulk, no diversity
    off = 3.0 + rng.standard_normal((400, 8))  # outside the real support
    a_same, b_same = alpha_precision_beta_recall(real, same)
    a_col, b_col = alpha_precision_beta_recall(real, collapsed)
    a_off, _ = alpha_precision_beta_recall(real, off)
    # Same distribution: precision near its maximum of 1; recall near 0.5, its ceiling when every real
    # row's nearest synthetic and nearest real neighbour are equally likely to be the closer one.
    assert a_same > 0.85 and b_same > 0.4
    assert b_col < 0.2 and a_col < 0.5  # mode collapse: every synthetic row in the smallest supports
    assert a_off < 0.1  # off-support samples: precision falls


def test_resampled_replicates_match_direct_implementation():
    rng = np.random.default_rng(11)
    n = 60
    real = rng.standard_normal((n, 6))
    # Two samples per case, for 50 of the cases, in shuffled order.
    case = rng.permutation(np.repeat(np.arange(50), 2))
    synth = 0.3 + rng.standard_normal((case.size, 6))
    supports = prepare_supports(real, synth, case)
    weights = np.concatenate([case_resample_weights(rng, n, 25), half_sample_weights(rng, n, 25)])
    out = alpha_beta(supports, weights)
    for b in range(weights.shape[0]):
        precision, recall = _direct_replicate(real, synth, case, weights[b])
        np.testing.assert_allclose(out.precision_curve[b], precision, atol=1e-12, err_msg=f"replicate {b}")
        np.testing.assert_allclose(out.recall_curve[b], recall, atol=1e-12, err_msg=f"replicate {b}")


def test_replicates_that_miss_every_listed_neighbour_search_all_rows():
    rng = np.random.default_rng(5)
    real = rng.standard_normal((80, 4))
    synth = rng.standard_normal((80, 4))
    supports = prepare_supports(real, synth)
    # Keep only cases far down each other's neighbour lists: the listed 32 neighbours of most rows are
    # all absent, so the fallback search decides.
    w = np.zeros(80)
    w[[0, 79, 40]] = [2, 1, 3]
    out = alpha_beta(supports, w)
    precision, recall = _direct_replicate(real, synth, np.arange(80), w)
    np.testing.assert_allclose(out.precision_curve[0], precision, atol=1e-12)
    np.testing.assert_allclose(out.recall_curve[0], recall, atol=1e-12)


def test_undefined_replicates_are_nan_and_bad_input_is_refused():
    rng = np.random.default_rng(2)
    real, synth = rng.standard_normal((10, 3)), rng.standard_normal((10, 3))
    supports = prepare_supports(real, synth)
    one_case = np.zeros(10)
    one_case[4] = 10
    assert np.isnan(alpha_beta(supports, one_case).beta_recall[0])
    with pytest.raises(ValueError, match="synthetic_case"):
        prepare_supports(real, synth[:7])
    with pytest.raises(ValueError, match="same feature extractor"):
        prepare_supports(real, synth[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        prepare_supports(np.where(np.eye(10, 3) > 0, np.nan, real), synth)
    with pytest.raises(ValueError, match="integer counts"):
        alpha_beta(supports, np.full(10, 0.5))
