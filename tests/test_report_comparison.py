"""Comparison table, paired tests and paper exports (reports.comparison), on a synthetic run directory.

Every number is checked against an independent computation: summary.csv itself, pandas groupby,
scipy.stats.wilcoxon(zero_method="pratt") and statsmodels' Holm correction.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from audit import rundir
from reports.comparison import (
    comparison_table,
    mean_std_table,
    to_csv_frame,
    to_latex,
    to_markdown,
    write_exports,
)
from reports.reader_stats import SCORES_COLUMNS
from reports.run import load_run
from reports.statistics import paired_tests
from tests.test_report_html import METRICS, PAIRED, make_run

REPO = Path(__file__).resolve().parents[1]
ODD = "gen_c 5%#&"  # LaTeX specials in a model name
N_CASES = 10
EXPECTED_ORDER = [ODD, "gen_b", "gen_a", "blur-1", "blur-3", "real"]


def _per_sample(rng: np.random.Generator) -> pd.DataFrame:
    """Two samples per case; gen_a ties ODD on some cases (zero differences: Pratt matters); gen_b
    lacks case c000 for ssim (pairs use shared cases only)."""
    rows = []
    base = {m: rng.random((N_CASES, 2)) for m in EXPECTED_ORDER}
    base["gen_a"][:3] = base[ODD][:3]
    for model, values in base.items():
        for metric in METRICS:
            if model == "real" and metric in PAIRED:
                continue
            shift = 0.3 if model == "gen_b" else 0.0
            for i in range(N_CASES):
                if model == "gen_b" and metric == "ssim" and i == 0:
                    continue
                for s in range(2):
                    rows.append(
                        {
                            "model": model,
                            "case_id": f"c{i:03d}",
                            "sample": s,
                            "metric": metric,
                            "value": float(values[i, s] + shift),
                        }
                    )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run(tmp_path_factory.mktemp("cmp"), n_cases=N_CASES, extra_model=ODD)
    samples = pd.read_parquet(run / rundir.SAMPLES)
    # gen_a's kind differs from its neighbours in config order: the table must group it away.
    samples.loc[samples["model"] == "gen_a", "kind"] = "diffusers"
    samples.to_parquet(run / rundir.SAMPLES)
    _per_sample(np.random.default_rng(3)).to_parquet(run / rundir.PER_SAMPLE)
    return run


@pytest.fixture(scope="module")
def run(run_dir: Path):
    return load_run(run_dir)


def _per_case_reference(run_dir: Path) -> pd.DataFrame:
    ps = pd.read_parquet(run_dir / rundir.PER_SAMPLE)
    return ps.groupby(["model", "metric", "case_id"])["value"].mean().reset_index()


def _reader_scores() -> pd.DataFrame:
    rows = []
    for criterion, values in {
        "anatomy": {"gen_a": 3.1, "gen_b": 3.6, "blur-1": 4.5, "real": 4.8},
        "pathology": {"gen_a": 3.0, "gen_b": 2.5, "blur-1": 4.0, "real": 4.1},
        "quality": {"gen_a": 2.0, "gen_b": 2.2, "real": 4.6},
    }.items():
        for model, mean in values.items():
            rows.append(
                {
                    "model": model,
                    "criterion": criterion,
                    "mean": mean,
                    "ci_low": mean - 0.3,
                    "ci_high": mean + 0.3,
                    "n_ratings": 40 + len(model),
                    "n_readers": 2,
                    "n_items": 20,
                    "n_cases": 20,
                }
            )
    return pd.DataFrame(rows, columns=SCORES_COLUMNS)


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


def test_row_order_kinds_grouped_real_last(run) -> None:
    table = comparison_table(run)
    assert table.models == EXPECTED_ORDER
    kinds = list(dict.fromkeys(table.frame["kind"]))
    assert kinds == ["folder", "diffusers", "degrade", "real"]
    assert table.metrics == list(METRICS)  # the report's order: ssim, psnr, mse, mae, overlap_f1


def test_values_and_n_equal_summary(run, run_dir: Path) -> None:
    frame = comparison_table(run).frame
    summary = pd.read_csv(run_dir / rundir.SUMMARY)
    merged = frame.merge(summary, on=["model", "metric"], how="inner", suffixes=("", "_csv"))
    assert len(merged) == len(summary)  # every summary number is in the table
    for col in ("value", "ci_low", "ci_high", "n"):
        np.testing.assert_array_equal(merged[col].astype(float), merged[f"{col}_csv"].astype(float))
    # (model, metric) pairs absent from summary.csv are NaN, never invented
    absent = frame.merge(summary[["model", "metric"]], how="left", indicator=True)
    assert absent.loc[absent["_merge"] == "left_only", "value"].isna().all()


def test_best_only_among_contenders_in_metric_direction(run, run_dir: Path) -> None:
    frame = comparison_table(run).frame
    summary = pd.read_csv(run_dir / rundir.SUMMARY)
    contenders = {ODD, "gen_a", "gen_b"}  # blur-* are baselines, real is the upper bound
    expected = set()
    for metric, higher in METRICS.items():
        rows = summary[(summary["metric"] == metric) & summary["model"].isin(contenders)].dropna(
            subset=["value"]
        )
        if len(rows) >= 2:
            pick = rows["value"].max() if higher else rows["value"].min()
            expected |= {(m, metric) for m in rows.loc[rows["value"] == pick, "model"]}
    got = set(map(tuple, frame.loc[frame["best"], ["model", "metric"]].to_numpy()))
    assert got == expected
    assert ("gen_b", "ssim") in got and ("blur-1", "ssim") not in got  # blur-1 is higher but no contender
    assert ("gen_a", "mse") in got  # lower is better
    assert not frame.loc[frame["model"].isin(["real", "blur-1", "blur-3"]), "best"].any()
    arrows = dict(zip(frame["metric"], frame["arrow"], strict=False))
    assert arrows == {m: "↑" if h else "↓" for m, h in METRICS.items()}


def test_reader_scores_appended(run) -> None:
    scores = _reader_scores()
    frame = comparison_table(run, reader_scores=scores).frame
    labels = list(dict.fromkeys(frame["label"]))
    assert labels[-3:] == ["reader anatomy", "reader pathology", "reader quality"]
    reader = frame[frame["label"].str.startswith("reader ")]
    merged = reader.merge(
        scores.assign(metric="reader_" + scores["criterion"]), on=["model", "metric"], how="inner"
    )
    assert len(merged) == len(scores)
    np.testing.assert_array_equal(merged["value"], merged["mean"])
    np.testing.assert_array_equal(merged["n"].astype(int), merged["n_ratings"])
    best = set(map(tuple, reader.loc[reader["best"], ["model", "metric"]].to_numpy()))
    # blur-1 and real score higher but do not compete
    assert best == {("gen_b", "reader_anatomy"), ("gen_a", "reader_pathology"), ("gen_b", "reader_quality")}
    assert (reader["arrow"] == "↑").all()


def test_unknown_group_is_a_clear_error(run) -> None:
    with pytest.raises(ValueError, match=r"no rows for group 'view=PA'.*none \(all cases only\)"):
        comparison_table(run, group="view=PA")


# ------------------------------------------------------------------------------------------------
# Renderers
# ------------------------------------------------------------------------------------------------


def _md_cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return [c.strip() for c in re.split(r"(?<!\\)\|", line[2:-2])]


def test_markdown_table_structure(run) -> None:
    table = comparison_table(run)
    text = to_markdown(table)
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    width = 2 + len(table.metrics)
    assert all(len(_md_cells(ln)) == width for ln in lines)
    assert len(lines) == 2 + len(table.models) + 1  # header, rule, models, N row
    assert all(re.fullmatch(r":?-+:?", c) for c in _md_cells(lines[1]))
    body = [_md_cells(ln) for ln in lines[2:-1]]
    assert [r[0].replace("\\_", "_") for r in body] == EXPECTED_ORDER
    assert sum(c.count("**") // 2 for r in body for c in r) == int(table.frame["best"].sum())
    # every column has one N (all n = N_CASES here), in the N row
    assert _md_cells(lines[-1]) == ["N", "", *[str(N_CASES)] * len(table.metrics)]
    gen_a_ssim = body[EXPECTED_ORDER.index("gen_a")][2]
    assert gen_a_ssim == "0.912 [0.905, 0.918]"  # reports.format.format_estimate's text


def _strip_escaped(tex: str) -> str:
    return re.sub(r"\\[{}&%#_$]", "", tex)


def test_latex_structure(run) -> None:
    table = comparison_table(run)
    tex = to_latex(table)
    bare = _strip_escaped(tex)
    depth = 0
    for ch in bare:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert not re.search(r"(?<!\\)[_%#]", tex)  # every _ % # escaped
    assert r"gen\_c 5\%\#\&" in tex
    for env in ("table", "tabular"):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    rows = [ln for ln in tex.splitlines() if ln.endswith(r"\\")]
    n_cols = 1 + len(table.metrics)
    assert all(len(re.findall(r"(?<!\\)&", ln)) == n_cols - 1 for ln in rows)
    assert re.search(r"\\begin\{tabular\}\{l(r+)\}", tex).group(1) == "r" * len(table.metrics)
    assert tex.count(r"\textbf{") == int(table.frame["best"].sum())
    assert r"\textbf{0.951}" in tex and r"\textbf{93.2}" in tex
    assert r"$\uparrow$" in tex and r"$\downarrow$" in tex
    real_row = next(ln for ln in rows if ln.startswith("real &"))
    assert "---" in real_row and r"\textbf" not in real_row
    # the real row follows its own rule, and N closes the table
    assert tex.splitlines()[tex.splitlines().index(real_row) - 1] == r"\midrule"
    assert rows[-1].startswith(r"\textit{N} & " + str(N_CASES))


def test_per_cell_n_when_a_column_mixes_n(run) -> None:
    summary = run.summary.copy()
    summary.loc[(summary["model"] == "gen_a") & (summary["metric"] == "ssim"), "n"] = 7
    import dataclasses

    table = comparison_table(dataclasses.replace(run, summary=summary))
    md = to_markdown(table)
    assert "0.912 [0.905, 0.918] (n=7)" in md and "(n=10)" in md
    assert _md_cells(md.splitlines()[-3])[2] == "per cell"


def test_csv_frame_has_every_number(run) -> None:
    frame = to_csv_frame(comparison_table(run))
    row = frame[(frame["model"] == "gen_a") & (frame["metric"] == "psnr")].iloc[0]
    assert (row["value"], row["ci_low"], row["ci_high"], row["n"]) == (28.41, 27.93, 28.96, N_CASES)
    assert row["shown"] == "28.4 [27.9, 29.0]"


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------


def test_paired_tests_match_scipy_and_statsmodels(run, run_dir: Path) -> None:
    result = paired_tests(run, rng=np.random.default_rng(0), resamples=300)
    per_case = _per_case_reference(run_dir)
    non_real = [m for m in EXPECTED_ORDER if m != "real"]
    assert len(result) == len(METRICS) * len(non_real) * (len(non_real) - 1) // 2
    assert "real" not in set(result["model_a"]) | set(result["model_b"])
    wide_of = {
        metric: per_case[per_case["metric"] == metric].pivot(index="case_id", columns="model", values="value")
        for metric in METRICS
    }
    for _, row in result.iterrows():
        wide = wide_of[row["metric"]]
        shared = wide[[row["model_a"], row["model_b"]]].dropna()
        x, y = shared[row["model_a"]].to_numpy(), shared[row["model_b"]].to_numpy()
        assert row["n"] == len(x)
        d = x - y
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy notes that zeros force the normal approximation
            ref = sps.wilcoxon(x, y, zero_method="pratt")
        assert row["statistic"] == pytest.approx(ref.statistic)
        assert row["pvalue"] == pytest.approx(ref.pvalue)
        assert row["n_zero"] == int((d == 0).sum())
        assert row["mean_difference"] == pytest.approx(d.mean())
        # rank-biserial on Pratt ranks (zeros ranked, then dropped), computed from scratch
        ranks = sps.rankdata(np.abs(d))
        r_plus, r_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
        assert row["rank_biserial"] == pytest.approx((r_plus - r_minus) / (r_plus + r_minus))
        assert row["mean_difference_ci_low"] <= row["mean_difference_ci_high"]
        assert row["rank_biserial_ci_low"] <= row["rank_biserial_ci_high"]
        favoured_a = (r_plus > r_minus) == METRICS[row["metric"]]
        assert row["better"] == (row["model_a"] if favoured_a else row["model_b"])
    # Pratt zeros really occur (gen_a ties ODD on 3 cases) and gen_b's missing case is dropped
    tie = result[(result["model_a"] == ODD) & (result["model_b"] == "gen_a")]
    assert (tie["n_zero"] == 3).all()
    assert (
        result.loc[(result["metric"] == "ssim") & (result["model_a"] == "gen_b"), "n"].eq(N_CASES - 1).all()
    )
    _, expected, _, _ = multipletests(result["pvalue"].to_numpy(), method="holm")
    np.testing.assert_allclose(result["pvalue_holm"], expected, rtol=1e-12)


def test_paired_tests_subset_and_bad_metric(run) -> None:
    result = paired_tests(run, ["mse"], rng=np.random.default_rng(0), resamples=50)
    assert set(result["metric"]) == {"mse"} and len(result) == 10
    _, expected, _, _ = multipletests(result["pvalue"].to_numpy(), method="holm")
    np.testing.assert_allclose(result["pvalue_holm"], expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"no per-sample values for metric\(s\) fid.*available: ssim, psnr"):
        paired_tests(run, ["fid"], rng=np.random.default_rng(0))


def test_mean_std_matches_pandas(run, run_dir: Path) -> None:
    result = mean_std_table(run, "group")
    cases = pd.read_parquet(run_dir / rundir.CASES)[["case_id", "group"]]
    per_case = _per_case_reference(run_dir).merge(cases, on="case_id")
    ref = per_case.groupby(["model", "metric", "group"])["value"].agg(["mean", "std", "count"]).reset_index()
    merged = result.merge(
        ref, left_on=["model", "metric", "group_value"], right_on=["model", "metric", "group"]
    )
    assert len(merged) == len(ref) == len(result)
    np.testing.assert_allclose(merged["mean_x"], merged["mean_y"], rtol=1e-12)
    np.testing.assert_allclose(merged["std_x"], merged["std_y"], rtol=1e-12)
    np.testing.assert_array_equal(merged["n"], merged["count"])
    assert list(dict.fromkeys(result["model"])) == EXPECTED_ORDER
    with pytest.raises(ValueError, match=r"'nope'.*cases\.parquet.*available: group"):
        mean_std_table(run, "nope")


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def test_write_exports_files(run_dir: Path, tmp_path: Path) -> None:
    written = write_exports(
        run_dir, tmp_path, group_by="group", reader_scores=_reader_scores(), resamples=100
    )
    names = {p.name for p in written}
    assert names == {
        "comparison.md",
        "comparison.tex",
        "comparison.csv",
        "paired_tests.csv",
        *(f"comparison-group={v}.{ext}" for v in "ab" for ext in ("md", "tex", "csv")),
        "mean_std-group.md",
        "mean_std-group.csv",
    }
    assert {p.name for p in tmp_path.iterdir()} == names  # nothing else, no .tmp- leftovers
    main = pd.read_csv(tmp_path / "comparison.csv")
    assert {"reader_anatomy", "ssim"} <= set(main["metric"])
    # summary.csv has no group rows here: the group tables come from per_sample.parquet
    group_a = pd.read_csv(tmp_path / "comparison-group=a.csv", keep_default_na=False, na_values=[""])
    cases = pd.read_parquet(run_dir / rundir.CASES)[["case_id", "group"]]
    per_case = _per_case_reference(run_dir).merge(cases, on="case_id")
    ref = per_case[per_case["group"] == "a"].groupby(["model", "metric"])["value"].agg(["mean", "count"])
    got = group_a.dropna(subset=["value"]).set_index(["model", "metric"])
    assert len(got) == len(ref)
    np.testing.assert_allclose(got.loc[ref.index, "value"], ref["mean"], rtol=1e-12)
    np.testing.assert_array_equal(got.loc[ref.index, "n"], ref["count"])
    assert (got["ci_low"] <= got["value"]).all() and (got["value"] <= got["ci_high"]).all()
    assert set(group_a["group"]) == {"group=a"}
    assert "reader anatomy" not in (tmp_path / "comparison-group=a.md").read_text(encoding="utf-8")


def test_group_by_uses_summary_groups_when_present(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    import shutil

    shutil.copytree(run_dir, run)
    summary = pd.read_csv(run / rundir.SUMMARY)
    extra = summary[summary["model"].isin(["gen_a", "gen_b"]) & (summary["metric"] == "ssim")].copy()
    extra["group"] = ["group=a", "group=a"]
    extra["value"] = [0.6, 0.4]
    extra["n"] = 5
    summary = pd.concat([summary.assign(group=""), extra], ignore_index=True)
    summary.to_csv(run / rundir.SUMMARY, index=False)
    out = tmp_path / "out"
    write_exports(run, out, formats=("md", "csv"), group_by="group", resamples=50)
    assert not (out / "comparison-group=b.md").exists()  # only the summary's groups
    frame = pd.read_csv(out / "comparison-group=a.csv").dropna(subset=["value"])
    assert dict(zip(frame["model"], frame["value"], strict=True)) == {"gen_a": 0.6, "gen_b": 0.4}
    assert frame.loc[frame["model"] == "gen_a", "best"].item()
    assert not list(out.glob("*.tex"))


def test_export_errors(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--group-by 'nope'.*available: group"):
        write_exports(run_dir, tmp_path, group_by="nope", resamples=20)
    assert not list(tmp_path.iterdir())  # checked before anything is written
    with pytest.raises(ValueError, match=r"unknown export format\(s\) html; choose from md, tex, csv"):
        write_exports(run_dir, tmp_path, formats=("html",))


def test_comparison_does_not_import_torch() -> None:
    code = "import reports.comparison, sys; assert 'torch' not in sys.modules, 'reports.comparison imported torch'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_report_command_writes_every_format(run_dir: Path, tmp_path: Path, capsys) -> None:
    from audit.cli import main

    out = tmp_path / "out"
    assert main(["report", str(run_dir), "--format", "md,tex,csv,html", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(Path(p).name for p in printed)
    assert names == sorted(
        ["comparison.md", "comparison.tex", "comparison.csv", "paired_tests.csv", "report.html"]
    )
    assert all((out / n).stat().st_size > 0 for n in names)
    summary = pd.read_csv(run_dir / rundir.SUMMARY, keep_default_na=False)
    exported = pd.read_csv(out / "comparison.csv")
    overall = summary[summary.get("group", "") == ""] if "group" in summary else summary
    assert set(overall.metric) <= set(exported.metric)
    assert main(["report", str(run_dir), "--format", "pdf", "--out", str(out)]) == 2
    assert main(["report", str(tmp_path / "missing")]) == 1
