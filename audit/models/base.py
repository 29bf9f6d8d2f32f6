"""What every model kind implements, and the request/result types the runner passes around."""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from audit.cases import Case
from audit.config_base import ModelSpec, StudySection
from audit.images import XrayImage

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")


def safe_name(text: str) -> str:
    """A file-system-safe name for ``text``; unsafe ids get a short hash so distinct ids never collide."""
    if _SAFE.match(text):
        return text
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "x"
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def derive_seed(study_seed: int, model: str, case_id: str, sample: int) -> int:
    """Seed of one sample, from (study seed, model, case_id, sample index) only.

    Independent of batch size, shard and order, so a sample can be regenerated alone.
    """
    key = f"{study_seed}\x1f{model}\x1f{case_id}\x1f{sample}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1  # fits in int64


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    case: Case
    sample: int
    seed: int
    dest: Path  # where a generated image goes; adapters that point at existing files ignore it


@dataclasses.dataclass(frozen=True)
class SampleFailure:
    reason: str


class ModelLoadError(RuntimeError):
    """A model cannot be loaded or run at all (missing weights, no GPU, bad callable): every sample fails."""


class ModelAdapter(abc.ABC):
    """One configured model. ``produce`` returns, per request, the path of the sample image or a failure."""

    # True when the sample *is* the reference (the `real` row): paired metrics against itself are skipped.
    self_reference: ClassVar[bool] = False
    # True when the adapter writes new images (so the runner gives it destinations under samples/).
    generates: ClassVar[bool] = False
    # True when the adapter loads a network: the runner generates all its samples in one pass (load
    # once, free before the next model) before any scoring, and journals each finished batch.
    loads_model: ClassVar[bool] = False

    def __init__(self, spec: ModelSpec, study: StudySection):
        self.spec = spec
        self.study = study

    def samples_per_case(self) -> int:
        return self.study.samples_per_case

    def preflight(self, cases: Sequence[Case]) -> list[tuple[Case, int, str]]:
        """Cheap checks before any work; returns (case, sample, reason) for every request that cannot succeed."""
        return []

    def seed_name(self) -> str:
        """The model name that seeds derive from (a sweep row shares its base model's seeds)."""
        return self.spec.name

    def batch_size(self) -> int:
        """Requests per :meth:`produce` call; the runner records progress after each call."""
        return 1 << 30

    def sample_info(self, request: SampleRequest) -> dict[str, Any]:
        """Generation parameters of a just-produced sample, for samples.parquet (see GENERATION_COLUMNS)."""
        return {}

    def release(self) -> None:
        """Free the network (and its GPU memory) once the runner is done with this model."""

    def stats(self) -> dict[str, Any]:
        """Throughput and memory of this process's generation, for run.json; empty when nothing ran."""
        return {}

    @abc.abstractmethod
    def produce(
        self, requests: Sequence[SampleRequest], reference: Callable[[Case], XrayImage]
    ) -> list[Path | SampleFailure]:
        """Produce the samples; ``reference(case)`` decodes the case's real image when an adapter needs it."""
