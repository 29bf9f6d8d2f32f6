"""Reader-study scores: a study's exported ratings.parquet joined to models by the study key."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboards import data
from dashboards.views import common

st.title("Reader scores")
study_dir = data.env_path(data.STUDY_ENV)
if study_dir is None:
    st.info(
        "No reader study given. Start with `xray-audit dashboard RUN_DIR --reader-study STUDY_DIR` "
        f"(or set ${data.STUDY_ENV}) to explore its ratings here."
    )
    st.stop()
ratings = data.ratings(study_dir)
if ratings is None:
    st.warning(
        f"{study_dir}/{data.RATINGS_PARQUET} does not exist: run `xray-audit reader-study export {study_dir}` "
        "first, then reload this page."
    )
    st.stop()
st.caption(f"{study_dir}/{data.RATINGS_PARQUET}: {len(ratings)} rows, {ratings['reader'].nunique()} readers.")

left, right = st.columns(2)
include_cal = left.checkbox("Include calibration (practice) items", value=False, key="rs_cal")
include_flagged = right.checkbox("Include flagged items", value=True, key="rs_flagged")

run_order = []
run_dir = data.env_path(data.RUN_ENV)
if run_dir is not None:
    run_order = common.current_view().model_names
scores = data.reader_scores(ratings, include_cal, include_flagged)
models = [m for m in run_order if m in set(scores["model"])] + sorted(set(scores["model"]) - set(run_order))

st.subheader("Mean score per model and criterion (1-5)")
if scores.empty:
    st.info("No 1-5 scores with these filters.")
else:
    wide = scores.pivot(index="model", columns="criterion", values="mean").reindex(models)
    st.dataframe(wide, width="stretch")
    criterion = st.selectbox("Criterion", sorted(set(scores["criterion"])), key="rs_criterion")
    rows = ratings[(ratings["criterion"] == criterion) & ratings["score"].notna()]
    if not include_cal:
        rows = rows[~rows["calibration"].fillna(False).astype(bool)]
    if not include_flagged:
        rows = rows[~rows["flagged"].fillna(False).astype(bool)]
    fig = go.Figure()
    for model in models:
        values = rows.loc[rows["model"] == model, "score"].to_numpy(float)
        if values.size:
            fig.add_trace(go.Box(y=values, name=model, boxmean=True, boxpoints="all", jitter=0.4, pointpos=0))
    fig.update_layout(
        height=400, showlegend=False, yaxis={"title": criterion, "range": [0.5, 5.5]}, margin={"t": 30}
    )
    st.plotly_chart(fig, key="rs_chart")
    with st.expander("Counts and spread"):
        st.dataframe(scores, width="stretch", hide_index=True)
    per_reader = rows.assign(score=rows["score"].astype(float)).pivot_table(
        index="reader", columns="model", values="score", aggfunc="mean"
    )
    with st.expander("Mean score per reader (this criterion)"):
        st.dataframe(per_reader, width="stretch")

turing = data.turing_rates(ratings, include_cal, include_flagged)
if not turing.empty:
    st.subheader("Turing test: how often each model's images were called real")
    st.dataframe(turing, width="stretch", hide_index=True)
    fig = go.Figure(
        go.Bar(
            x=turing["model"],
            y=turing["fraction_real"],
            text=np.char.mod("%.2f", turing["fraction_real"].to_numpy(float)),
        )
    )
    fig.update_layout(
        height=320, yaxis={"title": "fraction answered 'real'", "range": [0, 1]}, margin={"t": 30}
    )
    st.plotly_chart(fig, key="rs_turing")
