"""report.html with clinical and distribution metrics: a synthetic run directory extended by hand with
the rows and the run.json "evaluation" block that ``xray-audit run`` writes (no runner, no torch)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from audit import rundir
from reports.html import render_html_report
from tests.test_report_html import make_run

MODELS = ("gen_a", "gen_b", "blur-1", "blur-3", "real")
CLASSIFIER = "xrv-densenet121-res224-all"
SEGMENTER = "xrv-pspnet-chestx-det"
FEATURES = "demo-segmenter-encoder"
DEMO_NOTE = (
    "auto: verified inception-v3-fid weights are not present (missing), so the demo evaluator was used; "
    "its numbers are only meaningful on the demo cohort"
)
# Markup in a reason read from run.json must come out as text.
PRDC_REASON = (
    "weights <densenet121-res224-all.pt> & co. not found; run `xray-audit weights fetch densenet121`"
)
EFFUSION_SKIP = "all 3 cases positive (AUC needs negatives too)"
GEN_B_SKIP = "all 6 cases negative (AUC needs positives too)"
FXD_ERROR = "Fréchet distance needs at least 2 samples per set; the generated set has 1"
SHA = "e497c5f37039e92a348ae6830b9503f756ec55978d2d82e39a52f7ce70d4349b"
GROUP = "labels=Effusion"
NAN = float("nan")


def _row(
    model: str,
    metric: str,
    value: float,
    lo: float = NAN,
    hi: float = NAN,
    n: int = 6,
    hib: bool = True,
    group: str = "",
    evaluator: str = "",
) -> dict:
    return {
        "model": model,
        "metric": metric,
        "value": value,
        "ci_low": lo,
        "ci_high": hi,
        "n": n,
        "higher_is_better": hib,
        "unit": "",
        "group": group,
        "evaluator": evaluator,
    }


def _clinical_rows(groups: bool) -> list[dict]:
    """Hand-picked values: gen_a best AUC, gen_b best F1 and Dice; real only where no self-comparison."""
    rows = []
    auc = {
        "gen_a": (0.812, 0.70, 0.90),
        "gen_b": (0.775, 0.65, 0.88),
        "blur-1": (0.79, 0.68, 0.89),
        "blur-3": (0.70, 0.58, 0.81),
        "real": (0.931, 0.86, 0.98),
    }
    f1 = {
        "gen_a": (0.61, 0.50, 0.72),
        "gen_b": (0.66, 0.55, 0.77),
        "blur-1": (0.64, 0.52, 0.75),
        "blur-3": (0.55, 0.43, 0.66),
        "real": (0.80, 0.70, 0.88),
    }
    for model in MODELS:
        for metric, table in (("pathology_auc", auc), ("pathology_f1", f1)):
            v, lo, hi = table[model]
            rows.append(_row(model, metric, v, lo, hi, evaluator=CLASSIFIER))
            for cls, shift in (("Nodule", 0.01), ("Effusion", -0.01)):
                if model == "gen_b" and metric == "pathology_auc" and cls == "Effusion":
                    continue  # skipped for gen_b, see the evaluation block
                rows.append(
                    _row(model, f"{metric}:{cls}", v + shift, lo + shift, hi + shift, evaluator=CLASSIFIER)
                )
        dice = 0.95 if model == "gen_b" else 0.90
        for s in ("lungs", "heart", "aorta", "mean"):
            if model != "real":
                rows.append(_row(model, f"dice_{s}", dice, dice - 0.01, dice + 0.01, evaluator=SEGMENTER))
            rows.append(
                _row(model, f"dice_mask_{s}", dice - 0.05, dice - 0.06, dice - 0.04, evaluator=SEGMENTER)
            )
        if model == "real":
            continue
        fid = {"gen_a": 12.5, "gen_b": 9.75, "blur-1": 3.5, "blur-3": 20.25}[model]
        rows.append(_row(model, "fid", fid, hib=False, evaluator=FEATURES))
        rows.append(_row(model, "fxd", NAN if model == "gen_b" else fid * 2, hib=False, evaluator=CLASSIFIER))
        rows.append(_row(model, "kid", fid / 1000, hib=False, evaluator=FEATURES))
        if groups:
            rows.append(_row(model, "fid", fid * 10, n=3, hib=False, group=GROUP, evaluator=FEATURES))
            # gen_a worst on Effusion cases, best on normal ones: bold is decided per group
            a = model == "gen_a"
            rows.append(_row(model, "ssim", 0.123 if a else 0.2, 0.1, 0.25, n=3, group=GROUP))
            rows.append(_row(model, "ssim", 0.456 if a else 0.3, 0.25, 0.5, n=3, group="labels=No Finding"))
    return rows


def _evaluation() -> dict:
    feature_metrics = {}
    for model in ("gen_a", "gen_b", "blur-1", "blur-3"):
        rec = {
            "fid": {"n_real": 6, "n_gen": 6, "dim": 2048, "rank_deficient": True},
            "fxd": {"n_real": 6, "n_gen": 6, "dim": 4, "rank_deficient": False},
            "kid": {
                "n_real": 6,
                "n_gen": 6,
                "std": 0.0123,
                "subset_size": 6,
                "subsets": 100,
                "clamped": True,
                "requested_subset_size": 1000,
            },
        }
        if model == "gen_b":
            rec["fxd"] = {"error": FXD_ERROR, "n_real": 6, "n_gen": 1}
        feature_metrics[model] = {
            "all cases": rec,
            GROUP: {"fid": {"n_real": 3, "n_gen": 3, "dim": 2048, "rank_deficient": True}},
        }
    skipped = {m: {GROUP: {"pathology_auc": {"Effusion": EFFUSION_SKIP}}} for m in MODELS}
    skipped["gen_b"]["all cases"] = {"pathology_auc": {"Effusion": GEN_B_SKIP}}
    return {
        "evaluators": {
            "classifier": {
                "name": CLASSIFIER,
                "role": "classifier",
                "source": "xrv",
                "label": "TorchXRayVision DenseNet-121 (all datasets)",
                "weights": "densenet121.pt",
                "weights_sha256": SHA,
                "preprocessing": "xrv;center-crop;224px",
                "note": "",
            },
            "segmenter": {
                "name": SEGMENTER,
                "role": "segmenter",
                "source": "xrv",
                "label": "PSPNet ChestX-Det",
                "weights": "pspnet.pt",
                "weights_sha256": "1" * 64,
                "preprocessing": "xrv;512px",
                "note": "",
            },
            "features": {
                "name": FEATURES,
                "role": "features",
                "source": "demo",
                "label": "demo U-Net encoder features (256-d)",
                "weights": "anatomy_segmenter.pt",
                "weights_sha256": "2" * 64,
                "preprocessing": "demo;128px",
                "note": DEMO_NOTE,
            },
        },
        "metric_evaluators": {
            "pathology_auc": CLASSIFIER,
            "pathology_f1": CLASSIFIER,
            "fid": FEATURES,
            "fxd": CLASSIFIER,
            "kid": FEATURES,
            "dice_mean": SEGMENTER,
        },
        "unavailable": dict.fromkeys(("precision", "recall", "density", "coverage"), PRDC_REASON),
        "device": "cpu",
        "dtype": "fp32",
        "cache_dir": "/tmp/cache/features",
        "pathology": {
            "classes": ["Nodule", "Effusion"],
            "threshold_policy": "F1-optimal per class on the real images",
            "thresholds": {"Nodule": 0.42, "Effusion": 0.61},
            "skipped": skipped,
        },
        "feature_metrics": feature_metrics,
    }


def make_clinical_run(root: Path, groups: bool = True, evaluation: bool = True) -> Path:
    run = make_run(root)
    summary = pd.read_csv(run / rundir.SUMMARY)
    summary["unit"] = ""
    summary["group"] = ""
    summary["evaluator"] = ""
    summary = pd.concat([summary, pd.DataFrame(_clinical_rows(groups))], ignore_index=True)
    summary.to_csv(run / rundir.SUMMARY, index=False)
    per_sample = pd.read_parquet(run / rundir.PER_SAMPLE)
    cases = sorted(per_sample["case_id"].unique())
    dice = pd.DataFrame(
        [
            {"model": m, "case_id": c, "sample": 0, "metric": metric, "value": 0.9 + 0.01 * i}
            for m in MODELS
            for i, c in enumerate(cases)
            for metric in ("dice_mean", "dice_mask_mean")
            if not (m == "real" and metric == "dice_mean")
        ]
    )
    pd.concat([per_sample, dice], ignore_index=True).to_parquet(run / rundir.PER_SAMPLE)
    info = json.loads((run / rundir.RUN_JSON).read_text(encoding="utf-8"))
    info["policies"] = {"group_by": ["labels"] if groups else []}
    if evaluation:
        info["evaluation"] = _evaluation()
    (run / rundir.RUN_JSON).write_text(json.dumps(info), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    return render_html_report(make_clinical_run(tmp_path_factory.mktemp("clinical")), grid_cases=1)


def _table(page: str, table_id: str) -> str:
    found = re.search(
        rf'<div class="result-table" data-table="{table_id}" id="results-{table_id}">(.*?)</table>',
        page,
        re.DOTALL,
    )
    assert found, f"no {table_id} table"
    return found.group(1)


def _heads(table: str) -> dict[str, str]:
    return dict(re.findall(r'<th data-metric="([^"]+)"[^>]*>(.*?)</th>', table, flags=re.DOTALL))


def _cell(table: str, model: str, metric_index: int, group: str = "") -> str:
    attr = f' data-group="{re.escape(group)}"' if group else ""
    row = re.search(rf'<tr class="[a-z]+" data-model="{re.escape(model)}"{attr}>(.*?)</tr>', table, re.DOTALL)
    assert row, f"no row {model} {group}"
    return re.findall(r"<td.*?</td>", row.group(1), flags=re.DOTALL)[metric_index]


def _title(cell: str) -> str:
    return html.unescape(re.search(r'<td[^>]*title="([^"]*)"', cell).group(1))


def test_tables_split_by_family_with_evaluators(page: str) -> None:
    order = [m.group(1) for m in re.finditer(r'<div class="result-table" data-table="([a-z-]+)" id=', page)]
    assert order == ["paired", "clinical", "mask", "distribution", "per-class"]
    assert list(_heads(_table(page, "paired"))) == ["ssim", "psnr", "mse", "mae", "overlap_f1"]
    clinical = _heads(_table(page, "clinical"))
    assert list(clinical) == [
        "pathology_auc",
        "pathology_f1",
        "dice_lungs",
        "dice_heart",
        "dice_aorta",
        "dice_mean",
    ]
    assert f"by {CLASSIFIER}" in clinical["pathology_auc"] and "AUC" in clinical["pathology_auc"]
    assert f"by {SEGMENTER}" in clinical["dice_lungs"] and "demo" not in clinical["dice_lungs"]
    assert list(_heads(_table(page, "mask"))) == [
        f"dice_mask_{s}" for s in ("lungs", "heart", "aorta", "mean")
    ]
    dist = _heads(_table(page, "distribution"))
    assert list(dist) == ["fid", "fxd", "kid"]
    assert f"by {FEATURES}" in dist["fid"] and 'class="demo-flag"' in dist["fid"]
    assert f"by {CLASSIFIER}" in dist["fxd"] and "↓" in dist["fid"]


def test_clinical_values_best_and_real_upper_bound(page: str) -> None:
    table = _table(page, "clinical")
    auc_a = _cell(table, "gen_a", 0)
    assert '<span class="v"><strong>0.812</strong></span> <span class="ci">[0.700, 0.900]</span>' in auc_a
    assert "<strong>" not in _cell(table, "gen_b", 0)
    assert "<strong>0.660</strong>" in _cell(table, "gen_b", 1)  # best F1
    real_auc = _cell(table, "real", 0)
    assert (
        '<span class="v">0.931</span>' in real_auc and "<strong>" not in real_auc
    )  # upper bound, not a winner
    real_dice = _cell(table, "real", 2)
    assert ">—<" in real_dice and "segmentation compared with itself" in _title(real_dice)
    assert '<span class="v">0.850</span>' in _cell(_table(page, "mask"), "real", 3)


def test_main_tables_use_only_all_case_rows(page: str) -> None:
    paired, dist = _table(page, "paired"), _table(page, "distribution")
    assert "0.123" not in paired and "0.456" not in paired
    assert '<span class="v">125</span>' not in dist  # gen_a's FID in the labels=Effusion group
    assert '<span class="v">12.5</span>' in _cell(dist, "gen_a", 0)


def test_real_row_has_no_distribution_values(page: str) -> None:
    dist = _table(page, "distribution")
    for i in range(3):
        cell = _cell(dist, "real", i)
        assert ">—<" in cell
        assert "reference set compared with itself is degenerate" in _title(cell)


def test_rank_deficient_flag_and_feature_errors(page: str) -> None:
    dist = _table(page, "distribution")
    fid_a = _cell(dist, "gen_a", 0)
    warning = (
        "N=6 ≤ D=2048: the covariance is rank-deficient; FID is biased upwards and not comparable across N"
    )
    assert f'<span class="flag" title="{html.escape(warning)}">⚠</span>' in fid_a
    assert "6 generated samples vs 6 real images" in _title(fid_a)
    assert '<span class="v">25.0</span>' in _cell(dist, "gen_a", 1)
    assert "flag" not in _cell(dist, "gen_a", 1)  # FXD: N=6 > D=4
    fxd_b = _cell(dist, "gen_b", 1)
    assert ">—<" in fxd_b and _title(fxd_b) == f"not computed: {FXD_ERROR}"
    notes = re.search(
        r'id="results-distribution">.*?<div class="notes">(.*?)</div></div>', page, re.DOTALL
    ).group(1)
    assert "Rank-deficient covariance</span> (cells marked ⚠; FID: N=6 ≤ D=2048)." in notes  # FXD: N > D


def test_kid_std_and_subset_note(page: str) -> None:
    dist = _table(page, "distribution")
    kid_a = _cell(dist, "gen_a", 2)
    assert '<span class="v">0.0125</span>' in kid_a
    assert re.search(
        r'<span class="pm" title="std over 100 random subsets of 6 samples per set">± 0\.0123</span>', kid_a
    )
    assert "KID is the mean ± std over 100 random subsets of 6 samples per set" in page
    assert "the requested subset size 1000" in page and "std (≈ 0) is not an uncertainty estimate" in page


def test_unavailable_metrics_are_prominent(page: str) -> None:
    callout = re.search(
        r'<div class="callout warn unavailable" id="unavailable">(.*?)</div>', page, re.DOTALL
    )
    assert callout, "no unavailable callout"
    text = callout.group(1)
    assert "4 requested metric(s) not computed" in text
    assert "<b>precision, recall, density, coverage</b>" in text
    assert html.escape(PRDC_REASON) in text and PRDC_REASON not in page  # escaped, once per reason
    assert text.count(html.escape(PRDC_REASON)) == 1
    assert page.index('id="unavailable"') < page.index('id="results-paired"')  # above the first table


def test_evaluators_block_and_demo_warning(page: str) -> None:
    demo = re.search(r'<div class="callout warn demo-evaluators">(.*?)</div>', page, re.DOTALL).group(1)
    assert FEATURES in demo and html.escape(DEMO_NOTE) in demo
    assert CLASSIFIER not in demo  # only demo evaluators are warned about
    block = re.search(r'<table class="plain evaluators">.*?</table>', page, re.DOTALL).group(0)
    rows = dict(re.findall(r'<tr data-evaluator="([^"]+)">(.*?)</tr>', block, re.DOTALL))
    assert list(rows) == [CLASSIFIER, SEGMENTER, FEATURES]
    assert f'title="sha256 {SHA}">sha256 <code>{SHA[:12]}</code>' in rows[CLASSIFIER]
    assert "TorchXRayVision DenseNet-121" in rows[CLASSIFIER] and "xrv;center-crop;224px" in rows[CLASSIFIER]
    assert "AUC, F1, FXD" in rows[CLASSIFIER]  # the metrics it produced
    assert 'class="demo-flag">demo<' in rows[FEATURES] and html.escape(DEMO_NOTE) in rows[FEATURES]
    assert "device <code>cpu</code>" in page


def test_skipped_classes_and_threshold_policy(page: str) -> None:
    block = re.search(r'<div class="callout skipped">(.*?)</div>', page, re.DOTALL).group(1)
    rows = re.findall(
        r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", block
    )
    assert rows == [
        ("all cases", "AUC", "Effusion", "all 6 cases negative (AUC needs positives too)", "gen_b"),
        (GROUP, "AUC", "Effusion", "all 3 cases positive (AUC needs negatives too)", "all 5 models"),
    ]
    assert (
        "F1 threshold policy: F1-optimal per class on the real images. "
        "Thresholds: Nodule 0.42, Effusion 0.61." in page
    )
    assert "macro) mean over the 2 class(es) scored: Nodule, Effusion" in page


def test_per_class_tables(page: str) -> None:
    block = re.search(r'id="results-per-class">(.*?)<div class="notes">', page, re.DOTALL).group(1)
    tables = re.findall(
        r'<h4 data-metric="([^"]+)">.*?<table class="summary per-class">(.*?)</table>', block, re.DOTALL
    )
    assert [t[0] for t in tables] == ["pathology_auc", "pathology_f1"]
    auc = tables[0][1]
    assert re.findall(r'<tr class="generator" data-class="([^"]+)">', auc) == ["Nodule", "Effusion"]
    effusion = re.search(r'data-class="Effusion">(.*?)</tr>', auc, re.DOTALL).group(1)
    cells = re.findall(r"<td.*?</td>", effusion, re.DOTALL)
    assert len(cells) == len(MODELS)
    # gen_a alone among the generators: no contest, no bold
    assert '<span class="v">0.802</span> <span class="ci">[0.690, 0.890]</span>' in cells[0]
    assert _title(cells[1]) == f"class skipped: {GEN_B_SKIP}"
    nodule = re.search(r'data-class="Nodule">(.*?)</tr>', auc, re.DOTALL).group(1)
    assert "<strong>0.822</strong>" in re.findall(r"<td.*?</td>", nodule, re.DOTALL)[0]


def test_grouped_section(page: str) -> None:
    assert '<section id="groups"><h2>Results by group</h2>' in page
    groups = page[page.index('<section id="groups">') : page.index('<section id="distributions">')]
    assert '<details class="group-column" data-group-column="labels" open>' in groups
    paired = re.search(
        r'data-table="paired" data-group-column="labels">(.*?)</table>', groups, re.DOTALL
    ).group(1)
    bands = re.findall(r'<tr class="band"><th colspan="\d+">(.*?)</th></tr>', paired)
    assert bands == ["labels = Effusion · 3 cases", "labels = No Finding · 3 cases"]
    assert list(_heads(paired)) == ["ssim"]
    assert '<span class="v">0.123</span>' in _cell(paired, "gen_a", 0, GROUP)
    assert '<span class="v"><strong>0.200</strong></span>' in _cell(paired, "gen_b", 0, GROUP)
    assert '<span class="v"><strong>0.456</strong></span>' in _cell(paired, "gen_a", 0, "labels=No Finding")
    assert "group labels=No Finding" in _title(_cell(paired, "gen_a", 0, "labels=No Finding"))
    dist = re.search(
        r'data-table="distribution" data-group-column="labels">(.*?)</table>', groups, re.DOTALL
    ).group(1)
    fid = _cell(dist, "gen_a", 0, GROUP)
    assert '<span class="v">125</span>' in fid and "N=3 ≤ D=2048" in fid  # the group's own N
    assert 'href="#groups"' in page


def test_distribution_plots_only_for_per_case_metrics(page: str) -> None:
    plotted = re.findall(r'<figure class="plot" data-metric="([^"]+)"', page)
    assert plotted == ["ssim", "psnr", "mse", "mae", "overlap_f1", "dice_mean", "dice_mask_mean"]
    assert (
        "No plot for AUC, F1, Dice lungs, Dice heart, Dice aorta, mask Dice lungs, mask Dice heart, " in page
    )
    assert "mask Dice aorta, FID, FXD, KID: no per-case values" in page


def test_no_groups_no_grouped_section(tmp_path: Path) -> None:
    page = render_html_report(make_clinical_run(tmp_path, groups=False), grid_cases=1)
    assert 'id="groups"' not in page and 'href="#groups"' not in page
    assert 'id="results-distribution"' in page


def test_without_evaluation_block(tmp_path: Path) -> None:
    page = render_html_report(make_clinical_run(tmp_path, groups=False, evaluation=False), grid_cases=1)
    dist = _table(page, "distribution")
    assert f"by {FEATURES}" in _heads(dist)["fid"]  # the summary's evaluator column suffices
    assert "flag" not in dist and 'class="pm"' not in dist
    assert 'id="unavailable"' not in page and "Evaluators</h3>" not in page


def test_old_format_summary_still_renders(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    summary = pd.read_csv(run / rundir.SUMMARY)
    assert "group" not in summary.columns and "evaluator" not in summary.columns
    assert "evaluation" not in json.loads((run / rundir.RUN_JSON).read_text(encoding="utf-8"))
    page = render_html_report(run, grid_cases=1)
    assert re.findall(r'<div class="result-table" data-table="([a-z-]+)"', page) == ["paired"]
    for absent in (
        'id="groups"',
        'id="unavailable"',
        "demo-evaluators",
        "Evaluators</h3>",
        "callout skipped",
    ):
        assert absent not in page


def test_model_named_na_is_not_missing(tmp_path: Path) -> None:
    run = make_clinical_run(tmp_path, groups=False)
    summary = pd.read_csv(run / rundir.SUMMARY, keep_default_na=False)
    summary.loc[summary["model"] == "gen_a", "model"] = "NA"
    summary.to_csv(run / rundir.SUMMARY, index=False)
    page = render_html_report(run, grid_cases=1)
    assert '<span class="v"><strong>0.812</strong></span>' in _cell(_table(page, "clinical"), "NA", 0)
