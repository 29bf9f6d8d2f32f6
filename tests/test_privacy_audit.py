"""The privacy stage of `xray-audit run` ([privacy]), end to end on a tiny study.

The held-out references are one synthetic cohort, the generator's "training set" a second one drawn
with another seed, and a `folder` model whose images are byte copies of training images stands in for
a generator that memorised. Every number of privacy.parquet, per_sample.parquet and summary.csv is
recomputed here independently: embeddings straight from the demo network, pixel vectors from the
kernel's preprocessing, all distances with scipy's cdist, neighbours by argsort, thresholds with
np.quantile, authenticity by a per-sample loop of Alaa et al.'s definition, privacy_auc with
scikit-learn's roc_auc_score, re-ID scores by calling the TorchScript module directly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score

from audit import images, rundir
from audit.atomic import sha256_file
from audit.cases import load_manifest
from audit.config import EvaluatorsSection, MetricsSection, load_config
from audit.evaluators.plan import LoadOptions
from audit.evaluators.suite import load_backend, resolve_evaluators
from audit.metrics.functional.privacy import pixel_vectors
from audit.privacy_summary import calibration_training_rows
from audit.run_plan import RunError, RunOptions
from audit.runner import merge_runs, run_study
from tests.conftest import make_cohort
from tests.test_alpha_beta import _reference

N_REF, N_TRAIN, K, QUANTILE, PIXELS = 20, 24, 3, 0.1, 32
MAX_SHIFT = 2  # [privacy].max_shift's default


class _Reid(torch.nn.Module):
    """A stand-in re-ID network: 1 − mean |a − b|, in [0, 1] for images in [0, 1]; 1 for a copy."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1.0 - (a - b).abs().mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("privacy")
    refs = make_cohort(root / "refs", n=N_REF, size=96, seed=0)
    train = make_cohort(root / "train", n=N_TRAIN, size=96, seed=1)
    # The memorising "generator": reference case i gets training image (i + 2) % N_TRAIN, byte for byte.
    (root / "copies").mkdir()
    copied = {}
    for i in range(N_REF):
        j = (i + 2) % N_TRAIN
        shutil.copy(root / "train" / "img" / f"case-{j:03d}.png", root / "copies" / f"case-{i:03d}.png")
        copied[f"case-{i:03d}"] = f"case-{j:03d}"
    reid = root / "reid.ts"
    torch.jit.save(torch.jit.script(_Reid()), str(reid))
    return {"root": root, "refs": refs, "train": train, "reid": reid, "copied": copied}  # type: ignore[dict-item]


def study(
    cohorts,
    out: Path,
    *,
    training: Path | None = None,
    reid_sha: str | None = None,
    extra: str = "",
) -> Path:
    root = cohorts["root"]
    reid = f'[privacy.reid_model]\npath = "{cohorts["reid"]}"\nsha256 = "{reid_sha}"\n' if reid_sha else ""
    text = f"""
[study]
name = "privacy"
cases = "{cohorts["refs"]}"
output = "{out}"
seed = 3

[[models]]
name = "real"
kind = "real"

[[models]]
name = "copies"
kind = "folder"
path = "{root / "copies"}/{{case_id}}.png"

[[models]]
name = "blur"
kind = "degrade"
degradation = "blur"
level = 2.0

[metrics]
pixel = ["psnr"]
bootstrap_resamples = 200
group_by = ["group"]

[evaluators]
features = "demo"
batch_size = 8
cache_dir = "{root / "cache"}"

[privacy]
training_cases = "{training or cohorts["train"]}"
features = "demo"
quantile = {QUANTILE}
k = {K}
pixel_size = {PIXELS}
{extra}
{reid}"""
    path = out.parent / f"{out.name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def finished(cohorts):
    out = cohorts["root"] / "run"
    run_study(
        load_config(study(cohorts, out, reid_sha=sha256_file(cohorts["reid"]))), RunOptions(progress=False)
    )
    return out


def _demo_features(paths: list[str]) -> np.ndarray:
    plan = resolve_evaluators(MetricsSection(distribution=("fid",)), EvaluatorsSection(features="demo"))[
        "features"
    ]
    backend = load_backend(plan, LoadOptions("cpu", "fp32", batch_size=4))
    return np.stack([o["features"] for o in backend.compute([images.read_image(p).pixels for p in paths])])


