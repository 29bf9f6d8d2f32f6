"""``xray-audit norberg evaluate``: a run over the pelvis phantom, measured by a trained detector.

The phantom is not anatomy; it is used because its landmarks and angles are known exactly. The
"generated" model is the phantom of the same case drawn with other angles, so the agreement figures
have to come out of the actual images and detector.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit import rundir
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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        tr.train_detector(cohort / "cases.csv", cohort / "landmarks.csv", root / "detector", TINY)
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

[evaluators]
device = "cpu"

[norberg]
annotations = "{cohort / "landmarks.csv"}"
detector = "{root / "detector"}"
"""
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        assert main(["-q", "run", str(config), "--no-report"]) == 0
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
    angles = pd.read_parquet(run / rundir.NORBERG_ANGLES)
    summary = pd.read_csv(run / rundir.NORBERG_SUMMARY, dtype={"group": str}, keep_default_na=False)
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
        assert got[got["side"] == side]["angle_deg"].item() == pytest.approx(
            want[side], abs=1e-3
        )  # batch-of-1 rounding

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
    original = Path(target).read_bytes()
    try:
        write_png(target, np.zeros((96, 96), np.float32), bit_depth=16)
        with pytest.raises(ValueError, match="sha256"):
            ev.evaluate_norberg(run, cohort / "landmarks.csv", root / "detector", device="cpu")
    finally:
        Path(target).write_bytes(original)


def test_annotations_for_other_cases_are_a_clear_error(phantom_run, tmp_path):
    root, _ = phantom_run
    other = write_phantom_cohort(tmp_path / "other", n=3, seed=1, size=64)
    marks = pd.read_csv(other / "landmarks.csv", dtype=str)
    marks["case_id"] = "zz-" + marks["case_id"]
    marks.to_csv(tmp_path / "marks.csv", index=False)
    with pytest.raises(ValueError, match="none of the 8 case"):
        ev.evaluate_norberg(root / "run", tmp_path / "marks.csv", root / "detector", device="cpu")


def test_report_shows_the_norberg_section(phantom_run):
    root, cohort = phantom_run
    run = root / "run"
    if not (run / rundir.NORBERG_SUMMARY).exists():
        ev.evaluate_norberg(run, cohort / "landmarks.csv", root / "detector", device="cpu")
    assert main(["-q", "report", str(run), "--format", "html"]) == 0
    page = (run / "report.html").read_text()
    assert '<section id="norberg">' in page and 'href="#norberg"' in page
    assert 'id="norberg-bland-altman"' in page and 'id="norberg-scatter"' in page
    # The phantom is labelled wherever it appears: under the title and in the Norberg section.
    header, _, rest = page.partition('<section id="results">')
    assert "Phantom data" in header and "Phantom data" in rest.split('<section id="norberg">')[1]
    summary = pd.read_csv(run / rundir.NORBERG_SUMMARY)
    mae = summary[(summary["model"] == "phantom-gen") & (summary["metric"] == "norberg_mae")].iloc[0]
    assert f"{mae['value']:.3f}" in page.split('<section id="norberg">')[1].split("</section>")[0]
    # The pooled rows of summary.csv are a results table of their own, named as in comparison.md.
    results = rest.split("</section>")[0]
    assert "<h3>Norberg-angle agreement</h3>" in results and "Other metrics" not in results
    for label in ("Norberg r", "Norberg R²", "Norberg MAE", "Norberg ICC(2,1)", "Norberg κ (105°)"):
        assert f">{label}" in results, label
    distributions = page.split('<section id="distributions">')[1].split("</section>")[0]
    assert "norberg" not in distributions.lower()  # plotted in the Norberg section, not "no plot"
    # Provenance names the annotation file and detector by sha256.
    provenance = page.split('<section id="provenance">')[1]
    detector = KeypointDetector.load(root / "detector", device="cpu")
    assert 'data-source="detector"' in provenance and detector.spec.sha256 in provenance
    assert __import__("audit.atomic").atomic.sha256_file(cohort / "landmarks.csv") in provenance
    assert main(["-q", "report", str(run), "--format", "md", "--out", str(root / "tables")]) == 0
    table = (root / "tables" / "comparison.md").read_text()
    # Each Norberg column names the detector that measured it (reports.provenance).
    assert "| Norberg r ↑ (landmark detector detector/model.ts" in table
    assert "Norberg MAE ↓ (degrees; landmark detector" in table and detector.spec.sha256 in table


