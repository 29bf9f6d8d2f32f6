"""Fake run directories for tests and benchmarks: :class:`FakeRun`, the description of one, and
:func:`write_fake_run`, which writes it as a finished run per the :mod:`audit.rundir` contract (cases,
samples as PNGs, per-sample values, summary, failures, config.toml, run.json) without generators,
evaluators or torch.

What a spec does not give is drawn from one generator seeded with ``draw_seed``, always in this order,
so that a spec gives the same files every time: per case, its reference image; then per model (in
order) and per sample, the sample's pixels (not for ``real``, whose sample is the reference) followed
by one uniform value in [0, 1) per metric of ``metrics`` that the model has.

Layout under ``root``: ``run/`` (the run directory), ``data/<case_id>.png`` (the references) and
``data/<case_id>_anatomy.png`` (the masks); samples where their path template says (by default
``run/samples/<model>/<case_id>_s<sample>.png``, as the runner stores what it generated).

With :attr:`FakeRun.privacy` (:class:`FakePrivacy`) the run also has a privacy audit: the training
images ``train/<case_id>.png``, privacy.parquet, privacy_training.parquet, run.json's ``"privacy"``
record and the privacy metrics in per_sample.parquet and summary.csv. What it draws comes from a second
generator seeded with ``(draw_seed, 19)``, so a spec without it writes exactly the files it always did.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit import __version__, rundir
from audit.atomic import sha256_bytes
from audit.metrics import catalogue
from audit.png import encode_png

RUN_DIR = "run"
DATA_DIR = "data"
TRAIN_DIR = "train"
REAL = "real"
SAMPLE_PATH = f"{RUN_DIR}/{rundir.SAMPLES_DIR}/{{model}}/{{case_id}}_s{{sample}}.png"
# Characters of a model name that cannot be part of a file name (tests use hostile names).
_UNSAFE = str.maketrans({c: "_" for c in "<>/"})
# run.json's keys and fixed, recognisable values; FakeRun.run_info replaces or adds keys.
_RUN_INFO: dict[str, Any] = {
    "config_hash": "abcdef0123456789" * 4,
    "started": "2025-01-02T03:04:05+00:00",
    "finished": "2025-01-02T03:05:30+00:00",
    "timings": {"load": 0.52, "pixel_metrics": 73.4},
}


@dataclasses.dataclass(frozen=True)
class PngStyle:
    """How an image is stored. Without ``tag``: the suite's own metadata-free PNG
    (:func:`audit.png.encode_png`, rounded to ``bits``). With ``tag`` (formatted with ``model`` and
    ``case_id``): a Pillow PNG holding the tag in tEXt, iTXt and zTXt chunks beside an empty EXIF block,
    pixels truncated to integers, as an outside exporter leaves them; a reader study must not pass
    any of that on."""

    bits: int = 8
    tag: str | None = None

    def __post_init__(self) -> None:
        if self.bits not in (8, 16):
            raise ValueError(f"PngStyle.bits must be 8 or 16, got {self.bits}")

    def encode(self, pixels: np.ndarray, model: str, case_id: str) -> bytes:
        if self.tag is None:
            return encode_png(pixels, self.bits)
        return _tagged_png(pixels, self.bits, self.tag.format(model=model, case_id=case_id))


def _tagged_png(pixels: np.ndarray, bits: int, text: str) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", text)
    info.add_itxt("Comment", text)
    info.add(b"zTXt", b"Title\x00\x00" + zlib.compress(text.encode()))
    dtype = np.uint16 if bits == 16 else np.uint8
    out = io.BytesIO()
    Image.fromarray((pixels * (2**bits - 1)).astype(dtype)).save(
        out, format="PNG", pnginfo=info, exif=Image.Exif()
    )
    return out.getvalue()


@dataclasses.dataclass(frozen=True)
class FakeModel:
    """One ``[[models]]`` table and how its samples look.

    ``table``: the table's keys beyond name and kind. ``shape``: its samples' (height, width), None for
    the references' shape. ``noise``: None draws uniform random pixels; a number draws the case's
    reference plus Gaussian noise of that SD, clipped to [0, 1] (less noise, a better model).
    ``generation``: values of :data:`audit.rundir.GENERATION_COLUMNS` for its samples (a generating
    model's samples also record their case's ``prompt``). ``path``: where its samples go, a template
    relative to the root with ``{model}``, ``{case_id}`` and ``{sample}``; None for
    :attr:`FakeRun.sample_path`. A ``real`` model's sample is the case's reference itself.
    """

    name: str
    kind: str = "folder"
    table: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    shape: tuple[int, int] | None = None
    png: PngStyle = PngStyle()
    noise: float | None = None
    generation: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    path: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.generation) - set(rundir.GENERATION_COLUMNS))
        if unknown:
            raise ValueError(
                f"model {self.name!r}: generation keys {unknown} are not {rundir.GENERATION_COLUMNS}"
            )

    def draw(self, rng: np.random.Generator, reference: np.ndarray) -> np.ndarray:
        if self.noise is None:
            return rng.random(self.shape or reference.shape[:2])
        return np.clip(reference + rng.normal(0.0, self.noise, reference.shape), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class FakePrivacy:
    """A privacy audit of the run (see :mod:`audit.rundir` for its files).

    ``n_training`` training images ``t000``, ``t001``, ... are drawn uniform at the run's
    ``image_shape``. Per row of samples.parquet (the ``real`` rows are the held-out references, the
    calibration) both nearest-training distances are drawn uniform in [0, ``closeness[model]``)
    (default 1: a model given a small scale sits close to the training set), and the nearest training
    images uniformly. Each threshold is the ``quantile`` of the real rows' distances
    (``np.quantile``, linear) and a row is flagged when a distance is strictly below it. A row is
    authentic when its feature distance is at least its training image's own drawn nearest-other
    distance (Alaa et al. 2022). ``reid`` draws re-ID scores (NaN otherwise). ``rows`` is
    privacy.parquet as given instead of drawn (thresholds still from its real rows). ``record``:
    run.json ``"privacy"`` keys replacing the drawn record's.
    """

    n_training: int = 6
    quantile: float = 0.25
    closeness: Mapping[str, float] = dataclasses.field(default_factory=dict)
    reid: bool = False
    show_training_images: bool = True
    features: str = "demo-features"
    rows: pd.DataFrame | None = None
    record: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class FakeRun:
    """A run to write: its cases, models and what is known of their results.

    ``references``/``masks``: one image per case (float in [0, 1]; masks (H, W, 3) bool, written to
    the ``anatomy_mask`` column); references not given are drawn uniform at ``image_shape``.
    ``columns``: further columns of cases.parquet, one value per case. ``metrics``: per-sample metrics
    to draw, name -> higher_is_better; ``real_metrics`` those of them the ``real`` model has (a
    reference compared with itself has no paired metrics). ``per_sample``: the per-sample values
    instead of drawing them. ``summary``: summary.csv; None gives each model's and metric's mean over
    cases with no CI. ``failures``: model -> how many failed generations failures.csv records (cases
    x000, x001, ... outside the cohort, so that every case keeps its samples). ``seed`` is ``[study].seed``
    and the first sample's seed; ``config``: config.toml's tables beyond ``[study]`` and
    ``[[models]]``; ``run_info``: run.json keys replacing the defaults. ``privacy``: a privacy audit
    (:class:`FakePrivacy`); its per-sample metrics join drawn per-sample values only (a given
    ``per_sample`` is written as given).
    """

    models: tuple[FakeModel, ...]
    case_ids: tuple[str, ...]
    name: str = "Synthetic study"
    seed: int = 7
    draw_seed: int = 0
    samples_per_case: int = 1
    image_shape: tuple[int, int] = (48, 64)
    png: PngStyle = PngStyle()
    references: Sequence[np.ndarray] | None = None
    masks: Sequence[np.ndarray] | None = None
    columns: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    metrics: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    real_metrics: tuple[str, ...] = ()
    per_sample: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    failures: Mapping[str, int] = dataclasses.field(default_factory=dict)
    config: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    run_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sample_path: str = SAMPLE_PATH
    privacy: FakePrivacy | None = None

    def __post_init__(self) -> None:
        n = len(self.case_ids)
        per_case = {"references": self.references, "masks": self.masks, **self.columns}
        problems = [
            f"{k} has {len(v)} values for {n} cases"
            for k, v in per_case.items()
            if v is not None and len(v) != n
        ]
        names = [m.name for m in self.models]
        problems += [f"model {m!r} is listed twice" for m in sorted({m for m in names if names.count(m) > 1})]
        problems += [f"failures name unknown model {m!r}" for m in self.failures if m not in names]
        problems += [
            f"real_metrics {m!r} is not in metrics" for m in self.real_metrics if m not in self.metrics
        ]
        problems += [
            f"config table [{k}] is written from the spec itself"
            for k in ("study", "models")
            if k in self.config
        ]
        if self.per_sample is not None and self.metrics:
            problems.append("give per_sample or metrics to draw, not both")
        if self.samples_per_case < 1:
            problems.append(f"samples_per_case must be >= 1, got {self.samples_per_case}")
        if self.privacy is not None:
            problems += _privacy_problems(self.privacy, self.models)
        if problems:
            raise ValueError("FakeRun: " + "; ".join(problems))


def write_fake_run(root: str | Path, spec: FakeRun) -> Path:
    """Write ``spec`` under ``root`` (see the module docstring) and return the run directory.

    Scratch data: files are written directly, not atomically, and ``root/run`` must not exist yet."""
    root = Path(root)
    run = root / RUN_DIR
    run.mkdir(parents=True)
    (root / DATA_DIR).mkdir(parents=True, exist_ok=True)
    cases, samples, values = _write_images(root, spec)
    pd.DataFrame(cases).to_parquet(run / rundir.CASES, index=False)
    pd.DataFrame(samples).to_parquet(run / rundir.SAMPLES, index=False)
    higher_is_better: dict[str, Any] = dict(spec.metrics)
    privacy_info: dict[str, Any] = {}
    auc_rows: list[dict[str, Any]] = []
    if spec.privacy is not None:
        rows, privacy_info = _write_privacy(root, spec, samples)
        if spec.per_sample is None:
            values += _privacy_values(rows)
            higher_is_better.update({m: catalogue.METRICS[m].higher_is_better for m in PRIVACY_PER_SAMPLE})
        auc_rows = _privacy_auc_rows(rows, {m.name for m in spec.models if m.kind == REAL})
    per_sample = (
        spec.per_sample
        if spec.per_sample is not None
        else pd.DataFrame(values, columns=list(rundir.PER_SAMPLE_COLUMNS))
    )
    per_sample.to_parquet(run / rundir.PER_SAMPLE, index=False)
    summary = spec.summary
    if summary is None:
        summary = _mean_summary(per_sample, higher_is_better)
        if auc_rows:
            auc = pd.DataFrame(auc_rows, columns=list(rundir.SUMMARY_COLUMNS))
            summary = pd.concat([summary, auc], ignore_index=True)
    summary.to_csv(run / rundir.SUMMARY, index=False)
    failures = _failures(spec.failures)
    if len(failures):
        failures.to_csv(run / rundir.FAILURES, index=False)
    (run / rundir.CONFIG_TOML).write_text(_toml(_config(spec, root)), encoding="utf-8")
    info = {
        "xray_audit_version": __version__,
        "study": spec.name,
        **_RUN_INFO,
        "n_cases": len(spec.case_ids),
        "n_models": len(spec.models),
        "n_samples": len(samples),
        "n_failures": len(failures),
        "versions": {"xray-audit": __version__, "numpy": np.__version__, "python": sys.version.split()[0]},
        **({"privacy": privacy_info} if spec.privacy is not None else {}),
        **spec.run_info,
    }
    (run / rundir.RUN_JSON).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return run


def _write_images(root: Path, spec: FakeRun) -> tuple[list[dict], list[dict], list[dict]]:
    """Write every reference, mask and sample in the documented draw order; return the rows of
    cases.parquet, samples.parquet and the drawn per-sample values."""
    rng = np.random.default_rng(spec.draw_seed)
    generating = any(m.generation for m in spec.models)
    cases, samples, values = [], [], []
    for i, case_id in enumerate(spec.case_ids):
        reference = spec.references[i] if spec.references is not None else rng.random(spec.image_shape)
        image = root / DATA_DIR / f"{case_id}.png"
        reference_digest = _write(image, spec.png.encode(reference, REAL, case_id))
        case: dict[str, Any] = {"case_id": case_id, "image": str(image)}
        if spec.masks is not None:
            mask = root / DATA_DIR / f"{case_id}_anatomy.png"
            _write(mask, encode_png(spec.masks[i]))
            case["anatomy_mask"] = str(mask)
        case.update({column: v[i] for column, v in spec.columns.items()})
        cases.append(case)
        for model in spec.models:
            is_real = model.kind == REAL
            for sample in range(1 if is_real else spec.samples_per_case):
                path, digest = image, reference_digest
                if not is_real:
                    path = root / (model.path or spec.sample_path).format(
                        model=model.name.translate(_UNSAFE), case_id=case_id, sample=sample
                    )
                    digest = _write(path, model.png.encode(model.draw(rng, reference), model.name, case_id))
                row = {
                    "model": model.name,
                    "case_id": case_id,
                    "sample": sample,
                    "seed": spec.seed + i * spec.samples_per_case + sample,
                    "path": str(path),
                    "sha256": digest,
                    "kind": model.kind,
                }
                if generating:
                    row.update(_generation(model, case))
                samples.append(row)
                values += [
                    {
                        "model": model.name,
                        "case_id": case_id,
                        "sample": sample,
                        "metric": metric,
                        "value": float(rng.random()),
                    }
                    for metric in spec.metrics
                    if not is_real or metric in spec.real_metrics
                ]
    return cases, samples, values


def summary_frame(
    estimates: Mapping[str, Mapping[str, tuple[float, float, float]]],
    n: int,
    higher_is_better: Mapping[str, bool],
) -> pd.DataFrame:
    """summary.csv rows from hand-picked ``{model: {metric: (value, ci_low, ci_high)}}``, each over ``n`` cases."""
    rows = [
        {
            "model": model,
            "metric": metric,
            "value": v,
            "ci_low": lo,
            "ci_high": hi,
            "n": n,
            "higher_is_better": higher_is_better[metric],
        }
        for model, metrics in estimates.items()
        for metric, (v, lo, hi) in metrics.items()
    ]
    return pd.DataFrame(rows, columns=list(rundir.SUMMARY_COLUMNS))


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha256_bytes(data)


def _generation(model: FakeModel, case: Mapping[str, Any]) -> dict[str, Any]:
    out = {column: model.generation.get(column) for column in rundir.GENERATION_COLUMNS}
    if model.generation and "prompt" not in model.generation:
        out["prompt"] = case.get("prompt")
    return out


def _mean_summary(per_sample: pd.DataFrame, higher_is_better: Mapping[str, bool]) -> pd.DataFrame:
    """Each model's and metric's mean over cases (samples averaged per case first); no CI."""
    per_case = per_sample.groupby(["model", "metric", "case_id"], sort=False)["value"].mean()
    rows = [
        {
            "model": model,
            "metric": metric,
            "value": float(v.mean()),
            "ci_low": math.nan,
            "ci_high": math.nan,
            "n": int(v.size),
            "higher_is_better": higher_is_better.get(metric, ""),
        }
        for (model, metric), v in per_case.groupby(level=["model", "metric"], sort=False)
    ]
    return pd.DataFrame(rows, columns=list(rundir.SUMMARY_COLUMNS))


def _failures(counts: Mapping[str, int]) -> pd.DataFrame:
    rows = [
        {"model": model, "case_id": f"x{i:03d}", "sample": 0, "stage": "generate", "error": f"boom {i}"}
        for model, n in counts.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows, columns=list(rundir.FAILURES_COLUMNS))


# The per-sample privacy metrics and the privacy.parquet column each is the per-sample value of.
PRIVACY_PER_SAMPLE = {
    "nn_distance": "nn_distance",
    "nn_distance_pixel": "nn_distance_pixel",
    "memorised_fraction": "flagged",
    "authenticity": "authentic",
    "reid_score": "reid_score",
    "reid_score_max": "reid_score_max",
}


def _privacy_problems(privacy: FakePrivacy, models: Sequence[FakeModel]) -> list[str]:
    names = {m.name for m in models}
    out = [f"privacy.closeness names unknown model {m!r}" for m in privacy.closeness if m not in names]
    if privacy.n_training < 1:
        out.append(f"privacy.n_training must be >= 1, got {privacy.n_training}")
    if not 0.0 < privacy.quantile < 1.0:
        out.append(f"privacy.quantile must be in (0, 1), got {privacy.quantile}")
    if privacy.rows is None and not any(m.kind == REAL for m in models):
        out.append("privacy needs a real model: its rows (the held-out references) calibrate the thresholds")
    if privacy.rows is not None:
        missing = [c for c in rundir.PRIVACY_COLUMNS if c not in privacy.rows.columns]
        if missing:
            out.append(f"privacy.rows lacks column(s) {', '.join(missing)} of rundir.PRIVACY_COLUMNS")
    return out


def _write_privacy(
    root: Path, spec: FakeRun, samples: Sequence[Mapping[str, Any]]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Write the training images, privacy_training.parquet and privacy.parquet; return privacy.parquet's
    rows and run.json's "privacy" record."""
    privacy = spec.privacy
    assert privacy is not None
    run = root / RUN_DIR
    # Its own stream: the files a spec without privacy writes stay byte-identical.
    rng = np.random.default_rng([spec.draw_seed, 19])
    n = privacy.n_training
    training = []
    for i in range(n):
        path = root / TRAIN_DIR / f"t{i:03d}.png"
        digest = _write(path, encode_png(rng.random(spec.image_shape)))
        training.append({"case_id": f"t{i:03d}", "image": str(path), "sha256": digest})
    pd.DataFrame(training, columns=list(rundir.PRIVACY_TRAINING_COLUMNS)).to_parquet(
        run / rundir.PRIVACY_TRAINING, index=False
    )
    real = {m.name for m in spec.models if m.kind == REAL}
    if privacy.rows is not None:
        rows = privacy.rows.loc[:, list(rundir.PRIVACY_COLUMNS)].copy()
        is_real = rows["model"].isin(real).to_numpy()
        thresholds = {
            "features": _quantile(rows["nn_distance"].to_numpy(np.float64)[is_real], privacy.quantile),
            "pixels": _quantile(rows["nn_distance_pixel"].to_numpy(np.float64)[is_real], privacy.quantile),
        }
    else:
        own_nn = rng.random(n) * 0.5  # each training image's distance to its nearest other one
        drawn = []
        for s in samples:
            scale = float(privacy.closeness.get(s["model"], 1.0))
            t, t_pixel = (int(i) for i in rng.integers(n, size=2))
            distance, pixel = rng.random(2) * scale
            reid, reid_gap = rng.random(2)  # drawn either way: the stream does not depend on `reid`
            drawn.append(
                {
                    "model": s["model"],
                    "case_id": s["case_id"],
                    "sample": s["sample"],
                    "train_case_id": f"t{t:03d}",
                    "nn_distance": float(distance),
                    "pixel_train_case_id": f"t{t_pixel:03d}",
                    "nn_distance_pixel": float(pixel),
                    "pixel_mirrored": False,
                    "authentic": bool(distance >= own_nn[t]),
                    "reid_score": float(reid) if privacy.reid else math.nan,
                    "reid_score_max": float(reid + (1.0 - reid) * reid_gap) if privacy.reid else math.nan,
                }
            )
        rows = pd.DataFrame(drawn)
        is_real = rows["model"].isin(real).to_numpy()
        d, d_pixel = rows["nn_distance"].to_numpy(), rows["nn_distance_pixel"].to_numpy()
        thresholds = {
            "features": _quantile(d[is_real], privacy.quantile),
            "pixels": _quantile(d_pixel[is_real], privacy.quantile),
        }
        by_features, by_pixels = d < thresholds["features"], d_pixel < thresholds["pixels"]
        rows["flagged"] = by_features | by_pixels
        rows["flagged_by"] = np.select(
            [by_features & by_pixels, by_features, by_pixels], ["both", "features", "pixels"], ""
        )
        rows = rows.loc[:, list(rundir.PRIVACY_COLUMNS)]
    rows.to_parquet(run / rundir.PRIVACY, index=False)
    info = {
        "features": privacy.features,
        "metric": "cosine",
        "pixel_size": 128,
        "max_shift": 2,
        "quantile": privacy.quantile,
        "k": 5,
        "thresholds": thresholds,
        "n_training": n,
        "show_training_images": privacy.show_training_images,
        "reid_model": "ab" * 32 if privacy.reid else None,
        **privacy.record,
    }
    return rows, info


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q, method="linear")) if values.size else math.nan


