"""The review dashboard: its aggregations against independent pandas/numpy/scipy computations, every
page under Streamlit's AppTest on a synthetic run built here, and a Chromium smoke test of the server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats
from streamlit.testing.v1 import AppTest

from audit import rundir
from audit.fake_run import FakePrivacy, write_fake_run
from audit.images import write_png
from dashboards import data, serve
from reports import thumbnail
from reports.privacy import HIDDEN_NOTE
from reports.run import MetricColumn, load_run
from tests.test_report_html import make_run
from tests.test_report_privacy import PRIVACY
from tests.test_report_privacy import _spec as privacy_spec

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboards" / "app.py")
TIMEOUT = 30
MODELS = ["gen_a", "gen_b", "blur-1", "blur-3", "real"]  # make_run's, in the order the pages show them


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _add_group_rows(run: Path) -> None:
    """make_run's summary has only "all cases" rows; add a group "a" whose values differ."""
    summary = pd.read_csv(run / rundir.SUMMARY)
    summary["group"] = ""
    extra = summary[summary["model"].isin(["gen_a", "gen_b"])].copy()
    extra["group"] = "a"
    extra["value"] = extra["value"] / 2
    pd.concat([summary, extra]).to_csv(run / rundir.SUMMARY, index=False)


def _two_samples(run: Path) -> None:
    """A second sample of gen_a for every case, so the per-case mean is over two samples."""
    ps = pd.read_parquet(run / rundir.PER_SAMPLE)
    extra = ps[ps["model"] == "gen_a"].copy()
    extra["sample"] = 1
    extra["value"] = extra["value"] + 0.25
    pd.concat([ps, extra], ignore_index=True).to_parquet(run / rundir.PER_SAMPLE)
    samples = pd.read_parquet(run / rundir.SAMPLES)
    more = samples[samples["model"] == "gen_a"].copy()
    more["sample"] = 1
    more["path"] = [f"samples/gen_a/{c}_s1.png" for c in more["case_id"]]  # run-relative, as the suite writes
    rng = np.random.default_rng(3)
    for path in more["path"]:
        write_png(run / path, rng.random((48, 64)).astype(np.float32))
    pd.concat([samples, more], ignore_index=True).to_parquet(run / rundir.SAMPLES)


def _ratings() -> pd.DataFrame:
    rows = []
    scores = {"gen_a": [2, 3, 4], "gen_b": [5, 4, 4], "real": [5, 5, 3]}
    for reader_i, reader in enumerate(("r1", "r2", "r3")):
        for model, per_reader in scores.items():
            base = {
                "reader": reader,
                "item": f"{model}-{reader}",
                "model": model,
                "case_id": "c000",
                "sample": 0,
                "comment": None,
                "created_at": "2025-01-01T00:00:00",
                "read_number": 1,
                "calibration": False,
                "flagged": False,
                "flag_reason": None,
                "seconds": 3.0,
                "updated_at": "2025-01-01T00:00:00",
            }
            rows.append(
                {**base, "criterion": "anatomy", "score": per_reader[reader_i], "turing_answer": None}
            )
            rows.append(
                {
                    **base,
                    "criterion": "turing",
                    "score": None,
                    "turing_answer": "real" if (reader_i + len(model)) % 2 else "synthetic",
                    "confidence": 1 + reader_i,
                }
            )
    # A calibration item with an extreme score: excluded by default.
    rows.append({**rows[0], "item": "cal", "score": 1, "calibration": True})
    frame = pd.DataFrame(rows)
    frame["score"] = frame["score"].astype("Int64")
    frame["confidence"] = frame["confidence"].astype("Int64")
    return frame


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run(tmp_path_factory.mktemp("dash"), n_cases=6, n_failures=1)
    _add_group_rows(run)
    _two_samples(run)
    return run


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    _ratings().to_parquet(root / data.RATINGS_PARQUET)
    return root


