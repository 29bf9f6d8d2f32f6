"""Widgets shared by the dashboard pages (each page file is run by ``st.navigation`` as a script)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import streamlit as st

from dashboards import data
from reports.run import MetricColumn, ModelRow, model_colours


def current_view() -> data.RunView:
    """The run named by $XRAY_AUDIT_RUN_DIR (app.py has already checked it loads)."""
    run_dir = data.env_path(data.RUN_ENV)
    if run_dir is None:
        st.error(f"No run directory: set ${data.RUN_ENV} or start with `xray-audit dashboard RUN_DIR`.")
        st.stop()
    return data.view(run_dir)


def model_label(model: ModelRow) -> str:
    if model.is_real:
        return f"{model.name} (real, upper bound)"
    if model.is_baseline:
        return f"{model.name} (sanity baseline)"
    return model.name


def metric_label(metric: MetricColumn) -> str:
    text = f"{metric.label} {metric.arrow}".strip()
    return f"{text} ({metric.unit})" if metric.unit else text


def contenders(models: Sequence[ModelRow]) -> list[ModelRow]:
    """The models under evaluation; baselines only when a run has no generator (the demo's sanity runs)."""
    gens = [m for m in models if not m.is_real and not m.is_baseline]
    return gens or [m for m in models if m.is_baseline]


def colours(models: Sequence[ModelRow]) -> dict[str, str]:
    """The report's colour per model, so a model looks the same in report.html and here."""
    return model_colours(models)


def pick_models(view: data.RunView, key: str, default: Sequence[str] | None = None) -> list[str]:
    names = view.model_names
    chosen = st.multiselect("Models", names, default=list(default) if default is not None else names, key=key)
    return [n for n in names if n in chosen]


def image_tile(pixels: np.ndarray | None, caption: str, why: str = "") -> None:
    """One image with its caption, or the reason there is none."""
    if pixels is None:
        st.warning(why or "no image", icon="🖼️")
        st.caption(caption)
        return
    if pixels.dtype != np.uint8:
        pixels = data.to_uint8(pixels)
    st.image(pixels, caption=caption, width="stretch")


def format_value(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "NaN" if value is None or np.isnan(value) else str(value)
    return f"{value:.4g}"
