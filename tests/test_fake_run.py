"""audit.fake_run: the one builder of fake run directories for tests and benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit import rundir
from audit.atomic import sha256_file
from audit.fake_run import FakeModel, FakeRun, PngStyle, write_fake_run
from audit.images import read_image

REPO = Path(__file__).resolve().parents[1]
CASES = ("c0", "c1", "c2")


def _spec(**changes: object) -> FakeRun:
    base = {
        "models": (FakeModel("real", "real"), FakeModel("gen", "folder", {"template": "/x/{case_id}.png"})),
        "case_ids": CASES,
        "samples_per_case": 2,
        "metrics": {"ssim": True, "overlap_f1": True},
        "real_metrics": ("overlap_f1",),
        "masks": (np.ones((48, 64, 3), bool),) * len(CASES),
        "columns": {"group": ["a", "b", "a"]},
        "failures": {"gen": 2},
        "config": {"metrics": {"pixel": ["ssim"], "pixel_range": 1.0, "bootstrap_resamples": 50}},
    }
    return FakeRun(**{**base, **changes})  # type: ignore[arg-type]


def test_writes_a_finished_run_the_readers_accept(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path, _spec())
    assert rundir.require_run_dir(run) == run
    settings = rundir.RunSettings.read(run)
    assert settings.found and settings.problems == ()
    assert (settings.name, settings.seed, settings.samples_per_case) == ("Synthetic study", 7, 2)
    assert (settings.pixel_range, settings.bootstrap_resamples) == (1.0, 50)
    assert [m["name"] for m in settings.models] == ["real", "gen"]

    cases = pd.read_parquet(run / rundir.CASES)
    assert list(cases.columns) == ["case_id", "image", "anatomy_mask", "group"]
    samples = pd.read_parquet(run / rundir.SAMPLES)
    assert list(samples.columns) == [*rundir.SAMPLES_COLUMNS, "kind"]
    # real: one sample, the reference itself; gen: samples_per_case samples per case
    assert samples.groupby("model").size().to_dict() == {"gen": 6, "real": 3}
    assert (samples[samples.model == "real"].path.tolist()) == cases.image.tolist()
    for row in samples.itertuples():
        assert read_image(row.path).pixels.shape == (48, 64)
        assert sha256_file(row.path) == row.sha256
    per_sample = pd.read_parquet(run / rundir.PER_SAMPLE)
    assert list(per_sample.columns) == list(rundir.PER_SAMPLE_COLUMNS)
    assert set(per_sample[per_sample.model == "real"].metric) == {"overlap_f1"}
    assert len(per_sample) == 3 * 1 + 6 * 2
    summary = pd.read_csv(run / rundir.SUMMARY)
    assert list(summary.columns) == list(rundir.SUMMARY_COLUMNS)
    gen_ssim = summary.set_index(["model", "metric"]).loc[("gen", "ssim")]
    expected = (
        per_sample[(per_sample.model == "gen") & (per_sample.metric == "ssim")]
        .groupby("case_id")
        .value.mean()
    )
    assert gen_ssim.value == pytest.approx(expected.mean()) and gen_ssim.n == 3
    failures = pd.read_csv(run / rundir.FAILURES)
    assert failures.model.tolist() == ["gen", "gen"] and not set(failures.case_id) & set(CASES)
    info = json.loads((run / rundir.RUN_JSON).read_text())
    assert (info["n_cases"], info["n_models"], info["n_samples"], info["n_failures"]) == (3, 2, 9, 2)


def test_same_spec_same_files_and_given_values_are_kept(tmp_path: Path) -> None:
    a, b = (write_fake_run(tmp_path / name, _spec()) for name in "ab")
    for name in (rundir.PER_SAMPLE, rundir.SUMMARY):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    given = pd.DataFrame(
        {"model": ["gen"], "case_id": ["c0"], "sample": [0], "metric": ["psnr"], "value": [30.0]}
    )
    run = write_fake_run(tmp_path / "c", _spec(metrics={}, real_metrics=(), per_sample=given))
    pd.testing.assert_frame_equal(pd.read_parquet(run / rundir.PER_SAMPLE), given)


def test_noise_models_tagged_pngs_and_generation_columns(tmp_path: Path) -> None:
    reference = np.full((32, 32), 0.5)
    model = FakeModel(
        "gen", "diffusers", noise=0.0, generation={"steps": 20}, png=PngStyle(16, "SECRET {model}")
    )
    run = write_fake_run(
        tmp_path, _spec(models=(model,), references=(reference,) * 3, masks=None, metrics={}, real_metrics=(),
                        failures={}, columns={"prompt": ["p0", "p1", "p2"]})
    )  # fmt: skip
    samples = pd.read_parquet(run / rundir.SAMPLES)
    assert list(samples.columns) == [*rundir.SAMPLES_COLUMNS, "kind", *rundir.GENERATION_COLUMNS]
    assert samples.steps.tolist() == [20] * 6 and samples.prompt.tolist() == [
        "p0",
        "p0",
        "p1",
        "p1",
        "p2",
        "p2",
    ]
    path = Path(samples.path.iloc[0])
    assert b"SECRET gen" in path.read_bytes()
    np.testing.assert_allclose(read_image(path).pixels, reference, atol=1 / 65535)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"columns": {"group": ["a"]}}, "group has 1 values for 3 cases"),
        ({"failures": {"nope": 1}}, "failures name unknown model 'nope'"),
        ({"real_metrics": ("psnr",)}, "real_metrics 'psnr' is not in metrics"),
        ({"config": {"study": {}}}, r"config table \[study\]"),
        ({"per_sample": pd.DataFrame()}, "give per_sample or metrics to draw, not both"),
    ],
)
def test_bad_specs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(**changes)


def test_does_not_import_torch() -> None:
    code = "import sys, audit.fake_run; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
