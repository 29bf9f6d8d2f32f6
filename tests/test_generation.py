"""Generating model kinds end to end with tiny seeded diffusers pipelines built in the tests.

Covers every diffusers kind and the ``python`` kind: pairing and parameters in samples.parquet,
determinism across batch sizes, resume after an interruption, failure recording, offline errors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit import rundir
from audit.config import ConfigError, load_config
from audit.images import read_image, write_png
from audit.run_plan import RunError, RunOptions
from audit.runner import run_study
from tests.conftest import make_cohort
from tests.tiny_pipelines import TINY_PX, save_controlnet, save_sd

FAST = RunOptions(progress=False, chunk_size=4)
N_CASES = 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-pipelines")
    return {
        "sd": save_sd(root / "sd"),
        "inpaint": save_sd(root / "inpaint", inpaint=True),
        "cn": save_controlnet(root / "cn"),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """Five cases with prompts, grey anatomy masks, an RGB structure mask and pathology masks."""
    root = tmp_path_factory.mktemp("gen-cohort")
    manifest = make_cohort(root, n=N_CASES, size=64)
    frame = pd.read_csv(manifest, dtype=str)
    rgb, path_masks = [], []
    for i, cid in enumerate(frame.case_id):
        m = np.zeros((64, 64, 3), dtype=bool)
        m[10:50, 5:28, 0] = m[10:50, 36:60, 0] = True  # lungs
        m[30:55, 25:40, 1] = True  # heart
        m[5:30, 30:34, 2] = True  # aorta
        write_png(root / "mask" / f"{cid}-rgb.png", m.astype(np.uint8) * 255)
        p = np.zeros((64, 64), dtype=bool)
        p[20 + i : 30 + i, 15:25] = True
        write_png(root / "mask" / f"{cid}-path.png", p)
        rgb.append(f"mask/{cid}-rgb.png")
        path_masks.append(f"mask/{cid}-path.png")
    frame["control"] = rgb
    frame["pathology_mask"] = path_masks
    frame.to_csv(manifest, index=False)
    return manifest


def study(tmp: Path, manifest: Path, models: str, samples: int = 1, seed: int = 0) -> Path:
    text = f"""
