"""Norberg-angle geometry on a ventrodorsal hip radiograph (numpy only).

The Norberg angle of one hip is the angle at its femoral-head centre between the line to the other
femoral-head centre and the line to the craniolateral acetabular rim point of the same hip. 105° or
more is the usual threshold for a normal hip (``NORMAL_THRESHOLD_DEG`` of
:mod:`audit.metrics.functional.norberg`); smaller angles mean a shallower acetabular cover.

A head centre is either annotated directly (``left_head_center``) or fitted to three or more points
clicked on the femoral-head outline (``left_head_1`` … ``left_head_n``) by a least-squares circle
fit: the algebraic (Kåsa) fit, which is linear and needs no start, refined by Gauss-Newton on the
geometric residuals ``|p_i - c| - r`` (the Kåsa fit is biased towards small circles when the points
cover a short arc; the geometric fit is not).

Coordinates are image pixels, ``x`` the column and ``y`` the row (origin top-left, ``y`` down). The
angle itself does not depend on the convention: it is invariant under rotation, translation and
mirroring (a mirror swaps which hip is which).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PATIENT_LEFT_ON",
    "SIDES",
    "Circle",
    "GeometryError",
    "case_angles",
    "fit_circle",
    "head_center",
    "head_outline",
    "locate_head_center",
    "norberg_angle",
    "other_side",
    "outline_points",
    "parse_landmark",
    "rim",
]

SIDES: tuple[str, str] = ("left", "right")
# Standard radiographic display: the patient's left hip appears on the image's right (larger x).
# The alternative, for images displayed mirrored, is "image-left".
PATIENT_LEFT_ON: tuple[str, str] = ("image-right", "image-left")

_OUTLINE = re.compile(r"^(left|right)_head_([1-9][0-9]*)$")
# Relative size of the second singular value of the centred points below which they lie on a line.
_COLLINEAR_RTOL = 1e-9
# Distances below this fraction of the coordinate scale count as zero (coincident points).
_COINCIDENT_RTOL = 1e-12


class GeometryError(ValueError):
    """Landmarks from which no angle or circle can be computed (degenerate or incomplete input)."""


@dataclass(frozen=True)
class Circle:
    cx: float
    cy: float
    r: float
    rms: float  # root-mean-square geometric residual |p_i - c| - r of the fitted points, pixels


def head_center(side: str) -> str:
    return f"{_side(side)}_head_center"


def rim(side: str) -> str:
    return f"{_side(side)}_rim"


def head_outline(side: str, i: int) -> str:
    if i < 1:
        raise ValueError(f"outline points are numbered from 1, got {i}")
    return f"{_side(side)}_head_{i}"


def other_side(side: str) -> str:
    return SIDES[1 - SIDES.index(_side(side))]


def parse_landmark(name: str) -> tuple[str, str, int | None] | None:
    """``(side, kind, index)`` of a landmark name, kind one of ``center``, ``rim``, ``outline``
    (index only for outline points); None for a name that is not a landmark."""
    for side in SIDES:
        if name == head_center(side):
            return side, "center", None
        if name == rim(side):
            return side, "rim", None
    m = _OUTLINE.match(name)
    if m:
        return m.group(1), "outline", int(m.group(2))
    return None


def _side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return side


def _points(points: object, what: str) -> np.ndarray:
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise GeometryError(f"{what}: coordinates must be numbers, got {points!r}") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise GeometryError(f"{what}: expected a sequence of (x, y) points, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise GeometryError(
            f"{what}: coordinates must be finite numbers, got NaN or infinity in {arr.tolist()}"
        )
    return arr


def _point(p: object, what: str) -> np.ndarray:
    return _points([p], what)[0]


def fit_circle(points: Sequence[Sequence[float]] | np.ndarray) -> Circle:
    """Least-squares circle through >= 3 distinct, non-collinear points (Kåsa, then Gauss-Newton)."""
    pts = _points(points, "circle fit")
    distinct = np.unique(pts, axis=0)
    if len(distinct) < 3:
        raise GeometryError(
            f"circle fit: needs at least 3 distinct points, got {len(distinct)} distinct of {len(pts)}; "
            "click at least three separate points on the femoral-head outline"
        )
    # Centre and scale first so the normal equations are well conditioned wherever the head lies.
    mean = pts.mean(axis=0)
    scale = float(np.sqrt(((pts - mean) ** 2).sum(axis=1).mean()))
    q = (pts - mean) / scale
    sv = np.linalg.svd(q, compute_uv=False)
    if sv[1] <= _COLLINEAR_RTOL * sv[0]:
        raise GeometryError(
            f"circle fit: the {len(pts)} points lie on a straight line, so no circle fits them; "
            "spread the outline points around the femoral head"
        )
    a = np.column_stack([q, np.ones(len(q))])
    sol, *_ = np.linalg.lstsq(a, (q**2).sum(axis=1), rcond=None)
    cx, cy = sol[0] / 2.0, sol[1] / 2.0
    params = np.array([cx, cy, math.sqrt(max(sol[2] + cx * cx + cy * cy, 0.0))])
    params = _gauss_newton(q, params)
    res = np.hypot(q[:, 0] - params[0], q[:, 1] - params[1]) - params[2]
    return Circle(
        cx=float(params[0] * scale + mean[0]),
        cy=float(params[1] * scale + mean[1]),
        r=float(params[2] * scale),
        rms=float(np.sqrt(np.mean(res**2)) * scale),
    )


def _gauss_newton(q: np.ndarray, params: np.ndarray, max_iter: int = 100) -> np.ndarray:
    def cost(p: np.ndarray) -> float:
        return float(((np.hypot(q[:, 0] - p[0], q[:, 1] - p[1]) - p[2]) ** 2).sum())

    best = cost(params)
    for _ in range(max_iter):
        dx, dy = q[:, 0] - params[0], q[:, 1] - params[1]
        d = np.maximum(np.hypot(dx, dy), 1e-300)
        jac = np.column_stack([-dx / d, -dy / d, -np.ones(len(q))])
        step, *_ = np.linalg.lstsq(jac, -(d - params[2]), rcond=None)
        # Step halving keeps every accepted iterate at or below the previous cost.
        for _ in range(30):
            trial = params + step
            c = cost(trial)
            if c <= best:
                break
            step = step / 2.0
        else:
            return params
        params, best = trial, c
        if np.abs(step).max() <= 1e-15 * (1.0 + np.abs(params).max()):
            break
    return params


def norberg_angle(head: Sequence[float], other_head: Sequence[float], rim: Sequence[float]) -> float:
    """Degrees in [0, 180] at ``head`` between the rays to ``other_head`` and to ``rim``."""
    h = _point(head, "head centre")
    o = _point(other_head, "other head centre")
    m = _point(rim, "rim point")
    scale = max(1.0, float(np.abs(np.stack([h, o, m])).max()))
    u, v = o - h, m - h
    nu, nv = math.hypot(*u), math.hypot(*v)
    if nu <= _COINCIDENT_RTOL * scale:
        raise GeometryError(
            f"the two femoral-head centres coincide at {h.tolist()}; the angle needs two distinct hips"
        )
    if nv <= _COINCIDENT_RTOL * scale:
        raise GeometryError(
            f"the rim point coincides with its femoral-head centre at {h.tolist()}; "
            "the rim is the craniolateral edge of the acetabulum, not the head centre"
        )
    # atan2 of |cross| and dot stays accurate near 0° and 180°, where acos loses digits.
    cross = u[0] * v[1] - u[1] * v[0]
    dot = u[0] * v[0] + u[1] * v[1]
    return math.degrees(math.atan2(abs(cross), dot))


def outline_points(points: Mapping[str, Sequence[float]], side: str) -> list[tuple[float, float]]:
    """The ``{side}_head_{i}`` points, ordered by ``i``."""
    found = []
    for name, p in points.items():
        parsed = parse_landmark(name)
        if parsed is not None and parsed[0] == side and parsed[1] == "outline":
            found.append((parsed[2], (float(p[0]), float(p[1]))))
    return [p for _, p in sorted(found)]


def locate_head_center(points: Mapping[str, Sequence[float]], side: str) -> tuple[float, float]:
    """The annotated ``{side}_head_center``, else the centre of the circle fitted to the outline."""
    name = head_center(side)
    if name in points:
        return tuple(float(v) for v in _point(points[name], name))  # type: ignore[return-value]
    outline = outline_points(points, side)
    if len(outline) < 3:
        raise GeometryError(
            f"{side} hip: no {name} and {len(outline)} outline point(s) ({side}_head_1, …); "
            f"give {name} or at least 3 points on the femoral-head outline"
        )
    try:
        circle = fit_circle(outline)
    except GeometryError as exc:
        raise GeometryError(f"{side} hip: {exc}") from None
    return circle.cx, circle.cy


def case_angles(points: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """``{"left": degrees, "right": degrees}`` for one case's landmarks (name -> (x, y))."""
    centres = {side: locate_head_center(points, side) for side in SIDES}
    angles = {}
    for side in SIDES:
        if rim(side) not in points:
            raise GeometryError(f"{side} hip: no {rim(side)}; mark the craniolateral acetabular rim point")
        try:
            angles[side] = norberg_angle(centres[side], centres[other_side(side)], points[rim(side)])
        except GeometryError as exc:
            raise GeometryError(f"{side} hip: {exc}") from None
    return angles
