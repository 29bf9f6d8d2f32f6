"""The config types that model adapters build on: :class:`ConfigError`, :class:`StudySection` and
:class:`ModelSpec`.

They live below both :mod:`audit.config` (which parses a whole study and looks model kinds up in
:mod:`audit.registry`) and ``audit.models.*`` (whose spec classes subclass ``ModelSpec``), so that
the adapters never import the config parser that imports them. Import them from :mod:`audit.config`
as before; this module exists only to keep the import graph acyclic.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


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
