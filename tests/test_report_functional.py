"""reports.functional against independent references: pingouin, scikit-learn, the krippendorff
package, scipy and statsmodels; bootstrap intervals against scipy.stats.bootstrap, a closed-form
bootstrap variance and coverage simulations."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import krippendorff
import numpy as np
import pandas as pd
import pingouin as pg
import pytest
from scipy import stats as sps
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score
from statsmodels.stats.multitest import multipletests

import reports.functional.paired as paired_module
from audit.stats import bootstrap_mean_ci, case_resample_weights
from reports.functional.agreement import (
    icc,
    krippendorff_alpha,
    mean_pairwise_kappa,
    turing_by_reader,
    turing_stats,
    weighted_kappa,
)
from reports.functional.paired import holm, paired_effect, two_way_bootstrap_mean, wilcoxon_pratt

REPO = Path(__file__).resolve().parents[1]
LABELS = [1, 2, 3, 4, 5]


def reader_scores(seed: int, n_cases: int = 30, n_readers: int = 4, missing: float = 0.0) -> pd.DataFrame:
    """Long frame of 1-5 scores: case quality + reader severity + noise, optionally with gaps."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(3.0, 1.0, n_cases)
    severity = rng.normal(0.0, 0.5, n_readers)
    raw = quality[:, None] + severity[None, :] + rng.normal(0.0, 0.7, (n_cases, n_readers))
    scores = np.clip(np.rint(raw), 1, 5)
    scores[rng.random(scores.shape) < missing] = np.nan
    cases = [f"c{i:02d}" for i in range(n_cases)]
    readers = [f"r{j}" for j in range(n_readers)]
    frame = pd.DataFrame(
        {
            "case": np.repeat(cases, n_readers),
            "reader": np.tile(readers, n_cases),
            "score": pd.array(scores.ravel(), dtype="Float64").astype("Int64"),  # like the export
        }
    )
    return frame


# --- ICC ---------------------------------------------------------------------------------------------


def _pingouin_icc(frame: pd.DataFrame) -> dict[str, tuple[float, np.ndarray]]:
    ref = pg.intraclass_corr(
        frame.assign(score=frame.score.astype("float64")),
        targets="case",
        raters="reader",
        ratings="score",
        nan_policy="omit",
    )
    ci_col = "CI95" if "CI95" in ref.columns else "CI95%"
    # pingouin >= 0.6 names the rows ICC(A,1)/ICC(A,k); older releases ICC2/ICC2k.
    names = {"ICC(A,1)": "icc2_1", "ICC2": "icc2_1", "ICC(A,k)": "icc2_k", "ICC2k": "icc2_k"}
    return {
        names[row.Type]: (float(row.ICC), np.asarray(row[ci_col], dtype=float))
        for _, row in ref.iterrows()
        if row.Type in names
    }


# pingouin's own anova trips a pandas deprecation (dropna inplace); not ours to fix.
@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")
@pytest.mark.parametrize("seed,missing", [(0, 0.0), (1, 0.0), (2, 0.15), (3, 0.05)])
def test_icc_matches_pingouin(seed, missing, monkeypatch):
    monkeypatch.setitem(pg.options, "round.column.CI95", None)  # pingouin rounds CIs to 2 dp by default
    frame = reader_scores(seed, missing=missing)
    mine = icc(frame)
    ref = _pingouin_icc(frame)
    for key in ("icc2_1", "icc2_k"):
        value, ci = ref[key]
        assert mine[key] == pytest.approx(value, abs=1e-12)
        np.testing.assert_allclose(mine[f"{key}_ci"], ci, atol=1e-10)
    expected_dropped = frame.pivot(index="case", columns="reader", values="score").isna().any(axis=1).sum()
    assert mine["n_targets_dropped"] == expected_dropped
    assert mine["n_targets"] + expected_dropped == 30


