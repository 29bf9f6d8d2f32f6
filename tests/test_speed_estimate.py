"""The CPU time estimate of a run's evaluators and the warning `xray-audit run` logs before a slow run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from audit import rundir
from audit.cli import main
from audit.evaluators import speed
from audit.evaluators.speed import NetworkWork, cpu_images_per_s, format_duration, slow_cpu_warning


def _no_cuda() -> bool:
    return False


def _never() -> bool:
    raise AssertionError("cuda_available() called although the answer cannot change anything")


@pytest.fixture
def pspnet_at_015(monkeypatch):
    """The issue's figure: PSPNet at 512 px ran at 0.15 images/s on the 2-core CPU."""
    monkeypatch.setitem(speed.CPU_IMAGES_PER_S, "xrv-pspnet", 0.15)


def test_pspnet_run_warns_with_the_estimate_and_the_flag(pspnet_at_015):
    text = slow_cpu_warning([NetworkWork("xrv-pspnet-chestx-det", 2400)], "cpu", _never)
    # 2400 / 0.15 = 16,000 s = 266.7 min.
    assert text == (
        "evaluating up to 2,400 images with xrv-pspnet-chestx-det on CPU will take about 4 h 27 min "
        '(0.15 images/s measured on 2 cores); pass `--device cuda` (or set [evaluators].device = "cuda") '
        "on a machine with a GPU"
    )
    exact = slow_cpu_warning([NetworkWork("xrv-pspnet-chestx-det", 300, upper_bound=False)], "cpu", _never)
    assert exact is not None and exact.startswith("evaluating 300 images with xrv-pspnet-chestx-det on CPU")
    assert "about 33 min" in exact


def test_under_30_minutes_or_on_cuda_nothing(pspnet_at_015):
    assert slow_cpu_warning([NetworkWork("xrv-pspnet-chestx-det", 270)], "cpu", _never) is None  # 30 min
    assert slow_cpu_warning([NetworkWork("xrv-pspnet-chestx-det", 271)], "cpu", _never) is not None
    # A short run never asks for CUDA, which would import torch.
    assert slow_cpu_warning([NetworkWork("xrv-pspnet-chestx-det", 10)], "auto", _never) is None
    for device in ("cuda", "cuda:1"):
        assert slow_cpu_warning([NetworkWork("xrv-pspnet-chestx-det", 10**6)], device, _never) is None


def test_auto_warns_only_without_cuda(pspnet_at_015):
    work = [NetworkWork("xrv-pspnet-chestx-det", 2400)]
    assert slow_cpu_warning(work, "auto", lambda: True) is None
    assert "4 h 27 min" in (slow_cpu_warning(work, "auto", _no_cuda) or "")


def test_several_networks_are_summed_and_unmeasured_ones_named(pspnet_at_015, monkeypatch):
    monkeypatch.setitem(speed.CPU_IMAGES_PER_S, "inception-v3", 5.0)
    work = [
        NetworkWork("inception-v3-fid", 3000),  # 10 min
        NetworkWork("xrv-pspnet-chestx-det", 450),  # 50 min
        NetworkWork("user-mynet", 3000),
        NetworkWork("demo-nodule-classifier", 0),  # nothing left to evaluate: not listed
    ]
    text = slow_cpu_warning(work, "cpu", _never)
    assert text == (
        "evaluating on CPU will take about 1 h: up to 450 images with xrv-pspnet-chestx-det (50 min at 0.15 "
        "images/s), up to 3,000 images with inception-v3-fid (10 min at 5 images/s) (measured on 2 cores), "
        'not counting user-mynet (speed not measured); pass `--device cuda` (or set [evaluators].device = "cuda") '
        "on a machine with a GPU"
    )
    # Only measured networks count towards the 30 minutes.
    assert slow_cpu_warning([NetworkWork("user-mynet", 10**6)], "cpu", _never) is None


def test_every_built_in_evaluator_has_a_measured_rate():
    names = [
        "demo-nodule-classifier",
        "demo-anatomy-segmenter",
        "xrv-densenet121-res224-all",
        "xrv-densenet121-res224-chex",
        "xrv-pspnet-chestx-det",
        "inception-v3-fid",
        "rad-dino",
        "hf:microsoft/rad-dino@0123abc",
    ]
    for name in names:
        rate = cpu_images_per_s(name)
        assert rate is not None and rate > 0, name
    assert cpu_images_per_s("hf:microsoft/rad-dino@0123abc") == cpu_images_per_s("rad-dino")
    assert cpu_images_per_s("hf:someone/vit@1") is None and cpu_images_per_s("user-x") is None
    assert speed.cpu_seconds([NetworkWork("xrv-pspnet-chestx-det", 0)]) == 0.0


def test_format_duration():
    assert format_duration(10) == "under a minute"
    assert format_duration(90) == "2 min"
    assert format_duration(3600) == "1 h"
    assert format_duration(16000) == "4 h 27 min"


# ------------------------------------------------------------------------------------- in a run


def _study(tmp_path: Path, manifest: Path, device: str) -> Path:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        f"""
[study]
name = "t"
cases = "{manifest}"
output = "{tmp_path / "run"}"

[[models]]
name = "real"
kind = "real"

[[models]]
name = "blur"
kind = "degrade"
degradation = "blur"
level = 2.0

[metrics]
pixel = []
distribution = ["fid"]
bootstrap_resamples = 100

[evaluators]
features = "demo"
device = "{device}"
cache_dir = "{tmp_path / "cache"}"
"""
    )
    return cfg


class _Stop(Exception):
    pass


def _stop(*args: object) -> None:
    raise _Stop


