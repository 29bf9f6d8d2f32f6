"""Robustness-sweep perturbations: what one experiment axis does to a condition map or a prompt.

A study sweeps a model across axis values (``controlnet[blur=2]``, ``controlnet[dropout=0.5]``, …) to see
how its samples degrade when the conditioning does. This module holds only the pure perturbations; the
config declares the axes and the generation adapters apply them before the pipeline sees the condition.

Condition axes act on a float32 ``(C, H, W)`` map in [0, 1] (C = 1 for a binary/grey mask or sketch,
C > 1 for a per-structure mask with one structure per channel) and return a new array clipped to [0, 1]:

- ``blur``: gaussian blur of each channel, sigma = value px, reflect borders (``scipy.ndimage`` "reflect":
  ``d c b a | a b c d``).
- ``motion_blur``: a line of length = value px through the kernel centre, at an angle drawn with
  ``rng.uniform(0, 180)`` (one draw per call); see :func:`motion_kernel` for how the line is rasterised.
- ``noise``: additive gaussian noise with std = value, ``rng.normal`` with the map's shape, then clipped.
- ``dropout``: structures removed independently with probability value. For C > 1 a structure is a
  channel; for C = 1 it is an 8-connected component of the nonzero pixels. The draws are
  ``rng.random(n_structures)`` (one per channel, empty ones included), so a given input always consumes
  the same random numbers.

Prompt axes act on the case's prompt: ``synonyms`` swaps terms for synonyms from a user CSV
(:func:`load_synonyms`), ``fixed_prompt`` replaces every prompt with one fixed text.

Only the standard library is imported at module level: the config imports this module, and numpy and
scipy.ndimage would add their import time to every CLI start.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

CONDITION_AXES = ("blur", "motion_blur", "noise", "dropout")
PROMPT_AXES = ("synonyms", "fixed_prompt")
AXES = CONDITION_AXES + PROMPT_AXES

SYNONYM_HEADER = ("term", "synonym")
LABEL_CHARS_RE = re.compile(r"[^A-Za-z0-9._=+,-]")

_RANGES = {
    "blur": "a finite number > 0 (gaussian sigma in px)",
    "motion_blur": "an integer >= 2 (line length in px)",
    "noise": "a number in (0, 1] (noise std on the [0, 1] scale)",
    "dropout": "a number in (0, 1] (probability of dropping each structure)",
}


# --------------------------------------------------------------------------------------------------
# condition axes


def check_condition_value(axis: str, value: Any) -> float | int:
    """Validate one condition-axis value; returns it as float (``motion_blur``: int).

    Raises ValueError naming the axis, the value and the valid range, so the config can check a sweep
    at load time, before any model is loaded.
    """
    if axis not in CONDITION_AXES:
        raise ValueError(f"unknown condition axis {axis!r}; expected one of {', '.join(CONDITION_AXES)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # ValueError, not TypeError: a caller (the config) then catches one type for any bad axis value.
        raise ValueError(f"{axis}={value!r} is not a number; {axis} needs {_RANGES[axis]}")  # noqa: TRY004
    v = float(value)
    if axis == "motion_blur":
        ok = math.isfinite(v) and v == int(v) and v >= 2
        if ok:
            return int(v)
    elif axis == "blur":
        ok = math.isfinite(v) and v > 0
    else:  # noise, dropout
        ok = 0 < v <= 1
    if not ok:
        raise ValueError(f"{axis}={value!r} is out of range; {axis} needs {_RANGES[axis]}")
    return v


def perturb_condition(condition: np.ndarray, axis: str, value: float, rng: np.random.Generator) -> np.ndarray:
    """Apply one condition-axis value to a ``(C, H, W)`` float map in [0, 1]; the input is not modified."""
    import numpy as np

    v = check_condition_value(axis, value)
    cond = np.asarray(condition)
    if cond.ndim != 3 or cond.shape[0] < 1 or cond.shape[1] < 1 or cond.shape[2] < 1:
        raise ValueError(f"condition must have shape (C, H, W) with C >= 1, got shape {cond.shape}")
    if not np.issubdtype(cond.dtype, np.floating):
        raise ValueError(f"condition must be a float array in [0, 1], got dtype {cond.dtype}")
    out = np.array(cond, dtype=np.float32, copy=True)
    if not np.isfinite(out).all() or out.min() < 0 or out.max() > 1:
        raise ValueError(
            f"condition values must be finite and in [0, 1], got range [{np.nanmin(out)}, {np.nanmax(out)}]"
        )
    if axis == "blur":
        out = _gaussian_blur(out, v)
    elif axis == "motion_blur":
        out = motion_blur(out, v, float(rng.uniform(0.0, 180.0)))
    elif axis == "noise":
        out = out + rng.normal(0.0, v, size=out.shape)
    else:
        out = _dropout(out, v, rng)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _gaussian_blur(cond: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    # sigma 0 on the channel axis: channels are separate structures and must not bleed into each other.
    return ndimage.gaussian_filter(cond, sigma=(0.0, sigma, sigma), mode="reflect")


def motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    """Normalised line kernel for a motion blur of ``length`` px along ``angle_deg``.

    Rasterisation: the kernel is a line segment of length ``length`` centred on the centre of the
    centre pixel, at ``angle_deg`` counter-clockwise from the row direction as the image is displayed
    (0 = horizontal, 90 = vertical; x goes with the column index, y against the row index). Each pixel
    is a unit square around its centre, and its weight is the exact length of the segment inside that
    square (Liang–Barsky clipping), divided by ``length`` so the kernel sums to 1. The result is
    trimmed to the smallest odd-sized array centred on the kernel centre.

    Consequences: at 0 degrees an odd ``length`` gives a ``(1, length)`` box of ``1/length``, the same as
    ``scipy.ndimage.uniform_filter1d(size=length)`` along rows; an even ``length`` L gives
    ``(1, L + 1)`` with half weights at both ends (the mean of the two box filters of size L that are
    offset by half a pixel either way), so the kernel stays centred. Since the segment is symmetric
    about the centre, ``angle_deg`` and ``angle_deg + 180`` give the same kernel, and every kernel is
    point-symmetric (``k == k[::-1, ::-1]``). Diagonal kernels are anti-aliased, not a staircase.
    """
    import numpy as np

    length = check_condition_value("motion_blur", length)
    if isinstance(angle_deg, bool) or not isinstance(angle_deg, numbers.Real) or not math.isfinite(angle_deg):
        raise ValueError(f"motion blur angle must be a finite number of degrees, got {angle_deg!r}")
    theta = math.radians(float(angle_deg) % 180.0)
    dx, dy = math.cos(theta), math.sin(theta)
    half = length / 2.0
    r = math.floor(half + 0.5)  # no pixel farther than this from the centre can touch the segment
    offsets = np.arange(-r, r + 1, dtype=np.float64)
    # Parameter interval t (position along the segment) inside each column's and each row's slab.
    tx_lo, tx_hi = _slab(offsets, dx)
    # Row index grows downwards while y grows upwards: row i spans y in [-i - 0.5, -i + 0.5].
    ty_lo, ty_hi = _slab(-offsets, dy)
    lo = np.maximum(np.maximum(ty_lo[:, None], tx_lo[None, :]), -half)
    hi = np.minimum(np.minimum(ty_hi[:, None], tx_hi[None, :]), half)
    kernel = np.clip(hi - lo, 0.0, None)
    kernel[kernel < 1e-12 * length] = 0.0  # float dust where the segment grazes a pixel corner
    rows = np.nonzero(kernel.any(axis=1))[0]
    cols = np.nonzero(kernel.any(axis=0))[0]
    rr = int(max(r - rows.min(), rows.max() - r))
    rc = int(max(r - cols.min(), cols.max() - r))
    kernel = kernel[r - rr : r + rr + 1, r - rc : r + rc + 1]
    return kernel / kernel.sum()


def _slab(centres: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray]:
    """t-interval where ``t * d`` lies in ``[c - 0.5, c + 0.5]`` for each centre c (empty: lo > hi)."""
    import numpy as np

    if d == 0.0:
        inside = np.abs(centres) < 0.5
        return np.where(inside, -np.inf, np.inf), np.where(inside, np.inf, -np.inf)
    a, b = (centres - 0.5) / d, (centres + 0.5) / d
    return np.minimum(a, b), np.maximum(a, b)


def motion_blur(condition: np.ndarray, length: int, angle_deg: float) -> np.ndarray:
    """Motion-blur each channel of a ``(C, H, W)`` map with :func:`motion_kernel`, reflect borders.

    This is what the ``motion_blur`` axis applies with ``angle_deg = rng.uniform(0, 180)``; exposed so the
    angle can be fixed. Returns float32, not clipped (a kernel summing to 1 keeps [0, 1] anyway).
    """
    import numpy as np
    from scipy import ndimage

    kernel = motion_kernel(length, angle_deg)
    cond = np.asarray(condition, dtype=np.float32)
    # A point-symmetric kernel makes convolution and correlation the same operation.
    out = [ndimage.convolve(ch.astype(np.float64), kernel, mode="reflect") for ch in cond]
    return np.stack(out).astype(np.float32)


def _dropout(cond: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    import numpy as np

    out = cond.copy()
    if cond.shape[0] > 1:
        # One draw per channel, empty channels included, so the draw count depends only on the shape.
        drop = rng.random(cond.shape[0]) < p
        out[drop] = 0.0
        return out
    from scipy import ndimage

    labels, n = ndimage.label(cond[0] > 0, structure=np.ones((3, 3), dtype=bool))
    drop = rng.random(n) < p
    # Index 0 is the background; label k is component k, decided by draw k - 1.
    out[0][np.concatenate(([False], drop))[labels]] = 0.0
    return out


# --------------------------------------------------------------------------------------------------
# prompt axes


@dataclasses.dataclass(frozen=True)
class SynonymProblem:
    row: int | None  # 1-based data row; None for whole-file problems
    line: int | None  # CSV line, header = line 1
    column: str | None
    value: Any
    message: str

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (line {self.line})" if self.line else ""))
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        loc = ", ".join(where) or "file"
        val = "" if self.value is None else f" [value: {self.value!r}]"
        return f"{loc}: {self.message}{val}"


class SynonymFileError(ValueError):
    """The synonym file has problems; ``problems`` lists every one found in a single pass."""

    def __init__(self, path: Path, problems: Sequence[SynonymProblem]):
        self.path = path
        self.problems = list(problems)
        head = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  … and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{path}: {len(self.problems)} problem(s) in the synonym file:\n{head}{more}")


def _norm(text: str) -> str:
    """Key used to compare terms: case-insensitive, any run of whitespace counts as one space."""
    return " ".join(text.split()).lower()


def load_synonyms(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read a ``term,synonym`` CSV (one pair per row, a term may have many rows).

    Returns ``{term: (synonym, ...)}`` in file order, with terms as first written in the file. The
    mapping is one-way: add the reverse row too to swap in both directions. Every problem in the file
    is reported at once (SynonymFileError), each with its row and CSV line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SynonymFileError(path, [SynonymProblem(None, None, None, None, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SynonymFileError(
            path, [SynonymProblem(None, None, None, None, f"cannot read as UTF-8 text: {exc}")]
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    problems: list[SynonymProblem] = []
    header_fix = "the first line must be the header `term,synonym`"
    try:
        header = next((r for r in reader if r), None)
    except csv.Error as exc:
        raise SynonymFileError(path, [SynonymProblem(None, reader.line_num, None, None, str(exc))]) from None
    if header is None:
        raise SynonymFileError(path, [SynonymProblem(None, None, None, None, f"empty file; {header_fix}")])
    if tuple(c.strip().lower() for c in header) != SYNONYM_HEADER:
        raise SynonymFileError(
            path, [SynonymProblem(None, reader.line_num, None, header, f"missing header; {header_fix}")]
        )
    result: dict[str, list[str]] = {}
    spelled: dict[str, str] = {}  # normalised term -> first spelling
    seen: dict[tuple[str, str], int] = {}
    row = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(SynonymProblem(row + 1, reader.line_num, None, None, f"malformed CSV: {exc}"))
            break
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # blank line
        row += 1
        found = _row_problems(cells, seen)
        problems.extend(SynonymProblem(row, reader.line_num, *p) for p in found)
        if found:
            continue
        term, synonym = (c.strip() for c in cells)
        key, syn_key = _norm(term), _norm(synonym)
        seen[key, syn_key] = row
        spelled.setdefault(key, term)
        result.setdefault(key, []).append(synonym)
    if not problems and not result:
        problems.append(SynonymProblem(None, None, None, None, "no term,synonym rows after the header"))
    if problems:
        raise SynonymFileError(path, problems)
    return {spelled[k]: tuple(v) for k, v in result.items()}


def _row_problems(cells: list[str], seen: Mapping[tuple[str, str], int]) -> list[tuple[str | None, Any, str]]:
    """(column, value, message) for each problem of one data row; ``seen`` maps earlier pairs to rows."""
    if len(cells) != 2:
        return [(None, cells, f"expected 2 cells (term,synonym), got {len(cells)}; quote cells with commas")]
    found: list[tuple[str | None, Any, str]] = []
    for column, value in zip(SYNONYM_HEADER, (c.strip() for c in cells), strict=True):
        if not value:
            found.append((column, None, f"empty {column}; fill it in or delete the row"))
        elif "\n" in value or "\r" in value:
            found.append((column, value, "line break inside a cell; put the text on one line"))
    if found:
        return found
    term, synonym = (c.strip() for c in cells)
    key, syn_key = _norm(term), _norm(synonym)
    if key == syn_key:
        return [("synonym", synonym, f"synonym is the term itself ({term!r}); delete the row")]
    if (key, syn_key) in seen:
        return [(None, [term, synonym], f"duplicate of row {seen[key, syn_key]}; delete one of them")]
    return []


def _match_case(matched: str, replacement: str) -> str:
    """Give the replacement the case of the matched text's first letter.

    A replacement that starts with two capitals (an acronym: "CXR", "PTX") is kept as written.
    """
    if not replacement or (len(replacement) > 1 and replacement[:2].isupper()):
        return replacement
    first = replacement[0].upper() if matched[:1].isupper() else replacement[0].lower()
    return first + replacement[1:]


def swap_synonyms(prompt: str, synonyms: Mapping[str, Sequence[str]], rng: np.random.Generator) -> str:
    """Replace every whole-word occurrence of a term with one of its synonyms.

    Matching is case-insensitive; a multi-word term matches across any whitespace. Hyphenated words
    count as one word ("operative" does not match inside "post-operative"). At each position the
    longest term wins, and the text is scanned once, so inserted synonyms are never replaced again.
    Each occurrence draws its synonym with ``rng.integers(n_synonyms)``, in order of appearance.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"swap_synonyms needs a text prompt, got {prompt!r}")  # noqa: TRY004 - as above
    options: dict[str, tuple[str, ...]] = {}
    for term, syns in synonyms.items():
        key = _norm(term)
        if not key:
            raise ValueError("synonym mapping has an empty term")
        if key in options:
            raise ValueError(f"synonym mapping has the term {term!r} twice (terms are case-insensitive)")
        if isinstance(syns, str) or not syns:
            raise ValueError(f"synonyms of {term!r} must be a non-empty list of strings, got {syns!r}")
        options[key] = tuple(syns)
    if not options:
        return prompt
    terms = sorted(options, key=len, reverse=True)
    alternatives = "|".join(r"\s+".join(re.escape(w) for w in t.split()) for t in terms)
    pattern = re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)

    def replace(match: re.Match[str]) -> str:
        choices = options[_norm(match.group(0))]
        return _match_case(match.group(0), choices[int(rng.integers(len(choices)))])

    return pattern.sub(replace, prompt)


