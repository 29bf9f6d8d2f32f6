"""Norberg-angle agreement of a run: ``[norberg]`` in the study config, or ``xray-audit norberg
evaluate RUN_DIR`` afterwards.

The real images' angles come from the annotation file (the experts' landmarks). Every model's
samples, the ``real`` row included, are measured by one or both of two sources:

- ``detector``: a keypoint detector (``xray-audit landmarks train`` or a user TorchScript model,
  verified by sha256);
- ``readers``: the landmarks experts placed on the blinded images in the reader study
  (``xray-audit reader-study export`` writes ``landmarks.csv``); a sample's angle per side is the mean over its
  readers and reads.

Each model's measured angles are compared with the annotated angles of the same case and side
(:func:`norberg_table`): the ``real`` row is measurement-vs-annotation agreement, the upper bound a
generator can reach with that source.

Outputs in the run directory (atomic writes; nothing the runner wrote is modified):

- ``norberg_angles.parquet``: ``model, case_id, sample, side, angle_deg, reference_deg, source``,
  one row per sample and side (``angle_deg`` NaN with ``error`` when the detected points are
  degenerate);
- ``norberg_summary.csv``: the columns of ``summary.csv`` (``model, metric, value, ci_low, ci_high,
  n, higher_is_better, unit, group, evaluator``) and ``source`` (``detector`` or ``readers``), one row
  per source, model and Norberg metric, pooled and per side.

Evaluating one source keeps the other source's rows of both files, so a run scored with the
detector from its config can later add the reader study's measurements.
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
from audit.metrics import catalogue
from audit.metrics.functional.norberg import norberg_summary_rows, norberg_table
from audit.norberg.geometry import (
    PATIENT_LEFT_ON,
    SIDES,
    GeometryError,
    case_angles,
    locate_head_center,
    norberg_angle,
    other_side,
    rim,
)
from audit.norberg.landmarks import read_landmarks

log = logging.getLogger(__name__)

ANGLE_COLUMNS = ["model", "case_id", "sample", "side", "angle_deg", "reference_deg", "source", "error"]
SUMMARY_COLUMNS = [
    "model", "metric", "value", "ci_low", "ci_high", "n", "higher_is_better", "unit", "group", "evaluator",
    "source",
]  # fmt: skip
SOURCES = ("detector", "readers")
READER_COLUMNS = ("reader", "model", "case_id", "sample", "read_number", "landmark", "x", "y")


@dataclasses.dataclass(frozen=True)
class NorbergEvaluation:
    angles: pd.DataFrame
    summary: pd.DataFrame
    angles_path: Path
    summary_path: Path


def _sample_path(run_dir: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else run_dir / path


@dataclasses.dataclass(frozen=True)
class RunSettings:
    seed: int
    resamples: int
    confidence: float
    patient_left: str  # the run's [norberg].patient_left, else the standard display


def run_settings(run_dir: Path) -> RunSettings:
    """What a finished run's config.toml fixes for a later Norberg measurement: seed, bootstrap and
    display convention (the reader study takes its sides from it too), read by the one reader of run
    settings, :class:`audit.rundir.RunSettings`."""
    settings = rundir.RunSettings.read(run_dir)
    norberg = settings.raw.get("norberg", {})
    side = norberg.get("patient_left", PATIENT_LEFT_ON[0]) if isinstance(norberg, Mapping) else None
    return RunSettings(
        settings.seed,
        settings.bootstrap_resamples,
        settings.confidence,
        str(side or PATIENT_LEFT_ON[0]),
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


def _side_angles(points: Mapping[str, tuple[float, float]]) -> tuple[dict[str, float], str]:
    """Angle per side, NaN for a side that cannot be measured (a reader may mark only one hip)."""
    try:
        return case_angles(points), ""
    except GeometryError as whole:
        angles, errors = {}, []
        for side in SIDES:
            try:
                centres = {s: locate_head_center(points, s) for s in SIDES}
                if rim(side) not in points:
                    raise GeometryError(f"{side} hip: no {rim(side)}")
                angles[side] = norberg_angle(centres[side], centres[other_side(side)], points[rim(side)])
            except GeometryError as exc:
                angles[side] = math.nan
                errors.append(str(exc))
        return angles, "; ".join(dict.fromkeys(errors)) or str(whole)


def read_reader_landmarks(path: str | Path) -> pd.DataFrame:
    """The reader study's landmark export (``landmarks.csv`` or ``.parquet`` of ``xray-audit reader-study
    export``), checked for the columns :data:`READER_COLUMNS` and for usable coordinates."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: reader landmark export not found; write it with `xray-audit reader-study export STUDY_DIR`"
        )
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path, dtype={"reader": str, "model": str, "case_id": str, "landmark": str})
    else:
        raise ValueError(
            f"{path}: use the .csv or .parquet landmark export of `xray-audit reader-study export`"
        )
    missing = [c for c in READER_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: no column(s) {', '.join(missing)}; this is not the reader study's landmark export "
            f"(expected {', '.join(READER_COLUMNS)}). Annotation files of real images go to --annotations"
        )
    frame = frame.astype({"reader": str, "model": str, "case_id": str, "landmark": str})
    for column in ("x", "y"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(~np.isfinite(values.to_numpy(np.float64)))
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"{path}: row {row + 1} (CSV line {row + 2}): {column} = {frame[column].iloc[row]!r} is not a "
                f"finite pixel coordinate ({bad.size} such row(s)); re-export the study or drop the row"
            )
        frame[column] = values.astype(np.float64)
    for column in ("sample", "read_number"):
        frame[column] = pd.to_numeric(frame[column], errors="raise").astype(np.int64)
    return frame


