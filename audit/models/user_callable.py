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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit import images
from audit.cases import Case
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


@dataclasses.dataclass(frozen=True)
class PythonSpec(GenerationSpec):
    callable: str = ""  # "package.module:function"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Expected output size; None accepts any size (the runner then records whatever comes back).
    height: int | None = None
    width: int | None = None


def validate_python(spec: ModelSpec, study: StudySection, where: str) -> None:
    assert isinstance(spec, PythonSpec)
    validate_generation(spec, where)
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

    def preflight(self, cases: Sequence[Case]) -> list[tuple[Case, int, str]]:
        fn = load_callable(self.spec.callable)
        check_signature(fn, self.spec.options, self.spec.callable)
        return []

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
        with torch.inference_mode():
            outputs = fn(
                [r.case for r in requests],
                gens,
                device=self._device,
                dtype=torch_dtype(self.spec),
                **self.spec.options,
            )
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