[study]
name = "gen"
cases = "{manifest}"
output = "{tmp / "run"}"
seed = {seed}
samples_per_case = {samples}
{models}
[metrics]
pixel = ["mae"]
resize = "to_reference"
bootstrap_resamples = 100
"""
    path = tmp / "study.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def model(name: str, kind: str, path: Path | str, batch_size: int = 2, **keys: object) -> str:
    lines = ["", "[[models]]", f'name = "{name}"', f'kind = "{kind}"', f'path = "{path}"']
    keys = {"batch_size": batch_size, "steps": 2, "height": TINY_PX, "width": TINY_PX, **keys}
    for k, v in keys.items():
        lines.append(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}")
    return "\n".join(lines) + "\n"


def run(tmp: Path, manifest: Path, models: str, **kw) -> pd.DataFrame:
    run_study(load_config(study(tmp, manifest, models, **kw)), FAST)
    return pd.read_parquet(tmp / "run" / rundir.SAMPLES)


def pixels(samples: pd.DataFrame) -> dict[tuple[str, str, int], np.ndarray]:
    return {(r.model, r.case_id, r.sample): read_image(r.path).pixels for r in samples.itertuples()}


def test_text2img_pairs_records_parameters_and_is_batch_independent(tmp_path, cases, tiny):
    a = run(tmp_path / "a", cases, model("sd", "diffusers-text2img", tiny["sd"], batch_size=3), samples=2)
    b = run(tmp_path / "b", cases, model("sd", "diffusers-text2img", tiny["sd"], batch_size=1), samples=2)
    assert len(a) == 2 * N_CASES
    assert sorted(zip(a.case_id, a["sample"], strict=True)) == sorted(
        (f"case-{i:03d}", s) for i in range(N_CASES) for s in range(2)
    )
    row = a.iloc[0]
    assert (row["steps"], row["guidance"], row["dtype"], row["scheduler"]) == (
        2,
        7.5,
        "fp32",
        "DDIMScheduler",
    )
    assert row.weights.startswith("sha256:") and len(row.weights) == 7 + 64
    assert math.isnan(row.strength)
    assert row.prompt == f"chest x-ray {int(row.case_id[-3:])}"  # the case's own prompt
    assert set(rundir.GENERATION_COLUMNS) <= set(a.columns)
    pa_, pb = pixels(a), pixels(b)
    assert pa_.keys() == pb.keys()
    for key in pa_:
        assert pa_[key].shape == (TINY_PX, TINY_PX)
        # Batch of 3 vs batch of 1: float32 rounding may move a value across an 8-bit step, never more.
        assert np.abs(pa_[key] - pb[key]).max() <= 1 / 255 + 1e-7, key
    # Every sample has its own seed, so samples of one case differ.
    assert not np.array_equal(pa_[("sd", "case-000", 0)], pa_[("sd", "case-000", 1)])
    info = json.loads((tmp_path / "a" / "run" / rundir.RUN_JSON).read_text())["generation"]["sd"]
    assert info["samples"] == 2 * N_CASES and info["failed"] == 0 and info["images_per_s"] > 0
    assert info["this_process"]["device"] == "cpu" and info["this_process"]["peak_gpu_memory_mb"] is None


def test_controlnet_img2img_and_inpaint_generate_from_case_conditions(tmp_path, cases, tiny):
    models = (
        model("cn", "diffusers-controlnet", tiny["sd"], controlnet=str(tiny["cn"]), condition="control")
        + model(
            "cn2",
            "diffusers-controlnet",
            tiny["sd"],
            controlnet=[str(tiny["cn"]), str(tiny["cn"])],
            condition=["anatomy_mask", "control"],
            encoding=["binary", "structures"],
            conditioning_scale=[1.0, 0.5],
        )
        + model(
            "sdedit",
            "diffusers-img2img",
            tiny["sd"],
            condition="anatomy_mask",
            encoding="binary",
            strength=0.5,
        )
        + model("infuse", "diffusers-inpaint", tiny["inpaint"], strength=0.9)
    )
    samples = run(tmp_path, cases, models)
    assert samples.groupby("model").size().to_dict() == {
        m: N_CASES for m in ("cn", "cn2", "sdedit", "infuse")
    }
    assert samples.loc[samples.model == "sdedit", "strength"].eq(0.5).all()
    assert samples.loc[samples.model == "infuse", "strength"].eq(0.9).all()
    # The inpaint prompt is the case's labels.
    infuse = samples[samples.model == "infuse"].set_index("case_id")
    assert infuse.loc["case-001", "prompt"] == "Nodule" and infuse.loc["case-000", "prompt"] == "No Finding"
    px = pixels(samples)
    for m in ("cn", "cn2", "sdedit", "infuse"):
        assert px[(m, "case-000", 0)].shape == (TINY_PX, TINY_PX)
    # The condition matters: another case's mask under this case's seed gives another image.
    assert not np.array_equal(px[("cn", "case-000", 0)], px[("cn2", "case-000", 0)])


def test_structures_encoding_rejects_a_grey_mask_per_sample(tmp_path, cases, tiny):
    models = model(
        "cn", "diffusers-controlnet", tiny["sd"], controlnet=str(tiny["cn"]), condition="anatomy_mask"
    )
    with pytest.raises(RunError, match=r'needs an RGB mask .* use encoding = "binary"'):
        run(tmp_path, cases, models)


def test_missing_condition_column_is_listed_before_any_work(tmp_path, cases, tiny):
    frame = pd.read_csv(cases, dtype=str)
    frame.loc[1, "pathology_mask"] = ""
    manifest = cases.parent / "holes.csv"
    frame.to_csv(manifest, index=False)
    models = model("infuse", "diffusers-inpaint", tiny["inpaint"])
    with pytest.raises(RunError, match=r"infuse / case-001 / sample 0: column 'pathology_mask'"):
        run(tmp_path / "strict", manifest, models)
    assert not (tmp_path / "strict" / "run" / "samples").exists()
    run_study(
        load_config(study(tmp_path / "kg", manifest, models)),
        RunOptions(progress=False, keep_going=True),
    )
    failures = pd.read_csv(tmp_path / "kg" / "run" / rundir.FAILURES)
    assert failures[["case_id", "stage"]].values.tolist() == [["case-001", "generate"]]


def test_interrupted_generation_resumes_without_redoing_finished_batches(tmp_path, cases, tiny, monkeypatch):
    from audit.models.diffusion import DiffusersAdapter

    models = model("sd", "diffusers-text2img", tiny["sd"], batch_size=2)
    clean = run(tmp_path / "clean", cases, models)

    calls: list[list[str]] = []
    original = DiffusersAdapter._generate

    interrupt = [True]

    def flaky(self, requests, reference):
        calls.append([r.case.case_id for r in requests])
        if len(calls) == 2 and interrupt and interrupt.pop():
            raise KeyboardInterrupt  # Ctrl-C in the middle of the first chunk's second batch
        return original(self, requests, reference)

    monkeypatch.setattr(DiffusersAdapter, "_generate", flaky)
    cfg = load_config(study(tmp_path / "resumed", cases, models))
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, FAST)
    assert calls == [["case-000", "case-001"], ["case-002", "case-003"]]
    calls.clear()
    run_study(cfg, FAST)
    # The finished batch was journaled: only the rest is generated.
    assert calls == [["case-002", "case-003"], ["case-004"]]
    resumed = pd.read_parquet(tmp_path / "resumed" / "run" / rundir.SAMPLES)
    cols = ["case_id", "sample", "seed", "sha256", "prompt", "weights"]
    pd.testing.assert_frame_equal(clean[cols], resumed[cols])
    assert not list((tmp_path / "resumed" / "run" / "parts").rglob("*.journal"))


def test_tampered_sample_is_regenerated_on_resume(tmp_path, cases, tiny, monkeypatch):
    from audit.models.diffusion import DiffusersAdapter

    models = model("sd", "diffusers-text2img", tiny["sd"], batch_size=2)
    calls: list[list[str]] = []
    original = DiffusersAdapter._generate

    interrupt = [True]

    def flaky(self, requests, reference):
        calls.append([r.case.case_id for r in requests])
        if len(calls) == 2 and interrupt and interrupt.pop():
            raise KeyboardInterrupt
        return original(self, requests, reference)

    monkeypatch.setattr(DiffusersAdapter, "_generate", flaky)
    cfg = load_config(study(tmp_path, cases, models))
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, FAST)
    # A finished sample's file is overwritten (or half-written by another tool): it no longer
    # matches its recorded hash, so it is generated again rather than trusted.
    png = tmp_path / "run" / "samples" / "sd" / "case-000_s0.png"
    png.write_bytes(png.read_bytes()[:100])
    calls.clear()
    run_study(cfg, FAST)
    assert calls[0] == ["case-000", "case-002"]
    assert read_image(png).pixels.shape == (TINY_PX, TINY_PX)


def test_offline_hub_id_names_the_model_and_the_fix(tmp_path, cases, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    models = model("sd", "diffusers-text2img", "someorg/no-such-cxr-model")
    with pytest.raises(
        RunError,
        match=r"(?s)model sd: model someorg/no-such-cxr-model is not a local directory.*huggingface-cli download someorg/no-such-cxr-model",
    ):
        run(tmp_path, cases, models)


def test_missing_local_model_directory_stops_before_any_work(tmp_path, cases):
    models = model("sd", "diffusers-text2img", tmp_path / "nowhere")
    with pytest.raises(RunError, match=r"model sd: model directory .*nowhere does not exist"):
        run(tmp_path, cases, models)


def test_fp16_on_cpu_is_a_clear_error(tmp_path, cases, tiny):
    models = model("sd", "diffusers-text2img", tiny["sd"], dtype="fp16", device="cpu")
    with pytest.raises(RunError, match=r'dtype = "fp16" on the CPU'):
        run(tmp_path, cases, models)


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"height": 30}, "multiple of 8"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"stength": 0.5}, "unknown key"),
        ({"prompt": "{prompt"}, "malformed"),
    ],
)
def test_bad_diffusers_config_is_rejected(tmp_path, cases, keys, message):
    path = study(tmp_path, cases, model("sd", "diffusers-img2img", "org/model", **keys))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_condition_must_be_a_path_column(tmp_path, cases):
    path = study(tmp_path, cases, model("x", "diffusers-img2img", "org/m", condition="prompt"))
    with pytest.raises(ConfigError, match="condition 'prompt' is not an image column"):
        load_config(path)


def test_controlnet_needs_one_condition_per_net(tmp_path, cases):
    path = study(
        tmp_path,
        cases,
        model("cn", "diffusers-controlnet", "org/m", controlnet=["a/b", "c/d"], condition="control"),
    )
    with pytest.raises(ConfigError, match="2 controlnet"):
        load_config(path)


# ------------------------------------------------------------------------------------------- python kind

CALLS: list[int] = []


def noise_generator(cases, generators, *, device, dtype, level: float = 0.5):
    """A test generator: per-sample noise from the sample's own generator (batch independent)."""
    import torch

    CALLS.append(len(cases))
    out = []
    for case, gen in zip(cases, generators, strict=True):
        ref = read_image(case.image).pixels
        noise = torch.rand(ref.shape, generator=gen, device=device, dtype=torch.float32).numpy()
        out.append(np.clip(ref * (1 - level) + noise * level, 0, 1))
    return out


