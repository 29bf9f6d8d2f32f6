"""The notes and callouts around the results tables: what each table's numbers mean, the metrics that
were not computed, demo evaluators, the sanity-baseline check and the evaluators table.

The notes under one table (:data:`TABLE_NOTES`) all take the table context, the run's settings and the
table's columns."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from audit import rundir
from audit.metrics import catalogue
from reports.format import finite, int_or, precise
from reports.provenance import is_demo
from reports.run import (
    ALL_CASES_KEY,
    DICE_MASK_METRICS,
    DICE_METRICS,
    FEATURE_ENTRY,
    FEATURE_METRICS,
    FRECHET_METRICS,
    METRIC_LABELS,
    PATHOLOGY_METRICS,
    PRDC_METRICS,
    READER_PREFIX,
    EvaluationInfo,
    MetricColumn,
    ModelRow,
    RunFiles,
    TableContext,
    default_unit,
    mapping,
    summary_index,
)
from reports.sections.common import escape
from reports.sections.summary_table import class_order

# The privacy audit's metrics (audit.metrics.catalogue, family privacy).
PRIVACY_NAMES = frozenset(catalogue.names(family="privacy"))


def general_notes(ctx: TableContext, settings: rundir.RunSettings, names: set[str]) -> str:
    resamples = settings.bootstrap_resamples if settings.found else None
    notes = [
        "↑ higher is better, ↓ lower is better. Each cell is the mean over cases with its "
        f"{ctx.confidence:.0%} percentile-bootstrap confidence interval"
        + (
            " (the nearest-training distances are medians; AUCs and the set-level privacy metrics are one "
            "estimate from the whole set; hover a cell for which)"
            if names & PRIVACY_NAMES
            else ""
        )
        + (f" ({escape(resamples)} resamples)" if resamples is not None else "")
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
            "<b>real</b> is the reference set itself, shown last as the upper bound"
            + (
                " (in the privacy columns it is the calibration instead: held-out patients the generator "
                "never saw, so its memorised share sits at the quantile by construction)"
                if names & PRIVACY_NAMES
                else ""
            )
            + ". Paired metrics of "
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


def paired_notes(ctx: TableContext, settings: rundir.RunSettings, columns: Sequence[MetricColumn]) -> str:
    names = {m.name for m in columns}
    pixel_range = settings.pixel_range
    notes = []
    if names & {"mse", "mae", "psnr"}:
        notes.append(
            f"Pixel errors are computed on intensities scaled to [0, {pixel_range:g}] "
            f"(<code>[metrics] pixel_range = {pixel_range:g}</code>): MSE in {escape(default_unit('mse', pixel_range))}, "
            f"MAE in {escape(default_unit('mae', pixel_range))}, PSNR in dB."
        )
    if settings.resize == "to_reference":
        notes.append(
            'Samples were resized to the reference size before comparison (<code>resize = "to_reference"</code>).'
        )
    if any(n.startswith("overlap_") for n in names) and settings.found:
        notes.append(
            f"Overlap metrics binarise at threshold {escape(settings.overlap_threshold)} "
            "(<code>[metrics] overlap_threshold</code>)."
        )
    return "".join(f"<p>{n}</p>" for n in notes)


def clinical_notes(ctx: TableContext, settings: rundir.RunSettings, columns: Sequence[MetricColumn]) -> str:
    names = {m.name for m in columns}
    ev = ctx.evaluation
    notes = []
    if names & set(PATHOLOGY_METRICS):
        classes = ev.classes or class_order(
            ev, (n for n in ctx.run.summary["metric"] if n.startswith("pathology_auc:"))
        )
        if classes:
            shown = ", ".join(classes)
            notes.append(
                "AUC and F1 score the classifier's outputs on each model's images against the case "
                "labels; the columns are the unweighted (macro) mean over the "
                f"{len(classes)} class(es) scored: {escape(shown)}."
                + (" With one class the macro value is that class's value." if len(classes) == 1 else "")
            )
        policy = str(ev.pathology.get("threshold_policy") or "")
        thresholds = mapping(ev.pathology.get("thresholds"))
        if policy or thresholds:
            thr = ", ".join(
                f"{c} {precise(v)}" if finite(v) is not None else f"{c} {v}" for c, v in thresholds.items()
            )
            notes.append(
                f"F1 threshold policy: {escape(policy or 'not recorded')}"
                + (f". Thresholds: {escape(thr)}." if thr else ".")
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
            f"<tr><td>{escape(group)}</td><td>{escape(METRIC_LABELS.get(metric, metric))}</td><td>{escape(cls)}</td>"
            f"<td>{escape(reason)}</td><td>{escape(who)}</td></tr>"
        )
    return (
        '<div class="callout skipped"><b>Skipped pathology classes.</b> A class with only one label value '
        "among the cases (all positive or all negative) has no AUC or F1; it is left out of the macro mean "
        "for that model and group:"
        '<table class="plain skipped"><thead><tr><th>group</th><th>metric</th><th>class</th><th>reason</th>'
        f"<th>models</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def mask_notes(ctx: TableContext, settings: rundir.RunSettings, columns: Sequence[MetricColumn]) -> str:
    if not columns:
        return ""
    return (
        "<p>Mask Dice compares the segmenter's masks on each generated image with the case's input anatomy "
        "mask (cases without one are left out): does the image follow its condition? For real it is the "
        "segmenter's own agreement with the masks, the best a model can reach with this evaluator.</p>"
    )


def distribution_notes(
    ctx: TableContext, settings: rundir.RunSettings, columns: Sequence[MetricColumn]
) -> str:
    ev = ctx.evaluation
    names = {m.name for m in columns}
    by_name = {m.name: m for m in columns}
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
        f"{label} {escape(by_name[m].evaluator)}"
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
            f"(cells marked ⚠; {escape(cases)}). "
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
                f"KID is the mean ± std over {escape('/'.join(subsets))} random subsets of "
                f"{escape('/'.join(sizes))} samples per set"
            )
            clamped = [k for k in kids if k.get("clamped") is True]
            if clamped:
                requested = sorted({int_or(k.get("requested_subset_size")) for k in clamped})
                text += (
                    f"; the requested subset size {escape('/'.join(requested))} "
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
            + (f" use k = {escape('/'.join(ks))} nearest neighbours" if ks else "")
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
        notes.append(f"Not computed (hover the — for the reason): {escape(', '.join(errors))}.")
    return "".join(f"<p>{n}</p>" for n in notes)


def render_unavailable(evaluation: EvaluationInfo) -> str:
    """The requested metrics that were not computed, grouped by reason: impossible to overlook."""
    if not evaluation.unavailable:
        return ""
    by_reason: dict[str, list[str]] = {}
    for metric, reason in evaluation.unavailable.items():
        by_reason.setdefault(reason, []).append(metric)
    items = "".join(
        f"<li><b>{escape(', '.join(METRIC_LABELS.get(m, m) for m in metrics))}</b> "
        f'<span class="sub">({escape(", ".join(metrics))})</span>: {escape(reason)}</li>'
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
        f"<li><b>{escape(d.get('name', '?'))}</b> ({escape(d.get('role', ''))})"
        + (f": {escape(d.get('note'))}" if d.get("note") else "")
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
        weights = escape(d.get("weights") or "—")
        if sha:
            weights += (
                f'<div class="sub" title="sha256 {escape(sha)}">sha256 <code>{escape(sha[:12])}</code></div>'
            )
        source = escape(d.get("source", ""))
        if is_demo(d):
            source = f'<span class="demo-flag">{source}</span>'
        note = str(d.get("note") or "")
        rows.append(
            f'<tr data-evaluator="{escape(name)}"><td>{escape(d.get("role", role))}</td><td><b>{escape(name)}</b>'
            f'<div class="sub">{escape(", ".join(produced.get(name, [])))}</div></td>'
            f"<td>{escape(d.get('label', ''))}</td><td>{source}</td><td>{weights}</td>"
            f"<td><code>{escape(d.get('preprocessing', ''))}</code></td>"
            f'<td class="{"warn" if note and is_demo(d) else ""}">{escape(note)}</td></tr>'
        )
    raw = evaluation.raw
    extra = ", ".join(
        f"{k} <code>{escape(raw[k])}</code>"
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
            # Privacy metrics measure closeness to the training set, not quality: a degraded held-out
            # image moving away from it is what should happen, not a metric failing the check.
            if metric.higher_is_better is None or metric.base in PRIVACY_NAMES:
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
                f'<li class="ok">✓ {escape(degradation)}: {escape(", ".join(good))} worsen with the level</li>'
            )
        for text in bad:
            lines.append(f'<li class="warn">⚠ {escape(degradation)}: {escape(text)}</li>')
    return f'<ul class="checks">{"".join(lines)}</ul>' if lines else ""


def _copy_note(models: Sequence[ModelRow]) -> str:
    if not any(m.kind == "training-copy" for m in models):
        return ""
    return (
        " Rows of kind <code>training-copy</code> are training images of the generator plus a little "
        "noise: the privacy audit must flag them as copies, and their paired metrics compare another "
        "patient with the reference."
    )


def baseline_callout(run: RunFiles, models: Sequence[ModelRow], metrics: Sequence[MetricColumn]) -> str:
    if not any(m.is_baseline for m in models):
        return ""
    return (
        '<div class="callout baseline-note"><b>Sanity baselines.</b> Rows marked '
        '<span class="badge baseline">sanity baseline</span> are not generative models: they are '
        "deterministic, known degradations of the reference images (kind <code>degrade</code>). "
        "They calibrate the metrics: more damage (a higher level) should rank worse. A generator "
        "that scores below a mild degradation is far from the references; a metric that does not "
        "get worse as the level rises is broken or insensitive to that damage."
        + _copy_note(models)
        + _monotonicity(run, models, metrics)
        + "</div>"
    )


TableNotes = Callable[[TableContext, rundir.RunSettings, Sequence[MetricColumn]], str]
# The notes under each results table (reports.run.RESULT_TABLES ids); the other tables have none.
TABLE_NOTES: dict[str, TableNotes] = {
    "paired": paired_notes,
    "clinical": clinical_notes,
    "mask": mask_notes,
    "distribution": distribution_notes,
}
