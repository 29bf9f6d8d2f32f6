"""The "Provenance" section: run facts, package versions, timings, evaluator weights and input
contracts, resize policy, N per metric, the study config and the rest of run.json."""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from audit import __version__, rundir
from reports.format import format_seconds, format_time, int_or
from reports.norberg import render_norberg_provenance
from reports.provenance import is_demo, pin_sentence
from reports.run import (
    EvaluationInfo,
    MetricColumn,
    ModelRow,
    RunFiles,
    mapping,
    metric_columns,
    order_models,
    summary_index,
)
from reports.sections.base import PageContext, Section
from reports.sections.common import escape

REPORT_VERSIONS = ("xray-audit", "numpy", "pandas", "scipy", "statsmodels", "plotly", "pyarrow", "pillow")


def _kv_table(items: Mapping[str, Any], formatter: Any = str) -> str:
    if not items:
        return '<p class="small">none recorded</p>'
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(formatter(v))}</td></tr>" for k, v in items.items())
    return f'<table class="plain kv">{rows}</table>'


def _report_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in REPORT_VERSIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _versions_table(recorded: Mapping[str, Any]) -> str:
    now = _report_versions()
    names = list(dict.fromkeys([*recorded, *now]))
    rows = "".join(
        f'<tr data-package="{escape(n)}"><th>{escape(n)}</th><td data-col="run">{escape(recorded.get(n, "—"))}</td>'
        f'<td data-col="report">{escape(now.get(n, "—"))}</td></tr>'
        for n in names
    )
    return (
        '<table class="plain kv versions"><thead><tr><th>package</th><th>run (run.json)</th>'
        f"<th>this report</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def describe_preprocessing(text: str) -> str:
    """``center-square/...;1ch;224px;[-1024,1024]float;outputs-v1`` (an evaluator's cache key) in words."""
    words, pipeline = [], []
    for part in (p.strip() for p in str(text).split(";")):
        if not part:
            continue
        if part.endswith("ch") and part[:-2].isdigit():
            words.append(f"{part[:-2]} channel(s)")
        elif part.endswith("px") and part[:-2].isdigit():
            words.append(f"{part[:-2]}×{part[:-2]} px")
        elif part.startswith("[") and "]" in part:
            words.append(f"values {part[: part.index(']') + 1]} {part[part.index(']') + 1 :]}".strip())
        elif part.startswith("outputs-"):
            words.append(f"output version {part}")
        else:
            pipeline.append(part)
    return "; ".join([*(["pipeline " + " · ".join(pipeline)] if pipeline else []), *words])


def _evaluator_provenance(evaluation: EvaluationInfo) -> str:
    if not evaluation.evaluators:
        return '<p class="small">No image evaluator networks were used.</p>'
    rows = []
    for role, d in evaluation.evaluators.items():
        sha = str(d.get("weights_sha256") or "—")
        prep = str(d.get("preprocessing") or "")
        rows.append(
            f'<tr data-evaluator="{escape(d.get("name", ""))}"><th>{escape(d.get("role", role))}</th>'
            f'<td data-col="name">{escape(d.get("name", ""))}</td>'
            f'<td data-col="source">{escape(d.get("source", ""))}</td>'
            f'<td data-col="weights">{escape(d.get("weights") or "—")}</td>'
            f'<td data-col="weights_sha256"><code>{escape(sha)}</code></td>'
            f'<td data-col="pin" class="{"warn" if is_demo(d) or d.get("pin") == "user-trust" else ""}">'
            f"{escape(pin_sentence(d))}</td>"
            f'<td data-col="preprocessing">{escape(describe_preprocessing(prep) or "—")}'
            f'<div class="sub"><code>{escape(prep)}</code></div></td></tr>'
        )
    return (
        '<div class="table-wrap"><table class="plain evaluators-provenance"><thead><tr><th>role</th>'
        "<th>name</th><th>source</th><th>weights file</th><th>weights sha256</th>"
        "<th>where the hash came from</th><th>input contract / preprocessing</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )


def _recorded(value: Any) -> str:
    return "not recorded" if value is None else str(value)


def _policy_rows(run: RunFiles, evaluation: EvaluationInfo) -> dict[str, str]:
    settings = run.settings
    policies = mapping(run.info.get("policies"))

    def pick(key: str) -> Any:
        # run.json's record first; else the config's setting (its default when the key is not written).
        return policies.get(key, getattr(settings.metrics, key) if settings.found else None)

    resize = pick("resize")
    resize_text = (
        {
            "none": "none: a sample must have its reference's size (pixel metrics)",
            "to_reference": "to_reference: samples resized to the reference size before the pixel metrics",
        }.get(str(resize), str(resize))
        if resize is not None
        else "not recorded"
    )
    out = {
        "[metrics].resize": resize_text,
        "[metrics].pixel_range": _recorded(pick("pixel_range")),
        "[metrics].overlap_threshold": _recorded(pick("overlap_threshold")),
        "confidence intervals": _recorded(policies.get("ci") or None),
        "[metrics].group_by": ", ".join(map(str, policies.get("group_by") or settings.group_by)) or "none",
    }
    refs = policies.get("self_reference_models")
    if refs:
        out["self-reference models"] = ", ".join(map(str, refs))
    for k in ("device", "dtype"):
        if evaluation.raw.get(k) not in (None, ""):
            out[f"evaluators {k}"] = str(evaluation.raw[k])
    return out


def _n_per_metric(run: RunFiles, models: Sequence[ModelRow], metrics: Sequence[MetricColumn]) -> str:
    index = summary_index(run.summary, "")
    # Per-class pathology columns share the macro metric's N: left out to keep the table compact.
    shown = [m for m in metrics if ":" not in m.name and any((r.name, m.name) in index.index for r in models)]
    if not shown:
        return '<p class="small">summary.csv has no all-cases rows.</p>'
    head = '<th class="model-col">model</th>' + "".join(
        f'<th data-col="{escape(m.name)}" title="{escape(m.name)}">{escape(m.label)}</th>' for m in shown
    )
    body = []
    for r in models:
        cells = []
        for m in shown:
            key = (r.name, m.name)
            # No value, no N: a NaN row (real's self-comparison) counts nothing.
            n = index.at[key, "n"] if key in index.index and not pd.isna(index.at[key, "value"]) else math.nan
            cells.append(f'<td data-col="{escape(m.name)}">{escape(int_or(n, "—"))}</td>')
        body.append(f'<tr data-model="{escape(r.name)}"><th>{escape(r.name)}</th>{"".join(cells)}</tr>')
    return (
        '<p class="small">Cases per model and metric in summary.csv (all cases); generated samples for the '
        'distribution metrics, ratings for the reader scores.</p><div class="table-wrap">'
        f'<table class="plain n-per-metric"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def render_provenance(
    run: RunFiles,
    models: Sequence[ModelRow] | None = None,
    metrics: Sequence[MetricColumn] | None = None,
    evaluation: EvaluationInfo | None = None,
    statistics: Mapping[str, str] | None = None,
) -> str:
    """Labelled provenance rows (hashes, versions, weights, preprocessing, N, timings), then the raw
    config and run.json blocks. ``statistics`` describes how the report's own statistics were drawn."""
    info = run.info
    evaluation = evaluation or EvaluationInfo.from_info(info)
    models = order_models(run) if models is None else models
    if metrics is None:
        metrics = metric_columns(run, run.settings.pixel_range, evaluation)
    versions = info.get("versions") if isinstance(info.get("versions"), Mapping) else {}
    timings = info.get("timings") if isinstance(info.get("timings"), Mapping) else {}
    labelled = {
        "config hash": ("config_hash", str),
        "cases hash": ("cases_hash", str),
        "started": ("started", format_time),
        "finished": ("finished", format_time),
        "cases": ("n_cases", str),
        "models": ("n_models", str),
        "samples": ("n_samples", str),
        "failures": ("n_failures", str),
        "run by xray-audit": ("xray_audit_version", str),
    }
    run_rows = {
        label: fmt(info[key]) for label, (key, fmt) in labelled.items() if info.get(key) not in (None, "")
    }
    run_rows["run directory"] = str(run.run_dir.resolve())
    run_rows["report by xray-audit"] = __version__
    run_rows.update(statistics or {})
    # The evaluation block is long and rendered in the results; here it is kept whole, folded away.
    shown = {
        "versions",
        "timings",
        "evaluation",
        "policies",
        "norberg",
        *(key for key, _ in labelled.values()),
    }
    other = {
        k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in info.items() if k not in shown
    }
    config = (
        f"<pre>{escape(run.config_text)}</pre>"
        if run.config_text
        else f"<p>{escape(rundir.CONFIG_TOML)} is missing.</p>"
    )
    norberg = render_norberg_provenance(run.run_dir)
    evaluation_json = ""
    if isinstance(info.get("evaluation"), Mapping):
        evaluation_json = (
            '<details class="evaluation-json">'
            f"<summary>Evaluation ({escape(rundir.RUN_JSON)} “evaluation”)</summary>"
            f"<pre>{escape(json.dumps(info['evaluation'], indent=2))}</pre></details>"
        )
    return (
        f'<div class="cols"><div><h3>Run</h3>{_kv_table(run_rows)}</div>'
        f"<div><h3>Package versions</h3>{_versions_table(versions)}</div>"
        f"<div><h3>Timings</h3>{_kv_table(timings, format_seconds)}</div></div>"
        f'<h3 id="provenance-evaluators">Evaluators and weights</h3>{_evaluator_provenance(evaluation)}'
        + (f"<h3>Norberg-angle measurement</h3>{norberg}" if norberg else "")
        + f"<h3>Preprocessing and resize policy</h3>{_kv_table(_policy_rows(run, evaluation))}"
        f'<h3 id="provenance-n">N per metric</h3>{_n_per_metric(run, models, metrics)}'
        f"<h3>Study config ({escape(rundir.CONFIG_TOML)})</h3>{config}"
        + (f"<h3>Other {escape(rundir.RUN_JSON)} fields</h3>{_kv_table(other)}" if other else "")
        + evaluation_json
    )


def render(ctx: PageContext) -> str:
    return render_provenance(ctx.results_run, ctx.models, ctx.table_metrics, ctx.evaluation, ctx.statistics)


SECTION = Section("provenance", "Provenance", "Provenance", render)