def broken_generator(cases, generators, *, device, dtype):
    out = []
    for case in cases:
        i = int(case.case_id[-3:])
        if i == 0:
            out.append(np.full((64, 64), np.nan, dtype=np.float32))
        elif i == 1:
            out.append(np.zeros((64, 64), dtype=np.float32))
        elif i == 2:
            out.append(np.full((32, 64), 0.5, dtype=np.float32) + np.eye(32, 64, dtype=np.float32) * 0.1)
        else:
            out.append(read_image(case.image).pixels)
    return out


def python_model(name: str, target: str, batch_size: int = 2, **keys) -> str:
    lines = ["", "[[models]]", f'name = "{name}"', 'kind = "python"', f'callable = "{target}"']
    lines.append(f"batch_size = {batch_size}")
    for k, v in keys.items():
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


def test_python_kind_is_seeded_per_sample_and_batch_independent(tmp_path, cases):
    CALLS.clear()
    a = run(
        tmp_path / "a",
        cases,
        python_model("mine", "tests.test_generation:noise_generator", 3, options="{ level = 0.25 }"),
        samples=2,
    )
    assert CALLS == [3, 3, 2, 2]  # chunks of 4 cases x 2 samples, in batches of 3
    b = run(
        tmp_path / "b",
        cases,
        python_model("mine", "tests.test_generation:noise_generator", 1, options="{ level = 0.25 }"),
        samples=2,
    )
    pa_, pb = pixels(a), pixels(b)
    for key in pa_:
        np.testing.assert_array_equal(pa_[key], pb[key])
    assert a.weights.eq("python:tests.test_generation:noise_generator").all()


