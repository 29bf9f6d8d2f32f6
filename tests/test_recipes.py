"""Recipes (issue 20): `xray-audit init RECIPE` and `report --layout RECIPE`.

Each recipe's demo runs end to end on the embedded data (`init RECIPE --demo DIR`, `run`, `report
--layout`), and its table is checked against the run's own files, recomputed independently here:
every value, CI and N against summary.csv; the knee's std against numpy over the per-case values
of per_sample.parquet; reader scores against the mean of the ratings file. The published figures
are checked character for character against the papers' text where the papers are present.
"""

from __future__ import annotations

import logging
import math
import re
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit import rundir
from audit.cli import main
from audit.config import ConfigError, parse_config
from audit.recipes.registry import RECIPES

PAPERS = Path(__file__).resolve().parents[2] / "shared" / "papers"
RECIPE_NAMES = ("fracatlas-controlnet", "nodule-controlnet", "xreal", "knee", "canine-hip")


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> dict[str, Path]:
    """Every recipe's demo, run once: {recipe: run directory}."""
    out = {}
    for name in RECIPE_NAMES:
        root = tmp_path_factory.mktemp(f"recipe-{name}") / "demo"
        assert main(["-q", "init", name, "--demo", str(root)]) == 0
        assert main(["-q", "run", str(root / "study.toml"), "--no-report"]) == 0
        assert main(["-q", "report", str(root / "run"), "--layout", name, "--format", "md,tex,csv"]) == 0
        out[name] = root / "run"
    return out


def _table(run: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run / f"table-{name}.csv", dtype={"group": str, "text": str}, keep_default_na=False)


def _summary(run: Path) -> pd.DataFrame:
    s = pd.read_csv(run / rundir.SUMMARY, dtype={"group": str}, keep_default_na=False)
    return s.set_index(["model", "metric", "group"])


def _number(x: str) -> float:
    return float(x) if x not in ("", "nan") else math.nan