def test_icc_errors():
    frame = reader_scores(0)
    with pytest.raises(ValueError, match="at least 2 raters"):
        icc(frame[frame.reader == "r0"])
    sparse = frame.copy()
    sparse.loc[sparse.case != "c00", "score"] = pd.NA
    sparse.loc[(sparse.case != "c00") & (sparse.reader != "r0"), "score"] = 3
    with pytest.raises(ValueError, match="at least 2 targets scored by all 4 raters, found 1 of 30"):
        icc(sparse)
    with pytest.raises(ValueError, match=r"c00.*more than once.*r0.*read_number"):
        icc(pd.concat([frame, frame.iloc[:1]]))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['case_id'\]"):
        icc(frame, target="case_id")


# --- weighted kappa ----------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["quadratic", "linear", None])
@pytest.mark.parametrize("seed", range(5))
def test_weighted_kappa_matches_sklearn(seed, weights):
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 6, 50)
    b = np.clip(a + rng.integers(-2, 3, 50), 1, 5)
    ref = cohen_kappa_score(a, b, weights=weights, labels=LABELS)
    assert weighted_kappa(a, b, weights=weights) == pytest.approx(ref, abs=1e-12)


def test_weighted_kappa_unused_level_still_spaces_the_weights():
    # Nobody scores 3: with the fixed 1-5 labels, 2 vs 4 is two steps apart, not one.
    a = np.array([2, 4, 2, 4, 2, 4, 1, 5, 2, 4, 5, 1])
    b = np.array([4, 2, 2, 4, 4, 2, 1, 5, 2, 4, 5, 2])
    assert 3 not in a and 3 not in b
    ref = cohen_kappa_score(a, b, weights="quadratic", labels=LABELS)
    assert weighted_kappa(a, b) == pytest.approx(ref, abs=1e-12)
    # The fixture does exercise the unused level: inferring labels from the data changes kappa.
    assert abs(cohen_kappa_score(a, b, weights="quadratic") - ref) > 0.1


def test_weighted_kappa_edge_cases():
    assert np.isnan(weighted_kappa([3, 3, 3], [3, 3, 3]))
    assert weighted_kappa([1, 2, 5], [1, 2, 5]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"a\[1\] = 6\.0 is not one of the labels"):
        weighted_kappa([1, 6], [1, 2])
    with pytest.raises(ValueError, match=r"b\[0\] = nan"):
        weighted_kappa([1, 2], [np.nan, 2])
    with pytest.raises(ValueError, match="paired"):
        weighted_kappa([1, 2], [1])


def test_mean_pairwise_kappa_matches_sklearn_on_shared_items():
    frame = reader_scores(4, n_readers=4, missing=0.2)
    result = mean_pairwise_kappa(frame)
    wide = frame.pivot(index="case", columns="reader", values="score").astype("float64")
    refs = []
    for ra, rb in itertools.combinations(wide.columns, 2):
        shared = wide[[ra, rb]].dropna()
        refs.append(cohen_kappa_score(shared[ra], shared[rb], weights="quadratic", labels=LABELS))
        row = result.pairs[(result.pairs.rater_a == ra) & (result.pairs.rater_b == rb)].iloc[0]
        assert row.n_shared == len(shared)
        assert row.kappa == pytest.approx(refs[-1], abs=1e-12)
    assert len(result.pairs) == 6
    assert result.mean == pytest.approx(np.mean(refs), abs=1e-12)
    # A pair sharing too few items is reported but left out of the mean.
    lonely = pd.concat([frame, pd.DataFrame({"case": ["c00"], "reader": ["r9"], "score": [3]})])
    again = mean_pairwise_kappa(lonely)
    assert again.pairs.kappa.isna().sum() == 4 and again.mean == pytest.approx(result.mean, abs=1e-12)


