"""End-to-end runs of the study runner on small synthetic cohorts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage.metrics import mean_squared_error, structural_similarity

from audit import rundir
from audit.config import load_config
from audit.images import read_image, write_png
from audit.models.degrade import degrade
from audit.run_plan import RunError, RunOptions
from audit.runner import run_study
from tests.conftest import RUN_DIR_FILES, make_cohort

FAST = RunOptions(progress=False, chunk_size=2)


def study(tmp: Path, manifest: Path, models: str, metrics: str = "", seed: int = 0, samples: int = 1) -> Path:
    text = f"""
[study]
name = "t"
cases = "{manifest}"
output = "{tmp / "run"}"
seed = {seed}
samples_per_case = {samples}
{models}
[metrics]
bootstrap_resamples = 200
{metrics}
"""
    p = tmp / "study.toml"
    p.write_text(text)
    return p


REAL = '\n[[models]]\nname = "real"\nkind = "real"\n'
BLUR1 = '\n[[models]]\nname = "blur-1"\nkind = "degrade"\ndegradation = "blur"\nlevel = 1.0\n'
BLUR3 = '\n[[models]]\nname = "blur-3"\nkind = "degrade"\ndegradation = "blur"\nlevel = 3.0\n'
NOISE = '\n[[models]]\nname = "noise"\nkind = "degrade"\ndegradation = "noise"\nlevel = 0.05\n'


def folder(name: str, template: str) -> str:
    return f'\n[[models]]\nname = "{name}"\nkind = "folder"\npath = "{template}"\n'


def write_generated(
    cohort: Path, out: Path, sigma: float = 2.0, skip: tuple[str, ...] = (), samples: int = 1
) -> None:
    frame = pd.read_csv(cohort, dtype=str)
    for cid, img in zip(frame.case_id, frame.image, strict=True):
        if cid in skip:
            continue
        ref = read_image(cohort.parent / img).pixels
        for s in range(samples):
            write_png(out / f"{cid}_{s}.png", degrade(ref, "blur", sigma + s, 0), bit_depth=16)


def read_outputs(run: Path) -> dict[str, pd.DataFrame]:
    return {
        "samples": pd.read_parquet(run / rundir.SAMPLES),
        "per_sample": pd.read_parquet(run / rundir.PER_SAMPLE),
        "summary": pd.read_csv(run / rundir.SUMMARY),
    }


def test_run_directory_contract(tmp_path, cohort):
    from reports.html import write_html_report

    gen = tmp_path / "gen"
    write_generated(cohort, gen)
    cfg = load_config(study(tmp_path, cohort, folder("xreal", f"{gen}/{{case_id}}_0.png") + BLUR1 + REAL))
    result = run_study(cfg, RunOptions(progress=False, chunk_size=4))
    run = result.path
    assert not (run / rundir.REPORT_HTML).exists()  # the report is the command line's step
    write_html_report(run)
    for name in RUN_DIR_FILES:
        assert (run / name).is_file(), name
    assert not (run / "failures.csv").exists()
    out = read_outputs(run)
    assert list(out["samples"].columns[:6]) == list(rundir.SAMPLES_COLUMNS)
    assert len(out["samples"]) == 3 * 6
    assert list(out["per_sample"].columns) == list(rundir.PER_SAMPLE_COLUMNS)
    assert list(out["summary"].columns[:7]) == list(rundir.SUMMARY_COLUMNS)
    # `real` is the reference itself: no paired pixel rows, but it is in samples.parquet.
    assert set(out["per_sample"].model) == {"xreal", "blur-1"}
    assert set(out["samples"].model) == {"xreal", "blur-1", "real"}
    assert len(out["per_sample"]) == 2 * 6 * 5
    s = out["summary"].set_index(["model", "metric"])
    assert s.loc[("xreal", "ssim"), "higher_is_better"] and not s.loc[("xreal", "mse"), "higher_is_better"]
    assert (s.n == 6).all()
    assert ((s.ci_low <= s.value) & (s.value <= s.ci_high)).all()
    # Sample hashes are real hashes of the files.
    row = out["samples"].iloc[0]
    import hashlib

    assert hashlib.sha256(Path(row.path).read_bytes()).hexdigest() == row.sha256


def test_values_match_scikit_image_end_to_end(tmp_path, cohort):
    gen = tmp_path / "gen"
    write_generated(cohort, gen)
    cfg = load_config(
        study(
            tmp_path,
            cohort,
            folder("xreal", f"{gen}/{{case_id}}_0.png"),
            'pixel = ["mse", "ssim"]\npixel_range = 255.0',
        )
    )
    run_study(cfg, FAST)
    ps = pd.read_parquet(tmp_path / "run" / rundir.PER_SAMPLE).set_index(["case_id", "metric"])["value"]
    for cid in ("case-000", "case-005"):
        ref = read_image(cohort.parent / "img" / f"{cid}.png").pixels.astype(np.float64) * 255
        g = read_image(gen / f"{cid}_0.png").pixels.astype(np.float64) * 255
        assert ps[(cid, "mse")] == pytest.approx(mean_squared_error(ref, g), rel=1e-4)
        ref_ssim = structural_similarity(
            ref, g, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        assert ps[(cid, "ssim")] == pytest.approx(ref_ssim, abs=1e-3)
    summary = pd.read_csv(tmp_path / "run" / rundir.SUMMARY)
    assert summary.set_index("metric").loc["mse", "unit"].startswith("intensity")


def test_known_damage_ranks_correctly(tmp_path, cohort):
    cfg = load_config(study(tmp_path, cohort, BLUR1 + BLUR3))
    run_study(cfg, FAST)
    s = pd.read_csv(tmp_path / "run" / rundir.SUMMARY).set_index(["model", "metric"])["value"]
    for metric in ("ssim", "ms_ssim", "psnr"):
        assert s[("blur-1", metric)] > s[("blur-3", metric)], metric
    for metric in ("mse", "mae"):
        assert s[("blur-1", metric)] < s[("blur-3", metric)], metric


def test_missing_folder_images_listed_then_keep_going(tmp_path, cohort):
    gen = tmp_path / "gen"
    write_generated(cohort, gen, skip=("case-001", "case-004"))
    cfg = load_config(study(tmp_path, cohort, folder("xreal", f"{gen}/{{case_id}}_0.png") + REAL))
    with pytest.raises(RunError) as err:
        run_study(cfg, FAST)
    msg = str(err.value)
    assert (
        "2 sample(s) cannot be produced" in msg
        and "case-001" in msg
        and "case-004" in msg
        and "--keep-going" in msg
    )

    result = run_study(cfg, RunOptions(progress=False, chunk_size=2, keep_going=True))
    assert result.n_failures == 2
    failures = pd.read_csv(tmp_path / "run" / rundir.FAILURES)
    assert list(failures.columns) == list(rundir.FAILURES_COLUMNS)
    assert sorted(failures.case_id) == ["case-001", "case-004"] and set(failures.stage) == {"generate"}
    summary = pd.read_csv(tmp_path / "run" / rundir.SUMMARY)
    assert (summary.n == 4).all()


def test_size_mismatch_is_an_error_unless_resized(tmp_path, cohort):
    gen = tmp_path / "gen"
    gen.mkdir()
    frame = pd.read_csv(cohort, dtype=str)
    for cid in frame.case_id:
        write_png(gen / f"{cid}.png", np.full((200, 200), 0.5, np.float32), bit_depth=8)
    models = folder("big", f"{gen}/{{case_id}}.png")
    with pytest.raises(RunError, match=r"size mismatch.*200×200.*192×192.*resize = \"to_reference\""):
        run_study(load_config(study(tmp_path, cohort, models)), FAST)
    run_study(load_config(study(tmp_path, cohort, models, 'resize = "to_reference"')), FAST)
    assert len(pd.read_parquet(tmp_path / "run" / rundir.PER_SAMPLE)) == 6 * 5


def test_ms_ssim_too_small_is_a_clear_error(tmp_path):
    manifest = make_cohort(tmp_path / "small", n=2, size=64)
    from audit.metrics.functional.pixel import MS_SSIM_MIN_SIZE

    with pytest.raises(RunError, match=f"at least {MS_SSIM_MIN_SIZE}×{MS_SSIM_MIN_SIZE} px; got 64×64"):
        run_study(load_config(study(tmp_path, manifest, BLUR1)), FAST)
    run_study(load_config(study(tmp_path, manifest, BLUR1, 'pixel = ["mse", "ssim"]')), FAST)


def test_samples_per_case_and_per_case_averaging(tmp_path, cohort):
    gen = tmp_path / "gen"
    write_generated(cohort, gen, samples=2)
    cfg = load_config(
        study(
            tmp_path,
            cohort,
            folder("m", f"{gen}/{{case_id}}_{{sample}}.png") + NOISE,
            'pixel = ["mae"]',
            samples=2,
        )
    )
    run_study(cfg, FAST)
    out = read_outputs(tmp_path / "run")
    assert len(out["samples"]) == 2 * 6 * 2
    ps = out["per_sample"][out["per_sample"].model == "m"]
    per_case = ps.groupby("case_id").value.mean()
    row = out["summary"].set_index("model").loc["m"]
    assert row.n == 6 and row.value == pytest.approx(per_case.mean())
    # Noise seeds differ per sample and per case, derived from (seed, model, case, sample).
    seeds = out["samples"][out["samples"].model == "noise"].seed
    assert seeds.nunique() == 12


def test_rerun_skips_finished_work_and_adding_a_model_computes_only_it(tmp_path, cohort):
    cfg = load_config(study(tmp_path, cohort, BLUR1 + REAL))
    run_study(cfg, FAST)
    parts = sorted((tmp_path / "run" / "parts").rglob("*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    first = read_outputs(tmp_path / "run")
    time.sleep(0.01)
    cfg2 = load_config(study(tmp_path, cohort, BLUR1 + REAL + NOISE))
    run_study(cfg2, FAST)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in parts)  # nothing old was recomputed
    second = read_outputs(tmp_path / "run")
    pd.testing.assert_frame_equal(
        first["per_sample"],
        second["per_sample"][second["per_sample"].model == "blur-1"].reset_index(drop=True),
    )
    # Changing the seed changes the noise model's key, so its shards are redone and stale ones pruned.
    cfg3 = load_config(study(tmp_path, cohort, BLUR1 + REAL + NOISE, seed=1))
    run_study(cfg3, FAST)
    dirs = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "run" / "parts" / "samples").iterdir()}
    assert dirs == {"blur-1", "real", "noise"}


def test_interrupted_run_resumes_to_identical_results(tmp_path, cohort, monkeypatch):
    models = BLUR1 + NOISE + REAL
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    run_study(load_config(study(clean_dir, cohort, models)), FAST)
    clean = read_outputs(clean_dir / "run")

    from audit.models.degrade import DegradeAdapter

    calls = {"n": 0}
    original = DegradeAdapter.produce

    def flaky(self, requests, reference):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if the user hit Ctrl-C mid-run
        return original(self, requests, reference)

    monkeypatch.setattr(DegradeAdapter, "produce", flaky)
    cfg = load_config(study(tmp_path, cohort, models))
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, FAST)
    assert not (tmp_path / "run" / rundir.SUMMARY).exists()
    run_study(cfg, FAST)
    resumed = read_outputs(tmp_path / "run")
    pd.testing.assert_frame_equal(clean["per_sample"], resumed["per_sample"])
    pd.testing.assert_frame_equal(clean["summary"], resumed["summary"])
    pd.testing.assert_frame_equal(
        clean["samples"].drop(columns="path"), resumed["samples"].drop(columns="path")
    )


def test_sigkill_at_any_point_then_rerun_gives_same_results(tmp_path, cohort):
    """A real kill -9 of the CLI while it works, then a rerun, equals one clean run."""
    manifest = make_cohort(tmp_path / "big", n=24, size=192)
    models = BLUR1 + BLUR3 + NOISE + REAL
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    run_study(load_config(study(clean_dir, manifest, models)), FAST)
    clean = read_outputs(clean_dir / "run")

    cfg_path = study(tmp_path, manifest, models)
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "audit.cli", "-q", "run", str(cfg_path), "--no-report", "--chunk-size", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "run" / "parts" / "metrics"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(parts.rglob("*.parquet"))) < 5:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / rundir.SUMMARY).exists(), "run finished before it could be killed"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    resumed = read_outputs(tmp_path / "run")
    pd.testing.assert_frame_equal(clean["per_sample"], resumed["per_sample"])
    pd.testing.assert_frame_equal(clean["summary"], resumed["summary"])
    assert not list((tmp_path / "run").rglob(".tmp-*"))


def test_rerun_notices_replaced_appearing_and_changed_images(tmp_path, cohort):
    """Resuming must never score stale files: replaced samples, new samples and replaced references."""
    gen = tmp_path / "gen"
    write_generated(cohort, gen, sigma=1.0, skip=("case-002",))
    cfg = load_config(
        study(tmp_path, cohort, folder("m", f"{gen}/{{case_id}}_0.png") + BLUR1, 'pixel = ["mse"]')
    )
    keep = RunOptions(progress=False, chunk_size=2, keep_going=True)
    assert run_study(cfg, keep).n_failures == 1

    def mse(model: str, case: str) -> float:
        ps = pd.read_parquet(tmp_path / "run" / rundir.PER_SAMPLE)
        return float(ps[(ps.model == model) & (ps.case_id == case)].value.iloc[0])

    before = mse("m", "case-000")
    # The user regenerates one image with heavier damage and adds the missing one.
    write_generated(cohort, gen, sigma=4.0, skip=tuple(f"case-{i:03d}" for i in range(1, 6)))
    write_generated(cohort, gen, sigma=1.0, skip=tuple(f"case-{i:03d}" for i in range(6) if i != 2))
    result = run_study(cfg, keep)
    assert result.n_failures == 0
    assert mse("m", "case-000") > before
    assert mse("m", "case-002") > 0

    # Replacing a reference image invalidates every model's work on it.
    blur_before = mse("blur-1", "case-003")
    ref = cohort.parent / "img" / "case-003.png"
    write_png(ref, np.clip(read_image(ref).pixels[::-1].copy() * 0.5, 0, 1), bit_depth=16)
    run_study(cfg, keep)
    assert mse("blur-1", "case-003") != blur_before
