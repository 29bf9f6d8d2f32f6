"""reports.reader_stats on simulated reader studies with known structure, against independent
references: statsmodels MixedLM/OrderedModel called directly, pingouin, scikit-learn, the
krippendorff package and scipy."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
from pathlib import Path

import krippendorff
import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from statsmodels.miscmodels.ordinal_model import OrderedModel

from reports.functional.agreement import icc, krippendorff_alpha, mean_pairwise_kappa
from reports.functional.paired import two_way_bootstrap_mean
from reports.reader_stats import (
    POOLED,
    ReaderStatistics,
    metric_validity,
    reader_statistics,
    run_reader_statistics,
)

REPO = Path(__file__).resolve().parents[1]
LABELS = [1, 2, 3, 4, 5]
EFFECTS = {"real": 0.0, "model-plus": 1.0, "model-minus": -1.0}
CRITERIA = ("anatomy", "quality")
RESAMPLES = 200


def simulate(
    seed: int = 0,
    n_readers: int = 5,
    n_cases: int = 30,
    reread: float = 0.3,
    turing: bool = True,
    effects: dict[str, float] = EFFECTS,
) -> pd.DataFrame:
    """An export-shaped frame: latent = 3 + model effect + reader + case + noise, cut to 1-5.

    Every reader rates every (model, case) item on each criterion; a share of items is re-read
    (read 2) with fresh noise; the Turing answer leans to "synthetic" for model-minus only.
    """
    rng = np.random.default_rng(seed)
    readers = [f"reader-{j}" for j in range(n_readers)]
    reader_re = rng.normal(0.0, 0.4, n_readers)
    case_re = rng.normal(0.0, 0.6, n_cases)
    items = [(m, i) for m in effects for i in range(n_cases)]
    reread_items = {k for k in range(len(items)) if rng.random() < reread}
    rows = []
    for (j, reader), (k, (model, i)) in itertools.product(enumerate(readers), enumerate(items)):
        base = {
            "reader": reader,
            "item": f"item{k:04d}",
            "model": model,
            "case_id": f"case-{i:03d}",
            "sample": 0,
            "turing_answer": None,
            "confidence": pd.NA,
            "comment": "",
            "created_at": "2025-01-01T00:00:00Z",
            "calibration": False,
            "flagged": False,
            "flag_reason": None,
            "seconds": 5.0,
            "updated_at": "2025-01-01T00:00:00Z",
        }
        for read in (1, 2) if k in reread_items else (1,):
            for c, criterion in enumerate(CRITERIA):
                latent = 3.0 + effects[model] + reader_re[j] + case_re[i] + 0.3 * c + rng.normal(0.0, 0.5)
                score = int(np.clip(np.rint(latent), 1, 5))
                rows.append({**base, "criterion": criterion, "score": score, "read_number": read})
            if turing:
                p_syn = {"real": 0.4, "model-plus": 0.45, "model-minus": 0.8}.get(model, 0.5)
                rows.append(
                    {
                        **base,
                        "criterion": "turing",
                        "score": pd.NA,
                        "turing_answer": "synthetic" if rng.random() < p_syn else "real",
                        "confidence": int(rng.integers(1, 6)),
                        "read_number": read,
                    }
                )
    frame = pd.DataFrame(rows)
    for col in ("score", "confidence", "read_number", "sample"):
        frame[col] = frame[col].astype("Int64")
    return frame


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return simulate()


@pytest.fixture(scope="module")
def stats(ratings) -> ReaderStatistics:
    return reader_statistics(ratings, rng=np.random.default_rng(1), resamples=RESAMPLES)


def first_reads(frame: pd.DataFrame, criterion: str) -> pd.DataFrame:
    rows = frame[(frame.criterion == criterion) & (frame.read_number == 1) & ~frame.calibration]
    return rows.assign(score=rows.score.astype(float))


# --- scores ------------------------------------------------------------------------------------------


def test_scores_table_is_the_two_way_bootstrap_per_model_and_criterion(ratings, stats):
    s = stats.scores
    assert list(s.model[s.criterion == "anatomy"]) == ["real", "model-minus", "model-plus"]
    for _, row in s.iterrows():
        rows = first_reads(ratings, row.criterion)
        rows = rows[rows.model == row.model]
        assert row["mean"] == pytest.approx(rows.score.mean(), abs=1e-12)
        assert row.n_ratings == len(rows) and row.n_readers == 5 and row.n_items == 30 and row.n_cases == 30
        assert row.ci_low < row["mean"] < row.ci_high
    # The simulated order of the models shows in the means.
    q = s[s.criterion == "quality"].set_index("model")["mean"]
    assert q["model-minus"] < q["real"] < q["model-plus"]
    again = reader_statistics(ratings, rng=np.random.default_rng(1), resamples=RESAMPLES)
    pd.testing.assert_frame_equal(stats.scores, again.scores)


def test_score_cis_have_the_requested_confidence(ratings, stats):
    # Issue 18: the score CIs were 95% intervals whatever `confidence` said.
    narrow = reader_statistics(
        ratings, rng=np.random.default_rng(1), resamples=RESAMPLES, confidence=0.8
    ).scores
    first = narrow.iloc[0]  # the first drawn: a direct call with a fresh generator draws the same
    rows = first_reads(ratings, first.criterion)
    direct = two_way_bootstrap_mean(
        rows[rows.model == first.model], case="item", rng=np.random.default_rng(1), resamples=RESAMPLES,
        confidence=0.8,
    )  # fmt: skip
    assert (first.ci_low, first.ci_high) == direct["ci"]
    pd.testing.assert_series_equal(narrow["mean"], stats.scores["mean"])
    assert ((narrow.ci_high - narrow.ci_low) < (stats.scores.ci_high - stats.scores.ci_low)).all()


def test_run_reader_statistics_uses_the_runs_settings(ratings):
    from audit.rundir import RunSettings

    settings = RunSettings.parse(
        "[study]\nseed = 5\n[metrics]\nconfidence = 0.9\nbootstrap_resamples = 150\n"
    )
    got = run_reader_statistics(ratings, settings)
    want = reader_statistics(ratings, rng=np.random.default_rng(5), resamples=150, confidence=0.9)
    pd.testing.assert_frame_equal(got.scores, want.scores)
    pd.testing.assert_frame_equal(got.mixed, want.mixed)
    # Without the keys: audit.config's defaults (seed 0, 1000 resamples, 95%), not the function's 2000.
    default = run_reader_statistics(ratings, RunSettings.parse("[study]\n"), resamples=RESAMPLES)
    want = reader_statistics(ratings, rng=np.random.default_rng(0), resamples=RESAMPLES, confidence=0.95)
    pd.testing.assert_frame_equal(default.scores, want.scores)


# --- mixed model ---------------------------------------------------------------------------------------


def test_mixed_model_recovers_the_simulated_effects(stats):
    m = stats.mixed
    assert set(m.criterion) == set(CRITERIA) and len(m) == 4
    for _, row in m.iterrows():
        # Cutting the latent score to 1-5 shrinks the effect a little (clipping at the ends).
        assert row.coef == pytest.approx(EFFECTS[row.model], abs=0.2), row.to_dict()
        assert row.ci_low < row.coef < row.ci_high and row.pvalue < 1e-6
        assert row.converged and row.warnings == ""
        assert row.var_case > row.var_reader > 0 and row.var_residual > 0
        assert row.n_ratings == 450 and row.n_readers == 5 and row.n_cases == 30


def test_mixed_model_equals_a_direct_statsmodels_call(ratings, stats):
    rows = first_reads(ratings, "anatomy")
    data = pd.DataFrame(
        {
            "y": rows.score.to_numpy(),
            "mdl": pd.Categorical(rows.model, categories=["real", "model-minus", "model-plus"]),
            "rdr": rows.reader.to_numpy(),
            "cs": rows.case_id.to_numpy(),
            "grp": 1,
        }
    )
    direct = sm.MixedLM.from_formula(
        "y ~ mdl", groups="grp", re_formula="0", vc_formula={"r": "0 + C(rdr)", "c": "0 + C(cs)"}, data=data
    ).fit(reml=True)
    ci = direct.conf_int()
    got = stats.mixed[stats.mixed.criterion == "anatomy"].set_index("model")
    for model in ("model-minus", "model-plus"):
        name = f"mdl[T.{model}]"
        assert got.at[model, "coef"] == pytest.approx(direct.fe_params[name], abs=1e-6)
        assert got.at[model, "se"] == pytest.approx(direct.bse_fe[name], rel=1e-4)
        assert got.at[model, "pvalue"] == pytest.approx(direct.pvalues[name], rel=1e-3)
        assert got.at[model, "ci_low"] == pytest.approx(ci.loc[name, 0], abs=1e-4)
        assert got.at[model, "ci_high"] == pytest.approx(ci.loc[name, 1], abs=1e-4)
    assert got["reference_mean"].iloc[0] == pytest.approx(direct.fe_params["Intercept"], abs=1e-6)
    assert got["var_residual"].iloc[0] == pytest.approx(direct.scale, rel=1e-4)


def test_mixed_model_reports_fit_problems_in_a_column(ratings):
    one_reader = ratings[ratings.reader == "reader-0"]
    out = reader_statistics(one_reader, rng=np.random.default_rng(0), resamples=10)
    assert len(out.mixed) == 4 and not out.mixed.converged.any()
    assert out.mixed.warnings.str.contains("2 readers").all() and out.mixed.coef.isna().all()


# --- ordinal -------------------------------------------------------------------------------------------


def test_ordinal_fit_has_the_simulated_signs_and_equals_a_direct_call(ratings, stats):
    o = stats.ordinal.set_index(["criterion", "model"])
    for criterion in CRITERIA:
        plus, minus = o.loc[(criterion, "model-plus")], o.loc[(criterion, "model-minus")]
        # On the logit scale the effect is larger than on the score scale: +1 score step ≈ several logits.
        assert plus.coef > 1.0 and minus.coef < -1.0 and plus.pvalue < 1e-6 and minus.pvalue < 1e-6
        assert plus.converged and minus.converged

    rows = first_reads(ratings, "quality")
    exog = pd.DataFrame(
        {
            "minus": (rows.model == "model-minus").astype(float),
            "plus": (rows.model == "model-plus").astype(float),
        }
    )
    for r in sorted(rows.reader.unique())[1:]:
        exog[r] = (rows.reader == r).astype(float)
    endog = pd.Categorical(rows.score.astype(int), ordered=True)
    direct = OrderedModel(endog, exog.to_numpy(), distr="logit").fit(method="bfgs", maxiter=2000, disp=False)
    assert o.loc[("quality", "model-minus"), "coef"] == pytest.approx(direct.params[0], abs=1e-3)
    assert o.loc[("quality", "model-plus"), "coef"] == pytest.approx(direct.params[1], abs=1e-3)
    assert o.loc[("quality", "model-plus"), "se"] == pytest.approx(direct.bse[1], rel=1e-2)


# --- agreement -----------------------------------------------------------------------------------------


def test_agreement_table_equals_the_kernels(ratings, stats):
    for criterion in CRITERIA:
        rows = first_reads(ratings, criterion)
        got = stats.agreement.set_index("criterion").loc[criterion]
        kw = {"target": "item", "rater": "reader", "score": "score"}
        ref = icc(rows, **kw)
        assert got.icc2_1 == ref["icc2_1"] and got.icc2_k == ref["icc2_k"]
        assert (got.icc2_1_ci_low, got.icc2_1_ci_high) == ref["icc2_1_ci"]
        assert (got.icc2_k_ci_low, got.icc2_k_ci_high) == ref["icc2_k_ci"]
        assert got.kappa_quadratic == mean_pairwise_kappa(rows, **kw).mean
        assert got.alpha_ordinal == krippendorff_alpha(rows, level="ordinal", **kw)
        assert got.n_items == 90 and got.n_readers == 5 and got.icc_n_items == 90 and got.n_reader_pairs == 10
        assert got.note == ""


def test_agreement_matches_pingouin_sklearn_and_krippendorff(ratings, stats):
    rows = first_reads(ratings, "anatomy")
    got = stats.agreement.set_index("criterion").loc["anatomy"]
    table = pg.intraclass_corr(rows, targets="item", raters="reader", ratings="score")
    # pingouin >= 0.6 names the rows ICC(A,1)/ICC(A,k); older releases ICC2/ICC2k.
    table = table.replace({"Type": {"ICC2": "ICC(A,1)", "ICC2k": "ICC(A,k)"}}).set_index("Type")
    ci_col = next(c for c in table.columns if c.startswith("CI"))
    assert got.icc2_1 == pytest.approx(table.at["ICC(A,1)", "ICC"], abs=1e-10)
    assert got.icc2_k == pytest.approx(table.at["ICC(A,k)", "ICC"], abs=1e-10)
    # pingouin rounds its interval to 2 decimals.
    assert (got.icc2_1_ci_low, got.icc2_1_ci_high) == pytest.approx(
        tuple(table.at["ICC(A,1)", ci_col]), abs=0.006
    )
    assert (got.icc2_k_ci_low, got.icc2_k_ci_high) == pytest.approx(
        tuple(table.at["ICC(A,k)", ci_col]), abs=0.006
    )
    wide = rows.pivot(index="item", columns="reader", values="score")
    kappas = [
        cohen_kappa_score(wide[a], wide[b], labels=LABELS, weights="quadratic")
        for a, b in itertools.combinations(wide.columns, 2)
    ]
    assert got.kappa_quadratic == pytest.approx(np.mean(kappas), abs=1e-12)
    alpha = krippendorff.alpha(reliability_data=wide.to_numpy().T, level_of_measurement="ordinal")
    assert got.alpha_ordinal == pytest.approx(alpha, abs=1e-10)
    # Readers agree about the simulated case and model structure.
    assert 0.4 < got.icc2_1 < got.icc2_k < 1


def test_krippendorff_alpha_tolerates_missing_ratings(ratings):
    rng = np.random.default_rng(5)
    holes = ratings.drop(index=ratings.index[rng.random(len(ratings)) < 0.2])
    got = reader_statistics(holes, rng=np.random.default_rng(0), resamples=10).agreement.set_index(
        "criterion"
    )
    rows = first_reads(holes, "anatomy")
    wide = rows.pivot(index="item", columns="reader", values="score")
    alpha = krippendorff.alpha(reliability_data=wide.to_numpy().T, level_of_measurement="ordinal")
    assert got.at["anatomy", "alpha_ordinal"] == pytest.approx(alpha, abs=1e-10)
    assert got.at["anatomy", "icc_n_items"] < got.at["anatomy", "n_items"]  # ICC is complete-case


# --- intra-reader --------------------------------------------------------------------------------------


def test_intra_reader_kappa_equals_sklearn_on_the_reread_pairs(ratings, stats):
    intra = stats.intra.set_index(["reader", "criterion"])
    assert len(intra) == 6 * len(CRITERIA)
    for criterion in CRITERIA:
        rows = ratings[(ratings.criterion == criterion) & ~ratings.calibration]
        wide = rows.pivot(index=["reader", "item"], columns="read_number", values="score").dropna()
        for reader, group in wide.groupby(level="reader"):
            a, b = group[1].astype(int), group[2].astype(int)
            got = intra.loc[(reader, criterion)]
            assert got.kappa_quadratic == pytest.approx(
                cohen_kappa_score(a, b, labels=LABELS, weights="quadratic"), abs=1e-12
            )
            assert got.exact_agreement == pytest.approx((a == b).mean()) and got.n_pairs == len(a)
        pooled = intra.loc[(POOLED, criterion)]
        assert pooled.n_pairs == len(wide)
        assert pooled.kappa_quadratic == pytest.approx(
            cohen_kappa_score(wide[1].astype(int), wide[2].astype(int), labels=LABELS, weights="quadratic")
        )


# --- Turing --------------------------------------------------------------------------------------------


def test_turing_auc_equals_sklearn_on_the_ten_level_score(ratings, stats):
    t = stats.turing.set_index("reader")
    assert list(t.index) == [*sorted(ratings.reader.unique()), POOLED]
    rows = ratings[(ratings.criterion == "turing") & (ratings.read_number == 1)]
    truth = (rows.model != "real").to_numpy()
    said_synthetic = (rows.turing_answer == "synthetic").to_numpy()
    conf = rows.confidence.astype(int).to_numpy()
    # Independent 10-level score: "certainly real" 1 ... "certainly synthetic" 10.
    level = np.where(said_synthetic, 5 + conf, 6 - conf)
    pooled = t.loc[POOLED]
    assert pooled.auc == pytest.approx(roc_auc_score(truth, level), abs=1e-12)
    assert pooled.accuracy == pytest.approx((truth == said_synthetic).mean())
    assert pooled.sensitivity == pytest.approx(said_synthetic[truth].mean())
    assert pooled.specificity == pytest.approx((~said_synthetic[~truth]).mean())
    assert pooled.n == len(rows) == 5 * 90
    for reader in sorted(ratings.reader.unique()):
        mine = (rows.reader == reader).to_numpy()
        assert t.at[reader, "auc"] == pytest.approx(roc_auc_score(truth[mine], level[mine]), abs=1e-12)


# --- exclusions and errors -----------------------------------------------------------------------------


def with_noise_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Calibration items (wild scores, own models and readers too) and flag rows without answers."""
    rng = np.random.default_rng(9)
    calib = frame.iloc[:300].copy()
    calib["item"] = "calib-" + calib["item"]
    calib["case_id"] = "calib-" + calib["case_id"]
    calib["calibration"] = True
    calib.loc[calib.score.notna(), "score"] = rng.integers(1, 6, int(calib.score.notna().sum()))
    calib.loc[calib.index[:20], "model"] = "practice-only-model"
    calib.loc[calib.index[20:40], "reader"] = "trainee"
    flags = frame.iloc[:12].copy()
    flags["item"] = "flagged-" + flags["item"]
    flags = flags.assign(
        criterion="flag",
        score=pd.NA,
        turing_answer=None,
        confidence=pd.NA,
        flagged=True,
        flag_reason="cropped",
    )
    return pd.concat([frame, calib, flags], ignore_index=True).sample(frac=1.0, random_state=3)