def _pixels(paths: list[str], mirrored: bool = False) -> np.ndarray:
    pixels = [images.read_image(p).pixels for p in paths]
    if mirrored:  # flipped before the crop and resize: an independent check of mirror_pixel_vectors
        pixels = [np.fliplr(p) for p in pixels]
    return pixel_vectors(pixels, PIXELS).astype(np.float64)


def _shifted(query: np.ndarray, train: np.ndarray, r: int = MAX_SHIFT) -> np.ndarray:
    """RMS distance of every (query, training image) pair after the best integer shift of the query
    by up to ``r`` pixels: each query window against the training image's centred window."""
    q, t = query.reshape(-1, PIXELS, PIXELS), train.reshape(-1, PIXELS, PIXELS)
    centre = t[:, r : PIXELS - r, r : PIXELS - r].reshape(len(t), -1)
    best = np.full((len(q), len(t)), np.inf)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            window = q[:, r + dy : PIXELS - r + dy, r + dx : PIXELS - r + dx].reshape(len(q), -1)
            best = np.minimum(best, cdist(window, centre) / np.sqrt(centre.shape[1]))
    return best


def test_every_number_matches_an_independent_computation(finished, cohorts):
    refs = load_manifest(cohorts["refs"]).frame
    train = load_manifest(cohorts["train"]).frame
    samples = pd.read_parquet(finished / rundir.SAMPLES)
    priv = pd.read_parquet(finished / rundir.PRIVACY)
    assert tuple(priv.columns) == rundir.PRIVACY_COLUMNS
    assert len(priv) == len(samples) == 3 * N_REF
    key = ["model", "case_id", "sample"]
    merged = samples[[*key, "path"]].merge(priv, on=key, validate="one_to_one")

    f_train, f_ref, f_gen = (_demo_features(list(x)) for x in (train.image, refs.image, merged.path))
    p_train, p_ref, p_gen = (_pixels(list(x)) for x in (train.image, refs.image, merged.path))
    train_ids = train.case_id.to_numpy(str)
    d_ref, d_gen = cdist(f_ref, f_train, "cosine"), cdist(f_gen, f_train, "cosine")
    # Pixel space: the nearest of the image as given and its left-right mirror image, each window moved
    # by up to MAX_SHIFT pixels, against the training images' centred windows.
    m_ref, m_gen = (_pixels(list(x), mirrored=True) for x in (refs.image, merged.path))
    e_ref = np.minimum(_shifted(p_ref, p_train), _shifted(m_ref, p_train))
    e_gen_given, e_gen_mirror = _shifted(p_gen, p_train), _shifted(m_gen, p_train)
    e_gen = np.minimum(e_gen_given, e_gen_mirror)
    assert (merged.pixel_mirrored.to_numpy(bool) == (e_gen_mirror.min(1) < e_gen_given.min(1))).all()

    # Nearest training image and its distance, in both spaces (float32 features: 1e-6 tolerance).
    np.testing.assert_allclose(merged.nn_distance, d_gen.min(1), atol=1e-6)
    np.testing.assert_allclose(merged.nn_distance_pixel, e_gen.min(1), atol=1e-6)
    assert (merged.train_case_id.to_numpy(str) == train_ids[d_gen.argmin(1)]).all()
    assert (merged.pixel_train_case_id.to_numpy(str) == train_ids[e_gen.argmin(1)]).all()

    # Thresholds: both at one quantile level of the held-out references' own nearest-training distances,
    # the largest level <= QUANTILE at which either space together flags at most QUANTILE of them.
    info = json.loads((finished / rundir.RUN_JSON).read_text())["privacy"]
    level = info["level"]

    def union_share(at: float) -> float:
        return float(
            (
                (d_ref.min(1) < np.quantile(d_ref.min(1), at))
                | (e_ref.min(1) < np.quantile(e_ref.min(1), at))
            ).mean()
        )

    assert 0 < level <= QUANTILE and union_share(level) <= QUANTILE
    assert level == QUANTILE or union_share(min(QUANTILE, level + 1e-9)) > QUANTILE
    t_f = np.quantile(d_ref.min(1), level)
    t_p = np.quantile(e_ref.min(1), level)
    assert info["thresholds"]["features"] == pytest.approx(t_f, abs=1e-6)
    assert info["thresholds"]["pixels"] == pytest.approx(t_p, abs=1e-6)
    assert {k: info[k] for k in ("features", "metric", "pixel_size", "quantile", "k", "n_training")} == {
        "features": "demo-anatomy-segmenter",
        "metric": "cosine",
        "pixel_size": PIXELS,
        "quantile": QUANTILE,
        "k": K,
        "n_training": N_TRAIN,
    }
    assert info["show_training_images"] is True and info["reid_model"] == sha256_file(cohorts["reid"])
    by_f, by_p = merged.nn_distance < t_f, merged.nn_distance_pixel < t_p
    assert (merged.flagged == (by_f | by_p)).all()
    expected_by = np.where(by_f & by_p, "both", np.where(by_f, "features", np.where(by_p, "pixels", "")))
    assert (merged.flagged_by.to_numpy(str) == expected_by).all()

    # Authenticity, Alaa et al. 2022, one sample at a time.
    d_train = cdist(f_train, f_train, "cosine")
    d_train[d_train <= 0] = np.inf  # itself (and any image with the same embedding) is not another image
    for row, d in zip(merged.itertuples(), d_gen, strict=True):
        i = int(d.argmin())
        radius = d_train[i].min()  # training image i's distance to its nearest other training image
        if abs(d[i] - radius) > 1e-6:  # away from float32 near-ties, the call is unambiguous
            assert row.authentic == (not d[i] < radius)

    # Re-ID: the scripted network on (sample, each of its K nearest training images in feature space).
    net = _Reid()
    size = (PIXELS, PIXELS)
    for row, d, pg in zip(merged.itertuples(), d_gen, p_gen, strict=True):
        nearest = np.argsort(d, kind="stable")[:K]
        a = torch.from_numpy(pg.reshape(1, 1, *size).repeat(K, 0)).float()
        b = torch.from_numpy(p_train[nearest].reshape(K, 1, *size)).float()
        s = net(a, b).double().numpy()
        assert row.reid_score == pytest.approx(s.mean(), abs=1e-6)
        assert row.reid_score_max == pytest.approx(s.max(), abs=1e-6)

    # per_sample.parquet holds the same values as metrics, and summary.csv their means with CIs.
    per = pd.read_parquet(finished / rundir.PER_SAMPLE)
    wide = per[per.metric.isin(["nn_distance", "memorised_fraction", "authenticity", "reid_score"])].pivot(
        index=key, columns="metric", values="value"
    )
    check = merged.set_index(key).loc[wide.index]
    np.testing.assert_array_equal(wide.nn_distance, check.nn_distance)
    np.testing.assert_array_equal(wide.memorised_fraction, check.flagged.astype(float))
    np.testing.assert_array_equal(wide.authenticity, check.authentic.astype(float))
    np.testing.assert_array_equal(wide.reid_score, check.reid_score)
    summary = pd.read_csv(finished / rundir.SUMMARY, keep_default_na=False)
    s = summary[summary.group == ""].set_index(["model", "metric"])
    for model in ("real", "copies", "blur"):
        sel = merged[merged.model == model]
        assert float(s.loc[(model, "memorised_fraction"), "value"]) == pytest.approx(sel.flagged.mean())
        # Distances are summarised by their median over cases (one sample per case here).
        assert float(s.loc[(model, "nn_distance"), "value"]) == pytest.approx(sel.nn_distance.median())
        assert float(s.loc[(model, "nn_distance_pixel"), "value"]) == pytest.approx(
            sel.nn_distance_pixel.median()
        )
        assert str(s.loc[(model, "memorised_fraction"), "higher_is_better"]) == "False"
        # What computed each metric, as for the scoring networks.
        assert s.loc[(model, "nn_distance"), "evaluator"] == "demo-anatomy-segmenter"
        assert s.loc[(model, "nn_distance_pixel"), "evaluator"] == ""  # pixels against pixels
        assert s.loc[(model, "memorised_fraction"), "evaluator"] == "demo-anatomy-segmenter"
        assert s.loc[(model, "reid_score"), "evaluator"] == f"re-ID model {cohorts['reid'].name}"

    # privacy_auc: P(d_gen > d_real) + ½ ties, as scikit-learn's ROC AUC of "generated" scored by distance.
    ref_nn = d_ref.min(1)
    for model in ("copies", "blur"):
        g = merged[merged.model == model].nn_distance.to_numpy()
        auc = roc_auc_score(np.r_[np.ones(g.size), np.zeros(ref_nn.size)], np.r_[g, ref_nn])
        row = s.loc[(model, "privacy_auc")]
        assert float(row["value"]) == pytest.approx(auc, abs=1e-9)
        assert float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"])
        assert str(row["higher_is_better"]) == "" and int(row["n"]) == N_REF
    assert ("real", "privacy_auc") not in s.index  # the references against themselves

    # α-precision / β-recall: the authors' reference formula (scikit-learn neighbours, np.quantile) on
    # unit-length embeddings of each model's samples against the held-out references; the real row
    # holds the calibration, training images (other real patients) in place of samples. Embeddings
    # recomputed here may differ in the last float32 bit, which can move a point across one support's
    # edge (0.0034 per crossing), hence the tolerance.
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    chosen = calibration_training_rows(N_TRAIN, N_REF, seed=3)  # the study seed
    assert len(chosen) == N_REF and len(set(chosen)) == N_REF
    stand_ins = {
        "copies": f_gen[(merged.model == "copies").to_numpy()],
        "blur": f_gen[(merged.model == "blur").to_numpy()],
        "real": f_train[chosen],
    }
    for model, synthetic in stand_ins.items():
        *_, alpha, beta = _reference(unit(f_ref.astype(np.float64)), unit(synthetic.astype(np.float64)))
        for metric, expected in (("alpha_precision", alpha), ("beta_recall", beta)):
            row = s.loc[(model, metric)]
            assert float(row["value"]) == pytest.approx(expected, abs=0.01), (model, metric)
            # the jackknife interval is centred on the estimate, within the summary's range
            assert (
                -1 / 29 - 1e-12 <= float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"]) <= 1
            )
            assert float(row["ci_low"]) < float(row["ci_high"]) and int(row["n"]) == N_REF
            assert row["evaluator"] == "demo-anatomy-segmenter" and str(row["higher_is_better"]) == "True"
    groups = summary[(summary.metric == "beta_recall") & (summary.model == "blur")].group.tolist()
    assert groups == ["", "group=a", "group=b"]
    assert summary[(summary.metric == "beta_recall") & (summary.model == "real")].group.tolist() == [""]
    groups = summary[(summary.metric == "privacy_auc") & (summary.model == "blur")].group.tolist()
    assert groups == ["", "group=a", "group=b"]

    training = pd.read_parquet(finished / rundir.PRIVACY_TRAINING)
    assert list(training.columns) == list(rundir.PRIVACY_TRAINING_COLUMNS)
    assert list(training.sha256) == [sha256_file(p) for p in train.image]
    assert list(training.image) == list(train.image)


