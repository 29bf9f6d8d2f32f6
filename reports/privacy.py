"""The privacy / memorisation audit of a run as report.html and the dashboard read it.

Torch-free, from the run directory's files only (see :mod:`audit.rundir`): ``privacy.parquet`` (the
nearest training image of every sample, and of every held-out reference in the ``real`` rows, which
calibrate the thresholds), ``privacy_training.parquet`` (the training manifest as loaded) and
run.json's ``"privacy"`` record. :func:`load_privacy` reads them (None without the audit),
:func:`model_table` gives the per-model numbers, :func:`closest_pairs` the samples nearest to the
training set (of the models :func:`pair_models` picks), :func:`histogram_bins` the shared bins of the
distance histograms and :func:`pair_images` the thumbnails of one pair. The page renders them in
:mod:`reports.sections.privacy`, the dashboard in ``dashboards/views/privacy.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from audit import rundir
from reports.run import REAL_COLOUR, ModelRow, model_colours
from reports.thumbnail import present, read_thumb

REAL = "real"  # the model whose rows are the held-out references
CLOSEST_PAIRS = 8  # pairs shown by default
FLAGGED_BY = ("features", "pixels", "both")
# Distance columns of privacy.parquet -> run.json's threshold key and the training image they point to.
SPACES = {
    "nn_distance": ("features", "train_case_id"),
    "nn_distance_pixel": ("pixels", "pixel_train_case_id"),
}
# summary.csv metrics the model table shows with their CI, beside the parquet's own numbers.
SUMMARY_METRICS = (
    "memorised_fraction",
    "authenticity",
    "privacy_auc",
    "alpha_precision",
    "beta_recall",
    "reid_score",
    "reid_score_max",
)
# Set-level metrics of a model's samples against the held-out references. The references' own row
# has no privacy_auc (0.5 by construction); its α/β rows are the calibration: training images (other
# real patients) scored in place of samples, what an ideal generator reaches at this n and embedding.
AGAINST_REAL = ("privacy_auc", "alpha_precision", "beta_recall")
CALIBRATED = ("alpha_precision", "beta_recall")
CALIBRATION_NOTE = (
    "calibration: training images (other real patients, never generated) scored in place of samples; "
    "an ideal generator's value at this number of references and this embedding"
)
HISTOGRAM_BINS = 30
BASELINE_HATCHES = ("/", "x", ".", "+", "\\")


def pixel_match(train_case_id: str, pixel_train_case_id: str, mirrored: bool) -> str:
    """Where the pixel-space nearest training image is, said against the feature-space one."""
    where = "same image" if pixel_train_case_id == train_case_id else f"training case {pixel_train_case_id}"
    return f"{where}, mirrored" if mirrored else where


# Why the training images may be missing from a page.
HIDDEN_NOTE = (
    "Training images are not shown: the run's [privacy].show_training_images is false (the training "
    "data may not leave its owner); pairs are named by training case id only, and samples that are "
    "training images (training-copy baselines) or flagged as copies of one are withheld too."
)
DEGRADE = "degrade"  # the model kind whose samples are damaged held-out references


@dataclasses.dataclass(frozen=True)
class Withheld:
    """Samples whose pixels no page may show while training images may not be shown: a
    ``training-copy`` baseline's samples are training images (plus noise), and a sample the audit
    flagged is, by its own measure, as close to a training patient as a copy. Hiding only the training
    thumbnails would let either put a training image on the page."""

    copies: frozenset[str]  # models of kind training-copy
    flagged: Mapping[tuple[str, str, int], str]  # (model, case_id, sample) -> training case it copies

    def reason(self, model: str, case_id: str, sample: int) -> str | None:
        """Why this sample's pixels are withheld (a placeholder's text), None when it may be shown."""
        if model in self.copies:
            return "withheld: a training image (training-copy baseline) and training images are not shown"
        hit = self.flagged.get((str(model), str(case_id), int(sample)))
        if hit is not None:
            return f"withheld: flagged as a copy of training case {hit}, and training images are not shown"
        return None


def withheld_samples(
    models: Sequence[ModelRow], info: Mapping[str, Any], privacy: PrivacyFiles | None
) -> Withheld:
    """What :class:`Withheld` keeps off the pages of a run (``info``: run.json). Nothing when the run's
    privacy record says ``show_training_images = true``; otherwise every training-copy model's samples
    (also in a run without the audit, which never said training pixels may be shown) and every flagged
    sample of the generators (the real rows and their degradations are held-out patients' images)."""
    if rundir.shows_training_images(info):
        return Withheld(frozenset(), {})
    copies = frozenset(m.name for m in models if m.kind == rundir.TRAINING_COPY_KIND)
    flagged: dict[tuple[str, str, int], str] = {}
    if privacy is not None:
        # The references, and degradations of them, are held-out patients' images shown beside them
        # anyway: a flag there is the calibration's false positive, not a training image.
        held_out = reference_names(models) | {m.name for m in models if m.kind == DEGRADE}
        rows = privacy.rows[privacy.rows["flagged"] & ~privacy.rows["model"].isin(held_out)]
        for r in rows.itertuples(index=False):
            # The image the flagging space found (pixels: the pixel-space neighbour).
            source = r.pixel_train_case_id if r.flagged_by == "pixels" else r.train_case_id
            flagged[(str(r.model), str(r.case_id), int(r.sample))] = str(source)
    return Withheld(copies, flagged)


@dataclasses.dataclass(frozen=True)
class PrivacyInfo:
    """run.json's ``"privacy"`` record: how the audit was configured and its thresholds."""

    features: str  # the feature evaluator's name ("" when not recorded)
    metric: str  # the feature distance: "cosine" or "l2"
    pixel_size: int | None
    quantile: float | None
    k: int | None
    thresholds: Mapping[str, float]  # "features" / "pixels" -> distance below which a sample is flagged
    n_training: int | None
    # Training pixels go on a page only when the record says so explicitly: a run without the record
    # (or with a value that is not a boolean) shows ids only.
    show_training_images: bool
    reid_model: str | None  # sha256 of the re-ID network, None without one
    # The per-space quantile level both thresholds sit at, chosen so that ``quantile`` of the held-out
    # references is flagged by either space (audit.privacy.union_thresholds); None when not recorded.
    level: float | None = None
    max_shift: int | None = None  # the pixel search's largest shift in pixels; None when not recorded

    @property
    def pixel_text(self) -> str:
        """How the pixel distance was taken, for the pages."""
        size = f"{self.pixel_size}² " if self.pixel_size else ""
        if self.max_shift:
            return (
                f"L2 / √pixels on {size}images, the smallest over the sample as generated and mirrored, each "
                f"moved by up to {self.max_shift} pixels, against the training image's centred window"
            )
        return f"L2 / √pixels on {size}images, as generated or mirrored, whichever is nearer"

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> PrivacyInfo:
        record = info.get("privacy")
        record = record if isinstance(record, Mapping) else {}
        raw = record.get("thresholds")
        thresholds = {
            str(k): _number(v)
            for k, v in (raw.items() if isinstance(raw, Mapping) else ())
            if _number(v) is not None
        }
        return cls(
            features=str(record.get("features") or ""),
            metric=str(record.get("metric") or ""),
            pixel_size=_integer(record.get("pixel_size")),
            quantile=_number(record.get("quantile")),
            k=_integer(record.get("k")),
            thresholds=thresholds,  # type: ignore[arg-type]
            n_training=_integer(record.get("n_training")),
            show_training_images=rundir.shows_training_images(info),
            reid_model=str(record["reid_model"]) if record.get("reid_model") else None,
            level=_number(record.get("level")),
            max_shift=_integer(record.get("max_shift")),
        )

    def threshold(self, column: str) -> float | None:
        """The threshold of a distance column (``nn_distance`` / ``nn_distance_pixel``)."""
        return self.thresholds.get(SPACES[column][0])


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


@dataclasses.dataclass(frozen=True)
class PrivacyFiles:
    """A run's privacy audit as read."""

    run_dir: Path
    rows: pd.DataFrame  # privacy.parquet, columns rundir.PRIVACY_COLUMNS
    training: pd.DataFrame | None  # privacy_training.parquet (None when missing)
    info: PrivacyInfo

    @property
    def has_reid(self) -> bool:
        return bool(np.isfinite(self.rows["reid_score"].to_numpy(np.float64)).any())

    def training_path(self, case_id: str) -> str | None:
        """The image path of a training case, None when unknown."""
        if self.training is None:
            return None
        hit = self.training.loc[self.training["case_id"] == case_id, "image"]
        return present(hit.iloc[0]) if len(hit) else None


def _require(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))}); "
            "it was not written by this version of xray-audit — re-run `xray-audit run STUDY.toml`"
        )