def perturb_prompt(
    prompt: str,
    axis: str,
    value: str,
    rng: np.random.Generator,
    synonyms: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Apply one prompt-axis value.

    ``synonyms``: swap terms using ``synonyms`` (load it once with :func:`load_synonyms`); when it is
    None, ``value`` is taken as the synonym file's path and loaded. ``fixed_prompt``: return ``value``,
    whatever the case's prompt is (an empty string is allowed: the unconditional prompt).
    """
    if axis == "fixed_prompt":
        if not isinstance(value, str):
            raise ValueError(f"fixed_prompt={value!r} is not text; fixed_prompt needs a string")
        return value
    if axis == "synonyms":
        if synonyms is None:
            if not value:
                raise ValueError("synonyms axis needs a synonym file path as its value or a loaded mapping")
            synonyms = load_synonyms(value)
        return swap_synonyms(prompt, synonyms, rng)
    raise ValueError(f"unknown prompt axis {axis!r}; expected one of {', '.join(PROMPT_AXES)}")


def axis_label(axis: str, value: Any) -> str:
    """Text for a model-row name such as ``controlnet[blur=2]``; only ``[A-Za-z0-9._=+,-]`` appear.

    Numbers use ``format(v, "g")`` (6 significant digits); ``fixed_prompt`` shows the first 8 hex of the
    prompt's UTF-8 sha256, ``synonyms`` the synonym file's stem (other characters become ``-``; an empty
    value, a mapping given in code, is labelled plain ``synonyms``).
    """
    if axis in CONDITION_AXES:
        return f"{axis}={format(check_condition_value(axis, value), 'g')}"
    if axis == "fixed_prompt":
        if not isinstance(value, str):
            raise ValueError(f"fixed_prompt={value!r} is not text; fixed_prompt needs a string")
        return f"fixed_prompt={hashlib.sha256(value.encode('utf-8')).hexdigest()[:8]}"
    if axis == "synonyms":
        if value is None or str(value) == "":
            return "synonyms"
        stem = LABEL_CHARS_RE.sub("-", Path(value).stem)
        return f"synonyms={stem}" if stem else "synonyms"
    raise ValueError(f"unknown axis {axis!r}; expected one of {', '.join(AXES)}")
