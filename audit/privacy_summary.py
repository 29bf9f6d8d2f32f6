"""The privacy stage's set-level summary rows: ``privacy_auc``, ``alpha_precision`` and ``beta_recall``
per generating model and ``[metrics].group_by`` group, each with a percentile-bootstrap CI over cases.

Per-sample privacy metrics are aggregated like every other per-sample metric (:mod:`audit.summary`);
these three compare a model's whole set of samples with the held-out references, so
:func:`audit.privacy.run_privacy` hands them to summary.csv as distribution rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from audit.config import StudyConfig
from audit.models.base import derive_seed

__all__ = ["alpha_beta_rows", "auc_rows"]

# Fidelity and diversity of each model's samples against the held-out references, in the privacy
# embedding (Alaa et al. 2022; audit.metrics.functional.alpha_beta).
ALPHA_BETA_METRICS = ("alpha_precision", "beta_recall")


def auc_rows(
    config: StudyConfig,
    frame: pd.DataFrame,
    ref_cases: np.ndarray,
    ref_nn: np.ndarray,
    self_reference: Sequence[str],
    cases: pd.DataFrame,
) -> list[dict[str, Any]]:
    """``privacy_auc`` per generating model and group, with a percentile-bootstrap CI over cases: each
    replicate draws the group's cases with replacement and weights each case's samples and its
    reference by its count (samples of one case are not independent)."""
    from audit.evaluation import groups_of
    from audit.metrics.functional.privacy import mann_whitney_auc
    from audit.stats import case_resample_weights, percentile_ci, weighted_auc

    m = config.metrics
    rows = []
    for model in dict.fromkeys(frame["model"]):
        if model in self_reference:
            continue  # the references against themselves: 0.5 by construction
        sel = frame[frame["model"] == model]
        gen_cases = sel["case_id"].to_numpy(str)
        gen_nn = sel["nn_distance"].to_numpy(np.float64)
        for group, members in groups_of(cases, m.group_by):
            in_gen, in_ref = np.isin(gen_cases, members), np.isin(ref_cases, members)
            g, r = gen_nn[in_gen], ref_nn[in_ref]
            value, lo, hi = float("nan"), float("nan"), float("nan")
            if g.size and r.size:
                value = float(mann_whitney_auc(g, r))
                both = np.concatenate([gen_cases[in_gen], ref_cases[in_ref]])
                uniq, at = np.unique(both, return_inverse=True)
                # AUC of "generated" (positive) over "real" scored by distance = P(d_gen > d_real) + ½ ties.
                scores = np.concatenate([g, r])[:, None]
                targets = np.concatenate([np.ones(g.size, bool), np.zeros(r.size, bool)])[:, None]
                key = "bootstrap:privacy_auc" if not group else f"bootstrap:privacy_auc:{group}"
                rng = np.random.default_rng(derive_seed(config.study.seed, model, key, 0))
                boot = []
                # Replicates in blocks keep the (replicates x rows) weights bounded for big cohorts.
                step = max(1, (1 << 24) // max(1, scores.shape[0]))
                for start in range(0, m.bootstrap_resamples, step):
                    counts = case_resample_weights(rng, len(uniq), min(step, m.bootstrap_resamples - start))
                    boot.append(weighted_auc(scores, targets, counts[:, at])[:, 0])
                lo, hi = percentile_ci(np.concatenate(boot), m.confidence)
            rows.append(
                {
                    "model": model,
                    "metric": "privacy_auc",
                    "value": value,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n": int(g.size),
                    "group": group,
                    "evaluator": "",
                }
            )
    return rows


def alpha_beta_rows(
    config: StudyConfig,
    references: pd.DataFrame,
    embed: Callable[[Sequence[str]], np.ndarray],
    samples: pd.DataFrame,
    self_reference: Sequence[str],
    cases: pd.DataFrame,
) -> list[dict[str, Any]]:
    """``alpha_precision`` and ``beta_recall`` per generating model and group: its samples against the
    held-out ``references`` (case_id, sha256), on unit-length embeddings (``embed``: vectors by image
    sha256; unit length gives the audit's cosine geometry), with a percentile bootstrap CI over cases
    (each replicate draws the group's reference cases with replacement; a case's samples go with it)."""
    from audit.evaluation import groups_of
    from audit.metrics.functional.alpha_beta import alpha_beta, prepare_supports
    from audit.stats import case_resample_weights, percentile_ci

    m = config.metrics
    ref_cases = references["case_id"].to_numpy(str)
    ref_vectors = _unit(embed(list(references["sha256"])))
    rows = []
    for model in dict.fromkeys(samples["model"].astype(str)):
        if model in self_reference:
            continue  # the references against themselves
        sel = samples[samples["model"].astype(str) == model]
        gen_cases = sel["case_id"].to_numpy(str)
        gen_vectors = _unit(embed(list(sel["sha256"])))
        for group, members in groups_of(cases, m.group_by):
            in_ref = np.flatnonzero(np.isin(ref_cases, members))
            position = {c: i for i, c in enumerate(ref_cases[in_ref])}
            in_gen = np.flatnonzero([c in position for c in gen_cases])
            values = {name: (float("nan"), float("nan"), float("nan")) for name in ALPHA_BETA_METRICS}
            if in_ref.size >= 2 and in_gen.size:
                supports = prepare_supports(
                    ref_vectors[in_ref],
                    gen_vectors[in_gen],
                    np.array([position[c] for c in gen_cases[in_gen]], dtype=np.int64),
                )
                point = alpha_beta(supports, np.ones(in_ref.size))
                key = "bootstrap:alpha_beta" if not group else f"bootstrap:alpha_beta:{group}"
                rng = np.random.default_rng(derive_seed(config.study.seed, model, key, 0))
                boot = alpha_beta(supports, case_resample_weights(rng, in_ref.size, m.bootstrap_resamples))
                for name, estimate, replicates in (
                    ("alpha_precision", point.alpha_precision[0], boot.alpha_precision),
                    ("beta_recall", point.beta_recall[0], boot.beta_recall),
                ):
                    values[name] = (float(estimate), *percentile_ci(replicates, m.confidence))
            for name, (value, lo, hi) in values.items():
                rows.append(
                    {
                        "model": model,
                        "metric": name,
                        "value": value,
                        "ci_low": lo,
                        "ci_high": hi,
                        "n": int(in_gen.size),
                        "group": group,
                        "evaluator": "",
                    }
                )
    return rows


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
