"""The "Metric validity" section: Spearman correlations of the automatic metrics with the reader
scores, per image and per model, the Fréchet-distance question and a scatter per metric."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from reports.format import fixed, format_p, int_or, precise, to_float
from reports.run import FRECHET_METRICS, METRIC_LABELS, MetricColumn
from reports.sections.base import PageContext, Section
from reports.sections.common import HOVER_LABELS_MAX, escape, figure_div, json_floats, metric_title

CRITERION_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")
SCATTER_EXTRA = "<extra>%{fullData.name}</extra>"


def _validity_cell(rho: Any, p: Any, n: Any, col: str, criterion: str, unit: str) -> str:
    r = to_float(rho)
    count = int_or(n, "0")
    detail = f"n={count} {unit}" + (f" · p={format_p(p)}" if math.isfinite(r) else "")
    title = (
        f"Spearman ρ {precise(r)}, p {precise(to_float(p))}, {count} {unit}"
        if math.isfinite(r)
        else f"no correlation: {count} {unit} (ρ needs at least 3 and no constant side)"
    )
    return (
        f'<td data-criterion="{escape(criterion)}" data-col="{col}" title="{escape(title)}">'
        f'<span class="v">{escape(fixed(r))}</span><span class="n">{escape(detail)}</span></td>'
    )


def _frechet_sentence(validity: pd.DataFrame, labels: Mapping[str, MetricColumn]) -> str:
    """The XReal claim (FID does not track realism), answered on this study's models."""
    lines = []
    for name in FRECHET_METRICS:
        rows = validity[validity["metric"] == name]
        if rows.empty:
            continue
        label = labels[name].label if name in labels else METRIC_LABELS[name]
        parts = []
        for r in rows.itertuples(index=False):
            rho = to_float(r.rho_model)
            if not math.isfinite(rho):
                parts.append(f"{r.criterion}: not enough models ({int(r.n_model)})")
                continue
            tracks = "tracks" if rho <= -0.5 else "weakly tracks" if rho < 0 else "does not track"
            parts.append(
                f"{r.criterion}: ρ = {fixed(rho)} over {int(r.n_model)} models "
                f"(p {format_p(r.p_model)}), {tracks}"
            )
        lines.append(
            f"<li><b>{escape(label)}</b> vs reader scores per model: {escape('; '.join(parts))}.</li>"
        )
    if not lines:
        return ""
    return (
        '<div class="callout frechet-validity"><b>Does the Fréchet distance track what readers see?</b> '
        "The XReal paper argues that FID does not track realism. Lower is better for FID/FXD, so a metric "
        "that tracks the readers correlates <i>negatively</i> with their scores; with a handful of models "
        "the correlation is fragile (read it with its n and p)."
        f'<ul class="reasons">{"".join(lines)}</ul></div>'
    )


def _validity_scatter(points: pd.DataFrame, metrics: Sequence[MetricColumn], validity: pd.DataFrame) -> str:
    """One figure, a dropdown picks the metric: per image (per-sample metrics) or per model (set metrics)."""
    names = [m.name for m in metrics if m.name in set(points["metric"])]
    names += sorted(set(points["metric"]) - set(names))
    names = [n for n in names if ":" not in n]  # per-class pathology stays in the table
    if not names:
        return ""
    labels = {m.name: m for m in metrics}
    criteria = sorted(set(points["criterion"]))
    colours = {c: CRITERION_COLOURS[i % len(CRITERION_COLOURS)] for i, c in enumerate(criteria)}
    rho = validity.set_index(["metric", "criterion"])
    with_labels = len(points) <= HOVER_LABELS_MAX
    groups = dict(iter(points.groupby(["metric", "criterion"], sort=False)))
    traces: list[dict[str, Any]] = []
    buttons = []
    spans = []
    for name in names:
        start = len(traces)
        level = "image"
        for criterion in criteria:
            g = groups.get((name, criterion))
            if g is None or g.empty:
                continue
            level = str(g["level"].iloc[0])  # one level per metric (see reader_stats.correlate_points)
            key = (name, criterion)
            column = "rho_model" if level == "model" else "rho_image"
            r = to_float(rho.at[key, column]) if key in rho.index else math.nan
            trace: dict[str, Any] = {
                "type": "scatter",
                "x": json_floats(g["value"]),
                "y": json_floats(g["score"]),
                "name": html.escape(f"{criterion} (ρ {fixed(r, 2)})"),
                "mode": "markers+text" if level == "model" else "markers",
                "marker": {
                    "color": colours[criterion],
                    "size": 9 if level == "model" else 6,
                    "opacity": 0.75,
                },
                "visible": not spans,
            }
            if level == "model":
                trace["text"] = [html.escape(m) for m in g["model"]]
                trace["textposition"] = "top center"
                trace["hovertemplate"] = "%{text}: %{x:.4g}, mean score %{y:.3g}" + SCATTER_EXTRA
            elif with_labels:
                trace["text"] = [
                    html.escape(f"{m} · {c} · {s}")
                    for m, c, s in zip(g["model"], g["case_id"], g["sample"], strict=True)
                ]
                trace["hovertemplate"] = "%{text}<br>%{x:.4g}, mean score %{y:.3g}" + SCATTER_EXTRA
            traces.append(trace)
        column = labels.get(name, MetricColumn(name, None, ""))
        per = "per model (one value per model)" if level == "model" else "per image"
        spans.append((name, start, len(traces), f"{metric_title(column)} vs reader score, {per}", column))
    n_traces = len(traces)
    axes = []
    for _, start, stop, title, column in spans:
        visible = [start <= k < stop for k in range(n_traces)]
        axes.append(html.escape(column.label + (f" ({column.unit})" if column.unit else "")))
        buttons.append(
            {
                "label": html.escape(column.label),
                "method": "update",
                "args": [
                    {"visible": visible},
                    {"title.text": html.escape(title), "xaxis.title.text": axes[-1]},
                ],
            }
        )
    first = spans[0]
    div = figure_div(
        traces,
        "validity-scatter",
        height=460,
        margin={"l": 70, "r": 20, "t": 80, "b": 60},
        title={"text": html.escape(first[3]), "x": 0.01, "y": 0.97, "font": {"size": 15}},
        xaxis={"title": {"text": axes[0]}, "gridcolor": "#e5e5e5", "zeroline": False},
        yaxis={"title": {"text": "mean reader score (1–5)"}, "gridcolor": "#e5e5e5", "range": [0.8, 5.2]},
        legend={"title": {"text": "criterion"}},
        updatemenus=[
            {
                "buttons": buttons,
                "direction": "down",
                "x": 1.0,
                "xanchor": "right",
                "y": 1.16,
                "yanchor": "top",
                "showactive": True,
            }
        ],
    )
    return f'<figure class="plot validity-scatter" data-metrics="{escape(" ".join(names))}">{div}</figure>'