# --- Krippendorff's alpha ----------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["ordinal", "interval", "nominal"])
@pytest.mark.parametrize("seed,missing", [(0, 0.0), (1, 0.2), (2, 0.4), (5, 0.3)])
def test_krippendorff_matches_package(level, seed, missing):
    frame = reader_scores(seed, n_cases=40, n_readers=5, missing=missing)
    matrix = frame.pivot(index="reader", columns="case", values="score").to_numpy(dtype=float)
    ref = krippendorff.alpha(reliability_data=matrix, level_of_measurement=level)
    assert krippendorff_alpha(matrix, level=level) == pytest.approx(ref, abs=1e-12)
    assert krippendorff_alpha(frame, level=level) == pytest.approx(ref, abs=1e-12)


def test_krippendorff_published_example():
    # Krippendorff's worked example (4 coders, 12 units, gaps): alpha_ordinal = 0.815 as published.
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
        [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
    ]
    for level in ("ordinal", "interval", "nominal"):
        ref = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
        assert krippendorff_alpha(data, level=level) == pytest.approx(ref, abs=1e-12)
    assert round(krippendorff_alpha(data, level="ordinal"), 3) == 0.815


def test_krippendorff_edge_cases():
    assert np.isnan(krippendorff_alpha([[2, 2, np.nan], [2, 2, 2]]))
    with pytest.raises(ValueError, match="no unit has ratings from two raters"):
        krippendorff_alpha([[1, np.nan], [np.nan, 2]])
    with pytest.raises(ValueError, match="level must be"):
        krippendorff_alpha([[1, 2], [1, 2]], level="ratio")