@pytest.fixture(scope="module")
def other_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the run whose gen_a SSIM improved by 0.01 and whose gen_b lost its MSE row."""
    other = tmp_path_factory.mktemp("other") / "run"
    shutil.copytree(run_dir, other)
    summary = pd.read_csv(other / rundir.SUMMARY, keep_default_na=False)
    summary["value"] = pd.to_numeric(summary["value"], errors="coerce")
    hit = (summary["model"] == "gen_a") & (summary["metric"] == "ssim") & (summary["group"] == "")
    summary.loc[hit, "value"] += 0.01
    summary = summary[~((summary["model"] == "gen_b") & (summary["metric"] == "mse"))]
    summary.to_csv(other / rundir.SUMMARY, index=False)
    return other


# ------------------------------------------------------------------------------------------------
# Aggregations
# ------------------------------------------------------------------------------------------------


def test_per_case_values_mean_over_samples(run_dir: Path) -> None:
    ps = pd.read_parquet(run_dir / rundir.PER_SAMPLE)
    got = data.per_case_values(ps).set_index(["model", "case_id", "metric"])["value"]
    assert len(got) == len(ps.drop_duplicates(["model", "case_id", "metric"]))
    for (model, case_id, metric), value in got.items():
        picked = ps[(ps.model == model) & (ps.case_id == case_id) & (ps.metric == metric)]
        assert value == pytest.approx(np.mean(picked["value"].to_numpy()))
    # gen_a has two samples per case, 0.25 apart: the mean is sample 0 + 0.125
    s0 = ps[(ps.model == "gen_a") & (ps["sample"] == 0) & (ps.metric == "ssim") & (ps.case_id == "c002")]
    assert got[("gen_a", "c002", "ssim")] == pytest.approx(float(s0["value"].iloc[0]) + 0.125)


def test_per_case_all_nan_case_stays_nan() -> None:
    ps = pd.DataFrame(
        {
            "model": "m",
            "case_id": ["a", "a", "b"],
            "sample": [0, 1, 0],
            "metric": "x",
            "value": [np.nan, 1.0, np.nan],
        }
    )
    got = data.per_case_values(ps).set_index("case_id")["value"]
    assert got["a"] == 1.0 and np.isnan(got["b"])


def test_worst_cases_matches_sorting(run_dir: Path) -> None:
    per_case = data.per_case_values(pd.read_parquet(run_dir / rundir.PER_SAMPLE))
    models = ["gen_a", "gen_b"]
    for metric, hib in (("ssim", True), ("mse", False)):
        rows = per_case[(per_case.metric == metric) & per_case.model.isin(models)]
        values = rows["value"].to_numpy()
        order = np.argsort(values if hib else -values, kind="stable")[:4]
        expected = list(zip(rows["model"].to_numpy()[order], rows["case_id"].to_numpy()[order], strict=True))
        got = data.worst_cases(per_case, metric, hib, models, 4)
        assert list(zip(got["model"], got["case_id"], strict=True)) == expected
        assert got["value"].to_numpy() == pytest.approx(values[order])


def test_worst_cases_nan_first_and_ties_by_name() -> None:
    per_case = pd.DataFrame(
        {
            "model": ["m", "m", "m", "n"],
            "case_id": ["a", "b", "c", "a"],
            "metric": "x",
            "value": [0.5, np.nan, 0.1, 0.1],
        }
    )
    got = data.worst_cases(per_case, "x", True, ["m", "n"], 10)
    assert got[["model", "case_id"]].to_numpy().tolist() == [["m", "b"], ["m", "c"], ["n", "a"], ["m", "a"]]
    assert data.worst_cases(per_case, "x", True, ["m"], 0).empty


def test_leaderboard_and_ranks(run_dir: Path) -> None:
    run = load_run(run_dir)
    table = data.leaderboard(run.summary, MODELS, ["ssim", "mse"], "")
    raw = pd.read_csv(run_dir / rundir.SUMMARY, keep_default_na=False)
    raw = raw[(raw.group == "") & raw.metric.isin(["ssim", "mse"])]
    raw = raw.assign(value=pd.to_numeric(raw["value"], errors="coerce"))
    assert len(table) == len(raw)
    assert table["model"].tolist()[:4] == ["gen_a", "gen_a", "gen_b", "gen_b"]
    assert table["metric"].tolist()[:2] == ["ssim", "mse"]
    got = table.set_index(["model", "metric"])["value"]
    for r in raw.itertuples():
        assert got[(r.model, r.metric)] == pytest.approx(float(r.value), nan_ok=True)
    # group "a" holds halved values of gen_a and gen_b only
    group_a = data.leaderboard(run.summary, MODELS, ["ssim"], "a").set_index("model")["value"]
    assert group_a.to_dict() == pytest.approx({"gen_a": 0.912 / 2, "gen_b": 0.951 / 2})

    metrics = [MetricColumn("ssim", True, ""), MetricColumn("mse", False, "")]
    contenders = ["gen_a", "gen_b", "blur-1", "blur-3"]
    values, ranks = data.wide_leaderboard(table, metrics, MODELS, contenders)
    for metric in metrics:
        v = values.loc[contenders, metric.name].to_numpy(float)
        expected = stats.rankdata(-v if metric.higher_is_better else v, method="min")
        assert ranks.loc[contenders, metric.name].to_numpy() == pytest.approx(expected)
    assert ranks.loc["real"].isna().all()


def test_rank_ties_nan_and_unknown_direction() -> None:
    values = pd.Series([1.0, 3.0, 3.0, np.nan])
    assert data.rank_models(values, True).tolist()[:3] == [3.0, 1.0, 1.0]
    assert np.isnan(data.rank_models(values, True).iloc[3])
    assert data.rank_models(values, None).isna().all()


def test_describe_matches_numpy(run_dir: Path) -> None:
    per_case = data.per_case_values(pd.read_parquet(run_dir / rundir.PER_SAMPLE))
    per_case.loc[
        (per_case.model == "gen_b") & (per_case.case_id == "c001") & (per_case.metric == "psnr"), "value"
    ] = np.inf
    got = data.describe(per_case, "psnr", ["gen_b", "missing"]).set_index("model")
    v = per_case[(per_case.model == "gen_b") & (per_case.metric == "psnr")]["value"].to_numpy()
    f = v[np.isfinite(v)]
    assert list(got.index) == ["gen_b"]
    assert got.loc["gen_b", "n"] == 5 and got.loc["gen_b", "non-finite"] == 1
    assert got.loc["gen_b", "mean"] == pytest.approx(f.mean())
    assert got.loc["gen_b", "sd"] == pytest.approx(np.std(f, ddof=1))
    assert got.loc["gen_b", "median"] == pytest.approx(np.median(f))


def test_reader_scores_and_turing() -> None:
    ratings = _ratings()
    got = data.reader_scores(ratings).set_index(["model", "criterion"])
    assert got.loc[("gen_a", "anatomy"), "mean"] == pytest.approx(3.0)  # calibration score 1 left out
    assert got.loc[("gen_b", "anatomy"), "sd"] == pytest.approx(np.std([5, 4, 4], ddof=1))
    assert got.loc[("real", "anatomy"), "n"] == 3 and got.loc[("real", "anatomy"), "readers"] == 3
    assert "turing" not in got.index.get_level_values("criterion")
    with_cal = data.reader_scores(ratings, include_calibration=True).set_index(["model", "criterion"])
    assert with_cal.loc[("gen_a", "anatomy"), "mean"] == pytest.approx(np.mean([2, 3, 4, 1]))

    turing = data.turing_rates(ratings).set_index("model")
    t = ratings[ratings.criterion == "turing"]
    for model, grp in t.groupby("model"):
        said = (grp.turing_answer == "real").to_numpy()
        assert turing.loc[model, "answers"] == len(grp)
        assert turing.loc[model, "fraction_real"] == pytest.approx(said.mean())
        assert turing.loc[model, "mean_confidence"] == pytest.approx(grp.confidence.astype(float).mean())


def test_compare_summaries(run_dir: Path, other_run: Path) -> None:
    a, b = load_run(run_dir).summary, load_run(other_run).summary
    got = data.compare_summaries(a, b, "").set_index(["model", "metric"])
    assert got.loc[("gen_a", "ssim"), "delta"] == pytest.approx(0.01)
    assert got.loc[("gen_a", "mse"), "delta"] == 0.0
    assert got.loc[("gen_b", "mse"), "present"] == "only A" and np.isnan(got.loc[("gen_b", "mse"), "delta"])
    assert (got["present"] == "both").sum() == len(a[a.group == ""]) - 1
    assert data.improved(0.01, True) == "better" and data.improved(0.01, False) == "worse"
    assert (
        data.improved(0.0, True) == "same"
        and data.improved(1.0, None) == ""
        and data.improved(np.nan, True) == ""
    )


def test_overlay_tints_inside_and_outlines_edges() -> None:
    rng = np.random.default_rng(1)
    ref = rng.random((20, 30)).astype(np.float32)
    mask = np.zeros((20, 30, 3), bool)
    mask[4:12, 5:15, 0] = True
    mask[8:16, 10:25, 1] = True
    out = thumbnail.overlay(ref, mask, alpha=0.4)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    edges = np.stack(
        [m & ~ndimage.binary_erosion(m, border_value=0) for m in np.moveaxis(mask, 2, 0)], axis=2
    )
    assert np.array_equal(thumbnail.mask_edges(mask), edges)
    expected = np.repeat(ref[..., None], 3, axis=2).astype(np.float64)
    for c in range(3):
        inside = mask[..., c]
        expected[inside] = expected[inside] * 0.6 + np.eye(3)[c] * 0.4
        expected[edges[..., c]] = np.eye(3)[c]
    assert np.abs(out.astype(int) - np.rint(expected * 255).astype(int)).max() <= 1
    outside = ~mask.any(axis=2)
    assert np.array_equal(out[outside][:, 0], np.rint(ref[outside] * 255).astype(np.uint8))
    # a one-channel mask of another size is resized to the reference and drawn orange
    small = np.zeros((10, 15, 1), bool)
    small[2:8, 2:8] = True
    out1 = thumbnail.overlay(ref, small)
    assert out1.shape == (20, 30, 3)
    # on the (resized) contour
    assert tuple(out1[4, 4]) == tuple(thumbnail.to_uint8(thumbnail.SINGLE_MASK_COLOUR))


def test_shrink_downscales_only() -> None:
    img = np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)
    assert thumbnail.shrink(img, 100).shape == (40, 60)
    assert thumbnail.shrink(img, 30).shape == (20, 30)


def test_condition_image_reasons(tmp_path: Path) -> None:
    ref = np.zeros((8, 8), np.float32)
    assert data.condition_image({"case_id": "x"}, ref)[0] is None
    img, why = data.condition_image({"case_id": "x", "anatomy_mask": str(tmp_path / "nope.png")}, ref)
    assert img is None and "nope.png" in why


# ------------------------------------------------------------------------------------------------
# Pages (AppTest)
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def app_env(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(data.RUN_ENV, str(run_dir))
    monkeypatch.delenv(data.STUDY_ENV, raising=False)
    monkeypatch.delenv(data.COMPARE_ENV, raising=False)
    return run_dir


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if page is not None:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_missing_run_dir_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(data.RUN_ENV, raising=False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert "xray-audit dashboard RUN_DIR" in at.error[0].value
    monkeypatch.setenv(data.RUN_ENV, str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert "not a finished xray-audit run directory" in at.error[0].value


def test_leaderboard_page(app_env: Path) -> None:
    at = _app()
    assert at.title[0].value == "Leaderboard"
    cells = at.dataframe[0].value
    assert cells.index.tolist()[0] == "gen_a" and cells.index.tolist()[-1].startswith("real")
    assert cells.loc["gen_a", "SSIM ↑"] == "0.912 [0.905, 0.918]"
    ranks = at.dataframe[1].value
    # generators compete, baselines and real do not (as in the report); gen_a wins 3 of 5 metrics
    assert ranks.index.tolist() == ["gen_a", "gen_b"]
    assert ranks.loc["gen_b", "SSIM ↑"] == 1.0 and ranks.loc["gen_a", "SSIM ↑"] == 2.0
    assert ranks.loc["gen_a", "mean rank"] == pytest.approx(np.mean([2, 2, 1, 1, 1]))
    assert len(at.get("plotly_chart")) == 1
    at.selectbox(key="lb_group").set_value("a").run()
    assert not at.exception
    cells = at.dataframe[0].value
    assert (
        cells.loc["gen_a", "SSIM ↑"].startswith("0.456 ")
        and cells.loc["blur-1 (sanity baseline)", "SSIM ↑"] == ""
    )
    at.multiselect(key="lb_metrics").set_value(["mse"]).run()
    assert at.dataframe[0].value.columns.tolist() == ["MSE ↓ (intensity² (range 255))"]


def test_distributions_page(app_env: Path) -> None:
    at = _app("distributions")
    assert at.title[0].value == "Distributions"
    assert len(at.get("plotly_chart")) == 1
    at.selectbox(key="dist_metric").set_value("psnr").run()
    at.selectbox(key="dist_group").set_value("a").run()
    assert not at.exception
    table = at.dataframe[0].value.set_index("model")
    ps = pd.read_parquet(app_env / rundir.PER_SAMPLE)
    group_a = ["c000", "c002", "c004"]  # make_run alternates groups a, b
    v = ps[(ps.model == "gen_b") & (ps.metric == "psnr") & ps.case_id.isin(group_a)]["value"]
    assert table.loc["gen_b", "n"] == 3 and table.loc["gen_b", "mean"] == pytest.approx(v.mean())


def test_gallery_page(app_env: Path) -> None:
    at = _app("gallery")
    assert at.title[0].value == "Case gallery"
    assert len(at.get("image")) == 2 + len(MODELS)  # reference, condition, one per model
    captions = [c.value for c in at.caption]
    assert any("frontal chest x-ray, case 0" in c for c in captions)
    ps = pd.read_parquet(app_env / rundir.PER_SAMPLE)
    v = ps[(ps.model == "gen_b") & (ps.case_id == "c000") & (ps["sample"] == 0) & (ps.metric == "mae")]
    text = "\n".join(m.value for m in at.markdown)
    assert f"MAE ↓ (intensity (range 255)): **{float(v['value'].iloc[0]):.4g}**" in text
    at.number_input(key="gallery_sample").set_value(1).run()
    assert not at.exception
    # only gen_a has a sample 1 (stored run-relative); the other models say so instead of an image
    assert len(at.get("image")) == 3
    assert sum("no sample for this case" in w.value for w in at.warning) == len(MODELS) - 1
    v = ps[(ps.model == "gen_a") & (ps.case_id == "c000") & (ps["sample"] == 1) & (ps.metric == "ssim")]
    assert f"SSIM ↑: **{float(v['value'].iloc[0]):.4g}**" in "\n".join(m.value for m in at.markdown)


def test_worst_cases_page_opens_gallery(app_env: Path) -> None:
    at = _app("worst_cases")
    assert at.title[0].value == "Worst cases"
    at.selectbox(key="worst_metric").set_value("mse").run()
    worst = at.dataframe[0].value
    per_case = data.per_case_values(pd.read_parquet(app_env / rundir.PER_SAMPLE))
    rows = per_case[(per_case.metric == "mse") & per_case.model.isin(["gen_a", "gen_b"])]
    assert worst["value"].iloc[0] == pytest.approx(rows["value"].max())
    assert len(worst) == min(10, len(rows))
    assert len(at.get("image")) == 3 * len(worst)
    target = worst["case_id"].iloc[0]
    at.button(key="worst_open_0").click().run()
    assert not at.exception
    assert at.title[0].value == "Case gallery"
    assert at.selectbox(key="gallery_case").value == target


def test_readers_page(
    app_env: Path, study_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app("readers")
    assert "--reader-study" in at.info[0].value
    monkeypatch.setenv(data.STUDY_ENV, str(tmp_path))
    at = _app("readers")
    assert f"xray-audit reader-study export {tmp_path}" in at.warning[0].value
    monkeypatch.setenv(data.STUDY_ENV, str(study_dir))
    at = _app("readers")
    wide = at.dataframe[0].value
    assert wide.index.tolist() == ["gen_a", "gen_b", "real"]  # the run's model order
    assert wide.loc["gen_b", "anatomy"] == pytest.approx(13 / 3)
    assert len(at.get("plotly_chart")) == 2
    at.checkbox(key="rs_cal").check().run()
    assert at.dataframe[0].value.loc["gen_a", "anatomy"] == pytest.approx(2.5)


def test_compare_page(app_env: Path, other_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app("compare")
    assert at.info and not at.dataframe
    at.text_input(key="cmp_path").input(str(app_env.parent / "nope")).run()
    assert "not a finished xray-audit run directory" in at.error[0].value
    monkeypatch.setenv(data.COMPARE_ENV, str(other_run))
    at = _app("compare")
    both = at.dataframe[1].value.set_index(["model", "metric"])
    assert both.loc[("gen_a", "ssim"), "delta"] == pytest.approx(0.01)
    assert both.loc[("gen_a", "ssim"), "B vs A"] == "better"
    counts = at.dataframe[0].value
    assert counts.loc["gen_a", "better"] == 1


def test_privacy_page(app_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = _app("privacy")  # make_run has no privacy audit: the page says how to get one
    assert at.title[0].value == "Privacy" and "[privacy]" in at.info[0].value
    hidden = FakePrivacy(closeness=PRIVACY.closeness, show_training_images=False)
    for privacy, name in ((PRIVACY, "shown"), (hidden, "hidden")):
        run = write_fake_run(tmp_path / name, privacy_spec(privacy))
        monkeypatch.setenv(data.RUN_ENV, str(run))
        at = _app("privacy")
        rows = pd.read_parquet(run / rundir.PRIVACY)
        table = at.dataframe[0].value
        assert table["model"].tolist() == [
            "gen_a", "gen_b", "copy (sanity baseline)", "real (held-out, calibration)"
        ]  # fmt: skip
        for model, shown in zip(
            ["gen_a", "gen_b", "copy", "real"], table.itertuples(index=False), strict=True
        ):
            mine = rows[rows.model == model]
            assert shown[3] == pytest.approx(mine["flagged"].mean())  # memorised
            assert shown[6] == pytest.approx((mine["flagged_by"] == "both").mean())
        assert len(at.get("plotly_chart")) == 2
        k = at.number_input(key="privacy_k").value
        gens = rows[rows.model.isin(["gen_a", "gen_b"])].sort_values("nn_distance", kind="stable").head(k)
        text = "\n".join(m.value for m in at.markdown)
        assert all(f"{r.model} · {r.case_id} · sample {r.sample}" in text for r in gens.itertuples())
        if privacy.show_training_images:
            assert len(at.get("image")) == 3 * k  # generated, training, difference
        else:
            # The generated samples only, and of those only the unflagged: a flagged sample is, by the
            # audit's own measure, a training patient's image.
            assert len(at.get("image")) == int((~gens.flagged).sum())
            assert gens.flagged.any()
            withheld = [w.value for w in at.warning if "withheld: flagged as a copy" in w.value]
            assert len(withheld) == int(gens.flagged.sum())
            assert HIDDEN_NOTE in at.info[0].value
            assert all(f"training case `{t}`" in text for t in gens["train_case_id"])
        at.selectbox(key="privacy_space").set_value("nn_distance_pixel").run()
        assert not at.exception


# ------------------------------------------------------------------------------------------------
# Serving, imports
# ------------------------------------------------------------------------------------------------


def test_never_imports_torch() -> None:
    code = (
        "import sys; import dashboards.serve; "
        "assert 'streamlit' not in sys.modules, 'the CLI launcher should stay light'; "
        "import dashboards.app, dashboards.data, dashboards.views.common; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_serve_checks_then_execs(
    run_dir: Path, study_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(serve.os, "execvpe", lambda *a: calls.append(a))
    with pytest.raises(FileNotFoundError, match="not a finished xray-audit run directory"):
        serve.serve(tmp_path, None, 8600)
    with pytest.raises(FileNotFoundError, match="reader study directory not found"):
        serve.serve(run_dir, tmp_path / "nope", 8600)
    serve.serve(run_dir, study_dir, 8600, "0.0.0.0", compare=run_dir)
    (exe, argv, env) = calls[-1]
    assert exe == sys.executable and argv[1:4] == ["-m", "streamlit", "run"]
    assert argv[argv.index("--server.port") + 1] == "8600"
    assert argv[argv.index("--server.address") + 1] == "0.0.0.0"
    assert argv[argv.index("--server.headless") + 1] == "true"
    assert env[data.RUN_ENV] == str(run_dir.resolve()) and env[data.STUDY_ENV] == str(study_dir.resolve())
    assert env[data.COMPARE_ENV] == str(run_dir.resolve())


# ------------------------------------------------------------------------------------------------
# Chromium smoke test
# ------------------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PAGES = {  # url path -> title
    "": "Leaderboard",
    "distributions": "Distributions",
    "gallery": "Case gallery",
    "worst_cases": "Worst cases",
    "privacy": "Privacy",
    "readers": "Reader scores",
    "compare": "Compare runs",
}


@pytest.fixture(scope="module")
def server(
    run_dir: Path, study_dir: Path, other_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = _free_port()
    env = serve.dashboard_env(run_dir, study_dir, other_run)
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(serve.streamlit_command(port), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the dashboard did not start:\n{log_path.read_text(errors='replace')}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_chromium_smoke(server: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install playwright")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"needs a system Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            # A bookmark first, before the root page was ever opened on this server: Streamlit must
            # still run it under app.py (it did not while the views lived in a folder named pages/).
            for path in sorted(PAGES, key=lambda p: p != "gallery"):
                title = PAGES[path]
                page.goto(server + path)
                heading = page.locator("h1", has_text=title)
                heading.wait_for(timeout=20_000)
                # A bookmarked page runs under app.py: its navigation lists the pages by title (no
                # helper module as a page of its own) and its sidebar names the run.
                page.locator('[data-testid="stSidebar"]', has_text="cases ·").wait_for(timeout=20_000)
                links = [
                    t.split("\n")[-1].strip()
                    for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
                ]
                assert links == list(PAGES.values()), (path, links)  # (each text starts with its icon's name)
                imgs = page.locator('[data-testid="stImage"] img, [data-testid="stFullScreenFrame"] img')
                if path in ("gallery", "worst_cases"):
                    # Streamlit renders a page's elements as the script reaches them, so on a loaded
                    # machine the first image can arrive before the rest: wait for three, all decoded.
                    page.wait_for_function(
                        "() => { const i = [...document.querySelectorAll('img')]"
                        ".filter(i => i.src.includes('/media/'));"
                        " return i.length >= 3 && i.every(i => i.complete && i.naturalWidth > 0); }",
                        timeout=30_000,
                    )
                    assert imgs.count() >= 3, path
                if path in ("", "distributions", "readers", "compare"):
                    page.locator(".js-plotly-plot").first.wait_for(timeout=20_000)
                errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
                assert errors.count() == 0, f"{path}: {errors.all_inner_texts()}"
        finally:
            browser.close()
