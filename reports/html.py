"""``report.html``: one self-contained page per run (plotly.js inline, images as data URIs).

The page is built only from the files of the run directory (see :mod:`audit.rundir`), so it can be
re-rendered at any time, on a machine without torch, and opened offline.  Sections: header, the
results (paired image quality, clinical realism, anatomy-mask adherence, distribution metrics and
per-class pathology, each its own table with confidence intervals and the evaluator that produced
it; the metrics that could not be computed; results per ``[metrics].group_by`` group), model-vs-model
tests (paired Wilcoxon-Pratt with Holm, a forest plot per metric), with a reader-study export also the
reader scores as result columns, the reader statistics and metric validity; one distribution plot
per per-case metric, an image grid (reference | condition | each model), failures, and provenance
(hashes, package versions, evaluator weights and input contracts, resize policy, N per metric,
timings, config).

Figures are plain plotly trace dicts drawn by the one inlined plotly.js; nothing here imports torch.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import importlib.metadata
import itertools
import json
import logging
import math
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.io
import plotly.offline
from PIL import Image

from audit import __version__, images, rundir
from audit.atomic import write_text
from audit.cases import is_phantom
from audit.metrics.functional.norberg import METRIC_ORDER as NORBERG_METRICS
from reports.format import (
    decimals,
    finite,
    fixed,
    format_estimate,
    format_number,
    format_p,
    format_seconds,
    format_time,
    int_or,
    precise,
    sig,
    to_float,
)
from reports.norberg import phantom_callout, render_norberg, render_norberg_provenance
from reports.provenance import MARK_COLUMNS, is_demo, pin_sentence
from reports.run import (
    ALL_CASES_KEY,
    DICE_MASK_METRICS,
    DICE_METRICS,
    FEATURE_ENTRY,
    FEATURE_METRICS,
    FRECHET_METRICS,
    KID_METRICS,
    METRIC_LABELS,
    PATHOLOGY_METRICS,
    PRDC_METRICS,
    READER_PREFIX,
    SELF_COMPARISON_REASONS,
    EvaluationInfo,
    MetricColumn,
    ModelRow,
    RunFiles,
    TableContext,
    as_bool,
    best_value,
    default_unit,
    load_run,
    mapping,
    metric_columns,
    model_colours,
    order_models,
    reader_score_rows,
    split_tables,
    summary_index,
)

if TYPE_CHECKING:  # reader_stats pulls in scipy.stats; the page imports it only with a reader study
    from reports.comparison import PairedTests
    from reports.reader_stats import ReaderStatistics

log = logging.getLogger(__name__)

THUMB_PX = 160
FAILURE_ROWS = 50
# Up to this many cases per model every point is drawn; above it only outliers, to keep the page light.
ALL_POINTS_MAX = 100
# Case-id hover labels cost ~10 bytes a point; beyond this many points per plot they are dropped.
HOVER_LABELS_MAX = 20_000
MAX_ERROR_CHARS = 400


def _e(value: Any) -> str:
    """HTML-escape anything (attribute-safe)."""
    return html.escape(str(value), quote=True)


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------


def _model_label(model: ModelRow) -> str:
    """Model name cell content: the name plus a badge for baselines and the real row."""
    out = f'<span class="model-name">{_e(model.name)}</span>'
    if model.is_real:
        out += ' <span class="badge real" title="the reference images themselves">upper bound</span>'
    elif model.is_baseline:
        detail = str(model.params.get("degradation", ""))
        level = model.params.get("level")
        if level is not None:
            level_text = f"{level:g}" if isinstance(level, (int, float)) else str(level)
            detail = f"{detail}, level {level_text}" if detail else f"level {level_text}"
        out += ' <span class="badge baseline" title="deterministic degradation of the reference">'
        out += "sanity baseline</span>"
        if detail:
            out += f'<div class="sub">{_e(detail)}</div>'
    elif model.kind not in ("unknown", ""):
        out += f'<div class="sub">{_e(model.kind)}</div>'
    return out


def _metric_head(m: MetricColumn, evaluation: EvaluationInfo) -> str:
    direction = {True: "higher is better", False: "lower is better", None: "direction unknown"}
    unit = f'<div class="unit">{_e(m.unit)}</div>' if m.unit else ""
    by = ""
    if m.evaluator:
        names = [n.strip() for n in m.evaluator.split(",") if n.strip()]
        descs = [evaluation.evaluator(n) for n in names]
        about = "; ".join(
            f"{n}: {d.get('label')}" if d.get("label") else n for n, d in zip(names, descs, strict=True)
        )
        demo = ' <span class="demo-flag">demo</span>' if any(is_demo(d) for d in descs) else ""
        by = f'<div class="by" title="{_e("evaluator " + about)}">by {_e(m.evaluator)}{demo}</div>'
    return (
        f'<th data-metric="{_e(m.name)}" title="{_e(m.name)}: {direction[m.higher_is_better]}">'
        f'{_e(m.label)} <span class="arrow">{m.arrow}</span>{unit}{by}</th>'
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
        return f'<td class="na" title="{_e(_na_reason(ctx, model, metric.name, group))}">—</td>'
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
        tip = f"{model.name} · {metric.name}: mean {full[0]}; {ctx.confidence:.0%} CI [{full[1]}, {full[2]}]"
        tip += f"; {n_text} cases" if n_text else ""
    if group:
        tip += f"; group {group}"
    flag = ""
    if metric.name in FRECHET_METRICS and record.get("rank_deficient") is True:
        warning = _rank_warning(metric, record)
        flag = f' <span class="flag" title="{_e(warning)}">⚠</span>'
        tip += f"; ⚠ {warning}"
    spread = ""
    std = finite(record.get("std")) if metric.name in KID_METRICS else None
    if std is not None:
        about = (
            f"std over {int_or(record.get('subsets'))} random subsets of "
            f"{int_or(record.get('subset_size'))} samples per set"
        )
        std_text = format_number(std, decimals(std, math.nan, math.nan))
        spread = f' <span class="pm" title="{_e(about)}">± {_e(std_text)}</span>'
        tip += f"; {about}: {precise(std)}"
    is_best = best is not None and model in ctx.contenders and value == best
    value_html = f"<strong>{_e(main)}</strong>" if is_best else _e(main)
    return (
        f'<td class="{"best" if is_best else ""}" title="{_e(tip)}">'
        f'<span class="v">{value_html}</span>{flag} <span class="ci">{_e(ci)}</span>{spread}'
        f'<span class="n">{_e(n_text)}</span></td>'
    )


def _summary_table(
    ctx: TableContext, metrics: Sequence[MetricColumn], bands: Sequence[tuple[str, str]] = (("", ""),)
) -> str:
    """Rows = models, columns = metrics; one band of rows per (group, band title) ("" = no title)."""
    head = ['<th class="model-col">model</th>'] + [_metric_head(m, ctx.evaluation) for m in metrics]
    body = []
    for group, title in bands:
        index = summary_index(ctx.run.summary, group)
        best = {m.name: best_value(index, ctx.contenders, m) for m in metrics}
        if title:
            body.append(f'<tr class="band"><th colspan="{len(metrics) + 1}">{_e(title)}</th></tr>')
        for r in ctx.models:
            cls = "real" if r.is_real else "baseline" if r.is_baseline else "generator"
            cells = [f'<th scope="row">{_model_label(r)}</th>']
            cells += [_estimate_cell(ctx, r, m, group, index, best[m.name]) for m in metrics]
            group_attr = f' data-group="{_e(group)}"' if group else ""
            body.append(f'<tr class="{cls}" data-model="{_e(r.name)}"{group_attr}>{"".join(cells)}</tr>')
    return (
        '<table class="summary"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def render_table(
    run: RunFiles,
    models: Sequence[ModelRow],
    metrics: Sequence[MetricColumn],
    confidence: float,
    *,
    group: str = "",
    evaluation: EvaluationInfo | None = None,
) -> str:
    """One results table (rows = models) over the summary rows of ``group`` ("" = all cases)."""
    ctx = TableContext(run, models, evaluation or EvaluationInfo.from_info(run.info), confidence)
    return _summary_table(ctx, metrics, ((group, ""),))


def _class_order(evaluation: EvaluationInfo, names: Iterable[str]) -> list[str]:
    known = evaluation.classes
    present = {n.split(":", 1)[1] for n in names}
    return [c for c in known if c in present] + sorted(present - set(known))


def render_per_class(ctx: TableContext, base: str, columns: Sequence[MetricColumn]) -> str:
    """Per-class ``base:<Class>`` values: rows = classes, columns = models (many classes stay readable)."""
    by_class = {m.name.split(":", 1)[1]: m for m in columns}
    index = summary_index(ctx.run.summary, "")
    head = '<th class="model-col">class</th>' + "".join(f"<th>{_model_label(m)}</th>" for m in ctx.models)
    body = []
    for cls in _class_order(ctx.evaluation, [m.name for m in columns]):
        metric = by_class[cls]
        best = best_value(index, ctx.contenders, metric)
        cells = "".join(_estimate_cell(ctx, r, metric, "", index, best) for r in ctx.models)
        body.append(
            f'<tr class="generator" data-class="{_e(cls)}"><th scope="row">{_e(cls)}</th>{cells}</tr>'
        )
    label = METRIC_LABELS.get(base, base)
    arrow = columns[0].arrow if columns else ""
    by = (
        f' <span class="sub">by {_e(columns[0].evaluator)}</span>' if columns and columns[0].evaluator else ""
    )
    return (
        f'<h4 data-metric="{_e(base)}">{_e(label)} per class <span class="arrow">{arrow}</span>{by}</h4>'
        '<div class="table-wrap"><table class="summary per-class"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></div>"
    )


# ------------------------------------------------------------------------------------------------
# Notes, callouts, evaluators
# ------------------------------------------------------------------------------------------------


def _general_notes(ctx: TableContext, settings: rundir.RunSettings, names: set[str]) -> str:
    resamples = settings.bootstrap_resamples if settings.found else None
    notes = [
        "↑ higher is better, ↓ lower is better. Each cell is the mean over cases with its "
        f"{ctx.confidence:.0%} percentile-bootstrap confidence interval"
        + (f" ({_e(resamples)} resamples)" if resamples is not None else "")
        + "; n is the number of cases"
        + (
            " (generated samples for the distribution metrics, which have no CI)"
            if names & set(FEATURE_METRICS)
            else ""
        )
        + (
            " (ratings for the reader scores, whose CI resamples readers and items)"
            if any(n.startswith(READER_PREFIX) for n in names)
            else ""
        )
        + ". The best value per column among the evaluated models "
        "(not the sanity baselines or the real row) is in bold. Hover a cell for full precision, "
        "or a — for why it has no value."
    ]
    if any(m.is_real for m in ctx.models):
        text = (
            "<b>real</b> is the reference set itself, shown last as the upper bound. Paired metrics of "
            "the real images against themselves are identical by construction and are not computed "
            "(shown as —), as in Table I of the XReal paper."
        )
        if names & {*DICE_METRICS, *FEATURE_METRICS}:
            text += (
                " The same holds for Dice against the reference's segmentation and for the distribution "
                "metrics (the reference set against itself)."
            )
        if names & {*PATHOLOGY_METRICS, *DICE_MASK_METRICS}:
            text += (
                " Its pathology AUC/F1 (the classifier on the real images) and mask Dice are the ceiling "
                "the evaluators allow (“Real Images” in XReal's Table I)."
            )
        notes.append(text)
    return "".join(f"<p>{n}</p>" for n in notes)


def _paired_notes(settings: rundir.RunSettings, names: set[str]) -> str:
    pixel_range = settings.pixel_range
    notes = []
    if names & {"mse", "mae", "psnr"}:
        notes.append(
            f"Pixel errors are computed on intensities scaled to [0, {pixel_range:g}] "
            f"(<code>[metrics] pixel_range = {pixel_range:g}</code>): MSE in {_e(default_unit('mse', pixel_range))}, "
            f"MAE in {_e(default_unit('mae', pixel_range))}, PSNR in dB."
        )
    if settings.resize == "to_reference":
        notes.append(
            'Samples were resized to the reference size before comparison (<code>resize = "to_reference"</code>).'
        )
    if any(n.startswith("overlap_") for n in names) and settings.found:
        notes.append(
            f"Overlap metrics binarise at threshold {_e(settings.overlap_threshold)} "
            "(<code>[metrics] overlap_threshold</code>)."
        )
    return "".join(f"<p>{n}</p>" for n in notes)


def _clinical_notes(ctx: TableContext, names: set[str]) -> str:
    ev = ctx.evaluation
    notes = []
    if names & set(PATHOLOGY_METRICS):
        classes = ev.classes or _class_order(
            ev, (n for n in ctx.run.summary["metric"] if n.startswith("pathology_auc:"))
        )
        if classes:
            shown = ", ".join(classes)
            notes.append(
                "AUC and F1 score the classifier's outputs on each model's images against the case "
                "labels; the columns are the unweighted (macro) mean over the "
                f"{len(classes)} class(es) scored: {_e(shown)}."
                + (" With one class the macro value is that class's value." if len(classes) == 1 else "")
            )
        policy = str(ev.pathology.get("threshold_policy") or "")
        thresholds = mapping(ev.pathology.get("thresholds"))
        if policy or thresholds:
            thr = ", ".join(
                f"{c} {precise(v)}" if finite(v) is not None else f"{c} {v}" for c, v in thresholds.items()
            )
            notes.append(
                f"F1 threshold policy: {_e(policy or 'not recorded')}"
                + (f". Thresholds: {_e(thr)}." if thr else ".")
            )
    if names & set(DICE_METRICS):
        notes.append(
            "Dice compares the segmenter's lungs/heart/aorta masks on each generated image with its masks on "
            "that case's reference image (mean over the structures for “Dice mean”)."
        )
    out = "".join(f"<p>{n}</p>" for n in notes)
    return out + _skipped_block(ctx)


def _skipped_block(ctx: TableContext) -> str:
    """Every (group, metric, class) the classifier could not score, with the models it applies to."""
    skipped = mapping(ctx.evaluation.pathology.get("skipped"))
    entries: dict[tuple[str, str, str, str], list[str]] = {}
    for model, per_group in skipped.items():
        for group, per_metric in mapping(per_group).items():
            for metric, per_class in mapping(per_metric).items():
                for cls, reason in mapping(per_class).items():
                    entries.setdefault((str(group), str(metric), str(cls), str(reason)), []).append(
                        str(model)
                    )
    if not entries:
        return ""
    n_models = len({str(m) for m in skipped})
    order = {name: i for i, name in enumerate(m.name for m in ctx.models)}

    def group_rank(group: str) -> tuple[int, str]:
        return (0, "") if group == ALL_CASES_KEY else (1, group)

    rows = []
    for (group, metric, cls, reason), models in sorted(
        entries.items(), key=lambda kv: (group_rank(kv[0][0]), kv[0][1], kv[0][2], kv[0][3])
    ):
        models = sorted(models, key=lambda m: (order.get(m, len(order)), m))
        who = f"all {len(models)} models" if len(models) == n_models and n_models > 1 else ", ".join(models)
        rows.append(
            f"<tr><td>{_e(group)}</td><td>{_e(METRIC_LABELS.get(metric, metric))}</td><td>{_e(cls)}</td>"
            f"<td>{_e(reason)}</td><td>{_e(who)}</td></tr>"
        )
    return (
        '<div class="callout skipped"><b>Skipped pathology classes.</b> A class with only one label value '
        "among the cases (all positive or all negative) has no AUC or F1; it is left out of the macro mean "
        "for that model and group:"
        '<table class="plain skipped"><thead><tr><th>group</th><th>metric</th><th>class</th><th>reason</th>'
        f"<th>models</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _mask_notes(names: set[str]) -> str:
    if not names:
        return ""
    return (
        "<p>Mask Dice compares the segmenter's masks on each generated image with the case's input anatomy "
        "mask (cases without one are left out): does the image follow its condition? For real it is the "
        "segmenter's own agreement with the masks, the best a model can reach with this evaluator.</p>"
    )


def _distribution_notes(ctx: TableContext, metrics: Sequence[MetricColumn]) -> str:
    ev = ctx.evaluation
    names = {m.name for m in metrics}
    by_name = {m.name: m for m in metrics}
    notes = [
        (
            "One number per model: all its generated images against all reference images, in an "
            "evaluator's feature space, so there are no per-case values; n is the number of generated "
            "samples. The CI resamples cases: each replicate recomputes the metric on the drawn cases' "
            "stored features (FID/FXD intervals are shifted by the bootstrap's bias estimate, since a "
            "resample with fewer distinct cases inflates a Fréchet distance)."
        )
    ]
    which = [
        f"{label} {_e(by_name[m].evaluator)}"
        for m, label in (
            ("fid", "FID"),
            ("fxd", "FXD"),
            ("kid", "KID"),
            ("precision", "precision/recall/density/coverage"),
        )
        if m in by_name and by_name[m].evaluator
    ]
    if which:
        notes.append("Feature extractors: " + "; ".join(which) + " (see Evaluators below).")
    records = [
        (model, rec)
        for model, per_group in ev.feature_metrics.items()
        for rec in [mapping(mapping(per_group).get(ALL_CASES_KEY))]
    ]
    rank = sorted(
        {
            (
                FEATURE_ENTRY[m],
                int_or(min((finite(r.get("n_real")) or 0), (finite(r.get("n_gen")) or 0))),
                int_or(r.get("dim")),
            )
            for m in FRECHET_METRICS
            if m in names
            for _, rec in records
            for r in [mapping(rec.get(m))]
            if r.get("rank_deficient") is True
        }
    )
    if rank:
        cases = "; ".join(f"{METRIC_LABELS.get(m, m)}: N={n} ≤ D={d}" for m, n, d in rank)
        notes.append(
            '<span class="warn-note">⚠ Rank-deficient covariance</span> '
            f"(cells marked ⚠; {_e(cases)}). "
            "With no more samples than feature dimensions the sample covariance is singular: the Fréchet "
            "distance is biased upwards and depends on N, so compare it only between models with the same N, "
            "never with published values. Use more samples than dimensions (ideally many times more)."
        )
    if "kid" in names:
        kids = [mapping(rec.get("kid")) for _, rec in records]
        kids = [k for k in kids if "std" in k]
        if kids:
            subsets = sorted({int_or(k.get("subsets")) for k in kids})
            sizes = sorted({int_or(k.get("subset_size")) for k in kids})
            text = (
                f"KID is the mean ± std over {_e('/'.join(subsets))} random subsets of "
                f"{_e('/'.join(sizes))} samples per set"
            )
            clamped = [k for k in kids if k.get("clamped") is True]
            if clamped:
                requested = sorted({int_or(k.get("requested_subset_size")) for k in clamped})
                text += (
                    f"; the requested subset size {_e('/'.join(requested))} "
                    "(<code>[metrics] kid_subset_size</code>) was clamped to the size of the smaller set"
                )
                whole = [
                    k
                    for k in clamped
                    if finite(k.get("subset_size")) is not None
                    and finite(k.get("subset_size"))
                    >= min(finite(k.get("n_real")) or 0, finite(k.get("n_gen")) or 0)
                ]
                if whole:
                    text += (
                        ", so every subset is the whole set and the std (≈ 0) is not an uncertainty estimate"
                    )
            text += ". KID is unbiased and can be slightly negative when the two sets match."
            notes.append(text)
    if names & set(PRDC_METRICS):
        ks = sorted({int_or(mapping(rec.get("prdc")).get("k")) for _, rec in records if "prdc" in rec})
        notes.append(
            "Precision, recall, density and coverage (Naeem et al. 2020)"
            + (f" use k = {_e('/'.join(ks))} nearest neighbours" if ks else "")
            + "; density can exceed 1 (samples crowding the real modes), about 1 means a matched density."
        )
    errors = sorted(
        {
            f"{model}: {rec_name}"
            for model, rec in records
            for rec_name, r in rec.items()
            if "error" in mapping(r)
        }
    )
    if errors:
        notes.append(f"Not computed (hover the — for the reason): {_e(', '.join(errors))}.")
    return "".join(f"<p>{n}</p>" for n in notes)


def render_unavailable(evaluation: EvaluationInfo) -> str:
    """The requested metrics that were not computed, grouped by reason: impossible to overlook."""
    if not evaluation.unavailable:
        return ""
    by_reason: dict[str, list[str]] = {}
    for metric, reason in evaluation.unavailable.items():
        by_reason.setdefault(reason, []).append(metric)
    items = "".join(
        f"<li><b>{_e(', '.join(METRIC_LABELS.get(m, m) for m in metrics))}</b> "
        f'<span class="sub">({_e(", ".join(metrics))})</span>: {_e(reason)}</li>'
        for reason, metrics in by_reason.items()
    )
    n = len(evaluation.unavailable)
    return (
        '<div class="callout warn unavailable" id="unavailable">'
        f"<b>⚠ {n} requested metric(s) not computed.</b> "
        "They are missing from the tables below:"
        f'<ul class="reasons">{items}</ul></div>'
    )


def render_demo_warning(evaluation: EvaluationInfo) -> str:
    demo = [d for d in evaluation.evaluators.values() if is_demo(d)]
    if not demo:
        return ""
    items = "".join(
        f"<li><b>{_e(d.get('name', '?'))}</b> ({_e(d.get('role', ''))})"
        + (f": {_e(d.get('note'))}" if d.get("note") else "")
        + "</li>"
        for d in demo
    )
    return (
        '<div class="callout warn demo-evaluators"><b>⚠ Demo evaluators.</b> Some numbers come from small '
        "networks trained on the synthetic demo cohort, not from published chest X-ray models: they are only "
        "meaningful on the demo cohort and not comparable with published values."
        f'<ul class="reasons">{items}</ul></div>'
    )


def render_evaluators(evaluation: EvaluationInfo) -> str:
    if not evaluation.evaluators:
        return ""
    produced: dict[str, list[str]] = {}
    for metric, name in evaluation.metric_evaluators.items():
        produced.setdefault(name, []).append(METRIC_LABELS.get(metric, metric))
    rows = []
    for role, d in evaluation.evaluators.items():
        name = str(d.get("name", ""))
        sha = str(d.get("weights_sha256") or "")
        weights = _e(d.get("weights") or "—")
        if sha:
            weights += f'<div class="sub" title="sha256 {_e(sha)}">sha256 <code>{_e(sha[:12])}</code></div>'
        source = _e(d.get("source", ""))
        if is_demo(d):
            source = f'<span class="demo-flag">{source}</span>'
        note = str(d.get("note") or "")
        rows.append(
            f'<tr data-evaluator="{_e(name)}"><td>{_e(d.get("role", role))}</td><td><b>{_e(name)}</b>'
            f'<div class="sub">{_e(", ".join(produced.get(name, [])))}</div></td>'
            f"<td>{_e(d.get('label', ''))}</td><td>{source}</td><td>{weights}</td>"
            f"<td><code>{_e(d.get('preprocessing', ''))}</code></td>"
            f'<td class="{"warn" if note and is_demo(d) else ""}">{_e(note)}</td></tr>'
        )
    raw = evaluation.raw
    extra = ", ".join(
        f"{k} <code>{_e(raw[k])}</code>"
        for k in ("device", "dtype", "cache_dir")
        if raw.get(k) not in (None, "")
    )
    return (
        '<h3 id="evaluators">Evaluators</h3><p class="small">The networks behind the clinical and '
        "distribution metrics; each column header above names the one that produced it.</p>"
        '<div class="table-wrap"><table class="plain evaluators"><thead><tr><th>role</th>'
        "<th>name · metrics</th>"
        "<th>what</th><th>source</th><th>weights</th><th>preprocessing</th><th>note</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
        + (f'<p class="small">{extra}</p>' if extra else "")
    )


def _monotonicity(run: RunFiles, models: Sequence[ModelRow], metrics: Sequence[MetricColumn]) -> str:
    """Check that each degradation gets worse (never better) as its level rises, per metric."""
    by_kind: dict[str, list[tuple[float, str]]] = {}
    for m in models:
        if m.is_baseline and "degradation" in m.params and "level" in m.params:
            try:
                level = float(m.params["level"])
            except (TypeError, ValueError):
                continue
            by_kind.setdefault(str(m.params["degradation"]), []).append((level, m.name))
    summary = summary_index(run.summary, "")["value"]
    lines = []
    for degradation, levels in sorted(by_kind.items()):
        if len(levels) < 2:
            continue
        levels.sort()
        good, bad = [], []
        for metric in metrics:
            if metric.higher_is_better is None:
                continue
            series = [(lv, summary.get((name, metric.name), np.nan)) for lv, name in levels]
            series = [(lv, v) for lv, v in series if not pd.isna(v)]
            if len(series) < 2:
                continue
            sign = 1.0 if metric.higher_is_better else -1.0
            wrong = [(a, b) for (a, va), (b, vb) in itertools.pairwise(series) if sign * (vb - va) > 0]
            if wrong:
                bad.append(f"{metric.label} improves from level {wrong[0][0]:g} to {wrong[0][1]:g}")
            else:
                good.append(metric.label)
        if good:
            lines.append(
                f'<li class="ok">✓ {_e(degradation)}: {_e(", ".join(good))} worsen with the level</li>'
            )
        for text in bad:
            lines.append(f'<li class="warn">⚠ {_e(degradation)}: {_e(text)}</li>')
    return f'<ul class="checks">{"".join(lines)}</ul>' if lines else ""


def _baseline_callout(run: RunFiles, models: Sequence[ModelRow], metrics: Sequence[MetricColumn]) -> str:
    if not any(m.is_baseline for m in models):
        return ""
    return (
        '<div class="callout baseline-note"><b>Sanity baselines.</b> Rows marked '
        '<span class="badge baseline">sanity baseline</span> are not generative models: they are '
        "deterministic, known degradations of the reference images (kind <code>degrade</code>). "
        "They calibrate the metrics: more damage (a higher level) should rank worse. A generator "
        "that scores below a mild degradation is far from the references; a metric that does not "
        "get worse as the level rises is broken or insensitive to that damage."
        + _monotonicity(run, models, metrics)
        + "</div>"
    )


TABLE_INTROS = {
    "paired": "Each generated sample against its own reference image, per case, then averaged over cases.",
    "clinical": "Does a clinical network see the same findings and anatomy in the generated image as in the "
    "real one? Pathology classification against the case labels (AUC, F1) and anatomy segmentation against "
    "that of the reference (Dice).",
    "mask": "Anatomy segmentation of each generated image against the case's input anatomy mask.",
    "distribution": "The set of generated images against the set of reference images.",
    "reader": "Mean 1–5 score of the readers per criterion (first reads; calibration items left out), "
    "with a two-way bootstrap CI over readers and items; n is the number of ratings. Details in "
    '<a href="#reader-study">Reader study</a>.',
    "norberg": "Norberg angle of each hip measured on every sample (the landmark detector of <code>[norberg]</code>) "
    "against the annotated angle of the same case and side, both sides pooled; the <b>real</b> row is the "
    "detector on the real images, the upper bound. Per side, the Bland–Altman plot and the scatter are in "
    '<a href="#norberg">Norberg angles</a>.',
    "other": "Metrics this version of the report does not group.",
}


def render_results(ctx: TableContext, metrics: Sequence[MetricColumn], settings: rundir.RunSettings) -> str:
    """The results section's body: callouts, one table per family, per-class pathology, notes, evaluators."""
    ev = ctx.evaluation
    parts = [render_unavailable(ev), render_demo_warning(ev)]
    tables = split_tables(metrics)
    for table_id, heading, columns in tables:
        names = {m.name for m in columns}
        if table_id == "paired":
            notes = _paired_notes(settings, names)
        elif table_id == "clinical":
            notes = _clinical_notes(ctx, names)
        elif table_id == "mask":
            notes = _mask_notes(names)
        elif table_id == "distribution":
            notes = _distribution_notes(ctx, columns)
        else:
            notes = ""
        parts.append(
            f'<div class="result-table" data-table="{table_id}" id="results-{table_id}">'
            f'<h3>{_e(heading)}</h3><p class="small">{TABLE_INTROS[table_id]}</p>'
            f'<div class="table-wrap">{_summary_table(ctx, columns)}</div>'
            f'<div class="notes">{notes}</div></div>'
        )
    per_class = [m for m in metrics if ":" in m.name and m.base in PATHOLOGY_METRICS]
    classes = _class_order(ev, (m.name for m in per_class))
    if len(classes) > 1:
        blocks = [
            render_per_class(ctx, base, [m for m in per_class if m.base == base])
            for base in PATHOLOGY_METRICS
            if any(m.base == base for m in per_class)
        ]
        parts.append(
            '<div class="result-table" data-table="per-class" id="results-per-class">'
            "<h3>Pathology per class</h3>"
            '<p class="small">Rows are classes, columns models; a — is a class that could not be scored '
            "(hover for why).</p>" + "".join(blocks) + "</div>"
        )
    main = [m for _, _, columns in tables for m in columns]
    names = {m.name for m in main}
    parts.append(
        f'<div class="notes">{_general_notes(ctx, settings, names)}'
        f"{_baseline_callout(ctx.run, ctx.models, main)}</div>"
    )
    parts.append(render_evaluators(ev))
    return "".join(parts)


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
                    f'<div class="result-table" data-table="{table_id}" data-group-column="{_e(column)}">'
                    f'<h4>{_e(heading)}</h4><div class="table-wrap">'
                    f"{_summary_table(ctx, columns, bands)}</div></div>"
                )
        parts.append(
            f'<details class="group-column" data-group-column="{_e(column)}" open>'
            f'<summary>by {_e(column)} <span class="sub">({len(values)} group(s))</span></summary>'
            + "".join(tables)
            + "</details>"
        )
    return "".join(parts)


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
                "y": _typed_array(values[finite], "f4"),
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
                f'<figure class="plot empty" data-metric="{_e(metric.name)}"><p class="small">'
                f"{_e(metric.label)}: no finite per-case values to draw.</p></figure>"
            )
            continue
        axis_title = metric.label + (f" ({metric.unit})" if metric.unit else "")
        div = _figure_div(
            traces,
            f"dist-{i}",
            height=340,
            margin={"l": 70, "r": 20, "t": 40, "b": 70},
            showlegend=False,
            title={"text": html.escape(f"{metric.label} {metric.arrow}"), "x": 0.01, "font": {"size": 15}},
            yaxis={"title": {"text": html.escape(axis_title)}, "gridcolor": "#e5e5e5", "zeroline": False},
            xaxis={"tickangle": 0},
        )
        note = f'<p class="small">Not drawn: {_e("; ".join(dropped))}.</p>' if dropped else ""
        parts.append(f'<figure class="plot" data-metric="{_e(metric.name)}">{div}{note}</figure>')
    return '<div class="plots">' + "".join(parts) + "</div>"