def test_copies_are_flagged_and_real_is_flagged_at_the_quantile(finished, cohorts):
    priv = pd.read_parquet(finished / rundir.PRIVACY)
    copies = priv[priv.model == "copies"]
    assert copies.flagged.mean() >= 0.9
    assert (copies.flagged_by == "both").all() and (~copies.authentic).all()
    # Each copy's nearest training image is the one it copies, at distance 0 in pixel space.
    assert dict(zip(copies.case_id, copies.pixel_train_case_id, strict=True)) == cohorts["copied"]
    assert (copies.nn_distance_pixel == 0).all()
    np.testing.assert_allclose(copies.reid_score_max, 1.0)  # the copied image itself scores 1
    # The references calibrate the thresholds of the union rule: a quantile share of them is flagged by
    # either space (within one reference of quantile x N), each space flagging no more than that.
    real = priv[priv.model == "real"]
    assert QUANTILE - 1 / N_REF <= real.flagged.mean() <= QUANTILE
    for space in ("features", "pixels"):
        assert real.flagged_by.isin([space, "both"]).mean() <= QUANTILE


def test_rerun_uses_only_cached_vectors(finished, cohorts, monkeypatch):
    before = pd.read_parquet(finished / rundir.PRIVACY)

    def refuse(*args, **kwargs):
        raise AssertionError("a warm rerun must not load a network")

    monkeypatch.setattr("audit.evaluators.suite.load_backend", refuse)
    monkeypatch.setattr("audit.images.read_image", refuse)  # no image is decoded again either
    out = cohorts["root"] / "run"
    run_study(
        load_config(study(cohorts, out, reid_sha=sha256_file(cohorts["reid"]))), RunOptions(progress=False)
    )
    pd.testing.assert_frame_equal(pd.read_parquet(finished / rundir.PRIVACY), before)


