"""Case manifests: one row per real reference case, the unit every metric is paired on.

A manifest is CSV, Parquet or JSONL with at least ``case_id`` and ``image`` (a path relative to the
manifest). Optional columns with meaning to the suite are listed in ``OPTIONAL_COLUMNS``; any
other column is kept and travels into the run directory untouched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from audit import images

REQUIRED_COLUMNS = ("case_id", "image")
PATH_COLUMNS = ("image", "anatomy_mask", "pathology_mask", "control")
MASK_COLUMNS = ("anatomy_mask", "pathology_mask")
OPTIONAL_COLUMNS = ("prompt", "labels", "anatomy_mask", "pathology_mask", "control", "view", "group")
LABEL_SEPARATOR = ";"
# A manifest of drawn phantoms (``xray-audit norberg phantom``) says so in this column, so every run,
# report and detector made from it can carry the label.
PHANTOM_COLUMN = "phantom"
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class ManifestError(ValueError):
    """The manifest has problems; ``problems`` lists every one found in a single pass."""

    def __init__(self, path: Path, problems: Sequence[Problem]):
        self.path = path
        self.problems = list(problems)
        head = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  … and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(
            f"{path}: {len(self.problems)} problem(s) in the case manifest:\n{head}{more}\n"
            f"Run `xray-audit cases validate {path}` to list them all."
        )


@dataclasses.dataclass(frozen=True)
class Problem:
    row: int | None  # 1-based data row; None for whole-file problems
    column: str | None
    value: Any
    message: str
    line: int | None = None  # CSV line number, header = line 1

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (line {self.line})" if self.line else ""))
        if self.column is not None:
            where.append(f"column {self.column!r}")
        loc = ", ".join(where) or "file"
        val = "" if self.value is None else f" [value: {self.value!r}]"
        return f"{loc}: {self.message}{val}"


@dataclasses.dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    row: int
    fields: Mapping[str, Any]

    def path(self, column: str) -> Path | None:
        value = self.fields.get(column)
        return Path(value) if is_present(value) else None

    def labels(self) -> tuple[str, ...]:
        value = self.fields.get("labels")
        return parse_labels(value) if is_present(value) else ()


@dataclasses.dataclass(frozen=True)
class Manifest:
    path: Path
    frame: pd.DataFrame  # path columns resolved to absolute strings

    def __len__(self) -> int:
        return len(self.frame)

    def __iter__(self) -> Iterator[Case]:
        cols = list(self.frame.columns)
        for i, values in enumerate(self.frame.itertuples(index=False, name=None)):
            fields = dict(zip(cols, values, strict=True))
            yield Case(case_id=str(fields["case_id"]), image=Path(fields["image"]), row=i + 1, fields=fields)

    def cases(self) -> list[Case]:
        return list(self)


def is_present(value: Any) -> bool:
    """False for a missing manifest cell: None, NaN or blank text."""
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return not (isinstance(value, str) and value.strip() == "")


def parse_labels(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(value).split(LABEL_SEPARATOR))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read the raw table. CSV cells stay strings so ids like '007' or 'NA' survive intact."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ManifestError(
            path, [Problem(None, None, path.suffix, "unknown manifest format; use .csv, .parquet or .jsonl")]
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: case manifest not found")
    try:
        if fmt == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True, dtype=False)
    except Exception as exc:  # noqa: BLE001 - pandas raises many types; all mean "cannot parse this file"
        raise ManifestError(path, [Problem(None, None, None, f"cannot parse as {fmt}: {exc}")]) from None
    return frame


def validate(
    path: str | Path, check_pixels: bool = True, progress: bool = False
) -> tuple[pd.DataFrame, list[Problem]]:
    """Check the manifest and every file it names; returns the resolved frame and all problems."""
    path = Path(path).resolve()
    frame = read_manifest(path)
    is_csv = FORMATS[path.suffix.lower()] == "csv"
    problems: list[Problem] = []

    def problem(i: int | None, column: str | None, value: Any, msg: str) -> None:
        line = i + 2 if (is_csv and i is not None) else None
        problems.append(Problem(None if i is None else i + 1, column, value, msg, line))

    missing_cols = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing_cols:
        problem(None, None, list(frame.columns), f"missing required column(s) {', '.join(missing_cols)}")
        return frame, problems
    if len(frame) == 0:
        problem(None, None, None, "the manifest has no rows")
        return frame, problems

    frame = frame.copy()
    frame["case_id"] = [_case_id(v) for v in frame["case_id"]]
    first_seen: dict[str, int] = {}
    for i, cid in enumerate(frame["case_id"]):
        if cid is None:
            problem(i, "case_id", frame["case_id"].iloc[i], "empty case_id")
        elif cid in first_seen:
            problem(i, "case_id", cid, f"duplicate case_id (first seen in row {first_seen[cid] + 1})")
        else:
            first_seen[cid] = i

    base = path.parent
    for column in PATH_COLUMNS:
        if column in frame.columns:
            frame[column] = [_resolve(v, base) for v in frame[column]]

    if "labels" in frame.columns:
        for i, value in enumerate(frame["labels"]):
            msg = _label_problem(value)
            if msg:
                problem(i, "labels", value, msg)

    rows = range(len(frame))
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="checking cases", unit="case")
    for i in rows:
        image_shape = None
        for column in PATH_COLUMNS:
            if column not in frame.columns:
                continue
            value = frame[column].iloc[i]
            if not is_present(value):
                if column == "image":
                    problem(i, column, None, "empty image path")
                continue
            file = Path(value)
            if not file.is_file():
                problem(i, column, str(file), "file not found")
                continue
            try:
                if column == "image" and check_pixels:
                    image_shape = images.read_image(file).pixels.shape
                elif column == "image":
                    image_shape = images.image_size(file)
                elif column in MASK_COLUMNS:
                    shape = images.read_mask(file).shape[:2] if check_pixels else images.image_size(file)
                    if image_shape is not None and tuple(shape) != tuple(image_shape):
                        problem(
                            i,
                            column,
                            str(file),
                            f"mask is {shape[0]}×{shape[1]} px but its image is {image_shape[0]}×{image_shape[1]} px",
                        )
                else:
                    images.image_size(file)
            except images.ImageReadError as exc:
                problem(i, column, str(file), f"unreadable: {exc}")
    problems.sort(key=lambda p: p.row or 0)  # stable: file-level first, then by row
    return frame, problems


def is_phantom(frame: pd.DataFrame | None) -> bool:
    """True when a manifest (or a run's ``cases.parquet``) holds phantom cases: a true
    :data:`PHANTOM_COLUMN`, or, for phantom cohorts written before that column existed, "pelvis
    phantom" in a prompt."""
    if frame is None or frame.empty:
        return False
    if PHANTOM_COLUMN in frame.columns:
        flags = frame[PHANTOM_COLUMN].astype(str).str.strip().str.lower()
        if flags.isin(("true", "1", "yes")).any():
            return True
    if "prompt" in frame.columns:
        return bool(frame["prompt"].astype(str).str.contains("pelvis phantom", case=False, regex=False).any())
    return False


def _case_id(value: Any) -> str | None:
    if not is_present(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _resolve(value: Any, base: Path) -> str | None:
    if not is_present(value):
        return None
    p = Path(str(value).strip()).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _label_problem(value: Any) -> str | None:
    if not is_present(value):
        return "empty labels; write 'No Finding' for a case without pathology"
    if not isinstance(value, str):
        return f"labels must be text (names joined by '{LABEL_SEPARATOR}'), got {type(value).__name__}"
    parts = parse_labels(value)
    if any(p == "" for p in parts):
        return f"malformed labels: an empty name between '{LABEL_SEPARATOR}' separators"
    if len(set(parts)) != len(parts):
        return "malformed labels: a name appears twice"
    return None


def load_manifest(path: str | Path, check_pixels: bool = True, progress: bool = False) -> Manifest:
    """Validate and load; raises ManifestError listing every problem if there is any."""
    path = Path(path).resolve()
    frame, problems = validate(path, check_pixels=check_pixels, progress=progress)
    if problems:
        raise ManifestError(path, problems)
    return Manifest(path=path, frame=frame.reset_index(drop=True))
