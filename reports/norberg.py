"""The Norberg-angle section of ``report.html`` (from ``[norberg]`` in the run's config or
``xray-audit norberg evaluate``).

Reads ``norberg_summary.csv`` and ``norberg_angles.parquet`` from the run directory; per measurement
source (the landmark detector, the reader study's expert landmarks) the page shows the agreement
table (pooled and per side, value [CI] and N), a Bland–Altman plot and a real-vs-generated scatter
per model. Torch-free.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit import rundir
from audit.cases import is_phantom
from audit.metrics.functional.norberg import NORMAL_THRESHOLD_DEG

LOA_Z = 1.96
# (metric, label, arrow) in the order the table shows them.
COLUMNS = (
    ("norberg_r", "Pearson r", "↑"),
    ("norberg_r2", "R² (r², as the paper)", "↑"),
    ("norberg_mae", "MAE °", "↓"),
    ("norberg_ba_bias", "BA bias °", "→0"),
    ("norberg_ba_loa_low", "BA LoA low °", ""),
    ("norberg_ba_loa_high", "BA LoA high °", ""),
    ("norberg_icc", "ICC(2,1)", "↑"),
    ("norberg_kappa", f"κ at {NORMAL_THRESHOLD_DEG:g}°", "↑"),
)
SCOPES = (("", "both sides"), (":left", "left"), (":right", "right"))
# Plain text: report.html escapes it, the dashboard shows it as Markdown.
PHANTOM_NOTE = (
    "These cases come from the drawn pelvis phantom of `xray-audit norberg phantom`, not from radiographs: "
    "the numbers check the measurement path and are not evidence about real hips."
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def load_norberg(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(summary, angles) when the run has been measured, else None."""
    run = Path(run_dir)
    if not (run / rundir.NORBERG_SUMMARY).exists() or not (run / rundir.NORBERG_ANGLES).exists():
        return None
    summary = pd.read_csv(run / rundir.NORBERG_SUMMARY, dtype={"model": str, "metric": str}, keep_default_na=False,
                          na_values=[""])  # fmt: skip
    angles = pd.read_parquet(run / rundir.NORBERG_ANGLES)
    if "source" not in summary.columns:  # written before the reader source existed
        summary["source"] = "detector"
    return summary, angles


def phantom_callout() -> str:
    text = _e(PHANTOM_NOTE).replace("`xray-audit norberg phantom`", "<code>xray-audit norberg phantom</code>")
    return f'<div class="callout warn phantom"><b>Phantom data.</b> {text}</div>'


def _angle_kind(source: Any) -> str:
    return "readers" if str(source).startswith("reader:") else "detector"


def _model_order(models: list[str]) -> list[str]:
    return [m for m in models if m != "real"] + [m for m in models if m == "real"]


def _table(summary: pd.DataFrame, models: list[str]) -> str:
    index = summary.set_index(["model", "metric"])
    head = "".join(
        f"<th>{_e(label)} <span class='arrow'>{_e(arrow)}</span></th>" for _, label, arrow in COLUMNS
    )
    parts = []
    for suffix, scope in SCOPES:
        rows = []
        for model in models:
            cells = []
            for metric, _, _ in COLUMNS:
                key = (model, metric + suffix)
                if key not in index.index:
                    cells.append('<td class="na">—</td>')
                    continue
                r = index.loc[key]
                ci = (
                    f'<span class="ci">[{_fmt(r["ci_low"])}, {_fmt(r["ci_high"])}]</span>'
                    if math.isfinite(r["ci_low"])
                    else ""
                )
                cells.append(f'<td>{_fmt(r["value"])} {ci}<span class="n">n={int(r["n"])}</span></td>')
            cls = ' class="real"' if model == "real" else ""
            rows.append(f"<tr{cls}><th class='model-name'>{_e(model)}</th>{''.join(cells)}</tr>")
        parts.append(
            f"<h4>{_e(scope)}</h4><div class='table-wrap'><table class='summary norberg'>"
            f"<thead><tr><th class='model-col'>model</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table></div>"
        )
    return "".join(parts)


