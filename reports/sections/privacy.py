"""The "Privacy and memorisation" section: how close the samples come to the generator's training
images (from ``[privacy]``; absent without privacy.parquet).

What the audit did (run.json's ``"privacy"`` record: evaluator, distance, thresholds), a table per
model (memorised share with its CI, what flagged it, authenticity, privacy AUC, re-ID scores), the
distance histograms of every model against the held-out real images that calibrate the thresholds,
and the closest (sample, training image) pairs as thumbnails. With ``show_training_images = false``
no training pixel is read: pairs are named by training case id. Data: :mod:`reports.privacy`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reports.privacy import (
    AGAINST_REAL,
    CALIBRATED,
    CALIBRATION_NOTE,
    CLOSEST_PAIRS,
    HIDDEN_NOTE,
    SPACES,
    PrivacyFiles,
    closest_pairs,
    display_name,
    histogram_bins,
    histogram_markers,
    model_table,
    pair_images,
    pair_models,
    pixel_match,
    reference_names,
    sample_path,
)
from reports.run import ModelRow
from reports.sections.base import PageContext, Section
from reports.sections.common import escape, estimate_text, figure_div, model_label, stat_table, typed_array
from reports.thumbnail import data_uri

THUMB_PX = 160
SPACE_TEXT = {
    "nn_distance": "feature space",
    "nn_distance_pixel": "pixel space",
}
AUC_NOTE = (
    "privacy AUC: P(a sample's nearest-training distance > a held-out real image's) + ½ P(equal), in "
    "feature space. 0.5 = the samples are as far from the training set as unseen patients are; below "
    "0.5 = closer to the training images than held-out patients are (memorisation); above 0.5 is no "
    "privacy risk but a sign the samples are off the training distribution."
)


def _share(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.3f}"


def _distance(value: Any) -> str:
    return "—" if value is None or not math.isfinite(float(value)) else f"{float(value):.4g}"


def _facts(privacy: PrivacyFiles) -> str:
    info = privacy.info
    n_training = info.n_training
    if n_training is None and privacy.training is not None:
        n_training = len(privacy.training)
    q = info.quantile
    q_text = f"{q:g}" if q is not None else "—"
    rows = [
        ("feature evaluator", f"<code>{escape(info.features or '—')}</code>"),
        (
            "feature distance",
            escape(
                {"cosine": "cosine, 1 − cos(a, b)", "l2": "L2 / √dimensions"}.get(
                    info.metric, info.metric or "—"
                )
            ),
        ),
        (
            "pixel distance",
            escape(
                "L2 / √pixels on [0, 1] images, centre-square cropped"
                + (f" and resized to {info.pixel_size}×{info.pixel_size}" if info.pixel_size else "")
            ),
        ),
        ("calibration quantile", escape(q_text)),
        (
            "threshold level per space",
            escape(f"{info.level:.3g}" if info.level is not None else "—"),
        ),
        ("threshold (features)", escape(_distance(info.thresholds.get("features")))),
        ("threshold (pixels)", escape(_distance(info.thresholds.get("pixels")))),
        ("training images", escape(n_training if n_training is not None else "—")),
        ("neighbours kept (k)", escape(info.k if info.k is not None else "—")),
        (
            "re-ID model",
            f"<code>{escape(info.reid_model[:12])}…</code>" if info.reid_model else "none",
        ),
    ]
    body = "".join(f'<tr data-fact="{escape(k)}"><th>{escape(k)}</th><td>{v}</td></tr>' for k, v in rows)
    return f'<div class="table-wrap"><table class="plain privacy-facts"><tbody>{body}</tbody></table></div>'


def _label(model: ModelRow, quantile: float | None, is_reference: bool) -> str:
    if not is_reference:
        return model_label(model)
    q = f"{quantile:g}" if quantile is not None else "the quantile"
    return (
        f'<span class="model-name">{escape(model.name)}</span> <span class="badge real" title="the held-out '
        'real images: their own nearest-training distances set the thresholds">calibration reference</span>'
        f'<div class="sub">held-out patients; ≈ {escape(q)} of them flagged by either space, by construction</div>'
    )


def _cell(col: str, content: str, value: float, title: str = "") -> str:
    attrs = f' data-col="{escape(col)}"'
    if math.isfinite(value):
        attrs += f' data-value="{value!r}"'
    if title:
        attrs += f' title="{escape(title)}"'
    return f"<td{attrs}>{content}</td>"


def _estimate(record: Mapping[str, Any], metric: str, fallback: float) -> tuple[str, float]:
    """summary.csv's value with its CI when there is one, else the share from privacy.parquet."""
    value = record[metric]
    if math.isfinite(value):
        return estimate_text(value, record[f"{metric}_ci_low"], record[f"{metric}_ci_high"]), value
    return escape(_share(fallback)), fallback