def test_slow_run_warns_before_any_work_with_the_cli_device(tmp_path, cohort, monkeypatch, caplog):
    """`--device cpu` overrides the config's cuda, so the slow-CPU warning appears, before any work."""
    import audit.runner

    monkeypatch.setitem(speed.CPU_IMAGES_PER_S, "demo-anatomy-segmenter", 0.005)
    seen = []

    def process(plan, *args):
        seen.append(plan.config.evaluators.device)
        raise _Stop

    monkeypatch.setattr(audit.runner, "_process", process)
    cfg = _study(tmp_path, cohort, device="cuda")
    with caplog.at_level(logging.WARNING, logger="audit.scoring"), pytest.raises(_Stop):
        main(["-q", "run", str(cfg), "--device", "cpu"])
    assert seen == ["cpu"]
    # 6 cases: 6 references + 6 blurred samples (the real row's samples are the references).
    want = "evaluating up to 12 images with demo-anatomy-segmenter on CPU will take about 40 min"
    assert [r.levelname for r in caplog.records if want in r.getMessage()] == ["WARNING"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="audit.scoring"), pytest.raises(_Stop):
        main(["-q", "run", str(cfg)])  # the config's cuda: no warning
    assert seen == ["cpu", "cuda"] and "on CPU will take" not in caplog.text


def test_the_privacy_audit_counts_its_uncached_training_images(tmp_path, cohort, monkeypatch, caplog):
    """[privacy] embeds the training set with its own network: the same network as FID here, so the
    warning counts one network with both workloads (the 10 training images exactly: their hashes are
    known before the run)."""
    import audit.runner
    from tests.conftest import make_cohort

    training = make_cohort(tmp_path / "train", n=10, seed=5)
    cfg = _study(tmp_path, cohort, device="cpu")
    cfg.write_text(cfg.read_text() + f'\n[privacy]\ntraining_cases = "{training}"\nfeatures = "demo"\n')
    monkeypatch.setitem(speed.CPU_IMAGES_PER_S, "demo-anatomy-segmenter", 0.005)
    monkeypatch.setattr(audit.runner, "_process", _stop)
    with caplog.at_level(logging.WARNING, logger="audit.scoring"), pytest.raises(_Stop):
        main(["-q", "run", str(cfg)])
    # 6 references + 6 blurred samples (upper bound) + 10 training images = 22 at 0.005/s.
    want = "evaluating up to 22 images with demo-anatomy-segmenter on CPU will take about 1 h 13 min"
    assert caplog.text.count(want) == 1
    # Without FID nothing else embeds the references and samples: the privacy stage counts them itself.
    cfg.write_text(
        cfg.read_text()
        .replace('distribution = ["fid"]', "distribution = []")
        .replace("pixel = []", 'pixel = ["mse"]')
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="audit.scoring"), pytest.raises(_Stop):
        main(["-q", "run", str(cfg)])
    assert caplog.text.count(want) == 1


def test_a_shard_counts_only_its_own_chunks(tmp_path, cohort, monkeypatch, caplog):
    import audit.runner
    from audit.config import load_config
    from audit.run_plan import RunOptions

    monkeypatch.setitem(speed.CPU_IMAGES_PER_S, "demo-anatomy-segmenter", 0.001)
    monkeypatch.setattr(audit.runner, "_process", _stop)
    config = load_config(_study(tmp_path, cohort, device="cpu"))
    with caplog.at_level(logging.WARNING, logger="audit.scoring"), pytest.raises(_Stop):
        # 6 cases in chunks of 2: shard 0 of 2 gets chunks 0 and 2, 4 cases (4 references + 4 samples).
        audit.runner.run_study(config, RunOptions(progress=False, chunk_size=2, shard=(0, 2)))
    assert "evaluating up to 8 images with demo-anatomy-segmenter on CPU will take about 2 h 13 min" in (
        caplog.text
    )


def test_device_flag_is_recorded_and_a_cached_rerun_does_not_warn(tmp_path, cohort, monkeypatch, caplog):
    cfg = _study(tmp_path, cohort, device="auto")
    assert main(["-q", "run", str(cfg), "--device", "cpu", "--no-report"]) == 0
    run = tmp_path / "run"
    assert json.loads((run / rundir.RUN_JSON).read_text())["evaluation"]["device"] == "cpu"
    assert 'device = "cpu"' in (run / rundir.CONFIG_TOML).read_text()
    # Every output is cached now: however slow the rate, nothing is left to evaluate.
    monkeypatch.setitem(speed.CPU_IMAGES_PER_S, "demo-anatomy-segmenter", 1e-6)
    with caplog.at_level(logging.WARNING, logger="audit.scoring"):
        assert main(["-q", "run", str(cfg), "--device", "cpu", "--no-report"]) == 0
    assert "on CPU will take" not in caplog.text
    # One entry gone: the count is exact (every hash is known from the run's shards), not "up to".
    entries = sorted((tmp_path / "cache").rglob("*.xfc"))
    assert len(entries) == 12
    entries[0].unlink()
    with caplog.at_level(logging.WARNING, logger="audit.scoring"):
        assert main(["-q", "run", str(cfg), "--device", "cpu", "--no-report"]) == 0
    assert "evaluating 1 image with demo-anatomy-segmenter on CPU will take about" in caplog.text


def test_bad_device_is_a_usage_error(tmp_path, cohort, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(_study(tmp_path, cohort, device="auto")), "--device", "gpu"])
    assert exit_info.value.code == 2
    assert '"auto", "cpu", "cuda" or "cuda:N"' in capsys.readouterr().err
