"""The "Results per model" section: one table per metric family, per-class pathology, notes, evaluators."""

from __future__ import annotations

from collections.abc import Sequence

from audit import rundir
from reports.run import PATHOLOGY_METRICS, MetricColumn, TableContext, split_tables
from reports.sections import result_notes
from reports.sections.base import PageContext, Section
from reports.sections.common import escape
from reports.sections.summary_table import class_order, render_per_class, summary_table

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
    "privacy": "Each sample against its nearest image of the generator's training set (<code>[privacy]</code>); "
    "the <b>real</b> row is the held-out real images, which calibrate the thresholds. Histograms and the "
    'closest pairs are in <a href="#privacy">Privacy and memorisation</a>.',
    "other": "Metrics this version of the report does not group.",
}


def render_results(ctx: TableContext, metrics: Sequence[MetricColumn], settings: rundir.RunSettings) -> str:
    """The results section's body: callouts, one table per family, per-class pathology, notes, evaluators."""
    ev = ctx.evaluation
    parts = [result_notes.render_unavailable(ev), result_notes.render_demo_warning(ev)]
    tables = split_tables(metrics)
    for table_id, heading, columns in tables:
        write_notes = result_notes.TABLE_NOTES.get(table_id)
        notes = write_notes(ctx, settings, columns) if write_notes else ""
        parts.append(
            f'<div class="result-table" data-table="{table_id}" id="results-{table_id}">'
            f'<h3>{escape(heading)}</h3><p class="small">{TABLE_INTROS[table_id]}</p>'
            f'<div class="table-wrap">{summary_table(ctx, columns)}</div>'
            f'<div class="notes">{notes}</div></div>'
        )
    per_class = [m for m in metrics if ":" in m.name and m.base in PATHOLOGY_METRICS]
    classes = class_order(ev, (m.name for m in per_class))
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
        f'<div class="notes">{result_notes.general_notes(ctx, settings, names)}'
        f"{result_notes.baseline_callout(ctx.run, ctx.models, main)}</div>"
    )
    parts.append(result_notes.render_evaluators(ev))
    return "".join(parts)


def render(ctx: PageContext) -> str:
    # Blank lines around the body: the page's layout since the sections were one f-string.
    return f"\n{render_results(ctx.tables, ctx.table_metrics, ctx.settings)}\n"


SECTION = Section("results", "Results", "Results per model", render)
