"""The demo study: the embedded cohort audited with the `real` row, the demo generators, labelled
degradations, a `training-copy` sanity baseline and a privacy audit against the generators' training cases."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from audit.atomic import write_text
from audit.config import toml_string

# (name, degradation, level): pairs of the same kind at two strengths let the report show that
# every metric ranks more damage as worse.
DEMO_DEGRADATIONS = (
    ("blur-1", "blur", 1.0),
    ("blur-3", "blur", 3.0),
    ("noise-0.02", "noise", 0.02),
    ("noise-0.08", "noise", 0.08),
    ("shift-4", "shift", 4.0),
    ("contrast-0.6", "contrast", 0.6),
)


# (name, callable): the small diffusion models trained on the demo cohort (audit.demo.generators),
# mirroring the knee-radiograph paper's comparison: conditional training, conditional sampling
# (SDEdit) and a plain U-Net regressor baseline. Real generators, run through the `python` kind.
DEMO_GENERATORS = (
    ("cond-ddpm", "audit.demo.generators:conditional_ddpm"),
    ("sdedit", "audit.demo.generators:sdedit"),
    ("unet-regressor", "audit.demo.generators:unet_regressor"),
)


# The privacy audit's sanity baseline: training images of the generators plus a little noise, which the
# audit must flag as copies (the degradations of held-out images must not be).
COPY_TRAIN = ("copy-train", 0.02)
# 48 held-out references resolve a 5 % quantile (1 % would need 100 of them).
PRIVACY_QUANTILE = 0.05


def study_header(name: str, cases: Path, output: Path, comment: Sequence[str]) -> list[str]:
    """A demo study's first lines: ``comment`` lines, [study] (seed 0, one sample per case) and the
    ``real`` row."""
    return [
        *(f"# {line}" for line in comment),
        "[study]",
        f"name = {toml_string(name)}",
        f"cases = {toml_string(cases)}",
        f"output = {toml_string(output)}",
        "seed = 0",
        "samples_per_case = 1",
        "",
        "[[models]]",
        'name = "real"',
        'kind = "real"',
    ]


def generator_tables(names: Sequence[str]) -> list[str]:
    """[[models]] tables for the named demo generators (:data:`DEMO_GENERATORS`; python kind, CPU)."""
    targets = dict(DEMO_GENERATORS)
    lines: list[str] = []
    for name in names:
        lines += [
            "",
            "[[models]]",
            f'name = "{name}"',
            'kind = "python"',
            f'callable = "{targets[name]}"',
            "batch_size = 16",
            'device = "cpu"',
        ]
    return lines


def demo_study_toml(manifest: Path, output: Path, training: Path) -> str:
    comment = (
        "Demo study written by `xray-audit demo`. cond-ddpm, sdedit and unet-regressor are small",
        "models trained on the demo cohort (python -m audit.demo.train_generators); the degrade",
        "models are sanity baselines: deterministic damage of the reference, not generative models;",
        "copy-train is one too: training images plus noise, which the privacy audit must flag.",
    )
    lines = study_header("demo", manifest, output, comment)
    lines += generator_tables([name for name, _ in DEMO_GENERATORS])
    for name, degradation, level in DEMO_DEGRADATIONS:
        lines += [
            "",
            "[[models]]",
            f'name = "{name}"',
            'kind = "degrade"',
            f'degradation = "{degradation}"',
            f"level = {level}",
        ]
    copy_name, copy_level = COPY_TRAIN
    lines += [
        "",
        "[[models]]",
        f'name = "{copy_name}"',
        'kind = "training-copy"',
        f"training_cases = {toml_string(training)}",
        f"level = {copy_level}",
    ]
    lines += [
        "",
        "[metrics]",
        'pixel = ["mse", "mae", "psnr", "ssim", "ms_ssim", "overlap_precision", "overlap_recall", "overlap_f1"]',
        "pixel_range = 1.0",
        'clinical = ["pathology_auc", "pathology_f1", "dice"]',
        'distribution = ["fid", "fxd", "kid", "prdc"]',
        "",
        "# auto: torchxrayvision / Inception-v3 when their verified weights are present (see",
        "# `xray-audit weights list`), else the small evaluators trained on the demo cohort.",
        "[evaluators]",
        'classifier = "auto"',
        'segmenter = "auto"',
        'features = "auto"',
        "",
        "# Memorisation: each sample's nearest image among the generators' training cases (the seed-1",
        "# cohort; the audited seed-0 cases are held out and calibrate the thresholds).",
        "[privacy]",
        f"training_cases = {toml_string(training)}",
        'features = "auto"',
        f"quantile = {PRIVACY_QUANTILE}",
        "",
    ]
    return "\n".join(lines)


def write_demo_study(manifest: Path, out: Path, training: Path) -> Path:
    """Write ``OUT/demo.toml`` whose run directory is ``OUT/run``; ``training`` is the generators'
    training manifest (:func:`audit.demo.training.generator_training_cases`). Returns the config path."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo.toml"
    write_text(path, demo_study_toml(manifest.resolve(), out / "run", training.resolve()))
    return path
