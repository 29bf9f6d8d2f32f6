"""Simulated readers for demos: a ratings export that is visibly not radiologists'.

A recipe's demo (``xray-audit init xreal --demo``) has no radiologists, but its table has reader
columns. ``[reader_study] simulate_readers = N`` makes ``xray-audit run`` write this export, in
the shape ``xray-audit reader-study export`` writes (:data:`reader_study.studydir.EXPORT_COLUMNS`,
then ``EXTRA_COLUMNS``), so every reader statistic runs on it unchanged. Its readers are named
``SIMULATED-1`` … and every table that shows reader scores from it says so (:func:`is_simulated`).

Scores: latent 3 + a model effect (drawn per model) + a reader effect + a case effect + noise,
rounded and cut to 1–5, per criterion; every item is rated once. The numbers mean nothing about
the images: they exist to exercise the pipeline and fill the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from reader_study import studydir

PREFIX = "SIMULATED-"
CRITERIA = ("anatomy", "pathology", "quality")


def is_simulated(ratings: pd.DataFrame) -> bool:
    """Whether any reader of an export is simulated (then every table of it must say so)."""
    return bool(ratings["reader"].astype(str).str.startswith(PREFIX).any())


def simulate_ratings(
    samples: pd.DataFrame, readers: int, seed: int, criteria: Sequence[str] = CRITERIA
) -> pd.DataFrame:
    """An export-shaped frame for ``samples`` (samples.parquet's rows: model, case_id, sample, and
    ``sha256`` empty for a failed sample, which is left out; the ``real`` rows are the references)."""
    if readers < 1:
        raise ValueError(f"readers must be >= 1, got {readers}")
    ok = samples[samples["sha256"].fillna("").astype(str) != ""] if "sha256" in samples else samples
    items = ok[["model", "case_id", "sample"]].drop_duplicates().reset_index(drop=True)
    rng = np.random.default_rng([seed, 20261205])
    models = sorted(items["model"].astype(str).unique())
    model_effect = dict(zip(models, rng.normal(0, 0.6, len(models)), strict=True))
    cases = sorted(items["case_id"].astype(str).unique())
    case_effect = dict(zip(cases, rng.normal(0, 0.4, len(cases)), strict=True))
    names = [f"{PREFIX}{i + 1}" for i in range(readers)]
    reader_effect = dict(zip(names, rng.normal(0, 0.3, readers), strict=True))
    rows = []
    for k, item in enumerate(items.itertuples(index=False)):
        real = item.model == "real"
        for reader in names:
            for criterion in criteria:
                latent = 3 + model_effect[item.model] + reader_effect[reader] + case_effect[str(item.case_id)]
                score = int(np.clip(np.rint(latent + rng.normal(0, 0.7)), 1, 5))
                rows.append(
                    {
                        "reader": reader,
                        "item": f"sim-{k:05d}",
                        "model": item.model,
                        "case_id": str(item.case_id),
                        # real items are the cases' own images: the export has no sample for them
                        "sample": pd.NA if real else int(item.sample),
                        "criterion": criterion,
                        "score": score,
                        "turing_answer": None,
                        "confidence": pd.NA,
                        "created_at": "",
                        "read_number": 1,
                        "calibration": False,
                        "flagged": False,
                        "flag_reason": "",
                        "seconds": pd.NA,
                        "updated_at": "",
                        "position": k,
                        "edits": 0,
                    }
                )
    frame = pd.DataFrame(rows, columns=[*studydir.EXPORT_COLUMNS, *studydir.EXTRA_COLUMNS])
    for col in ("score", "confidence", "read_number", "sample", "seconds", "position", "edits"):
        frame[col] = frame[col].astype("Int64")
    return frame


def write_simulated_ratings(run_dir: Path, target: Path, readers: int, seed: int) -> Path:
    """Simulate ``readers`` readers over the run's samples and write the export to ``target``
    (.csv or .parquet), atomically."""
    from audit import rundir
    from reader_study.admin import write_export

    target = Path(target)
    refuse_real_ratings(target)
    frame = simulate_ratings(pd.read_parquet(Path(run_dir) / rundir.SAMPLES), readers, seed)
    write_export(frame, target, neutralise=True)  # as `reader-study export` writes it: atomic, owner-only
    return target


def refuse_real_ratings(target: Path) -> None:
    """Raise when ``target`` holds anything but simulated ratings: simulating must never overwrite the
    ratings of real readers (a demo's [reader_study] block copied into a real study's config)."""
    from reader_study.study import StudyError

    target = Path(target)
    if not target.exists():
        return
    if target.is_dir():
        raise StudyError(
            f"[reader_study].ratings {target} is a directory (a real reader study?); simulated ratings go to "
            "a .csv or .parquet file of their own"
        )
    try:
        frame = pd.read_parquet(target) if target.suffix == ".parquet" else pd.read_csv(target, dtype=str)
        readers = frame["reader"].astype(str)
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:  # unreadable: not ours either
        raise StudyError(
            f"[reader_study].ratings {target} exists and is not a simulated ratings file ({exc}); it was "
            "left as it is. Point [reader_study].ratings at a new file, or remove simulate_readers"
        ) from None
    real = sorted(set(readers[~readers.str.startswith(PREFIX)]))
    if real:
        raise StudyError(
            f"[reader_study].ratings {target} holds ratings of real readers ({', '.join(real[:5])}); simulated "
            "ratings never overwrite them. Point [reader_study].ratings at a new file, or remove simulate_readers"
        )