def test_calibration_and_flag_rows_change_nothing(ratings, stats):
    noisy = with_noise_rows(ratings)
    assert len(noisy) > len(ratings)
    again = reader_statistics(noisy, rng=np.random.default_rng(1), resamples=RESAMPLES)
    for field in dataclasses.fields(stats):
        pd.testing.assert_frame_equal(getattr(stats, field.name), getattr(again, field.name), obj=field.name)


def test_missing_columns_are_named(ratings):
    with pytest.raises(ValueError, match=r"missing column\(s\) \['reader', 'calibration'\]"):
        reader_statistics(ratings.drop(columns=["reader", "calibration"]), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"per_sample.*missing column\(s\) \['metric'\]"):
        metric_validity(pd.DataFrame(columns=["model", "case_id", "sample", "value"]), ratings)


def test_bad_input_is_reported_with_its_row(ratings):
    bad = ratings.copy()
    bad.loc[3, "score"] = 7
    with pytest.raises(ValueError, match="row 3 .*scores must be integers in"):
        reader_statistics(bad, rng=np.random.default_rng(0))
    no_real = ratings[ratings.model != "real"]
    with pytest.raises(ValueError, match="reference model 'real'"):
        reader_statistics(no_real, rng=np.random.default_rng(0))
    out = reader_statistics(no_real, rng=np.random.default_rng(0), resamples=10, reference="model-minus")
    assert set(out.mixed.model) == {"model-plus"} and (out.mixed.coef > 1.5).all()


