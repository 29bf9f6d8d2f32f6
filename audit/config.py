"""Study config: TOML parsed into frozen dataclasses. Unknown keys, wrong types and missing keys are
errors that name the key and the file, because a typo that silently falls back to a default would
produce a plausible but wrong audit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

PIXEL_METRICS = ("mse", "mae", "psnr", "ssim", "ms_ssim", "overlap_precision", "overlap_recall", "overlap_f1")
DEFAULT_PIXEL_METRICS = ("mse", "mae", "psnr", "ssim", "ms_ssim")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,\[\]-]*$")


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
class MetricsSection:
    pixel: tuple[str, ...] = DEFAULT_PIXEL_METRICS
    # Scale applied to [0,1] images before MSE/MAE, e.g. 255 to quote MSE on an 8-bit scale.
    pixel_range: float = 1.0
    resize: Literal["none", "to_reference"] = "none"
    overlap_threshold: float = 0.5
    bootstrap_resamples: int = 1000
    confidence: float = 0.95


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Fields every model kind shares; each kind subclasses this with its own keys."""

    name: str
    kind: str


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    study: StudySection
    models: tuple[ModelSpec, ...]
    metrics: MetricsSection
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": _plain(dataclasses.asdict(self.study)),
            "models": [_plain(dataclasses.asdict(m)) for m in self.models],
            "metrics": _plain(dataclasses.asdict(self.metrics)),
        }

    def hash(self) -> str:
        return stable_hash(self.to_dict())

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``; used to key resumable work and caches."""
    blob = json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _plain(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def parse_section(cls: type, table: Any, where: str, base_dir: Path | None = None) -> Any:
    """Build the frozen dataclass ``cls`` from a TOML table, rejecting unknown keys and bad types."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"allowed keys are {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in table:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {name!r}")
            continue
        values[name] = _coerce(table[name], hints[name], f"{where}.{name}", base_dir)
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str, base_dir: Path | None) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg, where, base_dir)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0]
        return tuple(_coerce(v, item, f"{where}[{i}]", base_dir) for i, v in enumerate(value))
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a path string, got {value!r}")
        path = Path(value).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return path
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {hint!r}")  # a bug in a spec class, not user input


def load_config(path: str | Path) -> StudyConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: study config not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(raw, source=path.resolve())


def parse_config(raw: Mapping[str, Any], source: Path | None = None) -> StudyConfig:
    """Parse a config mapping; relative paths resolve against the config file's directory."""
    from audit.registry import model_kinds  # the registry imports this module

    where = str(source) if source else "<config>"
    base_dir = source.parent if source else Path.cwd()
    unknown = sorted(set(raw) - {"study", "models", "metrics"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key(s) {', '.join(repr(k) for k in unknown)}; "
            "allowed are [study], [[models]], [metrics]"
        )
    if "study" not in raw:
        raise ConfigError(f"{where}: missing the [study] table")
    study = parse_section(StudySection, raw["study"], f"{where}: [study]", base_dir)
    if study.samples_per_case < 1:
        raise ConfigError(f"{where}: [study].samples_per_case must be >= 1, got {study.samples_per_case}")
    metrics = parse_section(MetricsSection, raw.get("metrics", {}), f"{where}: [metrics]", base_dir)
    _check_metrics(metrics, where)

    models_raw = raw.get("models", [])
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError(f'{where}: add at least one [[models]] table (e.g. kind = "real")')
    kinds = model_kinds()
    models: list[ModelSpec] = []
    for i, table in enumerate(models_raw):
        loc = f"{where}: [[models]] #{i + 1}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{loc}: expected a table")
        kind = table.get("kind")
        if kind not in kinds:
            raise ConfigError(f"{loc}: unknown kind {kind!r}; known kinds are {', '.join(sorted(kinds))}")
        loc = f"{where}: [[models]] {table.get('name', f'#{i + 1}')!s} (kind {kind})"
        spec = parse_section(kinds[kind].spec, table, loc, base_dir)
        if not MODEL_NAME_RE.match(spec.name):
            raise ConfigError(
                f"{loc}: model name {spec.name!r} may contain only letters, digits and ._=+,[]- "
                "and must start with a letter or digit"
            )
        kinds[kind].validate(spec, study, loc)
        models.append(spec)
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: duplicate model name(s) {', '.join(dupes)}; names must be unique")
    return StudyConfig(study=study, models=tuple(models), metrics=metrics, source=source)


def _check_metrics(metrics: MetricsSection, where: str) -> None:
    bad = [m for m in metrics.pixel if m not in PIXEL_METRICS]
    if bad:
        raise ConfigError(
            f"{where}: [metrics].pixel has unknown metric(s) {', '.join(bad)}; "
            f"known pixel metrics are {', '.join(PIXEL_METRICS)}"
        )
    if len(set(metrics.pixel)) != len(metrics.pixel):
        raise ConfigError(f"{where}: [metrics].pixel lists a metric twice")
    if metrics.pixel_range <= 0:
        raise ConfigError(f"{where}: [metrics].pixel_range must be > 0 (1 for [0,1] images, 255 for 8-bit)")
    if not 0.0 < metrics.overlap_threshold < 1.0:
        raise ConfigError(f"{where}: [metrics].overlap_threshold must be in (0, 1)")
    if metrics.bootstrap_resamples < 100:
        raise ConfigError(f"{where}: [metrics].bootstrap_resamples must be >= 100 for a usable 95% CI")
    if not 0.5 < metrics.confidence < 1.0:
        raise ConfigError(f"{where}: [metrics].confidence must be in (0.5, 1), e.g. 0.95")


def dump_toml(config: StudyConfig) -> str:
    """Serialise the resolved config as TOML (paths absolute), readable back by ``parse_config``."""
    d = config.to_dict()
    lines = ["[study]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in d["study"].items()]
    for m in d["models"]:
        lines += ["", "[[models]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in m.items()]
    lines += ["", "[metrics]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in d["metrics"].items()]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")
