"""report.html's statistics sections (model-vs-model tests, reader study, metric validity, provenance).

The numbers on the page are parsed back and compared, to the precision shown, with the tables they come
from (reports.statistics.paired_tests, reports.reader_stats.reader_statistics) and, where a reference
exists, with scipy. Built on the synthetic clinical run of test_report_clinical (no runner, no torch)
and a simulated reader-study export; the CLI test creates and rates a real study of that run.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import math
import re
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from scipy import stats as sps

from audit import rundir
from reports.comparison import write_exports
from reports.html import render_html_report
from reports.reader_stats import POOLED, metric_validity, reader_statistics, validity_points
from reports.run import load_run, metric_columns, nonfinite_metrics
from reports.sections.paired import render_paired
from reports.sections.provenance import describe_preprocessing
from reports.statistics import paired_tests, read_paired_tests, run_paired_tests
from tests.test_report_clinical import MODELS, SHA, make_clinical_run
from tests.test_report_html import _outside_plotly_js

READERS = ("ana", "ben", "cho")
CRITERIA = ("anatomy", "pathology", "quality")
EFFECTS = {"real": 1.0, "gen_b": 0.4, "gen_a": 0.0, "blur-1": -0.4, "blur-3": -1.2}
RESAMPLES = 200
SEED, RUN_RESAMPLES = 7, 1000  # [study].seed and [metrics].bootstrap_resamples of the fixture run
NUMBER = re.compile(r"[−-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[−-]?\d+)?|[−-]?∞")


def simulate_ratings(cases: list[str], seed: int = 0) -> pd.DataFrame:
    """An export-shaped frame: every reader scores every (model, case) image on each criterion
    (latent 3 + model + reader + case + noise, cut to 1-5), a quarter of the items twice, and answers
    the Turing question; one calibration item that every statistic must ignore."""
    rng = np.random.default_rng(seed)
    reader_re = dict(zip(READERS, rng.normal(0, 0.4, len(READERS)), strict=True))
    case_re = dict(zip(cases, rng.normal(0, 0.5, len(cases)), strict=True))
    rows = []
    items = [(m, c) for m in EFFECTS for c in cases]
    for k, (model, case) in enumerate(items):
        for reader in READERS:
            for read in (1, 2) if k % 4 == 0 else (1,):
                base = {
                    "reader": reader, "item": f"item{k:03d}", "model": model, "case_id": case,
                    # real items are the cases' own images: the export has no sample for them
                    "sample": pd.NA if model == "real" else 0, "read_number": read, "calibration": False,
                }  # fmt: skip
                for j, criterion in enumerate(CRITERIA):
                    latent = 3 + EFFECTS[model] + reader_re[reader] + case_re[case] + 0.2 * j
                    score = int(np.clip(np.rint(latent + rng.normal(0, 0.6)), 1, 5))
                    rows.append({**base, "criterion": criterion, "score": score, "turing_answer": None,
                                 "confidence": pd.NA})  # fmt: skip
                answer = "synthetic" if rng.random() < (0.35 if model == "real" else 0.6) else "real"
                rows.append({**base, "criterion": "turing", "score": pd.NA, "turing_answer": answer,
                             "confidence": int(rng.integers(1, 6))})  # fmt: skip
    for criterion in CRITERIA:
        rows.append({"reader": "ana", "item": "calib", "model": "gen_a", "case_id": cases[0], "sample": 0,
                     "read_number": 1, "calibration": True, "criterion": criterion, "score": 1,
                     "turing_answer": None, "confidence": pd.NA})  # fmt: skip
    frame = pd.DataFrame(rows)
    for col in ("score", "confidence", "read_number", "sample"):
        frame[col] = frame[col].astype("Int64")
    return frame


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clinical_run(tmp_path_factory.mktemp("sections"))


@pytest.fixture(scope="module")
def ratings(run_dir: Path) -> pd.DataFrame:
    return simulate_ratings(sorted(pd.read_parquet(run_dir / rundir.PER_SAMPLE)["case_id"].unique()))


@pytest.fixture(scope="module")
def stats(ratings: pd.DataFrame):
    return reader_statistics(ratings, rng=np.random.default_rng(0), resamples=RESAMPLES)


@pytest.fixture(scope="module")
def plain(run_dir: Path) -> str:
    return render_html_report(run_dir, grid_cases=1)


@pytest.fixture(scope="module")
def rated(run_dir: Path, ratings: pd.DataFrame, stats) -> str:
    return render_html_report(
        run_dir, grid_cases=1, reader_ratings=ratings, reader_stats=stats, reader_source="studies/x"
    )


# --- parsing ----------------------------------------------------------------------------------------


def _section(page: str, section_id: str) -> str:
    found = re.search(rf'<section id="{section_id}">(.*?)</section>', page, flags=re.DOTALL)
    assert found, f"no section {section_id}"
    return found.group(1)


def _text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _numbers(fragment: str) -> list[str]:
    return NUMBER.findall(_text(fragment))


def _value(token: str) -> float:
    token = token.replace("−", "-")
    return math.copysign(math.inf, -1.0 if token.startswith("-") else 1.0) if "∞" in token else float(token)


def assert_shown(token: str, expected: float) -> None:
    """``token`` is ``expected`` rounded to the digits it shows."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        assert token == "—", (token, expected)
        return
    shown = _value(token)
    mantissa = token.replace("−", "-").split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    if "e" in token:
        exponent = int(token.replace("−", "-").split("e")[1])
        tolerance = 0.5 * 10.0 ** (exponent - decimals)
    else:
        tolerance = 0.5 * 10.0**-decimals
    assert abs(shown - float(expected)) <= tolerance * (1 + 1e-9), (token, expected)


