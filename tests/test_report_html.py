"""report.html: built from a synthetic run directory written here (no runner, no torch)."""

from __future__ import annotations

import base64
import html
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.offline
import pytest
from PIL import Image

from audit import rundir
from audit.fake_run import FakeModel, FakeRun, summary_frame, write_fake_run
from audit.images import write_png
from reports.format import format_estimate
from reports.html import render_html_report, write_html_report
from reports.sections.images import choose_grid_cases

REPO = Path(__file__).resolve().parents[1]
METRICS = {"ssim": True, "psnr": True, "mse": False, "mae": False, "overlap_f1": True}
PAIRED = ("ssim", "psnr", "mse", "mae")
IMG_SHAPE = (48, 64)  # below the thumbnail size, so the grid embeds the pixels unchanged


# Hand-picked summary: gen_b best on ssim/psnr, gen_a best on mse/mae; blur-3 worse than blur-1 except
# psnr, which "improves" with damage so the sanity check must flag it.
ESTIMATES = {
    "gen_a": {
        "ssim": (0.912, 0.905, 0.918),
        "psnr": (28.41, 27.93, 28.96),
        "mse": (93.2, 88.1, 99.0),
        "mae": (6.1, 5.8, 6.5),
        "overlap_f1": (0.81, 0.78, 0.84),
    },
    "gen_b": {
        "ssim": (0.951, 0.944, 0.957),
        "psnr": (30.12, 29.5, 30.7),
        "mse": (120.5, 110.0, 131.0),
        "mae": (7.9, 7.5, 8.3),
        "overlap_f1": (0.77, 0.74, 0.8),
    },
    "blur-1": {
        "ssim": (0.97, 0.96, 0.98),
        "psnr": (25.0, 24.5, 25.5),
        "mse": (140.0, 130.0, 150.0),
        "mae": (9.0, 8.5, 9.5),
        "overlap_f1": (0.9, 0.88, 0.92),
    },
    "blur-3": {
        "ssim": (0.80, 0.78, 0.82),
        "psnr": (26.0, 25.5, 26.5),
        "mse": (300.0, 280.0, 320.0),
        "mae": (15.0, 14.0, 16.0),
        "overlap_f1": (0.7, 0.68, 0.72),
    },
    "real": {"overlap_f1": (0.95, 0.93, 0.97), "ssim": (float("nan"),) * 3},
}


def make_run(
    root: Path,
    n_cases: int = 6,
    extra_model: str | None = None,
    pixel_range: float = 255.0,
    groups: bool = True,
    n_failures: int = 0,
) -> Path:
    """A finished run directory with every file the report reads, summary values chosen by hand."""
    # real listed first on purpose: the report must still put it last.
    models = [
        FakeModel("real", "real"),
        FakeModel("gen_a", "folder", {"template": "/x/{case_id}.png"}),
        FakeModel("gen_b", "folder", {"template": "/y/{case_id}.png"}),
        FakeModel("blur-1", "degrade", {"degradation": "blur", "level": 1.0}),
        FakeModel("blur-3", "degrade", {"degradation": "blur", "level": 3.0}),
    ]
    estimates = dict(ESTIMATES)
    if extra_model is not None:
        models.insert(1, FakeModel(extra_model, "folder", {"template": "/z/{case_id}.png"}))
        estimates[extra_model] = {"ssim": (0.5, 0.4, 0.6)}
    mask = np.zeros((*IMG_SHAPE, 3), dtype=bool)
    mask[8:40, 4:28, 0] = True  # "left lung"
    mask[20:40, 30:44, 1] = True  # "heart"
    columns: dict[str, list] = {"prompt": [f"frontal chest x-ray, case {i}" for i in range(n_cases)]}
    if groups:
        columns["group"] = ["ab"[i % 2] for i in range(n_cases)]
    spec = FakeRun(
        models=tuple(models),
        case_ids=tuple(f"c{i:03d}" for i in range(n_cases)),
        image_shape=IMG_SHAPE,
        masks=(mask,) * n_cases,
        columns=columns,
        metrics=METRICS,
        real_metrics=tuple(m for m in METRICS if m not in PAIRED),
        summary=summary_frame(estimates, n_cases, METRICS),
        failures={"gen_a": n_failures} if n_failures else {},
        sample_path="data/{model}/{case_id}.png",
        config={
            "metrics": {
                "pixel": list(METRICS),
                "pixel_range": pixel_range,
                "resize": "none",
                "overlap_threshold": 0.5,
                "bootstrap_resamples": 1000,
                "confidence": 0.95,
            }
        },
    )
    return write_fake_run(root, spec)


