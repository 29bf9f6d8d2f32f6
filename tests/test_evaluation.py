"""Clinical and distribution metrics inside `xray-audit run`, checked against independent references.

The cohort is a small demo cohort (real CT projections with labels and RGB anatomy masks) and the
evaluators are the shipped demo networks, so every number is real. References: scikit-learn for
AUC/F1, the published Fréchet formula with scipy.linalg.sqrtm, the authors' `prdc` package, and Dice
counted by hand on the evaluators' own masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from sklearn.metrics import f1_score, roc_auc_score

from audit import images, rundir
from audit.cases import load_manifest
from audit.config import ConfigError, EvaluatorsSection, MetricsSection, dump_toml, load_config, parse_config
from audit.evaluators.plan import LoadOptions, Unavailable
from audit.evaluators.suite import load_backend, mask_to_frame, resolve_evaluators
from audit.run_plan import RunError, RunOptions
from audit.runner import run_study

N_CASES = 10


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    from audit.demo.cohort import build_cohort

    return build_cohort(
        n_cases=N_CASES, size=256, seed=5, root=tmp_path_factory.mktemp("cohort"), progress=False
    )


def study(
    tmp_path: Path,
    manifest: Path,
    *,
    models: str = "",
    metrics: str = "",
    evaluators: str = "",
    out: str = "run",
    cache: Path | None = None,
    features: str = "demo",
) -> Path:
    cache_line = f'cache_dir = "{cache}"\n' if cache else ""
    text = f"""
[study]
name = "t"
cases = "{manifest}"
output = "{tmp_path / out}"
seed = 3

[[models]]
name = "real"
kind = "real"

[[models]]
name = "blur"
kind = "degrade"
degradation = "blur"
level = 2.0
{models}
[metrics]
pixel = ["psnr"]
bootstrap_resamples = 200
clinical = ["pathology_auc", "pathology_f1", "dice"]
distribution = ["fid", "fxd", "kid", "prdc"]
kid_subsets = 10
{metrics}
[evaluators]
classifier = "demo"
segmenter = "demo"
features = "{features}"
batch_size = 4
{cache_line}{evaluators}
"""
    path = tmp_path / f"{out}.toml"
    path.write_text(text)
    return path


def frechet_reference(a: np.ndarray, b: np.ndarray) -> float:
    """The published FID formula, d² = |μ1-μ2|² + Tr(Σ1 + Σ2 - 2 sqrtm(Σ1 Σ2))."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(covmean)))


