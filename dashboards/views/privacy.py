"""The privacy / memorisation audit: distances to the training set and the closest pairs.

The numbers and rules are :mod:`reports.privacy`'s, as on report.html's privacy section. With the run's
``show_training_images = false`` no training image is read: pairs name the training case only.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboards import data
from dashboards.views import common
from reports import privacy as audit
from reports.run import ModelRow

SHOW_MAX = 50
SPACES = {"nn_distance": "features", "nn_distance_pixel": "pixels"}

view = common.current_view()
st.title("Privacy")
found = data.privacy(view)
if found is None:
    st.info(
        "This run has no privacy audit (no privacy.parquet). Add a `[privacy]` table with the generator's "
        "`training_cases` to the study config and re-run `xray-audit run STUDY.toml`."
    )
    st.stop()
info = found.info
st.caption(
    "Every sample against its nearest training image, in the feature space of "
    f"`{info.features or '?'}` ({info.metric or '?'} distance) and in pixel space ({info.pixel_text}). A sample is "
    "flagged when either distance is below its threshold; both thresholds sit at one quantile level of "
    "the held-out real images' own nearest-training distances (the real rows, the calibration), chosen so "
    f"that {info.quantile if info.quantile is not None else '?'} of them is flagged by either space."
)
cols = st.columns(4)
for col, (label, value) in zip(
    cols,
    (
        ("threshold (features)", info.thresholds.get("features")),
        ("threshold (pixels)", info.thresholds.get("pixels")),
        (
            "training images",
            info.n_training
            if info.n_training is not None
            else None
            if found.training is None
            else len(found.training),
        ),
        ("neighbours kept (k)", info.k),
    ),
    strict=True,
):
    col.metric(label, "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))

references = audit.reference_names(view.models)
table = audit.model_table(found, view.files.summary, view.model_names, references)
shown = pd.DataFrame(
    {
        "model": [audit.display_name(name, view.models) for name in table["model"]],
        "samples": table["n"],
        "flagged": table["flagged"],
        "memorised ↓": table["memorised"],
        "by features only": table["by_features"],
        "by pixels only": table["by_pixels"],
        "by both": table["by_both"],
        "authenticity ↑": table["authentic"],
        "privacy AUC (0.5 ideal)": [
            math.nan if m in references else v
            for m, v in zip(table["model"], table["privacy_auc"], strict=True)
        ],
        # The real row's α/β are the calibration (training images in place of samples).
        "α-precision ↑": table["alpha_precision"],
        "β-recall ↑": table["beta_recall"],
    }
)
if found.has_reid:
    shown["re-ID score ↓"] = table["reid_score"]
    shown["re-ID score max ↓"] = table["reid_score_max"]
st.dataframe(shown, width="stretch", hide_index=True, key="privacy_table")
st.caption(
    "Shares are over privacy.parquet's rows (one per sample). privacy AUC: P(a sample's distance > a "
    "held-out real image's) in feature space; 0.5 = as far from the training set as unseen patients, "
    "below 0.5 = closer (memorisation). α-precision / β-recall (Alaa et al. 2022): fidelity and "
    "diversity of the samples against the held-out real images in the same embedding, higher is better; "
    "they depend on the number of references and the embedding as much as on the samples, so read them "
    f"against the real row's, the {audit.CALIBRATION_NOTE}."
)

known = {m.name for m in view.models}
markers = audit.histogram_markers(
    [
        *view.models,
        *(ModelRow(n, "unknown", {}) for n in dict.fromkeys(found.rows["model"]) if n not in known),
    ]
)
left, right = st.columns(2)
for column, where in zip(SPACES, (left, right), strict=True):
    bins = audit.histogram_bins(found, column)
    if bins is None:
        where.info(f"No finite {SPACES[column]} distances.")
        continue
    fig = go.Figure()
    names = list(dict.fromkeys([*view.model_names, *found.rows["model"]]))
    for name in [n for n in names if n not in references] + [n for n in names if n in references]:
        values = found.rows.loc[found.rows["model"] == name, column].to_numpy(np.float64)
        values = values[np.isfinite(values)]
        if not values.size:
            continue
        is_real = name in references
        fig.add_trace(
            go.Histogram(
                x=values,
                name=audit.display_name(name, view.models),
                xbins=bins,
                autobinx=False,
                histnorm="probability",
                opacity=1.0 if is_real else 0.55,
                marker=markers.get(name, {}),
            )
        )
    threshold = info.threshold(column)
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="#b3261e", annotation_text="threshold")
    fig.update_layout(
        barmode="overlay",
        height=420,
        margin={"t": 40, "b": 110},
        title=f"Nearest-training distance, {SPACES[column]}",
        xaxis_title="distance; lower = closer to a training image",
        yaxis_title="share of the model's samples",
        legend={"orientation": "h", "yanchor": "top", "y": -0.3},
    )
    where.plotly_chart(fig, key=f"privacy_hist_{column}")

st.subheader("Closest pairs")
show_training = info.show_training_images
hide = data.withheld(view)
if not show_training:
    st.info(audit.HIDDEN_NOTE, icon="🔒")
c_space, c_k = st.columns([3, 1])
column = c_space.selectbox(
    "Nearest in", list(SPACES), format_func=lambda c: f"{SPACES[c]} space", key="privacy_space"
)
k = int(c_k.number_input("k", 1, SHOW_MAX, audit.CLOSEST_PAIRS, key="privacy_k"))
models = common.pick_models(view, "privacy_models", default=audit.pair_models(view.models, found))
pairs = audit.closest_pairs(found, [m for m in models if m not in references], k, column)
if pairs.empty:
    st.info("No samples of these models to pair with the training set.")
    st.stop()
train_column = audit.SPACES[column][1]
for i, r in enumerate(pairs.itertuples(index=False)):
    train_id = getattr(r, train_column)
    st.markdown(
        f"**{i + 1}. {audit.display_name(r.model, view.models)} · {r.case_id} · sample {r.sample}** — features "
        f"{common.format_value(r.nn_distance)}, pixels {common.format_value(r.nn_distance_pixel)}"
        + (" · pixel match mirrored" if r.pixel_mirrored else "")
        + (f" · flagged by {r.flagged_by}" if r.flagged else "")
    )
    path = audit.sample_path(view.files.samples, view.run_dir, r.model, r.case_id, int(r.sample))
    mirrored = column == "nn_distance_pixel" and bool(r.pixel_mirrored)
    imgs = audit.pair_images(path, found.training_path(train_id), data.THUMB_PX, show_training, mirrored)
    c_gen, c_train, c_diff = st.columns(3)
    with c_gen:
        hidden = hide.reason(r.model, r.case_id, int(r.sample))
        generated, generated_why = (
            (None, hidden) if hidden is not None else (imgs.generated, imgs.generated_why)
        )
        common.image_tile(generated, f"{audit.display_name(r.model, view.models)} (sample)", generated_why)
    with c_train:
        if show_training:
            common.image_tile(
                imgs.training,
                f"training case {train_id}" + (" (mirrored)" if mirrored else ""),
                imgs.training_why,
            )
        else:
            st.markdown(f"training case `{train_id}`")
    with c_diff:
        if show_training:
            common.image_tile(
                imgs.difference, "|generated − training| (black = identical)", imgs.difference_why
            )
