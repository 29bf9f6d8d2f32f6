"""Per-case gallery: reference, condition (mask overlay or control), then every model's sample with
its per-sample metrics."""

from __future__ import annotations

import streamlit as st

from dashboards import data
from dashboards.views import common

COLUMNS = 4
JUMP_KEY = "gallery_jump"  # set by the worst-cases page to open a case here

view = common.current_view()
st.title("Case gallery")
samples = view.files.samples
cases = view.files.cases
case_ids = sorted(set(samples["case_id"]) | (set(cases["case_id"]) if cases is not None else set()))
if not case_ids:
    st.info("samples.parquet lists no cases.")
    st.stop()
if JUMP_KEY in st.session_state:
    jump = st.session_state.pop(JUMP_KEY)
    if jump in case_ids:
        st.session_state["gallery_case"] = jump

left, mid, right = st.columns([3, 1, 1])
case_id = left.selectbox("Case", case_ids, key="gallery_case")
n_samples = (
    int(samples.loc[samples["case_id"] == case_id, "sample"].max()) + 1
    if (samples["case_id"] == case_id).any()
    else 1
)
sample = (
    int(mid.number_input("Sample", 0, max(n_samples - 1, 0), 0, key="gallery_sample")) if n_samples > 1 else 0
)
size = int(right.select_slider("Size (px)", [128, 192, 256, 384, 512], value=256, key="gallery_size"))

case: dict = {"case_id": case_id}
if cases is not None:
    match = cases[cases["case_id"] == case_id]
    if not match.empty:
        case = {k: v for k, v in match.iloc[0].to_dict().items() if data.present(v) is not None}
meta = [f"**{k}**: {case[k]}" for k in ("group", "view", "labels") if k in case]
if meta:
    st.markdown(" · ".join(meta))
if "prompt" in case:
    st.caption(f"prompt: “{case['prompt']}”")

metrics = data.sample_metrics(view.files.per_sample, case_id, sample)
paths = data.sample_paths(samples, view.run_dir, case_id, sample)
failures = view.files.failures
failed: dict[str, str] = {}
if failures is not None and not failures.empty:
    for r in failures[failures["case_id"] == case_id].itertuples(index=False):
        failed.setdefault(r.model, f"failed at {r.stage}: {r.error}"[:400])

hide = data.withheld(view)
tiles: list[tuple] = []
reference, why = data.thumb(data.present(case.get("image")), size)
tiles.append(("reference", reference, why, {}))
cond, caption = data.condition(case, size)
tiles.append((f"condition: {caption}" if cond is not None else "condition", cond, caption, {}))
for model in view.models:
    if model.name not in paths:
        tiles.append(
            (
                common.model_label(model),
                None,
                failed.get(model.name, "no sample for this case"),
                metrics.get(model.name, {}),
            )
        )
        continue
    hidden = hide.reason(model.name, case_id, sample)
    pixels, why = (None, hidden) if hidden is not None else data.thumb(paths[model.name], size)
    tiles.append((common.model_label(model), pixels, why, metrics.get(model.name, {})))

for start in range(0, len(tiles), COLUMNS):
    for col, (caption, pixels, why, values) in zip(
        st.columns(COLUMNS), tiles[start : start + COLUMNS], strict=False
    ):
        with col:
            common.image_tile(pixels, caption, why)
            if values:
                lines = [
                    f"{common.metric_label(view.metric(name))}: **{common.format_value(values[name])}**"
                    for name in [m.name for m in view.metrics if m.name in values]
                ]
                st.markdown("  \n".join(lines))