def _cells(row: str) -> dict[str, str]:
    return dict(re.findall(r'<td data-col="([^"]+)"[^>]*>(.*?)</td>', row, flags=re.DOTALL))


def _row(fragment: str, **attrs: str) -> str:
    head = "".join(rf'\s+data-{k.replace("_", "-")}="{re.escape(html.escape(v))}"' for k, v in attrs.items())
    found = re.search(rf"<tr{head}>(.*?)</tr>", fragment, flags=re.DOTALL)
    assert found, f"no row {attrs}"
    return found.group(1)


def assert_estimate(cell: str, value: float, low: float, high: float) -> None:
    """``cell`` shows "value [low, high]" (then perhaps its N, which is not part of the estimate)."""
    cell = re.sub(r'<span class="n">.*?</span>', "", cell, flags=re.DOTALL)
    tokens = _numbers(cell) if not (isinstance(value, float) and math.isnan(value)) else ["—"]
    assert_shown(tokens[0], value)
    if not (math.isnan(low) and math.isnan(high)):
        assert len(tokens) == 3, cell
        assert_shown(tokens[1], low)
        assert_shown(tokens[2], high)


def figure(page: str, div_id: str) -> tuple[list[dict], dict]:
    """The data and layout of one plotly div, checked to be a valid figure."""
    start = page.index(f'Plotly.newPlot(                        "{div_id}",')
    decoder = json.JSONDecoder()
    pos = page.index("[", start)
    data, end = decoder.raw_decode(page, pos)
    layout, _ = decoder.raw_decode(page, page.index("{", end))
    go.Figure(data=data, layout=layout)  # raises on any invalid property
    return data, layout


def _array(values) -> np.ndarray:
    if isinstance(values, dict):
        dtype = np.dtype(values["dtype"]).newbyteorder("<")
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=dtype)
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


# --- sections ---------------------------------------------------------------------------------------


def test_sections_and_navigation(plain: str, rated: str) -> None:
    for page, reader in ((plain, False), (rated, True)):
        nav = re.search(r"<nav>(.*?)</nav>", page, flags=re.DOTALL).group(1)
        anchors = re.findall(r'href="#([^"]+)"', nav)
        expected = ["results", "groups", "model-tests"]
        expected += ["reader-study", "metric-validity"] if reader else []
        expected += ["distributions", "images", "failures", "provenance"]
        assert anchors == expected
        sections = re.findall(r'<section id="([^"]+)">', page)
        assert sections == expected  # every link has its section, in page order
        assert ('data-table="reader"' in page) == reader
    assert "<h2>Reader study</h2>" not in plain and "<h2>Metric validity</h2>" not in plain
    for heading in ("Mixed-effects model", "Ordinal sensitivity fit", "Inter-reader agreement",
                    "Intra-reader agreement", "Real or synthetic?", "Score distributions"):  # fmt: skip
        assert f"<h3>{heading}</h3>" in rated or f'">{heading}</h3>' in rated


def test_reports_are_self_contained(plain: str, rated: str) -> None:
    for page in (plain, rated):
        rest = _outside_plotly_js(page)
        assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", rest, flags=re.IGNORECASE)
        assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.IGNORECASE)
        assert not re.search(r"<link\b", page, flags=re.IGNORECASE)
        assert "http://" not in rest and "https://" not in rest
        assert page.count('<script id="plotly-js"') == 1


def test_every_figure_is_valid_plotly(rated: str) -> None:
    ids = re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', rated)
    assert {i.split("-")[0] for i in ids} == {"dist", "forest", "reader", "validity"}
    for div_id in ids:
        figure(rated, div_id)


# --- model-vs-model tests ---------------------------------------------------------------------------


def test_paired_tests_on_the_page_equal_paired_tests(run_dir: Path, plain: str) -> None:
    expected = paired_tests(load_run(run_dir), rng=np.random.default_rng(SEED), resamples=RUN_RESAMPLES)
    section = _section(plain, "model-tests")
    assert f"over all {len(expected)} comparisons" in section
    for metric, rows in expected.groupby("metric", sort=False):
        table = re.search(rf'<details class="paired-metric" data-metric="{metric}".*?</details>', section,
                          flags=re.DOTALL).group(0)  # fmt: skip
        for r in rows.itertuples(index=False):
            cells = _cells(_row(table, model_a=r.model_a, model_b=r.model_b))
            assert _text(cells["n"]) == str(r.n)
            assert_estimate(cells["mean_difference"], r.mean_difference, r.mean_difference_ci_low,
                            r.mean_difference_ci_high)  # fmt: skip
            assert_estimate(cells["rank_biserial"], r.rank_biserial, r.rank_biserial_ci_low,
                            r.rank_biserial_ci_high)  # fmt: skip
            assert_shown(_numbers(cells["pvalue"])[0], r.pvalue)
            assert_shown(_numbers(cells["pvalue_holm"])[0], r.pvalue_holm)
            assert _text(cells["better"]) == (r.better or "—")
        # The forest plot draws the same differences and intervals, pair by pair.
        div = re.search(rf'<figure class="plot forest" data-metric="{metric}"><div[^>]*>\s*<div id="([^"]+)"',
                        section).group(1)  # fmt: skip
        (trace,), layout = figure(plain, div)
        assert trace["y"] == [f"{a} − {b}" for a, b in zip(rows.model_a, rows.model_b, strict=True)]
        np.testing.assert_array_equal(_array(trace["x"]), rows.mean_difference.to_numpy())
        md, lo, hi = rows.mean_difference, rows.mean_difference_ci_low, rows.mean_difference_ci_high
        np.testing.assert_allclose(_array(trace["error_x"]["array"]), hi - md, atol=1e-12)
        np.testing.assert_allclose(_array(trace["error_x"]["arrayminus"]), md - lo, atol=1e-12)
        assert layout["shapes"][0]["x0"] == 0 == layout["shapes"][0]["x1"]  # the no-difference line
        lo, hi = layout["xaxis"]["range"]
        assert lo < min(0, rows.mean_difference_ci_low.min())
        assert hi > max(0, rows.mean_difference_ci_high.max())