def render_validity(
    validity: pd.DataFrame,
    points: pd.DataFrame,
    metrics: Sequence[MetricColumn],
    per_sample_metrics: set[str],
) -> str:
    if validity.empty:
        return (
            "<p>No metric could be paired with reader scores: the rated images have no per-sample "
            "metrics and the summary no set-level metric of the rated models.</p>"
        )
    labels = {m.name: m for m in metrics}
    rank = {m.name: i for i, m in enumerate(metrics)}
    criteria = sorted(set(validity["criterion"]))
    index = validity.set_index(["metric", "criterion"])
    names = sorted(
        set(validity["metric"]), key=lambda n: (n not in per_sample_metrics, rank.get(n, len(rank)), n)
    )
    main = [n for n in names if ":" not in n]
    per_class = [n for n in names if ":" in n]

    def table(rows: Sequence[str]) -> str:
        head = '<th rowspan="2">metric</th><th rowspan="2">values</th>' + "".join(
            f'<th colspan="2" data-criterion="{escape(c)}">reader {escape(c)}</th>' for c in criteria
        )
        sub = "".join("<th>ρ per image</th><th>ρ per model</th>" for _ in criteria)
        body = []
        for name in rows:
            column = labels.get(name, MetricColumn(name, None, ""))
            kind = "per sample" if name in per_sample_metrics else "per model (summary.csv)"
            cells = [f'<th>{escape(metric_title(column))}</th><td class="sub">{kind}</td>']
            for c in criteria:
                if (name, c) not in index.index:
                    cells.append(
                        f'<td class="na" data-criterion="{escape(c)}" data-col="rho_image">—</td>' * 1
                    )
                    cells.append(f'<td class="na" data-criterion="{escape(c)}" data-col="rho_model">—</td>')
                    continue
                r = index.loc[(name, c)]
                if name in per_sample_metrics:
                    cells.append(
                        _validity_cell(r["rho_image"], r["p_image"], r["n_image"], "rho_image", c, "images")
                    )
                else:
                    cells.append(
                        f'<td class="na" data-criterion="{escape(c)}" data-col="rho_image" '
                        'title="no per-image values">—</td>'
                    )
                cells.append(
                    _validity_cell(r["rho_model"], r["p_model"], r["n_model"], "rho_model", c, "models")
                )
            body.append(f'<tr data-metric="{escape(name)}">{"".join(cells)}</tr>')
        return (
            '<div class="table-wrap"><table class="plain stats validity"><thead><tr>'
            + head
            + "</tr><tr>"
            + sub
            + "</tr></thead><tbody>"
            + "".join(body)
            + "</tbody></table></div>"
        )

    out = (
        '<p class="small">Spearman ρ of each automatic metric with the reader scores. Per image: the metric '
        "of each rated image against its mean first-read score over readers. Per model: the model means "
        "of both over those images; set-level metrics (FID, FXD, KID, precision/recall, pathology AUC/F1) "
        "have one value per model, which is set against the model's mean score over all its rated images. "
        "For a ↓ metric a negative ρ means the metric agrees with the readers. ρ is — for fewer than 3 "
        "points or a constant side. Hover a cell for the exact ρ and p.</p>"
        + _frechet_sentence(validity, labels)
        + table(main)
    )
    if per_class:
        out += (
            '<details class="validity-per-class"><summary>Per-class pathology metrics '
            f'<span class="sub">({len(per_class)})</span></summary>{table(per_class)}</details>'
        )
    return out + _validity_scatter(points, metrics, validity)


def render(ctx: PageContext) -> str:
    reader = ctx.reader
    if reader is None:
        return ""
    return render_validity(reader.validity, reader.points, ctx.metrics, ctx.per_sample_metrics)


SECTION = Section("metric-validity", "Metric validity", "Metric validity", render)
