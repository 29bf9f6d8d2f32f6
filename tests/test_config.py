from pathlib import Path

import pytest

from audit.config import ConfigError, StudyConfig, dump_toml, load_config, parse_config
from audit.models.degrade import DegradeSpec
from audit.models.folder import FolderSpec

BASE = """
[study]
name = "demo"
cases = "cases.csv"
output = "runs/demo"
seed = 0
samples_per_case = 1

[[models]]
name = "xreal"
kind = "folder"
path = "generated/xreal/{case_id}.png"

[[models]]
name = "real"
kind = "real"

[metrics]
pixel = ["mse", "mae", "psnr", "ssim", "ms_ssim"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.toml"
    p.write_text(text)
    return p


def test_issue_example_parses_into_frozen_dataclasses(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert isinstance(cfg, StudyConfig)
    assert cfg.study.cases == tmp_path / "cases.csv"  # relative to the config file
    assert cfg.study.output == tmp_path / "runs/demo"
    assert isinstance(cfg.models[0], FolderSpec)
    assert cfg.models[0].path == tmp_path / "generated/xreal/{case_id}.png"
    assert cfg.metrics.pixel == ("mse", "mae", "psnr", "ssim", "ms_ssim")
    assert cfg.metrics.pixel_range == 1.0 and cfg.metrics.resize == "none"
    with pytest.raises(AttributeError):
        cfg.study.seed = 3  # frozen


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("seed = 0", "seed = 0\nsede = 1", "'sede'"),
        ('kind = "real"', 'kind = "real"\npath = "x"', "'path'"),
        ('pixel = ["mse", "mae", "psnr", "ssim", "ms_ssim"]', 'pixle = ["mse"]', "'pixle'"),
        ("[metrics]", "[metric]\n[metrics]", "'metric'"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(tmp_path, old, new, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, BASE.replace(old, new, 1)))
    assert needle in str(err.value)
    assert "study.toml" in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("seed = 0", 'seed = "zero"', "expected an integer"),
        ('kind = "folder"', 'kind = "foldr"', "unknown kind 'foldr'"),
        ('"ms_ssim"]', '"msssim"]', "msssim"),
        ("[metrics]", '[metrics]\nresize = "stretch"', "'stretch' is not one of"),
        ("[metrics]", "[metrics]\npixel_range = 0", "pixel_range must be > 0"),
        ('path = "generated/xreal/{case_id}.png"', 'path = "generated/{case}.png"', "{case}"),
        ('name = "real"', 'name = "xreal"', "duplicate model name"),
        ('name = "xreal"', 'name = "../evil"', "may contain only"),
        ("samples_per_case = 1", "samples_per_case = 2", "{sample}"),
    ],
)
def test_bad_values_are_clear_errors(tmp_path, old, new, needle):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, BASE.replace(old, new, 1)))
    assert needle in str(err.value)


def test_missing_required_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'cases'"):
        load_config(write(tmp_path, BASE.replace('cases = "cases.csv"\n', "")))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[study\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="at least one"):
        load_config(write(tmp_path, BASE.split("[[models]]")[0]))


def test_degrade_spec_and_validation(tmp_path):
    text = BASE + '\n[[models]]\nname = "blur"\nkind = "degrade"\ndegradation = "blur"\nlevel = 2\n'
    cfg = load_config(write(tmp_path, text))
    blur = cfg.model("blur")
    assert isinstance(blur, DegradeSpec) and blur.level == 2.0 and blur.degradation == "blur"
    with pytest.raises(ConfigError, match="whole number"):
        load_config(
            write(
                tmp_path,
                text.replace('degradation = "blur"\nlevel = 2', 'degradation = "shift"\nlevel = 1.5'),
            )
        )


def test_dump_roundtrip_and_hash(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    again = parse_config(__import__("tomllib").loads(dump_toml(cfg)), source=tmp_path / "other" / "x.toml")
    assert again.to_dict() == cfg.to_dict()  # absolute paths survive a move of the config
    assert again.hash() == cfg.hash()
    changed = load_config(write(tmp_path, BASE.replace("seed = 0", "seed = 1")))
    assert changed.hash() != cfg.hash()


PRIVACY = """
[privacy]
training_cases = "train/cases.csv"
"""


def test_privacy_section_defaults_paths_and_hash(tmp_path):
    from audit.config import PrivacySection

    without = load_config(write(tmp_path, BASE))
    assert without.privacy is None and "privacy" not in without.to_dict()
    cfg = load_config(write(tmp_path, BASE + PRIVACY))
    p = cfg.privacy
    assert isinstance(p, PrivacySection)
    # Relative to the config's directory, like [study].cases; checked for existence by the run.
    assert p.training_cases == tmp_path / "train" / "cases.csv"
    assert (p.features, p.pixel_size, p.quantile, p.k, p.reid_model, p.show_training_images) == (
        "auto",
        128,
        0.01,
        5,
        None,
        True,
    )
    assert cfg.hash() != without.hash()
    with pytest.raises(AttributeError):
        p.k = 3  # type: ignore[misc]
    sha = "ab" * 32
    full = (
        BASE
        + PRIVACY
        + (
            'features = "hf:owner/name@'
            + "0" * 40
            + '"\nquantile = 0.05\nk = 3\nshow_training_images = false\n'
            f'[privacy.reid_model]\npath = "reid.ts"\nsha256 = "{sha}"\n'
        )
    )
    cfg = load_config(write(tmp_path, full))
    assert cfg.privacy.reid_model.path == tmp_path / "reid.ts" and cfg.privacy.reid_model.sha256 == sha
    again = parse_config(__import__("tomllib").loads(dump_toml(cfg)), source=tmp_path / "other" / "x.toml")
    assert again.to_dict() == cfg.to_dict() and again.hash() == cfg.hash()


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("quantile = 0.5", r"\[privacy\]\.quantile must be in \(0, 0.5\)"),
        ("quantile = 0", r"\[privacy\]\.quantile must be in \(0, 0.5\)"),
        ("pixel_size = 8", r"\[privacy\]\.pixel_size must be >= 16"),
        ("k = 0", r"\[privacy\]\.k must be >= 1"),
        ("max_shift = -1", r"\[privacy\]\.max_shift must be between 0 and pixel_size / 8 = 16"),
        (
            "pixel_size = 32\nmax_shift = 5",
            r"\[privacy\]\.max_shift must be between 0 and pixel_size / 8 = 4",
        ),
        ('features = "dino"', r"\[privacy\]\.features must be one of 'auto', 'raddino'"),
        ('features = "hf:owner/name@main"', r"\[privacy\]\.features must be one of"),
        ('features = "user"', r'features = "user" embeds with your own network'),
        ("training = 1", r"\[privacy\]: unknown key\(s\) 'training'"),
        ("k = 2.5", r"\[privacy\]\.k: expected an integer"),
        ('[privacy.reid_model]\npath = "r.ts"\nsha256 = "abc"', r"reid_model\.sha256 must be 64 hex"),
        ('[privacy.reid_model]\npath = "r.ts"', r"\[privacy\]\.reid_model: missing required key 'sha256'"),
    ],
)
def test_privacy_section_is_checked(tmp_path, extra, needle):
    path = write(tmp_path, BASE + PRIVACY + extra + "\n")
    with pytest.raises(ConfigError, match=needle) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_privacy_training_cases_is_required(tmp_path):
    with pytest.raises(ConfigError, match=r"\[privacy\]: missing required key 'training_cases'"):
        load_config(write(tmp_path, BASE + "[privacy]\nk = 3\n"))


def test_privacy_needs_the_real_model(tmp_path):
    """The references' own distances are the calibration: without a real model there is none."""
    import re

    text = BASE + PRIVACY
    no_real = re.sub(r'\[\[models\]\]\nname = "real"\nkind = "real"\n', "", text)
    assert no_real != text
    with pytest.raises(ConfigError, match=r'\[privacy\] needs a model of kind "real"'):
        load_config(write(tmp_path, no_real))
    assert load_config(write(tmp_path, text)).privacy.max_shift == 2


def test_the_name_real_is_reserved_for_the_references(tmp_path):
    text = BASE.replace('name = "real"\nkind = "real"', 'name = "heldout"\nkind = "real"')
    text = text.replace('name = "xreal"', 'name = "real"')
    assert 'name = "real"' in text and 'name = "heldout"' in text
    with pytest.raises(ConfigError, match=r'the model name "real" is reserved for kind = "real"'):
        load_config(write(tmp_path, text))