def _summary(path):
    return pd.read_csv(path, dtype={"group": str, "evaluator": str}, keep_default_na=False, na_values=[""])


def test_run_with_norberg_config_puts_the_rows_in_summary_csv(phantom_run):
    root, _ = phantom_run
    run = root / "run"
    summary = _summary(run / "summary.csv")
    rows = summary[summary["metric"].str.startswith("norberg_")]
    norberg = _summary(run / rundir.NORBERG_SUMMARY)
    assert set(norberg["source"]) == {"detector"}
    assert set(rows["model"]) == {"phantom-gen", "real"}
    # summary.csv carries exactly the norberg_summary.csv rows of the detector, with metadata.
    merged = rows.merge(norberg, on=["model", "metric"], suffixes=("", "_n"), validate="one_to_one")
    assert len(merged) == len(norberg) == 2 * 8 * 3  # models x metrics x (pooled, left, right)
    np.testing.assert_array_equal(merged["value"].to_numpy(), merged["value_n"].to_numpy())
    np.testing.assert_array_equal(merged["ci_low"].to_numpy(), merged["ci_low_n"].to_numpy())
    assert (merged["n"] == 8).all()
    mae = rows[rows["metric"] == "norberg_mae"]
    assert set(mae["higher_is_better"].astype(str)) == {"False"} and set(mae["unit"]) == {"degrees"}
    bias = rows[rows["metric"] == "norberg_ba_bias"]
    assert bias["higher_is_better"].isna().all()  # ideal 0: neither direction is better
    info = __import__("json").loads((run / "run.json").read_text())
    assert info["norberg"]["degenerate_detections"] >= 0 and "norberg_s" in info["timings"]
    angles = pd.read_parquet(run / rundir.NORBERG_ANGLES)
    assert len(angles) == 2 * 8 * 2 and angles["source"].str.startswith("detector:").all()


def _placed(root, cohort, run, *, drop_one_rim=True):
    """A reader-study landmark export of every sample: reader "ann" places the exact outline and rim
    points, reader "bob" the same with 1 px noise and, on one image, no left rim."""
    samples = pd.read_parquet(run / "samples.parquet")
    cases = pd.read_csv(cohort / "cases.csv", dtype=str)
    real = pd.read_csv(cohort / "landmarks.csv", dtype={"case_id": str})
    truth = {}
    for i, cid in enumerate(cases["case_id"]):
        truth[("phantom-gen", cid)] = make_phantom(np.random.default_rng([9, i]), size=96).landmarks
        r = real[real["case_id"] == cid]
        truth[("real", cid)] = {n: (x, y) for n, x, y in zip(r["landmark"], r["x"], r["y"], strict=True)}
    noise = np.random.default_rng(4)
    rows = []
    for k, rec in enumerate(samples.itertuples()):
        points = {n: p for n, p in truth[(rec.model, rec.case_id)].items() if not n.endswith("_center")}
        for reader in ("ann", "bob"):
            for name, (x, y) in points.items():
                if reader == "bob" and drop_one_rim and k == 0 and name == "left_rim":
                    continue
                dx, dy = noise.normal(0, 1, 2) if reader == "bob" else (0.0, 0.0)
                rows.append({"reader": reader, "item": f"i{k:03d}", "model": rec.model, "case_id": rec.case_id,
                             "sample": rec.sample, "read_number": 1, "landmark": name, "x": x + dx, "y": y + dy})  # fmt: skip
    return pd.DataFrame(rows)