def test_without_turing_or_rereads_those_tables_are_empty():
    frame = simulate(seed=2, n_readers=3, n_cases=8, reread=0.0, turing=False)
    out = reader_statistics(frame, rng=np.random.default_rng(0), resamples=10)
    assert out.turing.empty and out.intra.empty and len(out.scores) == 6


# --- metric validity -----------------------------------------------------------------------------------


def per_sample_for(ratings: pd.DataFrame, seed: int = 4) -> pd.DataFrame:
    """Two metrics: one tracks the mean anatomy score of the image (plus noise), one is noise."""
    rng = np.random.default_rng(seed)
    images = ratings[["model", "case_id", "sample"]].drop_duplicates()
    images = images[images.model != "real"]  # a run scores generated samples only
    truth = first_reads(ratings, "anatomy").groupby(["model", "case_id"]).score.mean()
    tracking = truth.loc[list(zip(images.model, images.case_id, strict=True))].to_numpy()
    rows = [
        images.assign(metric="tracks", value=tracking + rng.normal(0, 0.3, len(images))),
        images.assign(metric="noise", value=rng.normal(0, 1, len(images))),
    ]
    extra = pd.DataFrame(
        {"model": ["unrated"], "case_id": ["case-999"], "sample": [0], "metric": ["noise"], "value": [1.0]}
    )
    return pd.concat([*rows, extra], ignore_index=True)