def load_privacy(run_dir: str | Path, info: Mapping[str, Any] | None = None) -> PrivacyFiles | None:
    """The run's privacy audit, or None when it has no privacy.parquet, or when its run.json has no
    ``"privacy"`` record (files left by an earlier configuration). ``info`` is run.json as already read
    (read here when not given)."""
    run = Path(run_dir)
    path = run / rundir.PRIVACY
    if not path.exists():
        return None
    if info is None:
        try:
            info = json.loads((run / rundir.RUN_JSON).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            info = {}
    if isinstance(info, Mapping) and info and "privacy" not in info:
        return None
    rows = pd.read_parquet(path)
    _require(rows, rundir.PRIVACY_COLUMNS, path)
    rows = rows.loc[:, list(rundir.PRIVACY_COLUMNS)].copy()
    for column in ("model", "case_id", "train_case_id", "pixel_train_case_id"):
        rows[column] = rows[column].astype(str)
    rows["flagged_by"] = rows["flagged_by"].fillna("").astype(str)
    rows["flagged"] = rows["flagged"].fillna(False).astype(bool)
    rows["pixel_mirrored"] = rows["pixel_mirrored"].fillna(False).astype(bool)
    for column in ("nn_distance", "nn_distance_pixel", "reid_score", "reid_score_max"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce").astype(np.float64)
    training: pd.DataFrame | None = None
    training_path = run / rundir.PRIVACY_TRAINING
    if training_path.exists():
        training = pd.read_parquet(training_path)
        _require(training, ("case_id", "image"), training_path)
        training["case_id"] = training["case_id"].astype(str)
    return PrivacyFiles(run, rows, training, PrivacyInfo.from_info(info if isinstance(info, Mapping) else {}))


def reference_names(models: Sequence[ModelRow]) -> frozenset[str]:
    """The models whose privacy rows are the held-out references (the calibration): every model of kind
    ``real``, whatever its name, and a model named ``real`` the run does not describe."""
    known = {m.name for m in models}
    return frozenset({m.name for m in models if m.is_real} | ({REAL} - known))


def display_name(name: str, models: Sequence[ModelRow]) -> str:
    """A model's name in a legend or caption: the references marked as the calibration, a sanity
    baseline as one (a training-copy's samples are not generated images)."""
    if name in reference_names(models):
        return f"{name} (held-out, calibration)"
    if any(m.name == name and m.is_baseline for m in models):
        return f"{name} (sanity baseline)"
    return name


def ordered_models(
    rows: pd.DataFrame, order: Sequence[str], references: frozenset[str] = frozenset({REAL})
) -> list[str]:
    """The models of privacy.parquet in ``order`` (the report's), any others after them, the
    ``references`` (:func:`reference_names`) last."""
    present_models = list(dict.fromkeys(rows["model"]))
    out = [m for m in order if m in present_models] + [m for m in present_models if m not in order]
    return [m for m in out if m not in references] + [m for m in out if m in references]


def model_table(
    privacy: PrivacyFiles,
    summary: pd.DataFrame,
    order: Sequence[str],
    references: frozenset[str] = frozenset({REAL}),
) -> pd.DataFrame:
    """One row per model (in :func:`ordered_models` order): ``n`` samples, ``flagged`` count,
    ``memorised`` (flagged share of the samples), the shares flagged by ``features`` only, ``pixels``
    only and ``both``, ``authentic`` share, mean ``reid_score`` and ``reid_score_max`` (NaN without
    scores), all from privacy.parquet; and for each of :data:`SUMMARY_METRICS` summary.csv's
    all-cases ``<metric>``, ``<metric>_ci_low``, ``<metric>_ci_high`` (NaN when absent)."""
    rows = privacy.rows
    index = summary[summary["group"].fillna("") == ""] if "group" in summary.columns else summary
    index = index.drop_duplicates(["model", "metric"], keep="last").set_index(["model", "metric"])
    out = []
    for model in ordered_models(rows, order, references):
        grp = rows[rows["model"] == model]
        n = len(grp)
        by = grp["flagged_by"].value_counts()
        authentic = pd.to_numeric(grp["authentic"], errors="coerce").astype(np.float64)
        record: dict[str, Any] = {
            "model": model,
            "n": n,
            "flagged": int(grp["flagged"].sum()),
            "memorised": float(grp["flagged"].mean()) if n else math.nan,
            **{f"by_{kind}": float(by.get(kind, 0)) / n if n else math.nan for kind in FLAGGED_BY},
            "authentic": float(authentic.mean()) if authentic.notna().any() else math.nan,
            "reid_score": _mean(grp["reid_score"]),
            "reid_score_max": _mean(grp["reid_score_max"]),
        }
        for metric in SUMMARY_METRICS:
            key = (model, metric)
            have = key in index.index
            for suffix, column in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                value = pd.to_numeric(index.at[key, column], errors="coerce") if have else math.nan
                record[f"{metric}{suffix}"] = float(value)
        out.append(record)
    return pd.DataFrame(out)


def _mean(values: pd.Series) -> float:
    finite = values.to_numpy(np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if finite.size else math.nan


def pair_models(models: Sequence[ModelRow], privacy: PrivacyFiles) -> list[str]:
    """Whose samples the closest pairs come from: the models under evaluation, or the sanity baselines
    when there are none (a training-copy baseline would otherwise fill the list); never the real rows."""
    present_models = set(privacy.rows["model"])
    known = {m.name for m in models}
    generators = [m.name for m in models if not m.is_real and not m.is_baseline and m.name in present_models]
    generators += sorted(n for n in present_models if n not in known and n not in reference_names(models))
    return generators or [m.name for m in models if m.is_baseline and m.name in present_models]


def histogram_markers(models: Sequence[ModelRow]) -> dict[str, dict[str, Any]]:
    """Plotly ``marker`` of each model's distance histogram: the report's colour per model; every
    sanity baseline shares one grey, so the second and later get a hatch to stay apart when overlaid;
    the real rows (the reference) are an outline only."""
    colours = model_colours(models)
    out: dict[str, dict[str, Any]] = {}
    baselines = 0
    for m in models:
        if m.is_real or m.name == REAL:
            out[m.name] = {"color": "rgba(0,0,0,0)", "line": {"color": REAL_COLOUR, "width": 2}}
            continue
        out[m.name] = {"color": colours[m.name]}
        if m.is_baseline:
            if baselines:
                out[m.name]["pattern"] = {"shape": BASELINE_HATCHES[(baselines - 1) % len(BASELINE_HATCHES)]}
            baselines += 1
    return out


def closest_pairs(
    privacy: PrivacyFiles, models: Sequence[str], k: int = CLOSEST_PAIRS, column: str = "nn_distance"
) -> pd.DataFrame:
    """The ``k`` rows of ``models`` with the smallest ``column`` distance (NaN never), ties by model,
    case id and sample: the samples nearest to a training image."""
    rows = privacy.rows[privacy.rows["model"].isin(models)]
    rows = rows[np.isfinite(rows[column].to_numpy(np.float64))]
    rows = rows.sort_values([column, "model", "case_id", "sample"], kind="stable")
    return rows.head(max(int(k), 0)).reset_index(drop=True)


def histogram_bins(
    privacy: PrivacyFiles, column: str, n_bins: int = HISTOGRAM_BINS
) -> dict[str, float] | None:
    """Plotly ``xbins`` shared by every model's histogram of ``column`` (and reaching its threshold):
    ``n_bins`` equal bins over all finite values; None when there are none."""
    values = privacy.rows[column].to_numpy(np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    low, high = float(values.min()), float(values.max())
    threshold = privacy.info.threshold(column)
    if threshold is not None:
        low, high = min(low, threshold), max(high, threshold)
    if high <= low:  # one value: one bin around it
        return {"start": low - 0.5, "end": low + 0.5, "size": 1.0}
    size = (high - low) / n_bins
    # The end a hair past the maximum, so the largest value falls inside the last bin.
    return {"start": low, "end": high + size * 1e-6, "size": size}


def sample_path(samples: pd.DataFrame, run_dir: Path, model: str, case_id: str, sample: int) -> str | None:
    """The image path samples.parquet records for a sample (run-relative paths made absolute)."""
    hit = samples[
        (samples["model"] == model) & (samples["case_id"] == case_id) & (samples["sample"] == sample)
    ]
    path = present(hit["path"].iloc[0]) if len(hit) else None
    if path is not None and not Path(path).is_absolute():
        path = str(run_dir / path)
    return path


@dataclasses.dataclass(frozen=True)
class PairImages:
    """Thumbnails of one (sample, nearest training image) pair; an image is None with the reason why."""

    generated: np.ndarray | None
    generated_why: str
    training: np.ndarray | None  # None also when training images are not to be shown
    training_why: str
    difference: np.ndarray | None  # |generated - training| at the generated thumbnail's size
    difference_why: str


def pair_images(
    generated_path: str | None,
    training_path: str | None,
    size: int,
    show_training: bool,
    mirrored: bool = False,
) -> PairImages:
    """The pair's thumbnails (longer side at most ``size``). The training image is never read when
    ``show_training`` is False, so its pixels cannot reach a page. ``mirrored``: the pair was matched
    with the sample mirrored (privacy.parquet's pixel_mirrored), so the training image is shown
    mirrored too and the difference lines the two up."""
    generated, why = read_thumb(generated_path, size, _name)
    if not show_training:
        return PairImages(generated, why, None, "hidden", None, "hidden")
    training, training_why = read_thumb(training_path, size, _name)
    if training is not None and mirrored:
        training = np.ascontiguousarray(training[:, ::-1])
    if generated is None or training is None:
        reason = why or training_why
        return PairImages(generated, why, training, training_why, None, f"no difference: {reason}")
    if training.shape != generated.shape:
        # Another size (the nearest-neighbour search compares centre crops at pixel_size): stretched to
        # the generated thumbnail, as the difference is only a visual aid.
        h, w = generated.shape[:2]
        im = Image.fromarray(np.ascontiguousarray(training, dtype=np.float32))
        training = np.clip(np.asarray(im.resize((w, h), Image.Resampling.BILINEAR)), 0.0, 1.0)
    difference = np.abs(generated.astype(np.float32) - training.astype(np.float32))
    return PairImages(generated, why, training, "", difference, "")


def _name(path: str) -> str:
    return Path(path).name