# --- Turing test -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_turing_stats_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(120) < 0.5
    answer = rng.random(120) < np.where(truth, 0.65, 0.35)
    conf = rng.integers(1, 6, 120)
    got = turing_stats(truth, answer, conf)
    tn, fp, fn, tp = confusion_matrix(truth, answer, labels=[False, True]).ravel()
    assert got["accuracy"] == pytest.approx((tp + tn) / 120, abs=1e-12)
    assert got["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-12)
    assert got["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
    score = np.where(answer, 5 + conf, 6 - conf)  # the 10-level synthetic-ness score, built here
    assert got["auc"] == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
    assert (got["n_synthetic"], got["n_real"]) == (truth.sum(), (~truth).sum())


def test_turing_edge_cases():
    perfect = turing_stats([True, False], [True, False], [1, 1])
    assert perfect["auc"] == 1.0 and perfect["accuracy"] == 1.0
    only_syn = turing_stats([True, True], [True, False], [3, 3])
    assert np.isnan(only_syn["auc"]) and np.isnan(only_syn["specificity"]) and only_syn["sensitivity"] == 0.5
    with pytest.raises(ValueError, match=r"confidence\[1\] = 6\.0"):
        turing_stats([True, False], [True, False], [1, 6])


def test_turing_by_reader_matches_per_reader_sklearn():
    rng = np.random.default_rng(7)
    n = 90
    frame = pd.DataFrame(
        {
            "reader": rng.choice(["ann", "bob", "cy"], n),
            "model": rng.choice(["real", "xreal", "blur-2"], n),
            "turing_answer": rng.choice(["real", "synthetic"], n),
            "confidence": pd.array(rng.integers(1, 6, n), dtype="Int64"),
        }
    )
    # The export's rows for 1-5 criteria have no Turing answer; they are skipped.
    extra = frame.iloc[:5].assign(turing_answer=None, confidence=pd.NA)
    table = turing_by_reader(pd.concat([frame, extra], ignore_index=True))
    assert list(table.index) == ["ann", "bob", "cy"]
    for name, group in frame.groupby("reader"):
        truth = group.model != "real"
        conf = group.confidence.to_numpy(dtype=int)
        score = np.where(group.turing_answer == "synthetic", 5 + conf, 6 - conf)
        assert table.loc[name, "auc"] == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
        assert table.loc[name, "accuracy"] == pytest.approx(
            ((group.turing_answer == "synthetic") == truth).mean(), abs=1e-12
        )
        assert table.loc[name, "n"] == len(group)
    bad = frame.copy()
    bad.loc[3, "turing_answer"] = "fake"
    with pytest.raises(ValueError, match="row 3: turing_answer = 'fake'"):
        turing_by_reader(bad)
    bad = frame.copy()
    bad.loc[4, "confidence"] = pd.NA
    with pytest.raises(ValueError, match="row 4 has a Turing answer but no 'confidence'"):
        turing_by_reader(bad)


# --- Wilcoxon, Holm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,n", [(0, 20), (1, 40), (2, 80), (3, 15)])
def test_wilcoxon_pratt_matches_scipy(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 6, n).astype(float)
    y = np.clip(x + rng.integers(-1, 3, n), 1, 5)  # many zero and tied differences
    got = wilcoxon_pratt(x, y)
    ref = sps.wilcoxon(x, y, zero_method="pratt")
    assert got["statistic"] == pytest.approx(ref.statistic, abs=1e-12)
    assert got["pvalue"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert got["n"] == n and got["n_zero"] == int((x == y).sum()) and got["n_zero"] > 0
    # R+ and R- as scipy's one-sided statistics report them, then Kerby's rank-biserial.
    r_plus = sps.wilcoxon(x, y, zero_method="pratt", alternative="greater").statistic
    r_minus = sps.wilcoxon(y, x, zero_method="pratt", alternative="greater").statistic
    assert (got["r_plus"], got["r_minus"]) == pytest.approx((r_plus, r_minus), abs=1e-9)
    assert got["rank_biserial"] == pytest.approx((r_plus - r_minus) / (r_plus + r_minus), abs=1e-12)
    one_sided = wilcoxon_pratt(x, y, alternative="less")
    assert one_sided["pvalue"] == pytest.approx(
        sps.wilcoxon(x, y, zero_method="pratt", alternative="less").pvalue, rel=1e-12
    )


def test_rank_biserial_without_zeros_matches_pingouin():
    rng = np.random.default_rng(11)
    x = rng.normal(size=30)
    y = x + rng.normal(0.3, 1.0, 30)
    ref = pg.wilcoxon(x, y)
    assert wilcoxon_pratt(x, y)["rank_biserial"] == pytest.approx(float(ref["RBC"].iloc[0]), abs=1e-12)


def test_wilcoxon_pratt_degenerate_and_errors():
    same = wilcoxon_pratt([1, 2, 3], [1, 2, 3])
    assert same["pvalue"] == 1.0 and np.isnan(same["rank_biserial"]) and same["n_zero"] == 3
    with pytest.raises(ValueError, match=r"pair 1 is not finite"):
        wilcoxon_pratt([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="paired"):
        wilcoxon_pratt([1, 2], [1])


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(12) ** 3
    p[3] = p[7]  # ties
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], atol=1e-15)


def test_holm_nan_and_errors():
    p = np.array([0.01, np.nan, 0.04, 0.03])
    got = holm(p)
    assert np.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2, 3]], multipletests(p[[0, 2, 3]], method="holm")[1], atol=1e-15)
    assert holm([]).size == 0
    with pytest.raises(ValueError, match=r"pvalues\[1\] = 1\.5"):
        holm([0.1, 1.5])


# --- bootstrap intervals -----------------------------------------------------------------------------


def _rbc_reference(x, y, axis=-1):
    """Pratt rank-biserial from scipy.stats.rankdata, vectorised over scipy.stats.bootstrap's axis."""
    d = np.asarray(x) - np.asarray(y)
    ranks = sps.rankdata(np.abs(d), axis=axis)
    r_plus = (ranks * (d > 0)).sum(axis=axis)
    r_minus = (ranks * (d < 0)).sum(axis=axis)
    return (r_plus - r_minus) / (r_plus + r_minus)


def test_signed_rank_sums_equal_materialised_resamples():
    # Counts-as-weights must give the ranks of the resample with each case repeated count times.
    rng = np.random.default_rng(2)
    d = rng.integers(-2, 3, 25).astype(float)
    w = case_resample_weights(rng, d.size, 50)
    r_plus, r_minus = paired_module._signed_rank_sums(d, w)
    for b in range(50):
        resample = np.repeat(d, w[b].astype(int))
        ranks = sps.rankdata(np.abs(resample))
        assert r_plus[b] == pytest.approx((ranks * (resample > 0)).sum(), abs=1e-9)
        assert r_minus[b] == pytest.approx((ranks * (resample < 0)).sum(), abs=1e-9)


