"""What readers are asked: 1-5 criteria with anchored descriptions, and the optional Turing question.

The built-in criteria follow XReal's blind review (anatomy realism, pathology realism) plus image
quality. A study may add its own from a TOML file::

    [[criteria]]
    name = "bone_texture"
    question = "How realistic is the trabecular bone texture?"
    anchors = ["absent or artificial", "clearly abnormal", "plausible with errors",
               "realistic with subtle flaws", "indistinguishable from real"]

Every score is an integer 1-5 and every anchor is shown, so that readers share one meaning of each
level. ``turing`` (real or synthetic, with a 1-5 confidence) and ``comment`` are not scores; they
are switched on with ``--turing`` and ``--comment``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

TURING = "turing"
FLAG = "flag"
RESERVED = (TURING, FLAG, "comment")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class CriteriaError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Criterion:
    name: str
    question: str
    anchors: tuple[str, str, str, str, str]  # meaning of scores 1..5

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "question": self.question, "anchors": list(self.anchors)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "criteria") -> Criterion:
        unknown = set(data) - {"name", "question", "anchors"}
        if unknown:
            raise CriteriaError(
                f"{where}: unknown key(s) {sorted(unknown)}; allowed: name, question, anchors"
            )
        name, question, anchors = data.get("name"), data.get("question"), data.get("anchors")
        if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED:
            raise CriteriaError(
                f"{where}: name must be lower-case letters, digits and _ (starting with a letter, "
                f"at most 40) and not one of {RESERVED}, got {name!r}"
            )
        if not isinstance(question, str) or not question.strip():
            raise CriteriaError(f"{where} {name!r}: question must be a non-empty string")
        if (
            not isinstance(anchors, list)
            or len(anchors) != 5
            or not all(isinstance(a, str) and a.strip() for a in anchors)
        ):
            raise CriteriaError(
                f"{where} {name!r}: anchors must be a list of 5 non-empty strings (scores 1..5)"
            )
        return cls(name, question.strip(), tuple(a.strip() for a in anchors))  # type: ignore[arg-type]


BUILTIN: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion(
            "anatomy",
            "How realistic is the anatomy?",
            (
                "Clearly unrealistic: missing, duplicated or impossible structures",
                "Major anatomical errors",
                "Plausible overall, with noticeable anatomical errors",
                "Realistic, with subtle imperfections",
                "Indistinguishable from real anatomy",
            ),
        ),
        Criterion(
            "pathology",
            "How realistic is the pathology (or the normal appearance, when no finding is present)?",
            (
                "Clearly unrealistic or implausible finding",
                "Major errors in appearance or location",
                "Plausible, with noticeable errors",
                "Realistic, with subtle imperfections",
                "Indistinguishable from a real finding",
            ),
        ),
        Criterion(
            "quality",
            "What is the overall image quality?",
            (
                "Non-diagnostic",
                "Poor: diagnosis severely limited",
                "Adequate: diagnosis possible with limitations",
                "Good",
                "Excellent",
            ),
        ),
    )
}
DEFAULT_CRITERIA = ("anatomy", "pathology", "quality")

TURING_QUESTION = "Is this image real or synthetic?"
CONFIDENCE_ANCHORS = ("guess", "unsure", "fairly sure", "sure", "certain")


def resolve(names: str | None, criteria_file: Path | None) -> tuple[Criterion, ...]:
    """The criteria of a study: built-ins by name (``--criteria``) then those of ``criteria_file``."""
    custom: dict[str, Criterion] = {}
    if criteria_file is not None:
        try:
            data = tomllib.loads(Path(criteria_file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CriteriaError(f"{criteria_file}: cannot read criteria: {exc}") from exc
        unknown = set(data) - {"criteria"}
        if unknown or not isinstance(data.get("criteria"), list):
            raise CriteriaError(
                f"{criteria_file}: expected only [[criteria]] tables, got keys {sorted(data)}"
            )
        for i, entry in enumerate(data["criteria"], 1):
            c = Criterion.from_dict(entry, f"{criteria_file}: [[criteria]] #{i}")
            if c.name in custom or c.name in BUILTIN:
                raise CriteriaError(f"{criteria_file}: criterion {c.name!r} is defined twice")
            custom[c.name] = c
    if names is None:
        chosen = list(DEFAULT_CRITERIA) if not custom else []
    else:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
    out: list[Criterion] = []
    for name in chosen:
        if name not in BUILTIN:
            hint = " (the Turing question is --turing)" if name == TURING else ""
            raise CriteriaError(
                f"unknown criterion {name!r} in --criteria; built-in: {', '.join(BUILTIN)}{hint}; "
                "define others with --criteria-file"
            )
        out.append(BUILTIN[name])
    out.extend(custom.values())
    if len({c.name for c in out}) != len(out):
        raise CriteriaError("a criterion is listed twice in --criteria")
    return tuple(out)
