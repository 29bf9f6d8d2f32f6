"""The "Per-case distributions" section: one box plot per metric of the per-case values."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from reports.run import NORBERG_METRICS, READER_PREFIX, MetricColumn, ModelRow, RunFiles, model_colours
from reports.sections.base import PageContext, Section
from reports.sections.common import HOVER_LABELS_MAX, escape, figure_div, typed_array

# Up to this many cases per model every point is drawn; above it only outliers, to keep the page light.
ALL_POINTS_MAX = 100


def render_distributions(run: RunFiles, models: Sequence[ModelRow], metrics: Sequence[MetricColumn]) -> str:
    """One box plot per metric of the per-case values (samples of a case averaged first)."""
    if run.per_sample.empty:
        return "<p>No per-sample values were recorded.</p>"
    per_case = run.per_sample.groupby(["metric", "model", "case_id"], sort=False, observed=True)[
        "value"
    ].mean()
    groups = {key: grp for key, grp in per_case.groupby(level=["metric", "model"], sort=False)}
    colours = model_colours(models)
    parts = []
    for i, metric in enumerate(metrics):
        traces = []
        dropped = []
        points = sum(len(groups[(metric.name, m.name)]) for m in models if (metric.name, m.name) in groups)
        for model in models:
            grp = groups.get((metric.name, model.name))
            if grp is None:
                continue
            values = grp.to_numpy(dtype=np.float64)
            finite = np.isfinite(values)
            n_inf, n_nan = int(np.isinf(values).sum()), int(np.isnan(values).sum())
            if n_inf or n_nan:
                what = ", ".join(
                    t for t in (f"{n_inf} infinite" if n_inf else "", f"{n_nan} NaN" if n_nan else "") if t
                )
                dropped.append(f"{model.name}: {what}")
            if not finite.any():
                continue
            n = int(finite.sum())
            trace = {
                "type": "box",
                "y": typed_array(values[finite], "f4"),
                "name": html.escape(model.name),
                "boxpoints": "all" if n <= ALL_POINTS_MAX else "outliers",
                "jitter": 0.35,
                "pointpos": 0,
                "boxmean": True,
                "marker": {"color": colours[model.name], "size": 4, "opacity": 0.7},
                "line": {"color": colours[model.name], "width": 1.5},
                "fillcolor": "rgba(0,0,0,0)",
            }
            if points <= HOVER_LABELS_MAX:
                case_ids = grp.index.get_level_values("case_id").to_numpy()[finite]
                trace["text"] = [html.escape(c) for c in case_ids]
                trace["hovertemplate"] = "case %{text}<br>%{y:.4g}<extra>%{fullData.name}</extra>"
            traces.append(trace)
        if not traces:
            parts.append(
                f'<figure class="plot empty" data-metric="{escape(metric.name)}"><p class="small">'
                f"{escape(metric.label)}: no finite per-case values to draw.</p></figure>"
            )
            continue
        axis_title = metric.label + (f" ({metric.unit})" if metric.unit else "")
        div = figure_div(
            traces,
            f"dist-{i}",
            height=340,
            margin={"l": 70, "r": 20, "t": 40, "b": 70},
            showlegend=False,
            title={"text": html.escape(f"{metric.label} {metric.arrow}"), "x": 0.01, "font": {"size": 15}},
            yaxis={"title": {"text": html.escape(axis_title)}, "gridcolor": "#e5e5e5", "zeroline": False},
            xaxis={"tickangle": 0},
        )
        note = f'<p class="small">Not drawn: {escape("; ".join(dropped))}.</p>' if dropped else ""
        parts.append(f'<figure class="plot" data-metric="{escape(metric.name)}">{div}{note}</figure>')
    return '<div class="plots">' + "".join(parts) + "</div>"


def _unplotted_note(table_metrics: Sequence[MetricColumn], plot_metrics: Sequence[MetricColumn]) -> str:
    plotted = {m.name for m in plot_metrics}
    missing = [m.label for m in table_metrics if m.name not in plotted and ":" not in m.name]
    if not missing:
        return ""
    return (
        f" No plot for {escape(', '.join(missing))}: no per-case values "
        "(distribution metrics have one value per model)."
    )


def render(ctx: PageContext) -> str:
    # Reader scores and Norberg agreement are plotted in their own sections.
    unplotted = [
        m for m in ctx.table_metrics if not m.name.startswith(READER_PREFIX) and m.base not in NORBERG_METRICS
    ]
    return (
        '\n<p class="small">One point per case (samples of a case averaged); the box spans the quartiles, '
        "the solid line is the\nmedian and the dashed line the mean."
        f"{_unplotted_note(unplotted, ctx.plot_metrics)}</p>\n"
        f"{render_distributions(ctx.run, ctx.models, ctx.plot_metrics)}\n"
    )


SECTION = Section("distributions", "Distributions", "Per-case distributions", render)
