"""``study.json``, the study's description (:class:`StudyInfo`: no model names), which
``reader-study create`` writes and the app, ``status`` and ``export`` read, and the paths it implies
(the database URL, an item's image), and :func:`read_key`, the one reader of the unblinding key. The
study directory's files are declared in :mod:`reader_study.studydir`.

Torch-free, like everything under ``reader_study``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.atomic import write_text
from reader_study.criteria import Criterion
from reader_study.studydir import IMAGE_SUFFIX, IMAGES_DIR, KEY, STUDY_JSON

if TYPE_CHECKING:
    import pandas as pd

STUDY_FORMAT = 1
ITEM_ID = re.compile(r"^[0-9a-f]{16}$")


class StudyError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class StudyInfo:
    title: str
    criteria: tuple[Criterion, ...]
    turing: bool
    comment: bool
    show_prompt: bool
    image_size: int
    database: str  # a SQLAlchemy URL, or a file name relative to the study directory
    created_at: str
    seed: int
    readers: tuple[str, ...]
    n_items: int
    n_calibration: int
    case_reuse: int
    landmarks: str | None = None  # a task of reader_study.placement.TASKS, or no landmarks
    # Where the patient's left hip is shown ("image-right": standard display); names the sides the
    # landmark task asks for. Studies written before this field read as the standard display.
    patient_left: str = "image-right"
    format: int = STUDY_FORMAT

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["criteria"] = [c.to_dict() for c in self.criteria]
        data["readers"] = list(self.readers)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyInfo:
        data = dict(data)
        data["criteria"] = tuple(Criterion.from_dict(c) for c in data["criteria"])
        data["readers"] = tuple(data["readers"])
        return cls(**data)


def database_url(study_dir: Path, info: StudyInfo) -> str:
    if "://" in info.database:
        return info.database
    return f"sqlite:///{(study_dir / info.database).resolve()}"


def load(study_dir: str | Path) -> tuple[Path, StudyInfo]:
    """The study directory and its ``study.json``, or a clear error."""
    root = Path(study_dir)
    path = root / STUDY_JSON
    if not path.is_file():
        raise StudyError(
            f"{root} is not a reader study directory (no {STUDY_JSON}); create one with "
            "`xray-audit reader-study create RUN_DIR --out STUDY_DIR --readers NAME,...`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != STUDY_FORMAT:
            raise StudyError(
                f"{path}: study format {data.get('format')!r}; this xray-audit reads {STUDY_FORMAT}"
            )
        return root, StudyInfo.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise StudyError(f"{path}: unreadable study description ({exc}); was it edited by hand?") from exc


def save(study_dir: Path, info: StudyInfo) -> None:
    write_text(study_dir / STUDY_JSON, info.to_json())


def image_path(study_dir: Path, item_id: str) -> Path:
    # Item ids come from the database, but a path is built from them: refuse anything else.
    if not ITEM_ID.match(item_id):
        raise StudyError(f"invalid item id {item_id!r}")
    return study_dir / IMAGES_DIR / f"{item_id}{IMAGE_SUFFIX}"


def read_key(study_dir: str | Path, purpose: str) -> pd.DataFrame:
    """The study's unblinding key (``key.parquet``), or a StudyError naming the file and the fix.

    ``purpose`` completes "without the key ..." in the error, e.g. "the ratings cannot be unblinded".
    pandas is imported here, not at module level, so the app (which never reads the key) does not
    load it through this module.
    """
    import pandas as pd

    path = Path(study_dir) / KEY
    if not path.is_file():
        raise StudyError(
            f"{path} is missing: without the key {purpose}. It is written only by "
            "`xray-audit reader-study create` and cannot be made again for this study's images: restore "
            f"{KEY} from a backup of the study directory"
        )
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise StudyError(
            f"{path}: unreadable unblinding key ({exc}); restore {KEY} from a backup of the study directory"
        ) from exc
