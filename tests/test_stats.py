import numpy as np
import pytest
from scipy import stats as sps

from audit.stats import bootstrap_mean_ci


def test_matches_scipy_percentile_bootstrap():
    x = np.random.default_rng(1).gamma(2.0, 1.0, size=60)
    lo, hi = bootstrap_mean_ci(x, np.random.default_rng(0), resamples=20000)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(5))
    # Two independent Monte Carlo estimates of the same quantiles: agree to ~1% of the interval width.
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.03 * width)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.03 * width)


def test_coverage_is_about_nominal():
    rng = np.random.default_rng(123)
    hits, trials = 0, 400
    for _ in range(trials):
        x = rng.normal(5.0, 2.0, size=40)
        lo, hi = bootstrap_mean_ci(x, rng, resamples=1000)
        hits += lo <= 5.0 <= hi
    # Percentile bootstrap undercovers slightly at n=40; binomial sd at 400 trials is ~1.1%.
    assert 0.90 <= hits / trials <= 0.98


def test_deterministic_and_degenerate_inputs():
    x = np.arange(10.0)
    a = bootstrap_mean_ci(x, np.random.default_rng(7))
    b = bootstrap_mean_ci(x, np.random.default_rng(7))
    assert a == b and a[0] < x.mean() < a[1]
    assert all(np.isnan(bootstrap_mean_ci(np.array([1.0]), np.random.default_rng(0))))
    assert bootstrap_mean_ci(np.full(5, 2.0), np.random.default_rng(0)) == (2.0, 2.0)
    lo, hi = bootstrap_mean_ci(np.array([1.0, np.inf, 3.0]), np.random.default_rng(0))
    assert hi == np.inf and not np.isnan(lo)


# --- case-resampling bootstrap of distribution-level classification metrics ----------------------


def _materialised(probs, targets, counts, row_case):
    """The bootstrap resample as data: every row of case c repeated counts[c] times."""
    reps = counts[row_case].astype(int)
    return np.repeat(probs, reps, axis=0), np.repeat(targets, reps, axis=0)


def test_weighted_auc_equals_sklearn_on_materialised_resamples():
    from sklearn.metrics import roc_auc_score

    from audit.stats import case_resample_weights, weighted_auc

    rng = np.random.default_rng(0)
    n_cases, per_case = 30, 2
    row_case = np.repeat(np.arange(n_cases), per_case)
    # Rounded probabilities: ties between positives and negatives must count one half.
    probs = np.round(rng.uniform(size=(n_cases * per_case, 3)), 1)
    labels = rng.uniform(size=(n_cases, 3)) < [0.5, 0.2, 0.0]  # class 3 never positive
    targets = labels[row_case]
    counts = case_resample_weights(np.random.default_rng(1), n_cases, 50)
    got = weighted_auc(probs, targets, counts[:, row_case])
    for b in range(50):
        p, t = _materialised(probs, targets, counts[b], row_case)
        for j in range(3):
            if t[:, j].all() or not t[:, j].any():
                assert np.isnan(got[b, j])
            else:
                assert got[b, j] == pytest.approx(roc_auc_score(t[:, j], p[:, j]), abs=1e-12)


def test_weighted_f1_equals_sklearn_on_materialised_resamples():
    from sklearn.metrics import f1_score

    from audit.stats import case_resample_weights, weighted_f1

    rng = np.random.default_rng(2)
    n_cases = 25
    row_case = np.arange(n_cases)
    probs = rng.uniform(size=(n_cases, 2))
    targets = rng.uniform(size=(n_cases, 2)) < 0.4
    thresholds = np.array([0.5, np.nan])  # the second class has no threshold: not scored
    counts = case_resample_weights(np.random.default_rng(3), n_cases, 40)
    got = weighted_f1(probs, targets, thresholds, counts)
    assert np.isnan(got[:, 1]).all()
    for b in range(40):
        p, t = _materialised(probs, targets, counts[b], row_case)
        if t[:, 0].any():
            assert got[b, 0] == pytest.approx(f1_score(t[:, 0], p[:, 0] >= 0.5), abs=1e-12)
        else:
            assert np.isnan(got[b, 0])


def test_case_resample_weights_are_multinomial_counts():
    from audit.stats import case_resample_weights

    w = case_resample_weights(np.random.default_rng(0), 7, 2000)
    assert w.shape == (2000, 7) and (w.sum(axis=1) == 7).all()
    # Each case is drawn Binomial(7, 1/7) times: mean 1.
    assert w.mean() == pytest.approx(1.0, abs=0.03)


def test_percentile_ci_ignores_undefined_replicates():
    from audit.stats import percentile_ci

    x = np.r_[np.linspace(0, 1, 101), [np.nan] * 10]
    lo, hi = percentile_ci(x, 0.9)
    assert (lo, hi) == pytest.approx(np.quantile(np.linspace(0, 1, 101), [0.05, 0.95]))
    assert np.isnan(percentile_ci(np.r_[[0.5] * 3, [np.nan] * 10], 0.9)).all()


def test_median_ci_reduces_the_mean_cis_resamples_by_their_median():
    from audit.stats import bootstrap_mean_ci, bootstrap_median_ci

    x = np.random.default_rng(3).gamma(2.0, size=37)
    idx = np.random.default_rng(11).integers(0, x.size, size=(500, x.size))
    want = tuple(np.quantile(np.median(x[idx], axis=1), [0.05, 0.95]))
    assert bootstrap_median_ci(x, np.random.default_rng(11), 500, 0.9) == pytest.approx(want, abs=0)
    mean_want = tuple(np.quantile(x[idx].mean(axis=1), [0.05, 0.95]))
    assert bootstrap_mean_ci(x, np.random.default_rng(11), 500, 0.9) == pytest.approx(mean_want, abs=0)
    assert np.isnan(bootstrap_median_ci(x[:1], np.random.default_rng(0))).all()


def test_jackknife_interval_of_a_mean_is_the_textbook_standard_error():
    """Delete-d jackknife (Shao & Wu 1989) over half-samples: for the sample mean its variance is
    s²/n exactly in expectation over subsets; Monte Carlo over 20k subsets gets within 1.5 %."""
    from scipy.stats import norm

    from audit.stats import half_sample_weights, jackknife_interval

    rng = np.random.default_rng(0)
    for n in (101, 40):
        x = rng.gamma(2.0, size=n)
        w = half_sample_weights(rng, n, 20_000)
        assert set(np.unique(w)) == {0.0, 1.0} and (w.sum(axis=1) == (n + 1) // 2).all()
        replicates = (w @ x) / w.sum(axis=1)
        lo, hi = jackknife_interval(float(x.mean()), replicates, n, confidence=0.9)
        se = x.std(ddof=1) / np.sqrt(n)
        assert (lo + hi) / 2 == pytest.approx(x.mean())
        assert (hi - lo) / 2 == pytest.approx(norm.ppf(0.95) * se, rel=0.015)
    assert np.isnan(jackknife_interval(0.5, np.full(100, np.nan), 50)).all()
    assert np.isnan(jackknife_interval(0.5, np.zeros(100), 1)).all()
