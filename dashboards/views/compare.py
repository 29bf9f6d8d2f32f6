"""Compare two runs: summary.csv estimates side by side, B - A, and whether B is better."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from dashboards import data
from dashboards.views import common

view = common.current_view()
st.title("Compare runs")
default = data.env_path(data.COMPARE_ENV) or ""
other = st.text_input(
    "Run B (a run directory)", value=default, key="cmp_path", placeholder="/path/to/other/run"
)
st.caption(f"Run A: {view.run_dir}")
if not other.strip():
    st.info("Type the path of a second run directory to compare with (or start with `--compare RUN_DIR`).")
    st.stop()
try:
    view_b = data.view(other.strip())
except (FileNotFoundError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
st.caption(f"Run B: {view_b.run_dir}")

groups = list(dict.fromkeys([*view.groups, *view_b.groups]))
group = st.selectbox("Group", groups, format_func=data.group_label, key="cmp_group")
table = data.compare_summaries(view.files.summary, view_b.files.summary, group)
if table.empty:
    st.info("Neither run has summary rows for this group.")
    st.stop()
directions = {m.name: m.higher_is_better for m in [*view_b.metrics, *view.metrics]}
table["B vs A"] = [
    data.improved(d, directions.get(m)) for d, m in zip(table["delta"], table["metric"], strict=True)
]
only = table[table["present"] != "both"]
both = table[table["present"] == "both"]
counts = both.groupby("model")["B vs A"].value_counts().unstack(fill_value=0)
st.subheader("Per model: metrics where B is better / worse")
st.dataframe(counts, width="stretch")
st.subheader("All estimates")
st.dataframe(both, width="stretch", hide_index=True)
if not only.empty:
    with st.expander(f"{len(only)} (model, metric) pairs in only one run"):
        st.dataframe(
            only[["model", "metric", "present", "value_a", "value_b"]], width="stretch", hide_index=True
        )

metric_names = sorted(set(both["metric"]))
if metric_names:
    metric_name = st.selectbox("Metric", metric_names, key="cmp_metric")
    rows = both[both["metric"] == metric_name]
    fig = go.Figure(
        [
            go.Bar(x=rows["model"], y=rows["value_a"], name="A"),
            go.Bar(x=rows["model"], y=rows["value_b"], name="B"),
        ]
    )
    fig.update_layout(height=380, barmode="group", yaxis_title=metric_name, margin={"t": 30})
    st.plotly_chart(fig, key="cmp_chart")
