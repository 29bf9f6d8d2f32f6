"""Expert landmark placement in the reader study (``reader-study create --landmarks norberg``).

Task ``norberg``: on every item the reader clicks, for each hip, three or more points on the
femoral-head outline (``{side}_head_1`` … ``{side}_head_n``, at most :data:`MAX_OUTLINE`) and then the
craniolateral acetabular rim point (``{side}_rim``): the names of annotation files
(:mod:`audit.norberg.geometry`), so a reader's export goes straight to ``xray-audit norberg angles``.
Sides are the patient's. The study shows images in the standard radiographic display, the patient's
left on the image's right (:data:`PATIENT_LEFT_ON`); the hip on the image's left is asked first.

What the reader sees while placing: every point as a marker (circles for outline points, a
square for the rim; orange the patient's right, blue the left) and, from three outline points on,
the circle fitted to them, so that a badly placed point shows as a circle that misses the head.
The Norberg angle itself is never shown, nor any line from which it could be read: a reader who
sees the angle while placing could nudge the rim towards or away from the 105° threshold.

Coordinate frames (``x`` the column, ``y`` the row, origin top-left, pixel centres at integers,
as in the annotation files):

display
    CSS pixels of the image as the browser shows it (what streamlit-image-coordinates returns:
    the click's ``x, y`` and the shown ``width, height``), origin at the image's top-left corner.
    Chromium reports whole CSS pixels, so a click is placed to within one of them; zooming in
    makes that finer (a 512 px study image shown 560 px wide at 4x: 0.23 stored pixels).
view
    The PNG the app sent (:class:`ViewBox`): the stored image's zoom/pan crop, resampled like
    :func:`reader_study.rendering.view`, then enlarged pixel for pixel to ``out`` pixels square
    (:func:`drawn_size`) and drawn on.
stored
    The study's ``size`` x ``size`` image (``images/<item>.png``). The database holds this frame:
    the app knows nothing of the source image, whose size could tell models apart.
original
    The source image: the stored image is its centred square ``crop_side`` pixels wide at
    ``(crop_left, crop_top)``, resampled to ``size`` (recorded in ``key.parquet``). ``export``
    maps to this frame.

Every resampling here is PIL's, which lines up pixel *edges*: a continuous position ``u``
(``0`` at the left edge of the first pixel) becomes ``u * new / old``. With pixel centres at
integers a position ``x`` is ``u - 0.5``, hence the ``+ 0.5`` / ``- 0.5`` around every scaling.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from audit.norberg.geometry import PATIENT_LEFT_ON, SIDES, GeometryError, fit_circle, head_outline, rim

NORBERG = "norberg"
TASKS = (NORBERG,)
MIN_OUTLINE = 3
MAX_OUTLINE = 12
MIN_DRAWN = 512
# Okabe-Ito orange and sky blue: told apart with every common colour-vision deficiency.
COLOURS = {"right": (230, 159, 0), "left": (86, 180, 233)}
CENTRE_DOT = (255, 255, 255)  # the exact clicked pixel, inside each marker


class PlacementError(ValueError):
    pass


def screen_sides(patient_left_on: str = PATIENT_LEFT_ON[0]) -> tuple[str, str]:
    """The patient's sides in the order they appear from the image's left to its right."""
    if patient_left_on not in PATIENT_LEFT_ON:
        raise PlacementError(f"patient_left_on must be one of {PATIENT_LEFT_ON}, got {patient_left_on!r}")
    return ("right", "left") if patient_left_on == "image-right" else ("left", "right")


def image_side(side: str, patient_left_on: str = PATIENT_LEFT_ON[0]) -> str:
    """Where the patient's ``side`` is on the screen: ``"left"`` or ``"right"``."""
    return "left" if screen_sides(patient_left_on)[0] == side else "right"


def _parse(name: str) -> tuple[str, int | None] | None:
    """``(side, outline index)``, index None for the rim; None for any other name."""
    for side in SIDES:
        if name == rim(side):
            return side, None
        prefix = f"{side}_head_"
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            i = int(name[len(prefix) :])
            if 1 <= i <= MAX_OUTLINE and name == head_outline(side, i):
                return side, i
    return None


def side_of(name: str) -> str:
    """The patient's side a landmark belongs to."""
    parsed = _parse(name)
    if parsed is None:
        raise PlacementError(f"unknown landmark {name!r}")
    return parsed[0]


def sort_key(name: str) -> tuple[int, int, int, str]:
    """Sides in :data:`SIDES` order, outline points by number, then the rim; anything else last."""
    parsed = _parse(name)
    if parsed is None:
        return (len(SIDES), 0, 0, name)
    side, i = parsed
    return (SIDES.index(side), 0 if i is not None else 1, i or 0, name)


def _outline_numbers(names: Any, side: str) -> list[int]:
    out = []
    for name in names:
        parsed = _parse(name)
        if parsed is not None and parsed[0] == side and parsed[1] is not None:
            out.append(parsed[1])
    return sorted(out)