def test_paired_effect_matches_scipy_bootstrap():
    rng = np.random.default_rng(3)
    x = rng.integers(1, 6, 60).astype(float)
    y = np.clip(x - rng.integers(-1, 3, 60), 1, 5)
    got = paired_effect(x, y, np.random.default_rng(0), resamples=20000)
    assert got["mean_difference"] == pytest.approx((x - y).mean(), abs=1e-12)
    assert got["rank_biserial"] == pytest.approx(wilcoxon_pratt(x, y)["rank_biserial"], abs=1e-12)
    ref_mean = sps.bootstrap(
        (x - y,), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(1)
    ).confidence_interval
    ref_rbc = sps.bootstrap(
        (x, y),
        _rbc_reference,
        paired=True,
        n_resamples=20000,
        method="percentile",
        rng=np.random.default_rng(1),
    ).confidence_interval
    # Independent Monte Carlo estimates of the same quantiles: within a few % of the interval width.
    for key, ref in (("mean_difference_ci", ref_mean), ("rank_biserial_ci", ref_rbc)):
        lo, hi = got[key]
        width = ref.high - ref.low
        assert lo == pytest.approx(ref.low, abs=0.04 * width), key
        assert hi == pytest.approx(ref.high, abs=0.04 * width), key
    again = paired_effect(x, y, np.random.default_rng(0), resamples=20000)
    assert again == got
    assert np.isnan(paired_effect([1.0], [2.0], np.random.default_rng(0))["mean_difference_ci"][0])


def _crossed(rng, n_readers, n_cases, reader_sd, case_sd, noise_sd, mean=3.0) -> pd.DataFrame:
    y = (
        mean
        + rng.normal(0, reader_sd, n_readers)[:, None]
        + rng.normal(0, case_sd, n_cases)[None, :]
        + rng.normal(0, noise_sd, (n_readers, n_cases))
    )
    return pd.DataFrame(
        {
            "reader": np.repeat([f"r{i}" for i in range(n_readers)], n_cases),
            "case_id": np.tile([f"c{j:03d}" for j in range(n_cases)], n_readers),
            "score": y.ravel(),
        }
    )


def test_two_way_bootstrap_variance_matches_closed_form():
    # For a complete crossed table y = m + a_r + b_c + g_rc (sample two-way decomposition), resampling
    # readers and cases independently has variance sum(a^2)/R^2 + sum(b^2)/C^2 + sum(g^2)/(RC)^2.
    frame = _crossed(np.random.default_rng(4), 6, 25, 0.5, 1.0, 0.8)
    y = frame.score.to_numpy().reshape(6, 25)
    m = y.mean()
    a, b = y.mean(axis=1) - m, y.mean(axis=0) - m
    g = y - m - a[:, None] - b[None, :]
    expected_se = np.sqrt((a**2).sum() / 36 + (b**2).sum() / 625 + (g**2).sum() / 150**2)
    got = two_way_bootstrap_mean(frame, rng=np.random.default_rng(0), resamples=20000)
    assert got["mean"] == pytest.approx(m, abs=1e-12)
    assert got["bootstrap_se"] == pytest.approx(expected_se, rel=0.03)  # MC sd of the SE ~0.5%
    assert (got["n_readers"], got["n_cases"], got["n_ratings"]) == (6, 25, 150)


def test_two_way_bootstrap_with_identical_readers_is_the_case_bootstrap():
    case_means = np.random.default_rng(5).normal(3.0, 1.0, 40)
    frame = pd.DataFrame(
        {
            "reader": np.repeat(["a", "b", "c"], 40),
            "case_id": np.tile(np.arange(40), 3),
            "score": np.tile(case_means, 3),
        }
    )
    got = two_way_bootstrap_mean(frame, rng=np.random.default_rng(0), resamples=20000)["ci"]
    ref = sps.bootstrap(
        (case_means,), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(1)
    ).confidence_interval
    width = ref.high - ref.low
    assert got[0] == pytest.approx(ref.low, abs=0.03 * width)
    assert got[1] == pytest.approx(ref.high, abs=0.03 * width)


