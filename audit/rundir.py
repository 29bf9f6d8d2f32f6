"""The run directory: the contract between ``audit`` (writer) and reports, dashboards and the
reader study (readers). Torch-free on purpose, so readers can import it.

Layout of ``<output>/`` after ``xray-audit run STUDY.toml``::

    run.json            versions, config hash, timings, counts
    config.toml         the resolved study config (absolute paths)
    cases.parquet       the case manifest as loaded (image/mask paths made absolute)
    samples.parquet     one row per (model, case_id, sample):
                        model, case_id, sample, seed, path, sha256  (+ kind)
    per_sample.parquet  long format: model, case_id, sample, metric, value
    summary.csv         model, metric, value, ci_low, ci_high, n, higher_is_better (+ unit)
    failures.csv        model, case_id, sample, stage, error   (only when something failed)
    norberg_angles.parquet  every measured Norberg angle (only with [norberg] or `norberg evaluate`)
    norberg_summary.csv     Norberg agreement per source, model and metric   (same)
    norberg.json            how the Norberg angles were measured: sources, files, sha256   (same)
    privacy.parquet     one row per (model, case_id, sample) (only with [privacy]): the nearest
                        training image in feature and pixel space and what that says:
                        model, case_id, sample, train_case_id, nn_distance, pixel_train_case_id,
                        nn_distance_pixel, pixel_mirrored, flagged, flagged_by, authentic, reid_score,
                        reid_score_max
                        (the `real` rows are the held-out references: the thresholds' calibration)
    privacy_training.parquet  the training manifest as loaded: case_id, image (absolute), sha256
    report.html         self-contained report
    samples/<model>/    images the suite generated itself (degrade baselines, later diffusers)
    parts/              resumable per-(model, chunk) shards; safe to delete after a finished run

Every file is written atomically (temp file + rename), so a reader never sees a half file.

Readers take the settings of a run (confidence, bootstrap resamples, seed, pixel range, ...) from
:class:`RunSettings`, which parses ``config.toml`` once with :mod:`audit.config`'s own parser and
defaults, so every report, export and dashboard page agrees on them.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audit.config import ConfigError, EvaluatorsSection, MetricsSection, StudySection, parse_section

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
CONFIG_TOML = "config.toml"
CASES = "cases.parquet"
SAMPLES = "samples.parquet"
PER_SAMPLE = "per_sample.parquet"
SUMMARY = "summary.csv"
FAILURES = "failures.csv"
NORBERG_ANGLES = "norberg_angles.parquet"
NORBERG_SUMMARY = "norberg_summary.csv"
NORBERG_INFO = "norberg.json"
PRIVACY = "privacy.parquet"
PRIVACY_TRAINING = "privacy_training.parquet"
# The model kind whose samples are training images plus noise (audit.models.training_copy): no page
# and no reader study may show them unless the run says training images may be shown.
TRAINING_COPY_KIND = "training-copy"


def shows_training_images(info: Mapping[str, Any]) -> bool:
    """Whether run.json (``info``, as read) allows training pixels on a page or in a reader study: only
    when its ``"privacy"`` record says ``show_training_images = true`` explicitly (a run without the
    record, or with a value that is not a boolean, does not)."""
    record = info.get("privacy") if isinstance(info, Mapping) else None
    return isinstance(record, Mapping) and record.get("show_training_images") is True


REPORT_HTML = "report.html"
SAMPLES_DIR = "samples"
PARTS_DIR = "parts"

SAMPLES_COLUMNS = ("model", "case_id", "sample", "seed", "path", "sha256")
# After SAMPLES_COLUMNS and `kind` in samples.parquet: how a generated sample was made (null for
# models that do not generate). `weights` is a revision or a hash of the weights; `seconds` is the
# sample's share of its batch's wall time.
GENERATION_COLUMNS = (
    "steps",
    "guidance",
    "strength",
    "scheduler",
    "dtype",
    "weights",
    "prompt",
    "perturbation",
    "seconds",
    "source_case_id",  # the training case a `training-copy` baseline copied
)
PER_SAMPLE_COLUMNS = ("model", "case_id", "sample", "metric", "value")
SUMMARY_COLUMNS = ("model", "metric", "value", "ci_low", "ci_high", "n", "higher_is_better")
FAILURES_COLUMNS = ("model", "case_id", "sample", "stage", "error")
# privacy.parquet. Distances: nn_distance is cosine distance (1 - cos) to the nearest training image
# in the [privacy].features evaluator's space, nn_distance_pixel L2 / sqrt(pixels) on [0, 1] images: the
# smaller of the sample as generated and its left-right mirror image (pixel_mirrored: the mirror was nearer).
# flagged_by is "features", "pixels", "both" or "" (not flagged); reid_score(_max) are NaN without a
# [privacy.reid_model].
PRIVACY_COLUMNS = (
    "model",
    "case_id",
    "sample",
    "train_case_id",
    "nn_distance",
    "pixel_train_case_id",
    "nn_distance_pixel",
    "pixel_mirrored",
    "flagged",
    "flagged_by",
    "authentic",
    "reid_score",
    "reid_score_max",
)
PRIVACY_TRAINING_COLUMNS = ("case_id", "image", "sha256")


def require_run_dir(path: str | Path) -> Path:
    """Return ``path`` if it holds a finished run, else raise a clear error."""
    run = Path(path)
    missing = [name for name in (RUN_JSON, SUMMARY, SAMPLES, PER_SAMPLE) if not (run / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{run} is not a finished xray-audit run directory (missing {', '.join(missing)}); "
            f"run `xray-audit run STUDY.toml` first"
        )
    return run


# [study] keys a reader has no use for but parse_section requires: placeholders, never read.
_STUDY_PLACEHOLDERS = {"name": "", "cases": "-", "output": "-"}


def _fields(
    cls: type, table: Any, where: str, problems: list[str], required: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The keys of ``table`` that ``cls`` (a section of :mod:`audit.config`) knows, each typed by
    :func:`audit.config.parse_section`. A run directory's config was validated when the run was made,
    so an unknown key or a bad value (a hand-edited or foreign file) is a problem noted in ``problems``
    and left to the section's default instead of failing every reader."""
    if not isinstance(table, Mapping):
        if table is not None:
            problems.append(f"{where}: expected a table, got {type(table).__name__}; defaults used")
        return {}
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            problems.append(f"{where}: unknown key {key!r} ignored")
            continue
        try:
            parsed = parse_section(cls, {**(required or {}), key: value}, where)
        except ConfigError as exc:
            problems.append(f"{exc}; the default is used")
            continue
        out[key] = getattr(parsed, key)
    return out


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What a run's resolved ``config.toml`` fixes for the readers, parsed once.

    ``metrics`` and ``evaluators`` are :mod:`audit.config`'s own sections, built by its parser, so a
    key the file does not set has the default the runner used (``bootstrap_resamples`` 1000,
    ``confidence`` 0.95, ...). ``found`` is False when the file is missing or not valid TOML; every
    setting then has its default, ``text`` holds what could be read, and ``problems`` says why.
    ``models`` are the raw ``[[models]]`` tables in config order (their kinds are the runner's business).
    The statistics the readers compute themselves (paired tests, reader CIs, per-group bootstraps) use
    ``seed`` (``[study].seed``), ``bootstrap_resamples`` and ``confidence``.
    """

    metrics: MetricsSection = dataclasses.field(default_factory=MetricsSection)
    evaluators: EvaluatorsSection = dataclasses.field(default_factory=EvaluatorsSection)
    name: str = ""
    seed: int = _default(StudySection, "seed")
    samples_per_case: int = _default(StudySection, "samples_per_case")
    models: tuple[Mapping[str, Any], ...] = ()
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    text: str = ""
    found: bool = False
    problems: tuple[str, ...] = ()

    @classmethod
    def read(cls, run_dir: str | Path) -> RunSettings:
        """The settings of the run at ``run_dir`` (defaults, with a warning, when its config.toml is
        missing or unreadable)."""
        path = Path(run_dir) / CONFIG_TOML
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(problems=(f"{path} is missing; default settings used",))
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, where: str = CONFIG_TOML) -> RunSettings:
        """The settings of a config.toml's ``text``; see :meth:`read`."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            problem = f"{where} is not valid TOML ({exc}); default settings used"
            log.warning("%s", problem)
            return cls(text=text, problems=(problem,))
        problems: list[str] = []
        study = _fields(StudySection, raw.get("study"), f"{where}: [study]", problems, _STUDY_PLACEHOLDERS)
        metrics = _fields(MetricsSection, raw.get("metrics"), f"{where}: [metrics]", problems)
        evaluators = _fields(EvaluatorsSection, raw.get("evaluators"), f"{where}: [evaluators]", problems)
        models = raw.get("models", [])
        if not isinstance(models, list):
            problems.append(f"{where}: [[models]] is not a list of tables; ignored")
            models = []
        for problem in problems:
            log.warning("%s", problem)
        return cls(
            metrics=MetricsSection(**metrics),
            evaluators=EvaluatorsSection(**evaluators),
            name=str(study.get("name", "")),
            seed=int(study.get("seed", cls.seed)),
            samples_per_case=int(study.get("samples_per_case", cls.samples_per_case)),
            models=tuple(m for m in models if isinstance(m, Mapping)),
            raw=raw,
            text=text,
            found=True,
            problems=tuple(problems),
        )

    @property
    def confidence(self) -> float:
        return self.metrics.confidence

    @property
    def bootstrap_resamples(self) -> int:
        return self.metrics.bootstrap_resamples

    @property
    def pixel_range(self) -> float:
        return self.metrics.pixel_range

    @property
    def overlap_threshold(self) -> float:
        return self.metrics.overlap_threshold

    @property
    def resize(self) -> str:
        return self.metrics.resize

    @property
    def group_by(self) -> tuple[str, ...]:
        return self.metrics.group_by
