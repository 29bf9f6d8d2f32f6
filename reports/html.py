"""``report.html``: one self-contained page per run (plotly.js inline, images as data URIs).

The page is built only from the files of the run directory (see :mod:`audit.rundir`), so it can be
re-rendered at any time, on a machine without torch, and opened offline.  Sections: header, the
per-model table with confidence intervals, one distribution plot per metric, an image grid
(reference | condition | each model), failures, and provenance (config, versions, timings).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import itertools
import json
import logging
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from PIL import Image

from audit import __version__, images, rundir
from audit.atomic import write_text

log = logging.getLogger(__name__)

# Structural similarity first, then error magnitudes, then mask overlap: the order papers use.
METRIC_ORDER = (
    "ms_ssim", "ssim", "psnr", "mse", "mae", "overlap_precision", "overlap_recall", "overlap_f1",
)
METRIC_LABELS = {
    "ms_ssim": "MS-SSIM",
    "ssim": "SSIM",
    "psnr": "PSNR",
    "mse": "MSE",
    "mae": "MAE",
    "overlap_precision": "overlap precision",
    "overlap_recall": "overlap recall",
    "overlap_f1": "overlap F1",
}
# Metrics that compare a sample with its own reference: meaningless for the real model itself.
PAIRED_METRICS = frozenset(METRIC_ORDER)
THUMB_PX = 160
FAILURE_ROWS = 50
# Up to this many cases per model every point is drawn; above it only outliers, to keep the page light.
ALL_POINTS_MAX = 100
# Case-id hover labels cost ~10 bytes a point; beyond this many points per plot they are dropped.
HOVER_LABELS_MAX = 20_000
MAX_ERROR_CHARS = 400
GENERATOR_COLOURS = (
    "#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3",
    "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD",
)
BASELINE_COLOUR = "#A0A0A0"
REAL_COLOUR = "#333333"


def _e(value: Any) -> str:
    """HTML-escape anything (attribute-safe)."""
    return html.escape(str(value), quote=True)


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """Everything the report reads from a run directory, loaded once."""

    run_dir: Path
    summary: pd.DataFrame
    per_sample: pd.DataFrame
    samples: pd.DataFrame
    cases: pd.DataFrame | None
    config: Mapping[str, Any]
    config_text: str
    info: Mapping[str, Any]
    failures: pd.DataFrame | None


@dataclasses.dataclass(frozen=True)
class ModelRow:
    name: str
    kind: str
    params: Mapping[str, Any]  # kind-specific config keys (e.g. degradation, level)

    @property
    def is_real(self) -> bool:
        return self.kind == "real"

    @property
    def is_baseline(self) -> bool:
        return self.kind == "degrade"


@dataclasses.dataclass(frozen=True)
class MetricColumn:
    name: str
    higher_is_better: bool | None
    unit: str

    @property
    def label(self) -> str:
        return METRIC_LABELS.get(self.name, self.name)

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓", None: ""}[self.higher_is_better]


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))}); "
            "it was not written by this version of xray-audit — re-run `xray-audit run STUDY.toml`"
        )


def load_run(run_dir: str | Path) -> RunFiles:
    """Read the run directory's files; optional ones (cases, config, failures) may be absent."""
    run = rundir.require_run_dir(run_dir)

    summary_path = run / rundir.SUMMARY
    summary = pd.read_csv(summary_path, keep_default_na=True)
    _require_columns(summary, rundir.SUMMARY_COLUMNS, summary_path)
    summary["model"] = summary["model"].astype(str)
    summary["metric"] = summary["metric"].astype(str)
    for col in ("value", "ci_low", "ci_high", "n"):
        summary[col] = pd.to_numeric(summary[col], errors="coerce")

    per_sample_path = run / rundir.PER_SAMPLE
    per_sample = pd.read_parquet(per_sample_path)
    _require_columns(per_sample, rundir.PER_SAMPLE_COLUMNS, per_sample_path)
    per_sample = per_sample.loc[:, list(rundir.PER_SAMPLE_COLUMNS)]
    per_sample["value"] = pd.to_numeric(per_sample["value"], errors="coerce").astype(np.float64)

    samples_path = run / rundir.SAMPLES
    samples = pd.read_parquet(samples_path)
    _require_columns(samples, ("model", "case_id", "sample", "path"), samples_path)
    for frame in (per_sample, samples):
        frame["model"] = frame["model"].astype(str)
        frame["case_id"] = frame["case_id"].astype(str)

    cases: pd.DataFrame | None = None
    cases_path = run / rundir.CASES
    if cases_path.exists():
        cases = pd.read_parquet(cases_path)
        _require_columns(cases, ("case_id", "image"), cases_path)
        cases["case_id"] = cases["case_id"].astype(str)

    config: Mapping[str, Any] = {}
    config_text = ""
    config_path = run / rundir.CONFIG_TOML
    if config_path.exists():
        config_text = config_path.read_text(encoding="utf-8")
        try:
            config = tomllib.loads(config_text)
        except tomllib.TOMLDecodeError as exc:
            log.warning("%s is not valid TOML (%s); the report shows it as text only", config_path, exc)

    info_path = run / rundir.RUN_JSON
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{info_path}: not valid JSON ({exc}); re-run `xray-audit run STUDY.toml`") from None
    if not isinstance(info, Mapping):
        # The file's content is wrong, not the caller's argument type.
        raise ValueError(f"{info_path}: expected a JSON object, got {type(info).__name__}")  # noqa: TRY004

    failures: pd.DataFrame | None = None
    failures_path = run / rundir.FAILURES
    if failures_path.exists():
        failures = pd.read_csv(failures_path, dtype=str, keep_default_na=False)
        for col in rundir.FAILURES_COLUMNS:
            if col not in failures.columns:
                failures[col] = ""

    return RunFiles(run, summary, per_sample, samples, cases, config, config_text, info, failures)