def test_metric_validity_equals_scipy_spearman(ratings):
    per_sample = per_sample_for(ratings)
    got = metric_validity(per_sample, ratings).set_index(["metric", "criterion"])
    assert set(got.index) == {(m, c) for m in ("noise", "tracks") for c in CRITERIA}
    for metric, criterion in got.index:
        image_scores = (
            first_reads(ratings, criterion)
            .groupby(["model", "case_id", "sample"])
            .score.mean()
            .rename("score")
        )
        values = per_sample[per_sample.metric == metric].set_index(["model", "case_id", "sample"]).value
        both = pd.concat([values, image_scores], axis=1, join="inner")
        ref = sps.spearmanr(both.value, both.score)
        row = got.loc[(metric, criterion)]
        assert row.rho_image == pytest.approx(ref.statistic, abs=1e-12)
        assert row.p_image == pytest.approx(ref.pvalue, rel=1e-9)
        assert row.n_image == len(both) == 60
        means = both.groupby(level="model").mean()
        assert row.n_model == 2
        # Two models: no Spearman rank correlation worth reporting.
        assert np.isnan(row.rho_model) and len(means) == 2
    assert got.at[("tracks", "anatomy"), "rho_image"] > 0.6
    assert got.at[("tracks", "anatomy"), "rho_image"] > abs(got.at[("noise", "anatomy"), "rho_image"]) + 0.3


