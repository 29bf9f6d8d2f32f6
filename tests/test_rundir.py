"""audit.rundir.RunSettings: the one reader of a run's config.toml (audit.config's parser and defaults)."""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from audit import rundir
from audit.config import EvaluatorsSection, MetricsSection, StudySection, dump_toml, parse_config
from audit.rundir import RunSettings

REPO = Path(__file__).resolve().parents[1]

STUDY = """
[study]
name = "settings"
cases = "cases.csv"
output = "out"
seed = 42
samples_per_case = 3

[[models]]
name = "real"
kind = "real"

[[models]]
name = "blur-2"
kind = "degrade"
degradation = "blur"
level = 2.0

[metrics]
pixel = ["mse", "psnr"]
pixel_range = 255.0
resize = "to_reference"
overlap_threshold = 0.4
bootstrap_resamples = 321
confidence = 0.9
group_by = ["labels", "site"]

[evaluators]
classifier = "demo"
features = "demo"
batch_size = 4
"""


def _resolved(tmp_path: Path, text: str = STUDY) -> Path:
    """A run directory whose config.toml is the runner's (dump_toml of the parsed study)."""
    import tomllib

    config = parse_config(tomllib.loads(text), source=tmp_path / "study.toml")
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG_TOML).write_text(dump_toml(config), encoding="utf-8")
    return run


def test_read_is_the_config_parsers_view(tmp_path: Path) -> None:
    import tomllib

    run = _resolved(tmp_path)
    config = parse_config(tomllib.loads(STUDY), source=tmp_path / "study.toml")
    settings = RunSettings.read(run)
    assert settings.found and settings.problems == ()
    assert settings.metrics == config.metrics and settings.evaluators == config.evaluators
    assert (settings.name, settings.seed, settings.samples_per_case) == ("settings", 42, 3)
    assert (settings.confidence, settings.bootstrap_resamples, settings.pixel_range) == (0.9, 321, 255.0)
    assert (settings.overlap_threshold, settings.resize, settings.group_by) == (
        0.4,
        "to_reference",
        ("labels", "site"),
    )
    assert [m["name"] for m in settings.models] == ["real", "blur-2"]
    assert settings.text == (run / rundir.CONFIG_TOML).read_text(encoding="utf-8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1  # type: ignore[misc]


def test_unset_keys_take_audit_configs_defaults() -> None:
    # Issue 18: the report and the exports defaulted bootstrap_resamples to 2000, config.py to 1000.
    settings = RunSettings.parse('[study]\nname = "x"\n')
    assert settings.found and settings.problems == ()
    assert settings.metrics == MetricsSection() and settings.evaluators == EvaluatorsSection()
    assert settings.bootstrap_resamples == MetricsSection.bootstrap_resamples == 1000
    assert settings.confidence == 0.95 and settings.pixel_range == 1.0 and settings.group_by == ()
    assert settings.seed == StudySection.seed == 0 and settings.samples_per_case == 1


def test_missing_or_invalid_config_gives_defaults_and_says_why(tmp_path: Path, caplog) -> None:
    missing = RunSettings.read(tmp_path)
    assert not missing.found and missing.text == "" and missing.raw == {}
    assert missing.metrics == MetricsSection() and "missing" in missing.problems[0]
    (tmp_path / rundir.CONFIG_TOML).write_text("[metrics\nconfidence = 0.9\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="audit.rundir"):
        broken = RunSettings.read(tmp_path)
    assert not broken.found and broken.confidence == 0.95
    assert broken.text.startswith("[metrics")  # the report still shows it, as text
    assert "not valid TOML" in caplog.text


def test_a_bad_key_falls_back_to_its_default_and_is_reported(caplog) -> None:
    text = (
        '[study]\nseed = "seven"\n[metrics]\nconfidence = 0.9\nbootstrap_resamples = "many"\nfresh_key = 1\n'
    )
    with caplog.at_level(logging.WARNING, logger="audit.rundir"):
        settings = RunSettings.parse(text, "run/config.toml")
    assert settings.found and settings.confidence == 0.9  # the good key is kept
    assert settings.bootstrap_resamples == 1000 and settings.seed == 0
    assert len(settings.problems) == 3
    assert "[metrics].bootstrap_resamples: expected an integer" in caplog.text
    assert "unknown key 'fresh_key' ignored" in caplog.text
    assert "[study].seed: expected an integer" in caplog.text


def test_readers_take_settings_from_run_settings_only() -> None:
    # No hand parse of config.toml left in reports/ and dashboards/ (each had its own defaults).
    pattern = re.compile(r"tomllib|\.config\.get\(|CONFIG_TOML\)\.read|config_path")
    offenders = [
        f"{path.relative_to(REPO)}:{i}"
        for folder in ("reports", "dashboards")
        for path in sorted((REPO / folder).rglob("*.py"))
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_rundir_does_not_import_torch() -> None:
    code = "import audit.rundir, sys; assert 'torch' not in sys.modules, 'audit.rundir imported torch'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
