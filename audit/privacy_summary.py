"""The privacy stage's summary rows, per model and ``[metrics].group_by`` group, handed to summary.csv
as finished rows (:func:`audit.privacy.run_privacy`):

* ``memorised_fraction``: a per-sample mean like the others, but its percentile-bootstrap CI over
  cases recalibrates the thresholds in every replicate (:func:`memorised_rows`);
* ``privacy_auc``, ``alpha_precision`` and ``beta_recall``: set-level comparisons of a model's samples
  with the held-out references.

The other per-sample privacy metrics are aggregated like every per-sample metric (:mod:`audit.summary`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from audit.config import StudyConfig
from audit.models.base import derive_seed

__all__ = ["alpha_beta_rows", "auc_rows", "calibration_training_rows", "memorised_rows"]

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


def memorised_rows(
    config: StudyConfig,
    frame: pd.DataFrame,
    ref_cases: np.ndarray,
    ref_features: np.ndarray,
    ref_pixels: np.ndarray,
    quantile: float,
    cases: pd.DataFrame,
) -> list[dict[str, Any]]:
    """``memorised_fraction`` per model and group: the mean over cases of each case's flagged share (as
    summary.csv's other per-sample means), with a percentile-bootstrap CI over cases in which every
    replicate recalibrates the thresholds.

    The thresholds are themselves estimates from the held-out references: at quantile 0.01 and 200
    references they rest on the two closest. For a generator that copies nothing (flagged at the
    quantile in truth), a 95 % interval that holds them fixed covered the quantile in 81 % of simulated
    studies (48 references at 0.05, and 224 at 0.01); recalibrating in every replicate, 92-93 %. So each
    replicate draws
    the study's cases with replacement once: the drawn cases' references set that replicate's
    thresholds (:func:`audit.metrics.functional.privacy.union_thresholds`), and every model's drawn
    samples are flagged against them. ``frame`` is privacy.parquet's rows (model, case_id,
    nn_distance, nn_distance_pixel, flagged); ``ref_features`` / ``ref_pixels`` the references'
    nearest-training distances, one per case of ``ref_cases``.
    """
    from audit.evaluation import groups_of
    from audit.metrics.functional.privacy import union_thresholds
    from audit.stats import percentile_ci

    m = config.metrics
    n_ref = len(ref_cases)
    position = {c: i for i, c in enumerate(ref_cases)}
    groups = [(g, np.isin(ref_cases, members)) for g, members in groups_of(cases, m.group_by)]
    rng = np.random.default_rng(derive_seed(config.study.seed, "", "bootstrap:memorised_fraction", 0))
    models = list(dict.fromkeys(frame["model"].astype(str)))
    per_model = {}
    for model in models:
        sel = frame[frame["model"].astype(str) == model]
        at = np.array([position[c] for c in sel["case_id"].astype(str)], dtype=np.int64)
        order = np.argsort(at, kind="stable")
        at = at[order]
        own, starts, counts = np.unique(at, return_index=True, return_counts=True)
        per_model[model] = (
            own,
            starts,
            counts,
            sel["nn_distance"].to_numpy(np.float64)[order],
            sel["nn_distance_pixel"].to_numpy(np.float64)[order],
            sel["flagged"].to_numpy(bool)[order],
        )
    replicates: dict[tuple[str, str], list[np.ndarray]] = {(mo, g): [] for mo in models for g, _ in groups}
    # Replicates in blocks: the (replicates × samples) flags of a model stay within 2^24 values.
    largest = max((len(v[3]) for v in per_model.values()), default=1)
    step = max(1, min(m.bootstrap_resamples, (1 << 24) // max(largest, n_ref, 1)))
    for start in range(0, m.bootstrap_resamples, step):
        b = min(step, m.bootstrap_resamples - start)
        drawn = rng.integers(0, n_ref, size=(b, n_ref))
        weight = np.zeros((b, n_ref))
        np.add.at(weight, (np.arange(b)[:, None], drawn), 1.0)
        t_f, t_p, _ = union_thresholds(ref_features[drawn], ref_pixels[drawn], quantile)
        for model, (own, starts, counts, f, px, _) in per_model.items():
            flags = (f[None, :] < t_f[:, None]) | (px[None, :] < t_p[:, None])
            share = np.add.reduceat(flags.astype(np.float64), starts, axis=1) / counts
            w = weight[:, own]
            for group, members in groups:
                wg = w * members[own]
                total = wg.sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    replicates[(model, group)].append(
                        np.where(total > 0, (wg * share).sum(axis=1) / total, np.nan)
                    )
    rows = []
    for model, (own, starts, counts, _, _, flagged) in per_model.items():
        share = np.add.reduceat(flagged.astype(np.float64), starts) / counts
        for group, members in groups:
            mine = share[members[own]]
            lo, hi = percentile_ci(np.concatenate(replicates[(model, group)]), m.confidence)
            rows.append(
                {"model": model, "metric": "memorised_fraction",
                 "value": float(mine.mean()) if mine.size else float("nan"), "ci_low": lo, "ci_high": hi,
                 "n": int(mine.size), "group": group, "evaluator": ""}
            )  # fmt: skip
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