def test_python_kind_option_typo_is_an_error_before_any_work(tmp_path, cases):
    models = python_model("mine", "tests.test_generation:noise_generator", options="{ levle = 0.25 }")
    with pytest.raises(RunError, match=r"(?s)model mine: callable .*levle.*extra parameters are \['level'\]"):
        run(tmp_path, cases, models)
    with pytest.raises(
        RunError, match=r"cannot import module 'no_such_pkg.gen' \(No module named 'no_such_pkg'\)"
    ):
        run(tmp_path / "b", cases, python_model("mine", "no_such_pkg.gen:make"))


def test_nan_constant_and_wrong_size_outputs_are_failures_not_scores(tmp_path, cases):
    models = python_model("broken", "tests.test_generation:broken_generator", height=64, width=64)
    # Recorded in failures.csv even without --keep-going: the model ran, these samples did not work.
    result = run_study(load_config(study(tmp_path / "kg", cases, models)), FAST)
    assert (result.n_samples, result.n_failures) == (2, 3)
    failures = pd.read_csv(tmp_path / "kg" / "run" / rundir.FAILURES).set_index("case_id")
    assert failures.loc["case-000", "error"].startswith("output contains NaN")
    assert failures.loc["case-001", "error"].startswith("output is one value")
    assert failures.loc["case-002", "error"].startswith("output is 64x32 px")
    per_sample = pd.read_parquet(tmp_path / "kg" / "run" / rundir.PER_SAMPLE)
    assert set(per_sample.case_id) == {"case-003", "case-004"}


def test_sweep_adds_one_model_row_per_axis_value(tmp_path, cases, tiny):
    from audit.perturb import axis_label

    synonyms = tmp_path / "syn.csv"
    synonyms.write_text("term,synonym\nchest x-ray,thorax radiograph\n")
    models = model(
        "cn",
        "diffusers-controlnet",
        tiny["sd"],
        controlnet=str(tiny["cn"]),
        condition="anatomy_mask",
        encoding="binary",
        batch_size=5,
    )
    models += f'sweep = {{ blur = [2.0], dropout = [1.0], synonyms = ["{synonyms}"], fixed_prompt = ["a chest x-ray"] }}\n'
    samples = run(tmp_path, cases, models)
    fixed = f"cn[{axis_label('fixed_prompt', 'a chest x-ray')}]"
    names = {"cn", "cn[blur=2]", "cn[dropout=1]", "cn[synonyms=syn]", fixed}
    assert set(samples.model) == names
    by = {m: g.set_index("case_id") for m, g in samples.groupby("model")}
    assert by["cn[blur=2]"]["perturbation"].eq("blur=2").all()
    assert by["cn"]["perturbation"].isna().all()
    assert by[fixed]["prompt"].eq("a chest x-ray").all()
    assert by["cn[synonyms=syn]"].loc["case-003", "prompt"] == "thorax radiograph 3"
    # Every row starts from the base model's noise, so only the perturbation differs; the dropout
    # row's condition is empty, so its image must differ from the base row's.
    for name in names:
        assert by[name]["seed"].equals(by["cn"]["seed"]), name
    px = pixels(samples)
    assert not np.array_equal(px[("cn", "case-000", 0)], px[("cn[dropout=1]", "case-000", 0)])
    # The run directory's config lists the expanded rows, and parses back to the same models.
    again = load_config(tmp_path / "run" / "config.toml")
    assert {m.name for m in again.models} == names


