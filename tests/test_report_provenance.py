"""Honest figures: every clinical and distribution column of the exports names its evaluator and how its
weights were pinned, and a table scored by a demo stand-in says so in its first line (issue 17).

(a) on the shared ``xray-audit demo`` run (demo stand-ins); (b) on a copy of it whose run.json and
summary.csv are edited to say real evaluators (pinned by the release, by the user on first download,
and by a hash the user gave) scored the numbers; plus the lookup itself on hand-written run.json blocks.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from audit import rundir
from audit.metrics import catalogue
from reports.comparison import comparison_table, write_exports
from reports.provenance import DEMO_TAG, metric_mark
from reports.run import RESULT_TABLES, MetricColumn, load_run
from reports.sections.provenance import render_provenance
from reports.statistics import read_paired_tests

# The privacy metrics scored by the [privacy].features embedding (nn_distance_pixel and the re-ID
# scores are not: pixels, and the re-ID file).
PRIVACY_EMBEDDING = {
    "nn_distance",
    "memorised_fraction",
    "authenticity",
    "privacy_auc",
    "alpha_precision",
    "beta_recall",
}
EVALUATOR_METRICS = {
    *catalogue.names(family="clinical"),
    *catalogue.names(family="distribution"),
    *PRIVACY_EMBEDDING,
}
DISTRIBUTION_METRICS = catalogue.names(family="distribution")
RESAMPLES = 40
CLASSIFIER_SHA = "ab12" * 16
SEGMENTER_SHA = "cd34" * 16
FEATURES_SHA = "ef56" * 16
TRUST_NOTE = (
    "pinned by you on first download (2026-12-05, from https://example.org/pspnet_chestxdet.pth); "
    "not independently verified"
)
RELEASE_NOTE = "verified against the hash pinned by this release"
SHA_NOTE = "verified against the hash you recorded with --sha256 on 2026-12-01"
# What the edited copy says produced each of the demo's evaluator names, per role.
REAL = {
    "classifier": {
        "name": "xrv-densenet121-res224-all",
        "source": "xrv",
        "weights": "densenet121-res224-all",
        "weights_sha256": CLASSIFIER_SHA,
        "pin": "release",
        "pin_note": RELEASE_NOTE,
    },
    "segmenter": {
        "name": "xrv-pspnet-chestx-det",
        "source": "xrv",
        "weights": "pspnet-chestx-det",
        "weights_sha256": SEGMENTER_SHA,
        "pin": "user-trust",
        "pin_note": TRUST_NOTE,
    },
    "features": {
        "name": "inception-v3-fid",
        "source": "inception",
        "weights": "inception-v3-fid",
        "weights_sha256": FEATURES_SHA,
        "pin": "user-sha256",
        "pin_note": SHA_NOTE,
    },
}
# The header words each of them must get.
REAL_TAGS = {
    "classifier": "xrv-densenet121-res224-all, pinned",
    "segmenter": "xrv-pspnet-chestx-det, pinned by you on first download",
    "features": "inception-v3-fid, hash given by you",
}


def _md_cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return [c.strip().replace("\\_", "_") for c in re.split(r"(?<!\\)\|", line[2:-2])]


def _md_header(text: str) -> list[str]:
    """The metric headers of comparison.md (without model and kind)."""
    return _md_cells(next(ln for ln in text.splitlines() if ln.startswith("| model |")))[2:]


def _tex_header(text: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith("Model & "))
    return [c.strip() for c in re.split(r"(?<!\\)&", line.removesuffix(r"\\"))][1:]


def _tex_notes(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\\textsuperscript\{([a-z]+)\}~(.*)\\par$", text, flags=re.MULTILINE))


def _needs_mark(metric: str) -> bool:
    return metric.split(":", 1)[0] in EVALUATOR_METRICS


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# ------------------------------------------------------------------------------------------------
# (a) the demo run: demo stand-ins
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_exports(demo_run, tmp_path_factory) -> Path:
    assert demo_run.exit_code == 0, demo_run.log
    out = tmp_path_factory.mktemp("demo-exports")
    write_exports(demo_run.run, out, resamples=RESAMPLES)
    return out


@pytest.fixture(scope="module")
def demo_evaluators(demo_run) -> dict[str, dict]:
    info = json.loads((demo_run.run / rundir.RUN_JSON).read_text())
    evaluators = info["evaluation"]["evaluators"]
    assert {d["source"] for d in evaluators.values()} == {"demo"}  # the premise of these tests
    return evaluators


@pytest.fixture(scope="module")
def demo_metrics(demo_run) -> list[str]:
    metrics = comparison_table(load_run(demo_run.run)).metrics
    # Clinical, distribution and pixel columns are all there, or the checks below prove little.
    assert {"pathology_auc", "dice_lungs", "fid", "fxd", "kid", "ssim", "psnr"} <= set(metrics)
    return metrics


def test_demo_markdown_says_demo_first_and_marks_every_evaluator_column(
    demo_exports: Path, demo_metrics: list[str]
) -> None:
    text = (demo_exports / "comparison.md").read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert "Demo stand-in evaluators" in first and "not comparable to published values" in first
    assert "demo-nodule-classifier" in first and "demo-anatomy-segmenter" in first
    heads = _md_header(text)
    assert len(heads) == len(demo_metrics)
    for metric, head in zip(demo_metrics, heads, strict=True):
        if _needs_mark(metric):
            assert head.endswith(f"({DEMO_TAG})"), (metric, head)
        else:  # pixel metrics: no evaluator, at most a unit
            assert "demo" not in head and "pinned" not in head, (metric, head)
    # the closing legend names each evaluator with its weights' full sha256
    assert re.search(r"^- .*AUC.*demo-nodule-classifier .*sha256 `[0-9a-f]{64}`$", text, flags=re.MULTILINE)


def test_demo_latex_says_demo_first_and_marks_every_evaluator_column(
    demo_exports: Path, demo_metrics: list[str], demo_evaluators: dict[str, dict]
) -> None:
    text = (demo_exports / "comparison.tex").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("% Demo stand-in evaluators") and "not comparable" in lines[0]
    assert lines[1] == r"\begin{table}[t]"
    body = "\n".join(lines[1:])
    assert not re.search(r"(?<!\\)%", body)  # the comment is the only unescaped %
    notes = _tex_notes(text)
    heads = _tex_header(text)
    assert len(heads) == len(demo_metrics)
    for metric, head in zip(demo_metrics, heads, strict=True):
        found = re.search(r"\\textsuperscript\{([a-z]+)\}", head)
        if not _needs_mark(metric):
            assert found is None, (metric, head)
            continue
        assert found, (metric, head)
        note = notes[found.group(1)]
        assert "demo stand-in" in note and "not comparable to published values" in note, note
    # the visible note under the table says it too, not only the comment
    assert r"\textbf{Demo stand-in evaluators" in body
    sha = demo_evaluators["classifier"]["weights_sha256"]
    assert any(sha[:12] in n and "demo-nodule-classifier" in n for n in notes.values())


def test_demo_csvs_carry_evaluator_and_weights_sha(
    demo_exports: Path, demo_evaluators: dict[str, dict]
) -> None:
    from audit.demo import spec

    manifest = spec.read_manifest()["files"]
    classifier_sha = manifest[spec.CLASSIFIER_FILE]["sha256"]
    segmenter_sha = manifest[spec.SEGMENTER_FILE]["sha256"]
    assert demo_evaluators["classifier"]["weights_sha256"] == classifier_sha
    frame = _read_csv(demo_exports / "comparison.csv")
    assert {"evaluator", "weights_sha256", "pin"} <= set(frame.columns)
    by_metric = frame.groupby("metric")
    for metric, rows in by_metric:
        base = metric.split(":", 1)[0]
        values = set(map(tuple, rows[["evaluator", "weights_sha256", "pin"]].to_numpy()))
        assert len(values) == 1, (metric, values)  # one evaluator per column, on every model's row
        evaluator, sha, pin = values.pop()
        if base in ("pathology_auc", "pathology_f1", "fxd", "precision", "recall", "density", "coverage"):
            assert (evaluator, sha, pin) == ("demo-nodule-classifier", classifier_sha, "demo"), metric
        elif base.startswith("dice_") or base in ("fid", "kid", *PRIVACY_EMBEDDING):
            assert (evaluator, sha, pin) == ("demo-anatomy-segmenter", segmenter_sha, "demo"), metric
        else:
            assert (evaluator, sha, pin) == ("", "", ""), metric
    assert "pathology_auc:Nodule" in set(frame["metric"])  # per-class rows carry it too (checked above)

    paired = _read_csv(demo_exports / "paired_tests.csv")
    assert {"evaluator", "weights_sha256", "pin"} <= set(paired.columns)
    dice = paired[paired["metric"] == "dice_lungs"]
    assert len(dice) and set(dice["evaluator"]) == {"demo-anatomy-segmenter"}
    assert set(dice["weights_sha256"]) == {segmenter_sha}
    pixel = paired[paired["metric"] == "ssim"]
    assert len(pixel) and set(pixel["evaluator"]) == {""} and set(pixel["weights_sha256"]) == {""}
    # report.html reads paired_tests.csv back: the new columns come back as text
    read = read_paired_tests(demo_exports / "paired_tests.csv")
    assert set(read.loc[read["metric"] == "dice_lungs", "weights_sha256"]) == {segmenter_sha}


def test_demo_provenance_shows_where_each_pin_came_from(demo_run) -> None:
    section = render_provenance(load_run(demo_run.run))
    table = re.search(r'<table class="plain evaluators-provenance">.*?</table>', section, re.DOTALL).group(0)
    assert "<th>where the hash came from</th>" in table
    pins = re.findall(r'<td data-col="pin"[^>]*>(.*?)</td>', table, flags=re.DOTALL)
    assert len(pins) == 3  # classifier, segmenter, features
    assert all("demo stand-in" in html.unescape(p) for p in pins), pins


# ------------------------------------------------------------------------------------------------
# (b) the same run, said to be scored by real evaluators
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(demo_run, tmp_path_factory) -> Path:
    """A copy of the demo run's tables with run.json and summary.csv naming real, pinned evaluators."""
    run = tmp_path_factory.mktemp("real-pins") / "run"
    keep = {rundir.RUN_JSON, rundir.SUMMARY, rundir.SAMPLES, rundir.PER_SAMPLE, rundir.CASES, "config.toml"}
    shutil.copytree(demo_run.run, run, ignore=lambda d, names: [n for n in names if n not in keep])
    info = json.loads((run / rundir.RUN_JSON).read_text())
    evaluation = info["evaluation"]
    for role, desc in evaluation["evaluators"].items():
        desc.update(REAL[role])
    features = {"fid", "kid", *PRIVACY_EMBEDDING}  # the demo's segmenter stands in for the FID extractor
    info["privacy"]["features"] = REAL["features"]["name"]
    info["privacy"]["features_plan"].update(REAL["features"])

    def new_name(metric: str, old: str) -> str:
        if not old:
            return old
        if metric.split(":", 1)[0] in features:
            return REAL["features"]["name"]
        return REAL["classifier" if old == "demo-nodule-classifier" else "segmenter"]["name"]

    evaluation["metric_evaluators"] = {m: new_name(m, e) for m, e in evaluation["metric_evaluators"].items()}
    (run / rundir.RUN_JSON).write_text(json.dumps(info, indent=2))
    summary = _read_csv(run / rundir.SUMMARY)
    summary["evaluator"] = [
        new_name(m, e) for m, e in zip(summary["metric"], summary["evaluator"], strict=True)
    ]
    summary.to_csv(run / rundir.SUMMARY, index=False)
    return run


