"""`folder`: pre-generated images found through a path template such as ``gen/xreal/{case_id}.png``."""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Sequence
from pathlib import Path

from audit.cases import Case
from audit.config_base import ConfigError, ModelSpec, StudySection
from audit.images import XrayImage
from audit.models.base import ModelAdapter, SampleFailure, SampleRequest

PLACEHOLDERS = ("case_id", "sample")


@dataclasses.dataclass(frozen=True)
class FolderSpec(ModelSpec):
    # Template relative to the study config; placeholders {case_id} and {sample}.
    path: Path = Path()


def template_fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


def validate_folder(spec: ModelSpec, study: StudySection, where: str) -> None:
    assert isinstance(spec, FolderSpec)
    if spec.path == Path():
        raise ConfigError(f"{where}: missing required key 'path' (e.g. path = \"generated/{{case_id}}.png\")")
    try:
        fields = template_fields(str(spec.path))
    except ValueError as exc:
        raise ConfigError(f"{where}: path template {str(spec.path)!r} is malformed ({exc})") from None
    bad = [f for f in fields if f not in PLACEHOLDERS]
    if bad:
        raise ConfigError(
            f"{where}: path template uses unknown placeholder(s) {', '.join('{' + b + '}' for b in bad)}; "
            f"allowed are {{case_id}} and {{sample}}"
        )
    if "case_id" not in fields:
        raise ConfigError(f"{where}: path template must contain {{case_id}} so each case finds its own image")
    if study.samples_per_case > 1 and "sample" not in fields:
        raise ConfigError(
            f"{where}: samples_per_case = {study.samples_per_case} but the path template has no {{sample}}; "
            "add it, e.g. generated/{case_id}_{sample}.png"
        )


class FolderAdapter(ModelAdapter):
    spec: FolderSpec

    def path_for(self, case: Case, sample: int) -> Path:
        return Path(str(self.spec.path).format(case_id=case.case_id, sample=sample))

    def preflight(self, cases: Sequence[Case]) -> list[tuple[Case, int, str]]:
        missing = []
        for case in cases:
            for s in range(self.samples_per_case()):
                p = self.path_for(case, s)
                if not p.is_file():
                    missing.append((case, s, f"missing image {p}"))
        return missing

    def produce(
        self, requests: Sequence[SampleRequest], reference: Callable[[Case], XrayImage]
    ) -> list[Path | SampleFailure]:
        out: list[Path | SampleFailure] = []
        for r in requests:
            p = self.path_for(r.case, r.sample)
            out.append(p if p.is_file() else SampleFailure(f"missing image {p}"))
        return out
