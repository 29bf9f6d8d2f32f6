"""The command line as a user meets it: the demo quick start, exit codes and error messages."""

import pandas as pd

from audit import rundir
from audit.cli import main
from audit.demo.study import COPY_TRAIN, DEMO_DEGRADATIONS, DEMO_GENERATORS
from tests.conftest import RUN_DIR_FILES


def test_demo_end_to_end(demo_run):
    """`xray-audit demo` builds the cohort, writes the study config and a full run directory."""
    out, run = demo_run.out, demo_run.run
    assert demo_run.exit_code == 0
    assert (out / "demo.toml").is_file()
    for name in RUN_DIR_FILES:
        assert (run / name).is_file(), name
    assert f"report: {run / 'report.html'}" in demo_run.log

    summary = pd.read_csv(run / rundir.SUMMARY, keep_default_na=False, na_values=[""])
    generators = [name for name, _ in DEMO_GENERATORS]
    baselines = {name for name, _, _ in DEMO_DEGRADATIONS} | {COPY_TRAIN[0]}
    assert set(summary.model) == baselines | {"real", *generators}
    assert (summary.n == 48).all()
    v = summary.set_index(["model", "metric"])["value"]
    # Every column of the demo is filled (offline: by the demo evaluators), for every generator...
    clinical = [
        "pathology_auc",
        "pathology_auc:Nodule",
        "pathology_f1",
        "pathology_f1:Nodule",
        "dice_lungs",
        "dice_heart",
        "dice_aorta",
        "dice_mean",
        "dice_mask_lungs",
        "dice_mask_heart",
        "dice_mask_aorta",
        "dice_mask_mean",
        "fid",
        "fxd",
        "kid",
        "precision",
        "recall",
        "density",
        "coverage",
    ]
    for name in [name for name, _, _ in DEMO_DEGRADATIONS] + generators:
        for metric in ("mse", "mae", "psnr", "ssim", "ms_ssim", *clinical):
            assert pd.notna(v[(name, metric)]), (name, metric)
    # ...and the real row carries the upper bounds that are not degenerate.
    # The real row is also the privacy audit's calibration: its distances to the training cases, and
    # α/β of training images (other real patients) in place of samples.
    privacy = {"memorised_fraction", "authenticity", "nn_distance", "nn_distance_pixel"}
    privacy |= {"alpha_precision", "beta_recall"}
    real = set(summary.loc[summary.model == "real", "metric"])
    assert real == {m for m in clinical if m.startswith(("pathology_", "dice_mask_"))} | privacy
    # The privacy audit tells the training copies from held-out images (quantile 0.05, 48 references).
    assert v[("copy-train", "memorised_fraction")] >= 0.9 and v[("copy-train", "privacy_auc")] < 0.1
    assert v[("real", "memorised_fraction")] <= 0.05
    # The demo generators sit far below the calibration's α-precision; the copies of training images
    # (real patients) reach about its level.
    for name in generators:
        assert v[(name, "alpha_precision")] < v[("real", "alpha_precision")] - 0.3, name
    for name in [name for name, _, _ in DEMO_DEGRADATIONS] + generators:
        assert v[(name, "memorised_fraction")] <= 0.1, name
    assert v[("real", "pathology_auc")] > 0.85  # the demo classifier's held-out AUC is 0.908
    # The demo exists to show that metrics rank known damage: more damage must score worse.
    for mild, severe in (("blur-1", "blur-3"), ("noise-0.02", "noise-0.08")):
        for metric in ("ssim", "ms_ssim", "psnr", "dice_mean", "pathology_auc"):
            assert v[(mild, metric)] > v[(severe, metric)], (mild, metric)
        for metric in ("mse", "mae", "fid", "fxd", "kid"):
            assert v[(mild, metric)] < v[(severe, metric)], (mild, metric)
    # The trained generators are real models: mask-conditioned diffusion beats unconditional noise.
    for name in generators:
        assert v[(name, "ssim")] > 0.3 and v[(name, "dice_mean")] > 0.5, name
    samples = pd.read_parquet(run / rundir.SAMPLES)
    assert len(samples) == 48 * (len(DEMO_DEGRADATIONS) + len(DEMO_GENERATORS) + 2)  # + real, copy-train
    gen = samples[samples.model.isin(generators)]
    assert gen["weights"].str.startswith("python:audit.demo.generators:").all() and gen["seconds"].gt(0).all()
    info = json_of(run / rundir.RUN_JSON)["generation"]
    assert set(info) == set(generators) and all(info[g]["samples"] == 48 for g in generators)
    cases = pd.read_parquet(run / rundir.CASES)
    assert (cases.labels == "Nodule").sum() == 24

    # A second demo reuses the cohort cache and the finished run: nothing is recomputed.
    parts = sorted((run / "parts").rglob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    assert main(["-q", "demo", "--out", str(out)]) == 0
    assert [p.stat().st_mtime_ns for p in parts] == stamps


def json_of(path):
    import json

    return json.loads(path.read_text())


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
