"""Hugging Face feature evaluators (RadDino, hf:ORG/NAME@REVISION) with a tiny random DINOv2 standing in.

The real RadDino cannot be downloaded here, so a 2-layer random ``Dinov2Model`` and a
``BitImageProcessor`` are saved as a snapshot, the manifest's RadDino entry is re-pinned to those
files, and ``huggingface_hub.snapshot_download`` is replaced by a copy from that snapshot. Everything
after the download (verification, store, plan, loading, features, metrics) is the real code path.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg

from audit import weights
from audit.atomic import sha256_file
from audit.config import ConfigError, load_config
from audit.evaluators.base import ContractError, WeightsHashError
from audit.evaluators.hf import HFFeatures, raddino_architecture
from audit.weights import FileSpec, WeightsError, manifest

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    model, processor = raddino_architecture(seed=1, image_size=56, tiny=True)
    out = tmp_path_factory.mktemp("snapshot")
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    assert {p.name for p in out.iterdir()} >= set(manifest.HUB_FILES)
    return out


def _hashes(snapshot: Path) -> dict[str, str]:
    return {f: sha256_file(snapshot / f) for f in manifest.HUB_FILES}


@pytest.fixture
def hub(tmp_path, monkeypatch, snapshot):
    """RadDino re-pinned to the tiny snapshot, and a snapshot_download that copies from it."""
    monkeypatch.setenv("XRAY_AUDIT_HOME", str(tmp_path / "home"))
    files = tuple(
        FileSpec(f, sha256_file(snapshot / f), (snapshot / f).stat().st_size) for f in manifest.HUB_FILES
    )
    rad = dataclasses.replace(manifest.RADDINO, files=files)
    monkeypatch.setattr(manifest, "MANIFEST", {**manifest.MANIFEST, "rad-dino": rad})
    state = Hub(rad)

    def fake_snapshot_download(repo_id, *, revision, allow_patterns, local_dir, **kw):
        state.calls.append((repo_id, revision, tuple(allow_patterns)))
        for name in allow_patterns:
            shutil.copyfile(snapshot / name, Path(local_dir) / name)
        if state.tamper:
            (Path(local_dir) / "config.json").write_text('{"model_type": "dinov2", "hidden_size": 8}')
        return str(local_dir)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    return state


@dataclasses.dataclass
class Hub:
    entry: weights.WeightsEntry
    calls: list = dataclasses.field(default_factory=list)
    tamper: bool = False


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((70 + 3 * i, 64)).astype(np.float32) for i in range(n)]


def test_features_are_batch_size_independent(snapshot):
    net = HFFeatures.from_dir(snapshot, _hashes(snapshot), name="tiny", device="cpu")
    assert net.contract.size == 56
    imgs = _images(7)
    one = net.run(imgs, batch_size=1).features
    many = net.run(imgs, batch_size=4).features
    assert one.shape == (7, 64) and one.dtype == np.float32
    np.testing.assert_allclose(one, many, rtol=0, atol=1e-5)
    assert np.abs(one).max() > 0 and not np.allclose(one[0], one[1])
    assert "BitImageProcessor" in net.preprocessing and "56" in net.preprocessing


def test_features_are_the_cls_pooler_output_of_the_processed_image(snapshot):
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    net = HFFeatures.from_dir(snapshot, _hashes(snapshot), name="tiny", device="cpu")
    img = _images(1)[0]
    model = AutoModel.from_pretrained(snapshot).eval()
    processor = AutoImageProcessor.from_pretrained(snapshot)
    rgb = Image.fromarray(np.rint(img * 255).astype(np.uint8)).convert("RGB")
    with torch.no_grad():
        out = model(**processor(images=rgb, return_tensors="pt"))
    np.testing.assert_allclose(net.run([img]).features[0], out.last_hidden_state[0, 0].numpy(), atol=1e-5)


def test_loading_refuses_wrong_hashes_remote_code_and_pickles(snapshot, tmp_path):
    hashes = _hashes(snapshot)
    with pytest.raises(WeightsHashError, match="config.json"):
        HFFeatures.from_dir(snapshot, {**hashes, "config.json": "0" * 64}, name="tiny", device="cpu")
    copy = tmp_path / "remote"
    shutil.copytree(snapshot, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(ContractError, match="remote code"):
        HFFeatures.from_dir(copy, _hashes(copy), name="tiny", device="cpu")
    no_weights = {k: v for k, v in hashes.items() if k != "model.safetensors"}
    with pytest.raises(ContractError, match="safetensors"):
        HFFeatures.from_dir(snapshot, no_weights, name="tiny", device="cpu")
    net = HFFeatures.from_dir(snapshot, hashes, name="tiny", device="cpu")
    with pytest.raises(ContractError, match=r"outside \[0, 1\]"):
        net.run([np.full((60, 60), 1.5, np.float32)])


def test_fetch_rad_dino_through_huggingface_hub(hub):
    path = weights.fetch("rad-dino", progress=False)
    ((repo, revision, files),) = hub.calls
    assert repo == "microsoft/rad-dino" and revision == manifest.RADDINO.revision
    assert sorted(files) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    st = weights.status("rad-dino")
    assert st.state == "ok" and st.pin == "release" and path == weights.entry_dir(hub.entry)
    assert not (
        weights.weights_dir() / "hub" / ".incoming" / f"microsoft--rad-dino@{hub.entry.revision}"
    ).exists()


def test_a_snapshot_that_does_not_match_its_pins_is_discarded(hub):
    hub.tamper = True
    with pytest.raises(WeightsError, match="does not match its pin.*config.json"):
        weights.fetch("rad-dino", progress=False)
    assert weights.status("rad-dino").state == "missing"


def test_offline_hub_download_names_the_fix(hub, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(WeightsError) as err:
        weights.fetch("rad-dino", progress=False)
    assert "huggingface-cli download microsoft/rad-dino" in str(err.value)
    assert "xray-audit weights import DIR" in str(err.value)


def test_import_finds_rad_dino_in_the_hugging_face_cache(hub, snapshot, tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    snap = cache / "models--microsoft--rad-dino" / "snapshots" / hub.entry.revision
    snap.mkdir(parents=True)
    for f in manifest.HUB_FILES:
        shutil.copyfile(snapshot / f, snap / f)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    report = weights.import_dir()
    assert [n for n, _ in report.imported] == ["rad-dino"] and weights.status("rad-dino").state == "ok"
    # A plain folder (huggingface-cli download --local-dir) is recognised by its pinned weights file.
    shutil.rmtree(weights.entry_dir(hub.entry))
    report = weights.import_dir(snap)
    assert [n for n, _ in report.imported] == ["rad-dino"]


def test_any_hub_backbone_pinned_with_trust(hub, capsys):
    from audit.cli import main

    spec = f"hf:acme/tiny-dino@{REV}"
    with pytest.raises(WeightsError, match="--trust"):
        weights.fetch(spec, progress=False)
    assert main(["-q", "weights", "fetch", spec, "--trust"]) == 0
    assert "pinned by you on first download" in capsys.readouterr().out
    st = weights.status(spec)
    assert st.state == "ok" and st.pin == "user-trust" and "huggingface.co/acme/tiny-dino" in st.pin_note
    assert spec in [s.name for s in weights.statuses()]


def test_config_accepts_hf_features_only_at_a_commit(tmp_path):
    from tests.test_evaluation import study

    manifest_csv = tmp_path / "cases.csv"
    manifest_csv.write_text("case_id,image\na,a.png\n")
    bad = study(tmp_path, manifest_csv, features="hf:facebook/dinov2-base@main")
    with pytest.raises(ConfigError, match="40-hex commit"):
        load_config(bad)
    stray = study(tmp_path, manifest_csv, out="s", evaluators='hf_sha256 = { "config.json" = "00" }')
    with pytest.raises(ConfigError, match="hf_sha256"):
        load_config(stray)


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2))))


def test_study_with_raddino_and_hf_features(hub, snapshot, tmp_path):
    """fd/kid/prdc_raddino and fid on an hf: backbone, end to end, against the published formulas."""
    from prdc import compute_prdc

    from audit import images, rundir
    from audit.run_plan import RunOptions
    from audit.runner import run_study
    from tests.conftest import make_cohort

    weights.fetch("rad-dino", progress=False)
    cases = make_cohort(tmp_path / "cohort", n=8, size=96)
    hashes = ", ".join(f'"{k}" = "{v}"' for k, v in _hashes(snapshot).items())
    spec = f"hf:acme/tiny-dino@{REV}"
    hf_dir = weights.entry_dir(weights.entry(spec))
    hf_dir.mkdir(parents=True)
    for f in manifest.HUB_FILES:
        shutil.copyfile(snapshot / f, hf_dir / f)
    cfg = tmp_path / "study.toml"
    cfg.write_text(
        f"""