def test_list_and_unknown_recipe(capsys):
    assert main(["init", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(RECIPE_NAMES)
    assert all(RECIPES[n].paper in ln for n, ln in zip(RECIPE_NAMES, lines, strict=True))
    assert main(["init", "xreall"]) == 2  # a usage error naming the known recipes


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_init_writes_a_commented_template_that_parses_once_filled_in(tmp_path, name):
    assert main(["-q", "init", name, str(tmp_path / name)]) == 0
    text = (tmp_path / name / "study.toml").read_text()
    md = (tmp_path / name / "RECIPE.md").read_text()
    assert text.count("#") > 10 and "CASES.csv" in text  # annotated, placeholders for the user's paths
    assert "## Published" in md and RECIPES[name].paper in md
    raw = tomllib.loads(text)
    # The template is a valid study once its placeholders are real files: parse it as the runner does.
    raw["study"]["cases"] = str(tmp_path / "cases.csv")
    (tmp_path / "cases.csv").write_text("case_id,image\n")
    for key in ("norberg",):
        if key in raw:
            for field in ("annotations",):
                (tmp_path / "landmarks.csv").write_text("case_id,landmark,x,y\n")
                raw[key][field] = str(tmp_path / "landmarks.csv")
            raw.pop(key)  # the detector directory cannot be faked here; its parsing is tested elsewhere
    if "reader_study" in raw:
        raw["reader_study"]["ratings"] = str(tmp_path / "ratings.csv")
    for model in raw["models"]:
        model.pop("sweep", None)  # synonyms.csv would have to exist
    config = parse_config(raw, source=tmp_path / "study.toml")
    assert {m.name for m in config.models} >= {"real"}
    # Writing again refuses to overwrite without --force.
    assert main(["-q", "init", name, str(tmp_path / name)]) == 2
    assert main(["-q", "init", name, str(tmp_path / name), "--force"]) == 0


def test_reader_study_section_is_checked(tmp_path):
    base = {
        "study": {"name": "x", "cases": "c.csv", "output": "o"},
        "models": [{"name": "real", "kind": "real"}],
    }
    with pytest.raises(ConfigError, match="simulate_readers"):
        parse_config(
            {**base, "reader_study": {"ratings": "r.csv", "simulate_readers": 99}}, source=tmp_path / "s.toml"
        )
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet file"):
        parse_config(
            {**base, "reader_study": {"ratings": "studies/rs1", "simulate_readers": 2}},
            source=tmp_path / "s.toml",
        )
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({**base, "reader_study": {"ratings": "r.csv", "readers": 2}}, source=tmp_path / "s.toml")


def test_every_number_equals_the_runs_own(demos):
    """Every non-reader cell: value, CI and N are summary.csv's (model, metric, group) row, and the text
    is that value at the recipe's precision."""
    checked = 0
    for name, run in demos.items():
        table, summary = _table(run, name), _summary(run)
        for r in table.itertuples(index=False):
            if r.metric.startswith("reader ") or r.text == "—":
                continue
            row = summary.loc[(r.model, r.metric, r.group)]
            for col in ("value", "ci_low", "ci_high", "n"):
                assert _number(str(getattr(r, col))) == pytest.approx(
                    float(row[col]), rel=1e-12, nan_ok=True
                ), (name, r.model, r.metric, col)
            decimals = len(r.text.split("±")[0].split(".")[1]) if "." in r.text else 0
            assert r.text.split("±")[0] == f"{float(row['value']):.{decimals}f}"
            checked += 1
    assert checked >= 40


def test_xreal_table_shape_and_simulated_readers(demos):
    run = demos["xreal"]
    md = (run / "table-xreal.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| Model type"))
    labels = [re.sub(r".*<br>", "", h).strip() for h in header.strip("|").split("|")]
    assert labels == [
        "Model type",
        "Model",
        "MS-SSIM↑",
        "FID↓",
        "Dice↑",
        "F1↑",
        "AUC↑",
        "Anatomy↑",
        "Pathology↑",
    ]
    assert (
        "Quantitative Results<br>MS-SSIM↑" in header
        and "Avg. reader scores (SIMULATED)<br>Anatomy↑" in header
    )
    table = _table(run, "xreal")
    assert list(dict.fromkeys(table["model"])) == ["cond-ddpm", "sdedit", "unet-regressor", "real"]
    real = table[table["model"] == "real"].set_index("metric")["text"]
    assert (real[["ms_ssim", "fid", "dice_mean"]] == "—").all()  # as the paper prints its Real Images row
    assert real["pathology_f1"] != "—" and real["pathology_auc"] != "—"
    assert "SIMULATED readers" in md and "Demo stand-in evaluators" in md
    # Reader cells: the mean over the simulated ratings of the model and criterion.
    ratings = pd.read_csv(run.parent / "simulated-readers" / "ratings.csv", dtype={"case_id": str})
    assert set(ratings["reader"]) == {"SIMULATED-1", "SIMULATED-2"}
    readers = table[table["metric"].str.startswith("reader ")]
    assert len(readers) == 2 * 4
    for r in readers.itertuples(index=False):
        sel = ratings[(ratings["model"] == r.model) & (ratings["criterion"] == r.metric.split(" ", 1)[1])]
        assert float(r.value) == pytest.approx(sel["score"].mean(), rel=1e-12)
        assert int(float(r.n)) == len(sel)
    # The published block quotes the paper's figures exactly.
    for figure in ("0.701", "55.120", "0.838", "0.570", "0.743", "4.167", "4.130", "0.610", "0.800"):
        assert f"| {figure} |" in md.split("## Published")[1]
    tex = (run / "table-xreal.tex").read_text()
    assert r"\multicolumn{5}{c}{Quantitative Results}" in tex and r"MS-SSIM$\uparrow$" in tex


def test_knee_mean_std_per_condition(demos):
    run = demos["knee"]
    table = _table(run, "knee")
    assert sorted(set(table["column"])) == ["Contour", "Contour+bone"]
    assert list(dict.fromkeys(table["model"])) == ["unet-regressor", "sdedit", "cond-ddpm"]
    cases = pd.read_parquet(run / rundir.CASES)
    per_sample = pd.read_parquet(run / rundir.PER_SAMPLE)
    per_case = per_sample.groupby(["model", "metric", "case_id"])["value"].mean().reset_index()
    for r in table.itertuples(index=False):
        condition = r.group.split("=", 1)[1]
        members = set(cases.loc[cases["condition"] == condition, "case_id"].astype(str))
        values = per_case[
            (per_case.model == r.model) & (per_case.metric == r.metric) & per_case.case_id.isin(members)
        ]
        assert float(r.std) == pytest.approx(np.std(values["value"], ddof=1), rel=1e-12)
        assert float(r.value) == pytest.approx(values["value"].mean(), rel=1e-12)
        digits = (4, 3) if r.metric == "mae" else (3, 2)
        assert (
            r.text
            == f"{values['value'].mean():.{digits[0]}f}±{np.std(values['value'], ddof=1):.{digits[1]}f}"
        )
    md = (run / "table-knee.md").read_text()
    assert "| Condition |  | Contour | Contour+bone |" in md and "29.498±1.91" in md  # the published block


def test_canine_hip_tables_and_phantom_label(demos):
    run = demos["canine-hip"]
    md = (run / "table-canine-hip.md").read_text()
    assert md.count("PHANTOM") >= 2
    table = _table(run, "canine-hip")
    one = table[table["table"].str.startswith("Table 1")]
    assert set(one["metric"]) == {"norberg_r:left", "norberg_r:right", "norberg_r2:left", "norberg_r2:right"}
    assert set(one["column"]) == {"Left Angle", "Right Angle"}
    two = table[table["table"].str.startswith("Table 2")]
    assert set(two["metric"]) == {"fid"} and set(two["group"]) == {"group=normal", "group=below-105"}
    assert "| LLCM | Correlation Coeff. | 0.2026 | 0.1458 |" in md


def test_fracatlas_and_nodule_rows(demos):
    frac = _table(demos["fracatlas-controlnet"], "fracatlas-controlnet")
    assert list(dict.fromkeys(frac["column"])) == ["MSE Score", "Precision", "Recall", "F1 Score"]
    assert list(dict.fromkeys(frac["model"])) == ["cond-ddpm", "cond-ddpm[motion_blur=9]"]
    assert list(dict.fromkeys(frac["row"])) == [
        "Baseline (demo) / cond-ddpm",
        "Robustness sweep (demo) / cond-ddpm; test control maps motion-blurred, 9 px",
    ]
    md = (demos["fracatlas-controlnet"] / "table-fracatlas-controlnet.md").read_text()
    assert "DEMO:" in md  # a pixel-metric demo says so too (no demo evaluator to flag it)
    nodule = _table(demos["nodule-controlnet"], "nodule-controlnet")
    assert list(dict.fromkeys(nodule["column"])) == ["PSNR", "SSIM"]
    md = (demos["nodule-controlnet"] / "table-nodule-controlnet.md").read_text()
    assert "| ControlNet | 19.6 | 0.65 |" in md


def test_report_layout_refuses_an_unknown_name(demos, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["-q", "report", str(demos["knee"]), "--layout", "kne"]) == 2
    assert "knee" in caplog.text


@pytest.mark.skipif(not PAPERS.is_dir(), reason="the papers are not beside this checkout (../shared/papers)")
@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_published_figures_are_the_papers_own(name):
    """Every published cell appears in the paper's text at the cited lines, character for character."""
    recipe = RECIPES[name]
    lines = (PAPERS / recipe.paper).read_text(encoding="utf-8").splitlines()
    for table in recipe.published:
        found = re.search(r"lines? (\d+)(?:-(\d+))?", table.source)
        assert found, table.source
        first, last = int(found.group(1)), int(found.group(2) or found.group(1))
        block = [re.sub(r"</?[bu]>", "", ln) for ln in lines[first - 1 : last]]
        # The caption is the paper's (FracAtlas prints none above its tables: its captions follow them).
        assert not table.caption or table.caption in "\n".join(lines), (name, table.caption)
        text = "\n".join(lines)
        for row in table.rows:
            numbers = [c for c in row if re.fullmatch(r"[\d.±]+", c)]
            # One line of the paper holds the row's figures in this order (a swapped pair fails) ...
            assert any(_in_order(numbers, ln) for ln in block), (name, table.title, row)
            # ... and its labels are the paper's words.
            assert all(c in text for c in row if c and c != "—" and c not in numbers), (name, row)


def _in_order(cells: list[str], line: str) -> bool:
    at = 0
    for cell in cells:
        at = line.find(cell, at)
        if at < 0:
            return False
        at += len(cell)
    return True


def test_simulated_ratings_never_overwrite_real_readers(tmp_path, cohort):
    from reader_study.errors import ERRORS
    from reader_study.simulate import refuse_real_ratings
    from tests.test_runner import REAL, study

    real = tmp_path / "ratings.csv"
    real.write_text("reader,item,model,case_id,sample,criterion,score\nalice,i1,real,c1,,anatomy,4\n")
    with pytest.raises(ERRORS, match="real readers"):
        refuse_real_ratings(real)
    refuse_real_ratings(tmp_path / "absent.csv")  # nothing there: fine
    # `run` refuses before any work, and the file is left as it was.
    path = study(tmp_path, cohort, REAL)
    path.write_text(path.read_text() + f'\n[reader_study]\nratings = "{real}"\nsimulate_readers = 2\n')
    before = real.read_bytes()
    assert main(["-q", "run", str(path), "--no-report"]) != 0
    assert real.read_bytes() == before and not (tmp_path / "run" / rundir.SAMPLES).exists()


def test_layout_edge_cases_from_a_run_view():
    """Knee without group_by falls back to one all-cases column; canine-hip gives one block of rows per
    Norberg source; LaTeX escapes σ and a cell starting with "[" cannot become \\[len]."""
    from audit.recipes import canine_hip, knee
    from audit.recipes.base import RunView
    from reports.layouts import _tex

    view = RunView(models=(("cond-ddpm", "python"), ("real", "real")), metrics=frozenset(), group_values={})
    (table,) = knee.layout(view)
    assert table.header == (("Condition", "", "All cases"),)
    assert {c.group for r in table.rows for c in r[2:]} == {""}
    both = RunView(
        models=(("stable-diffusion", "diffusers-text2img"), ("real", "real")),
        metrics=frozenset(),
        group_values={},
        norberg_sources=("detector", "readers"),
    )
    rows = canine_hip.layout(both)[0].rows
    assert [r[0] for r in rows if r[0]] == [
        "Stable Diffusion [landmark detector]",
        "Real images (landmark detector vs annotation)",
        "Stable Diffusion [expert landmarks (reader study)]",
        "Real images (expert landmarks (reader study) vs annotation)",
    ]
    assert {c.source for r in rows for c in r[2:]} == {"detector", "readers"}
    assert _tex("σ = 1.5, 50 % ≥ 0.5°") == r"$\sigma$ = 1.5, 50 \% $\geq$ 0.5$^\circ$"
    assert "?" in _tex("α")  # an unknown symbol never reaches pdflatex raw