# ------------------------------------------------------------------------------------------------
# Shared figure and table helpers of the statistics sections
# ------------------------------------------------------------------------------------------------

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
PLOT_FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12}
SIGNIFICANCE = 0.05  # Holm-adjusted p below this is drawn as a significant difference
SIGNIFICANT_COLOUR = "#4C72B0"
NOT_SIGNIFICANT_COLOUR = "#9a9aa0"
# ColorBrewer RdYlGn, 5 classes: score 1 (red) to 5 (green).
SCORE_COLOURS = ("#d7191c", "#fdae61", "#e6d96a", "#a6d96a", "#1a9641")
CRITERION_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")
SCATTER_EXTRA = "<extra>%{fullData.name}</extra>"
REPORT_VERSIONS = ("xray-audit", "numpy", "pandas", "scipy", "statsmodels", "plotly", "pyarrow", "pillow")


def _figure_div(traces: Sequence[Mapping[str, Any]], div_id: str, **layout: Any) -> str:
    """Plain trace dicts as a div that uses the page's one inlined plotly.js (deterministic id).

    No plotly template (the default one adds ~7 kB per figure) and no graph_objects: building and
    validating a go.Figure costs ~10 ms each, which adds up over one forest plot per metric; the
    tests validate these figures with go.Figure instead.
    """
    figure = {
        "data": list(traces),
        "layout": {"plot_bgcolor": "white", "paper_bgcolor": "white", "font": PLOT_FONT, **layout},
    }
    return plotly.io.to_html(
        figure, full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG, validate=False
    )


