"""`degrade`: deterministic, labelled damage applied to the reference image.

These are sanity baselines, not generators: a metric that does not rank ``blur`` sigma 3 below
sigma 1 is broken. Each degradation is a pure function of (image, level, seed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from audit import images
from audit.cases import Case
from audit.config_base import ConfigError, ModelSpec, StudySection
from audit.images import XrayImage
from audit.models.base import ModelAdapter, SampleFailure, SampleRequest

Degradation = Literal["blur", "noise", "shift", "contrast"]


@dataclasses.dataclass(frozen=True)
class DegradeSpec(ModelSpec):
    degradation: Degradation = "blur"
    # blur: gaussian sigma in px; noise: gaussian std on the [0,1] scale; shift: px right and down;
    # contrast: factor around the image mean (< 1 flattens).
    level: float = 1.0


def degrade(pixels: np.ndarray, degradation: Degradation, level: float, seed: int) -> np.ndarray:
    """Return the degraded copy of a float [0,1] image (same shape, float32, clipped to [0,1])."""
    # Imported here: scipy.ndimage costs ~0.4 s of every CLI start, and most runs have no degrade model.
    from scipy import ndimage

    x = np.asarray(pixels, dtype=np.float32)
    if degradation == "blur":
        out = ndimage.gaussian_filter(x, sigma=level, mode="reflect", truncate=4.0)
    elif degradation == "noise":
        rng = np.random.default_rng(seed)
        out = x + rng.normal(0.0, level, size=x.shape).astype(np.float32)
    elif degradation == "shift":
        k = round(level)
        # Edge replication rather than wrap-around: a wrapped border would add a fake anatomy edge.
        out = ndimage.shift(x, (k, k), order=0, mode="nearest")
    elif degradation == "contrast":
        mean = float(x.mean())
        out = mean + level * (x - mean)
    else:  # the config loader restricts the literal; this guards direct callers
        raise ValueError(f"unknown degradation {degradation!r}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def validate_degrade(spec: ModelSpec, study: StudySection, where: str) -> None:
    assert isinstance(spec, DegradeSpec)
    if spec.degradation in ("blur", "noise") and spec.level <= 0:
        raise ConfigError(f"{where}: level must be > 0 for {spec.degradation}")
    if spec.degradation == "shift" and (spec.level != round(spec.level) or spec.level == 0):
        raise ConfigError(f"{where}: level for shift is a non-zero whole number of pixels, got {spec.level}")
    if spec.degradation == "contrast" and (spec.level <= 0 or spec.level == 1):
        raise ConfigError(f"{where}: level for contrast is a factor > 0 and != 1, got {spec.level}")


class DegradeAdapter(ModelAdapter):
    spec: DegradeSpec
    generates = True

    def produce(
        self, requests: Sequence[SampleRequest], reference: Callable[[Case], XrayImage]
    ) -> list[Path | SampleFailure]:
        out: list[Path | SampleFailure] = []
        for r in requests:
            ref = reference(r.case)
            pixels = degrade(ref.pixels, self.spec.degradation, self.spec.level, r.seed)
            # Keep the reference's precision so quantisation does not masquerade as damage.
            images.write_png(r.dest, pixels, bit_depth=8 if ref.meta.bit_depth <= 8 else 16)
            out.append(r.dest)
        return out
