"""Knee radiographs (Mei et al.): Table I, MAE and PSNR as mean ± std per condition type."""

from __future__ import annotations

from pathlib import Path

from audit.recipes import demo_data
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

NAME = "knee"
PAPER = "knee-radiograph-conditional-diffusion.txt"
CITATION = "Mei et al., Segmentation-Guided Knee Radiograph Generation using Conditional Diffusion Models"
CONDITION = "condition"  # the case column whose values are the table's columns
CONDITIONS = ("Contour", "Contour+bone")
# (metric, row label as printed, mean digits, std digits): "MAE 0.0209±0.007", "PSNR 29.188±2.22"
METRICS = (("mae", "MAE", 4, 3), ("psnr", "PSNR (dB)", 3, 2))
ROWS = {
    "unet": RowSpec("", "U-Net"),
    "csm": RowSpec("", "CSM"),
    "ctm": RowSpec("", "CTM"),
    # The demo maps the paper's three methods onto the demo generators.
    "unet-regressor": RowSpec("", "U-Net (demo: unet-regressor)"),
    "sdedit": RowSpec("", "CSM (demo: sdedit)"),
    "cond-ddpm": RowSpec("", "CTM (demo: cond-ddpm)"),
}

PUBLISHED = (
    Published(
        title="Knee, Table I",
        caption="Quantitative model comparison.",
        header=("Condition", "", "Contour", "Contour+bone"),
        rows=(
            ("U-Net", "MAE", "0.0209±0.007", "0.0188±0.006"),
            ("", "PSNR (dB)", "29.188±2.22", "30.304±2.45"),
            ("CSM", "MAE", "0.0395±0.010", "0.0507±0.010"),
            ("", "PSNR (dB)", "22.911±1.89", "21.350±1.49"),
            ("CTM", "MAE", "0.0193±0.005", "0.0152±0.007"),
            ("", "PSNR (dB)", "29.498±1.91", "31.680±1.76"),
        ),
        source=f"{PAPER}, lines 130-138",
        data=(
            "DRRs of 55 leg CT volumes (SICAS), 256×256, intensities normalised to [0, 1]; 3,300 "
            "radiographs per condition type split 9:1:1; PSNR peak, what ± is taken over and the test-set "
            "size are not stated."
        ),
    ),
)


def layout(view: RunView) -> list[PaperTable]:
    values = view.group_values.get(CONDITION, ())
    ordered = [v for v in CONDITIONS if v in values] + [v for v in values if v not in CONDITIONS]
    # Without [metrics].group_by = ["condition"], one column over all cases.
    columns = [(v, f"{CONDITION}={v}") for v in ordered] or [("All cases", "")]
    rows = []
    for model, spec in ordered_rows(view, ROWS, "Real images"):
        if view.kind(model) == "real":
            continue  # paired metrics of the references against themselves: not computed
        for i, (metric, label, digits, std_digits) in enumerate(METRICS):
            cells = [Ref(model, metric, group, "mean_std", digits, std_digits) for _, group in columns]
            rows.append((spec.label if i == 0 else "", label, *cells))
    notes = [
        (
            "mean ± std (ddof 1) over the condition type's cases (samples of a case averaged first); the "
            "mean is summary.csv's value for the group condition=VALUE."
        ),
        f"MAE on the scale 0-{view.pixel_range:g} ([metrics].pixel_range); PSNR in dB, peak = the full range.",
    ]
    if view.pixel_range != 1:
        notes.append("The paper's MAE is on [0, 1]: this run's MAE is on another scale.")
    if not values:
        notes.append(f'The run has no [metrics].group_by = ["{CONDITION}"]: one column over all cases.')
    if view.demo:
        notes.append(
            "DEMO: the condition column alternates Contour / Contour+bone by case order, and the demo "
            "generators see the same anatomy mask either way: the columns show the layout, not a "
            "condition effect."
        )
    return [
        PaperTable(
            title="Table I (knee layout)",
            caption="Quantitative model comparison, per condition type.",
            header=(("Condition", "", *[c for c, _ in columns]),),
            rows=tuple(rows),
            row_labels=2,
            notes=tuple(notes),
        )
    ]


