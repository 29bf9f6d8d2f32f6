"""XReal (Hashmi et al.): Table I, quantitative metrics and the radiologists' average scores."""

from __future__ import annotations

from pathlib import Path

from audit.config import toml_string
from audit.recipes import demo_data
from audit.recipes.base import (
    READER,
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

NAME = "xreal"
PAPER = "xreal-anatomy-pathology-control.txt"
CITATION = (
    "Hashmi et al., XReal: Realistic Anatomy and Pathology-Aware X-ray Generation via Controllable "
    "Diffusion Model"
)
QUANT = "Quantitative Results"
# (metric, header as printed, real row shows "—" as in the paper)
COLUMNS = (
    ("ms_ssim", "MS-SSIM↑", True),
    ("fid", "FID↓", True),
    ("dice_mean", "Dice↑", True),
    ("pathology_f1", "F1↑", False),
    ("pathology_auc", "AUC↑", False),
)
READERS = (("anatomy", "Anatomy↑"), ("pathology", "Pathology↑"))
# The paper's rows (user template names) and the demo's generators.
ROWS = {
    "cheff": RowSpec("Text-to-Image", "Cheff"),
    "roentgen": RowSpec("Text-to-Image", "RoentGen"),
    "controlnet": RowSpec("Text + Spatial Control", "ControlNet"),
    "xreal": RowSpec("Text + Spatial Control", "XReal"),
    "cond-ddpm": RowSpec("Spatial control (demo)", "cond-ddpm"),
    "sdedit": RowSpec("Image-to-image (demo)", "sdedit"),
    "unet-regressor": RowSpec("Regression baseline (demo)", "unet-regressor"),
}
REAL_LABEL = "Real Images"

PUBLISHED = (
    Published(
        title="XReal, Table I",
        caption=(
            "Performance comparison of XReal with SOTA X-ray image generation methods using our "
            "quantitative and qualitative evaluation framework. What we refer to as the real images is the "
            "MIMIC-CXR test set to establish the upper bound of performance. ‡ControlNet [32] was "
            "implemented using our LDM backbone. †Reproduced results using the same data split trained on "
            "the MIMIC-CXR train set and tested on the test set."
        ),
        header=("Model type", "Model", "MS-SSIM↑", "FID↓", "Dice↑", "F1↑", "AUC↑", "Anatomy↑", "Pathology↑"),
        rows=(
            ("Text-to-Image", "Cheff† [2]", "0.415", "24.640", "0.500", "0.510", "0.640", "2.927", "3.180"),
            ("", "RoentGen [1]", "0.386", "82.140", "0.631", "0.550", "0.800", "3.761", "3.130"),
            (
                "Text + Spatial Control",
                "ControlNet‡ [32]",
                "0.630",
                "29.480",
                "0.835",
                "0.560",
                "0.740",
                "3.421",
                "3.372",
            ),
            ("", "XReal (Ours)", "0.701", "55.120", "0.838", "0.570", "0.743", "4.167", "4.130"),
            ("", "Real Images", "—", "—", "—", "0.610", "0.800", "3.631", "3.561"),
        ),
        source=f"{PAPER}, lines 153-161",
        data=(
            "MIMIC-CXR official test split, images resized to 256×256 for training; DenseNet-121 trained "
            "on MIMIC-CXR for F1/AUC (weights not named), a TorchXRayVision segmentation model for Dice, "
            "ImageNet Inception for FID; 2 radiologists rating 1-5. Metric resolution, MS-SSIM data range, "
            "F1 threshold, class set and test-set size are not stated."
        ),
    ),
)


def layout(view: RunView) -> list[PaperTable]:
    readers = [(c, label) for c, label in READERS if f"{READER}{c}" in view.metrics]
    reader_group = (
        "Avg. Radiologist Scores" if not view.simulated_readers else "Avg. reader scores (SIMULATED)"
    )
    header_top = ("Model type", "Model", *[QUANT] * len(COLUMNS), *[reader_group] * len(readers))
    header = ("Model type", "Model", *[label for _, label, _ in COLUMNS], *[label for _, label in readers])
    rows = []
    last_group = None
    for model, spec in ordered_rows(view, ROWS, REAL_LABEL):
        group = spec.group if spec.group != last_group else ""
        last_group = spec.group
        cells = [Ref(model, metric, dash=dash and view.kind(model) == "real") for metric, _, dash in COLUMNS]
        cells += [Ref(model, f"{READER}{c}") for c, _ in readers]
        rows.append((group, spec.label, *cells))
    notes = [
        (
            "Dice is dice_mean: per image the mean over lungs, heart and aorta where defined, then the mean "
            "over cases (the paper does not say how it averages structures; dice_lungs, dice_heart and "
            "dice_aorta in comparison.csv give the other readings)."
        ),
        "F1 and AUC are macro over the classifier's classes present in the cases' labels.",
    ]
    if not readers and any(m.startswith(READER) for m in view.metrics):
        notes.append("No reader columns: the ratings have no anatomy or pathology criterion.")
    elif not readers:
        notes.append(
            "No reader columns: give the ratings with --reader-study STUDY_DIR|ratings.csv, or set "
            "[reader_study].ratings in the study config."
        )
    if view.simulated_readers:
        notes.append("Reader scores come from SIMULATED readers (demo), not radiologists.")
    return [
        PaperTable(
            title="Table I (XReal layout)",
            caption="Quantitative metrics against the real images and average reader scores 1-5.",
            header=(header_top, header),
            rows=tuple(rows),
            row_labels=2,
            notes=tuple(notes),
        )
    ]


def study_toml() -> str:
    return f"""\
{template_preamble(f"XReal, Table I ({CITATION})", NAME, PAPER)}
[study]
name = "xreal-table-1"
# "we used the official test split to evaluate model performance": one row per test image with
# image, prompt (the report), labels ("pathology labels") and anatomy_mask columns.
cases = "CASES.csv"
output = "runs/xreal"
seed = 0
samples_per_case = 1

# "Text-to-Image" models: generated "by providing the corresponding reports".
[[models]]
name = "cheff"
kind = "folder"
path = "GENERATED/cheff/{{case_id}}.png"

[[models]]
name = "roentgen"
kind = "folder"
path = "GENERATED/roentgen/{{case_id}}.png"

# "Text + Spatial Control": "an image generated using the corresponding anatomy mask and pathology
# label from the same image".
[[models]]
name = "controlnet"
kind = "folder"
path = "GENERATED/controlnet/{{case_id}}.png"

[[models]]
name = "xreal"
kind = "folder"
path = "GENERATED/xreal/{{case_id}}.png"

# "the real images is the MIMIC-CXR test set to establish the upper bound of performance"
[[models]]
name = "real"
kind = "real"

[metrics]
# "MS-SSIM between a real image and an image generated using the corresponding anatomy mask and
# pathology label from the same image" (paired, higher = more realistic).
pixel = ["ms_ssim"]
# "classification performance measures (F_1 and AUC) are calculated by passing the generated image
# through DenseNet-121 [47] model"; "The reported macro- F_1 score is calculated by aggregating the F_1
# scores for each class"; "We calculate the Dice score between segmented lungs, aorta, and heart from
# the original and generated images".
clinical = ["pathology_f1", "pathology_auc", "dice"]
# "Fréchet Inception Distance (FID) ... using an ImageNet-trained Inception model"
distribution = ["fid"]
# The paper does not name its F1 threshold: "operating_point" (xrv's calibrated 0.5); "fit_on_real"
# gives the other reading (per class, the F1-maximising threshold on the real images).
pathology_threshold = "operating_point"
bootstrap_resamples = 1000
confidence = 0.95

[evaluators]
# "This classification model is trained on the MIMIC-CXR dataset": torchxrayvision's MIMIC-CXR
# DenseNet-121 (the paper does not name its weights).
classifier = "xrv"
classifier_weights = "densenet121-res224-mimic_ch"
# "a pre-trained X-ray segmentation model available in TorchXRyVision [sic] library": the ChestX-Det PSPNet.
segmenter = "xrv"
features = "inception"
device = "auto"

# "two experienced radiologists ... rank the generated and real images ... from 1 (lowest) to 5
# (highest), based on anatomy, pathology realism, and image quality". Create the study with
#   xray-audit reader-study create RUN_DIR --out STUDY_DIR --readers r1,r2 --criteria anatomy,pathology,quality
# and `report` reads its ratings from here.
[reader_study]
ratings = "STUDY_DIR"
"""


def recipe_md() -> str:
    return f"""\
# Recipe `xreal`: Table I of XReal

{CITATION} (`../shared/papers/{PAPER}`).

## Commands

```bash
xray-audit init xreal DIR          # this file and DIR/study.toml (fill in the placeholders)
xray-audit run DIR/study.toml
xray-audit reader-study create runs/xreal --out STUDY_DIR --readers r1,r2 --criteria anatomy,pathology,quality
xray-audit report runs/xreal --layout xreal      # table-xreal.md/.tex/.csv beside the standard outputs
```

## How the paper's table maps onto the suite

| paper column | suite metric | notes |
|---|---|---|
| MS-SSIM↑ | `ms_ssim` | paired: each generated image against the real image of its case |
| FID↓ | `fid` | Inception-v3 (torch-fidelity weights) |
| Dice↑ | `dice_mean` | torchxrayvision PSPNet on the generated and the real image; lungs, heart, aorta |
| F1↑, AUC↑ | `pathology_f1`, `pathology_auc` | torchxrayvision DenseNet-121 (MIMIC-CXR weights), macro over classes |
| Anatomy↑, Pathology↑ | reader scores `anatomy`, `pathology` | mean over readers and items, 1-5 |

The Real Images row shows "—" for MS-SSIM, FID and Dice, as the paper prints it (the real images
against themselves).

## Choices where the paper is ambiguous

- **Dice across structures**: the paper segments "lungs, heart, and aorta" but does not say how it
  averages them. The recipe uses `dice_mean` (per image, the mean over the structures present; then
  the mean over cases). The per-structure columns `dice_lungs`, `dice_heart`, `dice_aorta` (in
  `comparison.csv` and `summary.csv`) give the other reading (mean of per-structure means).
- **F1 threshold**: not named. The recipe uses `pathology_threshold = "operating_point"`;
  `"fit_on_real"` gives the other reading.
- **AUC averaging**: not stated; the suite's AUC is macro over classes with both label values.
- **Classifier weights**: "DenseNet-121 trained on MIMIC-CXR", weights not named; the recipe uses
  torchxrayvision's `densenet121-res224-mimic_ch` (`classifier_weights` names another).

## What the suite adds

Case-bootstrap 95% CIs on every cell (in `table-xreal.csv` with N, and as a second line in md/tex),
paired model-vs-model tests (`paired_tests.csv`), the reader statistics (mixed model, agreement,
Turing test) in `report.html`, and the evaluators' weights hashes in every table.

## What it cannot reproduce without the paper's data and weights

The MIMIC-CXR test split, the authors' generated images, their classifier checkpoint and their two
radiologists. The published numbers below are the paper's, on its data: compare your row with
them for orientation only.

## Published (the paper's own numbers)

{published_markdown(PUBLISHED)}"""


def demo(directory: Path, progress: bool) -> DemoStudy:
    cases = demo_data.chest_cases(progress)
    out = directory.resolve()
    ratings = out / "simulated-readers" / "ratings.csv"
    lines = demo_data.study_header("xreal-demo", cases, out / "run", [demo_data.DEMO_NOTE])
    lines += demo_data.generator_tables(demo_data.GENERATORS)
    lines += [
        "",
        "[metrics]",
        'pixel = ["ms_ssim"]',
        'clinical = ["pathology_f1", "pathology_auc", "dice"]',
        'distribution = ["fid"]',
        "",
        "# auto: the pretrained evaluators when their verified weights are present, else the demo ones.",
        "[evaluators]",
        'classifier = "auto"',
        'segmenter = "auto"',
        'features = "auto"',
        "",
        "# SIMULATED readers (demo only): `run` writes their ratings here; every table says so.",
        "[reader_study]",
        f"ratings = {toml_string(ratings)}",
        "simulate_readers = 2",
        "",
    ]
    return demo_data.write_study(
        out, lines, (demo_data.DEMO_NOTE, "Reader scores: 2 SIMULATED readers, not radiologists.")
    )


RECIPE = Recipe(
    name=NAME,
    paper=PAPER,
    citation=CITATION,
    summary="XReal Table I: MS-SSIM, FID, Dice, F1, AUC and the radiologists' anatomy/pathology scores",
    study_toml=study_toml,
    recipe_md=recipe_md,
    layout=layout,
    published=PUBLISHED,
    demo=demo,
)