def test_paired_p_value_equals_scipy(run_dir: Path, plain: str) -> None:
    per_sample = pd.read_parquet(run_dir / rundir.PER_SAMPLE)
    ssim = per_sample[per_sample.metric == "ssim"].groupby(["model", "case_id"]).value.mean().unstack(0)
    ref = sps.wilcoxon(ssim["gen_a"], ssim["gen_b"], zero_method="pratt")
    table = re.search(r'<details class="paired-metric" data-metric="ssim".*?</details>', plain, re.DOTALL)
    table = table.group(0)
    cells = _cells(_row(table, model_a="gen_a", model_b="gen_b"))
    assert_shown(_numbers(cells["pvalue"])[0], ref.pvalue)
    assert_shown(_numbers(cells["mean_difference"])[0], float((ssim["gen_a"] - ssim["gen_b"]).mean()))


def test_paired_csv_is_what_the_page_computes(run_dir: Path, tmp_path: Path) -> None:
    # `xray-audit report --format csv,html` reads paired_tests.csv back instead of recomputing it.
    write_exports(run_dir, tmp_path, ["csv"], resamples=100)
    read = read_paired_tests(tmp_path / "paired_tests.csv")
    computed = run_paired_tests(load_run(run_dir), resamples=100).frame
    pd.testing.assert_frame_equal(read, computed, check_dtype=False, check_exact=True)


def test_infinite_metric_is_left_out_of_the_tests(tmp_path: Path) -> None:
    run = make_clinical_run(tmp_path)
    per_sample = pd.read_parquet(run / rundir.PER_SAMPLE)
    per_sample.loc[(per_sample.model == "gen_a") & (per_sample.metric == "psnr"), "value"] = np.inf
    per_sample.to_parquet(run / rundir.PER_SAMPLE)
    loaded = load_run(run)
    frame = run_paired_tests(loaded, resamples=50).frame
    assert "psnr" not in set(frame.metric) and "ssim" in set(frame.metric)
    skipped = nonfinite_metrics(loaded)
    assert list(skipped) == ["psnr"]
    section = render_paired(frame, metric_columns(loaded, 255.0), 0.95, skipped, SEED, 50)
    assert "Not tested: PSNR: 6 infinite per-sample value(s) (gen_a)" in _text(section)
    assert 'data-metric="psnr"' not in section and 'data-metric="ssim"' in section


# --- reader study -----------------------------------------------------------------------------------


def test_reader_scores_are_columns_of_the_results(rated: str, stats) -> None:
    table = re.search(r'<div class="result-table" data-table="reader" id="results-reader">(.*?)</table>',
                      rated, flags=re.DOTALL).group(1)  # fmt: skip
    heads = re.findall(r'<th data-metric="([^"]+)"[^>]*>(.*?)</th>', table, flags=re.DOTALL)
    assert [h[0] for h in heads] == [f"reader_{c}" for c in CRITERIA]
    assert [_text(h[1]).split(" ↑")[0] for h in heads] == [f"reader {c}" for c in CRITERIA]
    rows = dict(re.findall(r'<tr class="[a-z]+" data-model="([^"]+)">(.*?)</tr>', table, flags=re.DOTALL))
    assert list(rows) == ["gen_a", "gen_b", "blur-1", "blur-3", "real"]  # real last, as in the results
    scores = stats.scores.set_index(["model", "criterion"])
    for model, row in rows.items():
        cells = re.findall(r"<td.*?</td>", row, flags=re.DOTALL)
        for criterion, cell in zip(CRITERIA, cells, strict=True):
            s = scores.loc[(model, criterion)]
            assert_estimate(cell, s["mean"], s.ci_low, s.ci_high)
            assert f"n={int(s.n_ratings)}" in cell
    # the best reader score among the evaluated models is marked, never real's
    best = scores.loc[["gen_a", "gen_b"]].groupby("criterion")["mean"].idxmax()
    for criterion, (model, _) in best.items():
        cell = re.findall(r"<td.*?</td>", rows[model], flags=re.DOTALL)[CRITERIA.index(criterion)]
        assert 'class="best"' in cell
    assert "best" not in rows["real"]