@pytest.fixture(scope="module")
def real_exports(real_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real-exports")
    write_exports(real_run, out, resamples=RESAMPLES)
    return out


def _role(metric: str) -> str:
    base = metric.split(":", 1)[0]
    if base in ("fid", "kid", *PRIVACY_EMBEDDING):
        return "features"
    return "segmenter" if base.startswith("dice_") else "classifier"


def test_real_pins_in_markdown_headers_and_no_demo_line(real_exports: Path, real_run: Path) -> None:
    text = (real_exports / "comparison.md").read_text(encoding="utf-8")
    assert "demo" not in text.lower()
    assert text.startswith("| model | kind |")
    metrics = comparison_table(load_run(real_run)).metrics
    heads = _md_header(text)
    seen = set()
    for metric, head in zip(metrics, heads, strict=True):
        if _needs_mark(metric):
            assert head.endswith(f"({REAL_TAGS[_role(metric)]})"), (metric, head)
            seen.add(_role(metric))
        else:
            assert "pinned" not in head and "hash" not in head, (metric, head)
    assert seen == set(REAL)
    assert TRUST_NOTE in text.replace("\\_", "_")  # the legend has the whole sentence


def test_real_pins_in_latex_notes(real_exports: Path) -> None:
    text = (real_exports / "comparison.tex").read_text(encoding="utf-8")
    assert text.startswith(r"\begin{table}") and "demo" not in text.lower()
    notes = _tex_notes(text)
    assert len(notes) == 3
    joined = " ".join(notes.values()).replace(r"\_", "_")
    for note in (RELEASE_NOTE, SHA_NOTE, "pinned by you on first download (2026-12-05"):
        assert note in joined
    for sha in (CLASSIFIER_SHA, SEGMENTER_SHA, FEATURES_SHA):
        assert sha[:12] in joined


def test_real_pins_in_csvs(real_exports: Path) -> None:
    frame = _read_csv(real_exports / "comparison.csv")
    auc = frame[frame["metric"] == "pathology_auc"]
    assert set(map(tuple, auc[["evaluator", "weights_sha256", "pin"]].to_numpy())) == {
        ("xrv-densenet121-res224-all", CLASSIFIER_SHA, "release")
    }
    dice = frame[frame["metric"] == "dice_mean"]
    assert set(dice["pin"]) == {"user-trust"} and set(dice["weights_sha256"]) == {SEGMENTER_SHA}
    paired = _read_csv(real_exports / "paired_tests.csv")
    assert set(paired.loc[paired["metric"] == "dice_mean", "pin"]) == {"user-trust"}


def test_real_pins_in_html_provenance(real_run: Path) -> None:
    section = render_provenance(load_run(real_run))
    table = re.search(r'<table class="plain evaluators-provenance">.*?</table>', section, re.DOTALL).group(0)
    rows = dict(re.findall(r'<tr data-evaluator="([^"]+)">(.*?)</tr>', table, flags=re.DOTALL))
    pin = {
        name: html.unescape(re.search(r'<td data-col="pin"[^>]*>(.*?)</td>', row, re.DOTALL).group(1))
        for name, row in rows.items()
    }
    assert pin == {
        "xrv-densenet121-res224-all": RELEASE_NOTE,
        "xrv-pspnet-chestx-det": TRUST_NOTE,
        "inception-v3-fid": SHA_NOTE,
    }


def test_run_without_pin_fields_says_not_recorded(real_run: Path, tmp_path: Path) -> None:
    """A run.json from before pins were recorded: the headers and provenance say so, not "pinned"."""
    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    info = json.loads((run / rundir.RUN_JSON).read_text())
    for desc in info["evaluation"]["evaluators"].values():
        del desc["pin"], desc["pin_note"]
    (run / rundir.RUN_JSON).write_text(json.dumps(info))
    table = comparison_table(load_run(run))
    assert table.marks["pathology_auc"].tag == "xrv-densenet121-res224-all, pin not recorded"
    section = render_provenance(load_run(run))
    assert "pin source not recorded" in section and RELEASE_NOTE not in section


# ------------------------------------------------------------------------------------------------
# The lookup on hand-written run.json blocks
# ------------------------------------------------------------------------------------------------


def _info(**evaluators: dict) -> dict:
    return {
        "evaluation": {
            "evaluators": {role: {"role": role, **d} for role, d in evaluators.items()},
            "metric_evaluators": {
                "pathology_auc": "xrv-densenet121-res224-all",
                **{m: "rad-dino" for m in DISTRIBUTION_METRICS if m.endswith("_raddino")},
            },
        }
    }


def test_metric_mark_pins_raddino_norberg_and_pixel() -> None:
    info = _info(
        classifier={"name": "xrv-densenet121-res224-all", "source": "xrv", "pin": "release-one-source"},
        raddino={"name": "rad-dino", "source": "hf", "pin": "config", "weights_sha256": "9" * 64},
    )
    assert (
        metric_mark(info, "pathology_auc:Nodule").tag
        == "xrv-densenet121-res224-all, pinned (one public source)"
    )
    for metric in ("fd_raddino", "kid_raddino", "precision_raddino", "coverage_raddino"):
        mark = metric_mark(info, metric)
        assert (mark.evaluator, mark.tag, mark.weights_sha256) == (
            "rad-dino",
            "rad-dino, hash from config",
            "9" * 64,
        )
    assert metric_mark(info, "ssim") is None and metric_mark(info, "reader_realism") is None
    # an evaluator metric the run does not attribute is still marked, as unknown
    assert metric_mark(info, "dice_lungs").tag == "evaluator not recorded"
    # summary.csv's evaluator column wins over run.json's metric_evaluators
    assert metric_mark(info, "pathology_auc", "rad-dino").evaluator == "rad-dino"
    # Norberg metrics: by the landmark detector when the run has one, else unmarked
    assert metric_mark(info, "norberg_mae") is None
    info["norberg"] = {"detector": "/models/hips-v2/model.pt", "detector_sha256": "7" * 64}
    mark = metric_mark(info, "norberg_mae:left")
    assert mark.tag == "landmark detector hips-v2/model.pt, pinned by its model.json"
    assert mark.weights_sha256 == "7" * 64


def test_raddino_metrics_have_labels_and_a_table() -> None:
    distribution = {key: metrics for key, _, metrics in RESULT_TABLES}["distribution"]
    expected = {
        "fd_raddino": ("FD RadDino", "↓"),
        "kid_raddino": ("KID RadDino", "↓"),
        "precision_raddino": ("precision RadDino", "↑"),
        "recall_raddino": ("recall RadDino", "↑"),
        "density_raddino": ("density RadDino", "↑"),
        "coverage_raddino": ("coverage RadDino", "↑"),
    }
    for name, (label, arrow) in expected.items():
        assert name in distribution
        column = MetricColumn(name, catalogue.spec(name).higher_is_better, "")
        assert (column.label, column.arrow) == (label, arrow)


def test_privacy_metrics_name_their_embedding_the_reid_file_or_nothing():
    """The privacy embedding is described in run.json "privacy" (not "evaluation"); pixel distances
    have no network; re-ID scores come from the file pinned in the config."""
    from reports.provenance import metric_mark

    info = {
        "privacy": {
            "features": "rad-dino",
            "reid_model": "ab" * 32,
            "features_plan": {"name": "rad-dino", "weights_sha256": "cd" * 32, "pin": "release"},
        }
    }
    for metric in ("memorised_fraction", "nn_distance", "authenticity", "privacy_auc", "beta_recall"):
        for named in ("", "rad-dino"):  # summary.csv names it (current runs) or not (older ones)
            mark = metric_mark(info, metric, named)
            assert mark is not None
            assert (mark.evaluator, mark.weights_sha256, mark.pin) == ("rad-dino", "cd" * 32, "release")
            assert mark.tag == "rad-dino, pinned"
    assert metric_mark(info, "nn_distance_pixel", "") is None
    reid = metric_mark(info, "reid_score_max", "re-ID model reid.ts")
    assert reid is not None
    assert (reid.evaluator, reid.weights_sha256, reid.pin) == ("re-ID model reid.ts", "ab" * 32, "config")
