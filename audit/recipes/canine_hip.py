"""Canine hips (Mahato, Roy & Kuppili): Norberg-angle agreement per side (Table 1) and FID per class
(Table 2)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import toml_string
from audit.recipes.base import (
    DemoStudy,
    PaperTable,
    Published,
    Recipe,
    Ref,
    RowSpec,
    RunView,
    ordered_rows,
    published_markdown,
    template_preamble,
)
from audit.recipes.demo_data import study_header, write_study

NAME = "canine-hip"
PAPER = "canine-hip-norberg-text-to-image.txt"
CITATION = "Mahato, Roy & Kuppili, Empowering Medical Imaging with Deep Learning: Text-to-Image Synthesis"
SIDES = (("left", "Left Angle"), ("right", "Right Angle"))
AGREEMENT = (("norberg_r", "Correlation Coeff."), ("norberg_r2", "R-squared"))
CLASS_COLUMNS = ("class", "group")  # the case column FID is split by: the template's, the phantom's
ROWS = {
    "llcm": RowSpec("", "LLCM"),
    "stable-diffusion": RowSpec("", "Stable Diffusion"),
    "dreambooth": RowSpec("", "Dreambooth"),
    "phantom-t2i": RowSpec("", "phantom-t2i (PHANTOM stand-in)"),
}
PHANTOM_NOTE = (
    "PHANTOM: drawn pelvis phantoms (audit/norberg/phantom.py), not anatomy. `phantom-t2i` is the same "
    "case's phantom redrawn with each angle moved by N(0, 4°), standing in for a generator; the landmark "
    "detector is a small network trained on other phantoms at init. Nothing here is evidence about real hips."
)

PUBLISHED = (
    Published(
        title="Canine hip, Table 1",
        caption="Evaluation Metrics for Image Generation Models",
        header=("Model", "Metric", "Left Angle", "Right Angle"),
        rows=(
            ("LLCM", "Correlation Coeff.", "0.2026", "0.1458"),
            ("", "R-squared", "0.0411", "0.0212"),
            ("Stable Diffusion", "Correlation Coeff.", "0.1307", "0.2747"),
            ("", "R-squared", "0.0170", "0.0754"),
            ("Dreambooth", "Correlation Coeff.", "0.1814", "0.1338"),
            ("", "R-squared", "0.0329", "0.0179"),
        ),
        source=f"{PAPER}, lines 303-311",
        data=(
            "84 test ventrodorsal canine pelvic radiographs (Cornell / OFA); angles from the "
            "Dog-Hip-Norberg-Angle-Measurement-Software; how angles were measured on generated images and "
            "the pairing are not stated. Stable Diffusion left R² 0.0170 is not 0.1307² (0.0171)."
        ),
    ),
    Published(
        title="Canine hip, Table 2 (DALL-E only)",
        caption="FID Scores for Different Classes",
        header=("Class", "FID Score"),
        rows=(("Class 1", "205.27"), ("Class 2", "498.41"), ("Class 3", "492.34"), ("Class 4", "271.92")),
        source=f"{PAPER}, lines 373-379",
        data=(
            "DALL-E V1 (discarded model, not in Table 1); four caption-style appearance classes, not "
            "dysplasia grades; reference set, sample counts and features are not stated."
        ),
    ),
)


SOURCE_WORDS = {"detector": "landmark detector", "readers": "expert landmarks (reader study)"}


def layout(view: RunView) -> list[PaperTable]:
    # One block of rows per measurement source in norberg_summary.csv (the detector of `run`, the
    # readers' landmarks of `norberg evaluate --reader-landmarks`); summary.csv's rows without it.
    sources = view.norberg_sources or ("",)
    rows = []
    for source in sources:
        words = SOURCE_WORDS.get(source, source or "landmark detector")
        for model, spec in ordered_rows(view, ROWS, f"Real images ({words} vs annotation)"):
            label = (
                spec.label if len(sources) == 1 or view.kind(model) == "real" else f"{spec.label} [{words}]"
            )
            for i, (metric, name) in enumerate(AGREEMENT):
                cells = [Ref(model, f"{metric}:{side}", digits=4, source=source) for side, _ in SIDES]
                rows.append((label if i == 0 else "", name, *cells))
    tables = [
        PaperTable(
            title="Table 1 (canine-hip layout)",
            caption="Agreement of generated with original Norberg angles, per side.",
            header=(("Model", "Metric", *[h for _, h in SIDES]),),
            rows=tuple(rows),
            row_labels=2,
            notes=(
                (
                    "Correlation Coeff. = Pearson r, R-squared = r² (norberg_r, norberg_r2), over cases, per "
                    "measurement source; the real row measures the real image against the annotation (the "
                    "upper bound)."
                ),
            ),
        )
    ]
    column = next((c for c in CLASS_COLUMNS if c in view.group_values), None)
    generators = [m for m, _ in ordered_rows(view, ROWS, "") if view.kind(m) != "real"]
    if column is not None and "fid" in view.metrics:
        labels = dict(ordered_rows(view, ROWS, ""))
        fid_rows = [
            (value, *[Ref(m, "fid", f"{column}={value}", digits=2) for m in generators])
            for value in view.group_values[column]
        ]
        tables.append(
            PaperTable(
                title="Table 2 (canine-hip layout)",
                caption=f"FID per class (case column `{column}`), per model.",
                header=(("Class", *[labels[m].label for m in generators]),),
                rows=tuple(fid_rows),
                row_labels=1,
                notes=("FID of each model's samples of the class against the real images of the class.",),
            )
        )
    return tables


def study_toml() -> str:
    return f"""\
{template_preamble(f"Canine hips, Tables 1-2 ({CITATION})", NAME, PAPER)}
[study]
name = "canine-hip"
# "anonymized ventrodorsal canine pelvic radiographs ... 84 testing images": one row per test image
# with its prompt (the caption the models were given) and a `class` column (the paper's caption classes).
cases = "CASES.csv"
output = "runs/canine-hip"
seed = 0
samples_per_case = 1

