"""``report.html``: one self-contained page per run (plotly.js inline, images as data URIs).

The page is built only from the files of the run directory (see :mod:`audit.rundir`), so it can be
re-rendered at any time, on a machine without torch, and opened offline. This module holds the page:
what the sections are given (:class:`reports.sections.base.PageContext`, computed once here: the run's
settings, models, metric columns, the model-vs-model tests of :mod:`reports.statistics` and, with a
reader-study export, the reader statistics), the header and its nav, and the order of the sections
(:data:`SECTIONS`, one module each in :mod:`reports.sections`): the results (one table per metric
family, per-class pathology, notes and evaluators), results by ``[metrics].group_by`` group,
model-vs-model tests, Norberg angles, the reader study and metric validity, per-case distributions, an
image grid (reference | condition | each model), failures and provenance. The stylesheet is
:mod:`reports.style`.

Figures are plain plotly trace dicts drawn by the one inlined plotly.js; nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.offline

from audit import rundir
from audit.atomic import write_text
from audit.cases import is_phantom
from reports.format import format_time
from reports.norberg import phantom_callout
from reports.privacy import load_privacy, withheld_samples
from reports.run import (
    EvaluationInfo,
    MetricColumn,
    RunFiles,
    load_run,
    metric_columns,
    order_models,
    reader_score_rows,
)
from reports.sections import (
    distributions,
    failures,
    groups,
    images,
    norberg,
    paired,
    privacy,
    provenance,
    reader_study,
    results,
    validity,
)
from reports.sections.base import PageContext, ReaderInputs, Section
from reports.sections.common import escape
from reports.style import CSS

# The statistics modules pull in scipy.stats: imported when a page is rendered (reader_stats only with
# a reader study), not by `import reports.html`.
if TYPE_CHECKING:
    from reports.reader_stats import ReaderStatistics
    from reports.statistics import PairedTests

# The page's sections in order; the nav links those that rendered.
SECTIONS: tuple[Section, ...] = (
    results.SECTION,
    groups.SECTION,
    paired.SECTION,
    norberg.SECTION,
    privacy.SECTION,
    reader_study.SECTION,
    validity.SECTION,
    distributions.SECTION,
    images.SECTION,
    failures.SECTION,
    provenance.SECTION,
)


def _page_context(
    run: RunFiles,
    grid_cases: int,
    reader_ratings: pd.DataFrame | None,
    reader_stats: ReaderStatistics | None,
    reader_source: str,
    paired_tests: PairedTests | pd.DataFrame | None,
    seed: int | None,
    resamples: int | None,
) -> PageContext:
    """What the sections read (see :func:`render_html_report` for the arguments)."""
    from reports.statistics import PairedTests, run_paired_tests

    settings = run.settings
    seed = settings.seed if seed is None else int(seed)
    resamples = settings.bootstrap_resamples if resamples is None else int(resamples)
    models = tuple(order_models(run))
    evaluation = EvaluationInfo.from_info(run.info)
    metrics = metric_columns(run, settings.pixel_range, evaluation)
    # The tables show what summary.csv aggregated; plots show every metric with per-case values
    # (distribution-level metrics have none: one value per model).
    summarised = set(run.summary["metric"])
    table_metrics = [m for m in metrics if m.name in summarised]
    per_sample_metrics = frozenset(pd.unique(run.per_sample["metric"]))
    plot_metrics = [m for m in metrics if m.name in per_sample_metrics]

    statistics: dict[str, str] = {}
    if paired_tests is None:
        tests = run_paired_tests(run, seed=seed, resamples=resamples)
    elif isinstance(paired_tests, PairedTests):
        tests = paired_tests
    else:
        tests = PairedTests.given(run, paired_tests)
    statistics["paired tests"] = tests.provenance
    results_run = run
    reader = None
    if reader_ratings is not None:
        from reports.reader_stats import correlate_points, run_reader_statistics, validity_points

        if reader_stats is None:
            reader_stats = run_reader_statistics(reader_ratings, settings, seed=seed, resamples=resamples)
            statistics["reader statistics"] = f"seed {seed}, {resamples} bootstrap resamples"
        else:
            statistics["reader statistics"] = "computed by the caller"
        if reader_source:
            statistics["reader study"] = reader_source
        rows = reader_score_rows(reader_stats.scores, models)
        if len(rows):
            # The reader scores join the results as columns; the run's own files stay untouched.
            results_run = dataclasses.replace(run, summary=pd.concat([run.summary, rows], ignore_index=True))
            table_metrics += [MetricColumn(name, True, "1–5") for name in dict.fromkeys(rows["metric"])]
        points = validity_points(run.per_sample, reader_ratings, run.summary)
        reader = ReaderInputs(reader_ratings, reader_stats, points, correlate_points(points), reader_source)
    privacy_files = load_privacy(run.run_dir, run.info)
    return PageContext(
        run=run,
        results_run=results_run,
        models=models,
        evaluation=evaluation,
        metrics=tuple(metrics),
        table_metrics=tuple(table_metrics),
        plot_metrics=tuple(plot_metrics),
        per_sample_metrics=per_sample_metrics,
        tests=tests,
        # A frame read back from a file does not say how it was drawn: the page names the run's settings.
        seed=seed if tests.seed is None else tests.seed,
        resamples=resamples if tests.resamples is None else tests.resamples,
        statistics=statistics,
        reader=reader,
        grid_cases=grid_cases,
        privacy=privacy_files,
        withheld=withheld_samples(models, run.info, privacy_files),
    )


def _header(ctx: PageContext, name: str, nav: list[tuple[str, str]]) -> str:
    """The title, the run's facts, the models and the nav (``nav``: (anchor, text) of each section)."""
    run, settings = ctx.run, ctx.settings
    info = run.info
    n_cases = info.get("n_cases")
    if n_cases is None:
        n_cases = len(run.cases) if run.cases is not None else run.samples["case_id"].nunique()
    n_failures = ctx.n_failures
    config_hash = str(info.get("config_hash") or "")
    date = format_time(info.get("finished") or info.get("started"))
    model_list = ", ".join(
        f'{escape(m.name)} <span class="sub">({escape(m.kind)})</span>' for m in ctx.models
    )
    meta = [
        f"<span>date <b>{escape(date)}</b></span>",
        f'<span title="{escape(config_hash)}">config <b><code>{escape(config_hash[:12] or "—")}</code></b></span>',
        f"<span>cases <b>{escape(n_cases)}</b></span>",
        f"<span>samples/case <b>{escape(settings.samples_per_case if settings.found else '—')}</b></span>",
        f"<span>seed <b>{escape(settings.seed if settings.found else '—')}</b></span>",
        f'<span class="{"bad" if n_failures else ""}">failures <b>{n_failures}</b></span>',
    ]
    nav_html = "".join(f'<a href="#{anchor}">{escape(text)}</a>' for anchor, text in nav)
    return f"""
<header>
<h1>{escape(name)} <span class="sub" style="font-size:14px">xray-audit report</span></h1>
<div class="meta">{"".join(meta)}</div>
<div class="meta"><span>models: {model_list}</span></div>
<nav>{nav_html}</nav>
{phantom_callout() if is_phantom(run.cases) else ""}
</header>
"""


