"""Norberg geometry against hand-computed angles, scipy's least squares, and the phantom's construction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import least_squares

from audit.norberg.geometry import (
    SIDES,
    GeometryError,
    case_angles,
    fit_circle,
    head_outline,
    norberg_angle,
    parse_landmark,
)
from audit.norberg.phantom import ANGLE_RANGE, make_phantom, write_phantom_cohort

S2, S3, S6 = math.sqrt(2.0), math.sqrt(3.0), math.sqrt(6.0)


# --- hand-computed angles --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rim_direction", "expected"),
    [
        ((0.0, -1.0), 90.0),  # straight cranial, perpendicular to the head-head line
        # cos 75° = (√6 - √2)/4, sin 75° = (√6 + √2)/4: 15° lateral of cranial
        (((S6 - S2) / 4.0, -(S6 + S2) / 4.0), 105.0),
        ((0.5, -S3 / 2.0), 120.0),  # cos 120° = -1/2
        ((1.0, -1.0), 135.0),  # the diagonal
        ((-1.0, 0.0), 0.0),  # on the line towards the other head
        ((1.0, 0.0), 180.0),  # straight lateral, away from the other head
    ],
)
def test_hand_computed_angles(rim_direction, expected):
    head = (200.0, 150.0)
    other = (80.0, 150.0)  # medial: the other hip is on the image's left of this (left) hip
    for distance in (1.0, 17.5, 300.0):
        rim = (head[0] + distance * rim_direction[0], head[1] + distance * rim_direction[1])
        assert norberg_angle(head, other, rim) == pytest.approx(expected, abs=1e-9)


def test_matches_the_law_of_cosines_on_random_triangles():
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, o, m = rng.uniform(-500, 500, size=(3, 2))
        a, b, c = np.linalg.norm(o - h), np.linalg.norm(m - h), np.linalg.norm(o - m)
        expected = math.degrees(math.acos((a * a + b * b - c * c) / (2 * a * b)))
        assert norberg_angle(h, o, m) == pytest.approx(expected, abs=1e-9)


def _pelvis(left_angle: float, right_angle: float, n_outline: int = 6) -> dict[str, tuple[float, float]]:
    """Heads 100 px apart on a horizontal line, radius 20, rims 26 px out at the given angles."""
    heads = {"left": np.array([200.0, 120.0]), "right": np.array([100.0, 120.0])}
    points = {}
    for side, theta, medial in (("left", left_angle, -1.0), ("right", right_angle, 1.0)):
        t = math.radians(theta)
        # From the medial ray, turn cranially (towards smaller y) by theta.
        rim = heads[side] + 26.0 * np.array([medial * math.cos(t), -math.sin(t)])
        points[f"{side}_rim"] = tuple(rim)
        for i in range(1, n_outline + 1):
            a = 2 * math.pi * (i - 0.5) / n_outline
            points[head_outline(side, i)] = tuple(heads[side] + 20.0 * np.array([math.cos(a), math.sin(a)]))
    return points


def test_case_angles_from_outline_and_from_centre_agree():
    points = _pelvis(105.0, 92.5)
    fitted = case_angles(points)
    assert fitted == pytest.approx({"left": 105.0, "right": 92.5}, abs=1e-9)
    with_centres = dict(points, left_head_center=(200.0, 120.0), right_head_center=(100.0, 120.0))
    assert case_angles(with_centres) == pytest.approx(fitted, abs=1e-9)
    # A given centre wins over the outline: move it and the angle moves.
    moved = dict(with_centres, left_head_center=(200.0, 110.0))
    assert case_angles(moved)["left"] != pytest.approx(105.0, abs=1e-3)


def test_rotation_and_translation_leave_angles_unchanged():
    points = _pelvis(118.0, 84.0)
    reference = case_angles(points)
    rng = np.random.default_rng(2)
    for _ in range(20):
        phi = rng.uniform(-math.pi, math.pi)
        rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        shift = rng.uniform(-1000, 1000, size=2)
        moved = {k: tuple(rot @ np.asarray(v) + shift) for k, v in points.items()}
        assert case_angles(moved) == pytest.approx(reference, abs=1e-9)


def test_mirroring_swaps_the_sides():
    points = _pelvis(111.0, 96.0)
    swap = {"left": "right", "right": "left"}
    mirrored = {}
    for name, (x, y) in points.items():
        side, rest = name.split("_", 1)
        mirrored[f"{swap[side]}_{rest}"] = (640.0 - x, y)
    assert case_angles(mirrored) == pytest.approx({"left": 96.0, "right": 111.0}, abs=1e-9)


# --- circle fit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cx", "cy", "r", "arc_deg", "n"),
    [
        (0.0, 0.0, 1.0, 360, 3),
        (120.3, 80.2, 37.1, 120, 7),
        (2048.5, 1536.25, 61.0, 60, 5),
        (5.0, -3.0, 0.5, 300, 40),
    ],
)
def test_circle_fit_recovers_exact_circles(cx, cy, r, arc_deg, n):
    t = np.radians(np.linspace(10.0, 10.0 + arc_deg, n, endpoint=arc_deg < 360))
    c = fit_circle(np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)]))
    assert (c.cx, c.cy, c.r) == pytest.approx((cx, cy, r), abs=1e-9)
    assert c.rms < 1e-9


def _scipy_geometric_fit(pts: np.ndarray, start: np.ndarray) -> np.ndarray:
    """MINPACK Levenberg-Marquardt on the geometric residuals; the analytic Jacobian lets it converge
    tightly on the flat cost valleys of short arcs, where finite differences stop early."""

    def residuals(p):
        return np.hypot(pts[:, 0] - p[0], pts[:, 1] - p[1]) - p[2]

    def jacobian(p):
        d = np.hypot(pts[:, 0] - p[0], pts[:, 1] - p[1])
        return np.column_stack([-(pts[:, 0] - p[0]) / d, -(pts[:, 1] - p[1]) / d, -np.ones(len(pts))])

    fit = least_squares(residuals, start, jac=jacobian, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return fit.x


def test_circle_fit_on_noisy_points_matches_scipy_least_squares():
    rng = np.random.default_rng(3)
    for arc in (360.0, 150.0, 70.0):
        t = np.radians(rng.uniform(0.0, arc, size=12))
        truth = np.array([140.0, 95.0, 18.0])
        pts = np.column_stack([truth[0] + truth[2] * np.cos(t), truth[1] + truth[2] * np.sin(t)])
        pts += rng.normal(0.0, 0.4, pts.shape)
        c = fit_circle(pts)
        ref = _scipy_geometric_fit(pts, truth)
        assert (c.cx, c.cy, c.r) == pytest.approx(tuple(ref), abs=1e-6)
        res = np.hypot(pts[:, 0] - ref[0], pts[:, 1] - ref[1]) - ref[2]
        assert c.rms == pytest.approx(float(np.sqrt(np.mean(res**2))), rel=1e-6)
        assert math.dist((c.cx, c.cy), truth[:2]) < 2.0 and abs(c.r - truth[2]) < 2.0


def test_circle_fit_refines_the_biased_algebraic_fit():
    # On a short noisy arc the Kåsa fit alone shrinks the circle; the geometric refinement must not.
    rng = np.random.default_rng(4)
    t = np.radians(np.linspace(0.0, 50.0, 15))
    pts = np.column_stack([50.0 * np.cos(t), 50.0 * np.sin(t)]) + rng.normal(0.0, 0.5, (15, 2))
    a = np.column_stack([pts, np.ones(len(pts))])
    sol = np.linalg.lstsq(a, (pts**2).sum(axis=1), rcond=None)[0]
    kasa_r = math.sqrt(sol[2] + (sol[0] / 2) ** 2 + (sol[1] / 2) ** 2)
    ref = _scipy_geometric_fit(pts, np.array([sol[0] / 2, sol[1] / 2, kasa_r]))
    assert abs(kasa_r - ref[2]) > 0.5  # the two fits really differ here
    assert fit_circle(pts).r == pytest.approx(ref[2], abs=1e-6)


# --- degenerate input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "match"),
    [
        ([(0, 0), (1, 1), (2, 2), (5, 5)], "straight line"),
        ([(3, 4), (3, 4), (3, 4)], "at least 3 distinct points, got 1"),
        ([(0, 0), (0, 0), (1, 1)], "at least 3 distinct points, got 2"),
        ([(0, 0), (1, 0)], "at least 3 distinct points"),
        ([(0, 0), (1, float("nan")), (2, 3)], "finite"),
        ([(0, 0), (1, float("inf")), (2, 3)], "finite"),
        ([(0, 0, 0), (1, 2, 3), (2, 3, 4)], "shape"),
        ([("a", 0), (1, 2), (2, 3)], "numbers"),
    ],
)
def test_circle_fit_rejects_degenerate_points(points, match):
    with pytest.raises(GeometryError, match=match):
        fit_circle(points)


def test_norberg_angle_rejects_degenerate_input():
    with pytest.raises(GeometryError, match="head centres coincide"):
        norberg_angle((10, 10), (10, 10), (20, 0))
    with pytest.raises(GeometryError, match="rim point coincides"):
        norberg_angle((10, 10), (50, 10), (10, 10))
    with pytest.raises(GeometryError, match="finite"):
        norberg_angle((10, float("nan")), (50, 10), (10, 0))


def test_case_angles_explains_what_is_missing():
    points = _pelvis(100.0, 100.0)
    few = {k: v for k, v in points.items() if parse_landmark(k)[:2] != ("left", "outline")}
    few.update({"left_head_1": (180.0, 120.0), "left_head_2": (200.0, 100.0)})
    with pytest.raises(GeometryError, match=r"left hip: no left_head_center and 2 outline point"):
        case_angles(few)
    line = dict(few, left_head_3=(220.0, 80.0))
    with pytest.raises(GeometryError, match="left hip: circle fit: .*straight line"):
        case_angles(line)
    no_rim = {k: v for k, v in points.items() if k != "right_rim"}
    with pytest.raises(GeometryError, match="right hip: no right_rim"):
        case_angles(no_rim)


def test_parse_landmark():
    assert parse_landmark("left_head_center") == ("left", "center", None)
    assert parse_landmark("right_rim") == ("right", "rim", None)
    assert parse_landmark("right_head_12") == ("right", "outline", 12)
    for bad in ("left_head_0", "left_head_01", "middle_rim", "Left_rim", "left_head_"):
        assert parse_landmark(bad) is None


# --- phantom ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("angles", [(80.0, 120.0), (105.0, 105.0), (97.25, 88.5), (60.0, 150.0)])
def test_phantom_angle_is_the_construction_parameter(angles):
    ph = make_phantom(np.random.default_rng(5), angles=angles)
    lm = ph.landmarks
    for side, other, expected in (("left", "right", angles[0]), ("right", "left", angles[1])):
        got = norberg_angle(lm[f"{side}_head_center"], lm[f"{other}_head_center"], lm[f"{side}_rim"])
        assert got == pytest.approx(expected, abs=1e-9)
        assert ph.angles[side] == expected
    outline_only = {k: v for k, v in lm.items() if not k.endswith("_center")}
    assert case_angles(outline_only) == pytest.approx(dict(zip(SIDES, angles)), abs=1e-9)


def test_phantom_landmarks_are_exact_and_inside_the_image():
    for i in range(4):
        ph = make_phantom(np.random.default_rng([6, i]), size=256)
        assert ph.image.shape == (256, 256) and ph.image.dtype == np.float32
        assert 0.0 <= ph.image.min() and ph.image.max() <= 1.0
        assert all(ANGLE_RANGE[0] <= a <= ANGLE_RANGE[1] for a in ph.angles.values())
        assert len([k for k in ph.landmarks if parse_landmark(k)[1] == "outline"]) == 16
        for side in SIDES:
            outline = [v for k, v in ph.landmarks.items() if parse_landmark(k)[:2] == (side, "outline")]
            c = fit_circle(outline)
            assert (c.cx, c.cy) == pytest.approx(ph.landmarks[f"{side}_head_center"], abs=1e-9)
            assert c.r == pytest.approx(ph.head_radii[side], abs=1e-9)
        xy = np.array(list(ph.landmarks.values()))
        assert (xy > 10).all() and (xy < 246).all()
        # The patient's left hip is on the image's right.
        assert ph.landmarks["left_head_center"][0] > ph.landmarks["right_head_center"][0]


def test_phantom_rim_is_where_the_bright_arc_ends():
    for i in range(4):
        ph = make_phantom(np.random.default_rng([7, i]))
        img = ph.image.astype(np.float64)
        lm = ph.landmarks
        for side in SIDES:
            h, m = np.array(lm[f"{side}_head_center"]), np.array(lm[f"{side}_rim"])
            radius = np.linalg.norm(m - h)
            other = np.array(lm[f"{'right' if side == 'left' else 'left'}_head_center"])
            medial = (other - h) / np.linalg.norm(other - h)

            def sample(alpha_deg, _h=h, _m=medial, _r=radius, _side=side, _img=img):
                turn = 1.0 if _side == "left" else -1.0
                a = math.radians(alpha_deg) * turn
                ca, sa = math.cos(a), math.sin(a)
                d = np.array([ca * _m[0] - sa * _m[1], sa * _m[0] + ca * _m[1]])
                x, y = _h + _r * d
                return _img[round(y), round(x)]

            theta = ph.angles[side]
            on_arc = np.mean([sample(theta - k) for k in (6, 9, 12)])
            beyond = np.mean([sample(theta + k) for k in (12, 16, 20)])
            assert on_arc > beyond + 0.05, (i, side, on_arc, beyond)


def test_phantom_is_deterministic_given_the_rng():
    a = make_phantom(np.random.default_rng(8))
    b = make_phantom(np.random.default_rng(8))
    c = make_phantom(np.random.default_rng(9))
    assert np.array_equal(a.image, b.image) and a.landmarks == b.landmarks and a.angles == b.angles
    assert not np.array_equal(a.image, c.image) and a.angles != c.angles


def test_phantom_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"\[60, 150\]"):
        make_phantom(rng, angles=(40.0, 100.0))
    with pytest.raises(ValueError, match="at least 64"):
        make_phantom(rng, size=32)
    with pytest.raises(ValueError, match="n_outline"):
        make_phantom(rng, n_outline=2)
    with pytest.raises(TypeError, match="default_rng"):
        make_phantom(0)


def test_phantom_cohort_files(tmp_path):
    from audit.cases import load_manifest
    from audit.images import read_image
    from audit.norberg.landmarks import read_landmarks

    out = write_phantom_cohort(tmp_path / "ph", n=3, seed=11, size=96)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.txt", "angles.csv", "cases.csv", "images", "landmarks.csv"]
    readme = (out / "README.txt").read_text()
    assert "PHANTOM - NOT REAL ANATOMY" in readme and "not evidence about real hips" in readme
    manifest = load_manifest(out / "cases.csv")
    assert [c.case_id for c in manifest] == ["phantom-0001", "phantom-0002", "phantom-0003"]
    # Every case says it is a phantom, so runs and detectors made from it can say so too.
    from audit.cases import is_phantom

    assert set(manifest.frame["phantom"]) == {"true"} and is_phantom(manifest.frame)
    assert not is_phantom(manifest.frame.drop(columns=["phantom", "prompt"]))
    assert is_phantom(manifest.frame.drop(columns="phantom"))  # cohorts from before the column: the prompt
    for k, case in enumerate(manifest):
        ph = make_phantom(np.random.default_rng([11, k]), size=96)
        read = read_image(case.image)
        assert read.meta.bit_depth == 16
        assert np.abs(read.pixels - ph.image).max() <= 0.5 / 65535 + 1e-7
    landmarks = read_landmarks(out / "landmarks.csv")
    angles = pd.read_csv(out / "angles.csv", dtype={"case_id": str})
    assert list(angles.columns) == ["case_id", "side", "angle_deg"]
    for k, cid in enumerate(sorted(landmarks)):
        ph = make_phantom(np.random.default_rng([11, k]), size=96)
        assert landmarks[cid] == ph.landmarks  # bit-exact through the CSV
        got = angles[angles.case_id == cid].set_index("side").angle_deg.to_dict()
        assert got == ph.angles
    with pytest.raises(FileExistsError, match="not empty"):
        write_phantom_cohort(out, n=1, seed=0, size=96)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