def check_points(points: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Valid landmark names with finite coordinates, as floats; anything else is a PlacementError."""
    out = {}
    for name, xy in points.items():
        if not isinstance(name, str) or _parse(name) is None:
            raise PlacementError(
                f"unknown landmark {name!r}: expected left_head_1..{MAX_OUTLINE}, "
                f"right_head_1..{MAX_OUTLINE}, left_rim or right_rim"
            )
        try:
            x, y = (float(v) for v in xy)
        except (TypeError, ValueError):
            raise PlacementError(f"{name}: expected two numbers (x, y), got {xy!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise PlacementError(f"{name}: coordinates must be finite, got ({x}, {y})")
        out[name] = (x, y)
    for side in SIDES:
        numbers = _outline_numbers(out, side)
        if numbers != list(range(1, len(numbers) + 1)):
            raise PlacementError(f"{side} outline points must be numbered 1..n without gaps, got {numbers}")
    return out


def problems(points: Mapping[str, tuple[float, float]], order: tuple[str, str] | None = None) -> list[str]:
    """What is missing before ``points`` is a complete set, in words (sides in screen order);
    empty when complete."""
    out = []
    for side in order or screen_sides():
        n = len(_outline_numbers(points, side))
        if n < MIN_OUTLINE:
            out.append(f"{MIN_OUTLINE - n} more outline point(s) of the patient's {side} femoral head")
        if rim(side) not in points:
            out.append(f"the patient's {side} acetabular rim point")
    return out


# --- the placement state ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    name: str  # the landmark to click next
    side: str
    index: int | None  # outline point number; None for the rim


@dataclasses.dataclass(frozen=True)
class Placement:
    """The points placed so far on one item (stored-image frame), in the order they were placed.

    Immutable: every action returns a new Placement, so the app keeps one in its session state and
    the tests can drive the same functions without a browser.
    """

    points: tuple[tuple[str, float, float], ...] = ()
    outline_done: frozenset[str] = frozenset()  # sides whose outline the reader has finished
    order: tuple[str, str] = screen_sides()
    last_click: tuple[Any, ...] | None = None  # the last click handled (the component repeats it)

    @classmethod
    def from_points(
        cls, points: Mapping[str, tuple[float, float]], order: tuple[str, str] = screen_sides()
    ) -> Placement:
        """A placement resumed from stored points: each side's outline, then its rim, in screen order."""
        checked = check_points(points)
        names = sorted(checked, key=lambda n: (order.index(side_of(n)), sort_key(n)))
        done = frozenset(side for side in SIDES if rim(side) in checked)
        return cls(tuple((n, *checked[n]) for n in names), done, order)

    def as_dict(self) -> dict[str, tuple[float, float]]:
        return {name: (x, y) for name, x, y in self.points}

    def outline(self, side: str) -> list[tuple[float, float]]:
        """The side's outline points, by number."""
        found = []
        for name, x, y in self.points:
            parsed = _parse(name)
            if parsed is not None and parsed[0] == side and parsed[1] is not None:
                found.append((parsed[1], (x, y)))
        return [xy for _, xy in sorted(found)]

    def next_step(self) -> Step | None:
        """The landmark to click next; None when both hips are complete."""
        have = self.as_dict()
        for side in self.order:
            n = len(self.outline(side))
            if side not in self.outline_done and n < MAX_OUTLINE:
                return Step(head_outline(side, n + 1), side, n + 1)
            if rim(side) not in have:
                return Step(rim(side), side, None)
        return None

    def can_finish_outline(self) -> bool:
        step = self.next_step()
        return step is not None and step.index is not None and step.index > MIN_OUTLINE

    def finish_outline(self) -> Placement:
        """The reader has enough outline points on the current side: on to its rim point."""
        step = self.next_step()
        if step is None or not self.can_finish_outline():
            raise PlacementError(f"an outline needs at least {MIN_OUTLINE} points before its rim point")
        return dataclasses.replace(self, outline_done=self.outline_done | {step.side})

    def place(self, x: float, y: float) -> Placement:
        step = self.next_step()
        if step is None:
            raise PlacementError("every landmark is placed: undo or clear a side to move one")
        return dataclasses.replace(self, points=(*self.points, (step.name, float(x), float(y))))

    def undo(self) -> Placement:
        """Remove the last point placed (a finished outline reopens when one of its points goes)."""
        if not self.points:
            return self
        name = self.points[-1][0]
        done = self.outline_done - {side_of(name)} if not name.endswith("_rim") else self.outline_done
        return dataclasses.replace(self, points=self.points[:-1], outline_done=done)

    def clear(self, side: str) -> Placement:
        kept = tuple(p for p in self.points if side_of(p[0]) != side)
        return dataclasses.replace(self, points=kept, outline_done=self.outline_done - {side})


def instruction(step: Step | None, patient_left_on: str = PATIENT_LEFT_ON[0]) -> str:
    """The next step in words, naming the side both ways (the patient's, and where it is on screen)."""
    if step is None:
        return "All landmarks are placed. Check them, then answer and submit."
    screen = image_side(step.side, patient_left_on)
    where = f"the patient's **{step.side.upper()}** hip, on the image's {screen}"
    if step.index is None:
        return f"Next: the **craniolateral acetabular rim point** of {where}."
    if step.index <= MIN_OUTLINE:
        return f"Next: femoral-head outline point **{step.index}** (of at least {MIN_OUTLINE}) of {where}."
    return (
        f"Next: femoral-head outline point **{step.index}** of {where}, or press **Outline done** "
        "to go on to its rim point."
    )


# --- coordinates --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ViewBox:
    """The part of the stored image a view shows and the pixels it is shown at."""

    top: int
    left: int
    height: int
    width: int
    out: int  # the PNG sent is out x out pixels

    def to_stored(self, u: float, v: float) -> tuple[float, float]:
        """Edge-based view position (0..out) to the stored frame (pixel centres at integers)."""
        return self.left + u * self.width / self.out - 0.5, self.top + v * self.height / self.out - 0.5

    def from_stored(self, x: float, y: float) -> tuple[float, float]:
        """Stored frame to the view PNG's own pixel frame (pixel centres at integers)."""
        return (
            (x + 0.5 - self.left) * self.out / self.width - 0.5,
            (y + 0.5 - self.top) * self.out / self.height - 0.5,
        )


def display_to_stored(click: Mapping[str, Any], box: ViewBox) -> tuple[float, float] | None:
    """The stored-frame point of a click (``x, y`` in the drawn ``width, height``); None when the
    click is not on the image."""
    try:
        x, y, width, height = (float(click[k]) for k in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError):
        return None
    if not (width > 0 and height > 0 and 0 <= x <= width and 0 <= y <= height):
        return None
    return box.to_stored(x * box.out / width, y * box.out / height)


def stored_to_original(
    x: np.ndarray | float, y: np.ndarray | float, size: int, crop_left: Any, crop_top: Any, crop_side: Any
) -> tuple[Any, Any]:
    """Stored frame (``size`` px square) to the source image (vectorised over rows of the key)."""
    scale = np.asarray(crop_side, dtype=np.float64) / size
    return (
        np.asarray(crop_left, dtype=np.float64) + (np.asarray(x, dtype=np.float64) + 0.5) * scale - 0.5,
        np.asarray(crop_top, dtype=np.float64) + (np.asarray(y, dtype=np.float64) + 0.5) * scale - 0.5,
    )


def click_identity(click: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    if not isinstance(click, Mapping):
        return None
    return tuple(click.get(k) for k in ("unix_time", "x", "y", "width", "height"))


def handle_click(placement: Placement, click: Mapping[str, Any] | None, box: ViewBox) -> Placement:
    """``placement`` after the component reported ``click`` on a view of ``box``.

    The component keeps returning its last click on every rerun, so a click already handled (same
    time and position) changes nothing; neither does a click off the image or after the last point.
    """
    ident = click_identity(click)
    if ident is None or ident == placement.last_click:
        return placement
    seen = dataclasses.replace(placement, last_click=ident)
    point = display_to_stored(click, box)  # type: ignore[arg-type]  # a Mapping, or ident is None
    if point is None or placement.next_step() is None:
        return seen
    return seen.place(*point)


# --- drawing ------------------------------------------------------------------------------------


def drawn_size(view_size: int) -> int:
    """The size a view is drawn at: enlarged by a whole factor (pixel for pixel, nothing resampled)
    to :data:`MIN_DRAWN` or more, so that markers are fine lines even on a small study image."""
    return view_size * max(1, math.ceil(MIN_DRAWN / view_size))


def draw(view: np.ndarray, placement: Placement, box: ViewBox) -> np.ndarray:
    """The view (floats in [0, 1]) as ``box.out`` square RGB uint8, with the points and fitted
    circles; ``box.out`` is a whole multiple of the view's size (:func:`drawn_size`)."""
    factor, rest = divmod(box.out, view.shape[0])
    if rest or view.shape[0] != view.shape[1]:
        raise PlacementError(f"cannot draw a {view.shape} view at {box.out} pixels square")
    grey = np.rint(np.clip(view, 0.0, 1.0) * 255).astype(np.uint8)
    grey = np.repeat(np.repeat(grey, factor, axis=0), factor, axis=1)
    img = Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB")
    pen = ImageDraw.Draw(img)
    scale = box.out / box.width
    r = max(4.0, box.out / 110)
    for side in SIDES:
        colour = COLOURS[side]
        outline = placement.outline(side)
        if len(outline) >= MIN_OUTLINE:
            try:
                c = fit_circle(outline)
            except GeometryError:
                c = None  # three points on a line: no circle yet
            if c is not None and c.r * scale < 4 * box.out:
                cx, cy = box.from_stored(c.cx, c.cy)
                rr = c.r * scale
                pen.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], outline=colour, width=1)
    for name, x, y in placement.points:
        vx, vy = box.from_stored(x, y)
        bounds = [vx - r, vy - r, vx + r, vy + r]
        colour = COLOURS[side_of(name)]
        if name.endswith("_rim"):
            pen.rectangle(bounds, outline=colour, width=2)
        else:
            pen.ellipse(bounds, outline=colour, width=2)
        pen.point((vx, vy), fill=CENTRE_DOT)
    return np.asarray(img)