@pytest.fixture(scope="module")
def finished(small_demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = study(tmp, small_demo, metrics='group_by = ["labels"]', cache=tmp / "cache")
    run_study(load_config(cfg), RunOptions(progress=False))
    return tmp / "run", small_demo


def _summary(run: Path) -> pd.DataFrame:
    frame = pd.read_csv(run / rundir.SUMMARY, dtype={"group": str, "evaluator": str})
    return frame.fillna({"group": "", "evaluator": ""})


def _outputs(role: str, paths: list[str]) -> list[dict]:
    plan = resolve_evaluators(
        MetricsSection(clinical=("pathology_auc", "dice"), distribution=("fid",)),
        EvaluatorsSection(classifier="demo", segmenter="demo", features="demo"),
    )[role]
    backend = load_backend(plan, LoadOptions("cpu", "fp32", batch_size=1))
    return backend.compute([images.read_image(p).pixels for p in paths])


def test_pathology_metrics_match_scikit_learn(finished):
    run, manifest = finished
    cases = load_manifest(manifest).frame
    samples = pd.read_parquet(run / rundir.SAMPLES)
    blur = samples[samples.model == "blur"].set_index("case_id").loc[cases.case_id]
    probs = np.array([o["probs"][0] for o in _outputs("classifier", list(blur.path))])
    y = (cases.labels == "Nodule").to_numpy()
    s = _summary(run)
    row = s[(s.model == "blur") & (s.metric == "pathology_auc") & (s.group == "")].iloc[0]
    assert row.value == pytest.approx(roc_auc_score(y, probs), abs=1e-12)
    assert row.evaluator == "demo-nodule-classifier" and row.n == N_CASES
    assert row.ci_low <= row.value <= row.ci_high
    f1 = s[(s.model == "blur") & (s.metric == "pathology_f1:Nodule") & (s.group == "")].iloc[0]
    assert f1.value == pytest.approx(f1_score(y, probs >= 0.5), abs=1e-12)
    # The real row is scored too: the upper bound of Table I.
    real = np.array([o["probs"][0] for o in _outputs("classifier", list(cases.image))])
    r = s[(s.model == "real") & (s.metric == "pathology_auc") & (s.group == "")].iloc[0]
    assert r.value == pytest.approx(roc_auc_score(y, real), abs=1e-12)
    info = json.loads((run / rundir.RUN_JSON).read_text())["evaluation"]
    assert "sigmoid" in info["pathology"]["threshold_policy"]
    assert info["metric_evaluators"]["fid"] == "demo-anatomy-segmenter"  # its encoder features
    assert info["unavailable"] == {}


def test_dice_rows_match_hand_counts(finished):
    run, manifest = finished
    cases = load_manifest(manifest).frame.set_index("case_id")
    samples = pd.read_parquet(run / rundir.SAMPLES)
    blur = samples[samples.model == "blur"].iloc[:3]
    refs = list(cases.loc[blur.case_id, "image"])
    gen = _outputs("segmenter", list(blur.path))
    ref = _outputs("segmenter", refs)
    per = pd.read_parquet(run / rundir.PER_SAMPLE)
    per = per[per.model == "blur"].set_index(["case_id", "metric"])["value"]
    for k, cid in enumerate(blur.case_id):
        mask = mask_to_frame(images.read_mask(cases.loc[cid, "anatomy_mask"]), 128)
        found = []
        for s, name in enumerate(("lungs", "heart", "aorta")):
            a, b, m = gen[k]["masks"][s], ref[k]["masks"][s], mask[s]
            want = 2 * np.sum(a & b) / (a.sum() + b.sum())
            assert per[(cid, f"dice_{name}")] == pytest.approx(want, abs=1e-12)
            want_mask = 2 * np.sum(a & m) / (a.sum() + m.sum())
            assert per[(cid, f"dice_mask_{name}")] == pytest.approx(want_mask, abs=1e-12)
            found.append(want)
        assert per[(cid, "dice_mean")] == pytest.approx(np.mean(found), abs=1e-12)
    # real is not compared with itself, but against its input masks it is: the segmenter's accuracy.
    real = pd.read_parquet(run / rundir.PER_SAMPLE).query("model == 'real'")
    assert set(real.metric) == {"dice_mask_lungs", "dice_mask_heart", "dice_mask_aorta", "dice_mask_mean"}


def test_feature_distances_match_published_formula_and_prdc_package(finished):
    import prdc

    run, manifest = finished
    cases = load_manifest(manifest).frame
    samples = pd.read_parquet(run / rundir.SAMPLES)
    blur = samples[samples.model == "blur"].set_index("case_id").loc[cases.case_id]
    s = _summary(run).set_index(["model", "metric", "group"])
    real_f = np.stack([o["features"] for o in _outputs("features", list(cases.image))]).astype(np.float64)
    gen_f = np.stack([o["features"] for o in _outputs("features", list(blur.path))]).astype(np.float64)
    assert s.loc[("blur", "fid", ""), "value"] == pytest.approx(frechet_reference(real_f, gen_f), rel=1e-6)
    real_c = np.stack([o["features"] for o in _outputs("classifier", list(cases.image))]).astype(np.float64)
    gen_c = np.stack([o["features"] for o in _outputs("classifier", list(blur.path))]).astype(np.float64)
    assert s.loc[("blur", "fxd", ""), "value"] == pytest.approx(frechet_reference(real_c, gen_c), rel=1e-6)
    ref = prdc.compute_prdc(real_features=real_c, fake_features=gen_c, nearest_k=5)
    for name in ("precision", "recall", "density", "coverage"):
        assert s.loc[("blur", name, ""), "value"] == pytest.approx(ref[name], abs=1e-12), name
    # FID per group (the canine-hip paper's FID per class) uses only that group's cases.
    nodule = (cases.labels == "Nodule").to_numpy()
    want = frechet_reference(real_f[nodule], gen_f[nodule])
    # 5 samples in 256-d: both covariances are singular and sqrtm itself is only good to ~1e-6 there.
    assert s.loc[("blur", "fid", "labels=Nodule"), "value"] == pytest.approx(want, rel=1e-5)
    assert s.loc[("blur", "fid", "labels=Nodule"), "n"] == nodule.sum()
    info = json.loads((run / rundir.RUN_JSON).read_text())["evaluation"]
    fid = info["feature_metrics"]["blur"]["all cases"]["fid"]
    assert fid.pop("ci").startswith("bias-corrected percentile bootstrap over cases, 200 replicates")
    assert fid == {
        "n_real": N_CASES,
        "n_gen": N_CASES,
        "dim": 256,
        "rank_deficient": True,
        "ci_replicates": 200,
    }
    assert info["feature_metrics"]["blur"]["all cases"]["kid"]["clamped"] is True
    # Real vs itself is degenerate for every feature distance: no rows.
    assert not any(m in ("fid", "fxd", "kid", "precision") for m in s.loc["real"].index.get_level_values(0))


def test_group_rows_for_per_sample_metrics(finished):
    run, manifest = finished
    cases = load_manifest(manifest).frame
    per = pd.read_parquet(run / rundir.PER_SAMPLE).query("model == 'blur' and metric == 'psnr'")
    nodule = set(cases.case_id[cases.labels == "Nodule"])
    s = _summary(run).set_index(["model", "metric", "group"])
    want = per[per.case_id.isin(nodule)].value.mean()
    assert s.loc[("blur", "psnr", "labels=Nodule"), "value"] == pytest.approx(want, rel=1e-12)
    # AUC within a one-label group has a single label value: skipped and listed, not invented.
    assert ("blur", "pathology_auc:Nodule", "labels=Nodule") not in s.index
    skipped = json.loads((run / rundir.RUN_JSON).read_text())["evaluation"]["pathology"]["skipped"]
    assert "all" in skipped["blur"]["labels=Nodule"]["pathology_auc"]["Nodule"]


def test_rerun_and_new_output_reuse_the_cache_without_loading_networks(finished, tmp_path, monkeypatch):
    run, manifest = finished
    cache = run.parent / "cache"

    def refuse(*args, **kwargs):
        raise AssertionError("an evaluator network was loaded although every output is cached")

    monkeypatch.setattr("audit.evaluation.load_backend", refuse)
    cfg = study(tmp_path, manifest, metrics='group_by = ["labels"]', cache=cache, out="again")
    run_study(load_config(cfg), RunOptions(progress=False))
    a, b = _summary(run), _summary(tmp_path / "again")
    pd.testing.assert_frame_equal(a, b)


def test_adding_a_model_evaluates_only_its_images(finished, tmp_path, monkeypatch):
    import audit.evaluation as ev

    run, manifest = finished
    seen: list[int] = []
    real_load = ev.load_backend

    def counting(*args, **kwargs):
        backend = real_load(*args, **kwargs)
        compute = backend.compute

        def count(imgs):
            seen.append(len(imgs))
            return compute(imgs)

        backend.compute = count
        return backend

    monkeypatch.setattr(ev, "load_backend", counting)
    extra = '\n[[models]]\nname = "noise"\nkind = "degrade"\ndegradation = "noise"\nlevel = 0.05\n'
    cfg = study(
        tmp_path,
        manifest,
        models=extra,
        metrics='group_by = ["labels"]',
        cache=run.parent / "cache",
        out="more",
    )
    run_study(load_config(cfg), RunOptions(progress=False))
    # Two networks (classifier; U-Net giving masks and FID features in one pass), each on the new
    # model's images only.
    assert sum(seen) == 2 * N_CASES


def test_missing_weights_stop_the_run_naming_file_and_fix(small_demo, tmp_path):
    cfg = study(tmp_path, small_demo, features="inception")
    with pytest.raises(RunError) as err:
        run_study(load_config(cfg), RunOptions(progress=False))
    msg = str(err.value)
    assert "fid" in msg and "kid" in msg and "weights-inception-2015-12-05-6726825d.pth" in msg
    assert "xray-audit weights fetch inception-v3-fid" in msg and "--keep-going" in msg
    assert not (tmp_path / "run" / rundir.SUMMARY).exists()  # stopped before any work

    # --keep-going computes the rest and lists what it could not compute.
    run_study(load_config(cfg), RunOptions(progress=False, keep_going=True))
    s = _summary(tmp_path / "run")
    assert "fid" not in set(s.metric) and "fxd" in set(s.metric)
    unavailable = json.loads((tmp_path / "run" / rundir.RUN_JSON).read_text())["evaluation"]["unavailable"]
    assert set(unavailable) == {"fid", "kid"}
    assert "xray-audit weights" in unavailable["fid"]


def test_labels_the_classifier_does_not_know_are_an_error(small_demo, tmp_path):
    frame = pd.read_csv(small_demo, dtype=str, keep_default_na=False)
    frame.loc[0, "labels"] = "Cardiomegaly"
    manifest = small_demo.parent / "bad_labels.csv"
    frame.to_csv(manifest, index=False)
    with pytest.raises(RunError) as err:
        run_study(load_config(study(tmp_path, manifest)), RunOptions(progress=False))
    assert "'Cardiomegaly'" in str(err.value) and "demo-nodule-classifier" in str(err.value)


def test_grey_anatomy_mask_fails_naming_the_case(small_demo, tmp_path):
    frame = pd.read_csv(small_demo, dtype=str, keep_default_na=False)
    grey = tmp_path / "grey.png"
    images.write_png(grey, np.ones((256, 256), dtype=bool), bit_depth=8)
    frame.loc[0, "anatomy_mask"] = str(grey)
    manifest = small_demo.parent / "grey_mask.csv"
    frame.to_csv(manifest, index=False)
    with pytest.raises(RunError) as err:
        run_study(load_config(study(tmp_path, manifest)), RunOptions(progress=False))
    assert frame.case_id[0] in str(err.value) and "RGB" in str(err.value)


def test_resolution_of_evaluators(monkeypatch, tmp_path):
    monkeypatch.setenv("XRAY_AUDIT_HOME", str(tmp_path))
    metrics = MetricsSection(clinical=("pathology_auc", "dice"), distribution=("fid",))
    strict = resolve_evaluators(metrics, EvaluatorsSection())
    assert all(isinstance(v, Unavailable) for v in strict.values())
    assert "xray-audit weights fetch pspnet-chestx-det" in strict["segmenter"].reason
    auto = resolve_evaluators(
        metrics, EvaluatorsSection(classifier="auto", segmenter="auto", features="auto")
    )
    assert {v.source for v in auto.values()} == {"demo"}
    assert all("demo evaluator was used" in v.note for v in auto.values())
    # With verified weights present, auto picks the pretrained network (here a file the user pinned).
    from audit import weights

    src = tmp_path / "src"
    src.mkdir()
    fake = src / weights.MANIFEST["densenet121-res224-nih"].filename
    fake.write_bytes(b"not really a densenet")
    from audit.atomic import sha256_file

    sha = sha256_file(fake)
    weights.import_dir(src, trust=True)
    picked = resolve_evaluators(
        metrics, EvaluatorsSection(classifier="auto", classifier_weights="densenet121-res224-nih")
    )["classifier"]
    assert picked.source == "xrv" and picked.key.weights_sha256 == sha and picked.weights_path.is_file()
    described = picked.describe()
    assert described["pin"] == "user-trust" and "pinned by you on first download" in described["pin_note"]
    demo = auto["classifier"].describe()
    assert demo["pin"] == "demo" and "not comparable to published values" in demo["pin_note"]


def test_config_keys_for_clinical_metrics(tmp_path):
    base = {
        "study": {"name": "x", "cases": "c.csv", "output": "o"},
        "models": [{"name": "real", "kind": "real"}],
    }
    cfg = parse_config(
        {
            **base,
            "metrics": {"clinical": ["dice"], "distribution": ["fid", "prdc"], "group_by": ["site"]},
            "evaluators": {"classifier": "auto", "cache_dir": "cache"},
        },
        source=tmp_path / "s.toml",
    )
    assert cfg.metrics.distribution == ("fid", "prdc") and cfg.evaluators.cache_dir == tmp_path / "cache"
    again = parse_config(__import__("tomllib").loads(dump_toml(cfg)))
    assert again.to_dict() == cfg.to_dict()
    assert parse_config({**base}).evaluators.cache_dir is None
    for bad, needle in (
        ({"metrics": {"distribution": ["precision"]}}, '"prdc"'),
        ({"metrics": {"clinical": ["dice_lungs"]}}, 'list "dice"'),
        ({"evaluators": {"clasifier": "demo"}}, "'clasifier'"),
        ({"evaluators": {"segmenter": "pspnet"}}, "segmenter must be one of 'xrv', 'auto', 'demo'"),
        ({"evaluators": {"device": "gpu"}}, "cuda:N"),
        ({"metrics": {"group_by": ["case_id"]}}, "case_id"),
    ):
        with pytest.raises(ConfigError, match=None) as err:
            parse_config({**base, **bad})
        assert needle in str(err.value), (bad, str(err.value))


@pytest.mark.parametrize("role", ["classifier", "segmenter", "features"])
def test_demo_backends_are_batch_size_independent(small_demo, role):
    cases = load_manifest(small_demo).frame
    pixels = [images.read_image(p).pixels for p in cases.image]
    # 32 distinct images: the references and their mirror images and transposes.
    pool = (
        pixels
        + [p[:, ::-1].copy() for p in pixels]
        + [p.T.copy() for p in pixels]
        + [p[::-1].copy() for p in pixels]
    )
    pool = pool[:32]
    plan = resolve_evaluators(
        MetricsSection(clinical=("pathology_auc", "dice"), distribution=("fid",)),
        EvaluatorsSection(classifier="demo", segmenter="demo", features="demo"),
    )[role]
    one = load_backend(plan, LoadOptions("cpu", "fp32", batch_size=1)).compute(pool)
    many = load_backend(plan, LoadOptions("cpu", "fp32", batch_size=32)).compute(pool)
    for a, b in zip(one, many, strict=True):
        for key in a:
            if a[key].dtype == bool:
                # A mask pixel may flip only where its logit is within float rounding of 0.
                assert np.mean(a[key] != b[key]) < 1e-4
            else:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5)


