"""Every built-in model kind, listed explicitly in one place, and the metadata lookup of every metric
(the metrics themselves are listed in :mod:`audit.metrics.catalogue`).

Later kinds (diffusers pipelines, user callables) are added here without touching the runner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from audit.config_base import ModelSpec, StudySection
from audit.metrics import catalogue
from audit.models.base import ModelAdapter
from audit.models.degrade import DegradeAdapter, DegradeSpec, validate_degrade
from audit.models.diffusion import (
    ControlNetAdapter,
    ControlNetSpec,
    Img2ImgAdapter,
    Img2ImgSpec,
    InpaintAdapter,
    InpaintSpec,
    Text2ImgAdapter,
    Text2ImgSpec,
    resolve_diffusers,
    validate_diffusers,
)
from audit.models.folder import FolderAdapter, FolderSpec, validate_folder
from audit.models.real import RealAdapter, validate_real
from audit.models.sweep import expand_sweep
from audit.models.training_copy import (
    TrainingCopyAdapter,
    TrainingCopySpec,
    resolve_training_copy,
    validate_training_copy,
)
from audit.models.user_callable import PythonAdapter, PythonSpec, resolve_python, validate_python


@dataclasses.dataclass(frozen=True)
class ModelKind:
    name: str
    spec: type[ModelSpec]
    adapter: type[ModelAdapter]
    validate: Callable[[ModelSpec, StudySection, str], None]
    description: str
    # Resolve relative local paths against the config file's directory (hub ids stay as they are).
    resolve: Callable[[ModelSpec, Path], ModelSpec] = lambda spec, base_dir: spec
    # One spec in, the model rows it stands for out (a robustness sweep adds one row per axis value).
    expand: Callable[[ModelSpec], list[ModelSpec]] = lambda spec: [spec]


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
        ModelKind(
            "training-copy",
            TrainingCopySpec,
            TrainingCopyAdapter,
            validate_training_copy,
            "sanity baseline: a training image (chosen by the seed) plus noise of std level",
            resolve_training_copy,
        ),
        *(
            ModelKind(name, spec, adapter, validate_diffusers, description, resolve_diffusers, expand_sweep)
            for name, spec, adapter, description in (
                ("diffusers-text2img", Text2ImgSpec, Text2ImgAdapter, "text-to-image diffusers pipeline"),
                (
                    "diffusers-controlnet",
                    ControlNetSpec,
                    ControlNetAdapter,
                    "base pipeline + ControlNet(s) on case conditions",
                ),
                (
                    "diffusers-img2img",
                    Img2ImgSpec,
                    Img2ImgAdapter,
                    "SDEdit from a condition image (t0 = strength)",
                ),
                (
                    "diffusers-inpaint",
                    InpaintSpec,
                    InpaintAdapter,
                    "pathology infusion into the reference inside pathology_mask",
                ),
            )
        ),
        ModelKind(
            "python",
            PythonSpec,
            PythonAdapter,
            validate_python,
            "a user callable package.module:function",
            resolve_python,
            expand_sweep,
        ),
    )
}


def model_kinds() -> dict[str, ModelKind]:
    return MODEL_KINDS


def build_adapter(spec: ModelSpec, study: StudySection) -> ModelAdapter:
    return MODEL_KINDS[spec.kind].adapter(spec, study)


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """Registered metadata of one metric name (per-class names such as ``pathology_auc:Nodule``
    share their metric's), with the unit at the run's ``pixel_range``."""

    name: str
    family: str  # "pixel" | "clinical" | "distribution" | "norberg"
    # None where neither direction is better (Bland–Altman bias and limits: ideal 0).
    higher_is_better: bool | None
    aggregation: str  # "per_sample_mean" | "per_sample_median" | "distribution"
    unit: str
    description: str


def metric_info(name: str, pixel_range: float = 1.0) -> MetricInfo:
    """Metadata of any built-in metric, from :mod:`audit.metrics.catalogue`."""
    m = catalogue.spec(name)
    return MetricInfo(
        name, m.family, m.higher_is_better, m.aggregation, m.unit_at(pixel_range), m.description
    )