def test_reader_landmarks_are_a_second_source(phantom_run, tmp_path):
    root, cohort = phantom_run
    run = root / "run"
    detector_rows = _summary(run / rundir.NORBERG_SUMMARY)
    detector_rows = detector_rows[detector_rows["source"] == "detector"].reset_index(drop=True)
    placed = _placed(root, cohort, run)
    placed.to_csv(tmp_path / "landmarks.csv", index=False)
    code = main(["-q", "norberg", "evaluate", str(run), "--annotations", str(cohort / "landmarks.csv"),
                 "--reader-landmarks", str(tmp_path / "landmarks.csv")])  # fmt: skip
    assert code == 0
    summary = _summary(run / rundir.NORBERG_SUMMARY)
    # The detector rows of the run are kept as they were.
    kept = summary[summary["source"] == "detector"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, detector_rows)
    readers = summary[summary["source"] == "readers"].set_index(["model", "metric"])
    assert readers["evaluator"].eq("expert landmarks, 2 reader(s)").all()

    # Recompute independently: circle-fitted angle per reader, mean over readers, vs the annotation.
    exact = pd.read_csv(cohort / "angles.csv", dtype={"case_id": str}).set_index(["case_id", "side"])[
        "angle_deg"
    ]
    for model in ("phantom-gen", "real"):
        per = []
        for (cid,), g in placed[placed["model"] == model].groupby(["case_id"]):
            by_reader = {}
            for reader, h in g.groupby("reader"):
                pts = {n: (x, y) for n, x, y in zip(h["landmark"], h["x"], h["y"], strict=True)}
                try:
                    by_reader[reader] = case_angles(pts)
                except ValueError:  # bob's image without a left rim still gives the right side
                    from audit.norberg.geometry import locate_head_center, norberg_angle

                    c = {s: locate_head_center(pts, s) for s in ("left", "right")}
                    by_reader[reader] = {
                        "left": np.nan,
                        "right": norberg_angle(c["right"], c["left"], pts["right_rim"]),
                    }
            for side in ("left", "right"):
                vals = [a[side] for a in by_reader.values() if np.isfinite(a[side])]
                per.append((cid, side, exact[(cid, side)], float(np.mean(vals))))
        f = pd.DataFrame(per, columns=["case_id", "side", "real", "gen"])
        table = norberg_table(
            f["case_id"], f["side"], f["real"], f["gen"], rng=np.random.default_rng(0), resamples=10
        )
        for t in table:
            got = readers.loc[(model, t.metric), "value"]
            assert got == pytest.approx(t.value, rel=1e-9, abs=1e-9) or (np.isnan(got) and np.isnan(t.value))
    # Placements on the real images agree far better than those on the other-angle phantoms.
    assert (
        readers.loc[("real", "norberg_mae"), "value"]
        < 0.5 * readers.loc[("phantom-gen", "norberg_mae"), "value"]
    )
    angles = pd.read_parquet(run / rundir.NORBERG_ANGLES)
    assert {"reader:ann", "reader:bob"} <= set(angles["source"])
    assert angles["source"].str.startswith("detector:").sum() == 2 * 8 * 2
    missing = angles[(angles["source"] == "reader:bob") & ~np.isfinite(angles["angle_deg"])]
    assert len(missing) == 1 and "left_rim" in missing["error"].item()


def test_reader_landmarks_of_another_run_are_refused(phantom_run, tmp_path, caplog):
    root, cohort = phantom_run
    placed = _placed(root, cohort, root / "run", drop_one_rim=False)
    placed.loc[0:40, "model"] = "other-model"
    placed.to_csv(tmp_path / "landmarks.csv", index=False)
    before = (root / "run" / rundir.NORBERG_SUMMARY).read_bytes()
    code = main(["norberg", "evaluate", str(root / "run"), "--annotations", str(cohort / "landmarks.csv"),
                 "--reader-landmarks", str(tmp_path / "landmarks.csv")])  # fmt: skip
    assert code == 1
    assert "not samples of" in caplog.text and "other-model" in caplog.text
    assert (root / "run" / rundir.NORBERG_SUMMARY).read_bytes() == before  # nothing written
    placed.drop(columns="reader").to_csv(tmp_path / "cut.csv", index=False)
    assert main(["norberg", "evaluate", str(root / "run"), "--annotations", str(cohort / "landmarks.csv"),
                 "--reader-landmarks", str(tmp_path / "cut.csv")]) == 1  # fmt: skip
    assert "no column(s) reader" in caplog.text
    assert (
        main(["norberg", "evaluate", str(root / "run"), "--annotations", str(cohort / "landmarks.csv")]) == 2
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('annotations = "missing.csv"\ndetector = "."', "missing.csv not found"),
        ('annotations = "{ann}"\ndetector = "."\nthreshold = 100', "unknown key(s) 'threshold'"),
        ('annotations = "{ann}"', "missing required key 'detector'"),
        ('annotations = "{ann}"\ndetector = "nowhere"', "landmarks train"),
    ],
)
def test_norberg_config_errors(phantom_run, tmp_path, extra, message):
    from audit.config import ConfigError, load_config

    _, cohort = phantom_run
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        f'[study]\nname = "x"\ncases = "{cohort / "cases.csv"}"\noutput = "{tmp_path / "run"}"\n'
        '[[models]]\nname = "real"\nkind = "real"\n[norberg]\n'
        + extra.format(ann=cohort / "landmarks.csv")
        + "\n"
    )
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        load_config(cfg)


