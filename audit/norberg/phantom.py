"""A ventrodorsal canine pelvis **phantom** with exactly known landmarks and Norberg angles.

No public canine-hip radiographs can be downloaded here, so geometry, detector training and the
metric path are tested on drawings instead. This is a phantom, not anatomy: its shapes are
schematic, and nothing measured on it is evidence about real hips.

What is drawn (``size`` × ``size`` px, bone bright on a dark background, cranial up, the patient's
left on the image's right as radiographs are displayed):

* **Femoral heads**: discs of radius ``r`` (5.5-7.5 % of the image), centres
  ``w`` (36-46 %) apart, with a femoral neck and shaft running caudolaterally.
* **Acetabula**: a bright arc (the subchondral line of the acetabulum) concentric with each head,
  outside a dark joint space. Measured from the ray towards the other head centre and turning
  cranially, the arc runs from 15-30° out to the requested Norberg angle ``θ`` and stops there with a
  round cap: the **rim point is the centre of that cap**, on the arc's midline, so it is where the
  arc visibly ends. Since the arc is centred on the head, the angle at the head centre between the
  other head and the rim is ``θ`` by construction.
* **Pelvis outline**: iliac shafts rising from the acetabula to a sacrum and spine, obturator rings
  with dark foramina caudomedial to the heads, a pubic symphysis, and a soft-tissue body.
* **Variation** so that a detector has to generalise: head size, spacing, height and left/right
  asymmetry, joint space, arc thickness, a small in-plane rotation (±6°) and shift of the whole
  pelvis, brightness, contrast, gamma, blur and Gaussian noise.

Landmarks (pixel coordinates: ``x`` the column, ``y`` the row, pixel centres at integers) are exact:
``{side}_head_center``, ``{side}_rim`` and ``n_outline`` points ``{side}_head_{i}`` on the disc
boundary, point ``i`` at ``360° · (i - 1) / n_outline`` from the medial direction, turning
cranially (so ``_1`` is the medial-most point on both sides, and the numbering mirrors).

Every draw comes from the ``rng`` passed in; the same generator state gives the same phantom.
:func:`write_phantom_cohort` seeds case ``i`` with ``np.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from audit.atomic import write_text
from audit.images import write_png
from audit.metrics.functional.norberg import NORMAL_THRESHOLD_DEG
from audit.norberg.geometry import SIDES, head_center, head_outline, rim

__all__ = ["ANGLE_RANGE", "PHANTOM_VERSION", "Phantom", "make_phantom", "write_phantom_cohort"]

PHANTOM_VERSION = 1
ANGLE_RANGE = (80.0, 120.0)  # random angles are uniform on this range
# Requested angles outside this range would put the rim under the ilium or the femoral neck.
_ALLOWED_ANGLES = (60.0, 150.0)
_MAX_ROTATION_DEG = 6.0


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # float32 (size, size) in [0, 1]
    landmarks: dict[str, tuple[float, float]]
    angles: dict[str, float]  # exact Norberg angle per side, degrees
    head_radii: dict[str, float] = field(default_factory=dict)  # femoral-head radius per side, pixels


def make_phantom(
    rng: np.random.Generator,
    size: int = 256,
    angles: tuple[float, float] | None = None,
    *,
    n_outline: int = 8,
) -> Phantom:
    """One phantom; ``angles`` = (left, right) in degrees, else each uniform on :data:`ANGLE_RANGE`."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}"
        )
    if size < 64:
        raise ValueError(f"size must be at least 64 px for the phantom's structures to resolve, got {size}")
    if n_outline < 3:
        raise ValueError(f"n_outline must be at least 3 (a circle needs three points), got {n_outline}")
    if angles is None:
        theta = {side: float(rng.uniform(*ANGLE_RANGE)) for side in SIDES}
    else:
        if len(angles) != 2:
            raise ValueError(f"angles must be (left, right) in degrees, got {angles!r}")
        theta = dict(zip(SIDES, (float(a) for a in angles), strict=True))
        lo, hi = _ALLOWED_ANGLES
        bad = {s: a for s, a in theta.items() if not lo <= a <= hi}
        if bad:
            raise ValueError(f"phantom angles must lie in [{lo:g}, {hi:g}] degrees, got {bad}")
    s = float(size)
    centre = np.array([s / 2.0, s / 2.0])

    # --- geometry in the pelvis' own (unrotated) frame -------------------------------------------
    w = s * rng.uniform(0.36, 0.46)
    r = s * rng.uniform(0.055, 0.075)
    mid = np.array([s / 2.0 + s * rng.uniform(-0.02, 0.02), s * rng.uniform(0.50, 0.58)])
    radius = {side: r * rng.uniform(0.96, 1.04) for side in SIDES}
    heads = {
        "left": mid + np.array([w / 2.0, s * rng.uniform(-0.01, 0.01)]),
        "right": mid + np.array([-w / 2.0, s * rng.uniform(-0.01, 0.01)]),
    }
    parts: dict[str, dict] = {}
    for side, other in (("left", "right"), ("right", "left")):
        h, rh = heads[side], radius[side]
        medial = (heads[other] - h) / np.linalg.norm(heads[other] - h)
        # Image y points down, so a positive turn of the medial ray goes cranially on the left hip and
        # caudally on the right: the right hip turns the other way.
        turn = 1.0 if side == "left" else -1.0
        gap = rh * rng.uniform(0.10, 0.20)
        half_t = rh * rng.uniform(0.11, 0.16)
        parts[side] = {
            "head": h,
            "r": rh,
            "medial": medial,
            "turn": turn,
            "arc_radius": rh + gap + half_t,
            "half_t": half_t,
            "arc_start": math.radians(rng.uniform(15.0, 30.0)),
            "theta": math.radians(theta[side]),
            "neck_deg": rng.uniform(35.0, 55.0),
        }

    def direction(p: dict, alpha: float) -> np.ndarray:
        return _rotate(p["medial"], p["turn"] * alpha)

    rot = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    shift = s * rng.uniform(-0.03, 0.03, size=2)

    def to_image(p: np.ndarray) -> tuple[float, float]:
        q = _rotate(p - centre, rot) + centre + shift
        return float(q[0]), float(q[1])

    landmarks: dict[str, tuple[float, float]] = {}
    for side in SIDES:
        p = parts[side]
        landmarks[head_center(side)] = to_image(p["head"])
        landmarks[rim(side)] = to_image(p["head"] + p["arc_radius"] * direction(p, p["theta"]))
        for i in range(1, n_outline + 1):
            alpha = 2.0 * math.pi * (i - 1) / n_outline
            landmarks[head_outline(side, i)] = to_image(p["head"] + p["r"] * direction(p, alpha))

    # --- rendering: every pixel mapped back into the pelvis frame -----------------------------
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    pix = np.stack([xs, ys], axis=-1) - centre - shift
    cos_r, sin_r = math.cos(-rot), math.sin(-rot)
    px = pix[..., 0] * cos_r - pix[..., 1] * sin_r + centre[0]
    py = pix[..., 0] * sin_r + pix[..., 1] * cos_r + centre[1]
    # Bones of one kind are unions (no double density where the drawn pieces meet); different bones
    # add up where they overlap, as attenuation does.
    pelvis = np.zeros((size, size))
    femur = np.zeros((size, size))
    dens = 0.12 * _cover(_ellipse_sd(px, py, mid + np.array([0.0, -0.05 * s]), 0.62 * s, 0.75 * s) / 3.0)
    spine_x = mid[0]
    sacrum_c = np.array([spine_x, mid[1] - s * rng.uniform(0.27, 0.32)])
    spine = _cover(_capsule_sd(px, py, sacrum_c, np.array([spine_x, -s]), 0.045 * s))
    pelvis = np.maximum(pelvis, _cover(_box_sd(px, py, sacrum_c, 0.09 * s, 0.11 * s, 0.03 * s)))
    ring_centres = {}
    for side in SIDES:
        p = parts[side]
        h, rh = p["head"], p["r"]
        lateral = -p["medial"]
        # Ilium: from the medial acetabular roof up towards the sacrum, clear of the rim region.
        ilium_foot = h + p["arc_radius"] * direction(p, math.radians(35.0))
        ilium_top = sacrum_c + np.array([lateral[0] * 0.08 * s, -0.02 * s])
        pelvis = np.maximum(pelvis, _cover(_capsule_sd(px, py, ilium_foot, ilium_top, 0.55 * rh)))
        # Obturator ring (ischium and pubis) caudomedial to the head, with its dark foramen, joined to
        # the ilium by the acetabular body medial to the head.
        rc = h + p["medial"] * 1.2 * rh + np.array([0.0, 1.9 * rh])
        ring_centres[side] = rc
        outer = _ellipse_sd(px, py, rc, 1.25 * rh, 0.95 * rh)
        inner = _ellipse_sd(px, py, rc, 0.85 * rh, 0.58 * rh)
        pelvis = np.maximum(pelvis, _cover(np.maximum(outer, -inner)))
        body_foot = rc + lateral * 1.0 * rh + np.array([0.0, -0.85 * rh])
        pelvis = np.maximum(pelvis, _cover(_capsule_sd(px, py, ilium_foot, body_foot, 0.4 * rh)))
        # Femur: neck caudolaterally from the head, then the shaft down out of the image.
        neck_rad = math.radians(p["neck_deg"])
        neck_dir = lateral * math.cos(neck_rad) + np.array([0.0, math.sin(neck_rad)])
        neck_end = h + neck_dir * 1.6 * rh
        shaft_end = neck_end + np.array([lateral[0] * 0.05 * s, 1.2 * s])
        head_sd = _disc_sd(px, py, h, rh)
        femur = np.maximum(femur, _cover(head_sd))
        femur = np.maximum(femur, _cover(_capsule_sd(px, py, h, neck_end, 0.5 * rh)))
        femur = np.maximum(femur, _cover(_capsule_sd(px, py, neck_end, shaft_end, 0.62 * rh)))
        # A sphere is thickest through its centre: the head reads as a dome, not a flat disc.
        dens += 0.18 * np.sqrt(np.clip(1.0 - ((head_sd + rh) / rh) ** 2, 0.0, 1.0))
        arc = _arc_sd(
            px, py, h, p["medial"], p["turn"], p["arc_radius"], p["half_t"], p["arc_start"], p["theta"]
        )
        dens += 0.55 * _cover(arc)
    symphysis = _capsule_sd(
        px,
        py,
        ring_centres["left"] + np.array([-0.9 * parts["left"]["r"], 0.0]),
        ring_centres["right"] + np.array([0.9 * parts["right"]["r"], 0.0]),
        0.22 * r,
    )
    pelvis = np.maximum(pelvis, _cover(symphysis))
    dens += 0.30 * pelvis + 0.22 * spine + 0.38 * femur

    contrast = rng.uniform(0.85, 1.25)
    offset = rng.uniform(0.0, 0.08)
    gamma = rng.uniform(0.8, 1.25)
    # Film-like compression, so overlapping bones brighten without clipping to white.
    img = np.clip(offset + contrast * (1.0 - np.exp(-1.8 * dens)) / (1.0 - math.exp(-1.8)), 0.0, 1.0) ** gamma
    img = ndimage.gaussian_filter(img, sigma=rng.uniform(0.4, 1.0) * s / 256.0)
    img = img + rng.normal(0.0, rng.uniform(0.008, 0.035), size=img.shape)
    image = np.clip(img, 0.0, 1.0).astype(np.float32)
    return Phantom(
        image=image,
        landmarks=landmarks,
        angles=theta,
        head_radii={side: float(radius[side]) for side in SIDES},
    )


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _cover(sd: np.ndarray) -> np.ndarray:
    """Fraction of a pixel inside a shape from its signed distance (negative inside): 1 px ramp."""
    return np.clip(0.5 - sd, 0.0, 1.0)


