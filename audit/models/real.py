"""`real`: the reference images themselves, the upper-bound row of every table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from audit.cases import Case
from audit.config_base import ModelSpec, StudySection
from audit.images import XrayImage
from audit.models.base import ModelAdapter, SampleFailure, SampleRequest


class RealAdapter(ModelAdapter):
    self_reference = True

    def samples_per_case(self) -> int:
        return 1  # the reference exists once; repeating it would only inflate N

    def produce(
        self, requests: Sequence[SampleRequest], reference: Callable[[Case], XrayImage]
    ) -> list[Path | SampleFailure]:
        return [r.case.image for r in requests]


def validate_real(spec: ModelSpec, study: StudySection, where: str) -> None:
    return None