def reader_angles(
    run_dir: Path,
    samples: pd.DataFrame,
    placed: pd.DataFrame,
    reference: Mapping[str, Mapping[str, float]],
    *,
    where: str | Path = "reader landmarks",
) -> pd.DataFrame:
    """Angles from expert-placed landmarks, one row per (reader, read, sample, side) as
    :data:`ANGLE_COLUMNS` with ``source = "reader:<name>"``.

    Each placed image must be a sample of this run (model, case_id, sample), so a study built from
    another run is refused instead of being compared with the wrong references.
    """
    known = set(
        zip(samples["model"].astype(str), samples["case_id"].astype(str), samples["sample"].astype(int))
    )
    keys = ["reader", "read_number", "model", "case_id", "sample"]
    rows: list[dict[str, Any]] = []
    foreign = []
    for (reader, _, model, case_id, sample), group in placed.groupby(keys, sort=True):
        if (model, case_id, int(sample)) not in known:
            foreign.append(f"({model}, {case_id}, sample {sample})")
            continue
        points = {
            str(n): (float(x), float(y))
            for n, x, y in zip(group["landmark"], group["x"], group["y"], strict=True)
        }
        angles, error = _side_angles(points)
        ref = reference.get(str(case_id), {})
        for side in SIDES:
            rows.append(
                {
                    "model": model,
                    "case_id": case_id,
                    "sample": int(sample),
                    "side": side,
                    "angle_deg": float(angles[side]),
                    "reference_deg": float(ref.get(side, math.nan)),
                    "source": f"reader:{reader}",
                    "error": error if not math.isfinite(angles[side]) else "",
                }
            )
    if foreign:
        raise ValueError(
            f"{where}: {len(foreign)} placed image(s) are not samples of {run_dir / rundir.SAMPLES}, e.g. "
            f"{foreign[0]}; was the reader study created from this run (`xray-audit reader-study create {run_dir}`)?"
        )
    if not rows:
        raise ValueError(
            f"{where}: no landmarks placed yet; export the study after readers have placed points"
        )
    return pd.DataFrame(rows, columns=ANGLE_COLUMNS)


def source_kind(source: str) -> str:
    """``detector`` or ``readers`` for an angle row's ``source``."""
    return "readers" if str(source).startswith("reader:") else "detector"