# ------------------------------------------------------------------------------------------------
# Models and metrics
# ------------------------------------------------------------------------------------------------


def order_models(run: RunFiles) -> list[ModelRow]:
    """Generators in config order, then degrade baselines, then the real (upper-bound) row last."""
    spec = {}
    for table in run.config.get("models", []) or []:
        if isinstance(table, Mapping) and "name" in table:
            spec[str(table["name"])] = table
    names = list(spec)
    for frame in (run.summary, run.samples, run.per_sample):
        for name in pd.unique(frame["model"]):
            if name not in spec and name not in names:
                names.append(name)
    sample_kinds: dict[str, str] = {}
    if "kind" in run.samples.columns:
        kinds = run.samples.dropna(subset=["kind"]).drop_duplicates("model")
        sample_kinds = dict(zip(kinds["model"], kinds["kind"].astype(str), strict=True))
    rows = []
    for name in names:
        table = spec.get(name, {})
        kind = sample_kinds.get(name) or str(table.get("kind", "unknown"))
        params = {k: v for k, v in table.items() if k not in ("name", "kind")}
        rows.append(ModelRow(name, kind, params))
    generators = [m for m in rows if not m.is_real and not m.is_baseline]
    baselines = [m for m in rows if m.is_baseline]
    real = [m for m in rows if m.is_real]
    return generators + baselines + real


def _metric_rank(name: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(name), "") if name in METRIC_ORDER else (len(METRIC_ORDER), name)


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and not pd.isna(value):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def default_unit(metric: str, pixel_range: float) -> str:
    """The unit implied by the config when summary.csv carries none."""
    scale = f"[0, {pixel_range:g}]"
    return {"psnr": "dB", "mse": f"{scale}²", "mae": scale}.get(metric, "")


def metric_columns(run: RunFiles, pixel_range: float) -> list[MetricColumn]:
    summary = run.summary
    names = sorted(set(summary["metric"]) | set(pd.unique(run.per_sample["metric"])), key=_metric_rank)
    has_unit = "unit" in summary.columns
    columns = []
    for name in names:
        rows = summary[summary["metric"] == name]
        hib_values = [b for b in map(_as_bool, rows["higher_is_better"]) if b is not None]
        unit = ""
        if has_unit:
            units = [str(u) for u in rows["unit"] if isinstance(u, str) and u.strip()]
            unit = units[0] if units else ""
        columns.append(MetricColumn(name, hib_values[0] if hib_values else None, unit or default_unit(name, pixel_range)))
    return columns


# ------------------------------------------------------------------------------------------------
# Number formatting
# ------------------------------------------------------------------------------------------------


def _decimals(value: float, low: float, high: float) -> int | None:
    """Decimals that show ~3 significant digits of the value and at least one of the CI width.

    None means "use scientific notation" (very large or very small magnitudes).
    """
    finite = [abs(x) for x in (value, low, high) if math.isfinite(x)]
    if not finite:
        return 3
    top = max(finite)
    if top >= 1e6 or 0 < top < 1e-4:
        return None
    decimals = 3 - 1 - math.floor(math.log10(top)) if top > 0 else 3
    if math.isfinite(low) and math.isfinite(high) and high > low:
        decimals = max(decimals, -math.floor(math.log10(high - low)))
    return min(max(decimals, 0), 6)


