"""Robustness-sweep perturbations against independent references (scipy.ndimage, scikit-image, hand
rasterisation, hand-written prompts)."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import gaussian as sk_gaussian

from audit import perturb
from audit.perturb import (
    CONDITION_AXES,
    PROMPT_AXES,
    SynonymFileError,
    axis_label,
    load_synonyms,
    motion_blur,
    motion_kernel,
    perturb_condition,
    perturb_prompt,
    swap_synonyms,
)


def smooth_map(channels: int = 3, size: int = 48, seed: int = 0) -> np.ndarray:
    """A float32 (C, H, W) map in [0, 1] with edges and texture, so filters differ visibly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for c in range(channels):
        img = 0.5 + 0.3 * np.sin(5 * x + 3 * c) * np.cos(4 * y)
        img[(x - 0.4) ** 2 + (y - 0.5) ** 2 < 0.05 * (c + 1)] = 1.0
        img += rng.uniform(-0.05, 0.05, img.shape)
        out.append(np.clip(img, 0, 1))
    return np.stack(out).astype(np.float32)


def test_axes_names():
    assert CONDITION_AXES == ("blur", "motion_blur", "noise", "dropout")
    assert PROMPT_AXES == ("synonyms", "fixed_prompt")


def test_import_is_light():
    # The config imports this module; numpy/scipy must not load on every CLI start.
    code = (
        "import sys, audit.perturb; print(sorted(m for m in ('numpy', 'scipy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------ blur


@pytest.mark.parametrize("sigma", [0.7, 2, 3.5])
def test_blur_matches_scipy_per_channel(sigma):
    cond = smooth_map()
    before = cond.copy()
    out = perturb_condition(cond, "blur", sigma, np.random.default_rng(0))
    expected = np.stack(
        [ndimage.gaussian_filter(ch.astype(np.float64), sigma, mode="reflect") for ch in cond]
    )
    assert out.dtype == np.float32 and out.shape == cond.shape
    np.testing.assert_allclose(out, expected, atol=2e-6)
    np.testing.assert_array_equal(cond, before)  # input untouched
    assert np.abs(out - cond).max() > 0.05  # the blur did something


def test_blur_matches_skimage_on_one_channel():
    cond = smooth_map(channels=1)
    out = perturb_condition(cond, "blur", 2.5, np.random.default_rng(0))
    ref = sk_gaussian(
        cond[0].astype(np.float64), sigma=2.5, mode="reflect", preserve_range=True, truncate=4.0
    )
    np.testing.assert_allclose(out[0], ref, atol=2e-6)


def test_blur_keeps_channels_apart():
    cond = np.zeros((3, 32, 32), np.float32)
    cond[1, 10:20, 10:20] = 1
    out = perturb_condition(cond, "blur", 3, np.random.default_rng(0))
    assert out[0].max() == 0 and out[2].max() == 0
    assert 0 < out[1].max() <= 1


# ----------------------------------------------------------------------------------- motion blur


def sampled_kernel(length: int, angle_deg: float, n: int = 200_000) -> dict[tuple[int, int], float]:
    """Reference rasterisation: fraction of dense midpoint samples of the segment falling in each pixel."""
    t = (np.arange(n) + 0.5) / n * length - length / 2
    a = np.radians(angle_deg)
    cols = np.rint(t * np.cos(a)).astype(int)
    rows = np.rint(-t * np.sin(a)).astype(int)  # rows grow downwards, angles counter-clockwise on screen
    r = length  # any offset larger than the kernel radius
    counts = np.bincount((rows + r) * (2 * r + 1) + cols + r, minlength=(2 * r + 1) ** 2)
    return {
        (int(i) // (2 * r + 1) - r, int(i) % (2 * r + 1) - r): counts[i] / n for i in np.nonzero(counts)[0]
    }


def as_dict(kernel: np.ndarray) -> dict[tuple[int, int], float]:
    r0, c0 = kernel.shape[0] // 2, kernel.shape[1] // 2
    return {(int(r) - r0, int(c) - c0): float(kernel[r, c]) for r, c in zip(*np.nonzero(kernel), strict=True)}


@pytest.mark.parametrize("length", [3, 5, 9])
def test_horizontal_motion_blur_is_row_box_filter(length):
    cond = smooth_map()
    kernel = motion_kernel(length, 0)
    assert kernel.shape == (1, length)
    out = motion_blur(cond, length, 0.0)
    np.testing.assert_allclose(
        out, ndimage.uniform_filter1d(cond, length, axis=-1, mode="reflect"), atol=2e-6
    )
    vertical = motion_blur(cond, length, 90.0)
    np.testing.assert_allclose(
        vertical, ndimage.uniform_filter1d(cond, length, axis=-2, mode="reflect"), atol=2e-6
    )


@pytest.mark.parametrize("length", [2, 4, 8])
def test_even_horizontal_motion_blur_is_centred_box(length):
    # Even L: the mean of the two size-L boxes offset half a pixel either way (documented).
    cond = smooth_map(channels=1)
    left = ndimage.uniform_filter1d(cond, length, axis=-1, mode="reflect", origin=0)
    right = ndimage.uniform_filter1d(cond, length, axis=-1, mode="reflect", origin=-1)
    np.testing.assert_allclose(motion_blur(cond, length, 0.0), (left + right) / 2, atol=2e-6)


@pytest.mark.parametrize("length,angle", [(5, 45), (9, 30), (7, 100), (12, 163.7), (2, 71), (20, 5)])
def test_motion_kernel_matches_dense_sampling(length, angle):
    kernel = motion_kernel(length, angle)
    assert kernel.shape[0] % 2 == 1 and kernel.shape[1] % 2 == 1
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    got, ref = as_dict(kernel), sampled_kernel(length, angle)
    for key in set(got) | set(ref):
        assert got.get(key, 0.0) == pytest.approx(ref.get(key, 0.0), abs=2e-4), key


def test_motion_kernel_45_degrees_by_hand():
    # Segment y = x (up-right on screen) of length 5: pixels (k, k) hold sqrt(2) each for |k| <= 1,
    # the two end pixels the remaining 2.5 - 1.5 * sqrt(2) each.
    k = motion_kernel(5, 45)
    s2 = np.sqrt(2)
    end = (2.5 - 1.5 * s2) / 5
    expected = np.diag([end, s2 / 5, s2 / 5, s2 / 5, end])[:, ::-1]  # row 0 is the top: up-right
    np.testing.assert_allclose(k, expected, atol=1e-12)


@pytest.mark.parametrize("angle", [0, 17, 30, 45, 90, 123.4, 179])
def test_motion_kernel_symmetry(angle):
    k = motion_kernel(7, angle)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)
    np.testing.assert_allclose(motion_kernel(7, angle + 180), k, atol=1e-12)


def test_motion_blur_axis_draws_angle_from_rng():
    cond = smooth_map()
    out = perturb_condition(cond, "motion_blur", 9, np.random.default_rng(5))
    angle = np.random.default_rng(5).uniform(0, 180)  # the documented draw
    np.testing.assert_allclose(out, np.clip(motion_blur(cond, 9, angle), 0, 1), atol=1e-7)
    np.testing.assert_array_equal(out, perturb_condition(cond, "motion_blur", 9.0, np.random.default_rng(5)))
    other = perturb_condition(cond, "motion_blur", 9, np.random.default_rng(6))
    assert np.abs(other - out).max() > 0.01
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1


# ----------------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("std", [0.01, 0.05, 0.1])
def test_noise_std_and_determinism(std):
    cond = np.full((1, 256, 256), 0.5, np.float32)
    out = perturb_condition(cond, "noise", std, np.random.default_rng(3))
    diff = out.astype(np.float64) - 0.5
    assert diff.std() == pytest.approx(std, rel=0.02)
    assert abs(diff.mean()) < 4 * std / 256
    np.testing.assert_array_equal(out, perturb_condition(cond, "noise", std, np.random.default_rng(3)))
    assert not np.array_equal(out, perturb_condition(cond, "noise", std, np.random.default_rng(4)))
    assert np.all(cond == 0.5)


def test_noise_is_clipped():
    cond = np.zeros((3, 16, 16), np.float32)
    cond[:, :8] = 1
    out = perturb_condition(cond, "noise", 0.5, np.random.default_rng(0))
    assert out.min() == 0 and out.max() == 1 and out.dtype == np.float32
    assert 0 < out[:, :, :8].mean() < 1


# --------------------------------------------------------------------------------------- dropout


def blobs(n_side: int, size: int = 64) -> np.ndarray:
    """(1, size, size) mask with n_side**2 separated 3x3 squares of value 0.8."""
    m = np.zeros((1, size, size), np.float32)
    step = size // n_side
    for i in range(n_side):
        for j in range(n_side):
            m[0, i * step + 1 : i * step + 4, j * step + 1 : j * step + 4] = 0.8
    return m


def test_dropout_all_removes_every_structure():
    rgb = smooth_map()
    assert perturb_condition(rgb, "dropout", 1.0, np.random.default_rng(0)).max() == 0
    assert perturb_condition(blobs(4), "dropout", 1, np.random.default_rng(0)).max() == 0


def test_dropout_small_keeps_most():
    mask = blobs(10)  # 100 structures
    out = perturb_condition(mask, "dropout", 0.05, np.random.default_rng(1))
    kept = sum(out[0, i * 6 + 2, j * 6 + 2] > 0 for i in range(10) for j in range(10))
    assert 85 <= kept < 100
    assert set(np.unique(out)) <= {0.0, np.float32(0.8)}


def test_dropout_same_seed_same_result():
    for cond in (blobs(6), smooth_map(channels=4)):
        a = perturb_condition(cond, "dropout", 0.5, np.random.default_rng(9))
        b = perturb_condition(cond, "dropout", 0.5, np.random.default_rng(9))
        np.testing.assert_array_equal(a, b)


def test_dropout_single_channel_drops_whole_components():
    mask = np.zeros((1, 20, 30), np.float32)
    mask[0, 2:8, 2:8] = 1  # blob A
    mask[0, 10:16, 18:26] = 0.6  # blob B, far from A
    mask[0, 16, 26] = 0.6  # touches B only at a corner: same 8-connected component
    a, b = mask[0] == 1, mask[0] == 0.6
    outcomes = set()
    for seed in range(64):
        out = perturb_condition(mask, "dropout", 0.5, np.random.default_rng(seed))[0]
        keep_a, keep_b = bool(out[a].all()), bool(out[b].all())
        assert keep_a or not out[a].any()  # each component is kept whole or dropped whole
        assert keep_b or not out[b].any()
        np.testing.assert_array_equal(out[a], mask[0][a] * keep_a)
        np.testing.assert_array_equal(out[b], mask[0][b] * keep_b)
        outcomes.add((keep_a, keep_b))
    assert outcomes == {(True, True), (True, False), (False, True), (False, False)}


def test_dropout_channels_independent_and_draw_count_fixed():
    cond = smooth_map(channels=3)
    cond[2] = 0  # an empty channel still consumes its draw
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        out = perturb_condition(cond, "dropout", 0.5, rng)
        kept = tuple(bool(out[c].any()) for c in range(2))
        for c in range(2):
            assert np.array_equal(out[c], cond[c]) or not out[c].any()
        seen.add(kept)
        ref = np.random.default_rng(seed)
        ref.random(3)
        assert rng.random() == ref.random()
    assert seen == {(True, True), (True, False), (False, True), (False, False)}


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "axis,value,range_text",
    [
        ("blur", 0, "> 0"),
        ("blur", -1, "> 0"),
        ("blur", float("inf"), "> 0"),
        ("motion_blur", 1, ">= 2"),
        ("motion_blur", 2.5, ">= 2"),
        ("motion_blur", True, ">= 2"),
        ("noise", 0, "(0, 1]"),
        ("noise", 1.5, "(0, 1]"),
        ("noise", float("nan"), "(0, 1]"),
        ("dropout", 0, "(0, 1]"),
        ("dropout", 1.01, "(0, 1]"),
        ("dropout", "0.5", "(0, 1]"),
    ],
)
def test_out_of_range_values_are_named(axis, value, range_text):
    with pytest.raises(ValueError) as info:
        perturb_condition(smooth_map(1, 8), axis, value, np.random.default_rng(0))
    msg = str(info.value)
    assert axis in msg and repr(value) in msg and range_text in msg
    with pytest.raises(ValueError, match=axis):
        axis_label(axis, value)