def test_shards_leave_the_stage_to_merge(cohorts, finished, tmp_path):
    out = tmp_path / "sharded"
    config = load_config(study(cohorts, out))
    for i in range(2):
        run_study(config, RunOptions(progress=False, chunk_size=8, shard=(i, 2)))
        assert not (out / rundir.PRIVACY).exists()
    merge_runs([out], RunOptions(progress=False, chunk_size=8))
    merged = pd.read_parquet(out / rundir.PRIVACY).drop(columns=["reid_score", "reid_score_max"])
    whole = pd.read_parquet(finished / rundir.PRIVACY).drop(columns=["reid_score", "reid_score_max"])
    key = ["model", "case_id", "sample"]
    pd.testing.assert_frame_equal(
        merged.sort_values(key).reset_index(drop=True), whole.sort_values(key).reset_index(drop=True)
    )
    assert np.isnan(pd.read_parquet(out / rundir.PRIVACY).reid_score).all()  # no re-ID model: NaN
    per = pd.read_parquet(out / rundir.PER_SAMPLE)
    assert "reid_score" not in set(per.metric) and "nn_distance" in set(per.metric)


def test_a_reference_that_is_a_training_image_stops_the_run_naming_both(cohorts, tmp_path):
    train = pd.read_csv(cohorts["train"], dtype=str)
    train["image"] = [str(cohorts["train"].parent / p) for p in train.image]
    leak = train.iloc[[0]].assign(
        case_id="leaked-7", image=str(cohorts["refs"].parent / "img" / "case-007.png")
    )
    manifest = tmp_path / "train_with_leak.csv"
    pd.concat([train, leak]).drop(columns="anatomy_mask").to_csv(manifest, index=False)
    out = tmp_path / "run"
    with pytest.raises(RunError) as err:
        run_study(load_config(study(cohorts, out, training=manifest)), RunOptions(progress=False))
    text = str(err.value)
    assert "case case-007 = training case(s) leaked-7" in text
    assert "remove these cases from one of the two manifests" in text
    assert not (out / rundir.SAMPLES_DIR).exists()  # before any generation