# "three deep learning models: Stable Diffusion, Dreambooth and LLCM"
[[models]]
name = "llcm"
kind = "folder"
path = "GENERATED/llcm/{{case_id}}.png"

[[models]]
name = "stable-diffusion"
kind = "diffusers-text2img"
path = "SD_PIPELINE"
prompt = "{{prompt}}"

[[models]]
name = "dreambooth"
kind = "folder"
path = "GENERATED/dreambooth/{{case_id}}.png"

[[models]]
name = "real"
kind = "real"

[metrics]
pixel = []
# Table 2: "FID scores ... across different classes"
distribution = ["fid"]
group_by = ["class"]

[evaluators]
features = "inception"

# Table 1: "Dot Plot of Original vs. Generated Left Angles"; "Correlation Coefficients and R-squared".
# "Annotations for femoral head center points, acetabulum boundaries, and femoral head radii were derived
# using the Dog-Hip-Norberg-Angle-Measurement-Software": the real images' landmarks go in `annotations`,
# and `detector` measures every image (real and generated) the same way. Expert landmarks on the generated
# images instead: a reader study with --landmarks norberg, then `xray-audit norberg evaluate RUN
# --reader-landmarks landmarks.csv`.
[norberg]
annotations = "LANDMARKS.csv"       # case_id, landmark, x, y of the real images
detector = "DETECTOR_DIR"           # `xray-audit landmarks train` output, or your model.json
"""


def recipe_md() -> str:
    return f"""\
# Recipe `canine-hip`: Norberg-angle agreement and FID per class

{CITATION} (`../shared/papers/{PAPER}`).

## Commands

```bash
xray-audit init canine-hip DIR
xray-audit run DIR/study.toml
xray-audit report runs/canine-hip --layout canine-hip     # table-canine-hip.*
```

## How the paper's tables map onto the suite

- **Table 1**: rows model × (Correlation Coeff., R-squared), columns Left Angle / Right Angle: the
  suite's `norberg_r:left`, `norberg_r:right`, `norberg_r2:left`, `norberg_r2:right` from the
  `[norberg]` landmark detector (or, with `norberg evaluate --reader-landmarks`, from experts'
  landmarks on the blinded images). The real row is the detector against the annotations: the upper
  bound the paper does not show.
- **Table 2**: FID per class through `[metrics].group_by = ["class"]`; one column per model (the paper
  reports FID for DALL-E only).

## Choices where the paper is ambiguous