def _plotly_script() -> str:
    js = plotly.offline.get_plotlyjs()
    # An HTML parser ends a <script> at the first "</script", wherever it appears.
    js = js.replace("</script", "<\\/script")
    return f'<script id="plotly-js" type="text/javascript">{js}</script>'


def render_html_report(
    run_dir: str | Path | RunFiles,
    grid_cases: int = 4,
    reader_ratings: pd.DataFrame | None = None,
    *,
    reader_stats: ReaderStatistics | None = None,
    reader_source: str = "",
    paired: PairedTests | pd.DataFrame | None = None,
    seed: int | None = None,
    resamples: int | None = None,
) -> str:
    """The report page for a finished run directory (or its :func:`load_run`), as one self-contained
    HTML string.

    ``reader_ratings`` is the reader-study export (``reader_study.admin.export_frame``); with it the
    page gets the reader scores in the results, a reader-study section and metric validity.
    ``reader_stats`` (``reports.reader_stats.run_reader_statistics`` of those ratings) and ``paired``
    (:func:`reports.statistics.run_paired_tests`, or a frame such as
    :func:`reports.statistics.read_paired_tests` of a paired_tests.csv) are reused when given,
    otherwise computed here with ``seed`` (default ``[study].seed``) and ``resamples`` (default
    ``[metrics].bootstrap_resamples``), the run's settings (:class:`audit.rundir.RunSettings`) as the
    exports use them, so that the numbers match paired_tests.csv. Metrics with non-finite per-sample
    values are left out of the tests with a note (:func:`reports.run.nonfinite_metrics`), whichever way
    the tests came.
    """
    run = run_dir if isinstance(run_dir, RunFiles) else load_run(run_dir)
    ctx = _page_context(run, grid_cases, reader_ratings, reader_stats, reader_source, paired, seed, resamples)
    rendered = [(section, section.render(ctx)) for section in SECTIONS]
    shown = [(section, body) for section, body in rendered if body]
    nav = [(section.anchor, section.link_text(ctx)) for section, _ in shown]
    # A section that does not apply leaves its line empty, as the page always had it.
    sections = "\n".join(
        f'<section id="{section.anchor}"><h2>{section.heading}</h2>{body}</section>' if body else ""
        for section, body in rendered
    )
    name = ctx.settings.name or run.run_dir.resolve().name
    body = _header(ctx, name, nav) + sections + "\n"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(name)} · xray-audit report</title><style>{CSS}</style>"
        f"{_plotly_script()}</head><body>{body}</body></html>\n"
    )


def write_html_report(
    run_dir: str | Path | RunFiles,
    out: str | Path | None = None,
    grid_cases: int = 4,
    reader_ratings: pd.DataFrame | None = None,
    *,
    reader_stats: ReaderStatistics | None = None,
    reader_source: str = "",
    paired: PairedTests | pd.DataFrame | None = None,
    seed: int | None = None,
    resamples: int | None = None,
) -> Path:
    """Render the report (see :func:`render_html_report`) and write it atomically (default
    ``<run_dir>/report.html``)."""
    where = run_dir.run_dir if isinstance(run_dir, RunFiles) else Path(run_dir)
    dest = Path(out) if out is not None else where / rundir.REPORT_HTML
    page = render_html_report(
        run_dir,
        grid_cases=grid_cases,
        reader_ratings=reader_ratings,
        reader_stats=reader_stats,
        reader_source=reader_source,
        paired=paired,
        seed=seed,
        resamples=resamples,
    )
    write_text(dest, page)
    return dest
