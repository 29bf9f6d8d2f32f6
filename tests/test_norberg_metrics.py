"""Norberg-angle agreement statistics against independent references (scipy, pingouin, scikit-learn) and
hand-computed values; bootstrap CIs against scipy.stats.bootstrap on the same resamples."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
import sklearn.metrics as skm

from audit.metrics.functional import norberg as fn


def _pairs(rng: np.random.Generator, n: int, bias: float = 1.5, noise: float = 4.0):
    """Real angles across 80-120° and generated ones that track them with bias and noise, rounded to
    0.5° so that some land exactly on the 105° threshold."""
    real = np.round(rng.uniform(80.0, 120.0, n) * 2) / 2
    gen = np.clip(np.round((real + bias + rng.normal(0.0, noise, n)) * 2) / 2, 0.0, 180.0)
    return real, gen


def _cohort(rng: np.random.Generator, n_cases: int = 30):
    """Both sides per case, the two sides of a dog correlated (a shared per-case offset), as in a real
    pelvis; two cases lack their right side."""
    dog = rng.normal(0.0, 6.0, n_cases)
    rows = []
    for i in range(n_cases):
        for side in fn.SIDES:
            if side == "right" and i in (3, 17):
                continue
            real = float(np.clip(100.0 + dog[i] + rng.normal(0.0, 5.0), 80.0, 120.0))
            rows.append((f"case{i:03d}", side, real, real + 1.0 + rng.normal(0.0, 4.0) + 0.3 * dog[i]))
    case_ids, sides, real, gen = zip(*rows, strict=True)
    return np.array(case_ids), np.array(sides), np.array(real), np.array(gen)


def _pingouin_icc2(real: np.ndarray, gen: np.ndarray) -> float:
    import pingouin as pg

    n = real.size
    frame = pd.DataFrame(
        {
            "target": np.r_[np.arange(n), np.arange(n)],
            "rater": ["real"] * n + ["gen"] * n,
            "angle": np.r_[real, gen],
        }
    )
    with warnings.catch_warnings():
        # Its F test divides by a zero MSE on constant input (the ICC itself is still defined), and
        # pandas deprecations inside pingouin are not this suite's concern.
        warnings.simplefilter("ignore")
        icc = pg.intraclass_corr(frame, targets="target", raters="rater", ratings="angle")
    # ICC(A,1) in McGraw & Wong's naming is Shrout & Fleiss' ICC2 (pingouin >= 0.6 renamed the row).
    row = icc[icc["Type"].isin(["ICC2", "ICC(A,1)"])]
    assert len(row) == 1
    return float(row["ICC"].iloc[0])


# ---------------------------------------------------------------------------------------- point values


def test_pearson_r_and_paper_r2_match_scipy():
    rng = np.random.default_rng(1)
    real, gen = _pairs(rng, 60, bias=6.0)
    values = fn.norberg_agreement(real, gen)
    r = st.pearsonr(real, gen).statistic
    assert values["norberg_r"] == pytest.approx(r, abs=1e-12)
    # The paper's R² is r² (its Table 1: 0.2026² = 0.0411 ... 0.1338² = 0.0179), which for one predictor
    # is the R² of a fitted least-squares line ...
    assert values["norberg_r2"] == pytest.approx(r**2, abs=1e-12)
    line = st.linregress(real, gen)
    fitted = line.intercept + line.slope * real
    assert values["norberg_r2"] == pytest.approx(skm.r2_score(gen, fitted), abs=1e-12)
    # ... and not the coefficient of determination against the identity line, which a 6° bias lowers.
    assert skm.r2_score(gen, real) < values["norberg_r2"] - 0.1


def test_icc_matches_pingouin_icc2():
    rng = np.random.default_rng(2)
    real, gen = _pairs(rng, 40, bias=3.0, noise=5.0)
    cases = {
        "tracking": (real, gen),
        "anti-correlated": (real, 200.0 - real + rng.normal(0, 2, real.size)),
        # A generator that ignores the case: ICC is 0, a defined value (pingouin agrees), r is undefined.
        "constant generated": (real, np.full(real.size, 100.0)),
        "both constant, offset": (np.full(10, 100.0), np.full(10, 104.0)),
    }
    for name, (x, y) in cases.items():
        ours = fn.measure_agreement(x, y)
        assert ours.values["norberg_icc"] == pytest.approx(_pingouin_icc2(x, y), abs=1e-10), name
    ignoring = fn.measure_agreement(real, np.full(real.size, 100.0))
    assert ignoring.values["norberg_icc"] == pytest.approx(0.0, abs=1e-12)


def test_kappa_matches_sklearn_including_single_class_sides():
    rng = np.random.default_rng(3)
    real, gen = _pairs(rng, 80)
    assert np.any(real == fn.NORMAL_THRESHOLD_DEG) or np.any(gen == fn.NORMAL_THRESHOLD_DEG)
    checks = [
        (real, gen),
        (np.full(6, 110.0), np.array([100.0, 110, 106, 104, 105, 90])),  # real all normal: still defined
        (np.full(6, 110.0), np.full(6, 90.0)),  # all disagree: κ = 0
    ]
    for x, y in checks:
        ours = fn.norberg_agreement(x, y)["norberg_kappa"]
        ref = skm.cohen_kappa_score(x >= 105.0, y >= 105.0)
        assert ours == pytest.approx(ref, abs=1e-12)


def test_bland_altman_and_mae_hand_computed():
    real = np.array([100.0, 104.0, 110.0, 96.0])
    gen = np.array([102.0, 103.0, 115.0, 97.0])
    # d = 2, -1, 5, 1: bias 1.75, squared deviations 0.0625 + 7.5625 + 10.5625 + 0.5625 = 18.75,
    # SD = sqrt(18.75 / 3) = 2.5, limits 1.75 ∓ 1.96 * 2.5.
    v = fn.norberg_agreement(real, gen)
    assert v["norberg_ba_bias"] == pytest.approx(1.75, abs=1e-12)
    assert v["norberg_ba_loa_low"] == pytest.approx(-3.15, abs=1e-12)
    assert v["norberg_ba_loa_high"] == pytest.approx(6.65, abs=1e-12)
    assert v["norberg_mae"] == pytest.approx(2.25, abs=1e-12)


def test_kappa_threshold_tie_counts_exactly_105_as_normal():
    # Pairs 0-1 sit exactly on 105.0 on one side and just below on the other: they disagree only
    # because 105.0 is normal and 104.999999 is not.
    real = np.array([105.0, 104.999999, 110.0, 95.0, 100.0, 112.0])
    gen = np.array([104.999999, 105.0, 111.0, 94.0, 101.0, 113.0])
    # Calls real N D N D D N, gen D N N D D N: agree 4/6, p_e = (3·3 + 3·3)/36 = 0.5,
    # κ = (2/3 − 1/2) / (1/2) = 1/3.
    assert fn.norberg_agreement(real, gen)["norberg_kappa"] == pytest.approx(1.0 / 3.0, abs=1e-12)
    shifted = fn.norberg_agreement(real, gen, threshold=104.5)["norberg_kappa"]
    assert shifted == pytest.approx(1.0, abs=1e-12)


def test_sides_match_geometry_when_present():
    geometry = pytest.importorskip("audit.norberg.geometry")
    assert tuple(geometry.SIDES) == fn.SIDES


# ------------------------------------------------------------------------------------------ degenerate


def test_degenerate_input_gives_nan_with_reasons():
    few = fn.measure_agreement([100.0, 110.0], [101.0, 109.0])
    assert few.n_pairs == 2
    assert all(math.isnan(v) for v in few.values.values())
    assert set(few.undefined) == set(fn.METRIC_ORDER) and "at least 3" in few.undefined["norberg_r"]
    assert fn.measure_agreement([], []).undefined["norberg_mae"] == "no pairs"

    const = fn.measure_agreement([100.0, 100.0, 100.0, 100.0], [99.0, 101.0, 103.0, 100.0])
    assert math.isnan(const.values["norberg_r"]) and math.isnan(const.values["norberg_r2"])
    assert "real angles are all 100°" in const.undefined["norberg_r"]
    assert not math.isnan(const.values["norberg_icc"]) and not math.isnan(const.values["norberg_mae"])
    assert math.isnan(const.values["norberg_kappa"]) and "dysplastic" in const.undefined["norberg_kappa"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on its own 0/0
        assert math.isnan(skm.cohen_kappa_score([False] * 4, [False] * 4))

    same = fn.measure_agreement([100.0] * 4, [100.0] * 4)
    assert math.isnan(same.values["norberg_icc"]) and "nothing to partition" in same.undefined["norberg_icc"]
    assert same.values["norberg_mae"] == 0.0


def test_table_with_degenerate_side_does_not_raise():
    case_ids = ["a", "b", "c", "d", "a"]
    sides = ["left", "left", "left", "left", "right"]
    real = [100.0, 104.0, 110.0, 96.0, 100.0]
    gen = [102.0, 103.0, 115.0, 97.0, 99.0]
    table = fn.norberg_table(case_ids, sides, real, gen, rng=np.random.default_rng(0), resamples=50)
    rows = {r.metric: r for r in table}
    right = rows["norberg_r:right"]
    assert math.isnan(right.value) and math.isnan(right.ci_low) and "at least 3" in right.note
    assert (right.n, right.n_pairs) == (1, 1)
    assert (rows["norberg_r"].n, rows["norberg_r"].n_pairs) == (4, 5)
    assert not math.isnan(rows["norberg_mae:left"].value)


# --------------------------------------------------------------------------------------- table, pooling


def test_pooled_is_the_concatenation_of_sides_and_sides_are_subsets():
    case_ids, sides, real, gen = _cohort(np.random.default_rng(4))
    table = fn.norberg_table(case_ids, sides, real, gen, rng=np.random.default_rng(5), resamples=200)
    assert [r.metric for r in table[:3]] == ["norberg_r", "norberg_r:left", "norberg_r:right"]
    assert len(table) == 3 * len(fn.METRIC_ORDER)
    rows = {r.metric: r for r in table}
    left, right = sides == "left", sides == "right"
    pooled = fn.norberg_agreement(np.r_[real[left], real[right]], np.r_[gen[left], gen[right]])
    for metric in fn.METRIC_ORDER:
        assert rows[metric].value == pytest.approx(pooled[metric], abs=1e-12)
        for side, mask in (("left", left), ("right", right)):
            own = fn.norberg_agreement(real[mask], gen[mask])[metric]
            assert rows[f"{metric}:{side}"].value == pytest.approx(own, abs=1e-12)
        assert rows[metric].ci_low <= rows[metric].value <= rows[metric].ci_high
    # Pooling is not the mean of the two sides.
    side_mean = 0.5 * (rows["norberg_r:left"].value + rows["norberg_r:right"].value)
    assert rows["norberg_r"].value != pytest.approx(side_mean)
    assert (rows["norberg_r"].n, rows["norberg_r"].n_pairs) == (30, 58)
    assert (rows["norberg_r:right"].n, rows["norberg_r:right"].n_pairs) == (28, 28)


def test_bootstrap_cis_match_scipy_bootstrap_on_the_same_case_resamples():
    case_ids, sides, real, gen = _cohort(np.random.default_rng(6), n_cases=25)
    resamples = 400
    table = fn.norberg_table(
        case_ids, sides, real, gen, rng=np.random.default_rng(7), resamples=resamples, confidence=0.9
    )
    unique = np.unique(case_ids)
    by_case = [np.flatnonzero(case_ids == c) for c in unique]

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        # Materialise each resample of cases (both sides travel together) and score it directly.
        out = []
        for draw in np.atleast_2d(idx):
            rows = np.concatenate([by_case[k] for k in draw])
            values = []
            for mask in (np.ones(rows.size, bool), sides[rows] == "left", sides[rows] == "right"):
                agreement = fn.norberg_agreement(real[rows][mask], gen[rows][mask])
                values += [agreement[m] for m in fn.METRIC_ORDER]
            out.append(values)
        return np.array(out).T

    # scipy < 1.15 calls the Generator argument random_state.
    seed_keyword = "rng" if "rng" in inspect.signature(st.bootstrap).parameters else "random_state"
    ref = st.bootstrap(
        (np.arange(unique.size),),
        statistic,
        n_resamples=resamples,
        confidence_level=0.9,
        method="percentile",
        vectorized=True,
        **{seed_keyword: np.random.default_rng(7)},
    )
    order = [f"{m}{s}" for s in ("", ":left", ":right") for m in fn.METRIC_ORDER]
    rows = {r.metric: r for r in table}
    assert not np.isnan(ref.confidence_interval.low).any()
    for k, name in enumerate(order):
        assert rows[name].ci_low == pytest.approx(ref.confidence_interval.low[k], abs=1e-9), name
        assert rows[name].ci_high == pytest.approx(ref.confidence_interval.high[k], abs=1e-9), name


def test_summary_rows_are_summary_csv_shaped():
    case_ids, sides, real, gen = _cohort(np.random.default_rng(8), n_cases=12)
    table = fn.norberg_table(case_ids, sides, real, gen, rng=np.random.default_rng(0), resamples=50)
    rows = fn.norberg_summary_rows("sd-v1", table, group="sex=F", evaluator="landmarks: annotations")
    assert len(rows) == len(table)
    assert list(rows[0]) == ["model", "metric", "value", "ci_low", "ci_high", "n", "group", "evaluator"]
    assert rows[1]["metric"] == "norberg_r:left" and rows[1]["n"] == 12 and rows[1]["group"] == "sex=F"
    from audit.metrics import catalogue

    for row in rows:
        meta = catalogue.spec(row["metric"])
        assert meta.aggregation == "distribution" and meta.family == "norberg"
    assert catalogue.names(family="norberg") == fn.METRIC_ORDER
    assert catalogue.spec("norberg_ba_bias:right").higher_is_better is None
    with pytest.raises(KeyError, match="unknown metric"):
        catalogue.spec("norberg_rho")


# ------------------------------------------------------------------------------------------- bad input


def test_bad_input_errors_say_what_to_fix():
    with pytest.raises(ValueError, match="3 real and 2 generated"):
        fn.norberg_agreement([100.0, 101.0, 102.0], [100.0, 101.0])
    with pytest.raises(ValueError, match=r"gen has 1 NaN .*index 1"):
        fn.norberg_agreement([100.0, 101.0, 102.0], [100.0, math.nan, 102.0])
    with pytest.raises(ValueError, match="outside \\[0, 180\\]"):
        fn.norberg_agreement([100.0, 101.0, 1000.0], [100.0, 101.0, 102.0])
    ids, sides = ["a", "b", "c"], ["left", "left", "left"]
    kw = {"rng": np.random.default_rng(0), "resamples": 10}
    with pytest.raises(ValueError, match=r"real has 1 NaN .*row 2: case 'c' left"):
        fn.norberg_table(ids, sides, [100.0, 101.0, math.nan], [100.0, 101.0, 102.0], **kw)
    with pytest.raises(ValueError, match="same length"):
        fn.norberg_table(ids, sides[:2], [100.0, 101.0, 102.0], [100.0, 101.0, 102.0], **kw)
    with pytest.raises(ValueError, match="unknown side.*'Left'"):
        fn.norberg_table(ids, ["left", "Left", "right"], [100.0] * 3, [100.0] * 3, **kw)
    with pytest.raises(ValueError, match="more than once.*'a' left"):
        fn.norberg_table(["a", "a", "c"], sides, [100.0] * 3, [100.0] * 3, **kw)
    with pytest.raises(TypeError, match="numpy Generator"):
        fn.norberg_table(ids, sides, [100.0] * 3, [100.0] * 3, rng=0, resamples=10)


def test_kernel_imports_neither_torch_nor_reports():
    code = (
        "import sys, audit.metrics.functional.norberg\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'reports', 'dashboards')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
