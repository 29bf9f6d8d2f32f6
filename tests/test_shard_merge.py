"""`--shard i/n` and `xray-audit merge`: the union of shards equals one whole run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit import rundir
from audit.cli import main
from audit.config import load_config
from audit.images import read_image
from audit.run_plan import RunError, RunOptions
from audit.runner import merge_runs, run_study
from tests.test_runner import BLUR1, REAL
from tests.test_runner import study as _study


def study(tmp: Path, manifest: Path, models: str, samples: int = 1) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    return _study(tmp, manifest, models, samples=samples)


GEN = (
    '\n[[models]]\nname = "gen"\nkind = "python"\ncallable = "tests.test_generation:noise_generator"\n'
    "batch_size = 3\noptions = { level = 0.3 }\n"
)
MODELS = REAL + BLUR1 + GEN
OPTS = RunOptions(progress=False, chunk_size=2)


def outputs(run: Path) -> dict[str, pd.DataFrame]:
    samples = pd.read_parquet(run / rundir.SAMPLES)
    return {
        "samples": samples.drop(columns=["path", "seconds"]).sort_values(
            ["model", "case_id"], ignore_index=True
        ),
        "per_sample": pd.read_parquet(run / rundir.PER_SAMPLE).sort_values(
            ["model", "case_id", "sample", "metric"], ignore_index=True
        ),
        "summary": pd.read_csv(run / rundir.SUMMARY),
    }


def assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for key, frame in a.items():
        pd.testing.assert_frame_equal(frame, b[key], obj=key)


@pytest.fixture
def whole(tmp_path, cohort) -> dict[str, pd.DataFrame]:
    run_study(load_config(study(tmp_path / "whole", cohort, MODELS, samples=2)), OPTS)
    return outputs(tmp_path / "whole" / "run")


def test_shards_in_one_run_directory_merge_to_the_whole_run(tmp_path, cohort, whole):
    cfg = load_config(study(tmp_path / "sharded", cohort, MODELS, samples=2))
    for i in (2, 0, 1):  # any order
        run_study(cfg, dataclasses.replace(OPTS, shard=(i, 3)))
        assert not (cfg.study.output / rundir.REPORT_HTML).exists()
        assert not (cfg.study.output / rundir.SUMMARY).exists()  # nothing aggregated before the merge
    merged = merge_runs([cfg.study.output], OPTS)
    assert_same(whole, outputs(merged.path))


def test_shards_in_separate_directories_merge_with_rewritten_paths(tmp_path, cohort, whole):
    dirs = []
    for i in range(2):
        cfg = load_config(study(tmp_path / f"node{i}", cohort, MODELS, samples=2))
        run_study(cfg, dataclasses.replace(OPTS, shard=(i, 2)))
        dirs.append(cfg.study.output)
    code = main(["-q", "merge", *map(str, dirs), "--out", str(tmp_path / "merged"), "--no-report"])
    assert code == 0
    merged = tmp_path / "merged"
    assert_same(whole, outputs(merged))
    samples = pd.read_parquet(merged / rundir.SAMPLES)
    generated = samples[samples.model == "gen"]
    assert all(Path(p).is_relative_to(merged) for p in generated.path)
    whole_gen = pd.read_parquet(tmp_path / "whole" / "run" / rundir.SAMPLES).query("model == 'gen'")
    for (_, a), (_, b) in zip(
        generated.sort_values(["case_id", "sample"]).iterrows(),
        whole_gen.sort_values(["case_id", "sample"]).iterrows(),
        strict=True,
    ):
        # The same seeds give the same images whichever shard made them.
        np.testing.assert_array_equal(read_image(a.path).pixels, read_image(b.path).pixels)


def test_merge_with_a_missing_shard_names_the_chunks_and_the_shard(tmp_path, cohort):
    cfg = load_config(study(tmp_path, cohort, MODELS))
    run_study(cfg, dataclasses.replace(OPTS, shard=(0, 2)))
    with pytest.raises(
        RunError,
        match=r"(?s)chunk 1 \(cases case-002 \.\. case-003\): not done.*chunk k belongs to shard k % n",
    ):
        merge_runs([cfg.study.output], OPTS)
    assert not (cfg.study.output / rundir.SUMMARY).exists()


def test_merge_refuses_directories_of_different_studies(tmp_path, cohort):
    a = load_config(study(tmp_path / "a", cohort, MODELS))
    b = load_config(study(tmp_path / "b", cohort, REAL))
    run_study(a, dataclasses.replace(OPTS, shard=(0, 2)))
    run_study(b, dataclasses.replace(OPTS, shard=(1, 2)))
    with pytest.raises(RunError, match=r"not a shard of the same study .*\[\[models\]\]"):
        merge_runs([a.study.output, b.study.output], OPTS)


@pytest.mark.parametrize("bad", ["3/3", "1", "a/2", "-1/2"])
def test_bad_shard_option(tmp_path, cohort, bad):
    path = study(tmp_path, cohort, REAL)
    assert main(["-q", "run", str(path), f"--shard={bad}"]) == 2


def test_shard_auto_reads_rank_and_world_size(tmp_path, cohort, monkeypatch):
    path = study(tmp_path, cohort, REAL)
    assert main(["-q", "run", str(path), "--shard", "auto"]) == 2  # outside a launcher: a clear error
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["-q", "run", str(path), "--shard", "auto", "--chunk-size", "2"]) == 0
    records = sorted(p.name for p in (tmp_path / "run" / "parts" / "shards").iterdir())
    assert records == ["shard-1-of-2.json"]


def test_shards_run_on_different_devices_are_one_study(tmp_path, cohort):
    from audit.shards import _differences

    cfg = load_config(study(tmp_path, cohort, MODELS))
    on = lambda **kw: dataclasses.replace(cfg, evaluators=dataclasses.replace(cfg.evaluators, **kw))
    assert _differences(on(device="cuda:0"), on(device="cuda:1")) == []  # `--device` per node
    assert _differences(on(dtype="fp32"), on(dtype="fp16")) == ["[evaluators]"]  # changes the numbers


def test_merge_refuses_shards_whose_privacy_sections_differ(tmp_path, cohort):
    """[privacy] runs only in the merging process, so a shard's section would otherwise go unread."""
    from audit.config import PrivacySection, dump_toml

    cfg = load_config(study(tmp_path / "a", cohort, REAL))
    run_study(cfg, dataclasses.replace(OPTS, shard=(0, 2)))
    other = tmp_path / "b"
    other.mkdir()
    training = tmp_path / "train.csv"
    training.write_text(Path(cohort).read_text())
    private = dataclasses.replace(cfg, privacy=PrivacySection(training_cases=training, quantile=0.05))
    (other / rundir.CONFIG_TOML).write_text(dump_toml(private))
    with pytest.raises(RunError, match=r"not a shard of the same study .*differs in \[privacy\]"):
        merge_runs([cfg.study.output, other], OPTS)
