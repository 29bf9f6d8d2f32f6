"""``xray-audit norberg evaluate``: a run over the pelvis phantom, measured by a trained detector.

The phantom is not anatomy; it is used because its landmarks and angles are known exactly. The
"generated" model is the phantom of the same case drawn with other angles, so the agreement figures
have to come out of the actual images and detector.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from audit.images import write_png
from audit.metrics.functional.norberg import norberg_table
from audit.norberg import evaluation as ev
from audit.norberg import train as tr
from audit.norberg.detector import KeypointDetector
from audit.norberg.geometry import case_angles
from audit.norberg.phantom import make_phantom, write_phantom_cohort

TINY = tr.TrainConfig(
    epochs=8, size=64, channels=(8, 16, 24), stem=2, stride=2, batch_size=8, learning_rate=0.01,
    val_fraction=0.25, seed=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("norberg-run")
    cohort = write_phantom_cohort(root / "cohort", n=8, seed=5, size=96)
    cases = pd.read_csv(cohort / "cases.csv", dtype=str)
    gen = root / "gen"
    gen.mkdir()
    for i, cid in enumerate(cases["case_id"]):
        ph = make_phantom(np.random.default_rng([9, i]), size=96)
        write_png(gen / f"{cid}.png", ph.image, bit_depth=16)
    config = root / "study.toml"
    config.write_text(
        f"""
[study]
name = "phantom"
cases = "{cohort / "cases.csv"}"
output = "{root / "run"}"
seed = 0

[[models]]
name = "phantom-gen"
kind = "folder"
path = "{gen}/{{case_id}}.png"

[[models]]
name = "real"
kind = "real"

[metrics]
pixel = ["mae"]
bootstrap_resamples = 200
"""
    )
    assert main(["-q", "run", str(config), "--no-report"]) == 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        tr.train_detector(cohort / "cases.csv", cohort / "landmarks.csv", root / "detector", TINY)
    return root, cohort


def test_evaluate_writes_angles_and_agreement_rows(phantom_run):
    root, cohort = phantom_run
    run = root / "run"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        code = main(
            ["-q", "norberg", "evaluate", str(run), "--annotations", str(cohort / "landmarks.csv"),
             "--detector", str(root / "detector"), "--device", "cpu"]
        )  # fmt: skip
    assert code == 0
    angles = pd.read_parquet(run / ev.ANGLES_FILE)
    summary = pd.read_csv(run / ev.SUMMARY_FILE, dtype={"group": str}, keep_default_na=False)
    assert list(angles.columns) == ev.ANGLE_COLUMNS
    assert list(summary.columns) == ev.SUMMARY_COLUMNS
    assert set(angles["model"]) == {"phantom-gen", "real"}
    assert len(angles) == 2 * 8 * 2  # models x cases x sides

    # The reference angles are the exact phantom angles.
    exact = pd.read_csv(cohort / "angles.csv", dtype={"case_id": str})
    merged = angles.merge(exact, on=["case_id", "side"])
    np.testing.assert_allclose(merged["reference_deg"], merged["angle_deg_y"], atol=1e-6)

    # Detected angles are what the detector finds on the stored sample file.
    samples = pd.read_parquet(run / "samples.parquet")
    detector = KeypointDetector.load(root / "detector", device="cpu")
    from audit.images import read_image

    row = samples[samples["model"] == "phantom-gen"].iloc[0]
    xy = detector.predict([read_image(row["path"]).pixels])[0]
    want = case_angles({n: tuple(p) for n, p in zip(detector.landmarks, xy, strict=True)})
    got = angles[(angles["model"] == "phantom-gen") & (angles["case_id"] == row["case_id"])]
    for side in ("left", "right"):
        assert got[got["side"] == side]["angle_deg"].item() == pytest.approx(want[side], abs=1e-3)  # batch-of-1 rounding

    # Every summary row equals the agreement statistics recomputed from the angle file.
    for model in ("phantom-gen", "real"):
        a = angles[angles["model"] == model].sort_values(["case_id", "side"])
        table = norberg_table(
            a["case_id"].to_numpy(), a["side"].to_numpy(), a["reference_deg"].to_numpy(),
            a["angle_deg"].to_numpy(), rng=np.random.default_rng(0), resamples=10,
        )  # fmt: skip
        rows = summary[summary["model"] == model].set_index("metric")
        for t in table:
            value = rows.at[t.metric, "value"]
            if np.isnan(t.value):
                assert np.isnan(value)
            else:
                assert value == pytest.approx(t.value, rel=1e-9, abs=1e-12)
        assert rows.loc["norberg_r", "n"] == 8
        assert {"norberg_r:left", "norberg_r:right", "norberg_mae", "norberg_kappa"} <= set(rows.index)
        finite = rows[np.isfinite(rows["ci_low"])]
        assert (finite["ci_low"] <= finite["ci_high"]).all()


def test_changed_sample_file_is_refused(phantom_run, tmp_path):
    root, cohort = phantom_run
    run = root / "run"
    samples = pd.read_parquet(run / "samples.parquet")
    target = samples[samples["model"] == "phantom-gen"].iloc[0]["path"]
    original = open(target, "rb").read()
    try:
        write_png(target, np.zeros((96, 96), np.float32), bit_depth=16)
        with pytest.raises(ValueError, match="sha256"):
            ev.evaluate_norberg(run, cohort / "landmarks.csv", root / "detector", device="cpu")
    finally:
        open(target, "wb").write(original)


def test_annotations_for_other_cases_are_a_clear_error(phantom_run, tmp_path):
    root, _ = phantom_run
    other = write_phantom_cohort(tmp_path / "other", n=3, seed=1, size=64)
    marks = pd.read_csv(other / "landmarks.csv", dtype=str)
    marks["case_id"] = "zz-" + marks["case_id"]
    marks.to_csv(tmp_path / "marks.csv", index=False)
    with pytest.raises(ValueError, match="no case of"):
        ev.evaluate_norberg(root / "run", tmp_path / "marks.csv", root / "detector", device="cpu")


def test_report_shows_the_norberg_section(phantom_run):
    root, cohort = phantom_run
    run = root / "run"
    if not (run / ev.SUMMARY_FILE).exists():
        ev.evaluate_norberg(run, cohort / "landmarks.csv", root / "detector", device="cpu")
    assert main(["-q", "report", str(run), "--format", "html"]) == 0
    page = (run / "report.html").read_text()
    assert '<section id="norberg">' in page and 'href="#norberg"' in page
    assert 'id="norberg-bland-altman"' in page and 'id="norberg-scatter"' in page
    assert "Phantom data" in page  # the phantom is labelled wherever it appears
    summary = pd.read_csv(run / ev.SUMMARY_FILE)
    mae = summary[(summary["model"] == "phantom-gen") & (summary["metric"] == "norberg_mae")].iloc[0]
    assert f"{mae['value']:.3f}" in page.split('<section id="norberg">')[1].split("</section>")[0]