def test_reader_section_numbers_equal_reader_statistics(rated: str, stats) -> None:
    section = _section(rated, "reader-study")
    scores = re.search(r'<table class="summary reader-scores">.*?</table>', section, re.DOTALL).group(0)
    for r in stats.scores.itertuples(index=False):
        row = re.search(rf'data-model="{re.escape(r.model)}">(.*?)</tr>', scores, re.DOTALL).group(1)
        cell = re.search(rf'<td data-criterion="{r.criterion}"[^>]*>(.*?)</td>', row, re.DOTALL).group(1)
        assert_estimate(cell, r.mean, r.ci_low, r.ci_high)
        assert f"n={r.n_ratings} · {r.n_readers} readers · {r.n_items} items" in _text(cell)

    for r in stats.mixed.itertuples(index=False):
        cells = _cells(_row(section, criterion=r.criterion, model=r.model))
        assert_estimate(cells["coef"], r.coef, r.ci_low, r.ci_high)
        assert_shown(_numbers(cells["se"])[0], r.se)
        assert_shown(_numbers(cells["pvalue"])[0], r.pvalue)
        facts = re.search(rf'<p class="small mixed-facts" data-criterion="{r.criterion}">(.*?)</p>', section,
                          re.DOTALL).group(1)  # fmt: skip
        for col in ("reference_mean", "var_reader", "var_case", "var_residual"):
            shown = re.search(rf'<span data-col="{col}">([^<]*)</span>', facts).group(1)
            assert_shown(shown, getattr(r, col))
        assert ("not converged" in facts) == (not r.converged)
    for criterion, rows in stats.mixed.groupby("criterion"):
        warned = re.search(rf'<div class="callout warn fit-warnings" data-criterion="{criterion}">', section)
        assert bool(warned) == bool(rows.warnings.iloc[0])
    assert stats.mixed.coef.notna().all() and len(stats.mixed) == 3 * 4

    ordinal = re.search(r'<table class="plain stats ordinal">.*?</table>', section, re.DOTALL).group(0)
    for r in stats.ordinal.itertuples(index=False):
        cells = _cells(_row(ordinal, criterion=r.criterion, model=r.model))
        assert_estimate(cells["coef"], r.coef, r.ci_low, r.ci_high)
        assert_shown(_numbers(cells["pvalue"])[0], r.pvalue)
        assert _text(cells["n_ratings"]) == str(r.n_ratings)

    agreement = re.search(r'<table class="plain stats agreement">.*?</table>', section, re.DOTALL).group(0)
    for r in stats.agreement.itertuples(index=False):
        cells = _cells(_row(agreement, criterion=r.criterion))
        assert_estimate(cells["icc2_1"], r.icc2_1, r.icc2_1_ci_low, r.icc2_1_ci_high)
        assert_estimate(cells["icc2_k"], r.icc2_k, r.icc2_k_ci_low, r.icc2_k_ci_high)
        assert_shown(_text(cells["kappa_quadratic"]), r.kappa_quadratic)
        assert_shown(_text(cells["alpha_ordinal"]), r.alpha_ordinal)
        assert _text(cells["n_reader_pairs"]) == str(int(r.n_reader_pairs)) == "3"

    intra = re.search(r'<table class="plain stats intra">.*?</table>', section, re.DOTALL).group(0)
    assert len(stats.intra) == len(CRITERIA) * (len(READERS) + 1)
    for r in stats.intra.itertuples(index=False):
        cells = _cells(_row(intra, criterion=r.criterion, reader=r.reader))
        assert_shown(_text(cells["kappa_quadratic"]), r.kappa_quadratic)
        assert_shown(_text(cells["exact_agreement"]), r.exact_agreement)
        assert _text(cells["n_pairs"]) == str(r.n_pairs)

    turing = re.search(r'<table class="plain stats turing">.*?</table>', section, re.DOTALL).group(0)
    assert list(stats.turing.reader) == [*READERS, POOLED]
    for r in stats.turing.itertuples(index=False):
        cells = _cells(_row(turing, reader=r.reader))
        for col in ("accuracy", "sensitivity", "specificity", "auc"):
            assert_shown(_text(cells[col]), getattr(r, col))
        assert _text(cells["n"]) == str(r.n)
    assert "AUC ≈ 0.5 means the readers cannot tell real from synthetic" in _text(section)
    pooled_auc = float(stats.turing.set_index("reader").at[POOLED, "auc"])
    assert f"Pooled AUC {pooled_auc:.3f}" in _text(section)
    assert "3 reader(s)" in _text(section) and "studies/x" in section


def test_score_distributions_count_the_first_reads(rated: str, ratings: pd.DataFrame) -> None:
    first = ratings[(ratings.read_number == 1) & ~ratings.calibration & ratings.criterion.isin(CRITERIA)]
    ids = re.findall(
        r'<figure class="plot reader-dist" data-criterion="([^"]+)"><div[^>]*>\s*<div id="([^"]+)"', rated
    )
    assert [c for c, _ in ids] == list(CRITERIA)
    for criterion, div in ids:
        data, layout = figure(rated, div)
        assert layout["barmode"] == "stack" and [t["name"] for t in data] == ["1", "2", "3", "4", "5"]
        rows = first[first.criterion == criterion]
        expected = rows.groupby(["model", "score"]).size().unstack(fill_value=0)
        for trace in data:
            level = int(trace["name"])
            counts = expected[level] if level in expected.columns else pd.Series(0, index=expected.index)
            assert trace["y"] == ["gen_a", "gen_b", "blur-1", "blur-3", "real"]
            got = dict(zip(trace["y"], trace["customdata"], strict=True))
            assert got == {m: int(counts.get(m, 0)) for m in trace["y"]}
            totals = expected.sum(axis=1)
            np.testing.assert_allclose(_array(trace["x"]), [100 * got[m] / totals[m] for m in trace["y"]])