def _model_rows(
    privacy: PrivacyFiles, ctx_models: Sequence[ModelRow], summary: Any
) -> tuple[list[str], list[str]]:
    by_name = {m.name: m for m in ctx_models}
    references = reference_names(ctx_models)
    table = model_table(privacy, summary, [m.name for m in ctx_models], references)
    reid = privacy.has_reid
    head = [
        "model",
        "samples",
        "memorised ↓",
        "flagged by features only",
        "by pixels only",
        "by both",
        "authenticity ↑",
        "privacy AUC (0.5 ideal)",
        "α-precision ↑",
        "β-recall ↑",
    ]
    if reid:
        head += ["re-ID score ↓", "re-ID score max ↓"]
    rows = []
    for record in table.to_dict("records"):
        model = by_name.get(record["model"], ModelRow(record["model"], "unknown", {}))
        is_real = model.name in references
        cls = "real" if is_real else "baseline" if model.is_baseline else "generator"
        memorised, _ = _estimate(record, "memorised_fraction", record["memorised"])
        memorised += f'<div class="sub">{record["flagged"]} of {record["n"]} flagged</div>'
        authentic, authentic_value = _estimate(record, "authenticity", record["authentic"])
        against_real = {}
        for metric in AGAINST_REAL:
            value = record[metric]
            text = estimate_text(value, record[f"{metric}_ci_low"], record[f"{metric}_ci_high"])
            if is_real and metric not in CALIBRATED:
                text, value = '<span title="the held-out images compared with themselves">—</span>', math.nan
            elif is_real:
                text = f'<span title="{escape(CALIBRATION_NOTE)}">{text}</span>'
            against_real[metric] = (text, value)
        cells = [
            f'<th scope="row">{_label(model, privacy.info.quantile, is_real)}</th>',
            _cell("n", escape(record["n"]), float(record["n"])),
            _cell(
                "memorised", memorised, record["memorised"], "flagged share: a distance below its threshold"
            ),
            *(
                _cell(f"by_{kind}", escape(_share(record[f"by_{kind}"])), record[f"by_{kind}"])
                for kind in ("features", "pixels", "both")
            ),
            _cell("authentic", authentic, authentic_value),
            *(_cell(metric, *against_real[metric]) for metric in AGAINST_REAL),
        ]
        if reid:
            for metric in ("reid_score", "reid_score_max"):
                text, value = _estimate(record, metric, record[metric])
                cells.append(_cell(metric, text, value))
        rows.append(f'<tr class="{cls}" data-model="{escape(model.name)}">{"".join(cells)}</tr>')
    return head, rows


def histogram_traces(
    privacy: PrivacyFiles, column: str, models: Sequence[ModelRow]
) -> tuple[list[dict[str, Any]], dict[str, float] | None]:
    """Overlaid histogram traces of ``column`` per model on shared bins, the real rows drawn last as the
    reference outline; and those bins."""
    bins = histogram_bins(privacy, column)
    if bins is None:
        return [], None
    markers = histogram_markers(models)
    rows = privacy.rows
    traces = []
    references = reference_names(models)
    names = [m.name for m in models]
    for name in [*names, *(n for n in dict.fromkeys(rows["model"]) if n not in names)]:
        values = rows.loc[rows["model"] == name, column].to_numpy(np.float64)
        values = values[np.isfinite(values)]
        if not values.size:
            continue
        trace: dict[str, Any] = {
            "type": "histogram",
            "x": typed_array(values, "f4"),
            "name": html.escape(display_name(name, models)),
            "xbins": bins,
            "autobinx": False,
            "histnorm": "probability",
            "hovertemplate": "%{x}<br>%{y:.3f} of the samples<extra>%{fullData.name}</extra>",
        }
        trace["marker"] = markers.get(name, {"color": "#4C72B0"})
        if name not in references:
            trace["opacity"] = 0.55
        traces.append((name in references, trace))
    # The reference last, so its outline is drawn over the filled bars.
    traces = [t for _, t in sorted(traces, key=lambda pair: pair[0])]
    return traces, bins