- **Correlation**: the paper does not say "Pearson"; the suite's `norberg_r` is Pearson r and
  `norberg_r2` its square (5 of the paper's 6 R² values are its r² to rounding; Stable Diffusion left,
  0.0170, is not: 0.1307² = 0.0171).
- **Landmark source**: the paper's angles come from a measurement program, and it does not say how
  generated images were measured. The recipe measures every image with one detector (`[norberg]
  detector`); `norberg evaluate --reader-landmarks` gives the expert-landmark reading.
- **Classes**: the paper's four classes are caption styles, not dysplasia grades; put yours in the
  `class` column.

## What the suite adds

Bootstrap CIs over cases (both sides of a case resampled together), MAE, Bland-Altman limits, ICC
and κ of the normal/dysplastic call beside r and R², and the detector-vs-annotation upper bound.

## What it cannot reproduce without the paper's data and weights

The Cornell/OFA radiographs, the measurement software's landmarks and the trained models. The numbers
below are the paper's, on its data.

## Published (the paper's own numbers)

{published_markdown(PUBLISHED)}"""


def demo(directory: Path, progress: bool) -> DemoStudy:
    from audit.images import write_png
    from audit.norberg import train as tr
    from audit.norberg.phantom import _ALLOWED_ANGLES, ANGLE_RANGE, make_phantom, write_phantom_cohort

    out = directory.resolve()
    size = 128
    cohort = out / "phantom"
    if not (cohort / "cases.csv").is_file():
        write_phantom_cohort(cohort, n=40, seed=0, size=size)
    cases = pd.read_csv(cohort / "cases.csv", dtype=str)
    angles = pd.read_csv(cohort / "angles.csv", dtype={"case_id": str}).pivot(
        index="case_id", columns="side", values="angle_deg"
    )
    gen = out / "phantom-t2i"
    gen.mkdir(parents=True, exist_ok=True)
    lo, hi = _ALLOWED_ANGLES
    for i, case_id in enumerate(cases["case_id"]):
        moved = np.random.default_rng([7, i])
        left, right = (
            float(np.clip(angles.at[case_id, s] + moved.normal(0, 4.0), lo, hi)) for s in ("left", "right")
        )
        # The case's own phantom (write_phantom_cohort's generator for seed 0, index i, its two angle
        # draws consumed) drawn with the moved angles: the same pelvis, other hip angles.
        rng = np.random.default_rng([0, i])
        rng.uniform(*ANGLE_RANGE, size=2)
        write_png(gen / f"{case_id}.png", make_phantom(rng, size, (left, right)).image, bit_depth=16)
    detector = out / "detector"
    if not (detector / "model.json").is_file():
        train_cohort = out / "detector-training"
        if not (train_cohort / "cases.csv").is_file():
            write_phantom_cohort(train_cohort, n=64, seed=1, size=size)
        config = tr.TrainConfig(
            epochs=64, size=64, channels=(8, 16, 24), stem=2, stride=2, batch_size=8,
            learning_rate=0.01, val_fraction=0.2, seed=0,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
            tr.train_detector(
                train_cohort / "cases.csv",
                train_cohort / "landmarks.csv",
                detector,
                config,
                progress=progress,
            )
    lines = study_header("canine-hip-demo (PHANTOM)", cohort / "cases.csv", out / "run", [PHANTOM_NOTE])
    lines += [
        "",
        "[[models]]",
        'name = "phantom-t2i"',
        'kind = "folder"',
        f"path = {toml_string(f'{gen}/{{case_id}}.png')}",
        "",
        "[metrics]",
        "pixel = []",
        'distribution = ["fid"]',
        'group_by = ["group"]',
        "",
        "[evaluators]",
        'features = "auto"',
        'device = "cpu"',
        "",
        "[norberg]",
        f"annotations = {toml_string(cohort / 'landmarks.csv')}",
        f"detector = {toml_string(detector)}",
        "",
    ]
    return write_study(out, lines, (PHANTOM_NOTE,))


RECIPE = Recipe(
    name=NAME,
    paper=PAPER,
    citation=CITATION,
    summary="canine hips: Norberg-angle agreement (r, R²) per side and FID per class, detector or expert landmarks",
    study_toml=study_toml,
    recipe_md=recipe_md,
    layout=layout,
    published=PUBLISHED,
    demo=demo,
)