def format_number(x: float, decimals: int | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    x = float(x)
    if math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    text = f"{x:.3g}" if decimals is None else f"{x:.{decimals}f}"
    return text.replace("-", "−")


def _precise(x: float) -> str:
    """Six significant digits, for tooltips."""
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return format_number(x, 0)
    return f"{x:.6g}".replace("-", "−")


def format_estimate(value: float, low: float, high: float) -> tuple[str, str]:
    """("0.912", "[0.905, 0.918]") with shared decimals; the CI part is "" when there is none."""
    d = _decimals(value, low, high)
    main = format_number(value, d)
    if (pd.isna(low) and pd.isna(high)) or pd.isna(value):
        return main, ""
    return main, f"[{format_number(low, d)}, {format_number(high, d)}]"


def _format_seconds(seconds: Any) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if not math.isfinite(s):
        return str(seconds)
    if s < 60:
        return f"{s:.3g} s" if s < 10 else f"{s:.1f} s"
    minutes, rest = divmod(s, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def _format_time(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, (int, float)) and math.isfinite(value):
        return dt.datetime.fromtimestamp(value, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    suffix = f" {parsed.tzname()}" if parsed.tzinfo else ""
    return parsed.strftime("%Y-%m-%d %H:%M:%S") + suffix


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------


def _model_label(model: ModelRow) -> str:
    """Model name cell content: the name plus a badge for baselines and the real row."""
    out = f'<span class="model-name">{_e(model.name)}</span>'
    if model.is_real:
        out += ' <span class="badge real" title="the reference images themselves">upper bound</span>'
    elif model.is_baseline:
        detail = str(model.params.get("degradation", ""))
        level = model.params.get("level")
        if level is not None:
            level_text = f"{level:g}" if isinstance(level, (int, float)) else str(level)
            detail = f"{detail}, level {level_text}" if detail else f"level {level_text}"
        out += ' <span class="badge baseline" title="deterministic degradation of the reference">'
        out += "sanity baseline</span>"
        if detail:
            out += f'<div class="sub">{_e(detail)}</div>'
    elif model.kind not in ("unknown", ""):
        out += f'<div class="sub">{_e(model.kind)}</div>'
    return out


def render_table(
    run: RunFiles, models: Sequence[ModelRow], metrics: Sequence[MetricColumn], confidence: float
) -> str:
    summary = run.summary.drop_duplicates(["model", "metric"], keep="last").set_index(["model", "metric"])
    # Bold marks the winner among the models under evaluation; baselines compete only when there is
    # no generator at all (a demo run), and the real row never does.
    contenders = [r for r in models if not r.is_real and not r.is_baseline] or [r for r in models if r.is_baseline]
    best: dict[str, float] = {}
    for m in metrics:
        if m.higher_is_better is None:
            continue
        candidates = [
            summary.at[(r.name, m.name), "value"] for r in contenders if (r.name, m.name) in summary.index
        ]
        candidates = [v for v in candidates if not pd.isna(v)]
        if len(candidates) >= 2:
            best[m.name] = max(candidates) if m.higher_is_better else min(candidates)

    head = ['<th class="model-col">model</th>']
    for m in metrics:
        direction = {True: "higher is better", False: "lower is better", None: "direction unknown"}
        unit = f'<div class="unit">{_e(m.unit)}</div>' if m.unit else ""
        head.append(
            f'<th data-metric="{_e(m.name)}" title="{_e(m.name)}: {direction[m.higher_is_better]}">'
            f'{_e(m.label)} <span class="arrow">{m.arrow}</span>{unit}</th>'
        )
    body = []
    for r in models:
        cls = "real" if r.is_real else "baseline" if r.is_baseline else "generator"
        cells = [f'<th scope="row">{_model_label(r)}</th>']
        for m in metrics:
            key = (r.name, m.name)
            if key not in summary.index or pd.isna(summary.at[key, "value"]):
                why = (
                    "not computed: real compared with itself is identical by construction"
                    if r.is_real and m.name in PAIRED_METRICS
                    else "no value"
                )
                cells.append(f'<td class="na" title="{_e(why)}">—</td>')
                continue
            row = summary.loc[key]
            main, ci = format_estimate(row["value"], row["ci_low"], row["ci_high"])
            n = row["n"]
            n_text = "" if pd.isna(n) else f"n={int(n)}"
            full = [_precise(row[c]) for c in ("value", "ci_low", "ci_high")]
            tip = f"{r.name} · {m.name}: mean {full[0]}; {confidence:.0%} CI [{full[1]}, {full[2]}]" + (
                f"; {n_text} cases" if n_text else ""
            )
            is_best = m.name in best and r in contenders and row["value"] == best[m.name]
            value_html = f"<strong>{_e(main)}</strong>" if is_best else _e(main)
            cells.append(
                f'<td class="{"best" if is_best else ""}" title="{_e(tip)}">'
                f'<span class="v">{value_html}</span> <span class="ci">{_e(ci)}</span>'
                f'<span class="n">{_e(n_text)}</span></td>'
            )
        body.append(f'<tr class="{cls}" data-model="{_e(r.name)}">{"".join(cells)}</tr>')
    return (
        '<table class="summary"><thead><tr>' + "".join(head) + "</tr></thead><tbody>"
        + "".join(body) + "</tbody></table>"
    )


def _table_notes(
    run: RunFiles, models: Sequence[ModelRow], metrics: Sequence[MetricColumn], metrics_cfg: Mapping[str, Any]
) -> str:
    confidence = float(metrics_cfg.get("confidence", 0.95))
    resamples = metrics_cfg.get("bootstrap_resamples")
    pixel_range = float(metrics_cfg.get("pixel_range", 1.0))
    names = {m.name for m in metrics}
    notes = [
        "↑ higher is better, ↓ lower is better. Each cell is the mean over cases with its "
        f"{confidence:.0%} percentile-bootstrap confidence interval"
        + (f" ({_e(resamples)} resamples)" if resamples is not None else "")
        + "; n is the number of cases. The best value per column among the evaluated models "
        "(not the sanity baselines or the real row) is in bold. Hover a cell for full precision."
    ]
    if names & {"mse", "mae", "psnr"}:
        notes.append(
            f"Pixel errors are computed on intensities scaled to [0, {pixel_range:g}] "
            f"(<code>[metrics] pixel_range = {pixel_range:g}</code>): MSE in {_e(default_unit('mse', pixel_range))}, "
            f"MAE in {_e(default_unit('mae', pixel_range))}, PSNR in dB."
        )
    if metrics_cfg.get("resize") == "to_reference":
        notes.append("Samples were resized to the reference size before comparison (<code>resize = \"to_reference\"</code>).")
    if any(n.startswith("overlap_") for n in names) and "overlap_threshold" in metrics_cfg:
        notes.append(
            f"Overlap metrics binarise at threshold {_e(metrics_cfg['overlap_threshold'])} "
            "(<code>[metrics] overlap_threshold</code>)."
        )
    if any(m.is_real for m in models):
        notes.append(
            "<b>real</b> is the reference set itself, shown last as the upper bound. Paired metrics of "
            "the real images against themselves are identical by construction and are not computed "
            "(shown as —), as in Table I of the XReal paper."
        )
    out = "".join(f"<p>{n}</p>" for n in notes)
    if any(m.is_baseline for m in models):
        out += (
            '<div class="callout baseline-note"><b>Sanity baselines.</b> Rows marked '
            '<span class="badge baseline">sanity baseline</span> are not generative models: they are '
            "deterministic, known degradations of the reference images (kind <code>degrade</code>). "
            "They calibrate the metrics: more damage (a higher level) should rank worse. A generator "
            "that scores below a mild degradation is far from the references; a metric that does not "
            "get worse as the level rises is broken or insensitive to that damage."
            + _monotonicity(run, models, metrics)
            + "</div>"
        )
    return out


def _monotonicity(run: RunFiles, models: Sequence[ModelRow], metrics: Sequence[MetricColumn]) -> str:
    """Check that each degradation gets worse (never better) as its level rises, per metric."""
    by_kind: dict[str, list[tuple[float, str]]] = {}
    for m in models:
        if m.is_baseline and "degradation" in m.params and "level" in m.params:
            try:
                level = float(m.params["level"])
            except (TypeError, ValueError):
                continue
            by_kind.setdefault(str(m.params["degradation"]), []).append((level, m.name))
    summary = run.summary.drop_duplicates(["model", "metric"], keep="last").set_index(["model", "metric"])["value"]
    lines = []
    for degradation, levels in sorted(by_kind.items()):
        if len(levels) < 2:
            continue
        levels.sort()
        good, bad = [], []
        for metric in metrics:
            if metric.higher_is_better is None:
                continue
            series = [(lv, summary.get((name, metric.name), np.nan)) for lv, name in levels]
            series = [(lv, v) for lv, v in series if not pd.isna(v)]
            if len(series) < 2:
                continue
            sign = 1.0 if metric.higher_is_better else -1.0
            wrong = [
                (a, b) for (a, va), (b, vb) in itertools.pairwise(series) if sign * (vb - va) > 0
            ]
            if wrong:
                bad.append(
                    f"{metric.label} improves from level {wrong[0][0]:g} to {wrong[0][1]:g}"
                )
            else:
                good.append(metric.label)
        if good:
            lines.append(f'<li class="ok">✓ {_e(degradation)}: {_e(", ".join(good))} worsen with the level</li>')
        for text in bad:
            lines.append(f'<li class="warn">⚠ {_e(degradation)}: {_e(text)}</li>')
    return f'<ul class="checks">{"".join(lines)}</ul>' if lines else ""


def _model_colours(models: Sequence[ModelRow]) -> dict[str, str]:
    colours: dict[str, str] = {}
    i = 0
    for m in models:
        if m.is_real:
            colours[m.name] = REAL_COLOUR
        elif m.is_baseline:
            colours[m.name] = BASELINE_COLOUR
        else:
            colours[m.name] = GENERATOR_COLOURS[i % len(GENERATOR_COLOURS)]
            i += 1
    return colours


def render_distributions(run: RunFiles, models: Sequence[ModelRow], metrics: Sequence[MetricColumn]) -> str:
    """One box plot per metric of the per-case values (samples of a case averaged first)."""
    if run.per_sample.empty:
        return "<p>No per-sample values were recorded.</p>"
    per_case = run.per_sample.groupby(["metric", "model", "case_id"], sort=False, observed=True)["value"].mean()
    groups = {key: grp for key, grp in per_case.groupby(level=["metric", "model"], sort=False)}
    colours = _model_colours(models)
    parts = []
    for i, metric in enumerate(metrics):
        fig = go.Figure()
        dropped = []
        points = sum(len(groups[(metric.name, m.name)]) for m in models if (metric.name, m.name) in groups)
        for model in models:
            grp = groups.get((metric.name, model.name))
            if grp is None:
                continue
            values = grp.to_numpy(dtype=np.float64)
            finite = np.isfinite(values)
            n_inf, n_nan = int(np.isinf(values).sum()), int(np.isnan(values).sum())
            if n_inf or n_nan:
                what = ", ".join(
                    t for t in (f"{n_inf} infinite" if n_inf else "", f"{n_nan} NaN" if n_nan else "") if t
                )
                dropped.append(f"{model.name}: {what}")
            if not finite.any():
                continue
            n = int(finite.sum())
            trace = {
                "y": values[finite].astype(np.float32),
                "name": html.escape(model.name),
                "boxpoints": "all" if n <= ALL_POINTS_MAX else "outliers",
                "jitter": 0.35,
                "pointpos": 0,
                "boxmean": True,
                "marker": {"color": colours[model.name], "size": 4, "opacity": 0.7},
                "line": {"color": colours[model.name], "width": 1.5},
                "fillcolor": "rgba(0,0,0,0)",
            }
            if points <= HOVER_LABELS_MAX:
                case_ids = grp.index.get_level_values("case_id").to_numpy()[finite]
                trace["text"] = [html.escape(c) for c in case_ids]
                trace["hovertemplate"] = "case %{text}<br>%{y:.4g}<extra>%{fullData.name}</extra>"
            fig.add_trace(go.Box(**trace))
        if not fig.data:
            parts.append(
                f'<figure class="plot empty" data-metric="{_e(metric.name)}"><p class="small">'
                f"{_e(metric.label)}: no finite per-case values to draw.</p></figure>"
            )
            continue
        axis_title = metric.label + (f" ({metric.unit})" if metric.unit else "")
        fig.update_layout(
            template=go.layout.Template(),  # plotly's default template adds ~7 kB per figure
            height=340,
            margin={"l": 70, "r": 20, "t": 40, "b": 70},
            showlegend=False,
            title={"text": html.escape(f"{metric.label} {metric.arrow}"), "x": 0.01, "font": {"size": 15}},
            yaxis={"title": {"text": html.escape(axis_title)}, "gridcolor": "#e5e5e5", "zeroline": False},
            xaxis={"tickangle": 0},
            plot_bgcolor="white",
            paper_bgcolor="white",
            font={"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
        )
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"dist-{i}",
            config={"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["select2d", "lasso2d"]},
        )
        note = f'<p class="small">Not drawn: {_e("; ".join(dropped))}.</p>' if dropped else ""
        parts.append(f'<figure class="plot" data-metric="{_e(metric.name)}">{div}{note}</figure>')
    return '<div class="plots">' + "".join(parts) + "</div>"


# ------------------------------------------------------------------------------------------------
# Image grid
# ------------------------------------------------------------------------------------------------


def choose_grid_cases(cases: pd.DataFrame, samples: pd.DataFrame, models: Sequence[str], k: int) -> list[str]:
    """``k`` case ids, deterministic: by case_id, complete cases first, spread round-robin over groups."""
    if k <= 0 or cases.empty:
        return []
    frame = cases.loc[:, ["case_id"] + (["group"] if "group" in cases.columns else [])].copy()
    have = samples[samples["model"].isin(models)].groupby("case_id")["model"].nunique()
    frame["complete"] = frame["case_id"].map(have).fillna(0).to_numpy() >= len(models)
    frame = frame.sort_values(["complete", "case_id"], ascending=[False, True], kind="stable")
    if "group" not in frame.columns:
        return frame["case_id"].head(k).tolist()
    frame["group"] = frame["group"].astype(str).where(frame["group"].notna(), "")
    queues = {g: list(ids) for g, ids in frame.groupby("group", sort=True)["case_id"]}
    chosen: list[str] = []
    while len(chosen) < k and any(queues.values()):
        for g in sorted(queues):
            if queues[g] and len(chosen) < k:
                chosen.append(queues[g].pop(0))
    return chosen


def _thumb_size(shape: tuple[int, int], size: int) -> tuple[int, int]:
    h, w = shape
    scale = min(1.0, size / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))  # PIL order: (width, height)


def _thumbnail(pixels: np.ndarray, size: int) -> np.ndarray:
    target = _thumb_size(pixels.shape[:2], size)
    if target == (pixels.shape[1], pixels.shape[0]):
        return np.asarray(pixels, dtype=np.float32)
    im = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32))
    return np.clip(np.asarray(im.resize(target, Image.Resampling.LANCZOS)), 0.0, 1.0)


def _mask_thumbnail(mask: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """bool (H, W, C) mask resized (nearest) to PIL ``target`` (w, h): float (h, w, C)."""
    channels = [
        np.asarray(Image.fromarray(mask[..., c].astype(np.uint8) * 255).resize(target, Image.Resampling.NEAREST))
        > 127
        for c in range(mask.shape[2])
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def _overlay(reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB float: the grey reference with the mask blended in (RGB masks keep their channel colours)."""
    rgb = np.repeat(reference[..., None], 3, axis=2)
    if mask.shape[2] == 3:
        colour = mask
    else:
        colour = mask[..., :1] * np.array([1.0, 0.35, 0.0], dtype=np.float32)
    alpha = 0.45 * mask.max(axis=2, keepdims=True)
    return rgb * (1.0 - alpha) + colour * alpha


def _data_uri(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(images.encode_png(pixels)).decode("ascii")


def _img(pixels: np.ndarray, alt: str) -> str:
    h, w = pixels.shape[:2]
    return f'<img src="{_data_uri(pixels)}" width="{w}" height="{h}" alt="{_e(alt)}" title="{_e(alt)}">'


def _placeholder(reason: str) -> str:
    return f'<div class="ph" title="{_e(reason)}">{_e(reason)}</div>'


def _present_path(value: Any) -> str | None:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _read_thumb(path: str | None, size: int) -> tuple[np.ndarray | None, str]:
    """(thumbnail, "") or (None, reason)."""
    if path is None:
        return None, "no path recorded"
    try:
        return _thumbnail(images.read_image(path).pixels, size), ""
    except FileNotFoundError:
        return None, f"file not found: {Path(path).name}"
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {exc}"


def _condition_cell(case: Mapping[str, Any], reference: np.ndarray | None, size: int) -> tuple[str, str]:
    """(cell html, caption) for the condition column."""
    for column, caption in (("anatomy_mask", "anatomy mask"), ("control", "control"), ("pathology_mask", "pathology mask")):
        path = _present_path(case.get(column))
        if path is None:
            continue
        if column == "control":
            thumb, why = _read_thumb(path, size)
            return (_img(thumb, f"control for {case['case_id']}") if thumb is not None else _placeholder(why)), caption
        try:
            mask = images.read_mask(path)
        except FileNotFoundError:
            return _placeholder(f"{caption} not found: {Path(path).name}"), caption
        except (OSError, ValueError) as exc:
            return _placeholder(f"{caption} unreadable: {exc}"), caption
        if reference is None:
            base = np.zeros(mask.shape[:2], dtype=np.float32)
            target = _thumb_size(mask.shape[:2], size)
            base = _thumbnail(base, size)
        else:
            base = reference
            target = (reference.shape[1], reference.shape[0])
        pixels = _overlay(base, _mask_thumbnail(mask, target))
        if column == "anatomy_mask" and mask.shape[2] == 3:
            caption = "anatomy mask (R lungs · G heart · B aorta)"
        return _img(pixels, f"{caption} for {case['case_id']}"), caption
    return _placeholder("no condition"), "none"


def render_grid(run: RunFiles, models: Sequence[ModelRow], k: int, size: int = THUMB_PX) -> str:
    if run.cases is None:
        return f"<p>No image grid: {_e(rundir.CASES)} is missing from the run directory.</p>"
    names = [m.name for m in models]
    chosen = choose_grid_cases(run.cases, run.samples, names, k)
    if not chosen:
        return "<p>No cases to show.</p>"
    cases = run.cases.drop_duplicates("case_id").set_index("case_id", drop=False)
    picked = run.samples[run.samples["case_id"].isin(chosen)]
    # Sample 0 when present, else the lowest sample index the model has for that case.
    picked = picked.sort_values(["model", "case_id", "sample"]).drop_duplicates(["model", "case_id"])
    paths = {(r.model, r.case_id): (r.path, r.sample) for r in picked.itertuples(index=False)}
    failed: dict[tuple[str, str], str] = {}
    if run.failures is not None and not run.failures.empty:
        fails = run.failures[run.failures["case_id"].isin(chosen)]
        for r in fails.itertuples(index=False):
            failed.setdefault((r.model, r.case_id), f"failed at {r.stage}: {r.error}"[:MAX_ERROR_CHARS])

    head = "<th>case</th><th>reference</th><th>condition</th>" + "".join(
        f"<th>{_model_label(m)}</th>" for m in models
    )
    rows = []
    for case_id in chosen:
        case = cases.loc[case_id].to_dict()
        reference, why = _read_thumb(_present_path(case.get("image")), size)
        ref_cell = _img(reference, f"reference {case_id}") if reference is not None else _placeholder(why)
        cond_cell, cond_caption = _condition_cell(case, reference, size)
        meta = [f'<div class="case-id">{_e(case_id)}</div>']
        for column in ("group", "view", "labels"):
            value = _present_path(case.get(column))
            if value is not None:
                meta.append(f'<div class="sub">{_e(column)}: {_e(value)}</div>')
        prompt = _present_path(case.get("prompt"))
        if prompt is not None:
            short = prompt if len(prompt) <= 160 else prompt[:157] + "…"
            meta.append(f'<div class="prompt" title="{_e(prompt)}">“{_e(short)}”</div>')
        cells = [
            f'<th scope="row" class="case">{"".join(meta)}</th>',
            f"<td>{ref_cell}</td>",
            f'<td>{cond_cell}<div class="cap">{_e(cond_caption)}</div></td>',
        ]
        for m in models:
            entry = paths.get((m.name, case_id))
            if entry is None:
                reason = failed.get((m.name, case_id), "no sample for this case")
                cells.append(f"<td>{_placeholder(reason)}</td>")
                continue
            path = _present_path(entry[0])
            if path is not None and not Path(path).is_absolute():
                path = str(run.run_dir / path)  # suite-generated samples may be recorded run-relative
            thumb, why = _read_thumb(path, size)
            cell = _img(thumb, f"{m.name} · {case_id} · sample {entry[1]}") if thumb is not None else _placeholder(why)
            cells.append(f"<td>{cell}</td>")
        rows.append(f'<tr data-case="{_e(case_id)}">{"".join(cells)}</tr>')
    return (
        '<div class="grid-wrap"><table class="grid"><thead><tr>' + head + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></div>"
    )


# ------------------------------------------------------------------------------------------------
# Failures and provenance
# ------------------------------------------------------------------------------------------------


def render_failures(failures: pd.DataFrame | None, count: int) -> str:
    if not count:
        return "<p>No failures.</p>"
    if failures is None or failures.empty:
        return f"<p>{count} failure(s) recorded in {_e(rundir.RUN_JSON)}, but {_e(rundir.FAILURES)} is missing.</p>"
    shown = failures.head(FAILURE_ROWS)
    rows = "".join(
        "<tr>" + "".join(
            f"<td>{_e(str(getattr(r, c))[:MAX_ERROR_CHARS])}</td>" for c in rundir.FAILURES_COLUMNS
        ) + "</tr>"
        for r in shown.itertuples(index=False)
    )
    more = (
        f'<p class="small">… and {len(failures) - FAILURE_ROWS} more in {_e(rundir.FAILURES)}.</p>'
        if len(failures) > FAILURE_ROWS
        else ""
    )
    head = "".join(f"<th>{c}</th>" for c in rundir.FAILURES_COLUMNS)
    return f'<table class="plain failures"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{more}'


def _kv_table(items: Mapping[str, Any], formatter: Any = str) -> str:
    if not items:
        return '<p class="small">none recorded</p>'
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(formatter(v))}</td></tr>" for k, v in items.items())
    return f'<table class="plain kv">{rows}</table>'


def render_provenance(run: RunFiles) -> str:
    info = run.info
    versions = info.get("versions") if isinstance(info.get("versions"), Mapping) else {}
    timings = info.get("timings") if isinstance(info.get("timings"), Mapping) else {}
    shown = {"versions", "timings"}
    other = {
        k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in info.items() if k not in shown
    }
    config = (
        f"<pre>{_e(run.config_text)}</pre>" if run.config_text else f"<p>{_e(rundir.CONFIG_TOML)} is missing.</p>"
    )
    return (
        f"<h3>Study config ({_e(rundir.CONFIG_TOML)})</h3>{config}"
        f'<div class="cols"><div><h3>Versions</h3>{_kv_table(versions)}</div>'
        f"<div><h3>Timings</h3>{_kv_table(timings, _format_seconds)}</div>"
        f"<div><h3>Run</h3>{_kv_table(other)}"
        f'<p class="small">Run directory: <code>{_e(run.run_dir.resolve())}</code><br>'
        f"Report by xray-audit {_e(__version__)}.</p></div></div>"
    )


# ------------------------------------------------------------------------------------------------
# Page
# ------------------------------------------------------------------------------------------------

CSS = """
:root { --fg:#1d1d1f; --muted:#6b6b70; --line:#e2e2e6; --accent:#4C72B0; --bg-soft:#f6f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 24px 32px 64px; max-width: 1500px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 18px 0 6px; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: var(--bg-soft); padding: 10px 12px; border-radius: 6px; overflow-x: auto; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 22px; color: var(--muted); margin: 6px 0 0; }
.meta b { color: var(--fg); font-weight: 600; }
.meta .bad b { color: #b3261e; }
nav { margin: 10px 0 0; font-size: 13px; } nav a { margin-right: 14px; color: var(--accent); }
table { border-collapse: collapse; }
table.summary { margin: 6px 0 8px; font-variant-numeric: tabular-nums; }
table.summary th, table.summary td { padding: 7px 12px; border-bottom: 1px solid var(--line); text-align: right;
  vertical-align: top; white-space: nowrap; }
table.summary thead th { background: var(--bg-soft); font-weight: 600; border-bottom: 2px solid #cfcfd6; }
table.summary th.model-col, table.summary tbody th { text-align: left; }
table.summary .arrow { color: var(--accent); font-weight: 700; }
table.summary .unit { font-weight: 400; color: var(--muted); font-size: 11px; }
table.summary .ci { color: var(--muted); font-size: 12px; }
table.summary .n { display: block; color: var(--muted); font-size: 10.5px; }
table.summary td.best { background: #eef5ea; }
table.summary td.na { color: #9a9aa0; text-align: center; }
tr.baseline { background: #fafaf7; } tr.baseline .model-name { font-style: italic; }
tr.real { border-top: 2px solid #cfcfd6; background: #f7f8fb; }
.sub { color: var(--muted); font-size: 11px; font-weight: 400; }
.badge { display: inline-block; font-size: 10.5px; font-weight: 600; padding: 1px 6px; border-radius: 9px;
  vertical-align: 1px; }
.badge.baseline { background: #efe9dc; color: #6d5a2c; } .badge.real { background: #e3e8f4; color: #34508a; }
.notes p { margin: 4px 0; color: #3a3a3f; max-width: 1100px; }
.callout { border-left: 4px solid #d4b46a; background: #fbf8f0; padding: 8px 12px; margin: 10px 0;
  max-width: 1100px; }
.checks { margin: 6px 0 0; padding-left: 18px; } .checks .ok { color: #2e6b34; } .checks .warn { color: #a5371d; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 10px 22px; }
figure.plot { margin: 0; }
.small { font-size: 12px; color: var(--muted); }
.grid-wrap { overflow-x: auto; }
table.grid th, table.grid td { padding: 4px 6px; vertical-align: top; text-align: center; }
table.grid thead th { font-weight: 600; font-size: 12px; border-bottom: 1px solid var(--line); }
table.grid th.case { text-align: left; max-width: 190px; font-weight: 400; }
table.grid .case-id { font-weight: 600; word-break: break-all; }
table.grid .prompt { color: var(--muted); font-size: 11px; font-style: italic; white-space: normal; }
table.grid img { display: block; margin: 0 auto; image-rendering: auto; background: #000; }
table.grid .cap { font-size: 10.5px; color: var(--muted); max-width: 170px; margin: 2px auto 0; }
.ph { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center; padding: 8px;
  background: repeating-linear-gradient(45deg, #f4f4f6, #f4f4f6 8px, #ececf0 8px, #ececf0 16px);
  color: #8a2b1d; font-size: 11px; overflow: hidden; word-break: break-word; border: 1px dashed #c9c9d0; }
table.plain th, table.plain td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; font-size: 12.5px; }
table.failures td:last-child { white-space: pre-wrap; word-break: break-word; max-width: 700px;
  font-family: ui-monospace, monospace; font-size: 11.5px; }
.cols { display: flex; flex-wrap: wrap; gap: 8px 48px; }
"""


def _plotly_script() -> str:
    js = plotly.offline.get_plotlyjs()
    # An HTML parser ends a <script> at the first "</script", wherever it appears.
    js = js.replace("</script", "<\\/script")
    return f'<script id="plotly-js" type="text/javascript">{js}</script>'


def render_html_report(run_dir: str | Path, grid_cases: int = 4) -> str:
    """The report page for a finished run directory, as one self-contained HTML string."""
    run = load_run(run_dir)
    study = run.config.get("study", {}) if isinstance(run.config.get("study"), Mapping) else {}
    metrics_cfg = run.config.get("metrics", {}) if isinstance(run.config.get("metrics"), Mapping) else {}
    pixel_range = float(metrics_cfg.get("pixel_range", 1.0))
    confidence = float(metrics_cfg.get("confidence", 0.95))
    models = order_models(run)
    metrics = metric_columns(run, pixel_range)
    # The table shows what summary.csv aggregated; plots also show metrics only per_sample has.
    summarised = set(run.summary["metric"])
    table_metrics = [m for m in metrics if m.name in summarised]

    name = str(study.get("name") or run.run_dir.resolve().name)
    info = run.info
    n_cases = info.get("n_cases")
    if n_cases is None:
        n_cases = len(run.cases) if run.cases is not None else run.samples["case_id"].nunique()
    n_failures = len(run.failures) if run.failures is not None else int(info.get("n_failures") or 0)
    config_hash = str(info.get("config_hash") or "")
    date = _format_time(info.get("finished") or info.get("started"))
    model_list = ", ".join(
        f"{_e(m.name)} <span class=\"sub\">({_e(m.kind)})</span>" for m in models
    )
    meta = [
        f"<span>date <b>{_e(date)}</b></span>",
        f'<span title="{_e(config_hash)}">config <b><code>{_e(config_hash[:12] or "—")}</code></b></span>',
        f"<span>cases <b>{_e(n_cases)}</b></span>",
        f"<span>samples/case <b>{_e(study.get('samples_per_case', '—'))}</b></span>",
        f"<span>seed <b>{_e(study.get('seed', '—'))}</b></span>",
        f'<span class="{"bad" if n_failures else ""}">failures <b>{n_failures}</b></span>',
    ]
    failures_section = render_failures(run.failures, n_failures)
    body = f"""
<header>
<h1>{_e(name)} <span class="sub" style="font-size:14px">xray-audit report</span></h1>
<div class="meta">{"".join(meta)}</div>
<div class="meta"><span>models: {model_list}</span></div>
<nav><a href="#results">Results</a><a href="#distributions">Distributions</a><a href="#images">Images</a>
<a href="#failures">Failures ({n_failures})</a><a href="#provenance">Provenance</a></nav>
</header>
<section id="results"><h2>Results per model</h2>
{render_table(run, models, table_metrics, confidence)}
<div class="notes">{_table_notes(run, models, table_metrics, metrics_cfg)}</div>
</section>
<section id="distributions"><h2>Per-case distributions</h2>
<p class="small">One point per case (samples of a case averaged); the box spans the quartiles, the solid line is the
median and the dashed line the mean.</p>
{render_distributions(run, models, metrics)}
</section>
<section id="images"><h2>Image grid</h2>
<p class="small">Reference | condition | sample 0 of each model, for {grid_cases} case(s) chosen deterministically
(by case id, spread over groups).</p>
{render_grid(run, models, grid_cases)}
</section>
<section id="failures"><h2>Failures</h2>{failures_section}</section>
<section id="provenance"><h2>Provenance</h2>{render_provenance(run)}</section>
"""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(name)} · xray-audit report</title><style>{CSS}</style>"
        f"{_plotly_script()}</head><body>{body}</body></html>\n"
    )


def write_html_report(run_dir: str | Path, out: str | Path | None = None, grid_cases: int = 4) -> Path:
    """Render the report and write it atomically (default ``<run_dir>/report.html``)."""
    run_dir = Path(run_dir)
    dest = Path(out) if out is not None else run_dir / rundir.REPORT_HTML
    write_text(dest, render_html_report(run_dir, grid_cases=grid_cases))
    return dest