def _histogram(privacy: PrivacyFiles, column: str, models: Sequence[ModelRow], i: int) -> str:
    traces, _ = histogram_traces(privacy, column, models)
    space = SPACE_TEXT[column]
    if not traces:
        return f'<figure class="plot empty" data-space="{column}"><p class="small">No finite {space} distances.</p></figure>'
    threshold = privacy.info.threshold(column)
    layout: dict[str, Any] = {}
    if threshold is not None:
        layout["shapes"] = [
            {"type": "line", "x0": threshold, "x1": threshold, "yref": "paper", "y0": 0, "y1": 1,
             "line": {"color": "#b3261e", "width": 2, "dash": "dash"}}
        ]  # fmt: skip
        layout["annotations"] = [
            {"x": threshold, "y": 1, "yref": "paper", "text": "threshold", "showarrow": False,
             "xanchor": "left", "yanchor": "bottom", "font": {"color": "#b3261e", "size": 11}}
        ]  # fmt: skip
    kind = (privacy.info.metric or "feature") if column == "nn_distance" else "L2 / √pixels"
    div = figure_div(
        traces,
        f"privacy-hist-{i}",
        height=340,
        barmode="overlay",
        margin={"l": 60, "r": 20, "t": 40, "b": 60},
        title={"text": html.escape(f"Nearest-training distance, {space}"), "x": 0.01, "font": {"size": 15}},
        xaxis={"title": {"text": html.escape(f"distance ({kind}); lower = closer to a training image")}},
        yaxis={"title": {"text": "share of the model's samples"}, "gridcolor": "#e5e5e5"},
        legend={"orientation": "h", "y": -0.25},
        **layout,
    )
    return f'<figure class="plot" data-space="{column}">{div}</figure>'


def _img(pixels: np.ndarray, alt: str) -> str:
    h, w = pixels.shape[:2]
    return (
        f'<img src="{data_uri(pixels)}" width="{w}" height="{h}" alt="{escape(alt)}" title="{escape(alt)}">'
    )


def _placeholder(reason: str) -> str:
    return f'<div class="ph" title="{escape(reason)}">{escape(reason)}</div>'