def _per_case(angles: pd.DataFrame) -> pd.DataFrame:
    """As the summary: mean over a sample's measurements, then over a case's samples."""
    ok = angles[np.isfinite(angles["angle_deg"]) & np.isfinite(angles["reference_deg"])]
    per_sample = ok.groupby(["model", "case_id", "sample", "side"], as_index=False, sort=True).agg(
        angle_deg=("angle_deg", "mean"), reference_deg=("reference_deg", "first")
    )
    return per_sample.groupby(["model", "case_id", "side"], as_index=False, sort=True).agg(
        angle_deg=("angle_deg", "mean"), reference_deg=("reference_deg", "first")
    )


def _figures(
    angles: pd.DataFrame,
    models: list[str],
    figure_div: Any,
    colours: dict[str, str],
    *,
    prefix: str,
    measured: str,
) -> str:
    pairs = _per_case(angles)
    ba, scatter = [], []
    lo_axis, hi_axis = math.inf, -math.inf
    for model in models:
        p = pairs[pairs["model"] == model]
        if p.empty:
            continue
        real, gen = p["reference_deg"].to_numpy(np.float64), p["angle_deg"].to_numpy(np.float64)
        lo_axis, hi_axis = min(lo_axis, real.min(), gen.min()), max(hi_axis, real.max(), gen.max())
        mean, diff = (real + gen) / 2, gen - real
        text = [f"{c} {s}" for c, s in zip(p["case_id"], p["side"], strict=True)]
        colour = colours.get(model, "#4C72B0")
        ba.append({"type": "scatter", "mode": "markers", "x": mean.tolist(), "y": diff.tolist(), "text": text,
                   "name": model, "legendgroup": model, "marker": {"color": colour, "size": 6, "opacity": 0.75},
                   "hovertemplate": "%{text}<br>mean %{x:.1f}°, generated − real %{y:.1f}°"})  # fmt: skip
        if diff.size >= 2:
            bias, sd = float(diff.mean()), float(diff.std(ddof=1))
            x = [float(mean.min()), float(mean.max())]
            for y, dash in ((bias, "solid"), (bias - LOA_Z * sd, "dash"), (bias + LOA_Z * sd, "dash")):
                ba.append({"type": "scatter", "mode": "lines", "x": x, "y": [y, y], "legendgroup": model,
                           "showlegend": False, "hoverinfo": "skip",
                           "line": {"color": colour, "dash": dash, "width": 1.5}})  # fmt: skip
        scatter.append({"type": "scatter", "mode": "markers", "x": real.tolist(), "y": gen.tolist(), "text": text,
                        "name": model, "marker": {"color": colour, "size": 6, "opacity": 0.75},
                        "hovertemplate": "%{text}<br>real %{x:.1f}°, generated %{y:.1f}°"})  # fmt: skip
    if not scatter:
        return '<p class="small">No case has both a measured and an annotated angle.</p>'
    span = [lo_axis - 2, hi_axis + 2]
    scatter.append({"type": "scatter", "mode": "lines", "x": span, "y": span, "name": "identity",
                    "line": {"color": "#333", "dash": "dot", "width": 1}, "hoverinfo": "skip"})  # fmt: skip
    normal_lines = [
        {"type": "line", "x0": NORMAL_THRESHOLD_DEG, "x1": NORMAL_THRESHOLD_DEG, "y0": span[0], "y1": span[1],
         "line": {"color": "#c4412f", "width": 1, "dash": "dot"}},
        {"type": "line", "x0": span[0], "x1": span[1], "y0": NORMAL_THRESHOLD_DEG, "y1": NORMAL_THRESHOLD_DEG,
         "line": {"color": "#c4412f", "width": 1, "dash": "dot"}},
    ]  # fmt: skip
    return (
        '<div class="plots"><figure class="plot">'
        + figure_div(
            ba,
            f"{prefix}-bland-altman",
            title={"text": "Bland–Altman: generated − real angle (bias, 95% limits of agreement)"},
            xaxis={"title": {"text": "mean of real and generated angle (°)"}, "gridcolor": "#eee"},
            yaxis={"title": {"text": "generated − real (°)"}, "gridcolor": "#eee", "zeroline": True},
            height=420,
            margin={"l": 60, "r": 20, "t": 50, "b": 50},
        )
        + '</figure><figure class="plot">'
        + figure_div(
            scatter,
            f"{prefix}-scatter",
            title={"text": "Norberg angle: annotated real vs measured on the sample"},
            xaxis={
                "title": {"text": "annotated angle of the real image (°)"},
                "range": span,
                "gridcolor": "#eee",
            },
            yaxis={
                "title": {"text": f"{measured} angle of the sample (°)"},
                "range": span,
                "gridcolor": "#eee",
            },
            shapes=normal_lines,
            height=420,
            margin={"l": 60, "r": 20, "t": 50, "b": 50},
        )
        + "</figure></div>"
    )


