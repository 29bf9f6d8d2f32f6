"""What a resolved evaluator is, torch-free: its plan (or why its role cannot run), the input-contract
fields that key its cached outputs, and the :class:`Backend` interface a loaded network offers.

:mod:`audit.evaluators.registry` lists the built-in evaluators in these terms,
:mod:`audit.evaluators.suite` resolves a study's ``[evaluators]`` into plans, and
:mod:`audit.evaluators.backends` holds the networks behind them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from audit.config_base import UserClassifierSection
from audit.feature_cache import EvaluatorKey

Role = Literal["classifier", "segmenter", "features", "raddino"]
ROLES: tuple[Role, ...] = ("classifier", "segmenter", "features", "raddino")
Source = Literal["xrv", "inception", "demo", "user", "hf"]

# Bump when a backend's output format changes; part of every cache key.
OUTPUT_VERSION = "outputs-v1"
# InputContract.preprocessing_version (audit.evaluators.base imports torch, which resolving must not);
# a test keeps the two equal.
PIPELINE_VERSION = "center-square/bilinear-antialias/affine-v1"


@dataclasses.dataclass(frozen=True)
class EvaluatorPlan:
    """A resolved evaluator: what it is, where its verified weights are, and why it was chosen."""

    role: Role
    source: Source
    key: EvaluatorKey
    label: str
    weights: str | None  # weights-manager name, or a demo file name
    weights_path: Path | None  # a file; for "hf", the verified snapshot directory
    note: str = ""
    # Where the hash the weights were verified against comes from (audit.weights.store.PinSource, or
    # "demo" for the shipped demo networks), and that in words for run.json and the report.
    pin: str = ""
    pin_note: str = ""
    files: tuple[tuple[str, str], ...] = ()  # hf: (file name, sha256) of every verified file

    @property
    def name(self) -> str:
        return self.key.evaluator

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.key.evaluator,
            "role": self.role,
            "source": self.source,
            "label": self.label,
            "weights": self.weights,
            "weights_sha256": self.key.weights_sha256,
            "preprocessing": self.key.preprocessing,
            "note": self.note,
            "pin": self.pin,
            "pin_note": self.pin_note,
            **({"files": dict(self.files)} if self.files else {}),
        }


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """A role that cannot run here; ``reason`` names the missing file and the fix."""

    role: Role
    reason: str


@dataclasses.dataclass(frozen=True)
class ContractFields:
    """The fields of an evaluator's InputContract that key its cached outputs (a copy: the contracts
    themselves live beside their networks, which import torch)."""

    channels: int
    size: int
    value_range: tuple[float, float]
    integer: bool = False
    preprocessing_version: str = PIPELINE_VERSION


def preprocessing_key(contract: Any) -> str:
    """The cache key's preprocessing text of a :class:`ContractFields` or an ``InputContract``."""
    lo, hi = contract.value_range
    kind = "uint8" if contract.integer else "float"
    return (
        f"{contract.preprocessing_version};{contract.channels}ch;{contract.size}px;[{lo:g},{hi:g}]{kind};"
        f"{OUTPUT_VERSION}"
    )


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How to build a plan's network: ``[evaluators]`` device, dtype and batch size, and the user
    classifier's description (``[evaluators.user_classifier]``, only the user evaluator reads it)."""

    device: str
    dtype: str
    batch_size: int
    user_classifier: UserClassifierSection | None = None


class Backend(Protocol):
    """A loaded evaluator network: canonical images (float ``(H, W)`` in ``[0, 1]``) in, one output dict
    per image out (see :mod:`audit.evaluators.suite` for the keys of each role)."""

    plan: EvaluatorPlan
    classes: tuple[str, ...]  # classifier output classes (empty for other roles)
    calibration: str  # classifier: "sigmoid" or "sigmoid+op_norm"

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]: ...