# --- metric validity --------------------------------------------------------------------------------


def _model_scores(ratings: pd.DataFrame, criterion: str) -> pd.Series:
    """Mean over a model's images of the mean first-read score of each image (calibration left out)."""
    rows = ratings[(ratings.criterion == criterion) & (ratings.read_number == 1) & ~ratings.calibration]
    rows = rows.assign(score=rows.score.astype(float), sample=rows["sample"].fillna(0))
    return rows.groupby(["model", "case_id", "sample"]).score.mean().groupby(level="model").mean()


def test_set_level_validity_equals_scipy_spearman(run_dir: Path, ratings: pd.DataFrame) -> None:
    summary = pd.read_csv(run_dir / rundir.SUMMARY)  # all-cases rows have an empty (NaN) group
    per_sample = pd.read_parquet(run_dir / rundir.PER_SAMPLE)
    got = metric_validity(per_sample, ratings, summary).set_index(["metric", "criterion"])
    overall = summary[summary.group.isna()]
    for metric, n_models in (("fid", 4), ("fxd", 3), ("kid", 4), ("pathology_auc", 5)):
        values = overall[overall.metric == metric].set_index("model").value.dropna()
        for criterion in CRITERIA:
            both = pd.concat([values, _model_scores(ratings, criterion)], axis=1, join="inner")
            ref = sps.spearmanr(both.iloc[:, 0], both.iloc[:, 1])
            row = got.loc[(metric, criterion)]
            assert row.n_model == n_models == len(both)
            assert row.rho_model == pytest.approx(ref.statistic, abs=1e-12)
            assert row.p_model == pytest.approx(ref.pvalue, rel=1e-9)
            assert np.isnan(row.rho_image) and np.isnan(row.p_image) and row.n_image == 0
    # real has no FID (it would be compared with itself) and is not a point of the FID correlation
    points = validity_points(per_sample, ratings, summary)
    fid = points[(points.metric == "fid") & (points.criterion == "quality")]
    assert sorted(fid.model) == ["blur-1", "blur-3", "gen_a", "gen_b"] and (fid.level == "model").all()
    # The per-sample rows are what they were without a summary.
    without = metric_validity(per_sample, ratings)
    assert set(without.metric) == set(per_sample.metric)
    pd.testing.assert_frame_equal(
        got.reset_index()[lambda f: f.metric.isin(set(per_sample.metric))].reset_index(drop=True), without
    )


def test_per_image_validity_equals_scipy_spearman(run_dir: Path, ratings: pd.DataFrame) -> None:
    per_sample = pd.read_parquet(run_dir / rundir.PER_SAMPLE)
    got = metric_validity(per_sample, ratings).set_index(["metric", "criterion"])
    rows = ratings[(ratings.criterion == "quality") & (ratings.read_number == 1) & ~ratings.calibration]
    rows = rows.assign(score=rows.score.astype(float), sample=rows["sample"].fillna(0).astype(int))
    images = rows.groupby(["model", "case_id", "sample"]).score.mean()
    values = per_sample[per_sample.metric == "overlap_f1"].set_index(["model", "case_id", "sample"]).value
    both = pd.concat([values, images], axis=1, join="inner")
    assert len(both) == 30  # real's images (no sample in the export) join its sample-0 metrics
    ref = sps.spearmanr(both.value, both.score)
    assert got.at[("overlap_f1", "quality"), "rho_image"] == pytest.approx(ref.statistic, abs=1e-12)
    assert got.at[("overlap_f1", "quality"), "n_image"] == 30


def test_validity_summary_errors(run_dir: Path, ratings: pd.DataFrame) -> None:
    per_sample = pd.read_parquet(run_dir / rundir.PER_SAMPLE)
    summary = pd.read_csv(run_dir / rundir.SUMMARY)
    first = summary.index[summary.metric == "fid"][0]
    twice = pd.concat([summary, summary.loc[[first]]], ignore_index=True)
    message = rf"rows \[{first}, {len(summary)}\]: metric 'fid' appears more than once"
    with pytest.raises(ValueError, match=message):
        metric_validity(per_sample, ratings, twice)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['value'\]"):
        metric_validity(per_sample, ratings, summary.drop(columns="value"))


def test_validity_section_shows_metric_validity(rated: str, run_dir: Path, ratings: pd.DataFrame) -> None:
    run = load_run(run_dir)
    expected = metric_validity(run.per_sample, ratings, run.summary)
    section = _section(rated, "metric-validity")
    for r in expected.itertuples(index=False):
        row = _row(section, metric=r.metric)
        for col, n in (("rho_image", r.n_image), ("rho_model", r.n_model)):
            cell = re.search(rf'<td[^>]*data-criterion="{r.criterion}" data-col="{col}"[^>]*>(.*?)</td>', row,
                             re.DOTALL).group(1)  # fmt: skip
            rho = getattr(r, col)
            assert_shown(_numbers(cell)[0] if math.isfinite(rho) else _text(cell).split()[0], rho)
            if col == "rho_model" or r.metric in set(run.per_sample.metric):
                assert f"n={n}" in _text(cell)
    callout = re.search(r'<div class="callout frechet-validity">(.*?)</div>', section, re.DOTALL).group(1)
    fid = expected[(expected.metric == "fid") & (expected.criterion == "quality")].iloc[0]
    assert f"quality: ρ = {fid.rho_model:.3f} over 4 models".replace("-", "−") in _text(callout)
    assert "XReal" in callout

    data, layout = figure(rated, "validity-scatter")
    buttons = layout["updatemenus"][0]["buttons"]
    labels = [b["label"] for b in buttons]
    assert "FID" in labels and "SSIM" in labels and not any("·" in label for label in labels)
    visible = buttons[labels.index("FID")]["args"][0]["visible"]
    fid_traces = [t for t, v in zip(data, visible, strict=True) if v]
    assert [t["name"].split(" (")[0] for t in fid_traces] == list(CRITERIA)
    values = run.summary[(run.summary.metric == "fid") & (run.summary.group == "")].set_index("model").value
    for trace, criterion in zip(fid_traces, CRITERIA, strict=True):
        scores = _model_scores(ratings, criterion)
        points = zip(_array(trace["x"]), _array(trace["y"]), strict=True)
        pairs = dict(zip(trace["text"], points, strict=True))
        assert set(pairs) == {"gen_a", "gen_b", "blur-1", "blur-3"}
        for model, (x, y) in pairs.items():
            assert x == values[model] and y == pytest.approx(scores[model], abs=1e-12)
    # exactly the first metric's traces are visible when the page opens
    assert [t["visible"] for t in data] == buttons[0]["args"][0]["visible"]


