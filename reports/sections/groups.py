"""The "Results by group" section: the results tables per ``[metrics].group_by`` column, one band of
model rows per group value."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from reports.run import FEATURE_METRICS, MetricColumn, RunFiles, TableContext, mapping, split_tables
from reports.sections.base import PageContext, Section
from reports.sections.common import escape
from reports.sections.summary_table import summary_table


def _group_columns(run: RunFiles, groups: Sequence[str]) -> list[tuple[str, list[str]]]:
    """[(column, [group labels])], columns in ``[metrics].group_by`` order, values as the summary has them."""
    policies = mapping(run.info.get("policies"))
    declared = (
        [str(c) for c in policies.get("group_by", []) or []]
        if isinstance(policies.get("group_by"), list)
        else []
    )
    by_column: dict[str, list[str]] = {c: [] for c in declared}
    for g in groups:
        by_column.setdefault(g.split("=", 1)[0], []).append(g)
    return [(c, values) for c, values in by_column.items() if values]


def render_groups(ctx: TableContext, metrics: Sequence[MetricColumn]) -> str:
    """Per ``group_by`` column: the same tables as above, one band of model rows per group value."""
    summary = ctx.run.summary
    groups = [g for g in pd.unique(summary["group"]) if g]
    if not groups:
        return ""
    parts = [
        (
            '<p class="small">The tables above restricted to the cases of each group '
            "(<code>[metrics].group_by</code>); per-class pathology is shown for all cases only. A group "
            "with few cases has wide intervals, and its distribution metrics use only that group's "
            "images.</p>"
        )
    ]
    for column, values in _group_columns(ctx.run, groups):
        present = summary[summary["group"].isin(values)]
        # Set-level rows count generated samples, not cases: leave them out of the case count.
        per_case = present[~present["metric"].isin(FEATURE_METRICS)]
        counts = per_case.groupby("group")["n"].max()
        bands = [
            (
                g,
                f"{column} = {g.split('=', 1)[1] if '=' in g else g}"
                + (f" · {int(counts[g])} cases" if g in counts and not pd.isna(counts[g]) else ""),
            )
            for g in values
        ]
        tables = []
        for table_id, heading, columns in split_tables(metrics):
            columns = [m for m in columns if m.name in set(present["metric"])]
            if columns:
                tables.append(
                    f'<div class="result-table" data-table="{table_id}" data-group-column="{escape(column)}">'
                    f'<h4>{escape(heading)}</h4><div class="table-wrap">'
                    f"{summary_table(ctx, columns, bands)}</div></div>"
                )
        parts.append(
            f'<details class="group-column" data-group-column="{escape(column)}" open>'
            f'<summary>by {escape(column)} <span class="sub">({len(values)} group(s))</span></summary>'
            + "".join(tables)
            + "</details>"
        )
    return "".join(parts)


def render(ctx: PageContext) -> str:
    return render_groups(ctx.tables, ctx.table_metrics)


SECTION = Section("groups", "Results by group", "Results by group", render)