def test_two_way_bootstrap_incomplete_design_equals_materialised_resamples(monkeypatch):
    rng = np.random.default_rng(6)
    frame = _crossed(rng, 4, 12, 0.5, 1.0, 0.5)
    frame = frame[rng.random(len(frame)) > 0.3]  # not every reader read every case
    frame = pd.concat([frame, frame.iloc[:5].assign(score=frame.score.iloc[:5] + 1)])  # repeated reads
    frame = pd.concat([frame, frame.iloc[:1].assign(score=np.nan)], ignore_index=True)
    drawn = []

    def recording(rng, n, resamples):
        w = case_resample_weights(rng, n, resamples)
        drawn.append(w)
        return w

    monkeypatch.setattr(paired_module, "case_resample_weights", recording)
    got = two_way_bootstrap_mean(frame, rng=np.random.default_rng(0), resamples=300)
    reader_w, case_w = drawn  # one block: readers first, then cases
    rated = frame.dropna(subset=["score"])
    readers = sorted(rated.reader.unique())
    cases = sorted(rated.case_id.unique())
    reps = []
    for b in range(300):
        times = rated.reader.map(dict(zip(readers, reader_w[b]))) * rated.case_id.map(
            dict(zip(cases, case_w[b]))
        )
        resample = rated.loc[rated.index.repeat(times.astype(int))]
        reps.append(resample.score.mean() if len(resample) else np.nan)
    expected = np.nanquantile(reps, [0.025, 0.975])
    np.testing.assert_allclose(got["ci"], expected, atol=1e-12)
    assert got["mean"] == pytest.approx(rated.score.mean(), abs=1e-12)
    assert got["n_ratings"] == len(rated)


def test_two_way_bootstrap_coverage_and_why_cases_alone_are_not_enough():
    # 200 crossed studies (10 readers × 40 cases) with true mean 3 and reader severity that varies:
    # the two-way interval should cover ~95%; the case-only interval (readers fixed) must not.
    rng = np.random.default_rng(2024)
    trials = 200
    two_way = case_only = 0
    for _ in range(trials):
        frame = _crossed(rng, 10, 40, reader_sd=0.3, case_sd=0.6, noise_sd=0.5)
        lo, hi = two_way_bootstrap_mean(frame, rng=rng, resamples=1000)["ci"]
        two_way += lo <= 3.0 <= hi
        lo, hi = bootstrap_mean_ci(frame.groupby("case_id").score.mean().to_numpy(), rng, 1000)
        case_only += lo <= 3.0 <= hi
    # Binomial sd at 200 trials is ~1.5%: 0.90-0.99 is about -3/+3 sd around 0.95.
    assert 0.90 <= two_way / trials <= 0.99, two_way / trials
    assert case_only / trials < 0.90, case_only / trials


def test_paired_case_bootstrap_coverage():
    # Skewed per-case differences with known mean 0.5: the case bootstrap of the mean difference.
    rng = np.random.default_rng(77)
    trials = 200
    hits = 0
    for _ in range(trials):
        x = rng.gamma(2.0, 1.0, 50)
        y = x - rng.gamma(2.0, 0.25, 50)  # x - y ~ Gamma(2, 0.25): mean 0.5, skewed
        lo, hi = paired_effect(x, y, rng, resamples=1000)["mean_difference_ci"]
        hits += lo <= 0.5 <= hi
    assert 0.90 <= hits / trials <= 0.99, hits / trials


def test_functional_modules_do_not_import_torch():
    code = (
        "import reports.functional.agreement, reports.functional.paired, sys; "
        "assert 'torch' not in sys.modules, 'reports.functional imported torch'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
