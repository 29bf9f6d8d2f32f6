"""`training-copy`: a training image, chosen by the sample's seed, plus Gaussian noise of std ``level``.

A sanity baseline for the privacy audit, the memorising generator made explicit: a privacy metric that
does not flag these samples as copies of the training set (and rank ``level = 0.02`` as closer to it
than ``level = 0.2``) is broken. Like ``degrade`` it is labelled a baseline, not a generative model.

Each sample is a pure function of (training manifest, level, seed, reference shape):
``rng = np.random.default_rng(seed)``; the training row is ``rng.integers(n_rows)``, uniform over the
manifest's rows in file order; that image, resized to the reference's shape when the two differ
(bilinear with antialiasing, the suite's ``to_reference`` resize), plus ``rng.normal(0, level, shape)``
drawn next from the same Generator, clipped to [0, 1]. The copied case id goes to samples.parquet's
``source_case_id``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit import images
from audit.cases import Case, Manifest, ManifestError, load_manifest
from audit.config_base import ConfigError, ModelSpec, StudySection
from audit.images import XrayImage
from audit.models.base import ModelAdapter, SampleFailure, SampleRequest


@dataclasses.dataclass(frozen=True)
class TrainingCopySpec(ModelSpec):
    # The case manifest of the images the audited generator was trained on (relative to the config).
    training_cases: Path
    # Gaussian noise std on the [0, 1] scale; 0 writes the training image itself.
    level: float = 0.02


def resolve_training_copy(spec: ModelSpec, base_dir: Path) -> ModelSpec:
    """``training_cases`` relative to the config's directory, made absolute so config.toml records it
    wherever the run is resumed or merged from."""
    assert isinstance(spec, TrainingCopySpec)
    path = spec.training_cases.expanduser()
    return dataclasses.replace(spec, training_cases=(base_dir / path).resolve())


def load_training_manifest(path: Path, where: str) -> Manifest:
    """The training manifest, or a ConfigError naming the key, the file and what to fix.

    Headers only (no pixel decoding): a training set can be far larger than the audited cohort, and
    every image is decoded anyway when it is copied.
    """
    try:
        return load_manifest(path, check_pixels=False)
    except FileNotFoundError:
        raise ConfigError(
            f"{where}: training_cases: {path} not found; point it at the case manifest (CSV, Parquet or "
            "JSONL with case_id and image columns) of the images the audited model was trained on"
        ) from None
    except ManifestError as exc:
        raise ConfigError(f"{where}: training_cases: {exc}") from None


def validate_training_copy(spec: ModelSpec, study: StudySection, where: str) -> None:
    assert isinstance(spec, TrainingCopySpec)
    if not math.isfinite(spec.level) or spec.level < 0:
        raise ConfigError(
            f"{where}: level is the noise std on the [0, 1] scale and must be >= 0 "
            f"(0 copies the training image exactly), got {spec.level}"
        )
    load_training_manifest(spec.training_cases, where)


def training_copy(
    training: Sequence[Path], level: float, seed: int, shape: tuple[int, int]
) -> tuple[int, np.ndarray]:
    """The row of ``training`` that ``seed`` picks and its noisy copy at ``shape`` (float32 in [0, 1])."""
    rng = np.random.default_rng(seed)
    row = int(rng.integers(len(training)))
    pixels = images.read_image(training[row]).pixels.astype(np.float32)
    if pixels.shape != tuple(shape):
        # Paired metrics need the reference's shape; the same resize scoring's `to_reference` uses.
        pixels = images.resize_to(pixels, shape)
    # Drawn even at level 0 (all zeros) so the stream, and any later draw, never depends on level.
    noise = rng.normal(0.0, level, size=pixels.shape).astype(np.float32)
    return row, np.clip(pixels + noise, 0.0, 1.0).astype(np.float32)


class TrainingCopyAdapter(ModelAdapter):
    spec: TrainingCopySpec
    generates = True

    def __init__(self, spec: ModelSpec, study: StudySection):
        super().__init__(spec, study)
        self._manifest: Manifest | None = None
        self._copied: dict[tuple[str, int], str] = {}

    def _training(self) -> Manifest:
        # Loaded on first use: the runner builds every adapter, and a finished chunk needs none.
        if self._manifest is None:
            self._manifest = load_training_manifest(self.spec.training_cases, f"model {self.spec.name}")
        return self._manifest

    def produce(
        self, requests: Sequence[SampleRequest], reference: Callable[[Case], XrayImage]
    ) -> list[Path | SampleFailure]:
        training = self._training()
        paths = [Path(p) for p in training.frame["image"]]
        ids = [str(c) for c in training.frame["case_id"]]
        out: list[Path | SampleFailure] = []
        for r in requests:
            ref = reference(r.case)
            row, pixels = training_copy(paths, self.spec.level, r.seed, ref.pixels.shape)
            # The reference's precision, as degrade: quantisation must not differ from the other rows.
            images.write_png(r.dest, pixels, bit_depth=8 if ref.meta.bit_depth <= 8 else 16)
            self._copied[(r.case.case_id, r.sample)] = ids[row]
            out.append(r.dest)
        return out

    def sample_info(self, request: SampleRequest) -> dict[str, Any]:
        # Popped: asked once per sample, right after produce, so the record never outgrows a batch.
        return {"source_case_id": self._copied.pop((request.case.case_id, request.sample), None)}