def test_an_empty_training_set_is_an_error(cohorts, tmp_path):
    manifest = tmp_path / "empty.csv"
    manifest.write_text("case_id,image\n")
    with pytest.raises(RunError, match=r"\[privacy\]\.training_cases .*the training set is empty"):
        run_study(
            load_config(study(cohorts, tmp_path / "run", training=manifest)), RunOptions(progress=False)
        )


def test_a_reid_model_with_the_wrong_hash_is_refused_before_loading(cohorts, tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loaded.append(a))
    config = load_config(study(cohorts, tmp_path / "run", reid_sha="0" * 64))
    with pytest.raises(RunError, match=r"\[privacy.reid_model\]: .*reid.ts has sha256 .* it was not loaded"):
        run_study(config, RunOptions(progress=False))
    assert loaded == []
    assert not (tmp_path / "run" / rundir.SAMPLES_DIR).exists()
    # The load itself checks the bytes it loads too (a file swapped after the first check).
    from audit.privacy_reid import load_reid_model

    with pytest.raises(RunError, match="not loaded"):
        load_reid_model(cohorts["reid"], "0" * 64, "cpu")
    assert loaded == []


def test_features_values_map_to_their_evaluators(tmp_path):
    """[privacy].features picks a role and network; "auto" prefers RadDino and falls back to
    [evaluators].features (the session's XRAY_AUDIT_HOME holds no pretrained weights)."""
    from audit.config import parse_config
    from audit.evaluators.plan import EvaluatorPlan, Unavailable
    from audit.privacy import resolve_features

    def resolve(features: str, evaluators: dict | None = None):
        raw = {
            "study": {"name": "t", "cases": "c.csv", "output": "o"},
            "models": [{"name": "real", "kind": "real"}],
            "evaluators": evaluators or {},
            "privacy": {"training_cases": "t.csv", "features": features},
        }
        config = parse_config(raw, source=tmp_path / "s.toml")
        return resolve_features(config.privacy, config)

    demo = resolve("demo")
    assert isinstance(demo, EvaluatorPlan) and (demo.role, demo.name) == (
        "features",
        "demo-anatomy-segmenter",
    )
    auto = resolve("auto", {"features": "demo"})
    assert isinstance(auto, EvaluatorPlan) and auto.name == "demo-anatomy-segmenter"
    assert "RadDino unavailable" in auto.note
    missing = resolve("auto")  # default [evaluators].features = "inception", whose weights are absent
    assert (
        isinstance(missing, Unavailable) and "RadDino" in missing.reason and "'inception'" in missing.reason
    )
    xrv = resolve("xrv")
    assert isinstance(xrv, Unavailable) and xrv.role == "classifier"
    assert "densenet121-res224-all" in xrv.reason
    raddino = resolve("raddino")
    assert isinstance(raddino, Unavailable) and raddino.role == "raddino"