def _outside_plotly_js(page: str) -> str:
    """The page without the inlined plotly.js bundle (which has URLs in its own code)."""
    return re.sub(r'<script id="plotly-js"[^>]*>.*?</script>', "", page, count=1, flags=re.DOTALL)


def _summary_rows(page: str) -> list[str]:
    table = re.search(r'<table class="summary">.*?</table>', page, flags=re.DOTALL).group(0)
    return re.findall(r'<tr class="[a-z]+" data-model="([^"]*)">', table)


def _row(page: str, model: str) -> str:
    table = re.search(r'<table class="summary">.*?</table>', page, flags=re.DOTALL).group(0)
    return re.search(
        rf'<tr class="[a-z]+" data-model="{re.escape(model)}">.*?</tr>', table, flags=re.DOTALL
    ).group(0)


def _cell(page: str, model: str, metric_index: int) -> str:
    return re.findall(r"<td.*?</td>", _row(page, model), flags=re.DOTALL)[metric_index]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = make_run(tmp_path_factory.mktemp("report"))
    out = write_html_report(run, grid_cases=4)
    return out, out.read_text(encoding="utf-8")


def test_written_atomically_to_default_path(report: tuple[Path, str]) -> None:
    out, page = report
    assert out == out.parent / rundir.REPORT_HTML
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not list(out.parent.glob(".tmp-*"))


def test_models_metrics_and_order(report: tuple[Path, str]) -> None:
    _, page = report
    assert _summary_rows(page) == ["gen_a", "gen_b", "blur-1", "blur-3", "real"]
    # metric columns in the documented order, each with its direction arrow
    heads = re.findall(r'<th data-metric="([^"]+)"[^>]*>(.*?)</th>', page, flags=re.DOTALL)
    assert [h[0] for h in heads] == ["ssim", "psnr", "mse", "mae", "overlap_f1"]
    arrows = {name: ("↑" if "↑" in body else "↓" if "↓" in body else "") for name, body in heads}
    assert arrows == {m: ("↑" if hib else "↓") for m, hib in METRICS.items()}


def test_ci_text_n_and_best(report: tuple[Path, str]) -> None:
    _, page = report
    ssim_a = _cell(page, "gen_a", 0)
    assert re.search(r'<span class="v">0\.912</span> <span class="ci">\[0\.905, 0\.918\]</span>', ssim_a)
    assert "n=6" in ssim_a
    # PSNR keeps 3 significant digits and the CI shares its decimals
    assert '<span class="v">28.4</span> <span class="ci">[27.9, 29.0]</span>' in _cell(page, "gen_a", 1)
    # best: highest ssim among generators; the blur-1 baseline is higher but is no contender
    assert "<strong>0.951</strong>" in _cell(page, "gen_b", 0)
    assert "<strong>" not in _cell(page, "gen_a", 0) + _row(page, "blur-1")
    assert "<strong>93.2</strong>" in _cell(page, "gen_a", 2)  # lowest mse wins
    assert "<strong>" not in _cell(page, "gen_b", 2)
    # real: overlap computed, paired metrics shown as a dash (NaN row and absent row alike)
    assert "—" in _cell(page, "real", 0) and "—" in _cell(page, "real", 2)
    assert '<span class="v">0.950</span>' in _cell(page, "real", 4)
    assert "<strong>" not in _row(page, "real")  # real never counts as best


def test_units_and_notes(report: tuple[Path, str]) -> None:
    _, page = report
    mse_head = re.search(r'<th data-metric="mse"[^>]*>(.*?)</th>', page, flags=re.DOTALL).group(1)
    assert "intensity² (range 255)" in mse_head
    assert "pixel_range = 255" in page
    assert "Sanity baselines" in page and "not generative models" in page
    assert page.count('class="badge baseline"') >= 2
    # blur-3 has a higher PSNR than blur-1 in the fixture: the monotonicity check must say so
    assert "⚠ blur: PSNR improves from level 1 to 3" in page
    assert "✓ blur: SSIM, MSE, MAE, overlap F1 worsen with the level" in page
    assert "upper bound" in page


