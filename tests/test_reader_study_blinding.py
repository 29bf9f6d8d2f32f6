"""The byte size of what a reader downloads must not tell real from generated.

On the demo, the compressed PNGs of the first version were 92-124 kB for real radiographs and
56-65 kB for generated ones: "size > 80 kB means real" answered the Turing question 52 of 52
times. Here a study is built from the demo run itself (the session's shared ``xray-audit demo``),
and the byte-size AUC of real against each model, computed with scikit-learn, must be exactly 0.5
for the stored files and for zoomed, windowed and panned views; the same views compressed
(``audit.images.encode_png``, the first version's encoder) show that the data does carry the leak.
"""

from __future__ import annotations

import io
import logging
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from audit.images import encode_png, encode_png_fixed_size, fixed_png_size
from reader_study import blinding, rendering, study, studydir
from reader_study.create import CreateOptions, create_study
from reader_study.criteria import resolve
from reader_study.serve import serve
from tests.reader_study_fixtures import make_study

VIEWS = {
    "default": {},
    "windowed": {"level": 0.35, "width": 0.3},
    "zoom-2-panned": {"zoom": 2.0, "cx": 0.3, "cy": 0.7},
    "zoom-4-corner": {"zoom": 4.0, "cx": 1.0, "cy": 0.0, "level": 0.6, "width": 0.5},
}


def test_byte_size_auc_is_the_mann_whitney_auc_of_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(50):
        real = rng.integers(0, 6, int(rng.integers(1, 30)))
        other = rng.integers(0, 6, int(rng.integers(1, 30)))
        y = np.r_[np.zeros(len(real)), np.ones(len(other))]
        expected = roc_auc_score(y, np.r_[real, other]) if len(set(y)) == 2 else 0.5
        assert float(blinding.byte_size_auc(real, other)) == pytest.approx(expected, abs=1e-12)
    assert blinding.byte_size_auc([5, 5, 5], [5, 5]) == blinding.Fraction(1, 2)


def test_an_auc_of_one_half_is_not_enough():
    """Real images of 100 and 300 bytes against a model's of 200: AUC 1/2, yet told apart at once.
    And two models of different sizes, each against real, are no better."""
    report = blinding.report({"stored": {"real": [100, 300], "m": [200, 200]}})
    assert report["views"]["stored"]["auc_vs_real"]["m"]["exact"] == "1/2"
    assert blinding.failures(report) == ["stored: 3 different byte lengths ([100, 200, 300]...)"]
    assert blinding.failures(blinding.report({"v": {"real": [5, 5], "a": [5], "b": [5]}})) == []


def test_fixed_size_pngs_decode_to_the_pixels_and_never_change_length():
    rng = np.random.default_rng(1)
    for shape, bits in (((64, 48), 8), ((33, 70), 16), ((40, 40, 3), 8), ((300, 300), 8)):
        pixels = rng.random(shape)
        reference = np.asarray(Image.open(io.BytesIO(encode_png(pixels, bits))))
        lengths = set()
        for filters in (None, rng.integers(0, 5, shape[0]), np.full(shape[0], 4)):
            png = encode_png_fixed_size(pixels, bits, filters)
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), reference)
            lengths.add(len(png))
        smooth = encode_png_fixed_size(np.zeros(shape), bits)  # compresses to nothing when compressed
        assert (
            lengths
            == {len(smooth)}
            == {fixed_png_size(shape[0], shape[1], 3 if len(shape) == 3 else 1, bits)}
        )
    with pytest.raises(ValueError, match="row_filters"):
        encode_png_fixed_size(np.zeros((4, 4)), 8, np.full(4, 5))


@pytest.fixture(scope="module")
def demo_study(demo_run, tmp_path_factory):
    assert demo_run.exit_code == 0
    out = tmp_path_factory.mktemp("demo-study") / "study"
    options = CreateOptions(
        readers=("r1", "r2"), criteria=resolve(None, None), turing=True, per_model=5, real=8
    )
    return create_study(demo_run.run, out, options, progress=False).path


def _auc(key: pd.DataFrame, sizes: dict[str, int], model: str) -> float:
    rows = key[key.model.isin(["real", model])]
    return roc_auc_score(rows.model == model, [sizes[i] for i in rows["item"]])


def test_every_image_of_a_demo_study_has_one_byte_size_at_every_view(demo_study):
    key = pd.read_parquet(demo_study / studydir.KEY)
    models = sorted(set(key.model) - {"real"})
    assert len(models) >= 5 and (key.model == "real").sum() >= 5
    stored = {i: (demo_study / studydir.IMAGES_DIR / f"{i}.png").stat().st_size for i in key["item"]}
    fixed: dict[str, dict[str, int]] = {name: {} for name in VIEWS}
    compressed: dict[str, dict[str, int]] = {name: {} for name in VIEWS}
    rng = np.random.default_rng(0)
    for item in key["item"]:
        with Image.open(study.image_path(demo_study, item)) as im:
            pixels = np.asarray(im.convert("L"))
        for name, settings in VIEWS.items():
            png = rendering.view(
                pixels, **settings, out_size=rendering.display_size(512), variant=rng.bytes(8)
            )
            fixed[name][item] = len(png)
            shown = rendering.view_pixels(pixels, **settings, out_size=rendering.display_size(512))
            compressed[name][item] = len(encode_png(shown))
    for model in models:
        assert _auc(key, stored, model) == 0.5, model
        for name in VIEWS:
            assert _auc(key, fixed[name], model) == 0.5, (model, name)
    assert len(set(stored.values())) == 1 and all(len(set(v.values())) == 1 for v in fixed.values())
    # The same views compressed: the leak this guards against is in the demo's data.
    worst = max(abs(_auc(key, compressed["default"], m) - 0.5) for m in models)
    assert worst > 0.3, worst
    # And the study recorded it: every AUC exactly 1/2, for every view the app can send.
    recorded = blinding.report_of(demo_study)
    assert set(recorded["views"]) == {blinding.STORED, *blinding.VIEWS}
    assert blinding.failures(recorded) == []
    assert all(
        entry["auc_vs_real"][m]["exact"] == "1/2" for entry in recorded["views"].values() for m in models
    )


def test_serve_refuses_a_study_whose_images_give_the_source_away(tmp_path, caplog):
    made = make_study(tmp_path, per_model=2, criteria="quality")
    blinding.require(made.path, study.load(made.path)[1], progress=False)  # a fresh study passes
    # An image replaced by a compressed PNG (what the first version stored; the fixture's noise
    # images do not compress, so a smooth one: a generator's image, as on the demo).
    key = pd.read_parquet(made.path / studydir.KEY)
    victim = key.loc[key.model != "real", "item"].iloc[0]
    path = study.image_path(made.path, victim)
    smaller = encode_png(np.linspace(0, 1, 64 * 64).reshape(64, 64))
    backup = path.read_bytes()
    assert len(smaller) < len(backup)
    os.chmod(path, 0o600)
    path.write_bytes(smaller)
    with pytest.raises(blinding.BlindingError, match="byte sizes tell models apart"):
        blinding.require(made.path, study.load(made.path)[1], progress=False)
    from audit.cli import main

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["-q", "reader-study", "serve", str(made.path), "--port", "1"]) == 1
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.startswith("error: ") and "byte sizes tell models apart" in error
    path.write_bytes(backup)
    # A study without blinding.json (made by an earlier release) is refused too.
    (made.path / studydir.BLINDING_FILE).unlink()
    with pytest.raises(blinding.BlindingError, match="earlier xray-audit"):
        serve(made.path, 1, progress=False)
    shutil.rmtree(made.path)
