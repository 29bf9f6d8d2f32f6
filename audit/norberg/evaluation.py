"""Norberg-angle agreement of a finished run: ``xray-audit norberg evaluate RUN_DIR``.

The real images' angles come from the annotation file (the experts' landmarks); every model's
samples, the ``real`` row included, are measured by a keypoint detector (``xray-audit landmarks
train`` or a user TorchScript model, verified by sha256). Each model's detected angles are then
compared with the annotated angles of the same case and side (:func:`norberg_table`): the ``real``
row is detector-vs-annotation agreement, the upper bound a generator can reach with this detector.

Outputs in the run directory (atomic writes; nothing the runner wrote is modified):

- ``norberg_angles.parquet``: ``model, case_id, sample, side, angle_deg, reference_deg, source``,
  one row per sample and side (``angle_deg`` NaN with ``error`` when the detected points are
  degenerate);
- ``norberg_summary.csv``: the columns of ``summary.csv`` (``model, metric, value, ci_low, ci_high,
  n, higher_is_better, unit, group, evaluator``), one row per Norberg metric, pooled and per side.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit import rundir
from audit.atomic import atomic_path, sha256_file, write_text
from audit.metrics.functional.norberg import norberg_metric, norberg_summary_rows, norberg_table
from audit.norberg.geometry import SIDES, GeometryError, case_angles
from audit.norberg.landmarks import read_landmarks

log = logging.getLogger(__name__)

ANGLES_FILE = "norberg_angles.parquet"
SUMMARY_FILE = "norberg_summary.csv"
ANGLE_COLUMNS = ["model", "case_id", "sample", "side", "angle_deg", "reference_deg", "source", "error"]
SUMMARY_COLUMNS = [
    "model", "metric", "value", "ci_low", "ci_high", "n", "higher_is_better", "unit", "group", "evaluator",
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class NorbergEvaluation:
    angles: pd.DataFrame
    summary: pd.DataFrame
    angles_path: Path
    summary_path: Path


def _sample_path(run_dir: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else run_dir / path


def _study_settings(run_dir: Path) -> tuple[int, int, float]:
    import tomllib

    config_path = run_dir / rundir.CONFIG_TOML
    config = tomllib.loads(config_path.read_text()) if config_path.exists() else {}
    study = config.get("study", {}) if isinstance(config.get("study"), Mapping) else {}
    metrics = config.get("metrics", {}) if isinstance(config.get("metrics"), Mapping) else {}
    return (
        int(study.get("seed", 0) or 0),
        int(metrics.get("bootstrap_resamples", 1000)),
        float(metrics.get("confidence", 0.95)),
    )


def detect_angles(
    run_dir: Path,
    samples: pd.DataFrame,
    detector: Any,
    reference: Mapping[str, Mapping[str, float]],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """Detected Norberg angles of every sample (rows of :data:`ANGLE_COLUMNS`).

    Each file is checked against the sha256 the run recorded before it is measured, so the angles
    belong to the images that were scored.
    """
    from tqdm.auto import tqdm

    from audit import images

    source = f"detector:{Path(str(detector.spec.model)).name}@{detector.spec.sha256[:12]}"
    rows: list[dict[str, Any]] = []
    records = samples.to_dict("records")
    bar = tqdm(total=len(records), desc="norberg", unit="image", disable=not progress)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        pixels = []
        for rec in chunk:
            path = _sample_path(run_dir, str(rec["path"]))
            digest = sha256_file(path)
            if rec.get("sha256") and digest != rec["sha256"]:
                raise ValueError(
                    f"{path}: sha256 {digest[:12]}… differs from the {rec['sha256'][:12]}… that "
                    f"{run_dir / rundir.SAMPLES} recorded for ({rec['model']}, {rec['case_id']}, "
                    f"sample {rec['sample']}); the file changed after the run: rerun `xray-audit run`"
                )
            pixels.append(images.read_image(path).pixels)
        points = detector.predict(pixels, batch_size)
        for rec, xy in zip(chunk, points, strict=True):
            named = {name: (float(p[0]), float(p[1])) for name, p in zip(detector.landmarks, xy, strict=True)}
            try:
                angles, error = case_angles(named), ""
            except GeometryError as exc:
                angles, error = dict.fromkeys(SIDES, math.nan), str(exc)
            ref = reference.get(str(rec["case_id"]), {})
            for side in SIDES:
                rows.append(
                    {
                        "model": str(rec["model"]),
                        "case_id": str(rec["case_id"]),
                        "sample": int(rec["sample"]),
                        "side": side,
                        "angle_deg": float(angles[side]),
                        "reference_deg": float(ref.get(side, math.nan)),
                        "source": source,
                        "error": error,
                    }
                )
        bar.update(len(chunk))
    bar.close()
    return pd.DataFrame(rows, columns=ANGLE_COLUMNS)


def summarise_angles(
    angles: pd.DataFrame, *, seed: int, resamples: int, confidence: float, evaluator: str
) -> pd.DataFrame:
    """summary.csv-shaped Norberg rows per model from :func:`detect_angles`' frame.

    A case's detected angle per side is the mean over its samples (as pixel metrics average a case's
    samples); cases without an annotation or with a degenerate detection are left out of N.
    """
    rows = []
    usable = angles[np.isfinite(angles["angle_deg"]) & np.isfinite(angles["reference_deg"])]
    for i, model in enumerate(dict.fromkeys(angles["model"])):
        per_case = (
            usable[usable["model"] == model]
            .groupby(["case_id", "side"], as_index=False, sort=True)
            .agg(angle_deg=("angle_deg", "mean"), reference_deg=("reference_deg", "first"))
        )
        if per_case.empty:
            log.warning("norberg: model %s has no case with both a detected and an annotated angle", model)
            continue
        rng = np.random.default_rng([seed, i, 105])
        table = norberg_table(
            per_case["case_id"].to_numpy(),
            per_case["side"].to_numpy(),
            per_case["reference_deg"].to_numpy(np.float64),
            per_case["angle_deg"].to_numpy(np.float64),
            rng=rng,
            resamples=resamples,
            confidence=confidence,
        )
        for row in norberg_summary_rows(model, table, evaluator=evaluator):
            spec = norberg_metric(row["metric"])
            hib = spec.higher_is_better
            rows.append({**row, "higher_is_better": "" if hib is None else hib, "unit": spec.unit})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def evaluate_norberg(
    run_dir: str | Path,
    annotations: str | Path,
    detector_dir: str | Path,
    *,
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = False,
) -> NorbergEvaluation:
    """Measure every sample of a finished run and write :data:`ANGLES_FILE` and :data:`SUMMARY_FILE`."""
    from audit.norberg.detector import KeypointDetector

    run = rundir.require_run_dir(run_dir)
    samples = pd.read_parquet(run / rundir.SAMPLES)
    samples["case_id"] = samples["case_id"].astype(str)
    landmarks = read_landmarks(annotations)
    reference: dict[str, dict[str, float]] = {}
    for cid, points in landmarks.items():
        reference[cid] = case_angles(points)
    missing = sorted(set(samples["case_id"]) - set(reference))
    if len(missing) == samples["case_id"].nunique():
        raise ValueError(
            f"{annotations}: no case of {run / rundir.SAMPLES} is annotated (e.g. {missing[0]!r}); "
            "the annotation file's case_id values must be the run's case ids"
        )
    if missing:
        log.warning(
            "norberg: %d case(s) have no annotation and are left out: %s", len(missing), ", ".join(missing[:5])
        )
    detector = KeypointDetector.load(detector_dir, device=device)
    angles = detect_angles(run, samples, detector, reference, batch_size=batch_size, progress=progress)
    seed, resamples, confidence = _study_settings(run)
    evaluator = f"{Path(str(detector.spec.model)).name} (sha256 {detector.spec.sha256[:12]})"
    summary = summarise_angles(angles, seed=seed, resamples=resamples, confidence=confidence, evaluator=evaluator)
    angles_path, summary_path = run / ANGLES_FILE, run / SUMMARY_FILE
    with atomic_path(angles_path) as tmp:
        angles.to_parquet(tmp, index=False)
    with atomic_path(summary_path) as tmp:
        summary.to_csv(tmp, index=False)
    write_text(
        run / "norberg.json",
        json.dumps(
            {
                "annotations": str(Path(annotations).resolve()),
                "annotations_sha256": sha256_file(annotations),
                "detector": str(Path(str(detector.spec.model)).resolve()),
                "detector_sha256": detector.spec.sha256,
                "bootstrap_resamples": resamples,
                "confidence": confidence,
                "seed": seed,
                "degenerate_detections": int((angles["error"] != "").sum() // len(SIDES)),
            },
            indent=2,
        )
        + "\n",
    )
    return NorbergEvaluation(angles, summary, angles_path, summary_path)