def _pairs(ctx: PageContext, privacy: PrivacyFiles, k: int) -> str:
    chosen = pair_models(ctx.models, privacy)
    pairs = closest_pairs(privacy, chosen, k)
    if pairs.empty:
        return "<p>No samples to pair with the training set.</p>"
    show = privacy.info.show_training_images
    head = ["#", "sample", "generated", "nearest training image (features)"]
    if show:
        head.append("|generated − training|")
    head.append("distances")
    rows = []
    for rank, r in enumerate(pairs.itertuples(index=False), start=1):
        gen_path = sample_path(ctx.run.samples, ctx.run.run_dir, r.model, r.case_id, int(r.sample))
        imgs = pair_images(gen_path, privacy.training_path(r.train_case_id), THUMB_PX, show)
        what = f"{r.model} · {r.case_id} · sample {r.sample}"
        withheld = ctx.withheld.reason(r.model, r.case_id, int(r.sample))
        gen_cell = (
            _placeholder(withheld)
            if withheld is not None
            else _img(imgs.generated, what)
            if imgs.generated is not None
            else _placeholder(imgs.generated_why)
        )
        cells = [
            f"<td>{rank}</td>",
            (
                f'<th scope="row" class="case"><div class="case-id">{escape(r.case_id)}</div>'
                f'<div class="sub">{escape(display_name(r.model, ctx.models))} · sample {escape(r.sample)}</div></th>'
            ),
            f"<td>{gen_cell}</td>",
        ]
        caption = f'<div class="cap">training case {escape(r.train_case_id)}</div>'
        if show:
            train = (
                _img(imgs.training, f"training case {r.train_case_id}")
                if imgs.training is not None
                else _placeholder(imgs.training_why)
            )
            diff = (
                _img(imgs.difference, f"|{what} − training case {r.train_case_id}|")
                if imgs.difference is not None
                else _placeholder(imgs.difference_why)
            )
            cells += [
                f"<td>{train}{caption}</td>",
                f'<td>{diff}<div class="cap">black = identical</div></td>',
            ]
        else:
            cells.append(f'<td class="train-id" data-train="{escape(r.train_case_id)}">{caption}</td>')
        pixel_to = pixel_match(r.train_case_id, r.pixel_train_case_id, bool(r.pixel_mirrored))
        flag = f'<div class="warn-note">flagged by {escape(r.flagged_by)}</div>' if r.flagged else ""
        cells.append(
            f'<td class="distances" data-features="{float(r.nn_distance)!r}" '
            f'data-pixels="{float(r.nn_distance_pixel)!r}">features <b>{escape(_distance(r.nn_distance))}</b>'
            f"<div>pixels <b>{escape(_distance(r.nn_distance_pixel))}</b> "
            f'<span class="sub">({escape(pixel_to)})</span></div>{flag}</td>'
        )
        rows.append(
            f'<tr data-model="{escape(r.model)}" data-case="{escape(r.case_id)}" data-sample="{escape(r.sample)}">'
            + "".join(cells)
            + "</tr>"
        )
    baselines_left_out = any(m.is_baseline for m in ctx.models if m.name not in chosen)
    intro = (
        f"The {len(pairs)} samples nearest to a training image in feature space, closest first"
        + (" (sanity baselines left out: their copies would fill the list)" if baselines_left_out else "")
        + ". The pixel distance is to the sample's nearest training image in pixel space, which may be "
        "another one, or the same one matched with the sample mirrored left-right."
    )
    note = f'<div class="callout hidden-training">{escape(HIDDEN_NOTE)}</div>' if not show else ""
    return (
        f'<h3>Closest pairs</h3><p class="small">{escape(intro)}</p>{note}'
        '<div class="grid-wrap"><table class="grid privacy-pairs"><thead><tr>'
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def render_privacy(ctx: PageContext, privacy: PrivacyFiles, k: int = CLOSEST_PAIRS) -> str:
    head, rows = _model_rows(privacy, ctx.models, ctx.run.summary)
    models = list(ctx.models)
    known = {m.name for m in models}
    models += [ModelRow(n, "unknown", {}) for n in dict.fromkeys(privacy.rows["model"]) if n not in known]
    figures = "".join(_histogram(privacy, column, models, i) for i, column in enumerate(SPACES))
    return (
        '\n<p class="small">Every sample is matched to its nearest image of the generator\'s training set, '
        f"in an embedding space and in pixel space ({escape(privacy.info.pixel_text)}); a sample is "
        "flagged as memorised when either distance "
        "is below its threshold. Both thresholds sit at one quantile level of the held-out real images' own "
        "nearest-training distances (the <b>real</b> row), chosen so that the calibration quantile of them "
        "is flagged by either space.</p>\n"
        f"{_facts(privacy)}\n"
        "<h3>Per model</h3>\n"
        f"{stat_table(head, rows, 'privacy-models')}\n"
        f'<p class="small">{escape(AUC_NOTE)}</p>\n'
        "<h3>Distances to the training set</h3>\n"
        '<p class="small">Share of each model\'s samples per distance bin (same bins for every model); '
        "the outlined bars are the held-out real images. Samples left of the dashed threshold are flagged.</p>\n"
        f'<div class="plots">{figures}</div>\n'
        f"{_pairs(ctx, privacy, k)}\n"
    )


def render(ctx: PageContext) -> str:
    privacy = ctx.privacy
    if privacy is None:
        return ""
    return render_privacy(ctx, privacy)


SECTION = Section("privacy", "Privacy", "Privacy and memorisation", render)
