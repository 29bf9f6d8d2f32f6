"""Pulmonary-nodule ControlNet (Fang): the paired image-similarity figures, PSNR and SSIM."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

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

NAME = "nodule-controlnet"
PAPER = "controlnet-pulmonary-nodules.txt"
CITATION = "Fang, Conditional Diffusion Model for X-Ray Segmentation Data Generation"
# (metric, header, digits as the paper prints them: "19.6", "0.65")
COLUMNS = (("psnr", "PSNR", 1), ("ssim", "SSIM", 2))
ROWS = {"controlnet": RowSpec("", "ControlNet"), "cond-ddpm": RowSpec("", "cond-ddpm (demo)")}

PUBLISHED = (
    Published(
        title="Nodule ControlNet, Section 4 (Results), prose",
        caption="",
        header=("Model", "PSNR", "SSIM"),
        rows=(("ControlNet", "19.6", "0.65"),),
        source=f"{PAPER}, line 50",
        data=(
            "The paper has no table: two figures in its text, for its ControlNet. "
            "X-rays of patients with pulmonary nodules, ground truth beside the image generated from its "
            "condition (Fig. 1); dataset, resolution, intensity range (PSNR peak), image count and "
            "whether the figures are means are not stated. No MSE, LPIPS or FID is reported."
        ),
    ),
)


def layout(view: RunView) -> list[PaperTable]:
    rows = []
    for model, spec in ordered_rows(view, ROWS, "Real images"):
        if view.kind(model) == "real":
            continue  # paired metrics of the references against themselves: not computed
        rows.append((spec.label, *[Ref(model, metric, digits=d) for metric, _, d in COLUMNS]))
    return [
        PaperTable(
            title="Paired image similarity (nodule ControlNet layout)",
            caption="Each generated image against the ground-truth image of its case, mean over cases.",
            header=(("Model", *[h for _, h, _ in COLUMNS]),),
            rows=tuple(rows),
            row_labels=1,
            notes=(
                (
                    "PSNR in dB, peak = the full intensity range; SSIM: Gaussian-window SSIM "
                    "(σ = 1.5, 11 px, Wang et al. 2004) on [0, 1]."
                ),
            ),
        )
    ]


def study_toml() -> str:
    return f"""\
{template_preamble(f"Pulmonary-nodule ControlNet ({CITATION})", NAME, PAPER)}
[study]
name = "nodule-controlnet"
# "X-ray of a patient with pulmonary nodules": one row per ground-truth image with its condition
# (the nodule segmentation as pathology_mask; the abstract also names "edge maps, depth maps,
# segmentation masks").
cases = "CASES.csv"
output = "runs/nodule-controlnet"
seed = 0
samples_per_case = 1

# "the first column in Figure 1 are the ground truth and the second column are the images we
# generated using ControlNet"
[[models]]
name = "controlnet"
kind = "diffusers-controlnet"
path = "BASE_PIPELINE"              # the Stable Diffusion base, local directory or hub id
controlnet = "CONTROLNET_DIR"
condition = "pathology_mask"
height = 512
width = 512
prompt = "{{prompt}}"

[[models]]
name = "real"
kind = "real"

[metrics]
# "The PSNR of the generated image is 19.6"; "the SSIM value of our images reaches 0.65": paired
# against the ground truth of the same case.
pixel = ["psnr", "ssim"]
pixel_range = 1.0
bootstrap_resamples = 1000
"""


def recipe_md() -> str:
    return f"""\
# Recipe `nodule-controlnet`: the nodule ControlNet's image similarity

{CITATION} (`../shared/papers/{PAPER}`).

## Commands

```bash
xray-audit init nodule-controlnet DIR
xray-audit run DIR/study.toml
xray-audit report runs/nodule-controlnet --layout nodule-controlnet   # table-nodule-controlnet.*
```

## What the paper reports, and how it maps

The paper has no table. Its Results section gives two paired figures for its ControlNet: **PSNR
19.6** and **SSIM 0.65** (line 50), each generated image against the ground-truth image of its case
(Fig. 1). The suite's `psnr` and `ssim` are exactly those pairings, averaged over cases; the layout
prints them with the paper's precision (PSNR 1 decimal, SSIM 2).

## Choices where the paper is ambiguous

- **PSNR peak / intensity range**: not stated (no unit either). The recipe uses [0, 1] images,
  peak 1.0 (dB). A PSNR on 0-255 with peak 255 is the same number.
- **SSIM settings**: not stated. The suite uses Gaussian-window SSIM (σ = 1.5, 11 px,
  K1 = 0.01, K2 = 0.03) on [0, 1].
- **Condition**: the title says segmentation; the template conditions on `pathology_mask` (the
  nodule mask). Set `condition` to the column your ControlNet was trained on.
- **One image or a mean**: the text says "the PSNR of the generated image"; the suite reports the
  mean over cases with its CI.

## What the suite adds

CIs over cases, the real-vs-real reference where it applies, MSE/MAE/MS-SSIM if you list them, and
paired tests between models. Note that the paper's method section describes ControlNet's training
inaccurately (adversarial and perceptual losses), so compare settings with care.

## What it cannot reproduce without the paper's data and weights

The paper's dataset, resolution and trained ControlNet are not published. The figures below are the
paper's, on its data.

## Published (the paper's own numbers)

{published_markdown(PUBLISHED)}"""


def demo(directory: Path, progress: bool) -> DemoStudy:
    out = directory.resolve()
    # The paper's images are of patients with nodules: the demo's nodule cases.
    cases = demo_data.copy_manifest(
        demo_data.chest_cases(progress),
        out / "cases.csv",
        lambda f: f[f["labels"].str.contains("Nodule")].copy(),
    )
    frame = pd.read_csv(cases, dtype=str)
    note = f"{demo_data.DEMO_NOTE} Only the cohort's nodule cases ({len(frame)})."
    lines = demo_data.study_header("nodule-controlnet-demo", cases, out / "run", [note])
    lines += demo_data.generator_tables(["cond-ddpm"])
    lines += ["", "[metrics]", 'pixel = ["psnr", "ssim"]', "pixel_range = 1.0", ""]
    return demo_data.write_study(out, lines, (note,))


RECIPE = Recipe(
    name=NAME,
    paper=PAPER,
    citation=CITATION,
    summary="nodule ControlNet: paired PSNR and SSIM of generated vs ground-truth images (the paper's 19.6 / 0.65)",
    study_toml=study_toml,
    recipe_md=recipe_md,
    layout=layout,
    published=PUBLISHED,
    demo=demo,
)
