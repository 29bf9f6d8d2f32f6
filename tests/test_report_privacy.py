"""report.html's privacy section, the comparison's memorised fraction and the sanity-baseline kinds, on
fake runs with a privacy audit (audit.fake_run.FakePrivacy); numbers checked against pandas, numpy and
scipy computed here from the run's own files."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image
from scipy import stats

from audit import rundir
from audit.fake_run import FakeModel, FakePrivacy, FakeRun, write_fake_run
from audit.images import read_image
from reports.comparison import comparison_table, to_latex, write_exports
from reports.format import format_estimate
from reports.html import render_html_report
from reports.privacy import HIDDEN_NOTE, PrivacyInfo, load_privacy
from reports.run import BASELINE_KINDS, ModelRow, load_run, order_models
from reports.thumbnail import data_uri, shrink
from tests.test_report_html import _outside_plotly_js
from tests.test_report_sections import _array, figure

CASES = tuple(f"c{i:02d}" for i in range(10))
GENERATORS = ("gen_a", "gen_b")
MODELS = (
    FakeModel("real", "real"),
    FakeModel("gen_a", "folder", {"template": "/x/{case_id}.png"}, noise=0.2),
    FakeModel("gen_b", "folder", {"template": "/y/{case_id}.png"}),
    FakeModel("copy", "training-copy", {"training_cases": "/t/train.csv", "level": 0.02}, noise=0.05),
)
K = 8  # the section's default number of closest pairs


def _spec(privacy: FakePrivacy | None, **changes: object) -> FakeRun:
    base = {
        "models": MODELS,
        "case_ids": CASES,
        "samples_per_case": 2,
        "metrics": {"ssim": True},
        "privacy": privacy,
        "config": {"metrics": {"pixel": ["ssim"], "pixel_range": 1.0, "bootstrap_resamples": 50}},
    }
    return FakeRun(**{**base, **changes})  # type: ignore[arg-type]


# gen_b sits close to the training set, the training-copy baseline on it.
PRIVACY = FakePrivacy(closeness={"gen_b": 0.3, "copy": 0.05}, reid=True)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = write_fake_run(tmp_path_factory.mktemp("privacy"), _spec(PRIVACY))
    return run, render_html_report(run)


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    privacy = FakePrivacy(closeness={"gen_b": 0.3, "copy": 0.05}, show_training_images=False)
    run = write_fake_run(tmp_path_factory.mktemp("hidden"), _spec(privacy))
    return run, render_html_report(run)


def _section(page: str) -> str:
    return re.search(r'<section id="privacy">.*?</section>', page, flags=re.DOTALL).group(0)


def _table_rows(section: str) -> dict[str, str]:
    table = re.search(
        r'<table class="plain stats privacy-models">.*?</table>', section, flags=re.DOTALL
    ).group(0)
    return dict(re.findall(r'<tr class="[a-z]+" data-model="([^"]*)">(.*?)</tr>', table, flags=re.DOTALL))


def _cell(row: str, col: str) -> tuple[str, float | None]:
    match = re.search(
        rf'<td data-col="{col}"(?: data-value="([^"]*)")?[^>]*>(.*?)</td>', row, flags=re.DOTALL
    )
    assert match is not None, (col, row)
    return match.group(2), (float(match.group(1)) if match.group(1) else None)


def _text(cell_html: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", cell_html)).split()


# --- the section ------------------------------------------------------------------------------------


def test_section_only_with_privacy_file(tmp_path: Path, audited: tuple[Path, str]) -> None:
    plain = render_html_report(write_fake_run(tmp_path, _spec(None)))
    assert '<section id="privacy">' not in plain and 'href="#privacy"' not in plain
    _, page = audited
    nav = re.search(r"<nav>(.*?)</nav>", page, flags=re.DOTALL).group(1)
    anchors = re.findall(r'href="#([^"]+)"', nav)
    assert "privacy" in anchors
    sections = re.findall(r'<section id="([^"]+)">', page)
    # after the paired tests (no Norberg here), before the distributions (no reader study)
    assert sections.index("privacy") == sections.index("model-tests") + 1
    assert sections[sections.index("privacy") + 1] == "distributions"
    assert "<h2>Privacy and memorisation</h2>" in page
    # the results get their privacy table, with its intro
    assert 'data-table="privacy"' in page


def test_facts_are_run_json(audited: tuple[Path, str]) -> None:
    run, page = audited
    record = json.loads((run / rundir.RUN_JSON).read_text())["privacy"]
    section = _section(page)
    facts = dict(re.findall(r'<tr data-fact="([^"]+)"><th>[^<]*</th><td>(.*?)</td></tr>', section))
    assert "demo-features" in facts["feature evaluator"] and "cosine" in facts["feature distance"]
    assert float(facts["threshold (features)"]) == pytest.approx(record["thresholds"]["features"], rel=1e-3)
    assert float(facts["threshold (pixels)"]) == pytest.approx(record["thresholds"]["pixels"], rel=1e-3)
    assert facts["calibration quantile"] == f"{record['quantile']:g}"
    assert facts["training images"] == str(record["n_training"])
    assert record["reid_model"][:12] in facts["re-ID model"]


def test_model_table_equals_the_parquet(audited: tuple[Path, str]) -> None:
    run, page = audited
    rows = pd.read_parquet(run / rundir.PRIVACY)
    summary = pd.read_csv(run / rundir.SUMMARY).set_index(["model", "metric"])
    table = _table_rows(_section(page))
    # the report's model order: generators, the sanity baseline, the calibration row last
    assert list(table) == ["gen_a", "gen_b", "copy", "real"]
    real_d = rows.loc[rows.model == "real", "nn_distance"].to_numpy()
    for model, row in table.items():
        mine = rows[rows.model == model]
        share = mine["flagged"].astype(float).mean()
        shown, value = _cell(row, "memorised")
        assert value == pytest.approx(share)
        assert f"{int(mine['flagged'].sum())} of {len(mine)} flagged" in shown
        # the estimate is summary.csv's, which is the same share here (equal samples per case)
        assert summary.loc[(model, "memorised_fraction"), "value"] == pytest.approx(share)
        assert _text(shown)[0] == format_estimate(share, np.nan, np.nan)[0]
        for kind in ("features", "pixels", "both"):
            _, by = _cell(row, f"by_{kind}")
            assert by == pytest.approx((mine["flagged_by"] == kind).mean())
        _, authentic = _cell(row, "authentic")
        assert authentic == pytest.approx(mine["authentic"].astype(float).mean())
        for metric in ("reid_score", "reid_score_max"):
            assert _cell(row, metric)[1] == pytest.approx(mine[metric].mean())
        auc_html, auc = _cell(row, "privacy_auc")
        if model == "real":
            assert auc is None and "—" in auc_html
            continue
        # Mann-Whitney U / (n1 n2) = P(gen > real) + ½ P(tie), from scipy
        u = stats.mannwhitneyu(mine["nn_distance"], real_d, alternative="two-sided").statistic
        assert auc == pytest.approx(u / (len(mine) * len(real_d)))
    assert "calibration reference" in table["real"] and "sanity baseline" in table["copy"]
    # the planted structure shows: the copies are all flagged, the far generator least
    assert _cell(table["copy"], "memorised")[1] == 1.0
    assert _cell(table["gen_a"], "memorised")[1] < _cell(table["gen_b"], "memorised")[1]


def test_histograms_are_valid_plotly_with_the_real_reference(audited: tuple[Path, str]) -> None:
    run, page = audited
    rows = pd.read_parquet(run / rundir.PRIVACY)
    record = json.loads((run / rundir.RUN_JSON).read_text())["privacy"]
    for i, (column, space) in enumerate((("nn_distance", "features"), ("nn_distance_pixel", "pixels"))):
        data, layout = figure(page, f"privacy-hist-{i}")  # go.Figure validates it
        assert [t["name"] for t in data] == [
            "gen_a",
            "gen_b",
            "copy (sanity baseline)",
            "real (held-out, calibration)",
        ]
        assert all(t["type"] == "histogram" and t["histnorm"] == "probability" for t in data)
        bins = data[0]["xbins"]
        assert all(t["xbins"] == bins for t in data)  # the same bins for every model
        values = rows[column].to_numpy()
        assert bins["start"] <= values.min() and bins["end"] > values.max()
        for trace, model in zip(data, ["gen_a", "gen_b", "copy", "real"], strict=True):
            expected = rows.loc[rows.model == model, column].to_numpy(np.float32)
            np.testing.assert_array_equal(np.sort(_array(trace["x"])), np.sort(expected))
        assert data[-1]["marker"]["color"] == "rgba(0,0,0,0)"  # the reference is an outline
        assert layout["barmode"] == "overlay"
        (line,) = layout["shapes"]
        assert line["x0"] == line["x1"] == pytest.approx(record["thresholds"][space])
    go.Figure(data=data, layout=layout)


def _pairs(section: str) -> list[tuple[str, str, int, str]]:
    body = re.search(r'<table class="grid privacy-pairs">.*?</table>', section, flags=re.DOTALL).group(0)
    return [
        (m, c, int(s), tr)
        for m, c, s, tr in re.findall(
            r'<tr data-model="([^"]*)" data-case="([^"]*)" data-sample="([^"]*)">(.*?)</tr>', body, re.DOTALL
        )
    ]


def test_closest_pairs_are_the_k_smallest_distances(audited: tuple[Path, str]) -> None:
    run, page = audited
    rows = pd.read_parquet(run / rundir.PRIVACY)
    samples = pd.read_parquet(run / rundir.SAMPLES)
    training = pd.read_parquet(run / rundir.PRIVACY_TRAINING).set_index("case_id")
    pairs = _pairs(_section(page))
    # among the models under evaluation (the copies of the baseline would fill the list)
    mine = rows[rows.model.isin(GENERATORS)]
    expected = mine.iloc[np.argsort(mine["nn_distance"].to_numpy(), kind="stable")[:K]]
    assert [(m, c, s) for m, c, s, _ in pairs] == list(
        zip(expected.model, expected.case_id, expected["sample"], strict=True)
    )
    assert "sanity baselines left out" in _section(page)
    for (model, case_id, sample, tr), r in zip(pairs, expected.itertuples(), strict=True):
        shown = float(re.search(r'data-features="([^"]+)"', tr).group(1))
        assert shown == r.nn_distance
        assert float(re.search(r'data-pixels="([^"]+)"', tr).group(1)) == r.nn_distance_pixel
        path = samples[
            (samples.model == model) & (samples.case_id == case_id) & (samples["sample"] == sample)
        ]
        gen = shrink(read_image(path["path"].iloc[0]).pixels, 160)
        train = shrink(read_image(training.loc[r.train_case_id, "image"]).pixels, 160)
        uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', tr)
        assert uris == [data_uri(gen), data_uri(train), data_uri(np.abs(gen - train))]
        assert f"training case {r.train_case_id}" in tr


def test_hidden_training_images_leak_no_pixels(hidden: tuple[Path, str]) -> None:
    run, page = hidden
    training = pd.read_parquet(run / rundir.PRIVACY_TRAINING)
    shown = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.float64) / 255.0
        for b64 in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    ]
    assert shown  # the generated samples are on the page
    for path in training["image"]:
        thumb = shrink(read_image(path).pixels, 160)
        assert data_uri(thumb) not in page
        # nor any image on the page that looks like it (another encoding of the same pixels)
        assert not any(s.shape == thumb.shape and np.abs(s - thumb).max() <= 1 / 255 for s in shown)
    section = _section(page)
    assert html.escape(HIDDEN_NOTE) in section
    pairs = _pairs(section)
    assert len(pairs) == K
    rows = pd.read_parquet(run / rundir.PRIVACY).set_index(["model", "case_id", "sample"])
    for model, case_id, sample, tr in pairs:
        train_id = rows.loc[(model, case_id, sample), "train_case_id"]
        assert f'data-train="{train_id}"' in tr and f"training case {train_id}" in tr
        # The sample only, no training image, no difference; and not even the sample when the audit
        # flagged it (by its own measure, a training patient's image).
        flagged = bool(rows.loc[(model, case_id, sample), "flagged"])
        assert tr.count("<img") == (0 if flagged else 1), (model, case_id, sample)
        assert ("withheld: flagged as a copy of training case" in tr) == flagged
    assert any(rows.loc[(m, c, s_), "flagged"] for m, c, s_, _ in pairs)  # the test saw both kinds
    assert "|generated − training|" not in section
    # A training-copy baseline's samples are training images: none of them is anywhere on the page,
    # its column of the image grid holds placeholders that say why.
    samples = pd.read_parquet(run / rundir.SAMPLES)
    copies = samples[samples.model == "copy"]
    assert len(copies)
    for path in copies["path"]:
        assert data_uri(shrink(read_image(path).pixels, 160)) not in page
    grid = re.search(r'<table class="grid">.*?</table>', page, flags=re.DOTALL).group(0)
    assert "withheld: a training image (training-copy baseline)" in grid
    # Unflagged samples of the generators are still shown.
    assert any(
        f'alt="gen_a · {c} · sample 0"' in grid and not rows.loc[("gen_a", c, 0), "flagged"] for c in CASES
    )


def test_no_external_resources(audited: tuple[Path, str], hidden: tuple[Path, str]) -> None:
    for _, page in (audited, hidden):
        rest = _outside_plotly_js(page)
        assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", rest, flags=re.IGNORECASE)
        assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.IGNORECASE)
        assert not re.search(r"<link\b", page, flags=re.IGNORECASE)
        assert "http://" not in rest and "https://" not in rest


# --- reading the files ------------------------------------------------------------------------------


def test_show_training_images_only_when_the_record_says_so() -> None:
    assert not PrivacyInfo.from_info({}).show_training_images
    assert not PrivacyInfo.from_info({"privacy": {"show_training_images": "yes"}}).show_training_images
    info = PrivacyInfo.from_info({"privacy": {"show_training_images": True, "thresholds": {"pixels": 0.1}}})
    assert info.show_training_images and info.threshold("nn_distance_pixel") == 0.1
    assert info.threshold("nn_distance") is None


def test_bad_privacy_parquet_names_file_and_columns(tmp_path: Path) -> None:
    assert load_privacy(tmp_path) is None
    pd.DataFrame({"model": ["a"], "case_id": ["c"]}).to_parquet(tmp_path / rundir.PRIVACY)
    with pytest.raises(ValueError, match=r"privacy\.parquet: missing column\(s\) sample, train_case_id"):
        load_privacy(tmp_path)


def test_fake_privacy_thresholds_follow_the_contract(audited: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = audited
    rows = pd.read_parquet(run / rundir.PRIVACY)
    record = json.loads((run / rundir.RUN_JSON).read_text())["privacy"]
    real = rows[rows.model == "real"]
    for column, space in (("nn_distance", "features"), ("nn_distance_pixel", "pixels")):
        assert record["thresholds"][space] == np.quantile(real[column], PRIVACY.quantile)
    by_f = rows["nn_distance"] < record["thresholds"]["features"]
    by_p = rows["nn_distance_pixel"] < record["thresholds"]["pixels"]
    assert (rows["flagged"] == (by_f | by_p)).all()
    assert (rows.loc[by_f & by_p, "flagged_by"] == "both").all()
    assert (rows.loc[~(by_f | by_p), "flagged_by"] == "").all()
    # the audit adds files and metrics; everything else is what the spec without it writes
    plain = write_fake_run(tmp_path, _spec(None))
    pd.testing.assert_frame_equal(  # the same pixels (sha256); only the root differs
        pd.read_parquet(plain / rundir.SAMPLES).drop(columns="path"),
        pd.read_parquet(run / rundir.SAMPLES).drop(columns="path"),
    )
    ps_plain, ps = pd.read_parquet(plain / rundir.PER_SAMPLE), pd.read_parquet(run / rundir.PER_SAMPLE)
    pd.testing.assert_frame_equal(ps[ps.metric == "ssim"].reset_index(drop=True), ps_plain)
    assert not (plain / rundir.PRIVACY).exists() and "privacy" not in json.loads(
        (plain / rundir.RUN_JSON).read_text()
    )


# --- comparison and baselines -----------------------------------------------------------------------


def test_comparison_has_the_memorised_fraction(audited: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = audited
    written = write_exports(run, tmp_path, resamples=20)
    names = {p.name for p in written}
    assert {"comparison.md", "comparison.csv", "comparison.tex"} <= names
    md = (tmp_path / "comparison.md").read_text()
    assert "memorised ↓" in md
    # the detail stays out of the paper tables
    assert "NN distance" not in md and "privacy AUC" not in md
    csv = pd.read_csv(tmp_path / "comparison.csv")
    summary = pd.read_csv(run / rundir.SUMMARY)
    got = csv[csv.metric == "memorised_fraction"].set_index("model")["value"]
    want = summary[summary.metric == "memorised_fraction"].set_index("model")["value"]
    pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)
    assert {"nn_distance", "authenticity", "privacy_auc", "reid_score"} <= set(csv.metric)
    table = comparison_table(load_run(run))
    frame = table.frame[table.frame.metric == "memorised_fraction"].set_index("model")
    assert frame.loc["gen_a", "arrow"] == "↓"
    # the lower memorised fraction wins among the generators; the training copy never competes
    assert frame.loc["gen_a", "best"] and not frame.loc["gen_b", "best"] and not frame.loc["copy", "best"]


def test_training_copy_is_a_sanity_baseline(audited: tuple[Path, str]) -> None:
    run, _ = audited
    assert {"degrade", "training-copy"} == BASELINE_KINDS
    assert ModelRow("c", "training-copy", {}).is_baseline and not ModelRow("g", "folder", {}).is_baseline
    assert [m.name for m in order_models(load_run(run))] == ["gen_a", "gen_b", "copy", "real"]
    tex = to_latex(comparison_table(load_run(run)))
    body = tex[tex.index(r"\midrule") :]
    # a rule between the generators and the baseline, named as one, and before the real row
    assert re.search(r"gen\\_b &.*?\\\\\n\\midrule\ncopy \{\\scriptsize \(sanity baseline\)\} &", body)
    assert re.search(r"copy \{\\scriptsize \(sanity baseline\)\} &.*?\\midrule\nreal &", body, re.DOTALL)
    md = next(
        p for p in write_exports(load_run(run), run.parent / "exports") if p.suffix == ".md"
    ).read_text()
    assert "| copy | training-copy (sanity baseline) |" in md


def test_alpha_precision_and_beta_recall_show_summary_values(audited, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(audited[0], run)
    summary = pd.read_csv(run / rundir.SUMMARY, keep_default_na=False)
    template = summary[(summary.model == "gen_a") & (summary.metric == "privacy_auc")].iloc[0]
    values = {("gen_a", "alpha_precision"): 0.8125, ("gen_a", "beta_recall"): 0.4375}
    values |= {("real", "alpha_precision"): 0.6875, ("real", "beta_recall"): 0.5625}  # the calibration
    added = [
        {
            **template.to_dict(),
            "model": model,
            "metric": metric,
            "value": v,
            "ci_low": v - 0.1,
            "ci_high": v + 0.05,
        }
        for (model, metric), v in values.items()
    ]
    pd.concat([summary, pd.DataFrame(added)], ignore_index=True).to_csv(run / rundir.SUMMARY, index=False)
    table = _table_rows(_section(render_html_report(run)))
    for (model, metric), value in values.items():
        shown, got = _cell(table[model], metric)
        assert got == pytest.approx(value)
        assert _text(shown)[0] == format_estimate(value, value - 0.1, value + 0.05)[0]
        assert ("calibration: training images" in shown) == (model == "real")
    for metric in ("alpha_precision", "beta_recall"):
        assert _cell(table["gen_b"], metric)[1] is None  # no row in summary.csv: no number invented
    shown, got = _cell(table["real"], "privacy_auc")
    assert got is None and "—" in shown  # the references against themselves


def test_summary_tooltips_say_how_each_privacy_number_was_made(audited) -> None:
    _, page = audited
    tips = dict(re.findall(r'title="gen_a · ([a-z_]+): ([^";]+);', page))
    assert tips["memorised_fraction"].startswith("mean ")  # a share over cases
    assert tips["nn_distance"].startswith("median ")  # the median over cases
    assert tips["privacy_auc"].startswith("estimate ")  # one AUC from the whole set
    n_of = dict(re.findall(r'title="gen_a · ([a-z_]+): [^"]*; n=\d+ ([a-z]+)', page))
    assert n_of["privacy_auc"] == "samples" and n_of["memorised_fraction"] == "cases"


def test_withheld_samples_follow_the_record(audited: tuple[Path, str], hidden: tuple[Path, str]) -> None:
    from reports.privacy import withheld_samples

    for run, show in ((audited[0], True), (hidden[0], False)):
        files = load_run(run)
        models = order_models(files)
        privacy = load_privacy(run, files.info)
        rows = pd.read_parquet(run / rundir.PRIVACY)
        withheld = withheld_samples(models, files.info, privacy)
        for r in rows.itertuples(index=False):
            reason = withheld.reason(r.model, r.case_id, r.sample)
            expected = not show and r.model != "real" and (r.model == "copy" or bool(r.flagged))
            assert (reason is not None) == expected, (show, r.model, r.case_id, r.sample)
    # A run without the audit never said training pixels may be shown: its training-copy samples are
    # withheld, its other samples are not.
    files = load_run(hidden[0])
    models = order_models(files)
    bare = withheld_samples(models, {}, None)
    assert bare.reason("copy", "c00", 0) is not None and bare.reason("gen_b", "c00", 0) is None


def test_stale_privacy_files_are_not_read(audited: tuple[Path, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(audited[0], run)
    info = json.loads((run / rundir.RUN_JSON).read_text())
    assert load_privacy(run) is not None
    del info["privacy"]  # a later run of the directory without [privacy]
    (run / rundir.RUN_JSON).write_text(json.dumps(info))
    assert load_privacy(run) is None
    assert '<section id="privacy">' not in render_html_report(run)


def test_the_pages_say_how_the_pixel_distance_was_taken(audited: tuple[Path, str]) -> None:
    _, page = audited
    assert "moved by up to 2 pixels, against the training image" in html.unescape(_section(page))
    assert "as generated or mirrored, whichever is nearer" in PrivacyInfo.from_info({"privacy": {}}).pixel_text
