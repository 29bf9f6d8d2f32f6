"""Robustness sweeps shared by the generating kinds: ``perturbation = "axis=value"`` and ``[models.sweep]``.

A sweep turns one ``[[models]]`` table into the model plus one row per axis value, named like
``controlnet[blur=2]`` (:func:`expand_sweep`); each row starts from its base model's seeds, so only the
perturbation differs. Condition axes (``blur``, ``motion_blur``, ``noise``, ``dropout``) perturb the
model's condition map, prompt axes (``synonyms``, ``fixed_prompt``) its prompt; both draw from
:func:`perturbation_rng` of the sample's seed (:mod:`audit.perturb` does the perturbing). A spec that
sweeps has ``perturbation: str``, ``sweep: SweepSpec | None``, ``kind`` and ``has_condition``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from audit.config_base import ConfigError, ModelSpec

CONDITION_AXES = ("blur", "motion_blur", "noise", "dropout")
PROMPT_AXES = ("synonyms", "fixed_prompt")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """``[models.sweep]``: each value becomes its own model row, e.g. ``controlnet[blur=2]``."""

    blur: tuple[float, ...] = ()  # gaussian sigma of the condition map, px
    motion_blur: tuple[float, ...] = ()  # motion-blur length, px (direction drawn per sample)
    noise: tuple[float, ...] = ()  # gaussian noise std on the [0, 1] scale
    dropout: tuple[float, ...] = ()  # probability of dropping each mask structure
    synonyms: tuple[Path, ...] = ()  # CSV files `term,synonym`
    fixed_prompt: tuple[str, ...] = ()  # one prompt for every case

    def values(self) -> list[tuple[str, Any]]:
        return [(f.name, v) for f in dataclasses.fields(self) for v in getattr(self, f.name)]


def check_sweep(spec: Any, where: str) -> None:
    """Config-time checks of ``spec.perturbation`` and ``spec.sweep``."""
    if spec.perturbation:
        check_perturbation(spec, spec.perturbation, where)
    if spec.sweep is not None:
        if spec.perturbation:
            raise ConfigError(f"{where}: use either perturbation or [models.sweep], not both")
        if not spec.sweep.values():
            raise ConfigError(f"{where}: [models.sweep] lists no values")
        for axis, value in spec.sweep.values():
            check_perturbation(spec, f"{axis}={value}", where)


def check_perturbation(spec: Any, text: str, where: str) -> None:
    from audit import perturb

    axis, sep, value = text.partition("=")
    if not sep or axis not in (*CONDITION_AXES, *PROMPT_AXES):
        raise ConfigError(
            f"{where}: perturbation {text!r} must be axis=value with axis one of "
            f"{', '.join(CONDITION_AXES + PROMPT_AXES)}"
        )
    if axis in CONDITION_AXES:
        if not spec.has_condition:
            raise ConfigError(f"{where}: {axis} perturbs a condition map, and kind {spec.kind} has none")
        try:
            perturb.check_condition_value(axis, float(value))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    elif axis == "synonyms":
        try:
            perturb.load_synonyms(Path(value))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: synonyms file: {exc}") from None


def resolve_perturbation(spec: Any, base_dir: Path) -> dict[str, Any]:
    """The spec fields to replace so a relative synonyms file resolves against the config's directory."""
    if spec.perturbation.startswith("synonyms="):
        file = Path(spec.perturbation.split("=", 1)[1]).expanduser()
        return {"perturbation": f"synonyms={file if file.is_absolute() else (base_dir / file).resolve()}"}
    return {}


def expand_sweep(spec: ModelSpec) -> list[ModelSpec]:
    """The model and one row per sweep value (just the model without a sweep)."""
    sweep = getattr(spec, "sweep", None)
    if sweep is None:
        return [spec]
    from audit.perturb import axis_label

    base = dataclasses.replace(spec, sweep=None)  # type: ignore[call-arg]
    rows: list[ModelSpec] = [base]
    for axis, value in sweep.values():
        text = str(value) if not isinstance(value, float) else format(value, "g")
        rows.append(
            dataclasses.replace(
                base,
                name=f"{spec.name}[{axis_label(axis, value)}]",
                perturbation=f"{axis}={text}",  # type: ignore[call-arg]
            )
        )
    return rows


def perturbation_rng(seed: int, purpose: int) -> np.random.Generator:
    # Separate streams per purpose, derived from the sample's seed (never the diffusion noise's):
    # 1 for the prompt, 2 for the condition map.
    return np.random.default_rng([int(seed), 0x5EED, purpose])


class Perturbation:
    """One sweep row's ``perturbation`` ("axis=value", or "" for none) applied to a sample's prompt or
    condition map, drawn from the sample's seed; the same draws for every generating kind."""

    def __init__(self, text: str) -> None:
        self.axis, _, self.value = text.partition("=")
        self._synonyms: dict[str, tuple[str, ...]] | None = None

    @property
    def on_prompt(self) -> bool:
        return self.axis in PROMPT_AXES

    @property
    def on_condition(self) -> bool:
        return self.axis in CONDITION_AXES

    def prompt(self, prompt: str, seed: int) -> str:
        """``prompt`` perturbed (unchanged unless the axis is a prompt axis)."""
        from audit import perturb

        if not self.on_prompt:
            return prompt
        if self.axis == "synonyms" and self._synonyms is None:
            self._synonyms = perturb.load_synonyms(Path(self.value))  # read once per model row
        return perturb.perturb_prompt(
            prompt, self.axis, self.value, perturbation_rng(seed, 1), self._synonyms
        )

    def condition(self, condition: np.ndarray, seed: int) -> np.ndarray:
        """A ``(C, H, W)`` [0, 1] map perturbed (unchanged unless the axis is a condition axis)."""
        from audit import perturb

        if not self.on_condition:
            return condition
        return perturb.perturb_condition(condition, self.axis, float(self.value), perturbation_rng(seed, 2))


def base_name(name: str, perturbation: str) -> str:
    """The model name a sweep row derives its seeds from (its base model's)."""
    return name.rsplit("[", 1)[0] if perturbation else name
