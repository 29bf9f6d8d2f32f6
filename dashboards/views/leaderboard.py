"""Leaderboard: summary.csv per model and metric for one group, with confidence intervals and ranks."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboards import data
from dashboards.views import common

view = common.current_view()
st.title("Leaderboard")
st.caption(
    "Estimates from summary.csv with their bootstrap confidence intervals. Ranks (1 = best) are among "
    "the models under evaluation; the real row is the upper bound and does not compete."
)

left, right = st.columns(2)
group = left.selectbox("Group", view.groups, format_func=data.group_label, key="lb_group")
families = list(dict.fromkeys(data.metric_family(m.name) for m in view.metrics))
chosen_families = right.multiselect("Metric families", families, default=families, key="lb_families")
available = [m for m in view.metrics if data.metric_family(m.name) in chosen_families]
chosen = st.multiselect(
    "Metrics",
    [m.name for m in available],
    default=[m.name for m in available],
    format_func=lambda n: common.metric_label(view.metric(n)),
    key="lb_metrics",
)
metrics = [m for m in available if m.name in chosen]

table = data.leaderboard(view.files.summary, view.model_names, [m.name for m in metrics], group)
if table.empty:
    st.info(f"summary.csv has no rows for group {data.group_label(group)!r} and the chosen metrics.")
    st.stop()

contenders = [m.name for m in common.contenders(view.models)]
values, ranks = data.wide_leaderboard(table, metrics, view.model_names, contenders)
labels = {m.name: common.metric_label(m) for m in metrics}
by_key = table.set_index(["model", "metric"])
cells = pd.DataFrame(
    {
        labels[metric]: [
            data.format_ci(*by_key.loc[(model, metric), ["value", "ci_low", "ci_high"]].to_numpy(float))
            if (model, metric) in by_key.index
            else ""
            for model in values.index
        ]
        for metric in values.columns
    },
    index=[common.model_label(m) for m in view.models],
)
cells.index.name = "model"
tab_values, tab_ranks, tab_long = st.tabs(["Estimates [CI]", "Ranks", "Long table"])
tab_values.dataframe(cells, width="stretch")
rank_table = ranks.rename(columns=labels).loc[contenders]
rank_table.insert(0, "mean rank", rank_table.mean(axis=1, skipna=True))
tab_ranks.dataframe(rank_table.sort_values("mean rank"), width="stretch")
tab_long.dataframe(table, width="stretch", hide_index=True)

st.subheader("One metric across models")
metric_name = st.selectbox(
    "Metric", values.columns.tolist(), format_func=lambda n: labels[n], key="lb_plot_metric"
)
rows = table[table["metric"] == metric_name]
colour = common.colours(view.models)
fig = go.Figure(
    go.Bar(
        x=rows["model"],
        y=rows["value"],
        marker_color=[colour.get(m, "#4C72B0") for m in rows["model"]],
        error_y={
            "type": "data",
            "symmetric": False,
            "array": (rows["ci_high"] - rows["value"]).clip(lower=0),
            "arrayminus": (rows["value"] - rows["ci_low"]).clip(lower=0),
        },
        hovertemplate="%{x}: %{y:.4g}<extra></extra>",
    )
)
fig.update_layout(height=380, yaxis_title=labels[metric_name], margin={"t": 30})
st.plotly_chart(fig, key="lb_chart")