def test_plotly_inline_once_and_one_plot_per_metric(report: tuple[Path, str]) -> None:
    _, page = report
    js = plotly.offline.get_plotlyjs()
    assert page.count(js[:2000]) == 1
    # one distribution plot and one paired-difference forest plot per per-sample metric
    assert page.count('class="plotly-graph-div"') == 2 * len(METRICS)
    assert re.findall(r'<figure class="plot" data-metric="([^"]+)"', page) == list(METRICS)
    assert re.findall(r'<figure class="plot forest" data-metric="([^"]+)"', page) == list(METRICS)


def test_no_external_resources(report: tuple[Path, str]) -> None:
    _, page = report
    rest = _outside_plotly_js(page)
    assert len(rest) < len(page) - 1_000_000  # the bundle really was removed
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", rest, flags=re.IGNORECASE)
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.IGNORECASE)
    assert not re.search(r"<link\b", page, flags=re.IGNORECASE)
    assert "http://" not in rest and "https://" not in rest


def test_image_grid(report: tuple[Path, str]) -> None:
    out, page = report
    n_models = 5
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', _outside_plotly_js(page))
    assert len(uris) == 4 * (2 + n_models)
    rows = re.findall(r'<tr data-case="([^"]+)">', page)
    # groups a (even) and b (odd) alternate; within a group by case id
    assert rows == ["c000", "c001", "c002", "c003"]
    # the first image is c000's reference, embedded pixel-exact (it is smaller than a thumbnail)
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[0]))))
    original = np.asarray(Image.open(out.parent.parent / "data" / "c000.png"))
    np.testing.assert_array_equal(first, original)
    # the condition cell is an RGB overlay: lung pixels red-tinted, background grey
    cond = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[1])))).astype(int)
    assert cond.shape == (*IMG_SHAPE, 3)
    assert (cond[20, 10, 0] > cond[20, 10, 1]) and (cond[20, 10, 0] > cond[20, 10, 2])
    assert cond[2, 60, 0] == cond[2, 60, 1] == cond[2, 60, 2]
    assert "R lungs · G heart · B aorta" in page


def test_header_failures_and_provenance(tmp_path: Path) -> None:
    run = make_run(tmp_path, n_failures=60)
    page = render_html_report(run, grid_cases=2)
    assert "Synthetic study" in page
    assert "abcdef012345" in page  # short config hash
    assert "2025-01-02 03:05:30" in page
    assert "failures <b>60</b>" in page
    failures = re.search(r'<table class="plain failures">.*?</table>', page, flags=re.DOTALL).group(0)
    assert failures.count("<tr>") == 1 + 50
    assert "… and 10 more in failures.csv" in page
    assert "boom 49" in failures and "boom 50" not in failures
    # provenance: config text (escaped), versions, timings
    assert "[[models]]" in page and "&quot;Synthetic study&quot;" in page
    assert np.__version__ in page
    assert "1 min 13 s" in page  # 73.4 s


