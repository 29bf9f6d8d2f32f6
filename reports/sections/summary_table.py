"""The results tables of report.html: rows = models, columns = metrics, each cell a value with its CI
and N (and a tooltip that says why a cell has none); per-class pathology as rows = classes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from audit.metrics import catalogue
from reports.format import decimals, finite, format_estimate, format_number, int_or, precise
from reports.provenance import is_demo
from reports.run import (
    FEATURE_METRICS,
    FRECHET_METRICS,
    KID_METRICS,
    METRIC_LABELS,
    PATHOLOGY_METRICS,
    READER_PREFIX,
    SELF_COMPARISON_REASONS,
    EvaluationInfo,
    MetricColumn,
    ModelRow,
    TableContext,
    best_value,
    summary_index,
)
from reports.sections.common import escape, model_label


def _metric_head(m: MetricColumn, evaluation: EvaluationInfo) -> str:
    direction = {True: "higher is better", False: "lower is better", None: "direction unknown"}
    unit = f'<div class="unit">{escape(m.unit)}</div>' if m.unit else ""
    by = ""
    if m.evaluator:
        names = [n.strip() for n in m.evaluator.split(",") if n.strip()]
        descs = [evaluation.evaluator(n) for n in names]
        about = "; ".join(
            f"{n}: {d.get('label')}" if d.get("label") else n for n, d in zip(names, descs, strict=True)
        )
        demo = ' <span class="demo-flag">demo</span>' if any(is_demo(d) for d in descs) else ""
        by = f'<div class="by" title="{escape("evaluator " + about)}">by {escape(m.evaluator)}{demo}</div>'
    return (
        f'<th data-metric="{escape(m.name)}" title="{escape(m.name)}: {direction[m.higher_is_better]}">'
        f'{escape(m.label)} <span class="arrow">{m.arrow}</span>{unit}{by}</th>'
    )


def _rank_warning(metric: MetricColumn, record: Mapping[str, Any]) -> str:
    n_real, n_gen = finite(record.get("n_real")), finite(record.get("n_gen"))
    sizes = [int(x) for x in (n_real, n_gen) if x is not None]
    n = str(min(sizes)) if sizes else "?"
    return (
        f"N={n} ≤ D={int_or(record.get('dim'))}: the covariance is rank-deficient; "
        f"{metric.label} is biased upwards and not comparable across N"
    )


def _na_reason(ctx: TableContext, model: ModelRow, metric: str, group: str) -> str:
    """Why a cell has no value, for its tooltip."""
    base = metric.split(":", 1)[0]
    if model.is_real and metric in SELF_COMPARISON_REASONS:
        return SELF_COMPARISON_REASONS[metric]
    unavailable = ctx.evaluation.unavailable.get(metric) or ctx.evaluation.unavailable.get(base)
    if unavailable:
        return f"not computed: {unavailable}"
    record = ctx.evaluation.feature_record(model.name, group, metric)
    if "error" in record:
        return f"not computed: {record['error']}"
    if base in PATHOLOGY_METRICS:
        skipped = ctx.evaluation.skipped(model.name, group, base)
        if ":" in metric:
            cls = metric.split(":", 1)[1]
            if cls in skipped:
                return f"class skipped: {skipped[cls]}"
        elif skipped:
            return "every class skipped: " + "; ".join(f"{c}: {r}" for c, r in skipped.items())
    return "no value"


def _summarised_as(base: str) -> tuple[str, str]:
    """How a summary.csv value came about, and what its ``n`` counts, for the cell's tooltip: a mean
    or median over cases, or one estimate from the whole set (an AUC, a set-level privacy metric,
    whose n counts the samples)."""
    spec = catalogue.METRICS.get(base)
    if spec is None or spec.aggregation == "per_sample_mean":
        return "mean", "cases"
    if spec.aggregation == "per_sample_median":
        return "median", "cases"
    return "estimate", "samples" if spec.family == "privacy" else "cases"


def _estimate_cell(
    ctx: TableContext,
    model: ModelRow,
    metric: MetricColumn,
    group: str,
    index: pd.DataFrame,
    best: float | None,
) -> str:
    key = (model.name, metric.name)
    if key not in index.index or pd.isna(index.at[key, "value"]):
        return f'<td class="na" title="{escape(_na_reason(ctx, model, metric.name, group))}">—</td>'
    row = index.loc[key]
    value = row["value"]
    main, ci = format_estimate(value, row["ci_low"], row["ci_high"])
    n = row["n"]
    n_text = "" if pd.isna(n) else f"n={int(n)}"
    record = ctx.evaluation.feature_record(model.name, group, metric.name)
    full = [precise(row[c]) for c in ("value", "ci_low", "ci_high")]
    if metric.name in FEATURE_METRICS:
        tip = f"{model.name} · {metric.name}: {full[0]} [{full[1]}, {full[2]}] (one value for the whole set; CI: {record.get('ci', 'none')})"
        if n_text:
            tip += f"; {int(n)} generated samples"
            if finite(record.get("n_real")) is not None:
                tip += f" vs {int_or(record.get('n_real'))} real images"
    elif metric.name.startswith(READER_PREFIX):
        tip = (
            f"{model.name} · {metric.label}: mean 1–5 score {full[0]}; {ctx.confidence:.0%} CI "
            f"[{full[1]}, {full[2]}] (two-way bootstrap over readers and items)"
        )
        tip += f"; {n_text} ratings" if n_text else ""
    else:
        what, counted = _summarised_as(metric.base)
        tip = (
            f"{model.name} · {metric.name}: {what} {full[0]}; {ctx.confidence:.0%} CI [{full[1]}, {full[2]}]"
        )
        tip += f"; {n_text} {counted}" if n_text else ""
    if group:
        tip += f"; group {group}"
    flag = ""
    if metric.name in FRECHET_METRICS and record.get("rank_deficient") is True:
        warning = _rank_warning(metric, record)
        flag = f' <span class="flag" title="{escape(warning)}">⚠</span>'
        tip += f"; ⚠ {warning}"
    spread = ""
    std = finite(record.get("std")) if metric.name in KID_METRICS else None
    if std is not None:
        about = (
            f"std over {int_or(record.get('subsets'))} random subsets of "
            f"{int_or(record.get('subset_size'))} samples per set"
        )
        std_text = format_number(std, decimals(std, math.nan, math.nan))
        spread = f' <span class="pm" title="{escape(about)}">± {escape(std_text)}</span>'
        tip += f"; {about}: {precise(std)}"
    is_best = best is not None and model in ctx.contenders and value == best
    value_html = f"<strong>{escape(main)}</strong>" if is_best else escape(main)
    return (
        f'<td class="{"best" if is_best else ""}" title="{escape(tip)}">'
        f'<span class="v">{value_html}</span>{flag} <span class="ci">{escape(ci)}</span>{spread}'
        f'<span class="n">{escape(n_text)}</span></td>'
    )


def summary_table(
    ctx: TableContext, metrics: Sequence[MetricColumn], bands: Sequence[tuple[str, str]] = (("", ""),)
) -> str:
    """Rows = models, columns = metrics; one band of rows per (group, band title) ("" = no title)."""
    head = ['<th class="model-col">model</th>'] + [_metric_head(m, ctx.evaluation) for m in metrics]
    body = []
    for group, title in bands:
        index = summary_index(ctx.run.summary, group)
        best = {m.name: best_value(index, ctx.contenders, m) for m in metrics}
        if title:
            body.append(f'<tr class="band"><th colspan="{len(metrics) + 1}">{escape(title)}</th></tr>')
        for r in ctx.models:
            cls = "real" if r.is_real else "baseline" if r.is_baseline else "generator"
            cells = [f'<th scope="row">{model_label(r)}</th>']
            cells += [_estimate_cell(ctx, r, m, group, index, best[m.name]) for m in metrics]
            group_attr = f' data-group="{escape(group)}"' if group else ""
            body.append(f'<tr class="{cls}" data-model="{escape(r.name)}"{group_attr}>{"".join(cells)}</tr>')
    return (
        '<table class="summary"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def class_order(evaluation: EvaluationInfo, names: Iterable[str]) -> list[str]:
    known = evaluation.classes
    present = {n.split(":", 1)[1] for n in names}
    return [c for c in known if c in present] + sorted(present - set(known))


def render_per_class(ctx: TableContext, base: str, columns: Sequence[MetricColumn]) -> str:
    """Per-class ``base:<Class>`` values: rows = classes, columns = models (many classes stay readable)."""
    by_class = {m.name.split(":", 1)[1]: m for m in columns}
    index = summary_index(ctx.run.summary, "")
    head = '<th class="model-col">class</th>' + "".join(f"<th>{model_label(m)}</th>" for m in ctx.models)
    body = []
    for cls in class_order(ctx.evaluation, [m.name for m in columns]):
        metric = by_class[cls]
        best = best_value(index, ctx.contenders, metric)
        cells = "".join(_estimate_cell(ctx, r, metric, "", index, best) for r in ctx.models)
        body.append(
            f'<tr class="generator" data-class="{escape(cls)}"><th scope="row">{escape(cls)}</th>{cells}</tr>'
        )
    label = METRIC_LABELS.get(base, base)
    arrow = columns[0].arrow if columns else ""
    by = (
        f' <span class="sub">by {escape(columns[0].evaluator)}</span>'
        if columns and columns[0].evaluator
        else ""
    )
    return (
        f'<h4 data-metric="{escape(base)}">{escape(label)} per class <span class="arrow">{arrow}</span>{by}</h4>'
        '<div class="table-wrap"><table class="summary per-class"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></div>"
    )
