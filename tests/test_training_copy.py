"""The `training-copy` sanity baseline: a training image chosen by the sample's seed, plus noise.

Every expected sample is recomputed here from the documented recipe, independently of the adapter:
the seed from sha256 of (study seed, model, case_id, sample), the training row and the noise from
``np.random.default_rng(seed)``, the training PNG decoded with Pillow, a resize with Pillow's
BILINEAR (what torch's antialiased bilinear reproduces), and 16-bit quantisation by ``rint``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit import rundir
from audit.config import ConfigError, load_config
from audit.models.training_copy import TrainingCopySpec
from audit.run_plan import RunOptions
from audit.runner import run_study
from tests.conftest import make_cohort

FAST = RunOptions(progress=False, chunk_size=2)
N_TRAIN = 6


def _seed(study_seed: int, model: str, case_id: str, sample: int) -> int:
    # The per-sample seed as the runner documents it (audit.models.base.derive_seed), spelled out.
    key = f"{study_seed}\x1f{model}\x1f{case_id}\x1f{sample}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


def _study(tmp: Path, cases: Path, training: str, models: str, seed: int = 0, samples: int = 2) -> Path:
    text = f"""
[study]
name = "t"
cases = "{cases}"
output = "{tmp / "run"}"
seed = {seed}
samples_per_case = {samples}

[[models]]
name = "real"
kind = "real"