KIND_MODELS = {
    "diffusers-text2img": lambda t: model("m", "diffusers-text2img", t["sd"], batch_size=3),
    "diffusers-controlnet": lambda t: model(
        "m", "diffusers-controlnet", t["sd"], batch_size=3, controlnet=str(t["cn"]), condition="control"
    ),
    "diffusers-img2img": lambda t: model(
        "m", "diffusers-img2img", t["sd"], batch_size=3, condition="anatomy_mask", encoding="binary"
    ),
    "diffusers-inpaint": lambda t: model("m", "diffusers-inpaint", t["inpaint"], batch_size=3),
}


@pytest.mark.parametrize("kind", sorted(KIND_MODELS))
def test_every_kind_is_batch_and_shard_independent(tmp_path, cases, tiny, kind):
    import dataclasses

    from audit.runner import merge_runs

    models = KIND_MODELS[kind](tiny)
    whole = run(tmp_path / "whole", cases, models)  # batches of 3 in chunks of 4 cases
    # Batches of 1, chunks of 2, two shards merged: every sample must come out the same.
    cfg = load_config(study(tmp_path / "sharded", cases, models.replace("batch_size = 3", "batch_size = 1")))
    opts = dataclasses.replace(FAST, chunk_size=2)
    for i in range(2):
        run_study(cfg, dataclasses.replace(opts, shard=(i, 2)))
    merge_runs([cfg.study.output], opts)
    sharded = pd.read_parquet(cfg.study.output / rundir.SAMPLES)
    pw, ps = pixels(whole), pixels(sharded)
    assert pw.keys() == ps.keys() and len(pw) == N_CASES
    for key in pw:
        # float32 rounding of a batched matmul may move a value across one 8-bit step, never more.
        assert np.abs(pw[key] - ps[key]).max() <= 1 / 255 + 1e-7, key
    assert whole["seed"].tolist() == sharded["seed"].tolist()


def test_nan_pipeline_output_is_recorded_as_a_failure(tmp_path, cases, tiny):
    import shutil

    import torch
    from diffusers import AutoencoderKL

    broken = tmp_path / "sd-nan"
    shutil.copytree(tiny["sd"], broken)
    vae = AutoencoderKL.from_pretrained(broken / "vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(float("nan"))
    vae.save_pretrained(broken / "vae", safe_serialization=True)
    result = run_study(load_config(study(tmp_path, cases, model("nan", "diffusers-text2img", broken))), FAST)
    assert (result.n_samples, result.n_failures) == (0, N_CASES)
    failures = pd.read_csv(tmp_path / "run" / rundir.FAILURES)
    assert failures["error"].str.startswith("output contains NaN").all()
    assert (
        not (tmp_path / "run" / rundir.PER_SAMPLE).exists()
        or pd.read_parquet(tmp_path / "run" / rundir.PER_SAMPLE).query("model == 'nan'").empty
    )


@pytest.mark.slow
@pytest.mark.gpu
def test_real_checkpoint_generates_on_gpu(tmp_path, cases):
    """Set XRAY_AUDIT_SD_PATH to a local Stable Diffusion pipeline directory (e.g. an SD 1.5 fine-tune)."""
    import os

    import torch

    path = os.environ.get("XRAY_AUDIT_SD_PATH")
    if not path or not torch.cuda.is_available():
        pytest.skip("needs XRAY_AUDIT_SD_PATH and a CUDA device")
    models = model(
        "real-sd", "diffusers-text2img", path, batch_size=4, steps=20, height=512, width=512, dtype="fp16"
    )
    samples = run(tmp_path, cases, models)
    assert samples["error"].isna().all() if "error" in samples else True
    info = json.loads((tmp_path / "run" / rundir.RUN_JSON).read_text())["generation"]["real-sd"]
    assert info["this_process"]["peak_gpu_memory_mb"] > 0
