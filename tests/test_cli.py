"""The command line as a user meets it: the demo quick start, exit codes and error messages."""

import logging

import pandas as pd

from audit import rundir
from audit.cli import main
from audit.demo.study import DEMO_DEGRADATIONS
from tests.conftest import RUN_DIR_FILES


def test_demo_end_to_end(tmp_path, caplog):
    """`xray-audit demo` builds the cohort, writes the study config and a full run directory."""
    caplog.set_level(logging.INFO)
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out)]) == 0
    run = out / "run"
    assert (out / "demo.toml").is_file()
    for name in RUN_DIR_FILES:
        assert (run / name).is_file(), name
    assert f"report: {run / 'report.html'}" in caplog.text

    summary = pd.read_csv(run / rundir.SUMMARY)
    assert set(summary.model) == {name for name, _, _ in DEMO_DEGRADATIONS}
    assert (summary.n == 48).all()
    v = summary.set_index(["model", "metric"])["value"]
    # The demo exists to show that metrics rank known damage: more damage must score worse.
    for mild, severe in (("blur-1", "blur-3"), ("noise-0.02", "noise-0.08")):
        for metric in ("ssim", "ms_ssim", "psnr"):
            assert v[(mild, metric)] > v[(severe, metric)], (mild, metric)
        for metric in ("mse", "mae"):
            assert v[(mild, metric)] < v[(severe, metric)], (mild, metric)
    samples = pd.read_parquet(run / rundir.SAMPLES)
    assert len(samples) == 48 * (len(DEMO_DEGRADATIONS) + 1)
    cases = pd.read_parquet(run / rundir.CASES)
    assert (cases.labels == "Nodule").sum() == 24

    # A second demo reuses the cohort cache and the finished run: nothing is recomputed.
    parts = sorted((run / "parts").rglob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    assert main(["-q", "demo", "--out", str(out)]) == 0
    assert [p.stat().st_mtime_ns for p in parts] == stamps


def test_config_errors_exit_2_and_name_the_key(tmp_path, caplog):
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[study]\nname = "x"\ncases = "c.csv"\noutput = "o"\nseeed = 1\n[[models]]\nname = "r"\nkind = "real"\n'
    )
    assert main(["-q", "run", str(cfg)]) == 2
    assert "'seeed'" in caplog.text and "s.toml" in caplog.text


def test_missing_manifest_exits_1(tmp_path, caplog):
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[study]\nname = "x"\ncases = "c.csv"\noutput = "o"\n[[models]]\nname = "r"\nkind = "real"\n'
    )
    assert main(["-q", "run", str(cfg)]) == 1
    assert "case manifest not found" in caplog.text