@pytest.mark.parametrize("correlated", [False, True])
def test_union_thresholds_flag_the_quantile_of_held_out_patients(correlated):
    from audit.privacy import union_thresholds

    rng = np.random.default_rng(5)
    f = rng.gamma(4.0, size=2000)
    p = f + rng.normal(0, 0.01, f.size) if correlated else rng.gamma(4.0, size=2000)
    thresholds, level = union_thresholds(f, p, 0.05)
    union = (f < thresholds["features"]) | (p < thresholds["pixels"])
    assert 0.05 - 1 / f.size <= union.mean() <= 0.05
    assert thresholds["features"] == pytest.approx(np.quantile(f, level))
    assert thresholds["pixels"] == pytest.approx(np.quantile(p, level))
    # Independent spaces need about half the level per space; identical ones the full quantile.
    assert (0.04 < level <= 0.05) if correlated else (0.02 < level < 0.03)


def _resave(src: Path, dst: Path) -> None:
    """The same PNG with a text chunk added: other bytes (another sha256), the same pixels."""
    import struct
    import zlib

    data = src.read_bytes()
    body = b"tEXt" + b"Comment\x00saved again"
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    end = data.rindex(b"IEND") - 4
    dst.write_bytes(data[:end] + chunk + data[end:])


def _shift(src: Path, dst: Path, dy: int, dx: int) -> None:
    """The image moved by (dy, dx) pixels, the uncovered border repeating the edge."""
    from audit.images import write_png

    img = images.read_image(src).pixels
    h, w = img.shape[:2]
    padded = np.pad(img, ((abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="edge")
    write_png(dst, padded[abs(dy) - dy : abs(dy) - dy + h, abs(dx) - dx : abs(dx) - dx + w], bit_depth=16)


def test_a_reference_saved_again_as_a_training_image_stops_the_run(cohorts, tmp_path):
    """Other bytes, same pixels: the hash check cannot see it, the pixel search does."""
    train = pd.read_csv(cohorts["train"], dtype=str)
    train["image"] = [str(cohorts["train"].parent / p) for p in train.image]
    _resave(cohorts["refs"].parent / "img" / "case-004.png", tmp_path / "resaved.png")
    leak = train.iloc[[0]].assign(case_id="resaved-4", image=str(tmp_path / "resaved.png"))
    manifest = tmp_path / "train_with_resaved.csv"
    pd.concat([train, leak]).drop(columns="anatomy_mask").to_csv(manifest, index=False)
    with pytest.raises(RunError) as err:
        run_study(
            load_config(study(cohorts, tmp_path / "run", training=manifest)), RunOptions(progress=False)
        )
    text = str(err.value)
    assert "1 held-out reference(s) have the same pixels as a training image" in text
    assert "case case-004 ≈ training case resaved-4 (RMS pixel difference 0.00000)" in text
    assert "remove these cases from one of the two manifests" in text


@pytest.fixture(scope="module")
def planted(cohorts, tmp_path_factory):
    """A training set with duplicated images (one file listed twice, and one saved again), and two
    memorising models: exact copies of training images, and training images moved by a few pixels."""
    root = tmp_path_factory.mktemp("planted")
    train = pd.read_csv(cohorts["train"], dtype=str)[["case_id", "image"]]
    train["image"] = [str(cohorts["train"].parent / p) for p in train.image]
    extra = []
    for j in range(4):  # the same file under a second case id
        extra.append({"case_id": f"twin-{j}", "image": train.image[j]})
    for j in range(4, 8):  # the same pixels in another file
        _resave(Path(train.image[j]), root / f"resaved-{j}.png")
        extra.append({"case_id": f"resaved-{j}", "image": str(root / f"resaved-{j}.png")})
    manifest = root / "train.csv"
    pd.concat([train, pd.DataFrame(extra)]).to_csv(manifest, index=False)
    (root / "shifted").mkdir()
    # Moves of 3 to 6 pixels at 96 px: 1 to 2 pixels at the pixel search's PIXELS = 32.
    moves = [(6, 0), (0, -6), (-3, 3), (6, 6), (3, -6)]
    for i in range(N_REF):
        j = (i + 5) % N_TRAIN
        _shift(Path(train.image[j]), root / "shifted" / f"case-{i:03d}.png", *moves[i % len(moves)])
    runs = {}
    for shift in (0, MAX_SHIFT):
        out = root / f"run-{shift}"
        extra_toml = f'max_shift = {shift}\n\n[[models]]\nname = "shifted"\nkind = "folder"\npath = "{root / "shifted"}/{{case_id}}.png"\n'
        config = study(cohorts, out, training=manifest, extra=extra_toml)
        run_study(load_config(config), RunOptions(progress=False))
        runs[shift] = pd.read_parquet(out / rundir.PRIVACY)
    return runs


def test_copies_of_duplicated_training_images_are_not_authentic(planted):
    rows = planted[MAX_SHIFT]
    copies = rows[rows.model == "copies"]
    # Copies of training images 0-7 (duplicated) among them: a duplicate is not "another" image, so the
    # radius is never 0 and no exact copy passes as authentic.
    assert len(copies) == N_REF and not copies.authentic.any()


def test_copies_moved_by_a_few_pixels_are_found_in_pixel_space(planted):
    def shifted(shift: int) -> pd.DataFrame:
        rows = planted[shift]
        return rows[rows.model == "shifted"].sort_values("case_id")

    sources = [f"case-{(i + 5) % N_TRAIN:03d}" for i in range(N_REF)]
    # With the shift search every moved copy is matched to its own source, as good as exactly (the
    # resize's rounding only), and flagged in pixel space; held-out patients stay at about the quantile.
    found = shifted(MAX_SHIFT)
    assert list(found.pixel_train_case_id) == sources
    assert found.nn_distance_pixel.max() < 0.002
    assert found.flagged_by.isin(["pixels", "both"]).all()
    real = planted[MAX_SHIFT]
    assert real[real.model == "real"].flagged.mean() <= QUANTILE
    # Without it, the same copies sit as far from their sources as a different patient might.
    assert shifted(0).nn_distance_pixel.min() > 0.03


def test_a_rerun_without_privacy_removes_the_old_audit(cohorts, finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    config = study(cohorts, out)
    text = config.read_text()
    config.write_text(text[: text.index("[privacy]")])  # the same study, the audit taken out
    run_study(load_config(config), RunOptions(progress=False))
    assert not (out / rundir.PRIVACY).exists() and not (out / rundir.PRIVACY_TRAINING).exists()
    assert "privacy" not in json.loads((out / rundir.RUN_JSON).read_text())


def test_an_undefined_embedding_names_its_image_files(tmp_path, cohort):
    """An all-zero embedding (a blank export) has no cosine distance: the error names the file."""
    from audit.feature_cache import EvaluatorKey, FeatureCache
    from audit.privacy import _Space

    frame = load_manifest(cohort).frame
    paths = {sha256_file(p): str(p) for p in frame.image}
    shas = list(paths)
    blank = paths[shas[2]]

    def embed(batch):
        return [
            {"features": np.zeros(4, np.float32) if i == 2 else np.ones(4, np.float32)}
            for i in range(len(batch))
        ]

    space = _Space(
        FeatureCache(tmp_path / "cache", EvaluatorKey("t", "none", "v1")),
        "features",
        "cosine",
        embed,
        paths,
        8,
    )
    with pytest.raises(RunError) as err:
        space.vectors(list(paths))
    text = str(err.value)
    assert "the features vectors of 1 image(s) are NaN/inf or all zero" in text and blank in text
    assert paths[shas[1]] not in text