[[models]]
name = "copy-0.02"
kind = "training-copy"
training_cases = "{training}"
{models}
[metrics]
pixel = ["mse"]
bootstrap_resamples = 100
"""
    path = tmp / "study.toml"
    path.write_text(text)
    return path


def _copy(name: str, training: str, level: float) -> str:
    return f'\n[[models]]\nname = "{name}"\nkind = "training-copy"\ntraining_cases = "{training}"\nlevel = {level}\n'


def _expected(train: pd.DataFrame, root: Path, seed: int, level: float, shape: tuple[int, int]):
    """(training case id, uint16 image) for one sample, from the documented recipe."""
    rng = np.random.default_rng(seed)
    row = int(rng.integers(len(train)))
    stored = _png(root / train.image.iloc[row])
    if stored.shape != shape:
        # Pillow's BILINEAR on a float image filters with the scale factor's support, as torch's
        # antialiased bilinear does; within float rounding of each other.
        img = Image.fromarray((stored / 65535.0).astype(np.float32), mode="F")
        pixels = np.asarray(img.resize(shape[::-1], Image.Resampling.BILINEAR), dtype=np.float64)
    else:
        pixels = stored / 65535.0
    noisy = np.clip(pixels + rng.normal(0.0, level, size=shape), 0.0, 1.0)
    return str(train.case_id.iloc[row]), np.rint(noisy * 65535.0).astype(np.int64)


@pytest.fixture
def cohorts(tmp_path) -> tuple[Path, Path]:
    """Held-out cases (seed 0) and a different training set (seed 1), both 16-bit."""
    held_out = make_cohort(tmp_path / "held-out", n=3, size=64, seed=0)
    training = make_cohort(tmp_path / "training", n=N_TRAIN, size=64, seed=1)
    return held_out, training


def test_samples_are_the_seeded_training_image_plus_noise(tmp_path, cohorts):
    held_out, training = cohorts
    cfg = load_config(_study(tmp_path, held_out, str(training), _copy("copy-0", str(training), 0.0)))
    run_study(cfg, FAST)
    samples = pd.read_parquet(tmp_path / "run" / rundir.SAMPLES)
    train = pd.read_csv(training, dtype=str)
    copies = samples[samples.kind == "training-copy"]
    assert len(copies) == 2 * 3 * 2  # two models × three cases × two samples
    for row in copies.itertuples():
        seed = _seed(0, row.model, row.case_id, row.sample)
        assert row.seed == seed
        level = 0.02 if row.model == "copy-0.02" else 0.0
        case_id, expected = _expected(train, training.parent, seed, level, (64, 64))
        assert row.source_case_id == case_id
        got = _png(Path(row.path))
        if level == 0:
            # No noise: the training image itself, bit for bit.
            assert np.array_equal(got, _png(training.parent / train.set_index("case_id").image[case_id]))
        # float32 arithmetic in the adapter against float64 here: at most one 16-bit step apart.
        assert np.abs(got - expected).max() <= 1
        assert np.mean(got != expected) < 0.01
    # Noise of std 0.02 is there, and only there.
    noisy = copies[copies.model == "copy-0.02"].iloc[0]
    clean = _png(training.parent / train.set_index("case_id").image[noisy.source_case_id]) / 65535.0
    assert np.std(_png(Path(noisy.path)) / 65535.0 - clean) == pytest.approx(0.02, rel=0.1)
    # Other models record no source case.
    assert samples[samples.kind == "real"].source_case_id.isna().all()


def test_the_choice_follows_the_seed(tmp_path, cohorts):
    held_out, training = cohorts
    picks = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        out.mkdir()
        cfg = load_config(_study(out, held_out, str(training), "", seed=seed, samples=4))
        run_study(cfg, FAST)
        s = pd.read_parquet(out / "run" / rundir.SAMPLES)
        s = s[s.kind == "training-copy"].sort_values(["case_id", "sample"])
        picks[seed] = list(s.source_case_id)
        # Twelve draws from six training cases: the choice varies across cases and samples.
        assert len(set(picks[seed])) > 2
        assert set(picks[seed]) <= {f"case-{i:03d}" for i in range(N_TRAIN)}
    assert picks[0] != picks[1]


def test_training_images_are_resized_to_the_reference(tmp_path):
    held_out = make_cohort(tmp_path / "held-out", n=2, size=48, seed=0)
    training = make_cohort(tmp_path / "training", n=N_TRAIN, size=80, seed=1)
    cfg = load_config(_study(tmp_path, held_out, str(training), _copy("copy-0", str(training), 0.0)))
    run_study(cfg, FAST)
    samples = pd.read_parquet(tmp_path / "run" / rundir.SAMPLES)
    train = pd.read_csv(training, dtype=str)
    for row in samples[samples.model == "copy-0"].itertuples():
        _, expected = _expected(train, training.parent, row.seed, 0.0, (48, 48))
        got = _png(Path(row.path))
        assert got.shape == (48, 48)
        assert np.abs(got - expected).max() / 65535.0 < 2e-3


def test_relative_training_cases_resolve_against_the_config(tmp_path, cohorts):
    held_out, training = cohorts
    cfg = load_config(_study(tmp_path, held_out, "training/cases.csv", "", samples=1))
    spec = cfg.model("copy-0.02")
    assert isinstance(spec, TrainingCopySpec)
    assert spec.training_cases == training.resolve()
    assert spec.level == 0.02
    # The run's config.toml holds the absolute path, so it loads from anywhere (resume, merge).
    run_study(cfg, FAST)
    again = load_config(tmp_path / "run" / rundir.CONFIG_TOML)
    assert again.model("copy-0.02").training_cases == training.resolve()


@pytest.mark.parametrize(
    ("models", "needles"),
    [
        ("", ["copy-0.02", "training_cases", "missing.csv", "not found"]),
        ("level = -0.1\n", ["copy-0.02", "level", ">= 0", "-0.1"]),
        ("level = nan\n", ["copy-0.02", "level", "nan"]),
    ],
)
def test_bad_configs_name_the_key_and_file(tmp_path, cohorts, models, needles):
    held_out, training = cohorts
    target = "missing.csv" if "level" not in models else str(training)
    text = _study(tmp_path, held_out, target, "").read_text().replace("\n[metrics]", f"{models}\n[metrics]")
    (tmp_path / "study.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "study.toml")
    for needle in needles:
        assert needle in str(err.value)


def test_a_training_manifest_without_images_is_named(tmp_path, cohorts):
    held_out, training = cohorts
    bad = tmp_path / "no-image.csv"
    pd.read_csv(training, dtype=str).drop(columns=["image"]).to_csv(bad, index=False)
    with pytest.raises(ConfigError) as err:
        load_config(_study(tmp_path, held_out, str(bad), ""))
    for needle in ("copy-0.02", "training_cases", str(bad), "missing required column(s) image"):
        assert needle in str(err.value)


def test_a_missing_training_image_names_its_row(tmp_path, cohorts):
    held_out, training = cohorts
    (training.parent / "img" / "case-002.png").unlink()
    with pytest.raises(ConfigError) as err:
        load_config(_study(tmp_path, held_out, str(training), ""))
    for needle in ("training_cases", str(training), "row 3", "file not found", "xray-audit cases validate"):
        assert needle in str(err.value)


def test_training_cases_is_required(tmp_path, cohorts):
    held_out, _ = cohorts
    path = tmp_path / "study.toml"
    text = _study(tmp_path, held_out, "x.csv", "").read_text()
    path.write_text(text.replace('training_cases = "x.csv"\n', ""))
    with pytest.raises(ConfigError, match="missing required key 'training_cases'"):
        load_config(path)


def test_the_demo_training_manifest_is_the_generators_training_split(tmp_path):
    """On a cached cohort (build.json and cases.csv as a build leaves them; rendering takes a minute):
    the first TRAIN_CASES − VALIDATION_CASES rows, ids prefixed with the seed, every other cell kept."""
    import json

    from audit.demo import cohort
    from audit.demo import train_evaluators as te
    from audit.demo.training import generator_training_cases

    n, n_train = te.TRAIN_CASES, te.TRAIN_CASES - te.VALIDATION_CASES
    assert (n, n_train, te.TRAIN_SEED, te.COHORT_SIZE) == (256, 224, 1, 256)  # what the generators saw
    rows = [{c: f"{c}-{i}" for c in cohort.MANIFEST_COLUMNS} | {"case_id": f"demo-{i:03d}"} for i in range(n)]
    pd.DataFrame(rows).to_csv(tmp_path / "cases.csv", index=False)
    info = cohort._build_info(n, te.COHORT_SIZE, te.TRAIN_SEED)
    (tmp_path / "build.json").write_text(json.dumps(info))

    manifest = generator_training_cases(root=tmp_path, progress=False)
    assert manifest == tmp_path / "generator_training.csv"
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    assert len(frame) == n_train
    assert list(frame.case_id) == [f"seed1-demo-{i:03d}" for i in range(n_train)]
    assert list(frame.cohort_case_id) == [f"demo-{i:03d}" for i in range(n_train)]
    assert list(frame.image) == [f"image-{i}" for i in range(n_train)]
    # Cached: a second call rewrites nothing.
    mtime = manifest.stat().st_mtime_ns
    assert generator_training_cases(root=tmp_path, progress=False) == manifest
    assert manifest.stat().st_mtime_ns == mtime
