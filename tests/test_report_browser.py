"""report.html in Debian's headless Chromium: rendered through ``xray-audit report`` from a synthetic
run with a rated reader study, then opened from disk with every non-local request blocked.

Checked generically, so that sections added to the report are covered without touching this file:
no JavaScript error or console error, every plotly figure drew its SVG (or canvas) with traces,
every <img> decoded, and nothing was fetched from anywhere but file: and data: URLs. A full-page
screenshot goes to the test's tmp dir and, when ``XRAY_AUDIT_SCREENSHOT_DIR`` is set, there too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from audit import rundir
from tests.reader_study_fixtures import rated_study
from tests.test_report_html import make_run

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own download cannot work offline
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT_ENV = "XRAY_AUDIT_SCREENSHOT_DIR"
N_CASES = 8
READERS = ("r1", "r2", "r3", "r4")
TIMEOUT_MS = 20_000
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")

# Per figure: whether plotly finished it (it sets _fullLayout), its traces, the drawn trace groups
# (every plotly trace type draws into a g.trace) or WebGL canvases, and its on-screen size.
PLOT_STATE_JS = """() => [...document.querySelectorAll('.plotly-graph-div')].map(gd => {
  const svg = gd.querySelector('svg.main-svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {
    id: gd.id,
    laid_out: !!gd._fullLayout,
    traces: Array.isArray(gd.data) ? gd.data.length : 0,
    drawn: gd.querySelectorAll('svg.main-svg g.trace').length + gd.querySelectorAll('canvas').length,
    width: box.width,
    height: box.height,
  };
})"""
PLOTS_READY_JS = """() => [...document.querySelectorAll('.plotly-graph-div')]
  .every(gd => gd._fullLayout && gd.querySelector('svg.main-svg'))"""
IMAGE_STATE_JS = """() => [...document.images].map(i => ({
  alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
  scheme: i.currentSrc.slice(0, i.currentSrc.indexOf(':') + 1),
}))"""
IMAGES_READY_JS = "() => [...document.images].every(i => i.complete)"


@dataclasses.dataclass(frozen=True)
class PageVisit:
    html: str  # the file's source
    page_errors: list[str]
    console_errors: list[str]
    requests: list[str]
    blocked: list[str]
    plots: list[dict[str, Any]]
    images: list[dict[str, Any]]
    screenshot: Path


def _rate_study(run: Path, root: Path, rng: np.random.Generator) -> Path:
    # make_run (audit.fake_run) records the samples' real sha256s, which the study checks.
    return rated_study(run, root / "study", readers=READERS, per_model=3, rng=rng)


def _add_group_rows(run: Path) -> None:
    """Summary rows for groups "group=a"/"group=b" (as [metrics].group_by writes them), so the
    report's per-group section is drawn too."""
    summary = pd.read_csv(run / rundir.SUMMARY)
    summary["group"] = ""
    extra = []
    for group, factor in (("a", 0.9), ("b", 0.95)):
        rows = summary.assign(group=f"group={group}", n=N_CASES // 2)
        rows[["value", "ci_low", "ci_high"]] *= factor
        extra.append(rows)
    pd.concat([summary, *extra], ignore_index=True).to_csv(run / rundir.SUMMARY, index=False)


def open_report(report: Path, screenshot: Path) -> PageVisit:
    """Open ``report`` from disk in Chromium, every request that is not local blocked, and record
    what the page did."""
    from playwright import sync_api

    page_errors: list[str] = []
    console_errors: list[str] = []
    requests: list[str] = []
    blocked: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(LOCAL_SCHEMES):
            r.continue_()
        else:  # the report must work offline: nothing may be fetched
            blocked.append(r.request.url)
            r.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", route)
            page = context.new_page()
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("request", lambda req: requests.append(req.url))
            page.goto(report.as_uri(), wait_until="load")
            for ready in (PLOTS_READY_JS, IMAGES_READY_JS):
                try:
                    page.wait_for_function(ready, timeout=TIMEOUT_MS)
                except sync_api.TimeoutError:
                    pass  # the per-plot / per-image state below says which one is missing
            plots = page.evaluate(PLOT_STATE_JS)
            images = page.evaluate(IMAGE_STATE_JS)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return PageVisit(
        report.read_text(encoding="utf-8"),
        page_errors,
        console_errors,
        requests,
        blocked,
        plots,
        images,
        screenshot,
    )


@pytest.fixture(scope="module")
def visit(tmp_path_factory: pytest.TempPathFactory) -> PageVisit:
    pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install playwright")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"needs a system Chromium at {CHROMIUM} (apt-get install chromium)")
    from audit.cli import main

    root = tmp_path_factory.mktemp("browser")
    run = make_run(root, n_cases=N_CASES, n_failures=2)
    _add_group_rows(run)
    study = _rate_study(run, root, np.random.default_rng(0))
    assert main(["report", str(run), "--reader-study", str(study), "--format", "html,csv"]) == 0
    result = open_report(run / rundir.REPORT_HTML, root / "report.png")
    target = os.environ.get(SCREENSHOT_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.screenshot, Path(target) / "report.png")
    return result


def _outside_plotly_js(page: str) -> str:
    return re.sub(r'<script id="plotly-js"[^>]*>.*?</script>', "", page, count=1, flags=re.DOTALL)


def test_no_javascript_errors(visit: PageVisit) -> None:
    assert visit.page_errors == []
    assert visit.console_errors == []


def test_every_plot_rendered(visit: PageVisit) -> None:
    in_source = len(re.findall(r'class="plotly-graph-div"', _outside_plotly_js(visit.html)))
    # A distribution plot per per-sample metric (make_run has five), plus at least the paired
    # differences and the reader scores.
    assert in_source >= 5 + 2
    assert len(visit.plots) == in_source
    not_drawn = [p for p in visit.plots if not (p["laid_out"] and p["traces"] > 0 and p["drawn"] > 0)]
    assert not_drawn == []
    assert all(p["width"] > 0 and p["height"] > 0 for p in visit.plots), visit.plots


def test_every_image_loaded(visit: PageVisit) -> None:
    in_source = len(re.findall(r"<img\b", _outside_plotly_js(visit.html)))
    assert in_source >= 2 + 5  # reference, condition and five models for at least one case
    assert len(visit.images) == in_source
    broken = [i for i in visit.images if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert broken == []
    assert {i["scheme"] for i in visit.images} == {"data:"}  # embedded, not linked


def test_offline(visit: PageVisit) -> None:
    assert visit.blocked == []
    assert [u for u in visit.requests if not u.startswith(LOCAL_SCHEMES)] == []
    assert visit.requests[0].startswith("file:")


def test_screenshot_saved(visit: PageVisit) -> None:
    from PIL import Image

    with Image.open(visit.screenshot) as shot:
        width, height = shot.size
        pixels = np.asarray(shot.convert("L"))
    assert width == 1280 and height > 900  # full page, longer than the viewport
    assert pixels.std() > 10  # not a blank page
    target = os.environ.get(SCREENSHOT_ENV)
    if target:
        assert (Path(target) / "report.png").stat().st_size == visit.screenshot.stat().st_size
