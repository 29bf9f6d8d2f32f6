"""The "Failures" section: the first rows of failures.csv."""

from __future__ import annotations

import pandas as pd

from audit import rundir
from reports.sections.base import PageContext, Section
from reports.sections.common import MAX_ERROR_CHARS, escape

FAILURE_ROWS = 50


def render_failures(failures: pd.DataFrame | None, count: int) -> str:
    if not count:
        return "<p>No failures.</p>"
    if failures is None or failures.empty:
        return f"<p>{count} failure(s) recorded in {escape(rundir.RUN_JSON)}, but {escape(rundir.FAILURES)} is missing.</p>"
    shown = failures.head(FAILURE_ROWS)
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{escape(str(getattr(r, c))[:MAX_ERROR_CHARS])}</td>" for c in rundir.FAILURES_COLUMNS)
        + "</tr>"
        for r in shown.itertuples(index=False)
    )
    more = (
        f'<p class="small">… and {len(failures) - FAILURE_ROWS} more in {escape(rundir.FAILURES)}.</p>'
        if len(failures) > FAILURE_ROWS
        else ""
    )
    head = "".join(f"<th>{c}</th>" for c in rundir.FAILURES_COLUMNS)
    return f'<table class="plain failures"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{more}'


def render(ctx: PageContext) -> str:
    return render_failures(ctx.run.failures, ctx.n_failures)


def nav_title(ctx: PageContext) -> str:
    return f"Failures ({ctx.n_failures})"


SECTION = Section("failures", "Failures", "Failures", render, nav_title)
