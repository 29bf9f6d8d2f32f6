"""Study config: TOML parsed into frozen dataclasses. Unknown keys, wrong types and missing keys are
errors that name the key and the file, because a typo that silently falls back to a default would
produce a plausible but wrong audit.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

# Defined below this module (the model adapters subclass ModelSpec) and importable from here as before.
from audit.config_base import ConfigError, ModelSpec, StudySection, UserClassifierSection
from audit.evaluators import registry as evaluator_registry
from audit.hashing import plain, stable_hash
from audit.metrics import catalogue

PIXEL_METRICS = catalogue.entries("pixel")
DEFAULT_PIXEL_METRICS = ("mse", "mae", "psnr", "ssim", "ms_ssim")
# Config entries of [metrics].clinical and [metrics].distribution; each turns on the catalogue's metrics
# of that entry ("dice" gives dice_* and dice_mask_*, "prdc" precision/recall/density/coverage).
CLINICAL_ENTRIES = catalogue.entries("clinical")
DISTRIBUTION_ENTRIES = catalogue.entries("distribution")
# A Hugging Face feature backbone at a fixed commit (a branch would move under the numbers).
HF_FEATURES_RE = re.compile(r"^hf:[A-Za-z0-9][\w.-]*/[\w.-]+@[0-9a-f]{40}$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,\[\]-]*$")


@dataclasses.dataclass(frozen=True)
class MetricsSection:
    pixel: tuple[str, ...] = DEFAULT_PIXEL_METRICS
    # Scale applied to [0,1] images before MSE/MAE, e.g. 255 to quote MSE on an 8-bit scale.
    pixel_range: float = 1.0
    resize: Literal["none", "to_reference"] = "none"
    overlap_threshold: float = 0.5
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    clinical: tuple[str, ...] = ()
    distribution: tuple[str, ...] = ()
    # "operating_point": 0.5 after xrv's op_norm (the classifier's calibrated threshold);
    # "fit_on_real": per class, the F1-maximising threshold on the real reference images.
    pathology_threshold: Literal["operating_point", "fit_on_real"] = "operating_point"
    # Case columns to report every metric per value of, e.g. ["labels"] for FID per class.
    group_by: tuple[str, ...] = ()
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    prdc_k: int = 5


@dataclasses.dataclass(frozen=True)
class EvaluatorsSection:
    """Which pretrained networks produce the clinical and distribution metrics.

    ``xrv``/``inception``: torchxrayvision / torch-fidelity networks with verified weights from the
    weights manager; ``demo``: the small networks shipped for the demo cohort (meaningless on other
    data); ``auto``: the pretrained network when its verified weights are present, else the demo one
    (meant for the demo: the report names the evaluator behind every number).

    ``features`` may also name any Hugging Face image backbone at a commit, ``"hf:ORG/NAME@REVISION"``
    (e.g. DINOv2 or BiomedCLIP): fid and kid are then computed on its ``pooler_output``. Its files are
    verified against ``hf_sha256`` (file name -> sha256) or against the pins of
    ``xray-audit weights fetch hf:ORG/NAME@REVISION --trust``. RadDino's ``fd_raddino``, ``kid_raddino``
    and ``prdc_raddino`` always use ``microsoft/rad-dino`` at the commit this release pins.
    """

    # Each role's choices are those of audit.evaluators.registry.EVALUATORS (checked on load).
    classifier: str = "xrv"  # "xrv" | "demo" | "auto" | "user"
    classifier_weights: str = "densenet121-res224-all"
    segmenter: str = "xrv"  # "xrv" | "demo" | "auto"
    features: str = "inception"  # "inception" | "demo" | "auto" | "hf:ORG/NAME@REVISION"
    hf_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = 16
    # Shared feature cache; default <output>/cache/features (features are keyed by image content).
    cache_dir: Path | None = None
    user_classifier: UserClassifierSection | None = None


@dataclasses.dataclass(frozen=True)
class NorbergSection:
    """Norberg-angle agreement of canine-hip studies, measured in ``xray-audit run``.

    ``annotations``: the experts' landmarks of the real images (``case_id, landmark, x, y``, CSV or
    JSON); ``detector``: a model directory of ``xray-audit landmarks train`` (or a model.json pinning
    a user TorchScript file by sha256) that measures every sample, the real row included. The
    ``norberg_*`` rows join summary.csv; ``norberg_angles.parquet`` holds every measured angle.
    """

    annotations: Path
    detector: Path
    # Where the patient's left hip appears in the annotated images (standard display: image-right).
    patient_left: Literal["image-right", "image-left"] = "image-right"


# [privacy].features: which embedding the nearest-training search uses (see audit.privacy.FEATURE_SOURCES
# for the evaluator behind each value), or an "hf:ORG/NAME@COMMIT" backbone.
PRIVACY_FEATURES = ("auto", "raddino", "xrv", "inception", "demo", "user")
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclasses.dataclass(frozen=True)
class ReidModelSection:
    """A re-identification network (TorchScript) that scores whether two X-rays show the same patient.

    Called as ``model(a, b)`` on two float32 batches ``(N, 1, S, S)`` in [0, 1] (the images as the
    pixel comparison sees them: centre-square cropped and resized to ``[privacy].pixel_size`` = S) and
    returning ``(N,)`` scores in [0, 1] (1 = same patient). The file is verified against ``sha256``
    before it is loaded; a mismatch stops the run with the network unloaded.
    """

    path: Path
    sha256: str


@dataclasses.dataclass(frozen=True)
class PrivacySection:
    """The privacy / memorisation audit of ``xray-audit run`` (audit.privacy).

    Every sample (and, as the calibration, every held-out reference) is matched to its nearest images
    of ``training_cases`` (the generator's training manifest; image column required) in an
    embedding space (``features``, cosine distance) and in pixel space (``pixel_size``² pixels, L2 /
    √pixels, the smallest over shifts up to ``max_shift`` pixels, as given and mirrored). A sample is
    flagged as memorised when either distance is below the ``quantile`` of the
    held-out references' own nearest-training distances. ``k`` training neighbours are kept per
    sample (re-ID scores average over them). ``show_training_images = false`` keeps training pixels
    out of the report (only case ids are shown).
    """

    training_cases: Path
    features: str = "auto"
    pixel_size: int = 128
    quantile: float = 0.01
    k: int = 5
    reid_model: ReidModelSection | None = None
    show_training_images: bool = True
    # Pixel distance is the smallest over every shift of the sample by up to this many pixels (at
    # pixel_size) in each direction, as given and mirrored: a copy moved a little is still a copy.
    max_shift: int = 2


@dataclasses.dataclass(frozen=True)
class ReaderStudySection:
    """Where the study's reader ratings are: ``xray-audit report`` reads them when ``--reader-study`` is
    not given, so a recipe's reader columns fill without another option.

    ``ratings``: a reader-study directory (``xray-audit reader-study create --out``) or its ratings
    export (``ratings.csv`` / ``.parquet``). ``simulate_readers`` (demo only): ``xray-audit run`` writes
    that many simulated readers' ratings to ``ratings`` (readers named ``SIMULATED-1``, …), so the
    reader columns of a demo table are filled and visibly not radiologists'.
    """

    ratings: Path
    simulate_readers: int = 0


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    study: StudySection
    models: tuple[ModelSpec, ...]
    metrics: MetricsSection
    evaluators: EvaluatorsSection = EvaluatorsSection()
    norberg: NorbergSection | None = None
    privacy: PrivacySection | None = None
    reader_study: ReaderStudySection | None = None
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "study": plain(dataclasses.asdict(self.study)),
            "models": [plain(dataclasses.asdict(m)) for m in self.models],
            "metrics": plain(dataclasses.asdict(self.metrics)),
            "evaluators": plain(dataclasses.asdict(self.evaluators)),
        }
        # Only when set, so the hash of every config without the table stays what it was.
        if self.norberg is not None:
            d["norberg"] = plain(dataclasses.asdict(self.norberg))
        if self.privacy is not None:
            d["privacy"] = plain(dataclasses.asdict(self.privacy))
        if self.reader_study is not None:
            d["reader_study"] = plain(dataclasses.asdict(self.reader_study))
        return d

    def hash(self) -> str:
        return stable_hash(self.to_dict())

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


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
    if origin is dict:
        # Free-form tables (a user callable's options): keys are strings, values TOML scalars or
        # lists of them. Their names are checked against the callable's signature, not here.
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, e.g. {{ steps = 20 }}, got {value!r}")
        for k, v in value.items():
            if isinstance(v, Mapping):
                raise ConfigError(f"{where}.{k}: nested tables are not supported here")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0]
        return tuple(_coerce(v, item, f"{where}[{i}]", base_dir) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, where, base_dir)
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
    # Deferred so that importing this module does not load every model adapter (and numpy).
    from audit.registry import model_kinds

    where = str(source) if source else "<config>"
    base_dir = source.parent if source else Path.cwd()
    unknown = sorted(
        set(raw) - {"study", "models", "metrics", "evaluators", "norberg", "privacy", "reader_study"}
    )
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level key(s) {', '.join(repr(k) for k in unknown)}; "
            "allowed are [study], [[models]], [metrics], [evaluators], [norberg], [privacy], [reader_study]"
        )
    reader_study = None
    if "reader_study" in raw:
        reader_study = parse_section(
            ReaderStudySection, raw["reader_study"], f"{where}: [reader_study]", base_dir
        )
        if reader_study.simulate_readers and reader_study.ratings.suffix not in (".csv", ".parquet"):
            raise ConfigError(
                f"{where}: [reader_study].ratings must be a .csv or .parquet file when simulate_readers is "
                f"set (the simulated export is written there), got {reader_study.ratings}"
            )
        if not 0 <= reader_study.simulate_readers <= 20:
            raise ConfigError(
                f"{where}: [reader_study].simulate_readers must be 0 (real readers) to 20, got "
                f"{reader_study.simulate_readers}"
            )
    if "study" not in raw:
        raise ConfigError(f"{where}: missing the [study] table")
    study = parse_section(StudySection, raw["study"], f"{where}: [study]", base_dir)
    if study.samples_per_case < 1:
        raise ConfigError(f"{where}: [study].samples_per_case must be >= 1, got {study.samples_per_case}")
    metrics = parse_section(MetricsSection, raw.get("metrics", {}), f"{where}: [metrics]", base_dir)
    _check_metrics(metrics, where)
    evaluators = parse_section(
        EvaluatorsSection, raw.get("evaluators", {}), f"{where}: [evaluators]", base_dir
    )
    _check_evaluators(evaluators, where)
    norberg = None
    if "norberg" in raw:
        norberg = parse_section(NorbergSection, raw["norberg"], f"{where}: [norberg]", base_dir)
        if not norberg.annotations.is_file():
            raise ConfigError(f"{where}: [norberg].annotations: {norberg.annotations} not found")
        if not norberg.detector.exists():
            raise ConfigError(
                f"{where}: [norberg].detector: {norberg.detector} not found; train one with "
                "`xray-audit landmarks train` or point at a model.json for your TorchScript file"
            )
    privacy = None
    if "privacy" in raw:
        privacy = parse_section(PrivacySection, raw["privacy"], f"{where}: [privacy]", base_dir)
        _check_privacy(privacy, evaluators, where)

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
        spec = kinds[kind].resolve(spec, base_dir)
        kinds[kind].validate(spec, study, loc)
        # A sweep turns one [[models]] table into the model plus one row per axis value.
        models.extend(kinds[kind].expand(spec))
    impostors = [m.name for m in models if m.name == "real" and m.kind != "real"]
    if impostors:
        # Reports, the dashboard and the reader study read a model named "real" as the references.
        raise ConfigError(
            f'{where}: the model name "real" is reserved for kind = "real" (the references); rename the '
            f"{next(m.kind for m in models if m.name == 'real')} model"
        )
    if privacy is not None and not any(m.kind == "real" for m in models):
        # The references' own nearest-training distances are the calibration every privacy number is
        # read against (the real row ≈ quantile, the held-out histogram, α/β's calibration row).
        raise ConfigError(
            f'{where}: [privacy] needs a model of kind "real" (the held-out references, whose distances '
            'calibrate the memorisation threshold and are shown as the reference): add [[models]] name = "real", '
            'kind = "real"'
        )
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: duplicate model name(s) {', '.join(dupes)}; names must be unique")
    return StudyConfig(
        study=study,
        models=tuple(models),
        metrics=metrics,
        evaluators=evaluators,
        norberg=norberg,
        privacy=privacy,
        reader_study=reader_study,
        source=source,
    )


def _entry_hint(bad: list[str]) -> str:
    """Say which entry turns on a metric listed by its own name (``precision`` comes with ``prdc``) or by
    a near miss of it (``dice_lung``: ``dice``)."""
    hints = {}
    for name in bad:
        m = catalogue.METRICS.get(name) or next(
            (o for o in catalogue.CATALOGUE if o.entry and name.startswith(f"{o.entry}_")), None
        )
        if m is not None and m.entry and m.family in ("clinical", "distribution"):
            together = [o.name for o in catalogue.CATALOGUE if (o.family, o.entry) == (m.family, m.entry)]
            hints[m.entry] = f'list "{m.entry}" in [metrics].{m.family}: it gives {", ".join(together)}'
    if "dice" in hints:
        hints["dice"] += " (dice_mask_* where cases have an anatomy_mask)"
    return f" ({'; '.join(hints.values())})" if hints else ""


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
    for key, known in (("clinical", CLINICAL_ENTRIES), ("distribution", DISTRIBUTION_ENTRIES)):
        listed = getattr(metrics, key)
        bad = [m for m in listed if m not in known]
        if bad:
            raise ConfigError(
                f"{where}: [metrics].{key} has unknown entr(y/ies) {', '.join(map(repr, bad))}; "
                f"known are {', '.join(known)}{_entry_hint(bad)}"
            )
        if len(set(listed)) != len(listed):
            raise ConfigError(f"{where}: [metrics].{key} lists an entry twice")
    if len(set(metrics.group_by)) != len(metrics.group_by):
        raise ConfigError(f"{where}: [metrics].group_by lists a column twice")
    if "case_id" in metrics.group_by:
        raise ConfigError(
            f"{where}: [metrics].group_by cannot be case_id (one case per group has no statistics)"
        )
    if metrics.kid_subsets < 1:
        raise ConfigError(f"{where}: [metrics].kid_subsets must be >= 1 (100 is the usual choice)")
    if metrics.kid_subset_size < 2:
        raise ConfigError(f"{where}: [metrics].kid_subset_size must be >= 2 (1000 is the usual choice)")
    if metrics.prdc_k < 1:
        raise ConfigError(f"{where}: [metrics].prdc_k must be >= 1 (Naeem et al. use 5)")


def _check_evaluators(evaluators: EvaluatorsSection, where: str) -> None:
    if evaluators.batch_size < 1:
        raise ConfigError(f"{where}: [evaluators].batch_size must be >= 1")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", evaluators.device):
        raise ConfigError(
            f'{where}: [evaluators].device must be "auto", "cpu", "cuda" or "cuda:N", '
            f"got {evaluators.device!r}"
        )
    for role in ("classifier", "segmenter", "features"):
        choice = getattr(evaluators, role)
        offered = evaluator_registry.choices(role)
        if choice in offered or (role == "features" and HF_FEATURES_RE.fullmatch(choice)):
            continue
        hub = ' or "hf:ORG/NAME@REVISION" with the full 40-hex commit (a branch name moves)' * (
            role == "features"
        )
        raise ConfigError(
            f"{where}: [evaluators].{role} must be one of {', '.join(map(repr, offered))}{hub}, got {choice!r}"
        )
    if evaluators.hf_sha256 and not evaluators.features.startswith("hf:"):
        raise ConfigError(
            f'{where}: [evaluators].hf_sha256 only applies to features = "hf:ORG/NAME@REVISION"'
        )
    from audit.weights.manifest import HUB_FILES

    unknown = sorted(set(evaluators.hf_sha256) - set(HUB_FILES))
    if unknown:
        raise ConfigError(
            f"{where}: [evaluators].hf_sha256 names {', '.join(map(repr, unknown))}; the files of a feature "
            f"backbone are {', '.join(HUB_FILES)}"
        )
    for filename, sha in evaluators.hf_sha256.items():
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
            raise ConfigError(
                f"{where}: [evaluators].hf_sha256.{filename} must be a sha256 (64 hex characters), got {sha!r}"
            )
    user = evaluators.user_classifier
    if (evaluators.classifier == "user") != (user is not None):
        raise ConfigError(
            f'{where}: classifier = "user" and an [evaluators.user_classifier] table go together '
            "(the table says which file, sha256, labels and input contract your network has)"
        )
    if user is not None:
        loc = f"{where}: [evaluators.user_classifier]"
        if not re.fullmatch(r"[0-9a-fA-F]{64}", user.sha256):
            raise ConfigError(f"{loc}.sha256 must be 64 hex digits (sha256sum FILE), got {user.sha256!r}")
        if (
            not user.labels
            or len(set(user.labels)) != len(user.labels)
            or any(not c or ":" in c for c in user.labels)
        ):
            raise ConfigError(
                f"{loc}.labels must list the network's output classes in order, unique, without ':'"
            )
        if len(user.value_range) != 2 or not user.value_range[0] < user.value_range[1]:
            raise ConfigError(
                f"{loc}.value_range must be [lo, hi] with lo < hi, got {list(user.value_range)}"
            )
        if user.size < 8 or user.channels < 1:
            raise ConfigError(f"{loc}: size must be >= 8 and channels >= 1")
        if user.format == "state_dict":
            from audit.evaluators.user import ARCHITECTURES

            if user.architecture not in ARCHITECTURES:
                raise ConfigError(
                    f"{loc}.architecture must be one of {', '.join(sorted(ARCHITECTURES))} for a state dict, "
                    f'got {user.architecture!r}; or save the network as TorchScript (format = "torchscript")'
                )
            if user.channels != 1:
                raise ConfigError(f"{loc}: the registered architectures take channels = 1")
        elif user.architecture:
            raise ConfigError(f'{loc}.architecture is only used with format = "state_dict"')
    if not evaluators.classifier_weights.startswith("densenet121-res224-"):
        raise ConfigError(
            f"{where}: [evaluators].classifier_weights must name a torchxrayvision DenseNet-121 "
            f'(e.g. "densenet121-res224-all"; see `xray-audit weights list`), got {evaluators.classifier_weights!r}'
        )


def _check_privacy(privacy: PrivacySection, evaluators: EvaluatorsSection, where: str) -> None:
    """Types and ranges; that the training manifest exists and has images is checked by the run's
    privacy stage, which loads it anyway (and then names its rows)."""
    loc = f"{where}: [privacy]"
    if privacy.features not in PRIVACY_FEATURES and not HF_FEATURES_RE.fullmatch(privacy.features):
        raise ConfigError(
            f"{loc}.features must be one of {', '.join(map(repr, PRIVACY_FEATURES))} or "
            f'"hf:ORG/NAME@REVISION" with the full 40-hex commit, got {privacy.features!r}'
        )
    if privacy.features == "user" and evaluators.user_classifier is None:
        raise ConfigError(
            f'{loc}.features = "user" embeds with your own network: add [evaluators.user_classifier] '
            '(with classifier = "user"), or pick another features value'
        )
    if not 0.0 < privacy.quantile < 0.5:
        raise ConfigError(
            f"{loc}.quantile must be in (0, 0.5): the share of held-out real images that may fall below "
            f"the memorisation threshold (0.01 is usual), got {privacy.quantile!r}"
        )
    if privacy.pixel_size < 16:
        raise ConfigError(f"{loc}.pixel_size must be >= 16 (128 is usual), got {privacy.pixel_size}")
    if not 0 <= privacy.max_shift <= privacy.pixel_size // 8:
        raise ConfigError(
            f"{loc}.max_shift must be between 0 and pixel_size / 8 = {privacy.pixel_size // 8} pixels (2 is "
            f"usual: the pixel search compares every shift up to it, as given and mirrored), got {privacy.max_shift}"
        )
    if privacy.k < 1:
        raise ConfigError(f"{loc}.k must be >= 1 (training neighbours kept per sample), got {privacy.k}")
    reid = privacy.reid_model
    if reid is not None and not SHA256_RE.fullmatch(reid.sha256):
        raise ConfigError(
            f"{loc}.reid_model.sha256 must be 64 hex digits (sha256sum FILE), got {reid.sha256!r}"
        )


def dump_toml(config: StudyConfig) -> str:
    """Serialise the resolved config as TOML (paths absolute), readable back by ``parse_config``."""
    d = config.to_dict()
    lines = ["[study]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in d["study"].items()]
    for m in d["models"]:
        lines += ["", "[[models]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in m.items() if v is not None]
    for section in ("metrics", "evaluators"):
        lines += ["", f"[{section}]"]
        # TOML has no null: an unset optional key is left out, which parses back to the same None.
        lines += [
            f"{k} = {_toml_value(v)}"
            for k, v in d[section].items()
            if v is not None and not isinstance(v, dict)
        ]
    for key, table in d["evaluators"].items():
        if isinstance(table, dict):
            lines += ["", f"[evaluators.{key}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    if "norberg" in d:
        lines += ["", "[norberg]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in d["norberg"].items()]
    if "privacy" in d:
        lines += ["", "[privacy]"]
        lines += [
            f"{k} = {_toml_value(v)}"
            for k, v in d["privacy"].items()
            if v is not None and not isinstance(v, dict)
        ]
        if d["privacy"]["reid_model"] is not None:
            lines += ["", "[privacy.reid_model]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in d["privacy"]["reid_model"].items()]
    if "reader_study" in d:
        lines += ["", "[reader_study]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in d["reader_study"].items()]
    return "\n".join(lines) + "\n"


def _toml_key(k: str) -> str:
    # A file name such as model.safetensors would be a dotted (nested) key if written bare.
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def toml_string(text: str | Path) -> str:
    """``text`` (or a path) as a TOML basic string."""
    return json.dumps(str(text))  # JSON string escapes are valid TOML basic-string escapes


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} to TOML")