def _privacy_values(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """per_sample.parquet rows of the privacy metrics (re-ID only when scored)."""
    scored = bool(np.isfinite(rows["reid_score"].to_numpy(np.float64)).any())
    metrics = {m: c for m, c in PRIVACY_PER_SAMPLE.items() if scored or not m.startswith("reid")}
    return [
        {
            "model": r["model"],
            "case_id": r["case_id"],
            "sample": r["sample"],
            "metric": m,
            "value": float(r[c]),
        }
        for r in rows.to_dict("records")
        for m, c in metrics.items()
    ]


def _privacy_auc_rows(rows: pd.DataFrame, real: set[str]) -> list[dict[str, Any]]:
    """summary.csv rows of privacy_auc: per model, P(d > d_real) + ½ P(d = d_real) over its and the real
    rows' feature distances (no CI: nothing is resampled here)."""
    reference = rows.loc[rows["model"].isin(real), "nn_distance"].to_numpy(np.float64)
    out = []
    if reference.size == 0:
        return out
    for model, grp in rows[~rows["model"].isin(real)].groupby("model", sort=False):
        d = grp["nn_distance"].to_numpy(np.float64)[:, None]
        auc = float((d > reference).mean() + 0.5 * (d == reference).mean())
        out.append(
            {"model": model, "metric": "privacy_auc", "value": auc, "ci_low": math.nan, "ci_high": math.nan,
             "n": int(grp["case_id"].nunique()), "higher_is_better": catalogue.METRICS["privacy_auc"].higher_is_better}
        )  # fmt: skip
    return out


def _config(spec: FakeRun, root: Path) -> dict[str, Any]:
    study = {
        "name": spec.name,
        "cases": str(root / DATA_DIR / "cases.csv"),
        "output": str(root / RUN_DIR),
        "seed": spec.seed,
        "samples_per_case": spec.samples_per_case,
    }
    models = [{"name": m.name, "kind": m.kind, **m.table} for m in spec.models]
    return {"study": study, "models": models, **spec.config}


# TOML values by Python type; bool before int, which it subclasses.
_TOML_VALUES: tuple[tuple[type | tuple[type, ...], Callable[[Any], str]], ...] = (
    (bool, lambda v: "true" if v else "false"),
    ((int, float), repr),
    (str, json.dumps),  # JSON string escapes are valid TOML basic-string escapes
    ((list, tuple), lambda v: "[" + ", ".join(_toml_value(x) for x in v) + "]"),
    (Mapping, lambda v: "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"),
)


def _toml_value(value: Any) -> str:
    for kind, write in _TOML_VALUES:
        if isinstance(value, kind):
            return write(value)
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml(config: Mapping[str, Any]) -> str:
    """``config`` as TOML: a table per mapping, an array of tables per list of mappings (``[[models]]``)."""
    lines: list[str] = []
    for name, section in config.items():
        tables = section if isinstance(section, list) else [section]
        for table in tables:
            lines += ["", f"[[{name}]]" if isinstance(section, list) else f"[{name}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines[1:]) + "\n"