def test_norberg_config_round_trips_and_keeps_old_hashes(phantom_run, tmp_path):
    from audit.config import dump_toml, load_config, parse_config

    root, _ = phantom_run
    config = load_config(root / "study.toml")
    assert config.norberg is not None and config.norberg.patient_left == "image-right"
    import tomllib

    again = parse_config(tomllib.loads(dump_toml(config)), source=tmp_path / "c.toml")
    assert again.norberg == config.norberg and again.hash() == config.hash()
    plain = dataclasses_replace(config, norberg=None)
    assert "norberg" not in plain.to_dict()


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_report_shows_detector_and_reader_sources(phantom_run, tmp_path):
    root, cohort = phantom_run
    run = root / "run"
    _placed(root, cohort, run).to_csv(tmp_path / "landmarks.csv", index=False)
    ev.evaluate_norberg(run, cohort / "landmarks.csv", reader_landmarks=tmp_path / "landmarks.csv")
    assert main(["-q", "report", str(run), "--format", "html"]) == 0
    page = (run / "report.html").read_text()
    assert 'id="norberg-bland-altman"' in page and 'id="norberg-readers-bland-altman"' in page
    assert "Expert landmarks (reader study)" in page and "expert landmarks, 2 reader(s)" in page
    assert page.count("<h4>Landmark detector</h4>") == 1


def test_mirrored_annotations_need_the_run_or_flag_patient_left(phantom_run, tmp_path, caplog):
    import json
    import shutil

    root, cohort = phantom_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    run_rows = _summary(root / "run" / "summary.csv")
    run_rows = run_rows[run_rows["metric"].str.startswith("norberg_")].reset_index(drop=True)
    # The same annotations on mirrored images: x -> W - 1 - x, the patient's sides unchanged. Every
    # angle is the same, but under the standard display every case reads as a left/right swap.
    marks = pd.read_csv(cohort / "landmarks.csv", dtype={"case_id": str})
    marks["x"] = 95.0 - marks["x"]
    marks.to_csv(tmp_path / "mirrored.csv", index=False)
    argv = ["-q", "norberg", "evaluate", str(run), "--annotations", str(tmp_path / "mirrored.csv"),
            "--detector", str(root / "detector"), "--device", "cpu"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        assert main(argv) == 1
        assert "probable left/right swap" in caplog.text and "--patient-left image-left" in caplog.text
        assert main([*argv, "--patient-left", "image-left"]) == 0
    rows = _summary(run / rundir.NORBERG_SUMMARY)
    rows = rows[rows["source"] == "detector"]  # earlier tests may have added the readers' rows
    order = ["model", "metric"]
    pd.testing.assert_frame_equal(
        rows[run_rows.columns].sort_values(order, ignore_index=True),
        run_rows.sort_values(order, ignore_index=True),
        check_dtype=False,
    )
    assert json.loads((run / rundir.NORBERG_INFO).read_text())["detector"]["patient_left"] == "image-left"
    # A run whose config says image-left needs no flag.
    config = (run / "config.toml").read_text()
    (run / "config.toml").write_text(
        config.replace('patient_left = "image-right"', 'patient_left = "image-left"')
    )
    assert 'patient_left = "image-left"' in (run / "config.toml").read_text()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        assert main(argv) == 0


def test_dashboard_labels_a_phantom_run_and_ranks_its_norberg_metrics(phantom_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from dashboards import data

    root, _ = phantom_run
    monkeypatch.setenv(data.RUN_ENV, str(root / "run"))
    monkeypatch.delenv(data.STUDY_ENV, raising=False)
    monkeypatch.delenv(data.COMPARE_ENV, raising=False)
    app = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "dashboards" / "app.py")
    at = AppTest.from_file(app, default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(w.value.startswith("**Phantom data.**") for w in at.warning)
    cells = at.dataframe[0].value
    assert "Norberg MAE ↓ (degrees)" in cells.columns and "Norberg BA bias (degrees)" in cells.columns
    # Every page opens on a run whose Norberg rows have no per-case values. (AppTest runs a switched-to
    # page alone, so the app's banner above the pages is checked in the browser, not here.)
    for page in ("distributions", "gallery", "worst_cases", "readers", "compare"):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