# --- provenance -------------------------------------------------------------------------------------


def test_provenance_rows(plain: str, run_dir: Path) -> None:
    section = _section(plain, "provenance")
    evaluators = re.search(r'<table class="plain evaluators-provenance">.*?</table>', section, re.DOTALL)
    evaluators = evaluators.group(0)
    for name, sha in (("xrv-densenet121-res224-all", SHA), ("xrv-pspnet-chestx-det", "1" * 64),
                      ("demo-segmenter-encoder", "2" * 64)):  # fmt: skip
        cells = _cells(_row(evaluators, evaluator=name))
        assert _text(cells["weights_sha256"]) == sha  # the whole hash, not a prefix
    classifier = _cells(_row(evaluators, evaluator="xrv-densenet121-res224-all"))
    assert "224×224 px" in _text(classifier["preprocessing"])
    policy = re.search(r"<h3>Preprocessing and resize policy</h3>(.*?)</table>", section, re.DOTALL)
    policy = _text(policy.group(1))
    assert "[metrics].resize none: a sample must have its reference's size" in policy
    assert "[metrics].pixel_range 255.0" in policy and "evaluators device cpu" in policy

    n_table = re.search(r'<table class="plain n-per-metric">.*?</table>', section, re.DOTALL).group(0)
    summary = load_run(run_dir).summary
    overall = summary[(summary.group == "") & ~summary.metric.str.contains(":")]
    for model in MODELS:
        cells = _cells(_row(n_table, model=model))
        for r in overall[overall.model == model].itertuples(index=False):
            assert _text(cells[r.metric]) == (str(int(r.n)) if not math.isnan(r.value) else "—")
        assert not any(":" in c for c in cells)
    assert _text(_cells(_row(n_table, model="real"))["ssim"]) == "—"  # a NaN value counts no cases

    versions = re.search(r'<table class="plain kv versions">.*?</table>', section, re.DOTALL).group(0)
    for package in ("numpy", "pandas", "scipy", "statsmodels", "plotly"):
        cells = _cells(_row(versions, package=package))
        assert _text(cells["report"]) == importlib.metadata.version(package)
    assert _text(_cells(_row(versions, package="numpy"))["run"]) == np.__version__  # from run.json
    assert _text(_cells(_row(versions, package="scipy"))["run"]) == "—"  # not recorded by this run
    run_rows = _text(re.search(r"<h3>Run</h3>(.*?)</table>", section, re.DOTALL).group(1))
    assert "config hash " + "abcdef0123456789" * 4 in run_rows
    assert f"paired tests seed {SEED}, {RUN_RESAMPLES} bootstrap resamples" in run_rows
    assert "1 min 13 s" in section  # timings


def test_describe_preprocessing() -> None:
    key = "center-square/bilinear-antialias/affine-v1;1ch;224px;[-1024,1024]float;outputs-v1"
    assert describe_preprocessing(key) == (
        "pipeline center-square/bilinear-antialias/affine-v1; 1 channel(s); 224×224 px; "
        "values [-1024,1024] float; output version outputs-v1"
    )
    assert describe_preprocessing("") == ""


# --- CLI --------------------------------------------------------------------------------------------


def rated_study(run_dir: Path, dest: Path, readers: tuple[str, ...] = ("alice",)) -> Path:
    """A study of ``run_dir`` on one criterion (each one costs a model fit) plus the Turing question,
    every item rated by every reader with scores that differ between readers and items."""
    from reader_study import admin
    from reader_study.create import CreateOptions, create_study
    from reader_study.criteria import TURING, resolve
    from reader_study.store import Answer
    from reader_study.store import readers as readers_table

    criteria = resolve("quality", None)
    made = create_study(
        run_dir, dest, CreateOptions(readers=readers, criteria=criteria, per_model=2, turing=True, size=64),
        progress=False,
    )  # fmt: skip
    _, _, store = admin.open_store(made.path)
    try:
        for k, reader_id in enumerate(r["id"] for r in store.table(readers_table)):
            for n, entry in enumerate(store.queue(reader_id)):
                answers = [
                    Answer(c.name, score=1 + (n * (k + 1) + j + k) % 5) for j, c in enumerate(criteria)
                ]
                answers.append(
                    Answer(TURING, turing_answer=("real", "synthetic")[n % 2], confidence=1 + n % 5)
                )
                store.submit(
                    reader_id, entry.item_id, entry.read_number, str(uuid.uuid4()), answers, seconds=1.0,
                    shown=store.shown(reader_id, entry.item_id, entry.read_number),
                )  # fmt: skip
    finally:
        store.close()
    return made.path


