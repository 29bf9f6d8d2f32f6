"""The "Model-vs-model tests" section: per metric a forest plot of the mean differences and a table of
the paired tests (:mod:`reports.statistics`)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from reports.format import decimals, format_number, format_p, precise, to_float
from reports.run import METRIC_LABELS, MetricColumn
from reports.sections.base import PageContext, Section
from reports.sections.common import cell_text, escape, estimate_text, figure_div, metric_title, stat_table, td

SIGNIFICANCE = 0.05  # Holm-adjusted p below this is drawn as a significant difference
SIGNIFICANT_COLOUR = "#4C72B0"
NOT_SIGNIFICANT_COLOUR = "#9a9aa0"


def _forest_figure(rows: pd.DataFrame, metric: MetricColumn, div_id: str, confidence: float) -> str:
    labels = [html.escape(f"{a} − {b}") for a, b in zip(rows["model_a"], rows["model_b"], strict=True)]
    md = rows["mean_difference"].to_numpy(dtype=np.float64)
    lo = rows["mean_difference_ci_low"].to_numpy(dtype=np.float64)
    hi = rows["mean_difference_ci_high"].to_numpy(dtype=np.float64)
    holm_p = rows["pvalue_holm"].to_numpy(dtype=np.float64)
    significant = holm_p < SIGNIFICANCE
    hover = [
        html.escape(
            f"{a} − {b}: {format_number(d, decimals(d, l, h))} "
            f"[{format_number(l, decimals(d, l, h))}, {format_number(h, decimals(d, l, h))}]; "
            f"Holm p {format_p(p)}; n {int(n)}"
        )
        for a, b, d, l, h, p, n in zip(
            rows["model_a"], rows["model_b"], md, lo, hi, holm_p, rows["n"], strict=True
        )
    ]
    trace = {
        "type": "scatter",
        "x": md.tolist(),
        "y": labels,
        "mode": "markers",
        "marker": {
            "color": np.where(significant, SIGNIFICANT_COLOUR, NOT_SIGNIFICANT_COLOUR).tolist(),
            "size": 7,
            "symbol": "diamond",
        },
        "error_x": {
            "type": "data",
            "symmetric": False,
            "array": np.where(np.isfinite(hi), hi - md, 0.0).tolist(),
            "arrayminus": np.where(np.isfinite(lo), md - lo, 0.0).tolist(),
            "thickness": 1.3,
            "width": 3,
            "color": "#555",
        },
        "text": hover,
        "hovertemplate": "%{text}<extra></extra>",
    }
    ends = np.concatenate([lo[np.isfinite(lo)], hi[np.isfinite(hi)], md[np.isfinite(md)], [0.0]])
    left, right = float(ends.min()), float(ends.max())
    pad = 0.06 * (right - left) or 1.0
    axis_title = f"mean difference A − B ({confidence:.0%} CI)"
    axis_title += f", {metric.unit}" if metric.unit else ""
    return figure_div(
        [trace],
        div_id,
        height=110 + 22 * len(rows),
        margin={"l": 10, "r": 20, "t": 40, "b": 50},
        showlegend=False,
        title={"text": html.escape(metric_title(metric)), "x": 0.01, "font": {"size": 15}},
        xaxis={
            "title": {"text": html.escape(axis_title)},
            "range": [left - pad, right + pad],
            "gridcolor": "#e5e5e5",
            "zeroline": False,
        },
        yaxis={"type": "category", "autorange": "reversed", "automargin": True},
        shapes=[
            {
                "type": "line",
                "x0": 0,
                "x1": 0,
                "xref": "x",
                "y0": 0,
                "y1": 1,
                "yref": "paper",
                "line": {"color": "#333", "width": 1},
            }
        ],
    )


def _paired_rows(rows: pd.DataFrame) -> list[str]:
    out = []
    for r in rows.itertuples(index=False):
        holm_p = to_float(r.pvalue_holm)
        significant = holm_p < SIGNIFICANCE
        n = to_float(r.n)
        if not math.isfinite(n) or n == 0:
            cells = td("n", "0") + '<td colspan="5" class="na">no shared cases</td>' + td("better", "")
        else:
            zero = to_float(r.n_zero)
            n_title = f"{int(n)} shared cases" + (
                f", {int(zero)} with a zero difference (Pratt)" if math.isfinite(zero) else ""
            )
            better = cell_text(r.better)
            if not better:
                better_html = "—"
            elif significant:
                better_html = f"<b>{escape(better)}</b>"
            else:
                better_html = f'<span class="sub">{escape(better)}</span>'
            verdict = "significant after Holm" if significant else "not significant after Holm"
            cells = (
                td("n", escape(int(n)), n_title)
                + td(
                    "mean_difference",
                    estimate_text(r.mean_difference, r.mean_difference_ci_low, r.mean_difference_ci_high),
                    f"mean A {precise(to_float(r.mean_a))}, mean B {precise(to_float(r.mean_b))}; "
                    f"difference {precise(to_float(r.mean_difference))}",
                )
                + td(
                    "rank_biserial",
                    estimate_text(r.rank_biserial, r.rank_biserial_ci_low, r.rank_biserial_ci_high),
                )
                + td("pvalue", escape(format_p(r.pvalue)), f"W = {precise(to_float(r.statistic))}")
                + td("pvalue_holm", escape(format_p(r.pvalue_holm)), cls="sig" if significant else "")
                + td("better", better_html, verdict)
            )
        out.append(
            f'<tr data-model-a="{escape(r.model_a)}" data-model-b="{escape(r.model_b)}">'
            f"<th>{escape(r.model_a)} vs {escape(r.model_b)}</th>{cells}</tr>"
        )
    return out


def render_paired(
    paired: pd.DataFrame,
    metrics: Sequence[MetricColumn],
    confidence: float,
    skipped: Mapping[str, str],
    seed: int,
    resamples: int,
) -> str:
    """The model-vs-model section: a forest plot and a table of tests per per-sample metric."""
    if paired.empty:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        return (
            "<p>No comparisons: it takes two models other than real with per-sample values of the same cases."
            + (f" Not tested: {escape(why)}." if why else "")
            + "</p>"
        )
    by_name = {m.name: m for m in metrics}
    order = [m for m in metrics if m.name in set(paired["metric"])]
    order += [MetricColumn(n, None, "") for n in dict.fromkeys(paired["metric"]) if n not in by_name]
    n_tests = int(paired["pvalue"].notna().sum())
    intro = (
        '<p class="small">Every pair of models other than real, on the cases both have (the samples of a '
        "case averaged first). A − B is the first model minus the second in the metric's units; the "
        f"mean difference and the matched-pairs rank-biserial correlation carry {confidence:.0%} "
        f"percentile-bootstrap CIs over cases ({resamples} resamples, seed {seed}). The test is Wilcoxon's "
        "signed-rank test with zero differences kept by Pratt's method; the Holm adjustment is over all "
        f"{n_tests} comparisons on this page (the same numbers as <code>paired_tests.csv</code>). "
        "<i>better</i> is the model the signed ranks favour in the metric's direction, in bold when the "
        f"Holm-adjusted p is below {SIGNIFICANCE:g}. In the plots, blue marks a Holm-significant "
        "difference and the vertical line is no difference.</p>"
    )
    if skipped:
        intro += (
            '<p class="small warn-note">Not tested: '
            + escape("; ".join(f"{METRIC_LABELS.get(k, k)}: {v}" for k, v in skipped.items()))
            + ".</p>"
        )
    plots, tables = [], []
    for i, metric in enumerate(order):
        rows = paired[paired["metric"] == metric.name]
        drawn = rows[(rows["n"] > 0) & np.isfinite(rows["mean_difference"].to_numpy(dtype=np.float64))]
        if len(drawn):
            plots.append(
                f'<figure class="plot forest" data-metric="{escape(metric.name)}">'
                f"{_forest_figure(drawn, metric, f'forest-{i}', confidence)}</figure>"
            )
        head = [
            "A vs B",
            "n",
            f"mean difference A − B [{confidence:.0%} CI]",
            "rank-biserial [CI]",
            "Wilcoxon-Pratt p",
            "Holm p",
            "better",
        ]
        n_sig = int((rows["pvalue_holm"].to_numpy(dtype=np.float64) < SIGNIFICANCE).sum())
        is_open = " open" if len(rows) <= 10 else ""
        tables.append(
            f'<details class="paired-metric" data-metric="{escape(metric.name)}"{is_open}>'
            f"<summary>{escape(metric_title(metric))} "
            f'<span class="sub">({len(rows)} pair(s), {n_sig} significant after Holm)</span></summary>'
            + stat_table(head, _paired_rows(rows), "paired")
            + "</details>"
        )
    return intro + '<div class="plots">' + "".join(plots) + "</div>" + "".join(tables)


def render(ctx: PageContext) -> str:
    tests = ctx.tests
    body = render_paired(tests.frame, ctx.metrics, tests.confidence, tests.skipped, ctx.seed, ctx.resamples)
    return f"\n{body}\n"


SECTION = Section("model-tests", "Model-vs-model tests", "Model-vs-model tests", render)