class _MeanLogit(__import__("torch").nn.Module):
    """A deterministic 'classifier' whose logit is 6·mean − 3: brighter films score higher."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) * 6.0 - 3.0


def test_user_torchscript_classifier_feeds_pathology_metrics(small_demo, tmp_path):
    import torch

    from audit.atomic import sha256_file
    from audit.evaluators.base import InputContract

    ts = tmp_path / "knee_kl.ts"
    torch.jit.save(torch.jit.script(_MeanLogit()), str(ts))
    sha = sha256_file(ts)
    user = (
        f'[evaluators.user_classifier]\npath = "{ts}"\nsha256 = "{sha}"\nlabels = ["Nodule"]\n'
        'size = 64\nvalue_range = [0.0, 1.0]\noutput = "logits"\n'
    )
    cfg = study(tmp_path, small_demo)
    text = cfg.read_text().replace('classifier = "demo"', 'classifier = "user"') + user
    cfg.write_text(text.replace('distribution = ["fid", "fxd", "kid", "prdc"]', 'distribution = ["fid"]'))
    config = load_config(cfg)
    run_study(config, RunOptions(progress=False))
    cases = load_manifest(small_demo).frame
    samples = pd.read_parquet(tmp_path / "run" / rundir.SAMPLES)
    blur = samples[samples.model == "blur"].set_index("case_id").loc[cases.case_id]
    contract = InputContract("user", channels=1, size=64, value_range=(0.0, 1.0))
    x = contract.prepare([images.read_image(p).pixels for p in blur.path])
    probs = torch.sigmoid(_MeanLogit()(x))[:, 0].numpy()
    y = (cases.labels == "Nodule").to_numpy()
    s = _summary(tmp_path / "run").set_index(["model", "metric", "group"])
    assert s.loc[("blur", "pathology_auc", ""), "value"] == pytest.approx(roc_auc_score(y, probs), abs=1e-12)
    assert s.loc[("blur", "pathology_auc", ""), "evaluator"] == "user-knee_kl"
    # A changed file is never loaded.
    ts.write_bytes(ts.read_bytes() + b"\0")
    with pytest.raises(RunError, match="sha256"):
        run_study(config, RunOptions(progress=False))


def test_user_classifier_config_is_checked(tmp_path):
    base = {
        "study": {"name": "x", "cases": "c.csv", "output": "o"},
        "models": [{"name": "real", "kind": "real"}],
    }
    with pytest.raises(ConfigError, match="go together"):
        parse_config({**base, "evaluators": {"classifier": "user"}})
    table = {
        "path": "m.pt",
        "sha256": "0" * 64,
        "labels": ["A"],
        "format": "state_dict",
        "architecture": "vgg",
    }
    with pytest.raises(ConfigError, match="torchvision-resnet18"):
        parse_config({**base, "evaluators": {"classifier": "user", "user_classifier": table}})
    table["architecture"] = "torchvision-resnet18"
    cfg = parse_config(
        {**base, "evaluators": {"classifier": "user", "user_classifier": table}}, tmp_path / "s.toml"
    )
    assert cfg.evaluators.user_classifier.path == tmp_path / "m.pt"
    again = parse_config(__import__("tomllib").loads(dump_toml(cfg)))
    assert again.to_dict() == cfg.to_dict()


def test_cache_keys_use_the_networks_own_input_contracts():
    from audit.evaluators.base import InputContract
    from audit.evaluators.classifier import XRV_CLASSIFIER_CONTRACT
    from audit.evaluators.inception import INCEPTION_CONTRACT
    from audit.evaluators.plan import PIPELINE_VERSION, preprocessing_key
    from audit.evaluators.registry import EVALUATORS
    from audit.evaluators.segmenter import PSPNET_CONTRACT

    default = InputContract("x", channels=1, size=8, value_range=(0.0, 1.0))
    assert default.preprocessing_version == PIPELINE_VERSION
    for name, real in (
        ("xrv-densenet121", XRV_CLASSIFIER_CONTRACT),
        ("xrv-pspnet", PSPNET_CONTRACT),
        ("inception-v3", INCEPTION_CONTRACT),
    ):
        assert preprocessing_key(EVALUATORS[name].input_contract) == preprocessing_key(real)


def test_warm_run_without_pixel_metrics_never_imports_torch(finished, tmp_path):
    """With every evaluator output cached, a run (even into a new output dir) needs no network."""
    import subprocess
    import sys

    run, manifest = finished
    cfg = study(tmp_path, manifest, metrics='group_by = ["labels"]', cache=run.parent / "cache", out="warm")
    cfg.write_text(cfg.read_text().replace('pixel = ["psnr"]', "pixel = []"))
    code = (
        "import sys\nfrom audit.cli import main\n"
        f"assert main(['-q', 'run', {str(cfg)!r}, '--no-report']) == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr
    a = _summary(run).query("metric != 'psnr'").reset_index(drop=True).drop(columns="unit")
    pd.testing.assert_frame_equal(a, _summary(tmp_path / "warm").drop(columns="unit"))