def summarise_angles(
    angles: pd.DataFrame,
    *,
    seed: int,
    resamples: int,
    confidence: float,
    evaluator: str,
    source: str = "detector",
) -> pd.DataFrame:
    """summary.csv-shaped Norberg rows per model from one source's angle rows.

    A sample's angle per side is the mean over its measurements (readers and reads; the detector
    measures once); a case's is the mean over its samples (as pixel metrics average a case's
    samples). Cases without an annotation or without a usable measurement are left out of N.
    """
    rows = []
    usable = angles[np.isfinite(angles["angle_deg"]) & np.isfinite(angles["reference_deg"])]
    for i, model in enumerate(dict.fromkeys(angles["model"])):
        per_sample = (
            usable[usable["model"] == model]
            .groupby(["case_id", "sample", "side"], as_index=False, sort=True)
            .agg(angle_deg=("angle_deg", "mean"), reference_deg=("reference_deg", "first"))
        )
        per_case = per_sample.groupby(["case_id", "side"], as_index=False, sort=True).agg(
            angle_deg=("angle_deg", "mean"), reference_deg=("reference_deg", "first")
        )
        if per_case.empty:
            log.warning(
                "norberg (%s): model %s has no case with both a measured and an annotated angle",
                source,
                model,
            )
            continue
        # The stream of a model's resamples depends on the source, so detector and reader CIs are
        # not the same draws by accident of ordering.
        rng = np.random.default_rng([seed, i, 105, SOURCES.index(source)])
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
            spec = catalogue.spec(row["metric"])
            hib = spec.higher_is_better
            rows.append(
                {**row, "higher_is_better": "" if hib is None else hib, "unit": spec.unit, "source": source}
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def reference_angles(
    annotations: str | Path, case_ids: Any, *, patient_left: str = PATIENT_LEFT_ON[0]
) -> dict[str, dict[str, float]]:
    """Annotated angle per case and side, checked against the run's (or config's) case ids."""
    landmarks = read_landmarks(annotations, patient_left=patient_left)
    reference = {cid: case_angles(points) for cid, points in landmarks.items()}
    ids = sorted({str(c) for c in case_ids})
    missing = [c for c in ids if c not in reference]
    if ids and len(missing) == len(ids):
        raise ValueError(
            f"{annotations}: none of the {len(ids)} case(s) is annotated (e.g. {missing[0]!r}); "
            "the annotation file's case_id values must be the run's case ids"
        )
    if missing:
        log.warning(
            "norberg: %d case(s) have no annotation and are left out: %s",
            len(missing),
            ", ".join(missing[:5]),
        )
    return reference


def detector_evaluator(detector: Any) -> str:
    return f"{Path(str(detector.spec.model)).name} (sha256 {detector.spec.sha256[:12]})"


def measure_with_detector(
    run_dir: Path,
    samples: pd.DataFrame,
    detector: Any,
    reference: Mapping[str, Mapping[str, float]],
    *,
    seed: int,
    resamples: int,
    confidence: float,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(angles, summary rows) of every sample measured by ``detector``; used by the runner too."""
    angles = detect_angles(run_dir, samples, detector, reference, batch_size=batch_size, progress=progress)
    summary = summarise_angles(
        angles, seed=seed, resamples=resamples, confidence=confidence, evaluator=detector_evaluator(detector)
    )
    return angles, summary


def write_outputs(
    run_dir: Path, angles: pd.DataFrame, summary: pd.DataFrame, info: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write the Norberg files, keeping the rows of sources not in ``summary`` (atomic writes)."""
    fresh = set(summary["source"]) | {source_kind(s) for s in angles["source"]}
    angles_path, summary_path = run_dir / rundir.NORBERG_ANGLES, run_dir / rundir.NORBERG_SUMMARY
    info_path = run_dir / rundir.NORBERG_INFO
    old_info: dict[str, Any] = {}
    if angles_path.exists() and summary_path.exists():
        old_angles = pd.read_parquet(angles_path)
        old_summary = pd.read_csv(
            summary_path, dtype={"model": str, "metric": str, "group": str}, keep_default_na=False
        )
        if "source" not in old_summary.columns:  # files of an earlier version hold detector rows only
            old_summary["source"] = "detector"
        old_summary = old_summary.replace(
            {"ci_low": {"": math.nan}, "ci_high": {"": math.nan}, "value": {"": math.nan}}
        )
        keep_a = old_angles[~old_angles["source"].map(source_kind).isin(fresh)]
        keep_s = old_summary[~old_summary["source"].isin(fresh)]
        if len(keep_a):
            angles = pd.concat([keep_a[ANGLE_COLUMNS], angles], ignore_index=True)
        if len(keep_s):
            summary = pd.concat([keep_s[SUMMARY_COLUMNS], summary], ignore_index=True)
        if info_path.exists():
            old_info = json.loads(info_path.read_text())
    with atomic_path(angles_path) as tmp:
        angles.to_parquet(tmp, index=False)
    with atomic_path(summary_path) as tmp:
        summary.to_csv(tmp, index=False)
    merged = {k: v for k, v in old_info.items() if k in SOURCES and k not in fresh}
    merged.update(info)
    write_text(info_path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return angles_path, summary_path


def evaluate_norberg(
    run_dir: str | Path,
    annotations: str | Path,
    detector_dir: str | Path | None = None,
    *,
    reader_landmarks: str | Path | None = None,
    patient_left: str | None = None,
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = False,
) -> NorbergEvaluation:
    """Measure a finished run with the detector and/or the reader study's landmarks and write
    :data:`audit.rundir.NORBERG_ANGLES` and :data:`~audit.rundir.NORBERG_SUMMARY` (rows of the sources
    not measured now are kept).

    ``patient_left``: the display convention the annotation file is checked under (left/right swaps);
    by default the run config's ``[norberg] patient_left``, else ``image-right``.
    """
    if detector_dir is None and reader_landmarks is None:
        raise ValueError(
            "give a detector (--detector MODEL_DIR), reader landmarks (--reader-landmarks FILE), or both"
        )
    run = rundir.require_run_dir(run_dir)
    samples = pd.read_parquet(run / rundir.SAMPLES)
    samples["case_id"] = samples["case_id"].astype(str)
    settings = run_settings(run)
    patient_left = patient_left or settings.patient_left
    reference = reference_angles(annotations, samples["case_id"], patient_left=patient_left)
    seed, resamples, confidence = settings.seed, settings.resamples, settings.confidence
    common = {
        "patient_left": patient_left,
        "annotations": str(Path(annotations).resolve()),
        "annotations_sha256": sha256_file(annotations),
        "bootstrap_resamples": resamples,
        "confidence": confidence,
        "seed": seed,
    }
    angle_parts, summary_parts, info = [], [], {}
    if detector_dir is not None:
        from audit.norberg.detector import KeypointDetector

        detector = KeypointDetector.load(detector_dir, device=device)
        angles, summary = measure_with_detector(
            run, samples, detector, reference, seed=seed, resamples=resamples, confidence=confidence,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
        angle_parts.append(angles)
        summary_parts.append(summary)
        info["detector"] = {**common, **detector_info(detector, angles)}
    if reader_landmarks is not None:
        placed = read_reader_landmarks(reader_landmarks)
        angles = reader_angles(run, samples, placed, reference, where=reader_landmarks)
        readers = sorted(placed["reader"].unique())
        evaluator = f"expert landmarks, {len(readers)} reader(s)"
        summary = summarise_angles(
            angles,
            seed=seed,
            resamples=resamples,
            confidence=confidence,
            evaluator=evaluator,
            source="readers",
        )
        angle_parts.append(angles)
        summary_parts.append(summary)
        info["readers"] = {
            **common,
            "reader_landmarks": str(Path(reader_landmarks).resolve()),
            "reader_landmarks_sha256": sha256_file(reader_landmarks),
            "readers": readers,
            "measurements": int(len(angles) // len(SIDES)),
            "unmeasurable_sides": int((~np.isfinite(angles["angle_deg"])).sum()),
        }
    angles = pd.concat(angle_parts, ignore_index=True)
    summary = pd.concat(summary_parts, ignore_index=True)
    angles_path, summary_path = write_outputs(run, angles, summary, info)
    return NorbergEvaluation(angles, summary, angles_path, summary_path)


def detector_info(detector: Any, angles: pd.DataFrame) -> dict[str, Any]:
    return {
        "detector": str(Path(str(detector.spec.model)).resolve()),
        "detector_sha256": detector.spec.sha256,
        "degenerate_detections": int((angles["error"] != "").sum() // len(SIDES)),
    }
