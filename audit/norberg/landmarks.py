"""Landmark annotation files for Norberg angles: reading, validation, angles per case and side.

A landmark file is CSV or JSON with one row per landmark and the columns ``case_id, landmark, x,
y`` (other columns, such as an annotation tool's or the reader study export's, are ignored): pixel
coordinates with the origin at the top-left, ``x`` the column
and ``y`` the row, pixel centres at integers (so a point inside a ``W``-wide image has
``-0.5 <= x <= W - 0.5``). JSON is a list of objects with those four keys
(``[{"case_id": "007", "landmark": "left_rim", "x": 181.5, "y": 97.0}, …]``); give ``case_id`` as a
string there, since the number 7 cannot stay "007". CSV cells are read as text, so ids keep their
leading zeros.

Landmark names (see :mod:`audit.norberg.geometry`): per side (``left``, ``right``: the patient's
sides) a rim point ``{side}_rim`` and either the head centre ``{side}_head_center`` or three or more
outline points ``{side}_head_1`` … ``{side}_head_n``, to which a circle is fitted. With both, the
annotated centre is used.

:func:`validate_landmarks` reports every problem of a file in one pass, each with its row (and CSV
line), column and value; :func:`read_landmarks` raises :class:`LandmarkError` listing them all.
Left and right swapped is detected from the geometry: a rim nearer the other hip's head centre than
its own, or the head centres on the wrong halves of the image under the display convention
(``patient_left``: ``"image-right"``, the standard radiographic display, or ``"image-left"``).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from audit.cases import Problem
from audit.norberg.geometry import (
    PATIENT_LEFT_ON,
    SIDES,
    GeometryError,
    case_angles,
    fit_circle,
    head_center,
    locate_head_center,
    other_side,
    outline_points,
    parse_landmark,
    rim,
)

__all__ = [
    "ANGLE_COLUMNS",
    "COLUMNS",
    "FORMATS",
    "LandmarkError",
    "angles_frame",
    "image_sizes_from_cases",
    "read_landmarks",
    "validate_landmarks",
]

log = logging.getLogger(__name__)

COLUMNS = ("case_id", "landmark", "x", "y")
# Columns of `xray-audit reader-study export`'s landmarks.csv that tell its rows of one case apart.
_EXPORT_KEYS = ("reader", "model", "sample", "read_number", "item")
ANGLE_COLUMNS = ("case_id", "side", "angle_deg")
FORMATS = {".csv": "csv", ".json": "json"}

Landmarks = dict[str, dict[str, tuple[float, float]]]


class LandmarkError(ValueError):
    """The landmark file has problems; ``problems`` lists every one found in a single pass."""

    def __init__(self, path: Path, problems: Sequence[Problem]):
        self.path = path
        self.problems = list(problems)
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{path}: {len(self.problems)} problem(s) in the landmark file:\n{body}")


def read_landmarks(
    path: str | Path,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    *,
    patient_left: str = PATIENT_LEFT_ON[0],
) -> Landmarks:
    """``case_id -> landmark -> (x, y)``; raises :class:`LandmarkError` listing every problem.

    ``image_sizes``: ``case_id -> (H, W)``; when given, points outside their image and cases
    missing from it are problems too.
    """
    path = Path(path)
    landmarks, problems = validate_landmarks(path, image_sizes, patient_left=patient_left)
    if problems:
        raise LandmarkError(path, problems)
    return landmarks


def validate_landmarks(
    path: str | Path,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    *,
    patient_left: str = PATIENT_LEFT_ON[0],
) -> tuple[Landmarks, list[Problem]]:
    """Every problem of the file in one pass, and the landmarks of the rows without one."""
    if patient_left not in PATIENT_LEFT_ON:
        raise ValueError(f"patient_left must be one of {', '.join(PATIENT_LEFT_ON)}, got {patient_left!r}")
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        return {}, [Problem(None, None, path.suffix, "unknown landmark file format; use .csv or .json")]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: landmark file not found")
    problems: list[Problem] = []
    is_csv = fmt == "csv"

    def problem(i: int | None, column: str | None, value: Any, msg: str) -> None:
        line = i + 2 if (is_csv and i is not None) else None
        problems.append(Problem(None if i is None else i + 1, column, value, msg, line))

    rows = _read_rows(path, fmt, problem)
    if rows is None:
        return {}, problems
    columns = list(rows.columns)
    missing = [c for c in COLUMNS if c not in columns]
    unknown = [c for c in columns if c not in COLUMNS]
    if missing:
        msg = f"missing column(s) {', '.join(missing)}; the columns are {', '.join(COLUMNS)}"
        problem(None, None, columns, msg)
    if unknown and not missing:
        log.info(
            "%s: ignoring column(s) %s (a landmark file is read by %s)",
            path,
            ", ".join(unknown),
            ", ".join(COLUMNS),
        )
    if missing:
        return {}, problems
    if len(rows) == 0:
        problem(None, None, None, "the file has no landmark rows")
        return {}, problems

    landmarks: Landmarks = {}
    invalid: dict[str, set[str]] = {}
    row_of: dict[tuple[str, str], int] = {}  # (case_id, landmark) -> 0-based row
    duplicates = 0
    for i, rec in enumerate(rows.itertuples(index=False)):
        cid = _text(rec.case_id)
        name = _text(rec.landmark)
        ok = True
        if cid is None:
            problem(i, "case_id", rec.case_id, "empty case_id")
            ok = False
        if name is None:
            problem(i, "landmark", rec.landmark, "empty landmark name")
            ok = False
        elif parse_landmark(name) is None:
            problem(i, "landmark", name, _unknown_name(name))
            ok = False
        xy = []
        for column in ("x", "y"):
            value, msg = _coordinate(getattr(rec, column))
            if msg:
                problem(i, column, getattr(rec, column), msg)
                ok = False
            xy.append(value)
        if not ok:
            if cid is not None and name is not None:
                invalid.setdefault(cid, set()).add(name)
            continue
        key = (cid, name)
        if key in row_of:
            first = row_of[key]
            where = f"row {first + 1}" + (f", line {first + 2}" if is_csv else "")
            problem(
                i, "landmark", name, f"duplicate {name} for case {cid!r} (first given in {where}); keep one"
            )
            duplicates += 1
            continue
        row_of[key] = i
        landmarks.setdefault(cid, {})[name] = (xy[0], xy[1])

    if duplicates and unknown:
        # Said once for the file: the likely cause of every duplicate row is a column not read here.
        problem(None, None, None, _duplicate_hint(duplicates, unknown))
    if image_sizes is not None:
        _check_bounds(landmarks, image_sizes, row_of, problem)
    for cid, points in landmarks.items():
        _check_case(cid, points, invalid.get(cid, set()), row_of, patient_left, problem)
    problems.sort(key=lambda p: p.row or 0)  # stable: file-level and case-level first, then by row
    return landmarks, problems


def _read_rows(path: Path, fmt: str, problem: Any) -> pd.DataFrame | None:
    try:
        if fmt == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        data = json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - parsers raise many types; all mean "cannot parse this file"
        problem(None, None, None, f"cannot parse as {fmt}: {exc}")
        return None
    if not isinstance(data, list):
        problem(
            None,
            None,
            type(data).__name__,
            'a JSON landmark file is a list of objects: [{"case_id": …, "landmark": …, "x": …, "y": …}, …]',
        )
        return None
    records = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            problem(i, None, item, "each JSON list item must be an object with case_id, landmark, x, y")
            records.append({})
        else:
            records.append(item)
    columns = list(dict.fromkeys(k for r in records for k in r))
    frame = pd.DataFrame.from_records(records, columns=columns)
    # Missing keys become None (not NaN) so they read as empty rather than as a number.
    return frame.astype(object).where(frame.notna(), None)


def _duplicate_hint(duplicates: int, extra: Sequence[str]) -> str:
    keys = [c for c in _EXPORT_KEYS if c in extra]
    if keys:
        return (
            f"{duplicates} duplicate landmark row(s): the file's {', '.join(keys)} column(s) are not read here, "
            "so this looks like a reader study export with several readers, models or reads: keep one reader's "
            "first reads of one model, or give the whole export to `xray-audit norberg evaluate RUN_DIR "
            "--reader-landmarks`"
        )
    return (
        f"{duplicates} duplicate landmark row(s): the file's other column(s) {', '.join(extra)} are not read "
        "here; keep one row per case and landmark"
    )


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _coordinate(value: Any) -> tuple[float, str | None]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan, "empty coordinate; give the pixel position as a number"
    if isinstance(value, bool):
        return math.nan, f"coordinate must be a number, got {value!r}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan, "coordinate is not a number; give the pixel position like 123.5"
    if not math.isfinite(number):
        return math.nan, "coordinate is NaN or infinite; give a finite pixel position or drop the landmark"
    return number, None


def _unknown_name(name: str) -> str:
    known = [f"{s}_{k}" for s in SIDES for k in ("head_center", "rim", "head_1", "head_2", "head_3")]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown landmark name{hint}; use left_/right_ with head_center, rim or head_1 … head_n "
        "(outline points)"
    )


def _check_bounds(
    landmarks: Landmarks,
    image_sizes: Mapping[str, tuple[int, int]],
    row_of: Mapping[tuple[str, str], int],
    problem: Any,
) -> None:
    for cid, points in landmarks.items():
        if cid not in image_sizes:
            problem(
                None,
                "case_id",
                cid,
                f"case {cid!r} is not in the case manifest, so its image size is unknown; add the case "
                "or fix the case_id",
            )
            continue
        height, width = image_sizes[cid]
        for name, (x, y) in points.items():
            for column, value, extent in (("x", x, width), ("y", y, height)):
                if not -0.5 <= value <= extent - 0.5:
                    problem(
                        row_of[(cid, name)],
                        column,
                        value,
                        f"{name} of case {cid!r} is outside its {width}×{height} px image "
                        f"({column} must lie in [-0.5, {extent - 0.5:g}]); check the case_id, the image "
                        "and whether x and y are swapped",
                    )


def _check_case(
    cid: str,
    points: Mapping[str, tuple[float, float]],
    invalid: set[str],
    row_of: Mapping[tuple[str, str], int],
    patient_left: str,
    problem: Any,
) -> None:
    """Completeness and left/right consistency of one case. ``invalid``: names given on rows that
    already have a problem, so they are not reported missing as well."""
    centres: dict[str, tuple[float, float]] = {}
    for side in SIDES:
        centre = head_center(side)
        outline = outline_points(points, side)
        bad_outline = any(_is_outline(n, side) for n in invalid)
        if centre in points:
            centres[side] = locate_head_center(points, side)
        elif centre in invalid:
            pass
        elif len(outline) < 3:
            if not bad_outline:
                problem(
                    None,
                    None,
                    None,
                    f"case {cid!r}: the {side} hip has no {centre} and {len(outline)} outline point(s); "
                    f"add {centre} or at least 3 points {side}_head_1, {side}_head_2, … on the "
                    "femoral-head outline",
                )
        else:
            try:
                fit_circle(outline)
            except GeometryError as exc:
                first = min(row_of[(cid, n)] for n in points if _is_outline(n, side))
                problem(first, "landmark", f"{side}_head_*", f"case {cid!r}, {side} hip: {exc}")
            else:
                centres[side] = locate_head_center(points, side)
        if rim(side) not in points and rim(side) not in invalid:
            problem(
                None,
                None,
                None,
                f"case {cid!r}: the {side} hip has no {rim(side)}; add the craniolateral acetabular "
                "rim point",
            )
    if len(centres) < 2:
        return
    left, right = centres["left"], centres["right"]
    if math.dist(left, right) == 0.0:
        problem(
            None,
            None,
            None,
            f"case {cid!r}: the left and right femoral-head centres coincide at {left}; check the landmarks",
        )
        return
    left_larger_x = patient_left == PATIENT_LEFT_ON[0]
    if (left[0] > right[0]) != left_larger_x:
        other_convention = PATIENT_LEFT_ON[1] if left_larger_x else PATIENT_LEFT_ON[0]
        problem(
            row_of.get((cid, head_center("left"))),
            "x",
            left[0],
            f"case {cid!r}: probable left/right swap: the left femoral-head centre (x={left[0]:.1f}) has a "
            f"{'smaller' if left_larger_x else 'larger'} x than the right one (x={right[0]:.1f}), but "
            f"with the patient's left on the image's {'right' if left_larger_x else 'left'} "
            f"(--patient-left {patient_left}) it must have the {'larger' if left_larger_x else 'smaller'}; "
            "swap the left_/right_ prefixes of this case's landmarks, or, if the images are displayed "
            f"mirrored, pass --patient-left {other_convention}",
        )
    for side in SIDES:
        if rim(side) not in points:
            continue
        m = points[rim(side)]
        own, other = math.dist(m, centres[side]), math.dist(m, centres[other_side(side)])
        if other < own:
            problem(
                row_of[(cid, rim(side))],
                "landmark",
                rim(side),
                f"case {cid!r}: probable left/right swap: {rim(side)} is nearer the {other_side(side)} "
                f"femoral-head centre ({other:.1f} px) than the {side} one ({own:.1f} px); check whether "
                f"{rim('left')} and {rim('right')} are exchanged",
            )


def _is_outline(name: str, side: str) -> bool:
    parsed = parse_landmark(name)
    return parsed is not None and parsed[:2] == (side, "outline")


def angles_frame(landmarks: Mapping[str, Mapping[str, Sequence[float]]]) -> pd.DataFrame:
    """Columns exactly ``case_id, side, angle_deg``, one row per case and side, sorted."""
    rows = []
    for cid in sorted(landmarks):
        try:
            angles = case_angles(landmarks[cid])
        except GeometryError as exc:
            raise GeometryError(f"case {cid!r}: {exc}") from None
        rows += [(cid, side, angles[side]) for side in SIDES]
    return pd.DataFrame(rows, columns=list(ANGLE_COLUMNS)).astype(
        {"case_id": str, "side": str, "angle_deg": "float64"}
    )


def image_sizes_from_cases(manifest: str | Path) -> dict[str, tuple[int, int]]:
    """``case_id -> (H, W)`` from each image's header (no pixels decoded) of a case manifest."""
    from audit import images
    from audit.cases import load_manifest

    loaded = load_manifest(manifest, check_pixels=False)
    return {case.case_id: images.image_size(case.image) for case in loaded}
