"""Per-metric distributions of the per-case values (a case's samples averaged first)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboards import data
from dashboards.views import common

view = common.current_view()
st.title("Distributions")
st.caption(
    "One point per case: per_sample.parquet averaged over a case's samples. Non-finite values are not drawn."
)

names = [m.name for m in view.metrics if m.name in set(view.per_case["metric"])]
if not names:
    st.info("per_sample.parquet holds no per-case values (only set-level metrics were computed).")
    st.stop()
left, right = st.columns(2)
metric_name = left.selectbox(
    "Metric", names, format_func=lambda n: common.metric_label(view.metric(n)), key="dist_metric"
)
group = right.selectbox("Case group", ["", *view.case_groups], format_func=data.group_label, key="dist_group")
models = common.pick_models(view, "dist_models")
frame = data.case_table(view.per_case, view.cases_in_group(group))
colour = common.colours(view.models)

fig = go.Figure()
for model in models:
    rows = frame[(frame["model"] == model) & (frame["metric"] == metric_name)]
    values = rows["value"].to_numpy(float)
    finite = np.isfinite(values)
    if not finite.any():
        continue
    fig.add_trace(
        go.Box(
            y=values[finite],
            text=rows["case_id"].to_numpy()[finite],
            name=model,
            boxpoints="all" if finite.sum() <= 200 else "outliers",
            jitter=0.35,
            pointpos=0,
            boxmean=True,
            marker={"color": colour.get(model), "size": 4, "opacity": 0.7},
            hovertemplate="case %{text}<br>%{y:.4g}<extra>%{fullData.name}</extra>",
        )
    )
metric = view.metric(metric_name)
if not fig.data:
    st.info(f"No finite per-case values of {metric.label} for these models and cases.")
else:
    fig.update_layout(height=460, showlegend=False, yaxis_title=common.metric_label(metric), margin={"t": 30})
    st.plotly_chart(fig, key="dist_chart")
st.dataframe(data.describe(frame, metric_name, models), width="stretch", hide_index=True)
