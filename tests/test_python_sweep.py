"""Robustness sweeps on the `python` kind: each sweep row hands the user's callable the case with its
condition map or prompt perturbed, drawn from the sample's seed exactly as for a diffusers model.

Reference: the perturbation recomputed here with audit.perturb from the case's own mask and the seed
samples.parquet records, written and read back the way the adapter hands it over (an 8-bit PNG).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit import images, rundir
from audit.config import ConfigError, load_config
from audit.models.sweep import perturbation_rng
from audit.perturb import perturb_condition
from audit.run_plan import RunOptions
from audit.runner import run_study
from tests.test_runner import REAL, study

PROMPTS: list[tuple[str, str]] = []  # (model row's case id, prompt the callable saw)


def mask_echo(cases, generators, *, device, dtype):
    """Returns each case's anatomy mask (as the callable reads it) as the image; records its prompt."""
    out = []
    for case in cases:
        PROMPTS.append((case.case_id, str(case.fields.get("prompt"))))
        out.append(images.read_mask(case.path("anatomy_mask")).mean(axis=2).astype(np.float32))
    return out


ECHO = """
[[models]]
name = "echo"
kind = "python"
callable = "tests.test_python_sweep:mask_echo"
[models.sweep]
motion_blur = [7]
fixed_prompt = ["a chest x-ray"]
"""


def test_python_sweep_rows_perturb_the_condition_and_the_prompt(tmp_path, cohort):
    config = load_config(study(tmp_path, cohort, REAL + ECHO, metrics='pixel = ["mae"]'))
    assert [m.name for m in config.models] == [
        "real", "echo", "echo[motion_blur=7]", f"echo[fixed_prompt={_hash('a chest x-ray')}]",
    ]  # fmt: skip
    PROMPTS.clear()
    run_study(config, RunOptions(progress=False))
    samples = pd.read_parquet(tmp_path / "run" / rundir.SAMPLES)
    manifest = pd.read_csv(cohort, dtype=str)
    base = samples[samples.model == "echo"].set_index("case_id")
    blurred = samples[samples.model == "echo[motion_blur=7]"].set_index("case_id")
    assert (base["seed"] == blurred["seed"]).all()  # a sweep row keeps its base model's seeds
    for case_id, row in blurred.iterrows():
        mask_path = cohort.parent / manifest.set_index("case_id").at[case_id, "anatomy_mask"]
        cond = np.moveaxis(images.read_mask(mask_path), -1, 0).astype(np.float32)
        want = perturb_condition(cond, "motion_blur", 7.0, perturbation_rng(int(row["seed"]), 2))
        handed = tmp_path / f"{case_id}.png"
        images.write_png(handed, want[0], bit_depth=8)
        expected = images.read_mask(handed).mean(axis=2)
        got = images.read_image(row["path"]).pixels
        np.testing.assert_allclose(got, expected, atol=1 / 65535)
        original = images.read_image(base.at[case_id, "path"]).pixels
        assert not np.array_equal(got, original)  # the perturbation did change the map
    seen = dict(PROMPTS[-len(manifest) :])
    assert set(seen.values()) == {"a chest x-ray"}


def _hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def test_python_condition_must_be_an_image_column(tmp_path, cohort):
    bad = ECHO.replace(
        'callable = "tests.test_python_sweep:mask_echo"',
        'callable = "tests.test_python_sweep:mask_echo"\ncondition = "prompt"',
    )
    with pytest.raises(ConfigError, match="condition 'prompt' is not an image column"):
        load_config(study(tmp_path, cohort, REAL + bad))
    with pytest.raises(ConfigError, match="perturbation"):
        load_config(
            study(
                tmp_path,
                cohort,
                REAL
                + ECHO.replace("motion_blur = [7]", "")
                .replace("[models.sweep]", 'perturbation = "wobble=2"')
                .replace('fixed_prompt = ["a chest x-ray"]', ""),
            )
        )