def test_bad_condition_or_axis():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        perturb_condition(np.zeros((8, 8), np.float32), "blur", 1, rng)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        perturb_condition(np.full((1, 8, 8), 2.0, np.float32), "blur", 1, rng)
    with pytest.raises(ValueError, match="unknown condition axis 'sharpen'"):
        perturb_condition(smooth_map(1, 8), "sharpen", 1, rng)


# -------------------------------------------------------------------------------------- synonyms


def write(tmp_path, text: str, name: str = "syn.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_synonyms(tmp_path):
    path = write(
        tmp_path,
        "\ufeffterm,synonym\neffusion,fluid\n\nEffusion , pleural fluid\nchest x-ray,CXR\n"
        '"heart, enlarged",cardiomegaly\n',
    )
    assert load_synonyms(path) == {
        "effusion": ("fluid", "pleural fluid"),
        "chest x-ray": ("CXR",),
        "heart, enlarged": ("cardiomegaly",),
    }


def test_synonym_file_errors_name_row_and_line(tmp_path):
    path = write(
        tmp_path,
        "term,synonym\n"  # line 1
        "effusion,fluid\n"  # line 2, row 1
        ",fluid\n"  # line 3, row 2: empty term
        "\n"  # line 4, blank: skipped
        "Nodule,nodule\n"  # line 5, row 3: synonym == term
        "EFFUSION,Fluid\n"  # line 6, row 4: duplicate of row 1
        "mass,lump,extra\n",  # line 7, row 5: three cells
    )
    with pytest.raises(SynonymFileError) as info:
        load_synonyms(path)
    msg = str(info.value)
    assert str(path) in msg and "4 problem(s)" in msg
    assert re.search(r"row 2 \(line 3\), column 'term': empty term", msg)
    assert re.search(r"row 3 \(line 5\), column 'synonym': synonym is the term itself", msg)
    assert re.search(r"row 4 \(line 6\): duplicate of row 1", msg)
    assert re.search(r"row 5 \(line 7\): expected 2 cells", msg)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("effusion,fluid\n", "missing header"),
        ("term,synonyms\neffusion,fluid\n", "missing header"),
        ("", "empty file"),
        ("term,synonym\n", "no term,synonym rows"),
    ],
)
def test_synonym_file_header_errors(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(SynonymFileError, match=expected) as info:
        load_synonyms(path)
    assert str(path) in str(info.value)


def test_synonym_file_missing(tmp_path):
    with pytest.raises(SynonymFileError, match="file not found"):
        load_synonyms(tmp_path / "nope.csv")


def test_swap_keeps_first_letter_case():
    syn = {"effusion": ["fluid"], "pneumothorax": ["PTX"], "opacity": ["Shadow"]}
    rng = np.random.default_rng(0)
    got = swap_synonyms("Effusion with effusion; EFFUSION. pneumothorax, opacity and Opacity", syn, rng)
    # Only the first letter's case carries over; an acronym synonym stays as written.
    assert got == "Fluid with fluid; Fluid. PTX, shadow and Shadow"


def test_swap_multiword_longest_first_and_no_rereplacement():
    syn = {
        "pleural effusion": ["fluid around the lung"],
        "effusion": ["fluid"],
        "fluid": ["water"],
        "lung": ["airspace"],
        "chest": ["thorax"],
        "chest x-ray": ["radiograph"],
    }
    rng = np.random.default_rng(0)
    got = swap_synonyms(
        "Left pleural\n  effusion, small effusion, fluid in lung. Chest X-ray of the chest", syn, rng
    )
    assert got == "Left fluid around the lung, small fluid, water in airspace. Radiograph of the thorax"


def test_swap_whole_words_only():
    syn = {"effusion": ["fluid"], "operative": ["surgical"], "x-ray": ["radiograph"]}
    rng = np.random.default_rng(0)
    text = "effusions, post-operative x-rays, operative x-ray (effusion)"
    assert swap_synonyms(text, syn, rng) == "effusions, post-operative x-rays, surgical radiograph (fluid)"


def test_swap_draws_from_all_synonyms_reproducibly():
    syn = {"nodule": ["mass", "lesion", "spot"]}
    prompt = "nodule " * 30
    a = swap_synonyms(prompt, syn, np.random.default_rng(2))
    assert a == swap_synonyms(prompt, syn, np.random.default_rng(2))
    assert set(a.split()) == {"mass", "lesion", "spot"}
    assert swap_synonyms("no match here", syn, np.random.default_rng(2)) == "no match here"


def test_swap_rejects_clashing_terms():
    with pytest.raises(ValueError, match="twice"):
        swap_synonyms("x", {"Effusion": ["a"], "effusion": ["b"]}, np.random.default_rng(0))


def test_perturb_prompt(tmp_path):
    path = write(tmp_path, "term,synonym\ncardiomegaly,enlarged heart\n", name="cxr-terms.csv")
    rng = np.random.default_rng(0)
    assert perturb_prompt("Cardiomegaly.", "synonyms", str(path), rng) == "Enlarged heart."
    loaded = load_synonyms(path)
    assert perturb_prompt("cardiomegaly", "synonyms", "", rng, synonyms=loaded) == "enlarged heart"
    for prompt in ("anything", "", "Cardiomegaly"):
        assert perturb_prompt(prompt, "fixed_prompt", "a chest x-ray", rng) == "a chest x-ray"
    with pytest.raises(ValueError, match="unknown prompt axis"):
        perturb_prompt("x", "blur", "1", rng)
    with pytest.raises(ValueError, match="synonym file"):
        perturb_prompt("x", "synonyms", "", rng)


# ---------------------------------------------------------------------------------------- labels


def test_axis_labels():
    assert axis_label("blur", 2) == "blur=2"
    assert axis_label("blur", 2.0) == "blur=2"
    assert axis_label("blur", 0.5) == "blur=0.5"
    assert axis_label("motion_blur", 9) == "motion_blur=9"
    assert axis_label("noise", 0.05) == "noise=0.05"
    assert axis_label("noise", 1e-5) == "noise=" + format(1e-5, "g")
    assert axis_label("dropout", 1) == "dropout=1"
    prompt = "A frontal chest X-ray, no findings. ünïcode / slashes"
    assert (
        axis_label("fixed_prompt", prompt)
        == "fixed_prompt=" + hashlib.sha256(prompt.encode()).hexdigest()[:8]
    )
    assert axis_label("synonyms", "/data/cxr synonyms (v2).csv") == "synonyms=cxr-synonyms--v2-"
    assert axis_label("synonyms", "") == "synonyms"
    with pytest.raises(ValueError, match="unknown axis"):
        axis_label("rotate", 1)


@pytest.mark.parametrize(
    "axis,value",
    [("blur", 1.25), ("noise", 0.001), ("fixed_prompt", "x [y] = z/ä"), ("synonyms", "a b/ä [x].csv")],
)
def test_axis_labels_are_filename_safe(axis, value):
    assert re.fullmatch(r"[A-Za-z0-9._=+,-]+", axis_label(axis, value))


def test_module_exports():
    assert set(perturb.AXES) == set(CONDITION_AXES) | set(PROMPT_AXES)