def study_toml() -> str:
    return f"""\
{template_preamble(f"Knee radiographs, Table I ({CITATION})", NAME, PAPER)}
[study]
name = "knee-table-1"
# One row per (test radiograph, condition type): its segmentation condition image (anatomy_mask) and a
# `{CONDITION}` column naming the type, "Contour" or "Contour+bone" (the paper: "In total, 3300
# radiographs are generated for each type of segmentation"). Give the two rows of one radiograph
# different case_ids (e.g. 0042-contour, 0042-contour-bone).
cases = "CASES.csv"
output = "runs/knee"
seed = 0
samples_per_case = 1

# U-Net: the paper's NCSNpp backbone with the noise encoding removed, trained with an L1 loss.
[[models]]
name = "unet"
kind = "folder"
path = "GENERATED/unet/{{case_id}}.png"

# CSM (conditional sampling method): SDEdit from the condition image. `diffusers-img2img` loads a
# Stable-Diffusion-style pipeline (AutoPipelineForImage2Image); for the paper's own NCSNpp score model,
# generate the SDEdit samples with its code and use kind = "folder" with their path instead.
[[models]]
name = "csm"
kind = "diffusers-img2img"
path = "PIPELINE_DIR"        # a diffusers image-to-image pipeline fine-tuned on knee radiographs
condition = "anatomy_mask"
strength = 0.6               # t0, the fraction of the schedule re-noised
steps = 50
guidance = 1.0
height = 256
width = 256
prompt = ""

# CTM (conditional training method): the condition-trained model's outputs.
[[models]]
name = "ctm"
kind = "folder"
path = "GENERATED/ctm/{{case_id}}.png"

[[models]]
name = "real"
kind = "real"

[metrics]
# "The evaluation metrics include mean absolute error (MAE) and peak signal-to-noise ratio (PSNR)",
# "averaged across all testing data"; "All projections were normalized to the range of [0, 1]".
pixel = ["mae", "psnr"]
pixel_range = 1.0
# The table's columns: the condition type of each case.
group_by = ["{CONDITION}"]
bootstrap_resamples = 1000
"""


def recipe_md() -> str:
    return f"""\
# Recipe `knee`: Table I of the knee-radiograph paper

{CITATION} (`../shared/papers/{PAPER}`).

## Commands

```bash
xray-audit init knee DIR
xray-audit run DIR/study.toml
xray-audit report runs/knee --layout knee        # table-knee.md/.tex/.csv
```

## How the paper's table maps onto the suite

Rows U-Net, CSM and CTM (models `unet`, `csm`, `ctm`), each with an MAE and a PSNR (dB) line;
columns are the values of the case column `{CONDITION}` (Contour, Contour+bone), through
`[metrics].group_by = ["{CONDITION}"]`. Each cell is mean ± std over that condition's cases: the
mean is `summary.csv`'s `mae` / `psnr` for the group `{CONDITION}=VALUE`, the std (ddof 1) is over
the per-case values in `per_sample.parquet`.

## Choices where the paper is ambiguous

- **PSNR peak**: not stated; the images are normalised to [0, 1], so the recipe uses peak 1.0
  (`pixel_range = 1`; PSNR does not depend on it, MAE does: `pixel_range = 255` gives MAE on 0-255).
- **What ± is over**: not stated; the recipe takes the std over test cases (not over runs). A std
  over seeds needs `samples_per_case` > 1 and is not what the table shows.
- **CSM = SDEdit**: the template uses `diffusers-img2img` with `strength = 0.6`; the paper's t0 is
  not given, so set `strength` to yours.

## What the suite adds

The case-bootstrap CI of every mean (in `table-knee.csv` with N and the std, and as a second line in
md/tex), paired tests between the methods per metric (`paired_tests.csv`), and SSIM/MS-SSIM if you
list them.

## What it cannot reproduce without the paper's data and weights

The SICAS leg CTs, their DRRs and the trained models. The published numbers below are the paper's,
on its data.

## Published (the paper's own numbers)

{published_markdown(PUBLISHED)}"""


def demo(directory: Path, progress: bool) -> DemoStudy:
    out = directory.resolve()
    cases = demo_data.copy_manifest(
        demo_data.chest_cases(progress),
        out / "cases.csv",
        lambda f: f.assign(**{CONDITION: [CONDITIONS[i % len(CONDITIONS)] for i in range(len(f))]}),
    )
    note = (
        f"{demo_data.DEMO_NOTE} The `{CONDITION}` column alternates Contour / Contour+bone by case order: "
        "the demo generators see the same anatomy mask either way, so the split shows the layout, not a "
        "condition effect."
    )
    lines = demo_data.study_header("knee-demo", cases, out / "run", [note])
    lines += demo_data.generator_tables(["unet-regressor", "sdedit", "cond-ddpm"])
    lines += [
        "",
        "[metrics]",
        'pixel = ["mae", "psnr"]',
        "pixel_range = 1.0",
        f'group_by = ["{CONDITION}"]',
        "",
    ]
    return demo_data.write_study(out, lines, (note,))


RECIPE = Recipe(
    name=NAME,
    paper=PAPER,
    citation=CITATION,
    summary="knee Table I: U-Net, CSM (SDEdit) and CTM, MAE and PSNR as mean ± std per condition type",
    study_toml=study_toml,
    recipe_md=recipe_md,
    layout=layout,
    published=PUBLISHED,
    demo=demo,
)