def test_metric_validity_per_model_correlates_model_means():
    # Five models in a known order, so that the per-model rho has points to rank.
    effects = {"real": 0.0, "m-a": -1.0, "m-b": -0.5, "m-c": 0.5, "m-d": 1.0}
    frame = simulate(seed=3, n_readers=3, n_cases=10, reread=0.0, turing=False, effects=effects)
    images = frame[["model", "case_id", "sample"]].drop_duplicates()
    rng = np.random.default_rng(0)
    per_sample = images.assign(metric="m", value=images.model.map(effects) + rng.normal(0, 0.3, len(images)))
    got = metric_validity(per_sample, frame).set_index("criterion")
    for criterion in CRITERIA:
        image_scores = first_reads(frame, criterion).groupby(["model", "case_id", "sample"]).score.mean()
        values = per_sample.set_index(["model", "case_id", "sample"]).value
        both = pd.concat([values, image_scores], axis=1, join="inner")
        means = both.groupby(level="model").mean()
        ref = sps.spearmanr(means.value, means.score)
        assert got.at[criterion, "n_model"] == 5 and got.at[criterion, "n_image"] == 50
        assert got.at[criterion, "rho_model"] == pytest.approx(ref.statistic, abs=1e-12)
        assert got.at[criterion, "p_model"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert got.at[criterion, "rho_model"] > 0.8


def test_reader_stats_does_not_import_torch():
    code = "import reports.reader_stats, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