def _typed_array(values: np.ndarray, dtype: str) -> dict[str, str]:
    """A plotly.js typed-array spec (what plotly.py writes for numpy arrays): ~4 bytes a float32."""
    data = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "bdata": base64.b64encode(data.tobytes()).decode("ascii")}


def _json_floats(values: Any) -> list[float | None]:
    """Floats for a plotly trace: NaN and ±inf (not JSON) become null, which plotly leaves out."""
    arr = np.asarray(values, dtype=np.float64)
    return [float(x) if math.isfinite(x) else None for x in arr.tolist()]


def _estimate_text(value: Any, low: Any, high: Any) -> str:
    main, ci = format_estimate(to_float(value), to_float(low), to_float(high))
    return f'{_e(main)} <span class="ci">{_e(ci)}</span>' if ci else _e(main)


def _td(col: str, content: str, title: str = "", cls: str = "") -> str:
    """A statistics cell; ``data-col`` names the column of the source table it shows."""
    attrs = f' data-col="{_e(col)}"'
    if title:
        attrs += f' title="{_e(title)}"'
    if cls:
        attrs += f' class="{_e(cls)}"'
    return f"<td{attrs}>{content}</td>"


def _stat_table(head: Sequence[str], rows: Sequence[str], cls: str) -> str:
    return (
        f'<div class="table-wrap"><table class="plain stats {_e(cls)}"><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def _metric_title(metric: MetricColumn) -> str:
    return f"{metric.label} {metric.arrow}".strip()


# ------------------------------------------------------------------------------------------------
# Model-vs-model tests
# ------------------------------------------------------------------------------------------------


def read_paired_tests(path: str | Path) -> pd.DataFrame:
    """paired_tests.csv (written by :func:`reports.comparison.write_exports`) back as the frame
    :func:`reports.comparison.paired_tests` returned: pandas writes floats exactly, so the HTML can
    reuse the file instead of recomputing its bootstrap."""
    from reports.comparison import PAIRED_COLUMNS

    path = Path(path)
    # Model names such as "NA" or "" stay text: nothing is parsed as missing but the empty numbers.
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in MARK_COLUMNS:  # files written before the evaluator columns
        if col not in frame.columns:
            frame[col] = ""
    missing = [c for c in PAIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; rewrite it with `xray-audit report`"
        )
    text = {"metric", "label", "model_a", "model_b", "better", "higher_is_better", *MARK_COLUMNS}
    for col in PAIRED_COLUMNS:
        if col not in text:
            frame[col] = pd.to_numeric(frame[col].replace("", np.nan), errors="raise")
    frame["higher_is_better"] = frame["higher_is_better"].map(as_bool)
    return frame.loc[:, list(PAIRED_COLUMNS)]


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
    return _figure_div(
        [trace],
        div_id,
        height=110 + 22 * len(rows),
        margin={"l": 10, "r": 20, "t": 40, "b": 50},
        showlegend=False,
        title={"text": html.escape(_metric_title(metric)), "x": 0.01, "font": {"size": 15}},
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
            cells = _td("n", "0") + '<td colspan="5" class="na">no shared cases</td>' + _td("better", "")
        else:
            zero = to_float(r.n_zero)
            n_title = f"{int(n)} shared cases" + (
                f", {int(zero)} with a zero difference (Pratt)" if math.isfinite(zero) else ""
            )
            better = _text(r.better)
            if not better:
                better_html = "—"
            elif significant:
                better_html = f"<b>{_e(better)}</b>"
            else:
                better_html = f'<span class="sub">{_e(better)}</span>'
            verdict = "significant after Holm" if significant else "not significant after Holm"
            cells = (
                _td("n", _e(int(n)), n_title)
                + _td(
                    "mean_difference",
                    _estimate_text(r.mean_difference, r.mean_difference_ci_low, r.mean_difference_ci_high),
                    f"mean A {precise(to_float(r.mean_a))}, mean B {precise(to_float(r.mean_b))}; "
                    f"difference {precise(to_float(r.mean_difference))}",
                )
                + _td(
                    "rank_biserial",
                    _estimate_text(r.rank_biserial, r.rank_biserial_ci_low, r.rank_biserial_ci_high),
                )
                + _td("pvalue", _e(format_p(r.pvalue)), f"W = {precise(to_float(r.statistic))}")
                + _td("pvalue_holm", _e(format_p(r.pvalue_holm)), cls="sig" if significant else "")
                + _td("better", better_html, verdict)
            )
        out.append(
            f'<tr data-model-a="{_e(r.model_a)}" data-model-b="{_e(r.model_b)}">'
            f"<th>{_e(r.model_a)} vs {_e(r.model_b)}</th>{cells}</tr>"
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
            + (f" Not tested: {_e(why)}." if why else "")
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
            + _e("; ".join(f"{METRIC_LABELS.get(k, k)}: {v}" for k, v in skipped.items()))
            + ".</p>"
        )
    plots, tables = [], []
    for i, metric in enumerate(order):
        rows = paired[paired["metric"] == metric.name]
        drawn = rows[(rows["n"] > 0) & np.isfinite(rows["mean_difference"].to_numpy(dtype=np.float64))]
        if len(drawn):
            plots.append(
                f'<figure class="plot forest" data-metric="{_e(metric.name)}">'
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
            f'<details class="paired-metric" data-metric="{_e(metric.name)}"{is_open}>'
            f"<summary>{_e(_metric_title(metric))} "
            f'<span class="sub">({len(rows)} pair(s), {n_sig} significant after Holm)</span></summary>'
            + _stat_table(head, _paired_rows(rows), "paired")
            + "</details>"
        )
    return intro + '<div class="plots">' + "".join(plots) + "</div>" + "".join(tables)


# ------------------------------------------------------------------------------------------------
# Reader study
# ------------------------------------------------------------------------------------------------


def _reader_model_order(present: Iterable[str], models: Sequence[ModelRow]) -> list[str]:
    present = list(dict.fromkeys(str(m) for m in present))
    ordered = [m.name for m in models if m.name in present]
    return ordered + sorted(m for m in present if m not in ordered)


def _reader_scores_table(scores: pd.DataFrame, models: Sequence[ModelRow], confidence: float) -> str:
    criteria = list(dict.fromkeys(scores["criterion"].astype(str)))
    index = scores.assign(model=scores["model"].astype(str), criterion=scores["criterion"].astype(str))
    index = index.set_index(["model", "criterion"])
    kinds = {m.name: m for m in models}
    body = []
    for name in _reader_model_order(index.index.get_level_values("model"), models):
        model = kinds.get(name, ModelRow(name, "unknown", {}))
        cls = "real" if model.is_real else "baseline" if model.is_baseline else "generator"
        cells = [f'<th scope="row">{_model_label(model)}</th>']
        for criterion in criteria:
            if (name, criterion) not in index.index:
                cells.append('<td class="na" data-criterion="' + _e(criterion) + '">—</td>')
                continue
            r = index.loc[(name, criterion)]
            main, ci = format_estimate(to_float(r["mean"]), to_float(r["ci_low"]), to_float(r["ci_high"]))
            detail = (
                f"n={int(r['n_ratings'])} · {int(r['n_readers'])} readers · {int(r['n_items'])} items"
            )
            tip = (
                f"{name} · {criterion}: mean {precise(to_float(r['mean']))}; {confidence:.0%} CI "
                f"[{precise(to_float(r['ci_low']))}, {precise(to_float(r['ci_high']))}]; "
                f"{int(r['n_cases'])} cases"
            )
            cells.append(
                f'<td data-criterion="{_e(criterion)}" title="{_e(tip)}"><span class="v">{_e(main)}</span> '
                f'<span class="ci">{_e(ci)}</span><span class="n">{_e(detail)}</span></td>'
            )
        body.append(f'<tr class="{cls}" data-model="{_e(name)}">{"".join(cells)}</tr>')
    head = '<th class="model-col">model</th>' + "".join(
        f'<th data-criterion="{_e(c)}">{_e(c)} <span class="arrow">↑</span>'
        '<div class="unit">1–5</div></th>'
        for c in criteria
    )
    return (
        '<div class="table-wrap"><table class="summary reader-scores"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></div>"
    )


def _score_distribution_figures(first: pd.DataFrame, models: Sequence[ModelRow]) -> str:
    """Per criterion: stacked horizontal bars of the share of first-read ratings at each score 1-5."""
    parts = []
    for i, (criterion, crit) in enumerate(first.groupby("criterion", sort=True)):
        order = _reader_model_order(crit["model"], models)
        counts = (
            crit.groupby(["model", "score"]).size().unstack(fill_value=0).reindex(index=order, fill_value=0)
        )
        counts = counts.reindex(columns=[1.0, 2.0, 3.0, 4.0, 5.0], fill_value=0)
        totals = counts.sum(axis=1).to_numpy(dtype=np.float64)
        labels = [html.escape(m) for m in order]
        traces = []
        for level, colour in zip(counts.columns, SCORE_COLOURS, strict=True):
            n = counts[level].to_numpy(dtype=np.int64)
            share = np.where(totals > 0, 100.0 * n / np.maximum(totals, 1), 0.0)
            traces.append(
                {
                    "type": "bar",
                    "x": share.tolist(),
                    "y": labels,
                    "orientation": "h",
                    "name": f"{int(level)}",
                    "marker": {"color": colour, "line": {"color": "white", "width": 0.5}},
                    "customdata": n.tolist(),
                    "hovertemplate": f"score {int(level)}: %{{customdata}} ratings (%{{x:.1f}}%)"
                    "<extra>%{y}</extra>",
                }
            )
        div = _figure_div(
            traces,
            f"reader-dist-{i}",
            barmode="stack",
            height=150 + 28 * len(order),
            margin={"l": 10, "r": 20, "t": 40, "b": 90},
            title={"text": html.escape(f"{criterion}: scores 1–5"), "x": 0.01, "font": {"size": 15}},
            xaxis={
                "title": {"text": "share of first-read ratings (%)"},
                "range": [0, 100],
                "gridcolor": "#e5e5e5",
            },
            yaxis={"type": "category", "autorange": "reversed", "automargin": True},
            legend={
                "orientation": "h",
                "traceorder": "normal",
                "x": 0,
                # Below the x-axis title: ~55 px under a plot area of 30 + 28 px per model.
                "y": -55 / (30 + 28 * len(order)),
                "yanchor": "top",
                "title": {"text": "score"},
            },
        )
        parts.append(f'<figure class="plot reader-dist" data-criterion="{_e(criterion)}">{div}</figure>')
    return '<div class="plots">' + "".join(parts) + "</div>"


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _fit_warnings(criterion: str, rows: pd.DataFrame) -> str:
    """One fit per criterion: its warnings (the same on every model row) said once."""
    texts = list(dict.fromkeys(t for t in map(_text, rows["warnings"]) if t))
    if not texts:
        return ""
    return (
        f'<div class="callout warn fit-warnings" data-criterion="{_e(criterion)}"><b>Fit warnings</b> '
        f'({_e(criterion)}): <span data-col="warnings">{_e("; ".join(texts))}</span></div>'
    )


def _by_model_order(frame: pd.DataFrame, models: Sequence[ModelRow]) -> pd.DataFrame:
    rank = {name: i for i, name in enumerate(_reader_model_order(frame["model"], models))}
    return frame.sort_values(
        ["criterion", "model"], key=lambda s: s.map(rank) if s.name == "model" else s, kind="stable"
    )


def _mixed_block(mixed: pd.DataFrame, models: Sequence[ModelRow], confidence: float, reference: str) -> str:
    if mixed.empty:
        return (
            f'<p class="small">Not fitted: it needs ratings of {_e(reference)} and at least one other '
            "model.</p>"
        )
    parts = []
    for criterion, rows in _by_model_order(mixed, models).groupby("criterion", sort=True):
        first = rows.iloc[0]
        converged = as_bool(first["converged"])
        facts = (
            f'<p class="small mixed-facts" data-criterion="{_e(criterion)}">{_e(reference)} mean (intercept) '
            f'<span data-col="reference_mean">{_e(sig(first["reference_mean"]))}</span>; '
            "variance components: "
            f'reader <span data-col="var_reader">{_e(sig(first["var_reader"]))}</span>, '
            f'case <span data-col="var_case">{_e(sig(first["var_case"]))}</span>, '
            f'residual <span data-col="var_residual">{_e(sig(first["var_residual"]))}</span>; '
            f"{int(first['n_ratings'])} ratings, {int(first['n_readers'])} readers, "
            f"{int(first['n_cases'])} cases; "
            + (
                '<span data-col="converged">converged</span>'
                if converged
                else '<span data-col="converged" class="warn-note">not converged</span>'
            )
            + "</p>"
        )
        body = [
            f'<tr data-criterion="{_e(criterion)}" data-model="{_e(r.model)}"><th>{_e(r.model)}</th>'
            + _td(
                "coef",
                _estimate_text(r.coef, r.ci_low, r.ci_high),
                f"coefficient {precise(to_float(r.coef))}",
            )
            + _td("se", _e(sig(r.se)))
            + _td("pvalue", _e(format_p(r.pvalue)))
            + "</tr>"
            for r in rows.itertuples(index=False)
        ]
        head = ["model", f"difference to {_e(reference)} [{confidence:.0%} CI]", "SE", "p"]
        parts.append(
            f"<h4>{_e(criterion)}</h4>{facts}"
            + _stat_table(head, body, "mixed")
            + _fit_warnings(criterion, rows)
        )
    return "".join(parts)


def _ordinal_block(
    ordinal: pd.DataFrame, models: Sequence[ModelRow], confidence: float, reference: str
) -> str:
    if ordinal.empty:
        return '<p class="small">Not fitted.</p>'
    ordinal = _by_model_order(ordinal, models)
    body = [
        f'<tr data-criterion="{_e(r.criterion)}" data-model="{_e(r.model)}"><th>{_e(r.criterion)}</th>'
        f"<th>{_e(r.model)}</th>"
        + _td(
            "coef", _estimate_text(r.coef, r.ci_low, r.ci_high), f"log odds ratio {precise(to_float(r.coef))}"
        )
        + _td("se", _e(sig(r.se)))
        + _td("pvalue", _e(format_p(r.pvalue)))
        + _td("n_ratings", _e(r.n_ratings))
        + _td(
            "converged",
            "✓" if as_bool(r.converged) else "✗ not converged",
            cls="" if as_bool(r.converged) else "warn",
        )
        + "</tr>"
        for r in ordinal.itertuples(index=False)
    ]
    head = [
        "criterion",
        "model",
        f"log odds ratio vs {_e(reference)} [{confidence:.0%} CI]",
        "SE",
        "p",
        "ratings",
        "converged",
    ]
    warnings_html = "".join(_fit_warnings(c, rows) for c, rows in ordinal.groupby("criterion", sort=True))
    return _stat_table(head, body, "ordinal") + warnings_html


def _agreement_block(agreement: pd.DataFrame) -> str:
    if agreement.empty:
        return '<p class="small">No ratings.</p>'
    body = []
    for r in agreement.itertuples(index=False):
        note = "" if not isinstance(r.note, str) else r.note
        body.append(
            f'<tr data-criterion="{_e(r.criterion)}"><th>{_e(r.criterion)}</th>'
            + _td("icc2_1", _estimate_text(r.icc2_1, r.icc2_1_ci_low, r.icc2_1_ci_high))
            + _td("icc2_k", _estimate_text(r.icc2_k, r.icc2_k_ci_low, r.icc2_k_ci_high))
            + _td(
                "icc_n_items",
                _e(int_or(r.icc_n_items, "—")),
                "items every reader rated (ICC needs a complete table)",
            )
            + _td("kappa_quadratic", _e(fixed(r.kappa_quadratic)))
            + _td("n_reader_pairs", _e(int_or(r.n_reader_pairs, "—")))
            + _td("alpha_ordinal", _e(fixed(r.alpha_ordinal)))
            + _td("n_items", _e(int_or(r.n_items, "—")))
            + _td("n_readers", _e(int_or(r.n_readers, "—")))
            + _td("n_ratings", _e(int_or(r.n_ratings, "—")))
            + _td("note", _e(note), cls="warn" if note else "")
            + "</tr>"
        )
    head = [
        "criterion",
        "ICC(2,1) [95% CI]",
        "ICC(2,k) [95% CI]",
        "ICC items",
        "mean pairwise κ (quadratic)",
        "reader pairs",
        "Krippendorff α (ordinal)",
        "items",
        "readers",
        "ratings",
        "note",
    ]
    return _stat_table(head, body, "agreement")


def _intra_block(intra: pd.DataFrame) -> str:
    if intra.empty:
        return '<p class="small">No re-reads in this study (no item was read twice by the same reader).</p>'
    body = []
    for r in intra.itertuples(index=False):
        body.append(
            f'<tr data-criterion="{_e(r.criterion)}" data-reader="{_e(r.reader)}"><th>{_e(r.reader)}</th>'
            f"<th>{_e(r.criterion)}</th>"
            + _td("kappa_quadratic", _e(fixed(r.kappa_quadratic)))
            + _td("exact_agreement", _e(fixed(r.exact_agreement)))
            + _td("n_pairs", _e(int_or(r.n_pairs, "—")))
            + "</tr>"
        )
    head = ["reader", "criterion", "κ (quadratic), read 1 vs 2", "exact agreement", "re-read pairs"]
    return _stat_table(head, body, "intra")


def _turing_block(turing: pd.DataFrame) -> str:
    if turing.empty:
        return '<p class="small">The study asked no real-or-synthetic question.</p>'
    body = []
    for r in turing.itertuples(index=False):
        body.append(
            f'<tr data-reader="{_e(r.reader)}"><th>{_e(r.reader)}</th>'
            + _td("n", _e(int_or(r.n, "—")))
            + _td("n_synthetic", _e(int_or(r.n_synthetic, "—")))
            + _td("n_real", _e(int_or(r.n_real, "—")))
            + _td("accuracy", _e(fixed(r.accuracy)))
            + _td("sensitivity", _e(fixed(r.sensitivity)))
            + _td("specificity", _e(fixed(r.specificity)))
            + _td("auc", _e(fixed(r.auc)))
            + "</tr>"
        )
    from reports.reader_stats import POOLED

    pooled = turing[turing["reader"] == POOLED]
    verdict = ""
    if len(pooled):
        auc = to_float(pooled["auc"].iloc[0])
        if math.isfinite(auc):
            if abs(auc - 0.5) < 0.1:
                meaning = "close to chance, the readers cannot tell the synthetic images apart"
            elif auc > 0.5:
                meaning = "the readers tell synthetic from real better than chance"
            else:
                meaning = "below chance, readers take the synthetic images for the real ones"
            verdict = f" Pooled AUC {fixed(auc)}: {meaning}."
    text = (
        '<p class="small">"Positive" is synthetic: sensitivity is the share of synthetic images called '
        "synthetic, specificity the share of real images called real. The AUC ranks every answer by its "
        "confidence (“synthetic, sure” highest, “real, sure” lowest) and is the probability that a "
        "random synthetic image ranks above a random real one: <b>AUC ≈ 0.5 means the readers cannot "
        f"tell real from synthetic</b>, 1 that they always can.{_e(verdict)}</p>"
    )
    head = ["reader", "answers", "synthetic", "real", "accuracy", "sensitivity", "specificity", "AUC"]
    return text + _stat_table(head, body, "turing")


def render_reader_study(
    stats: ReaderStatistics,
    ratings: pd.DataFrame,
    models: Sequence[ModelRow],
    confidence: float,
    source: str = "",
) -> str:
    """The reader-study section from :class:`reports.reader_stats.ReaderStatistics` and the export."""
    from reports.reader_stats import REFERENCE, _prepare

    scored, turing = _prepare(ratings)
    first = scored[scored["read_number"] == 1]
    n_readers = int(pd.concat([scored["reader"], turing["reader"]]).nunique())
    n_items = int(pd.concat([scored["item"], turing["item"]]).nunique())
    n_reread = int((scored["read_number"] == 2).sum())
    intro = (
        f'<p class="small">{n_readers} reader(s), {n_items} rated item(s), {len(first)} first-read score(s)'
        + (f", {n_reread} re-read score(s)" if n_reread else "")
        + (f" from <code>{_e(source)}</code>" if source else "")
        + ". Calibration (practice) items and flags without answers are left out; every table but the "
        "intra-reader one uses first reads only. Scores are 1 (worst) to 5 (best).</p>"
    )
    return (
        intro
        + "<h3>Mean score per model and criterion</h3>"
        f'<p class="small">Mean 1–5 score with a {confidence:.0%} two-way bootstrap CI that resamples '
        "readers and items (it generalises to new readers and new cases); n ratings · readers · items.</p>"
        + _reader_scores_table(stats.scores, models, confidence)
        + "<h3>Score distributions</h3>"
        + (_score_distribution_figures(first, models) if len(first) else '<p class="small">No scores.</p>')
        + '<h3 id="reader-mixed">Mixed-effects model</h3>'
        '<p class="small"><code>score ~ model + (1|reader) + (1|case)</code> per criterion (statsmodels '
        f"MixedLM, REML, crossed random intercepts): each model's difference to {_e(REFERENCE)} in score "
        f"points, with Wald {confidence:.0%} CIs; the variance components say how much of the spread comes "
        "from reader severity, from cases and from the rest.</p>"
        + _mixed_block(stats.mixed, models, confidence, REFERENCE)
        + "<h3>Ordinal sensitivity fit</h3>"
        '<p class="small">Proportional-odds logit (statsmodels OrderedModel) of the same contrast with '
        "reader indicators, which does not treat 1–5 as an interval scale: a positive log odds ratio means "
        "higher scores than the reference. It should agree in sign with the mixed model.</p>"
        + _ordinal_block(stats.ordinal, models, confidence, REFERENCE)
        + "<h3>Inter-reader agreement</h3>"
        '<p class="small">ICC(2,1) (one reader) and ICC(2,k) (the mean of k readers), two-way random, '
        "absolute agreement, over the items every reader rated; Cohen's κ with quadratic weights and labels "
        "fixed to 1–5, averaged over reader pairs; Krippendorff's α (ordinal), which tolerates missing "
        "ratings.</p>"
        + _agreement_block(stats.agreement)
        + "<h3>Intra-reader agreement</h3>"
        '<p class="small">Each reader\'s first and second read of the same item (re-reads after a '
        "washout).</p>"
        + _intra_block(stats.intra)
        + "<h3>Real or synthetic?</h3>"
        + _turing_block(stats.turing)
    )


# ------------------------------------------------------------------------------------------------
# Metric validity
# ------------------------------------------------------------------------------------------------


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
        f'<td data-criterion="{_e(criterion)}" data-col="{col}" title="{_e(title)}">'
        f'<span class="v">{_e(fixed(r))}</span><span class="n">{_e(detail)}</span></td>'
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
        lines.append(f"<li><b>{_e(label)}</b> vs reader scores per model: {_e('; '.join(parts))}.</li>")
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
                "x": _json_floats(g["value"]),
                "y": _json_floats(g["score"]),
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
        spans.append((name, start, len(traces), f"{_metric_title(column)} vs reader score, {per}", column))
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
    div = _figure_div(
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
    return f'<figure class="plot validity-scatter" data-metrics="{_e(" ".join(names))}">{div}</figure>'


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
            f'<th colspan="2" data-criterion="{_e(c)}">reader {_e(c)}</th>' for c in criteria
        )
        sub = "".join("<th>ρ per image</th><th>ρ per model</th>" for _ in criteria)
        body = []
        for name in rows:
            column = labels.get(name, MetricColumn(name, None, ""))
            kind = "per sample" if name in per_sample_metrics else "per model (summary.csv)"
            cells = [f"<th>{_e(_metric_title(column))}</th><td class=\"sub\">{kind}</td>"]
            for c in criteria:
                if (name, c) not in index.index:
                    cells.append(f'<td class="na" data-criterion="{_e(c)}" data-col="rho_image">—</td>' * 1)
                    cells.append(f'<td class="na" data-criterion="{_e(c)}" data-col="rho_model">—</td>')
                    continue
                r = index.loc[(name, c)]
                if name in per_sample_metrics:
                    cells.append(
                        _validity_cell(r["rho_image"], r["p_image"], r["n_image"], "rho_image", c, "images")
                    )
                else:
                    cells.append(
                        f'<td class="na" data-criterion="{_e(c)}" data-col="rho_image" '
                        'title="no per-image values">—</td>'
                    )
                cells.append(
                    _validity_cell(r["rho_model"], r["p_model"], r["n_model"], "rho_model", c, "models")
                )
            body.append(f'<tr data-metric="{_e(name)}">{"".join(cells)}</tr>')
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


# ------------------------------------------------------------------------------------------------
# Image grid
# ------------------------------------------------------------------------------------------------


def choose_grid_cases(cases: pd.DataFrame, samples: pd.DataFrame, models: Sequence[str], k: int) -> list[str]:
    """``k`` case ids, deterministic: by case_id, complete cases first, spread round-robin over groups."""
    if k <= 0 or cases.empty:
        return []
    frame = cases.loc[:, ["case_id"] + (["group"] if "group" in cases.columns else [])].copy()
    have = samples[samples["model"].isin(models)].groupby("case_id")["model"].nunique()
    frame["complete"] = frame["case_id"].map(have).fillna(0).to_numpy() >= len(models)
    frame = frame.sort_values(["complete", "case_id"], ascending=[False, True], kind="stable")
    if "group" not in frame.columns:
        return frame["case_id"].head(k).tolist()
    frame["group"] = frame["group"].astype(str).where(frame["group"].notna(), "")
    queues = {g: list(ids) for g, ids in frame.groupby("group", sort=True)["case_id"]}
    chosen: list[str] = []
    while len(chosen) < k and any(queues.values()):
        for g in sorted(queues):
            if queues[g] and len(chosen) < k:
                chosen.append(queues[g].pop(0))
    return chosen


def _thumb_size(shape: tuple[int, int], size: int) -> tuple[int, int]:
    h, w = shape
    scale = min(1.0, size / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))  # PIL order: (width, height)


def _thumbnail(pixels: np.ndarray, size: int) -> np.ndarray:
    target = _thumb_size(pixels.shape[:2], size)
    if target == (pixels.shape[1], pixels.shape[0]):
        return np.asarray(pixels, dtype=np.float32)
    im = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
    return np.clip(np.asarray(im.resize(target, Image.Resampling.LANCZOS)), 0.0, 1.0)


def _mask_thumbnail(mask: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """bool (H, W, C) mask resized (nearest) to PIL ``target`` (w, h): float (h, w, C)."""
    channels = [
        np.asarray(
            Image.fromarray(mask[..., c].astype(np.uint8) * 255).resize(target, Image.Resampling.NEAREST)
        )
        > 127
        for c in range(mask.shape[2])
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def _overlay(reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB float: the grey reference with the mask blended in (RGB masks keep their channel colours)."""
    rgb = np.repeat(reference[..., None], 3, axis=2)
    if mask.shape[2] == 3:
        colour = mask
    else:
        colour = mask[..., :1] * np.array([1.0, 0.35, 0.0], dtype=np.float32)
    alpha = 0.45 * mask.max(axis=2, keepdims=True)
    return rgb * (1.0 - alpha) + colour * alpha


def _data_uri(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(images.encode_png(pixels)).decode("ascii")


def _img(pixels: np.ndarray, alt: str) -> str:
    h, w = pixels.shape[:2]
    return f'<img src="{_data_uri(pixels)}" width="{w}" height="{h}" alt="{_e(alt)}" title="{_e(alt)}">'


def _placeholder(reason: str) -> str:
    return f'<div class="ph" title="{_e(reason)}">{_e(reason)}</div>'


def _present_path(value: Any) -> str | None:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _read_thumb(path: str | None, size: int) -> tuple[np.ndarray | None, str]:
    """(thumbnail, "") or (None, reason)."""
    if path is None:
        return None, "no path recorded"
    try:
        return _thumbnail(images.read_image(path).pixels, size), ""
    except FileNotFoundError:
        return None, f"file not found: {Path(path).name}"
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {exc}"


def _condition_cell(case: Mapping[str, Any], reference: np.ndarray | None, size: int) -> tuple[str, str]:
    """(cell html, caption) for the condition column."""
    for column, caption in (
        ("anatomy_mask", "anatomy mask"),
        ("control", "control"),
        ("pathology_mask", "pathology mask"),
    ):
        path = _present_path(case.get(column))
        if path is None:
            continue
        if column == "control":
            thumb, why = _read_thumb(path, size)
            return (
                _img(thumb, f"control for {case['case_id']}") if thumb is not None else _placeholder(why)
            ), caption
        try:
            mask = images.read_mask(path)
        except FileNotFoundError:
            return _placeholder(f"{caption} not found: {Path(path).name}"), caption
        except (OSError, ValueError) as exc:
            return _placeholder(f"{caption} unreadable: {exc}"), caption
        if reference is None:
            base = np.zeros(mask.shape[:2], dtype=np.float32)
            target = _thumb_size(mask.shape[:2], size)
            base = _thumbnail(base, size)
        else:
            base = reference
            target = (reference.shape[1], reference.shape[0])
        pixels = _overlay(base, _mask_thumbnail(mask, target))
        if column == "anatomy_mask" and mask.shape[2] == 3:
            caption = "anatomy mask (R lungs · G heart · B aorta)"
        return _img(pixels, f"{caption} for {case['case_id']}"), caption
    return _placeholder("no condition"), "none"


def render_grid(run: RunFiles, models: Sequence[ModelRow], k: int, size: int = THUMB_PX) -> str:
    if run.cases is None:
        return f"<p>No image grid: {_e(rundir.CASES)} is missing from the run directory.</p>"
    names = [m.name for m in models]
    chosen = choose_grid_cases(run.cases, run.samples, names, k)
    if not chosen:
        return "<p>No cases to show.</p>"
    cases = run.cases.drop_duplicates("case_id").set_index("case_id", drop=False)
    picked = run.samples[run.samples["case_id"].isin(chosen)]
    # Sample 0 when present, else the lowest sample index the model has for that case.
    picked = picked.sort_values(["model", "case_id", "sample"]).drop_duplicates(["model", "case_id"])
    paths = {(r.model, r.case_id): (r.path, r.sample) for r in picked.itertuples(index=False)}
    failed: dict[tuple[str, str], str] = {}
    if run.failures is not None and not run.failures.empty:
        fails = run.failures[run.failures["case_id"].isin(chosen)]
        for r in fails.itertuples(index=False):
            failed.setdefault((r.model, r.case_id), f"failed at {r.stage}: {r.error}"[:MAX_ERROR_CHARS])

    head = "<th>case</th><th>reference</th><th>condition</th>" + "".join(
        f"<th>{_model_label(m)}</th>" for m in models
    )
    rows = []
    for case_id in chosen:
        case = cases.loc[case_id].to_dict()
        reference, why = _read_thumb(_present_path(case.get("image")), size)
        ref_cell = _img(reference, f"reference {case_id}") if reference is not None else _placeholder(why)
        cond_cell, cond_caption = _condition_cell(case, reference, size)
        meta = [f'<div class="case-id">{_e(case_id)}</div>']
        for column in ("group", "view", "labels"):
            value = _present_path(case.get(column))
            if value is not None:
                meta.append(f'<div class="sub">{_e(column)}: {_e(value)}</div>')
        prompt = _present_path(case.get("prompt"))
        if prompt is not None:
            short = prompt if len(prompt) <= 160 else prompt[:157] + "…"
            meta.append(f'<div class="prompt" title="{_e(prompt)}">“{_e(short)}”</div>')
        cells = [
            f'<th scope="row" class="case">{"".join(meta)}</th>',
            f"<td>{ref_cell}</td>",
            f'<td>{cond_cell}<div class="cap">{_e(cond_caption)}</div></td>',
        ]
        for m in models:
            entry = paths.get((m.name, case_id))
            if entry is None:
                reason = failed.get((m.name, case_id), "no sample for this case")
                cells.append(f"<td>{_placeholder(reason)}</td>")
                continue
            path = _present_path(entry[0])
            if path is not None and not Path(path).is_absolute():
                path = str(run.run_dir / path)  # suite-generated samples may be recorded run-relative
            thumb, why = _read_thumb(path, size)
            cell = (
                _img(thumb, f"{m.name} · {case_id} · sample {entry[1]}")
                if thumb is not None
                else _placeholder(why)
            )
            cells.append(f"<td>{cell}</td>")
        rows.append(f'<tr data-case="{_e(case_id)}">{"".join(cells)}</tr>')
    return (
        '<div class="grid-wrap"><table class="grid"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


# ------------------------------------------------------------------------------------------------
# Failures and provenance
# ------------------------------------------------------------------------------------------------


def render_failures(failures: pd.DataFrame | None, count: int) -> str:
    if not count:
        return "<p>No failures.</p>"
    if failures is None or failures.empty:
        return f"<p>{count} failure(s) recorded in {_e(rundir.RUN_JSON)}, but {_e(rundir.FAILURES)} is missing.</p>"
    shown = failures.head(FAILURE_ROWS)
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{_e(str(getattr(r, c))[:MAX_ERROR_CHARS])}</td>" for c in rundir.FAILURES_COLUMNS)
        + "</tr>"
        for r in shown.itertuples(index=False)
    )
    more = (
        f'<p class="small">… and {len(failures) - FAILURE_ROWS} more in {_e(rundir.FAILURES)}.</p>'
        if len(failures) > FAILURE_ROWS
        else ""
    )
    head = "".join(f"<th>{c}</th>" for c in rundir.FAILURES_COLUMNS)
    return f'<table class="plain failures"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{more}'


def _kv_table(items: Mapping[str, Any], formatter: Any = str) -> str:
    if not items:
        return '<p class="small">none recorded</p>'
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(formatter(v))}</td></tr>" for k, v in items.items())
    return f'<table class="plain kv">{rows}</table>'


def _report_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in REPORT_VERSIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _versions_table(recorded: Mapping[str, Any]) -> str:
    now = _report_versions()
    names = list(dict.fromkeys([*recorded, *now]))
    rows = "".join(
        f'<tr data-package="{_e(n)}"><th>{_e(n)}</th><td data-col="run">{_e(recorded.get(n, "—"))}</td>'
        f'<td data-col="report">{_e(now.get(n, "—"))}</td></tr>'
        for n in names
    )
    return (
        '<table class="plain kv versions"><thead><tr><th>package</th><th>run (run.json)</th>'
        f"<th>this report</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def describe_preprocessing(text: str) -> str:
    """``center-square/...;1ch;224px;[-1024,1024]float;outputs-v1`` (an evaluator's cache key) in words."""
    words, pipeline = [], []
    for part in (p.strip() for p in str(text).split(";")):
        if not part:
            continue
        if part.endswith("ch") and part[:-2].isdigit():
            words.append(f"{part[:-2]} channel(s)")
        elif part.endswith("px") and part[:-2].isdigit():
            words.append(f"{part[:-2]}×{part[:-2]} px")
        elif part.startswith("[") and "]" in part:
            words.append(f"values {part[: part.index(']') + 1]} {part[part.index(']') + 1 :]}".strip())
        elif part.startswith("outputs-"):
            words.append(f"output version {part}")
        else:
            pipeline.append(part)
    return "; ".join([*(["pipeline " + " · ".join(pipeline)] if pipeline else []), *words])


def _evaluator_provenance(evaluation: EvaluationInfo) -> str:
    if not evaluation.evaluators:
        return '<p class="small">No image evaluator networks were used.</p>'
    rows = []
    for role, d in evaluation.evaluators.items():
        sha = str(d.get("weights_sha256") or "—")
        prep = str(d.get("preprocessing") or "")
        rows.append(
            f'<tr data-evaluator="{_e(d.get("name", ""))}"><th>{_e(d.get("role", role))}</th>'
            f'<td data-col="name">{_e(d.get("name", ""))}</td>'
            f'<td data-col="source">{_e(d.get("source", ""))}</td>'
            f'<td data-col="weights">{_e(d.get("weights") or "—")}</td>'
            f'<td data-col="weights_sha256"><code>{_e(sha)}</code></td>'
            f'<td data-col="pin" class="{"warn" if is_demo(d) or d.get("pin") == "user-trust" else ""}">'
            f"{_e(pin_sentence(d))}</td>"
            f'<td data-col="preprocessing">{_e(describe_preprocessing(prep) or "—")}'
            f'<div class="sub"><code>{_e(prep)}</code></div></td></tr>'
        )
    return (
        '<div class="table-wrap"><table class="plain evaluators-provenance"><thead><tr><th>role</th>'
        "<th>name</th><th>source</th><th>weights file</th><th>weights sha256</th>"
        "<th>where the hash came from</th><th>input contract / preprocessing</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )


def _recorded(value: Any) -> str:
    return "not recorded" if value is None else str(value)


def _policy_rows(run: RunFiles, evaluation: EvaluationInfo) -> dict[str, str]:
    settings = run.settings
    policies = mapping(run.info.get("policies"))

    def pick(key: str) -> Any:
        # run.json's record first; else the config's setting (its default when the key is not written).
        return policies.get(key, getattr(settings.metrics, key) if settings.found else None)

    resize = pick("resize")
    resize_text = {
        "none": "none: a sample must have its reference's size (pixel metrics)",
        "to_reference": "to_reference: samples resized to the reference size before the pixel metrics",
    }.get(str(resize), str(resize)) if resize is not None else "not recorded"
    out = {
        "[metrics].resize": resize_text,
        "[metrics].pixel_range": _recorded(pick("pixel_range")),
        "[metrics].overlap_threshold": _recorded(pick("overlap_threshold")),
        "confidence intervals": _recorded(policies.get("ci") or None),
        "[metrics].group_by": ", ".join(map(str, policies.get("group_by") or settings.group_by))
        or "none",
    }
    refs = policies.get("self_reference_models")
    if refs:
        out["self-reference models"] = ", ".join(map(str, refs))
    for k in ("device", "dtype"):
        if evaluation.raw.get(k) not in (None, ""):
            out[f"evaluators {k}"] = str(evaluation.raw[k])
    return out


def _n_per_metric(run: RunFiles, models: Sequence[ModelRow], metrics: Sequence[MetricColumn]) -> str:
    index = summary_index(run.summary, "")
    # Per-class pathology columns share the macro metric's N: left out to keep the table compact.
    shown = [m for m in metrics if ":" not in m.name and any((r.name, m.name) in index.index for r in models)]
    if not shown:
        return '<p class="small">summary.csv has no all-cases rows.</p>'
    head = '<th class="model-col">model</th>' + "".join(
        f'<th data-col="{_e(m.name)}" title="{_e(m.name)}">{_e(m.label)}</th>' for m in shown
    )
    body = []
    for r in models:
        cells = []
        for m in shown:
            key = (r.name, m.name)
            # No value, no N: a NaN row (real's self-comparison) counts nothing.
            n = index.at[key, "n"] if key in index.index and not pd.isna(index.at[key, "value"]) else math.nan
            cells.append(f'<td data-col="{_e(m.name)}">{_e(int_or(n, "—"))}</td>')
        body.append(f'<tr data-model="{_e(r.name)}"><th>{_e(r.name)}</th>{"".join(cells)}</tr>')
    return (
        '<p class="small">Cases per model and metric in summary.csv (all cases); generated samples for the '
        'distribution metrics, ratings for the reader scores.</p><div class="table-wrap">'
        f'<table class="plain n-per-metric"><thead><tr>{head}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>'
    )


def render_provenance(
    run: RunFiles,
    models: Sequence[ModelRow] | None = None,
    metrics: Sequence[MetricColumn] | None = None,
    evaluation: EvaluationInfo | None = None,
    statistics: Mapping[str, str] | None = None,
) -> str:
    """Labelled provenance rows (hashes, versions, weights, preprocessing, N, timings), then the raw
    config and run.json blocks. ``statistics`` describes how the report's own statistics were drawn."""
    info = run.info
    evaluation = evaluation or EvaluationInfo.from_info(info)
    models = order_models(run) if models is None else models
    if metrics is None:
        metrics = metric_columns(run, run.settings.pixel_range, evaluation)
    versions = info.get("versions") if isinstance(info.get("versions"), Mapping) else {}
    timings = info.get("timings") if isinstance(info.get("timings"), Mapping) else {}
    labelled = {
        "config hash": ("config_hash", str),
        "cases hash": ("cases_hash", str),
        "started": ("started", format_time),
        "finished": ("finished", format_time),
        "cases": ("n_cases", str),
        "models": ("n_models", str),
        "samples": ("n_samples", str),
        "failures": ("n_failures", str),
        "run by xray-audit": ("xray_audit_version", str),
    }
    run_rows = {
        label: fmt(info[key]) for label, (key, fmt) in labelled.items() if info.get(key) not in (None, "")
    }
    run_rows["run directory"] = str(run.run_dir.resolve())
    run_rows["report by xray-audit"] = __version__
    run_rows.update(statistics or {})
    # The evaluation block is long and rendered in the results; here it is kept whole, folded away.
    shown = {"versions", "timings", "evaluation", "policies", "norberg", *(key for key, _ in labelled.values())}
    other = {
        k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in info.items() if k not in shown
    }
    config = (
        f"<pre>{_e(run.config_text)}</pre>"
        if run.config_text
        else f"<p>{_e(rundir.CONFIG_TOML)} is missing.</p>"
    )
    norberg = render_norberg_provenance(run.run_dir)
    evaluation_json = ""
    if isinstance(info.get("evaluation"), Mapping):
        evaluation_json = (
            '<details class="evaluation-json">'
            f"<summary>Evaluation ({_e(rundir.RUN_JSON)} “evaluation”)</summary>"
            f"<pre>{_e(json.dumps(info['evaluation'], indent=2))}</pre></details>"
        )
    return (
        f'<div class="cols"><div><h3>Run</h3>{_kv_table(run_rows)}</div>'
        f'<div><h3>Package versions</h3>{_versions_table(versions)}</div>'
        f"<div><h3>Timings</h3>{_kv_table(timings, format_seconds)}</div></div>"
        f'<h3 id="provenance-evaluators">Evaluators and weights</h3>{_evaluator_provenance(evaluation)}'
        + (f"<h3>Norberg-angle measurement</h3>{norberg}" if norberg else "")
        + f'<h3>Preprocessing and resize policy</h3>{_kv_table(_policy_rows(run, evaluation))}'
        f'<h3 id="provenance-n">N per metric</h3>{_n_per_metric(run, models, metrics)}'
        f"<h3>Study config ({_e(rundir.CONFIG_TOML)})</h3>{config}"
        + (f"<h3>Other {_e(rundir.RUN_JSON)} fields</h3>{_kv_table(other)}" if other else "")
        + evaluation_json
    )


# ------------------------------------------------------------------------------------------------
# Page
# ------------------------------------------------------------------------------------------------

CSS = """
:root { --fg:#1d1d1f; --muted:#6b6b70; --line:#e2e2e6; --accent:#4C72B0; --bg-soft:#f6f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 24px 32px 64px; max-width: 1500px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 18px 0 6px; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: var(--bg-soft); padding: 10px 12px; border-radius: 6px; overflow-x: auto; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 22px; color: var(--muted); margin: 6px 0 0; }
.meta b { color: var(--fg); font-weight: 600; }
.meta .bad b { color: #b3261e; }
nav { margin: 10px 0 0; font-size: 13px; } nav a { margin-right: 14px; color: var(--accent); }
table { border-collapse: collapse; }
table.summary { margin: 6px 0 8px; font-variant-numeric: tabular-nums; }
table.summary th, table.summary td { padding: 7px 12px; border-bottom: 1px solid var(--line); text-align: right;
  vertical-align: top; white-space: nowrap; }
table.summary thead th { background: var(--bg-soft); font-weight: 600; border-bottom: 2px solid #cfcfd6; }
table.summary th.model-col, table.summary tbody th { text-align: left; }
table.summary .arrow { color: var(--accent); font-weight: 700; }
table.summary .unit { font-weight: 400; color: var(--muted); font-size: 11px; }
table.summary .ci { color: var(--muted); font-size: 12px; }
table.summary .n { display: block; color: var(--muted); font-size: 10.5px; }
table.summary td.best { background: #eef5ea; }
table.summary td.na { color: #9a9aa0; text-align: center; }
tr.baseline { background: #fafaf7; } tr.baseline .model-name { font-style: italic; }
tr.real { border-top: 2px solid #cfcfd6; background: #f7f8fb; }
.sub { color: var(--muted); font-size: 11px; font-weight: 400; }
.badge { display: inline-block; font-size: 10.5px; font-weight: 600; padding: 1px 6px; border-radius: 9px;
  vertical-align: 1px; }
.badge.baseline { background: #efe9dc; color: #6d5a2c; } .badge.real { background: #e3e8f4; color: #34508a; }
.notes p { margin: 4px 0; color: #3a3a3f; max-width: 1100px; }
.callout { border-left: 4px solid #d4b46a; background: #fbf8f0; padding: 8px 12px; margin: 10px 0;
  max-width: 1100px; }
.checks { margin: 6px 0 0; padding-left: 18px; } .checks .ok { color: #2e6b34; } .checks .warn { color: #a5371d; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 10px 22px; }
figure.plot { margin: 0; }
.small { font-size: 12px; color: var(--muted); }
.grid-wrap { overflow-x: auto; }
table.grid th, table.grid td { padding: 4px 6px; vertical-align: top; text-align: center; }
table.grid thead th { font-weight: 600; font-size: 12px; border-bottom: 1px solid var(--line); }
table.grid th.case { text-align: left; max-width: 190px; font-weight: 400; }
table.grid .case-id { font-weight: 600; word-break: break-all; }
table.grid .prompt { color: var(--muted); font-size: 11px; font-style: italic; white-space: normal; }
table.grid img { display: block; margin: 0 auto; image-rendering: auto; background: #000; }
table.grid .cap { font-size: 10.5px; color: var(--muted); max-width: 170px; margin: 2px auto 0; }
.ph { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center; padding: 8px;
  background: repeating-linear-gradient(45deg, #f4f4f6, #f4f4f6 8px, #ececf0 8px, #ececf0 16px);
  color: #8a2b1d; font-size: 11px; overflow: hidden; word-break: break-word; border: 1px dashed #c9c9d0; }
table.plain th, table.plain td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; font-size: 12.5px; }
table.failures td:last-child { white-space: pre-wrap; word-break: break-word; max-width: 700px;
  font-family: ui-monospace, monospace; font-size: 11.5px; }
.cols { display: flex; flex-wrap: wrap; gap: 8px 48px; }
h4 { font-size: 13px; margin: 14px 0 4px; }
.result-table { margin: 8px 0 22px; } .result-table > p.small { margin: 0 0 4px; max-width: 1100px; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table.summary .by { font-weight: 400; color: var(--muted); font-size: 10.5px; margin-top: 1px;
  white-space: normal; overflow-wrap: anywhere; }
table.summary .flag { color: #b3261e; font-weight: 700; cursor: help; }
table.summary .pm { color: var(--muted); font-size: 12px; }
table.summary tr.band th { text-align: left; background: #eef0f5; font-size: 12.5px; padding: 5px 12px; }
table.per-class thead th { text-align: right; }
.demo-flag { display: inline-block; font-size: 10px; font-weight: 600; padding: 0 5px; border-radius: 8px;
  background: #fbe3df; color: #8a2b1d; }
.callout.warn { border-left-color: #c4412f; background: #fdf2f0; }
.callout ul.reasons { margin: 6px 0 0; padding-left: 18px; } .callout ul.reasons li { margin: 3px 0; }
.callout table.plain { margin-top: 6px; background: white; }
.warn-note { color: #a5371d; font-weight: 600; }
table.evaluators td { max-width: 360px; white-space: normal; } table.evaluators td.warn { color: #a5371d; }
table.evaluators code { white-space: normal; word-break: break-word; }
details.evaluation-json summary { cursor: pointer; font-weight: 600; margin: 14px 0 6px; }
details.group-column > summary { cursor: pointer; font-size: 15px; font-weight: 600; margin: 18px 0 6px; }
table.stats { font-variant-numeric: tabular-nums; margin: 4px 0 10px; }
table.stats td { white-space: nowrap; } table.stats td[data-col="warnings"], table.stats td[data-col="note"] {
  white-space: normal; max-width: 420px; }
table.stats .ci { color: var(--muted); font-size: 11.5px; } table.stats td.sig { font-weight: 600; }
table.stats td.warn { color: #a5371d; } table.stats td.na { color: #9a9aa0; }
table.stats.validity .n { display: block; color: var(--muted); font-size: 10.5px; }
details.paired-metric > summary, details.validity-per-class > summary { cursor: pointer; font-weight: 600;
  margin: 12px 0 4px; }
"""


def _unplotted_note(table_metrics: Sequence[MetricColumn], plot_metrics: Sequence[MetricColumn]) -> str:
    plotted = {m.name for m in plot_metrics}
    missing = [m.label for m in table_metrics if m.name not in plotted and ":" not in m.name]
    if not missing:
        return ""
    return (
        f" No plot for {_e(', '.join(missing))}: no per-case values "
        "(distribution metrics have one value per model)."
    )


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
    (``reports.comparison.run_paired_tests``, or a frame such as :func:`read_paired_tests` of a
    paired_tests.csv) are reused when given, otherwise computed here with ``seed`` (default
    ``[study].seed``) and ``resamples`` (default ``[metrics].bootstrap_resamples``), the run's settings
    (:class:`audit.rundir.RunSettings`) as the exports use them, so that the numbers match
    paired_tests.csv. Metrics with non-finite per-sample values are left out of the tests with a note
    (:func:`nonfinite_metrics`), whichever way the tests came.
    """
    from reports.comparison import PairedTests, run_paired_tests

    run = run_dir if isinstance(run_dir, RunFiles) else load_run(run_dir)
    settings = run.settings
    pixel_range = settings.pixel_range
    confidence = settings.confidence
    seed = settings.seed if seed is None else int(seed)
    resamples = settings.bootstrap_resamples if resamples is None else int(resamples)
    models = order_models(run)
    evaluation = EvaluationInfo.from_info(run.info)
    metrics = metric_columns(run, pixel_range, evaluation)
    # The tables show what summary.csv aggregated; plots show every metric with per-case values
    # (distribution-level metrics have none: one value per model).
    summarised = set(run.summary["metric"])
    table_metrics = [m for m in metrics if m.name in summarised]
    per_case = set(pd.unique(run.per_sample["metric"]))
    plot_metrics = [m for m in metrics if m.name in per_case]

    statistics: dict[str, str] = {}
    if paired is None:
        tests = run_paired_tests(run, seed=seed, resamples=resamples)
    elif isinstance(paired, PairedTests):
        tests = paired
    else:
        tests = PairedTests.given(run, paired)
    statistics["paired tests"] = tests.provenance
    # A frame read back from a file does not say how it was drawn: the page names the run's settings.
    shown_seed = seed if tests.seed is None else tests.seed
    shown_resamples = resamples if tests.resamples is None else tests.resamples
    reader_section = validity_section = ""
    table_run = run
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
            table_run = dataclasses.replace(run, summary=pd.concat([run.summary, rows], ignore_index=True))
            table_metrics += [MetricColumn(name, True, "1–5") for name in dict.fromkeys(rows["metric"])]
        reader_section = (
            '<section id="reader-study"><h2>Reader study</h2>'
            + render_reader_study(reader_stats, reader_ratings, models, confidence, reader_source)
            + "</section>"
        )
        points = validity_points(run.per_sample, reader_ratings, run.summary)
        validity = correlate_points(points)
        validity_section = (
            '<section id="metric-validity"><h2>Metric validity</h2>'
            + render_validity(validity, points, metrics, per_case)
            + "</section>"
        )
    ctx = TableContext(table_run, models, evaluation, confidence)
    groups_html = render_groups(ctx, table_metrics)

    name = settings.name or run.run_dir.resolve().name
    info = run.info
    n_cases = info.get("n_cases")
    if n_cases is None:
        n_cases = len(run.cases) if run.cases is not None else run.samples["case_id"].nunique()
    n_failures = len(run.failures) if run.failures is not None else int(info.get("n_failures") or 0)
    config_hash = str(info.get("config_hash") or "")
    date = format_time(info.get("finished") or info.get("started"))
    model_list = ", ".join(f'{_e(m.name)} <span class="sub">({_e(m.kind)})</span>' for m in models)
    meta = [
        f"<span>date <b>{_e(date)}</b></span>",
        f'<span title="{_e(config_hash)}">config <b><code>{_e(config_hash[:12] or "—")}</code></b></span>',
        f"<span>cases <b>{_e(n_cases)}</b></span>",
        f"<span>samples/case <b>{_e(settings.samples_per_case if settings.found else '—')}</b></span>",
        f"<span>seed <b>{_e(settings.seed if settings.found else '—')}</b></span>",
        f'<span class="{"bad" if n_failures else ""}">failures <b>{n_failures}</b></span>',
    ]
    failures_section = render_failures(run.failures, n_failures)
    norberg_html = render_norberg(run.run_dir, _figure_div, model_colours(models), run.cases)
    nav = [("results", "Results")]
    if groups_html:
        nav.append(("groups", "Results by group"))
    nav.append(("model-tests", "Model-vs-model tests"))
    if norberg_html:
        nav.append(("norberg", "Norberg angles"))
    if reader_section:
        nav += [("reader-study", "Reader study"), ("metric-validity", "Metric validity")]
    nav += [
        ("distributions", "Distributions"),
        ("images", "Images"),
        ("failures", f"Failures ({n_failures})"),
        ("provenance", "Provenance"),
    ]
    nav_html = "".join(f'<a href="#{anchor}">{_e(text)}</a>' for anchor, text in nav)
    # Reader scores and Norberg agreement are plotted in their own sections.
    unplotted = [
        m for m in table_metrics if not m.name.startswith(READER_PREFIX) and m.base not in NORBERG_METRICS
    ]
    provenance = render_provenance(table_run, models, table_metrics, evaluation, statistics)
    body = f"""
<header>
<h1>{_e(name)} <span class="sub" style="font-size:14px">xray-audit report</span></h1>
<div class="meta">{"".join(meta)}</div>
<div class="meta"><span>models: {model_list}</span></div>
<nav>{nav_html}</nav>
{phantom_callout() if is_phantom(run.cases) else ""}
</header>
<section id="results"><h2>Results per model</h2>
{render_results(ctx, table_metrics, settings)}
</section>
{f'<section id="groups"><h2>Results by group</h2>{groups_html}</section>' if groups_html else ""}
<section id="model-tests"><h2>Model-vs-model tests</h2>
{render_paired(tests.frame, metrics, tests.confidence, tests.skipped, shown_seed, shown_resamples)}
</section>
{f'<section id="norberg"><h2>Norberg angles</h2>{norberg_html}</section>' if norberg_html else ""}
{reader_section}
{validity_section}
<section id="distributions"><h2>Per-case distributions</h2>
<p class="small">One point per case (samples of a case averaged); the box spans the quartiles, the solid line is the
median and the dashed line the mean.{_unplotted_note(unplotted, plot_metrics)}</p>
{render_distributions(run, models, plot_metrics)}
</section>
<section id="images"><h2>Image grid</h2>
<p class="small">Reference | condition | sample 0 of each model, for {grid_cases} case(s) chosen deterministically
(by case id, spread over groups).</p>
{render_grid(run, models, grid_cases)}
</section>
<section id="failures"><h2>Failures</h2>{failures_section}</section>
<section id="provenance"><h2>Provenance</h2>{provenance}</section>
"""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(name)} · xray-audit report</title><style>{CSS}</style>"
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
