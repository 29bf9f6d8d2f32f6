"""The cases the demo generators were trained on, as a case manifest: what a privacy audit of the demo
compares their samples with (``[privacy].training_cases``, or a ``training-copy`` baseline's).

The shipped generators (:mod:`audit.demo.train_generators`) and evaluators
(:mod:`audit.demo.train_evaluators`) learnt from the seed-1 cohort of :data:`~train_evaluators.TRAIN_CASES`
cases at :data:`~train_evaluators.COHORT_SIZE` px, all but its last
:data:`~train_evaluators.VALIDATION_CASES` (held out for validation, never trained on). That cohort is
rendered once by :func:`audit.demo.cohort.build_cohort` into its content-keyed cache, shared with the
training scripts; the training subset is a second manifest beside its ``cases.csv``, so its relative
image and mask paths stay valid.

Case ids get the prefix ``seed1-``: the rendered cohorts number their cases from ``demo-000`` whatever
their seed, and a training case must never share an id with an audited (seed-0) case in a report.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from audit.atomic import write_text
from audit.demo import cohort
from audit.demo import train_evaluators as te

MANIFEST_NAME = "generator_training.csv"
# The cohort's own id of each training case, kept so that a row can be traced back to cases.csv.
COHORT_CASE_COLUMN = "cohort_case_id"


def training_case_count() -> int:
    return te.TRAIN_CASES - te.VALIDATION_CASES


def generator_training_cases(root: Path | None = None, progress: bool = True) -> Path:
    """Build (or reuse) the demo generators' training cohort; returns its manifest path.

    ``root`` is the cohort's directory (default :func:`audit.demo.cohort.cohort_dir` of the training
    parameters, the cache the training scripts use). The manifest is rewritten only when its content
    would change, so a cached call leaves every file as it was.
    """
    full = cohort.build_cohort(
        n_cases=te.TRAIN_CASES, size=te.COHORT_SIZE, seed=te.TRAIN_SEED, root=root, progress=progress
    )
    # CSV cells stay strings so the ids and numbers are copied exactly as the cohort wrote them.
    frame = pd.read_csv(full, dtype=str, keep_default_na=False).iloc[: training_case_count()]
    frame.insert(1, COHORT_CASE_COLUMN, frame["case_id"])
    frame["case_id"] = [f"seed{te.TRAIN_SEED}-{cid}" for cid in frame["case_id"]]
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    text = buffer.getvalue()
    manifest = full.parent / MANIFEST_NAME
    try:
        current = manifest.read_text(encoding="utf-8")
    except OSError:
        current = None
    if current != text:
        write_text(manifest, text)
    return manifest
