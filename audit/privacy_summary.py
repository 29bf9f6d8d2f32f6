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

__all__ = ["alpha_beta_rows", "auc_rows", "calibration_training_rows"]

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


def calibration_training_rows(n_training: int, n_references: int, seed: int) -> np.ndarray:
    """Which training images stand in for an ideal generator in the references' α/β row: as many as
    there are references (all of them when there are fewer), drawn without replacement by the study
    seed, in training-manifest order."""
    rng = np.random.default_rng(derive_seed(seed, "alpha_beta", "calibration", 0))
    return np.sort(rng.choice(n_training, size=min(n_training, n_references), replace=False))


def alpha_beta_rows(
    config: StudyConfig,
    references: pd.DataFrame,
    training: Sequence[str],
    embed: Callable[[Sequence[str]], np.ndarray],
    samples: pd.DataFrame,
    self_reference: Sequence[str],
    cases: pd.DataFrame,
    device: str,
) -> list[dict[str, Any]]:
    """``alpha_precision`` and ``beta_recall`` per generating model and group: its samples against the
    held-out ``references`` (case_id, sha256), on unit-length embeddings (``embed``: vectors by image
    sha256; unit length gives the audit's cosine geometry).

    Both depend on the number of references and the embedding's dimension as much as on the samples
    (at 768-d and 100 references, real patients score little above a model off the support), so the
    references' own row carries the calibration: ``training`` images (sha256; other real patients of
    the population, never generated) in place of samples (:func:`calibration_training_rows`), all
    cases only. The interval is a delete-d jackknife over half-samples of the cases (a case's samples
    go with it; :func:`audit.stats.jackknife_interval`), not a percentile bootstrap, whose duplicated
    cases bias these statistics until the interval misses its own estimate.
    """
    from audit.evaluation import ALL_CASES, groups_of

    m = config.metrics
    ref_cases = references["case_id"].to_numpy(str)
    ref_vectors = _unit(embed(list(references["sha256"])))
    rows: list[dict[str, Any]] = []

    def score(model: str, group: str, real: np.ndarray, synthetic: np.ndarray, case: np.ndarray) -> None:
        values = dict.fromkeys(ALPHA_BETA_METRICS, (float("nan"), float("nan"), float("nan")))
        if real.shape[0] >= 2 and synthetic.shape[0]:
            key = "jackknife:alpha_beta" if not group else f"jackknife:alpha_beta:{group}"
            rng = np.random.default_rng(derive_seed(config.study.seed, model, key, 0))
            values = _alpha_beta_values(
                real, synthetic, case, rng, m.bootstrap_resamples, m.confidence, device
            )
        for name, (value, lo, hi) in values.items():
            rows.append(
                {"model": model, "metric": name, "value": value, "ci_low": lo, "ci_high": hi,
                 "n": int(synthetic.shape[0]), "group": group, "evaluator": ""}
            )  # fmt: skip

    for model in dict.fromkeys(samples["model"].astype(str)):
        if model in self_reference:
            continue  # the references against themselves: the calibration row below instead
        sel = samples[samples["model"].astype(str) == model]
        gen_cases = sel["case_id"].to_numpy(str)
        gen_vectors = _unit(embed(list(sel["sha256"])))
        for group, members in groups_of(cases, m.group_by):
            in_ref = np.flatnonzero(np.isin(ref_cases, members))
            position = {c: i for i, c in enumerate(ref_cases[in_ref])}
            in_gen = np.flatnonzero([c in position for c in gen_cases])
            case = np.array([position[c] for c in gen_cases[in_gen]], dtype=np.int64)
            score(model, group, ref_vectors[in_ref], gen_vectors[in_gen], case)
    present = set(samples["model"].astype(str))
    for model in (r for r in self_reference if r in present):
        chosen = calibration_training_rows(len(training), len(ref_cases), config.study.seed)
        stand_ins = _unit(embed([training[i] for i in chosen]))
        score(model, ALL_CASES, ref_vectors, stand_ins, np.arange(len(chosen), dtype=np.int64))
    return rows


def _alpha_beta_values(
    real: np.ndarray,
    synthetic: np.ndarray,
    case: np.ndarray,
    rng: np.random.Generator,
    resamples: int,
    confidence: float,
    device: str,
) -> dict[str, tuple[float, float, float]]:
    """(estimate, low, high) of each of ALPHA_BETA_METRICS."""
    from audit.metrics.functional.alpha_beta import SUMMARY_RANGE, alpha_beta, prepare_supports
    from audit.stats import half_sample_weights, jackknife_interval

    supports = prepare_supports(real, synthetic, case, device=device)
    n = real.shape[0]
    point = alpha_beta(supports, np.ones(n))
    replicates: dict[str, list[np.ndarray]] = {name: [] for name in ALPHA_BETA_METRICS}
    step = max(1, (1 << 22) // n)  # replicates per block: the (replicates × cases) weights stay small
    for start in range(0, resamples, step):
        out = alpha_beta(supports, half_sample_weights(rng, n, min(step, resamples - start)))
        replicates["alpha_precision"].append(out.alpha_precision)
        replicates["beta_recall"].append(out.beta_recall)
    values = {}
    for name, estimate in (
        ("alpha_precision", point.alpha_precision[0]),
        ("beta_recall", point.beta_recall[0]),
    ):
        lo, hi = jackknife_interval(float(estimate), np.concatenate(replicates[name]), n, confidence)
        # The summary's range is [-1/29, 1] on the 30-step grid: the interval is clipped to it.
        values[name] = (float(estimate), max(lo, SUMMARY_RANGE[0]), min(hi, SUMMARY_RANGE[1]))
    return values


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
