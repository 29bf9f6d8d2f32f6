"""Every built-in model kind and metric, listed explicitly in one place.

Later kinds (diffusers pipelines, user callables) are added here without touching the runner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from audit.config import ModelSpec, StudySection
from audit.models.base import ModelAdapter
from audit.models.degrade import DegradeAdapter, DegradeSpec, validate_degrade
from audit.models.folder import FolderAdapter, FolderSpec, validate_folder
from audit.models.real import RealAdapter, validate_real


@dataclasses.dataclass(frozen=True)
class ModelKind:
    name: str
    spec: type[ModelSpec]
    adapter: type[ModelAdapter]
    validate: Callable[[ModelSpec, StudySection, str], None]
    description: str


MODEL_KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind("real", ModelSpec, RealAdapter, validate_real, "the reference images (upper-bound row)"),
        ModelKind(
            "folder", FolderSpec, FolderAdapter, validate_folder, "pre-generated images via a path template"
        ),
        ModelKind(
            "degrade",
            DegradeSpec,
            DegradeAdapter,
            validate_degrade,
            "deterministic damage of the reference (sanity baseline)",
        ),
    )
}


def model_kinds() -> dict[str, ModelKind]:
    return MODEL_KINDS


def build_adapter(spec: ModelSpec, study: StudySection) -> ModelAdapter:
    return MODEL_KINDS[spec.kind].adapter(spec, study)


def pixel_metrics():
    """The pixel metric registry (imports torch, so it is loaded on demand)."""
    from audit.metrics.pixel import PIXEL_METRICS

    return PIXEL_METRICS