def render_norberg(
    run_dir: str | Path, figure_div: Any, colours: dict[str, str], cases: pd.DataFrame | None = None
) -> str:
    """The section body, or "" when the run has no Norberg measurement."""
    loaded = load_norberg(run_dir)
    if loaded is None:
        return ""
    summary, angles = loaded
    models = _model_order(list(dict.fromkeys(summary["model"])))
    parts = [phantom_callout() if is_phantom(cases) else ""]
    for source in ("detector", "readers"):
        rows = summary[summary["source"] == source]
        if rows.empty:
            continue
        evaluator = ", ".join(sorted({str(e) for e in rows["evaluator"].dropna() if e}))
        measured = angles[angles["source"].map(_angle_kind) == source]
        if source == "detector":
            head = (
                "<h4>Landmark detector</h4>"
                '<p class="small">Norberg angle of each hip of every sample, measured by the landmark detector '
                f"<code>{_e(evaluator or '?')}</code>, against the annotated angle of the same case and side. "
                "The <b>real</b> row is the detector on the real images against the annotations: the upper bound. "
            )
            prefix, word = "norberg", "detected"
        else:
            head = (
                "<h4>Expert landmarks (reader study)</h4>"
                '<p class="small">Norberg angle of each hip from the outline and rim points readers placed on the '
                f"blinded images ({_e(evaluator)}); a sample's angle is the mean over its readers and reads. "
                "The <b>real</b> row is the readers on the real images against the annotations. "
            )
            prefix, word = "norberg-readers", "expert-measured"
        parts.append(
            head
            + "A case's samples are averaged per side; CIs are percentile bootstraps over cases (both sides of a "
            "case together); n = cases. R² is the square of Pearson r, as the canine-hip paper reports it; "
            "MAE, Bland–Altman bias and limits of agreement (bias ± 1.96 SD) are in degrees; κ is Cohen's κ "
            f"of the normal (≥ {NORMAL_THRESHOLD_DEG:g}°) / dysplastic call.</p>"
            + _table(rows, models)
            + _figures(measured, models, figure_div, colours, prefix=prefix, measured=word)
        )
    return "".join(parts)


_INFO_LABELS = (
    ("annotations", "annotation file"),
    ("annotations_sha256", "annotation file sha256"),
    ("patient_left", "patient's left hip is on the (display convention)"),
    ("detector", "landmark detector"),
    ("detector_sha256", "detector sha256"),
    ("degenerate_detections", "samples with degenerate detected points"),
    ("reader_landmarks", "reader landmark export"),
    ("reader_landmarks_sha256", "reader landmark export sha256"),
    ("readers", "readers"),
    ("measurements", "reader measurements (reader × read × image)"),
    ("unmeasurable_sides", "sides readers left incomplete"),
    ("bootstrap_resamples", "bootstrap resamples"),
    ("confidence", "confidence"),
    ("seed", "seed"),
)


def render_norberg_provenance(run_dir: str | Path) -> str:
    """Provenance rows per measurement source (files and their sha256), from ``norberg.json``; "" when
    the run has no Norberg measurement."""
    import json

    path = Path(run_dir) / rundir.NORBERG_INFO
    if not path.is_file():
        return ""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return f'<p class="small warn-note">{_e(path)} is unreadable ({_e(exc)}).</p>'
    blocks = []
    for source, title in (("detector", "landmark detector"), ("readers", "reader study landmarks")):
        entry = info.get(source)
        if not isinstance(entry, dict):
            continue
        rows = []
        for key, label in _INFO_LABELS:
            if key not in entry:
                continue
            value = entry[key]
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            cell = f"<code>{_e(text)}</code>" if key.endswith("sha256") else _e(text)
            rows.append(f'<tr data-key="{_e(key)}"><th>{_e(label)}</th><td>{cell}</td></tr>')
        blocks.append(
            f'<div data-source="{_e(source)}"><h4>{_e(title)}</h4>'
            f'<table class="plain kv">{"".join(rows)}</table></div>'
        )
    return f'<div class="cols">{"".join(blocks)}</div>' if blocks else ""