def test_cli_report_with_a_reader_study(run_dir: Path, tmp_path: Path, capsys) -> None:
    from audit.cli import main

    study = rated_study(run_dir, tmp_path / "study")
    out = tmp_path / "out"
    assert main(["report", str(run_dir), "--reader-study", str(study), "--format", "csv,html",
                 "--out", str(out)]) == 0  # fmt: skip
    names = sorted(Path(p).name for p in capsys.readouterr().out.split())
    assert names == ["comparison.csv", "paired_tests.csv", "report.html"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert '<section id="reader-study">' in page and '<section id="metric-validity">' in page
    assert str(study) in _section(page, "provenance")
    # The page's reader columns are comparison.csv's reader rows (one reader_statistics call).
    exported = pd.read_csv(out / "comparison.csv")
    reader = exported[exported.metric.str.startswith("reader_")].dropna(subset=["value"])
    assert len(reader) == len(MODELS) and set(reader.metric) == {"reader_quality"}
    table = re.search(r'data-table="reader" id="results-reader">(.*?)</table>', page, re.DOTALL).group(1)
    for r in reader.itertuples(index=False):
        row = re.search(rf'data-model="{re.escape(r.model)}">(.*?)</tr>', table, re.DOTALL).group(1)
        cell = re.findall(r"<td.*?</td>", row, re.DOTALL)[0]
        assert_shown(_numbers(cell)[0], r.value)
        assert f"n={int(r.n)}" in cell
    # The page's paired tests are paired_tests.csv's.
    csv = pd.read_csv(out / "paired_tests.csv")
    first = csv.iloc[0]
    table = re.search(rf'<details class="paired-metric" data-metric="{first.metric}".*?</details>', page,
                      re.DOTALL).group(0)  # fmt: skip
    cells = _cells(_row(table, model_a=first.model_a, model_b=first.model_b))
    assert_estimate(cells["mean_difference"], first.mean_difference, first.mean_difference_ci_low,
                    first.mean_difference_ci_high)  # fmt: skip
    # Computed once (run_paired_tests) for the CSV and the page, with the run's seed and resamples.
    assert f"seed {SEED}, {RUN_RESAMPLES} bootstrap resamples" in _section(page, "provenance")


def _with_infinite_psnr(root: Path) -> Path:
    """A run where every gen_a sample is identical to its reference: PSNR +∞ (as the README says)."""
    run = make_clinical_run(root)
    per_sample = pd.read_parquet(run / rundir.PER_SAMPLE)
    per_sample.loc[(per_sample.model == "gen_a") & (per_sample.metric == "psnr"), "value"] = np.inf
    per_sample.to_parquet(run / rundir.PER_SAMPLE)
    return run


PSNR_LEFT_OUT = "PSNR (psnr): 6 infinite per-sample value(s) (gen_a); paired differences need finite values"


def test_cli_report_with_an_infinite_psnr_writes_every_format(tmp_path: Path, capsys) -> None:
    # Issue 18: `report --format csv,md` failed with "wilcoxon_pratt: pair 0 is not finite" and wrote
    # neither paired_tests.csv nor report.html.
    from audit.cli import main

    run = _with_infinite_psnr(tmp_path)
    out = tmp_path / "out"
    assert main(["report", str(run), "--format", "csv,md,html", "--out", str(out)]) == 0
    names = sorted(Path(p).name for p in capsys.readouterr().out.split())
    assert names == ["comparison.csv", "comparison.md", "paired_tests.csv", "report.html"]
    # paired_tests.csv: no rows for the metric left out, the others tested as always.
    csv = read_paired_tests(out / "paired_tests.csv")
    assert "psnr" not in set(csv.metric) and {"ssim", "mse", "mae"} <= set(csv.metric)
    assert np.isfinite(csv.pvalue.to_numpy(dtype=np.float64)).all()
    # comparison.md names it and says why.
    md = (out / "comparison.md").read_text(encoding="utf-8")
    assert "Left out of the model-vs-model tests (paired\\_tests.csv, report.html)" in md
    assert PSNR_LEFT_OUT.replace("_", "\\_") in md
    # report.html: the note, no PSNR tests, and the same numbers as paired_tests.csv (one computation).
    section = _section((out / "report.html").read_text(encoding="utf-8"), "model-tests")
    assert "Not tested: PSNR: 6 infinite per-sample value(s) (gen_a)" in _text(section)
    assert 'data-metric="psnr"' not in section
    assert f"over all {int(csv.pvalue.notna().sum())} comparisons" in section
    first = csv[csv.metric == "ssim"].iloc[0]
    table = re.search(r'<details class="paired-metric" data-metric="ssim".*?</details>', section, re.DOTALL)
    cells = _cells(_row(table.group(0), model_a=first.model_a, model_b=first.model_b))
    assert_estimate(cells["mean_difference"], first.mean_difference, first.mean_difference_ci_low,
                    first.mean_difference_ci_high)  # fmt: skip
    assert_shown(_numbers(cells["pvalue_holm"])[0], first.pvalue_holm)


def test_every_output_leaves_out_the_same_metrics(tmp_path: Path) -> None:
    run = _with_infinite_psnr(tmp_path)
    loaded = load_run(run)
    tests = run_paired_tests(loaded, resamples=50)
    assert dict(tests.skipped) == nonfinite_metrics(loaded) and list(tests.skipped) == ["psnr"]
    assert "psnr" not in set(tests.frame.metric)
    assert (tests.seed, tests.resamples, tests.confidence) == (SEED, 50, 0.95)
    # The exports write the frame they are given; without "csv" comparison.md still names the metric.
    written = write_exports(loaded, tmp_path / "given", ["csv", "md"], paired=tests)
    pd.testing.assert_frame_equal(read_paired_tests(written[-1]), tests.frame, check_dtype=False)
    write_exports(run, tmp_path / "md", ["md"], resamples=50)
    md = (tmp_path / "md" / "comparison.md").read_text(encoding="utf-8")
    assert PSNR_LEFT_OUT.replace("_", "\\_") in md
    # A frame read back from paired_tests.csv gets the same note on the page.
    page = render_html_report(run, grid_cases=0, paired=read_paired_tests(written[-1]))
    section = _section(page, "model-tests")
    assert "Not tested: PSNR: 6 infinite per-sample value(s) (gen_a)" in _text(section)
    assert "read from paired_tests.csv" in _section(page, "provenance")
    # Nothing is left out of a run with finite values, and comparison.md has no note then.
    write_exports(make_clinical_run(tmp_path / "finite"), tmp_path / "clean", ["md"])
    assert "Left out" not in (tmp_path / "clean" / "comparison.md").read_text(encoding="utf-8")


def test_cli_reader_cis_use_the_runs_confidence_and_resamples(tmp_path: Path) -> None:
    # Issue 18: `report --reader-study` drew the reader CIs with rng 0, 2000 resamples and 95% (the
    # score CIs ignored `confidence` altogether) while the page labelled them with the config's.
    from audit.cli import main
    from reader_study.admin import export_frame

    run = make_clinical_run(tmp_path)
    config = (run / rundir.CONFIG_TOML).read_text(encoding="utf-8")
    for old, new in (("seed = 7", "seed = 11"), ("bootstrap_resamples = 1000", "bootstrap_resamples = 300"),
                     ("confidence = 0.95", "confidence = 0.9")):  # fmt: skip
        assert old in config
        config = config.replace(old, new)
    (run / rundir.CONFIG_TOML).write_text(config, encoding="utf-8")
    study = rated_study(run, tmp_path / "study", readers=("alice", "bob", "cho"))
    out = tmp_path / "out"
    args = ["report", str(run), "--reader-study", str(study), "--format", "csv,html", "--out", str(out)]
    assert main(args) == 0
    exported = pd.read_csv(out / "comparison.csv")
    reader = exported[exported.metric == "reader_quality"].dropna(subset=["value"]).set_index("model")
    assert (reader["confidence"] == 0.9).all()
    ratings = export_frame(study)
    expected = reader_statistics(ratings, rng=np.random.default_rng(11), resamples=300, confidence=0.9)
    scores = expected.scores[expected.scores.criterion == "quality"].set_index("model").loc[reader.index]
    assert scores.ci_low.notna().all()
    np.testing.assert_array_equal(reader["value"], scores["mean"])
    np.testing.assert_array_equal(reader["ci_low"], scores["ci_low"])
    np.testing.assert_array_equal(reader["ci_high"], scores["ci_high"])
    # The 90% intervals are the narrower ones of the same draws (the confidence is applied, not just
    # the seed and resamples).
    wide = reader_statistics(ratings, rng=np.random.default_rng(11), resamples=300, confidence=0.95).scores
    wide = wide[wide.criterion == "quality"].set_index("model").loc[reader.index]
    assert ((scores.ci_high - scores.ci_low) <= (wide.ci_high - wide.ci_low)).all()
    assert ((scores.ci_high - scores.ci_low) < (wide.ci_high - wide.ci_low)).any()
    # The page shows those intervals under a 90% label.
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "90% two-way bootstrap CI" in _text(_section(page, "reader-study"))
    table = re.search(r'data-table="reader" id="results-reader">(.*?)</table>', page, re.DOTALL).group(1)
    for model, r in reader.iterrows():
        row = re.search(rf'data-model="{re.escape(model)}">(.*?)</tr>', table, re.DOTALL).group(1)
        assert_estimate(re.findall(r"<td.*?</td>", row, re.DOTALL)[0], r.value, r.ci_low, r.ci_high)


def test_unset_settings_are_audit_configs_defaults_in_every_output(tmp_path: Path) -> None:
    # Issue 18: without [metrics].bootstrap_resamples the page and the exports drew 2000 resamples,
    # audit.config's default (what the run used) is 1000.
    run = make_clinical_run(tmp_path)
    config = (run / rundir.CONFIG_TOML).read_text(encoding="utf-8")
    (run / rundir.CONFIG_TOML).write_text(
        config.replace("bootstrap_resamples = 1000\n", ""), encoding="utf-8"
    )
    expected = paired_tests(load_run(run), rng=np.random.default_rng(SEED), resamples=1000)
    write_exports(run, tmp_path / "out", ["csv"])
    read = read_paired_tests(tmp_path / "out" / "paired_tests.csv")
    pd.testing.assert_frame_equal(read, expected, check_dtype=False, check_exact=True)
    page = render_html_report(run, grid_cases=0)
    assert f"seed {SEED}, 1000 bootstrap resamples" in _text(_section(page, "provenance"))
