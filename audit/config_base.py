"""The config types that model adapters and evaluators build on: :class:`ConfigError`,
:class:`StudySection`, :class:`ModelSpec` and :class:`UserClassifierSection`.

They live below :mod:`audit.config` (which parses a whole study, looks model kinds up in
:mod:`audit.registry` and checks evaluator choices against :mod:`audit.evaluators.registry`), and
below ``audit.models.*`` (whose spec classes subclass ``ModelSpec``) and ``audit.evaluators`` (whose
user backend reads ``UserClassifierSection``), so that neither imports the parser that imports them.
:mod:`audit.config` names them too; this module exists only to keep the import graph acyclic.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal


class ConfigError(ValueError):
    """A study config that cannot be used as written."""


@dataclasses.dataclass(frozen=True)
class StudySection:
    name: str
    cases: Path
    output: Path
    seed: int = 0
    samples_per_case: int = 1


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Fields every model kind shares; each kind subclasses this with its own keys."""

    name: str
    kind: str


@dataclasses.dataclass(frozen=True)
class UserClassifierSection:
    """A user's own pathology classifier (``classifier = "user"``): knees, hips and fractures need one.

    ``format = "torchscript"`` loads the file with ``torch.jit.load``; ``"state_dict"`` builds
    ``architecture`` (see :data:`audit.evaluators.user.ARCHITECTURES`) with ``len(labels)`` outputs.
    The file is verified against ``sha256`` before loading. The input contract is the one the network
    was trained with: centre-square crop, resize to ``size``, [0, 1] mapped onto ``value_range``,
    grey repeated to ``channels``. ``output`` says whether the network ends in logits (a sigmoid is
    applied once) or probabilities.
    """

    path: Path
    sha256: str
    labels: tuple[str, ...]
    format: Literal["torchscript", "state_dict"] = "torchscript"
    architecture: str = ""
    size: int = 224
    channels: int = 1
    value_range: tuple[float, ...] = (0.0, 1.0)
    output: Literal["logits", "probabilities"] = "logits"