def test_missing_sample_is_a_placeholder(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    samples = pd.read_parquet(run / rundir.SAMPLES)
    missing = samples[(samples["model"] == "gen_b") & (samples["case_id"] == "c000")]["path"].iloc[0]
    Path(missing).unlink()
    Path(samples[(samples["model"] == "gen_a") & (samples["case_id"] == "c001")]["path"].iloc[0]).write_bytes(
        b"not a png"
    )
    page = render_html_report(run, grid_cases=2)
    assert _outside_plotly_js(page).count("data:image/png;base64,") == 2 * (2 + 5) - 2
    assert "file not found: c000.png" in page
    assert "unreadable: cannot read image" in page


def test_model_name_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    run = make_run(tmp_path, extra_model=evil)
    page = render_html_report(run, grid_cases=1)
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert _summary_rows(page)[0] == html.escape(evil)
    # the only scripts: the plotly bundle and one per plot (distributions and forest plots)
    assert len(re.findall(r"<script\b", page)) == 1 + 2 * len(METRICS)


def test_unit_column_and_pixel_range_one(tmp_path: Path) -> None:
    run = make_run(tmp_path, pixel_range=1.0)
    summary = pd.read_csv(run / rundir.SUMMARY)
    summary["unit"] = summary["metric"].map({"psnr": "dB", "mse": "(8-bit)²"}).fillna("")
    summary.to_csv(run / rundir.SUMMARY, index=False)
    page = render_html_report(run, grid_cases=1)
    mse_head = re.search(r'<th data-metric="mse"[^>]*>(.*?)</th>', page, flags=re.DOTALL).group(1)
    assert "(8-bit)²" in mse_head
    mae_head = re.search(r'<th data-metric="mae"[^>]*>(.*?)</th>', page, flags=re.DOTALL).group(1)
    assert "intensity (range 1)" in mae_head  # empty unit cell falls back to the config's pixel range


def test_inf_and_large_thumbnails(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    summary = pd.read_csv(run / rundir.SUMMARY)
    summary.loc[(summary["model"] == "gen_a") & (summary["metric"] == "psnr"), ["value", "ci_high"]] = np.inf
    summary.to_csv(run / rundir.SUMMARY, index=False)
    per_sample = pd.read_parquet(run / rundir.PER_SAMPLE)
    per_sample.loc[(per_sample["model"] == "gen_a") & (per_sample["metric"] == "psnr"), "value"] = np.inf
    per_sample.to_parquet(run / rundir.PER_SAMPLE)
    cases = pd.read_parquet(run / rundir.CASES)
    big = np.tile(np.linspace(0, 1, 400, dtype=np.float32), (300, 1))
    write_png(cases["image"].iloc[0], big)
    page = render_html_report(run, grid_cases=1)
    cell = _cell(page, "gen_a", 1)
    assert '<span class="v"><strong>∞</strong></span> <span class="ci">[27.9, ∞]</span>' in cell  # inf wins
    assert "gen_a: 6 infinite" in page
    first = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', _outside_plotly_js(page)).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(first))).size == (160, 120)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0.912, 0.905, 0.918), ("0.912", "[0.905, 0.918]")),
        ((0.9987, 0.9985, 0.9989), ("0.9987", "[0.9985, 0.9989]")),  # narrow CI earns a digit
        ((28.41, 27.93, 28.96), ("28.4", "[27.9, 29.0]")),
        ((1234.5, 1200.0, 1300.0), ("1234", "[1200, 1300]")),  # round half to even at 0 decimals
        ((float("inf"), 40.0, float("inf")), ("∞", "[40.0, ∞]")),
        ((float("nan"), float("nan"), float("nan")), ("—", "")),
        ((0.5, float("nan"), float("nan")), ("0.500", "")),
        ((-0.25, -0.3, -0.2), ("−0.250", "[−0.300, −0.200]")),
        ((3.2e-6, 1e-6, 5e-6), ("3.2e−06", "[1e−06, 5e−06]")),
    ],
)
def test_format_estimate(args: tuple[float, float, float], expected: tuple[str, str]) -> None:
    assert format_estimate(*args) == expected


def test_grid_cases_spread_over_groups() -> None:
    cases = pd.DataFrame({"case_id": ["d", "a", "c", "b", "e"], "group": ["x", "x", "y", "x", "z"]})
    samples = pd.DataFrame({"model": ["m"] * 5, "case_id": ["a", "b", "c", "d", "e"]})
    assert choose_grid_cases(cases, samples, ["m"], 4) == ["a", "c", "e", "b"]
    # cases with a sample from every model come first
    assert choose_grid_cases(cases.drop(columns="group"), samples[samples.case_id != "a"], ["m"], 2) == [
        "b",
        "c",
    ]
    assert choose_grid_cases(cases, samples, ["m"], 0) == []


def test_not_a_run_dir_and_bad_columns(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / rundir.SUMMARY).unlink()
    with pytest.raises(FileNotFoundError, match="summary.csv"):
        render_html_report(run)
    pd.DataFrame({"model": ["a"], "metric": ["ssim"], "value": [0.5]}).to_csv(
        run / rundir.SUMMARY, index=False
    )
    with pytest.raises(
        ValueError, match=r"summary\.csv: missing column\(s\) ci_low, ci_high, n, higher_is_better"
    ):
        render_html_report(run)


def test_reports_do_not_import_torch() -> None:
    # The statistics modules reports.html imports lazily (reports.statistics, reports.reader_stats) have
    # the same check in their own test files.
    code = "import reports.html, sys; assert 'torch' not in sys.modules, 'reports imported torch'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
