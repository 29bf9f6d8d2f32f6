"""The "Reader study" section: mean scores, score distributions, the mixed-effects and ordinal fits,
inter- and intra-reader agreement and the real-or-synthetic question
(:class:`reports.reader_stats.ReaderStatistics`)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from reports.format import fixed, format_estimate, format_p, int_or, precise, sig, to_float
from reports.run import ModelRow, as_bool
from reports.sections.base import PageContext, Section
from reports.sections.common import (
    cell_text,
    escape,
    estimate_text,
    figure_div,
    model_label,
    stat_table,
    td,
)

if TYPE_CHECKING:  # reader_stats pulls in scipy.stats; the page imports it only with a reader study
    from reports.reader_stats import ReaderStatistics

# ColorBrewer RdYlGn, 5 classes: score 1 (red) to 5 (green).
SCORE_COLOURS = ("#d7191c", "#fdae61", "#e6d96a", "#a6d96a", "#1a9641")


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
        cells = [f'<th scope="row">{model_label(model)}</th>']
        for criterion in criteria:
            if (name, criterion) not in index.index:
                cells.append('<td class="na" data-criterion="' + escape(criterion) + '">—</td>')
                continue
            r = index.loc[(name, criterion)]
            main, ci = format_estimate(to_float(r["mean"]), to_float(r["ci_low"]), to_float(r["ci_high"]))
            detail = f"n={int(r['n_ratings'])} · {int(r['n_readers'])} readers · {int(r['n_items'])} items"
            tip = (
                f"{name} · {criterion}: mean {precise(to_float(r['mean']))}; {confidence:.0%} CI "
                f"[{precise(to_float(r['ci_low']))}, {precise(to_float(r['ci_high']))}]; "
                f"{int(r['n_cases'])} cases"
            )
            cells.append(
                f'<td data-criterion="{escape(criterion)}" title="{escape(tip)}"><span class="v">{escape(main)}</span> '
                f'<span class="ci">{escape(ci)}</span><span class="n">{escape(detail)}</span></td>'
            )
        body.append(f'<tr class="{cls}" data-model="{escape(name)}">{"".join(cells)}</tr>')
    head = '<th class="model-col">model</th>' + "".join(
        f'<th data-criterion="{escape(c)}">{escape(c)} <span class="arrow">↑</span>'
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
        div = figure_div(
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
        parts.append(f'<figure class="plot reader-dist" data-criterion="{escape(criterion)}">{div}</figure>')
    return '<div class="plots">' + "".join(parts) + "</div>"


def _fit_warnings(criterion: str, rows: pd.DataFrame) -> str:
    """One fit per criterion: its warnings (the same on every model row) said once."""
    texts = list(dict.fromkeys(t for t in map(cell_text, rows["warnings"]) if t))
    if not texts:
        return ""
    return (
        f'<div class="callout warn fit-warnings" data-criterion="{escape(criterion)}"><b>Fit warnings</b> '
        f'({escape(criterion)}): <span data-col="warnings">{escape("; ".join(texts))}</span></div>'
    )


def _by_model_order(frame: pd.DataFrame, models: Sequence[ModelRow]) -> pd.DataFrame:
    rank = {name: i for i, name in enumerate(_reader_model_order(frame["model"], models))}
    return frame.sort_values(
        ["criterion", "model"], key=lambda s: s.map(rank) if s.name == "model" else s, kind="stable"
    )


def _mixed_block(mixed: pd.DataFrame, models: Sequence[ModelRow], confidence: float, reference: str) -> str:
    if mixed.empty:
        return (
            f'<p class="small">Not fitted: it needs ratings of {escape(reference)} and at least one other '
            "model.</p>"
        )
    parts = []
    for criterion, rows in _by_model_order(mixed, models).groupby("criterion", sort=True):
        first = rows.iloc[0]
        converged = as_bool(first["converged"])
        facts = (
            f'<p class="small mixed-facts" data-criterion="{escape(criterion)}">{escape(reference)} mean (intercept) '
            f'<span data-col="reference_mean">{escape(sig(first["reference_mean"]))}</span>; '
            "variance components: "
            f'reader <span data-col="var_reader">{escape(sig(first["var_reader"]))}</span>, '
            f'case <span data-col="var_case">{escape(sig(first["var_case"]))}</span>, '
            f'residual <span data-col="var_residual">{escape(sig(first["var_residual"]))}</span>; '
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
            f'<tr data-criterion="{escape(criterion)}" data-model="{escape(r.model)}"><th>{escape(r.model)}</th>'
            + td(
                "coef",
                estimate_text(r.coef, r.ci_low, r.ci_high),
                f"coefficient {precise(to_float(r.coef))}",
            )
            + td("se", escape(sig(r.se)))
            + td("pvalue", escape(format_p(r.pvalue)))
            + "</tr>"
            for r in rows.itertuples(index=False)
        ]
        head = ["model", f"difference to {escape(reference)} [{confidence:.0%} CI]", "SE", "p"]
        parts.append(
            f"<h4>{escape(criterion)}</h4>{facts}"
            + stat_table(head, body, "mixed")
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
        f'<tr data-criterion="{escape(r.criterion)}" data-model="{escape(r.model)}"><th>{escape(r.criterion)}</th>'
        f"<th>{escape(r.model)}</th>"
        + td(
            "coef", estimate_text(r.coef, r.ci_low, r.ci_high), f"log odds ratio {precise(to_float(r.coef))}"
        )
        + td("se", escape(sig(r.se)))
        + td("pvalue", escape(format_p(r.pvalue)))
        + td("n_ratings", escape(r.n_ratings))
        + td(
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
        f"log odds ratio vs {escape(reference)} [{confidence:.0%} CI]",
        "SE",
        "p",
        "ratings",
        "converged",
    ]
    warnings_html = "".join(_fit_warnings(c, rows) for c, rows in ordinal.groupby("criterion", sort=True))
    return stat_table(head, body, "ordinal") + warnings_html


def _agreement_block(agreement: pd.DataFrame) -> str:
    if agreement.empty:
        return '<p class="small">No ratings.</p>'
    body = []
    for r in agreement.itertuples(index=False):
        note = "" if not isinstance(r.note, str) else r.note
        body.append(
            f'<tr data-criterion="{escape(r.criterion)}"><th>{escape(r.criterion)}</th>'
            + td("icc2_1", estimate_text(r.icc2_1, r.icc2_1_ci_low, r.icc2_1_ci_high))
            + td("icc2_k", estimate_text(r.icc2_k, r.icc2_k_ci_low, r.icc2_k_ci_high))
            + td(
                "icc_n_items",
                escape(int_or(r.icc_n_items, "—")),
                "items every reader rated (ICC needs a complete table)",
            )
            + td("kappa_quadratic", escape(fixed(r.kappa_quadratic)))
            + td("n_reader_pairs", escape(int_or(r.n_reader_pairs, "—")))
            + td("alpha_ordinal", escape(fixed(r.alpha_ordinal)))
            + td("n_items", escape(int_or(r.n_items, "—")))
            + td("n_readers", escape(int_or(r.n_readers, "—")))
            + td("n_ratings", escape(int_or(r.n_ratings, "—")))
            + td("note", escape(note), cls="warn" if note else "")
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
    return stat_table(head, body, "agreement")


def _intra_block(intra: pd.DataFrame) -> str:
    if intra.empty:
        return '<p class="small">No re-reads in this study (no item was read twice by the same reader).</p>'
    body = []
    for r in intra.itertuples(index=False):
        body.append(
            f'<tr data-criterion="{escape(r.criterion)}" data-reader="{escape(r.reader)}"><th>{escape(r.reader)}</th>'
            f"<th>{escape(r.criterion)}</th>"
            + td("kappa_quadratic", escape(fixed(r.kappa_quadratic)))
            + td("exact_agreement", escape(fixed(r.exact_agreement)))
            + td("n_pairs", escape(int_or(r.n_pairs, "—")))
            + "</tr>"
        )
    head = ["reader", "criterion", "κ (quadratic), read 1 vs 2", "exact agreement", "re-read pairs"]
    return stat_table(head, body, "intra")


def _turing_block(turing: pd.DataFrame) -> str:
    if turing.empty:
        return '<p class="small">The study asked no real-or-synthetic question.</p>'
    body = []
    for r in turing.itertuples(index=False):
        body.append(
            f'<tr data-reader="{escape(r.reader)}"><th>{escape(r.reader)}</th>'
            + td("n", escape(int_or(r.n, "—")))
            + td("n_synthetic", escape(int_or(r.n_synthetic, "—")))
            + td("n_real", escape(int_or(r.n_real, "—")))
            + td("accuracy", escape(fixed(r.accuracy)))
            + td("sensitivity", escape(fixed(r.sensitivity)))
            + td("specificity", escape(fixed(r.specificity)))
            + td("auc", escape(fixed(r.auc)))
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
        f"tell real from synthetic</b>, 1 that they always can.{escape(verdict)}</p>"
    )
    head = ["reader", "answers", "synthetic", "real", "accuracy", "sensitivity", "specificity", "AUC"]
    return text + stat_table(head, body, "turing")


def render_reader_study(
    stats: ReaderStatistics,
    ratings: pd.DataFrame,
    models: Sequence[ModelRow],
    confidence: float,
    source: str = "",
) -> str:
    """The reader-study section from :class:`reports.reader_stats.ReaderStatistics` and the export."""
    from reports.reader_stats import REFERENCE, split_reads

    scored, turing = split_reads(ratings)
    first = scored[scored["read_number"] == 1]
    n_readers = int(pd.concat([scored["reader"], turing["reader"]]).nunique())
    n_items = int(pd.concat([scored["item"], turing["item"]]).nunique())
    n_reread = int((scored["read_number"] == 2).sum())
    intro = (
        f'<p class="small">{n_readers} reader(s), {n_items} rated item(s), {len(first)} first-read score(s)'
        + (f", {n_reread} re-read score(s)" if n_reread else "")
        + (f" from <code>{escape(source)}</code>" if source else "")
        + ". Calibration (practice) items and flags without answers are left out; every table but the "
        "intra-reader one uses first reads only. Scores are 1 (worst) to 5 (best).</p>"
    )
    return (
        intro + "<h3>Mean score per model and criterion</h3>"
        f'<p class="small">Mean 1–5 score with a {confidence:.0%} two-way bootstrap CI that resamples '
        "readers and items (it generalises to new readers and new cases); n ratings · readers · items.</p>"
        + _reader_scores_table(stats.scores, models, confidence)
        + "<h3>Score distributions</h3>"
        + (_score_distribution_figures(first, models) if len(first) else '<p class="small">No scores.</p>')
        + '<h3 id="reader-mixed">Mixed-effects model</h3>'
        '<p class="small"><code>score ~ model + (1|reader) + (1|case)</code> per criterion (statsmodels '
        f"MixedLM, REML, crossed random intercepts): each model's difference to {escape(REFERENCE)} in score "
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
        "ratings.</p>" + _agreement_block(stats.agreement) + "<h3>Intra-reader agreement</h3>"
        '<p class="small">Each reader\'s first and second read of the same item (re-reads after a '
        "washout).</p>"
        + _intra_block(stats.intra)
        + "<h3>Real or synthetic?</h3>"
        + _turing_block(stats.turing)
    )


def render(ctx: PageContext) -> str:
    reader = ctx.reader
    if reader is None:
        return ""
    return render_reader_study(reader.stats, reader.ratings, ctx.models, ctx.confidence, reader.source)


SECTION = Section("reader-study", "Reader study", "Reader study", render)
