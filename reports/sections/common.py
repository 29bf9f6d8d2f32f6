"""Small pieces every section of report.html uses: HTML escaping, the model name cell, plotly figure
divs (plain trace dicts drawn by the page's one inlined plotly.js) and the statistics-table cells."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.io

from reports.format import format_estimate, to_float
from reports.run import MetricColumn, ModelRow

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
PLOT_FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12}
# Case-id hover labels cost ~10 bytes a point; beyond this many points per plot they are dropped.
HOVER_LABELS_MAX = 20_000
# An error message is cut to this many characters (image grid placeholders, failures table).
MAX_ERROR_CHARS = 400
# What each sanity-baseline kind (reports.run.BASELINE_KINDS) is, for its badge's tooltip.
BASELINE_TITLES = {
    "degrade": "deterministic degradation of the reference",
    "training-copy": "a training image plus noise: the privacy audit must flag it as a copy",
}


def escape(value: Any) -> str:
    """HTML-escape anything (attribute-safe)."""
    return html.escape(str(value), quote=True)


def cell_text(value: Any) -> str:
    """A text column's value as shown: "" for None and NaN (a missing value read back from a file)."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def model_label(model: ModelRow) -> str:
    """Model name cell content: the name plus a badge for baselines and the real row."""
    out = f'<span class="model-name">{escape(model.name)}</span>'
    if model.is_real:
        out += ' <span class="badge real" title="the reference images themselves">upper bound</span>'
    elif model.is_baseline:
        detail = str(model.params.get("degradation", ""))
        level = model.params.get("level")
        if level is not None:
            level_text = f"{level:g}" if isinstance(level, (int, float)) else str(level)
            detail = f"{detail}, level {level_text}" if detail else f"level {level_text}"
        title = BASELINE_TITLES.get(model.kind, "a sanity baseline, not a generative model")
        out += f' <span class="badge baseline" title="{escape(title)}">'
        out += "sanity baseline</span>"
        if detail:
            out += f'<div class="sub">{escape(detail)}</div>'
    elif model.kind not in ("unknown", ""):
        out += f'<div class="sub">{escape(model.kind)}</div>'
    return out


def figure_div(traces: Sequence[Mapping[str, Any]], div_id: str, **layout: Any) -> str:
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


def typed_array(values: np.ndarray, dtype: str) -> dict[str, str]:
    """A plotly.js typed-array spec (what plotly.py writes for numpy arrays): ~4 bytes a float32."""
    data = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "bdata": base64.b64encode(data.tobytes()).decode("ascii")}


def json_floats(values: Any) -> list[float | None]:
    """Floats for a plotly trace: NaN and ±inf (not JSON) become null, which plotly leaves out."""
    arr = np.asarray(values, dtype=np.float64)
    return [float(x) if math.isfinite(x) else None for x in arr.tolist()]


def estimate_text(value: Any, low: Any, high: Any) -> str:
    """A value with its CI (the CI in a muted span) as cell HTML."""
    main, ci = format_estimate(to_float(value), to_float(low), to_float(high))
    return f'{escape(main)} <span class="ci">{escape(ci)}</span>' if ci else escape(main)


def td(col: str, content: str, title: str = "", cls: str = "") -> str:
    """A statistics cell; ``data-col`` names the column of the source table it shows."""
    attrs = f' data-col="{escape(col)}"'
    if title:
        attrs += f' title="{escape(title)}"'
    if cls:
        attrs += f' class="{escape(cls)}"'
    return f"<td{attrs}>{content}</td>"


def stat_table(head: Sequence[str], rows: Sequence[str], cls: str) -> str:
    """A statistics table: ``head`` (HTML) over the ``rows`` (``<tr>`` HTML)."""
    return (
        f'<div class="table-wrap"><table class="plain stats {escape(cls)}"><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def metric_title(metric: MetricColumn) -> str:
    """``SSIM ↑``: the metric's label and direction arrow."""
    return f"{metric.label} {metric.arrow}".strip()