def _disc_sd(px: np.ndarray, py: np.ndarray, c: np.ndarray, r: float) -> np.ndarray:
    return np.hypot(px - c[0], py - c[1]) - r


def _capsule_sd(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    ab = b - a
    t = np.clip(((px - a[0]) * ab[0] + (py - a[1]) * ab[1]) / float(ab @ ab), 0.0, 1.0)
    return np.hypot(px - a[0] - t * ab[0], py - a[1] - t * ab[1]) - r


def _box_sd(px: np.ndarray, py: np.ndarray, c: np.ndarray, hx: float, hy: float, round_: float) -> np.ndarray:
    qx = np.abs(px - c[0]) - (hx - round_)
    qy = np.abs(py - c[1]) - (hy - round_)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - round_


def _ellipse_sd(px: np.ndarray, py: np.ndarray, c: np.ndarray, a: float, b: float) -> np.ndarray:
    # Scaled radial distance: exact on the boundary, close enough elsewhere for a 1 px edge ramp.
    rho = np.hypot((px - c[0]) / a, (py - c[1]) / b)
    return (rho - 1.0) * min(a, b)


def _arc_sd(
    px: np.ndarray,
    py: np.ndarray,
    c: np.ndarray,
    medial: np.ndarray,
    turn: float,
    radius: float,
    half_t: float,
    start: float,
    stop: float,
) -> np.ndarray:
    """Signed distance to a band of half-width ``half_t`` on the circle (c, radius), from ``start`` to
    ``stop`` radians off ``medial`` (turning by ``turn``), with round caps at both ends."""
    dx, dy = px - c[0], py - c[1]
    # Angle of each pixel off the medial ray, in the hip's turning sense.
    alpha = turn * np.arctan2(medial[0] * dy - medial[1] * dx, medial[0] * dx + medial[1] * dy)
    band = np.abs(np.hypot(dx, dy) - radius) - half_t
    ends = [c + radius * _rotate(medial, turn * a) for a in (start, stop)]
    caps = np.minimum(*(np.hypot(px - e[0], py - e[1]) for e in ends)) - half_t
    return np.where((alpha >= start) & (alpha <= stop), band, caps)


_README = """\
PELVIS PHANTOM - NOT REAL ANATOMY

Every image in this folder is a schematic drawing made by audit.norberg.phantom (version {version}):
femoral heads as discs, acetabula as arcs, a pelvis outline and noise. Nothing measured on these
images is evidence about real canine hips: the phantom is not evidence about real hips. It exists to
test the Norberg-angle geometry, landmark detectors and the metric path, where the true landmarks
and angles must be known exactly.

Made with: xray-audit norberg phantom --n {n} --seed {seed} --size {size}
Case i (0-based) is drawn from numpy.random.default_rng([{seed}, i]); the same command gives the
same files.

Files
  cases.csv      case manifest (case_id, image, prompt, view, group, phantom); group is "normal"
                 when both phantom angles are >= {threshold:g} degrees, else "below-{threshold:g}";
                 phantom is "true" on every row, so reports of runs over these cases say so
  images/        {size}x{size} 16-bit greyscale PNGs; the patient's left is on the image's right
  landmarks.csv  case_id, landmark, x, y: exact pixel coordinates (x = column, y = row, pixel
                 centres at integers, origin top-left) of {side}_head_center, {side}_rim and
                 {side}_head_1..{n_outline} on the femoral-head outline
  angles.csv     case_id, side, angle_deg: the exact Norberg angle of each phantom hip
"""


def write_phantom_cohort(
    out_dir: str | Path, n: int, seed: int, size: int = 256, *, n_outline: int = 8
) -> Path:
    """Write ``n`` phantom cases to ``out_dir`` (which must not exist or be empty); returns its path.

    Built in a temporary folder beside ``out_dir`` and renamed into place, so an interrupted run
    leaves nothing half written.
    """
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    final = Path(out_dir).resolve()
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise FileExistsError(
            f"{final} already exists and is not empty; choose a new --out (a phantom cohort is never "
            "written over existing files)"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        (tmp / "images").mkdir()
        # `phantom` labels every case, so the report and dashboard of any run over them can say so.
        cases = [("case_id", "image", "prompt", "view", "group", "phantom")]
        marks = [("case_id", "landmark", "x", "y")]
        angles = [("case_id", "side", "angle_deg")]
        for i in range(n):
            case_id = f"phantom-{i + 1:04d}"
            ph = make_phantom(np.random.default_rng([seed, i]), size, n_outline=n_outline)
            image = f"images/{case_id}.png"
            write_png(tmp / image, ph.image, bit_depth=16)
            normal = all(a >= NORMAL_THRESHOLD_DEG for a in ph.angles.values())
            prompt = (
                "ventrodorsal pelvis phantom, Norberg angle "
                f"left {ph.angles['left']:.1f} degrees, right {ph.angles['right']:.1f} degrees"
            )
            group = "normal" if normal else f"below-{NORMAL_THRESHOLD_DEG:g}"
            cases.append((case_id, image, prompt, "VD", group, "true"))
            # repr() round-trips a float exactly, so the files keep the phantom's exact geometry.
            marks += [(case_id, name, repr(x), repr(y)) for name, (x, y) in ph.landmarks.items()]
            angles += [(case_id, side, repr(ph.angles[side])) for side in SIDES]
        write_text(tmp / "cases.csv", _csv(cases))
        write_text(tmp / "landmarks.csv", _csv(marks))
        write_text(tmp / "angles.csv", _csv(angles))
        write_text(
            tmp / "README.txt",
            _README.format(
                version=PHANTOM_VERSION,
                n=n,
                seed=seed,
                size=size,
                threshold=NORMAL_THRESHOLD_DEG,
                side="{side}",
                n_outline=n_outline,
            ),
        )
        if final.exists():
            final.rmdir()  # empty, checked above
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _csv(rows: list[tuple]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()
