"""`python`: a user's own generator, ``package.module:function``, for research code that is not a
diffusers pipeline.

The contract (documented in the README)::

    def generate(cases: list[Case], generators: list[torch.Generator], *, device: torch.device,
                 dtype: torch.dtype, **options) -> list[image]

``cases`` has one entry per requested sample (a case repeats when ``samples_per_case > 1``);
``generators`` are seeded from (study seed, model, case_id, sample), one per sample, on ``device``.
The callable must draw all randomness from them, so a sample does not depend on its batch.
``options`` come from the model's ``options = {...}`` table and must be keyword parameters of the
callable (checked before any work, so a typo is an error). It returns one image per sample: a 2-D
float array in [0, 1], uint8/uint16, ``(H, W, 1|3)``, a torch tensor or a PIL image. Float outputs
are written as 16-bit PNGs, integer ones at their own depth. If the callable's module defines
``release()``, it is called when the runner is done with the model (to free cached networks).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from audit import images
from audit.cases import MASK_COLUMNS, PATH_COLUMNS, Case
from audit.config_base import ConfigError, ModelSpec, StudySection
from audit.images import XrayImage
from audit.models.base import ModelAdapter, ModelLoadError, SampleFailure, SampleRequest
from audit.models.generation import (
    GenerationSpec,
    GenerationStats,
    Timer,
    free_memory,
    output_problem,
    resolve_device,
    to_grey,
    torch_dtype,
    validate_generation,
)
from audit.models.sweep import (
    Perturbation,
    SweepSpec,
    base_name,
    check_sweep,
    resolve_perturbation,
)


@dataclasses.dataclass(frozen=True)
class PythonSpec(GenerationSpec):
    callable: str = ""  # "package.module:function"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Expected output size; None accepts any size (the runner then records whatever comes back).
    height: int | None = None
    width: int | None = None
    # Robustness sweeps (audit.models.sweep): the case column a condition axis perturbs. The callable
    # gets cases whose `condition` file is the perturbed map (an 8-bit PNG) or whose prompt is perturbed.
    condition: str = "anatomy_mask"
    perturbation: str = ""  # one sweep axis value, "axis=value"; set by [models.sweep] or by hand
    sweep: SweepSpec | None = None

    has_condition: ClassVar[bool] = True


def validate_python(spec: ModelSpec, study: StudySection, where: str) -> None:
    assert isinstance(spec, PythonSpec)
    validate_generation(spec, where)
    if spec.condition not in PATH_COLUMNS:
        raise ConfigError(
            f"{where}: condition {spec.condition!r} is not an image column of the case manifest; use one of "
            f"{', '.join(PATH_COLUMNS)}"
        )
    check_sweep(spec, where)
    module, sep, attr = spec.callable.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f'{where}: callable must be "package.module:function", got {spec.callable!r}')
    if (spec.height is None) != (spec.width is None):
        raise ConfigError(f"{where}: give both height and width, or neither")


def load_callable(target: str) -> Callable[..., Any]:
    """Import ``package.module:attr.path``; errors say what is missing and how to fix it."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"callable {target!r}: cannot import module {module_name!r} ({exc}); install the package that "
            "provides it, or add its directory to PYTHONPATH"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelLoadError(
                f"callable {target!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise ModelLoadError(f"callable {target!r} is a {type(obj).__name__}, not a function")
    return obj


def check_signature(fn: Callable[..., Any], options: dict[str, Any], target: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and C extensions: the call itself will tell
    try:
        sig.bind([], [], device=None, dtype=None, **options)
    except TypeError as exc:
        params = [p for p in sig.parameters if p not in ("device", "dtype")][2:]
        raise ModelLoadError(
            f"callable {target!r} cannot be called as fn(cases, generators, device=..., dtype=..., "
            f"**options) with options {sorted(options)} ({exc}); its extra parameters are {params}"
        ) from None


class PythonAdapter(ModelAdapter):
    spec: PythonSpec
    generates = True
    loads_model = True

    def __init__(self, spec: ModelSpec, study: StudySection):
        super().__init__(spec, study)
        self._fn: Callable[..., Any] | None = None
        self._device: Any = None
        self._stats = GenerationStats()
        self._perturbation = Perturbation(self.spec.perturbation)

    def preflight(self, cases: Sequence[Case]) -> list[tuple[Case, int, str]]:
        fn = load_callable(self.spec.callable)
        check_signature(fn, self.spec.options, self.spec.callable)
        if not self._perturbation.on_condition:
            return []
        column = self.spec.condition
        reason = (
            f"column {column!r} (the condition the {self._perturbation.axis} perturbation changes) is empty or "
            "missing for this case"
        )
        return [
            (c, s, reason) for c in cases if c.path(column) is None for s in range(self.samples_per_case())
        ]

    def seed_name(self) -> str:
        # A sweep row starts from its base model's seeds, so only the perturbation differs.
        return base_name(self.spec.name, self.spec.perturbation)

    def batch_size(self) -> int:
        return self.spec.batch_size

    def _load(self) -> Callable[..., Any]:
        if self._fn is None:
            timer = Timer()
            fn = load_callable(self.spec.callable)
            check_signature(fn, self.spec.options, self.spec.callable)
            self._device = resolve_device(self.spec)
            self._stats.start(self._device)
            self._stats.dtype = self.spec.dtype
            self._fn = fn
            self._stats.load_seconds = timer.seconds
        return self._fn

    def produce(
        self, requests: Sequence[SampleRequest], reference: Callable[[Case], XrayImage]
    ) -> list[Path | SampleFailure]:
        import torch

        fn = self._load()
        timer = Timer()
        gens = [torch.Generator(self._device).manual_seed(r.seed) for r in requests]
        with tempfile.TemporaryDirectory(prefix="xray-audit-sweep-") as tmp, torch.inference_mode():
            cases = [self._perturbed(r, Path(tmp) / str(i)) for i, r in enumerate(requests)]
            outputs = fn(cases, gens, device=self._device, dtype=torch_dtype(self.spec), **self.spec.options)
        outputs = list(outputs)
        if len(outputs) != len(requests):
            raise ModelLoadError(
                f"callable {self.spec.callable!r} returned {len(outputs)} images for {len(requests)} samples; "
                "it must return exactly one per (case, generator) pair, in order"
            )
        expected = None if self.spec.height is None else (self.spec.height, self.spec.width)
        out: list[Path | SampleFailure] = []
        for req, image in zip(requests, outputs, strict=True):
            try:
                integer = _integer_depth(image)
                pixels = to_grey(image)
            except ValueError as exc:
                out.append(SampleFailure(f"unusable output of {self.spec.callable}: {exc}"))
                continue
            problem = output_problem(pixels, expected)
            if problem:
                out.append(SampleFailure(problem))
                continue
            images.write_png(req.dest, np.clip(pixels, 0.0, 1.0), bit_depth=integer or 16)
            out.append(req.dest)
        self._stats.seconds += timer.seconds
        self._stats.images += len(requests)
        return out

    def _perturbed(self, req: SampleRequest, folder: Path) -> Case:
        """The case as the callable sees it: with this row's perturbation of its prompt or condition
        map (the same draws as a diffusers model's), the map handed over as an 8-bit PNG in ``folder``."""
        pert = self._perturbation
        fields = dict(req.case.fields)
        if pert.on_prompt:
            fields["prompt"] = pert.prompt(str(fields.get("prompt") or ""), req.seed)
        elif pert.on_condition:
            column = self.spec.condition
            path = req.case.path(column)
            assert path is not None  # preflight rejects cases without it
            if column in MASK_COLUMNS:
                cond = np.moveaxis(images.read_mask(path), -1, 0).astype(np.float32)
            else:
                cond = images.read_image(path).pixels[None].astype(np.float32)
            out = pert.condition(cond, req.seed)
            folder.mkdir(parents=True, exist_ok=True)
            file = folder / f"{column}.png"
            images.write_png(file, out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1), bit_depth=8)
            fields[column] = str(file)
        else:
            return req.case
        return dataclasses.replace(req.case, fields=fields)

    def sample_info(self, request: SampleRequest) -> dict[str, Any]:
        return {"dtype": self.spec.dtype, "weights": f"python:{self.spec.callable}"}

    def release(self) -> None:
        if self._fn is not None:
            module = importlib.import_module(self.spec.callable.partition(":")[0])
            release = getattr(module, "release", None)
            if callable(release):
                release()
        self._fn = None
        free_memory()

    def stats(self) -> dict[str, Any]:
        return self._stats.as_dict()


def _integer_depth(image: Any) -> int | None:
    dtype = getattr(image, "dtype", None)
    if dtype == np.uint8:
        return 8
    if dtype == np.uint16:
        return 16
    return None


def resolve_python(spec: ModelSpec, base_dir: Path) -> ModelSpec:
    """A relative synonyms file of ``perturbation`` resolves against the config's directory."""
    assert isinstance(spec, PythonSpec)
    return dataclasses.replace(spec, **resolve_perturbation(spec, base_dir))
