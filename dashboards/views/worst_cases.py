"""Worst-k (model, case) pairs of one metric, to hunt failures; each opens in the gallery."""

from __future__ import annotations

import streamlit as st

from dashboards import data
from dashboards.views import common

SHOW_IMAGES = 10

view = common.current_view()
st.title("Worst cases")
st.caption(
    "Per-case values (samples averaged), worst first: NaN (not computable) first, then the lowest values "
    "of higher-is-better metrics and the highest of lower-is-better ones."
)
names = [m.name for m in view.metrics if m.name in set(view.per_case["metric"])]
if not names:
    st.info("per_sample.parquet holds no per-case values.")
    st.stop()
left, right = st.columns([3, 1])
metric_name = left.selectbox(
    "Metric", names, format_func=lambda n: common.metric_label(view.metric(n)), key="worst_metric"
)
k = int(right.number_input("k", 1, 500, 10, key="worst_k"))
models = common.pick_models(view, "worst_models", default=[m.name for m in common.contenders(view.models)])
metric = view.metric(metric_name)
if metric.higher_is_better is None:
    st.warning(f"summary.csv does not say whether {metric.label} is better high or low; lowest shown first.")
worst = data.worst_cases(view.per_case, metric_name, metric.higher_is_better, models, k)
if worst.empty:
    st.info("No per-case values of this metric for these models.")
    st.stop()
st.dataframe(worst, width="stretch", hide_index=True)

cases = view.files.cases
case_rows = cases.drop_duplicates("case_id").set_index("case_id") if cases is not None else None
hide = data.withheld(view)
st.subheader(f"The {min(len(worst), SHOW_IMAGES)} worst, with images")
for i, r in enumerate(worst.head(SHOW_IMAGES).itertuples(index=False)):
    case = {"case_id": r.case_id}
    if case_rows is not None and r.case_id in case_rows.index:
        case.update(
            {k: v for k, v in case_rows.loc[r.case_id].to_dict().items() if data.present(v) is not None}
        )
    paths = data.sample_paths(view.files.samples, view.run_dir, r.case_id, 0)
    st.markdown(f"**{i + 1}. {r.model} · {r.case_id}** — {metric.label} = {common.format_value(r.value)}")
    c_ref, c_cond, c_sample, c_go = st.columns([2, 2, 2, 1])
    with c_ref:
        pixels, why = data.thumb(data.present(case.get("image")), 192)
        common.image_tile(pixels, "reference", why)
    with c_cond:
        cond, caption = data.condition(case, 192)
        common.image_tile(cond, caption if cond is not None else "condition", caption)
    with c_sample:
        hidden = hide.reason(r.model, r.case_id, 0)
        pixels, why = (None, hidden) if hidden is not None else data.thumb(paths.get(r.model), 192)
        common.image_tile(pixels, f"{r.model} (sample 0)", why)
    if c_go.button("Open in gallery", key=f"worst_open_{i}"):
        st.session_state["gallery_jump"] = r.case_id
        st.switch_page("views/gallery.py")

failures = view.files.failures
if failures is not None and not failures.empty:
    with st.expander(f"failures.csv ({len(failures)} rows)"):
        st.dataframe(failures, width="stretch", hide_index=True)