[study]
name = "hf"
cases = "{cases}"
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
pixel = ["psnr"]
bootstrap_resamples = 100
distribution = ["fid", "fd_raddino", "kid_raddino", "prdc_raddino"]
kid_subsets = 5
prdc_k = 2

[evaluators]
features = "{spec}"
hf_sha256 = {{ {hashes} }}
batch_size = 3
"""
    )
    run_study(load_config(cfg), RunOptions(progress=False))
    run = tmp_path / "run"
    summary = pd.read_csv(run / "summary.csv")
    rows = summary[(summary["model"] == "blur") & summary["group"].isna()].set_index("metric")
    info = json.loads((run / rundir.RUN_JSON).read_text())["evaluation"]
    assert info["evaluators"]["raddino"]["name"] == "rad-dino"
    assert info["evaluators"]["raddino"]["pin"] == "release"
    assert (
        info["evaluators"]["features"]["name"] == spec and info["evaluators"]["features"]["pin"] == "config"
    )
    assert info["metric_evaluators"]["precision_raddino"] == "rad-dino"
    assert rows.loc["fd_raddino", "evaluator"] == "rad-dino" and rows.loc["fid", "evaluator"] == spec

    net = HFFeatures.from_dir(snapshot, _hashes(snapshot), name="tiny", device="cpu")
    frame = pd.read_csv(cases)
    real = net.run([images.read_image(cases.parent / p).pixels for p in frame["image"]]).features.astype(
        np.float64
    )
    samples = pd.read_parquet(run / "samples.parquet")
    blur = samples[samples["model"] == "blur"].set_index("case_id").loc[frame["case_id"]]
    gen = net.run([images.read_image(p).pixels for p in blur["path"]]).features.astype(np.float64)
    expected = _frechet(real, gen)
    assert rows.loc["fd_raddino", "value"] == pytest.approx(expected, rel=1e-4)
    assert rows.loc["fid", "value"] == pytest.approx(expected, rel=1e-4)  # the same backbone, both roles
    ref = compute_prdc(real, gen, nearest_k=2)
    for name in ("precision", "recall", "density", "coverage"):
        assert rows.loc[f"{name}_raddino", "value"] == pytest.approx(ref[name], abs=1e-6)
    lo, hi = rows.loc["fd_raddino", ["ci_low", "ci_high"]]
    assert lo <= hi


def test_hf_sha256_round_trips_through_the_written_config(tmp_path):
    import tomllib

    from audit.config import dump_toml, parse_config

    raw = {
        "study": {"name": "x", "cases": str(tmp_path / "c.csv"), "output": str(tmp_path / "o")},
        "models": [{"name": "real", "kind": "real"}],
        "evaluators": {"features": f"hf:acme/tiny-dino@{REV}", "hf_sha256": {"model.safetensors": "a" * 64}},
    }
    written = dump_toml(parse_config(raw))
    assert '"model.safetensors" = ' in written  # quoted: a bare dotted key would nest
    assert parse_config(tomllib.loads(written)).evaluators.hf_sha256 == {"model.safetensors": "a" * 64}


def test_files_beside_the_pinned_ones_never_reach_the_model(snapshot, tmp_path):
    # transformers would let an unpinned processor_config.json override the pinned preprocessor.
    copy = tmp_path / "snap"
    shutil.copytree(snapshot, copy)
    stray = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "processor_config.json").write_text(
        json.dumps({"image_processor": {**stray, "image_mean": [0, 0, 0]}})
    )
    img = _images(2)
    pinned = HFFeatures.from_dir(snapshot, _hashes(snapshot), name="tiny", device="cpu").run(img).features
    beside = HFFeatures.from_dir(copy, _hashes(snapshot), name="tiny", device="cpu").run(img).features
    np.testing.assert_array_equal(pinned, beside)


def test_the_cache_key_separates_half_precision_outputs():
    from audit.config import EvaluatorsSection, MetricsSection
    from audit.evaluators.suite import resolve_evaluators

    metrics = MetricsSection(distribution=("fid",))
    fp32 = resolve_evaluators(metrics, EvaluatorsSection(features="demo"))["features"].key
    bf16 = resolve_evaluators(metrics, EvaluatorsSection(features="demo", dtype="bf16"))["features"].key
    assert fp32 != bf16 and bf16.preprocessing.endswith(";dtype=bf16") and ";dtype" not in fp32.preprocessing


def test_an_offline_copy_of_any_hub_backbone_is_imported_by_name(hub, snapshot, capsys):
    from audit.cli import main

    spec = f"hf:acme/tiny-dino@{REV}"
    assert main(["weights", "import", str(snapshot), "--name", spec]) == 1  # not pinned: says how
    assert f"--name {spec} --trust" in capsys.readouterr().out
    assert main(["weights", "import", str(snapshot), "--name", spec, "--trust"]) == 0
    st = weights.status(spec)
    assert st.state == "ok" and st.pin == "user-trust" and str(snapshot) in st.pin_note
    assert main(["weights", "verify", spec]) == 0


def test_hf_sha256_names_only_backbone_files(tmp_path):
    from tests.test_evaluation import study

    cases = tmp_path / "cases.csv"
    cases.write_text("case_id,image\na,a.png\n")
    typo = study(
        tmp_path,
        cases,
        features=f"hf:acme/tiny-dino@{REV}",
        evaluators=f'hf_sha256 = {{ "model.safetensor" = "{"0" * 64}" }}',
    )
    with pytest.raises(ConfigError, match="model.safetensor'.*config.json, preprocessor_config.json"):
        load_config(typo)
