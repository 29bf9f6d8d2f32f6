"""The comparison table of ``xray-audit report`` and its paper exports (Markdown, LaTeX, CSV).

Built only from the run directory (see :mod:`audit.rundir`), torch-free, reusing the loaders, metric
columns and best-value rule of :mod:`reports.run`, the model order and per-case means of
:mod:`reports.statistics` and the number formatting of :mod:`reports.format`:

- :func:`comparison_table`: Table I of the XReal paper as a tidy frame: one row per (model, metric),
  models grouped by kind with the ``real`` row last (the upper bound), every summary metric of one
  group (of the privacy audit's, the memorised fraction: the CSV has the rest) plus optional
  reader-study scores, each value with its CI and N, the best value per column
  marked among the evaluated models only (never a sanity baseline or the real row).
- :func:`mean_std_table`: the knee paper's format, mean ± std over cases per value of a case column.
- :func:`to_markdown`, :func:`to_latex`, :func:`to_csv_frame` and :func:`write_exports`, which also
  writes the model-vs-model tests of :mod:`reports.statistics` as paired_tests.csv.

The run's confidence, bootstrap resamples and seed come from :class:`audit.rundir.RunSettings`.
Every clinical and distribution column names its evaluator (:mod:`reports.provenance`): in the header
(Markdown) or as a lettered note (LaTeX), with how its weights were pinned, and a table scored by any
demo stand-in says so in its first line; the CSVs carry ``evaluator``, ``weights_sha256`` and ``pin``
per row (empty for pixel metrics and reader scores).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from audit.atomic import atomic_path, write_text
from audit.metrics import catalogue
from audit.stats import bootstrap_mean_ci
from reports.format import decimals, format_estimate, format_number
from reports.provenance import (
    MARK_COLUMNS,
    SEP,
    EvaluatorMark,
    demo_evaluators,
    evaluator_tag,
    mark_fields,
    metric_mark,
)
from reports.run import (
    BASELINE_KINDS,
    EvaluationInfo,
    MetricColumn,
    ModelRow,
    RunFiles,
    TableContext,
    best_value,
    load_run,
    metric_columns,
    nonfinite_metrics,
    reader_score_rows,
    split_tables,
)
from reports.statistics import PairedTests, comparison_models, per_case_means, run_paired_tests, skipped_note

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("md", "tex", "csv")
MISSING_GROUP = "(missing)"  # audit.evaluation's label for a case with no value in a group_by column
# Case columns that identify files, not strata: never offered as a --group-by column.
_NOT_GROUPING = frozenset({"case_id", "image", "anatomy_mask", "mask", "prompt"})
# The privacy audit's headline joins the paper tables (Markdown, LaTeX); its other metrics (distances,
# authenticity, privacy AUC, re-ID scores) are detail for report.html's privacy section and the CSV,
# which has every number.
PRIVACY_HEADLINE = ("memorised_fraction",)
PRIVACY_DETAIL = frozenset(catalogue.names(family="privacy")) - frozenset(PRIVACY_HEADLINE)

TABLE_COLUMNS = [
    "group",
    "model",
    "kind",
    "metric",
    "label",
    "arrow",
    "unit",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "best",
    *MARK_COLUMNS,
]
MEAN_STD_COLUMNS = [
    "column", "group_value", "model", "kind", "metric", "label", "arrow", "mean", "std", "n", *MARK_COLUMNS,
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ComparisonTable:
    """``frame`` is tidy (columns :data:`TABLE_COLUMNS`), rows in display order: model by model, each
    model's metrics in column order; a (model, metric) without a value has NaN value (shown as —)."""

    frame: pd.DataFrame
    group: str  # "" = all cases, else "column=value" as summary.csv has it
    confidence: float
    # metric -> who scored it (reports.provenance); absent for pixel metrics and reader scores
    marks: Mapping[str, EvaluatorMark] = dataclasses.field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.frame["model"]))

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.frame["metric"]))


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


def _reader_rows(reader_scores: pd.DataFrame, models: Sequence[ModelRow], group: str) -> pd.DataFrame:
    needed = ("model", "criterion", "mean", "ci_low", "ci_high", "n_ratings")
    missing = [c for c in needed if c not in reader_scores.columns]
    if missing:
        raise ValueError(
            f"reader_scores: missing column(s) {', '.join(missing)} (has {', '.join(reader_scores.columns)}); "
            "pass reports.reader_stats.reader_statistics(ratings, rng=...).scores"
        )
    return reader_score_rows(reader_scores, models).assign(group=group)


def comparison_table(
    run: RunFiles,
    *,
    group: str = "",
    reader_scores: pd.DataFrame | None = None,
    per_class: bool = False,
    details: bool = False,
) -> ComparisonTable:
    """The comparison table over the summary rows of ``group`` ("" = all cases, else "column=value").

    Columns: every metric summary.csv has for that group, in the report's order (paired image quality,
    clinical realism, mask adherence, distribution, other), then the reader criteria of
    ``reader_scores`` (``reader_statistics(...).scores``: mean 1-5 score, two-way bootstrap CI, N =
    ratings) as "reader <criterion>", higher is better. ``per_class`` adds the per-class
    ``metric:Class`` columns and ``details`` the privacy metrics beyond :data:`PRIVACY_HEADLINE` (the
    CSV export has both; the paper tables would be too wide).
    """
    confidence = run.settings.confidence
    models = comparison_models(run)
    evaluation = EvaluationInfo.from_info(run.info)
    summary = run.summary[run.summary["group"] == group]
    if summary.empty:
        groups = sorted(g for g in pd.unique(run.summary["group"]) if g)
        raise ValueError(
            f"{run.run_dir}: summary.csv has no rows for group {group!r}; groups present: "
            f"{', '.join(repr(g) for g in groups) or 'none (all cases only)'}"
        )
    present = set(summary["metric"])
    all_columns = metric_columns(run, run.settings.pixel_range, evaluation)
    columns = [m for _, _, cols in split_tables(all_columns) for m in cols if m.name in present]
    if not details:
        columns = [m for m in columns if m.name not in PRIVACY_DETAIL]
    if per_class:
        columns += [m for m in all_columns if ":" in m.name and m.name in present]
    rows = summary.loc[:, ["model", "metric", "value", "ci_low", "ci_high", "n", "group"]]
    if reader_scores is not None and len(reader_scores):
        reader = _reader_rows(reader_scores, models, group)
        rows = pd.concat([rows, reader], ignore_index=True)
        columns += [MetricColumn(name, True, "1–5") for name in dict.fromkeys(reader["metric"])]
    index = rows.drop_duplicates(["model", "metric"], keep="last").set_index(["model", "metric"])
    contenders = TableContext(run, models, evaluation, confidence).contenders
    best = {c.name: best_value(index, contenders, c) for c in columns}
    marks = {c.name: metric_mark(run.info, c.name, c.evaluator) for c in columns}
    out = []
    for model in models:
        for column in columns:
            key = (model.name, column.name)
            have = key in index.index
            value = index.at[key, "value"] if have else math.nan
            out.append(
                {
                    "group": group,
                    "model": model.name,
                    "kind": model.kind,
                    "metric": column.name,
                    "label": column.label,
                    "arrow": column.arrow,
                    "unit": column.unit,
                    "value": value,
                    "ci_low": index.at[key, "ci_low"] if have else math.nan,
                    "ci_high": index.at[key, "ci_high"] if have else math.nan,
                    "n": index.at[key, "n"] if have else math.nan,
                    "best": bool(
                        best[column.name] is not None and model in contenders and value == best[column.name]
                    ),
                    **mark_fields(marks[column.name]),
                }
            )
    frame = pd.DataFrame(out, columns=TABLE_COLUMNS)
    frame["n"] = frame["n"].astype("Float64").astype("Int64")
    return ComparisonTable(frame, group, confidence, {k: m for k, m in marks.items() if m is not None})


def _require_case_column(run: RunFiles, column: str) -> pd.DataFrame:
    """cases.parquet with ``column`` as strings (missing values labelled as the runner does)."""
    if run.cases is None:
        raise ValueError(
            f"{run.run_dir}: cases.parquet is missing, so results cannot be split by {column!r}; "
            "re-run `xray-audit run STUDY.toml`"
        )
    if column not in run.cases.columns:
        available = [c for c in run.cases.columns if c not in _NOT_GROUPING]
        raise ValueError(
            f"--group-by {column!r}: no such case column in {run.run_dir / 'cases.parquet'}; "
            f"available: {', '.join(map(str, available)) or 'none'}"
        )
    cases = run.cases.loc[:, ["case_id", column]].copy()
    missing = cases[column].isna() | cases[column].map(lambda v: isinstance(v, str) and not v.strip())
    cases[column] = cases[column].astype(str).where(~missing, MISSING_GROUP)
    return cases


def mean_std_table(run: RunFiles, group_column: str) -> pd.DataFrame:
    """Mean ± std (ddof 1) over cases of every per-sample metric, per model and value of the case
    column ``group_column`` (the knee paper's MAE/PSNR-per-condition format). Samples of a case are
    averaged first; ``n`` is the number of cases. Columns :data:`MEAN_STD_COLUMNS`."""
    cases = _require_case_column(run, group_column)
    per_case = per_case_means(run).merge(cases, on="case_id", how="inner")
    models = comparison_models(run)
    columns = {m.name: m for m in metric_columns(run, run.settings.pixel_range)}
    stats = (
        per_case.groupby(["model", "metric", group_column], sort=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    model_rank = {m.name: i for i, m in enumerate(models)}
    metric_rank = {name: i for i, name in enumerate(columns)}
    kind = {m.name: m.kind for m in models}
    marks = {
        m: mark_fields(metric_mark(run.info, m, columns[m].evaluator if m in columns else ""))
        for m in pd.unique(stats["metric"])
    }
    stats = stats.sort_values(
        by=[group_column, "model", "metric"],
        key=lambda s: (
            s.map(model_rank) if s.name == "model" else s.map(metric_rank) if s.name == "metric" else s
        ),
        kind="stable",
    )
    return pd.DataFrame(
        {
            "column": group_column,
            "group_value": stats[group_column].to_numpy(),
            "model": stats["model"].to_numpy(),
            "kind": stats["model"].map(kind).to_numpy(),
            "metric": stats["metric"].to_numpy(),
            "label": [columns[m].label if m in columns else m for m in stats["metric"]],
            "arrow": [columns[m].arrow if m in columns else "" for m in stats["metric"]],
            "mean": stats["mean"].to_numpy(),
            "std": stats["std"].to_numpy(),
            "n": stats["n"].to_numpy(),
            **{c: [marks[m][c] for m in stats["metric"]] for c in MARK_COLUMNS},
        },
        columns=MEAN_STD_COLUMNS,
    ).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _column_n(frame: pd.DataFrame) -> int | None:
    """The column's N when every model with a value has the same one (then it goes in one N row)."""
    ns = {
        int(n) for n, v in zip(frame["n"], frame["value"], strict=True) if not pd.isna(n) and not pd.isna(v)
    }
    return ns.pop() if len(ns) == 1 else None


@dataclasses.dataclass(frozen=True)
class _Cell:
    value: str
    ci: str = ""
    n: str = ""
    best: bool = False


def _grid(
    table: ComparisonTable,
) -> tuple[list[tuple[str, str, str]], list[str], list[list[_Cell]], list[str]]:
    """(headers (label, arrow, unit), row models, cells, N row) of the wide table."""
    frame = table.frame
    metrics = table.metrics
    heads, n_row, shared = [], [], {}
    for metric in metrics:
        col = frame[frame["metric"] == metric]
        first = col.iloc[0]
        heads.append((str(first["label"]), str(first["arrow"]), str(first["unit"])))
        shared[metric] = _column_n(col)
        n_row.append(str(shared[metric]) if shared[metric] is not None else "per cell")
    cells = []
    for model in table.models:
        rows = frame[frame["model"] == model].set_index("metric")
        line = []
        for metric in metrics:
            r = rows.loc[metric]
            main, ci = format_estimate(r["value"], r["ci_low"], r["ci_high"])
            n = "" if pd.isna(r["n"]) or pd.isna(r["value"]) or shared[metric] is not None else f"n={r['n']}"
            line.append(_Cell(main, ci, n, bool(r["best"])))
        cells.append(line)
    return heads, table.models, cells, n_row


def _kinds(table: ComparisonTable) -> dict[str, str]:
    return dict(zip(table.frame["model"], table.frame["kind"], strict=False))


def _footnote(table: ComparisonTable) -> str:
    where = f" Cases: {table.group}." if table.group else ""
    return (
        f"Mean [{table.confidence:.0%} CI]; N: cases (generated samples for the set-level metrics, "
        "ratings for reader scores). ↑ higher is better, ↓ lower is better; best value per column "
        "among the evaluated models (not sanity baselines or real) in bold; real is the upper bound"
        + (
            " (in the privacy columns, the calibration: held-out patients, ≈ the quantile by construction)"
            if set(table.metrics) & set(catalogue.names(family="privacy"))
            else ""
        )
        + "."
        + where
    )


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _demo_sentence(table: ComparisonTable, where: str) -> str:
    """That demo stand-ins scored some columns (``where``: how those columns are marked); "" if none."""
    demo = demo_evaluators(table.marks.values())
    if not demo:
        return ""
    n = sum(m.demo for m in table.marks.values())
    return _demo_words(f"{n} of the {len(table.metrics)} metric columns ({where})", demo)


def _demo_words(columns: str, names: Sequence[str]) -> str:
    return (
        f"Demo stand-in evaluators: {columns} were scored by {' and '.join(names)}, networks trained on "
        "synthetic DRRs of the demo cohort, not by published chest X-ray models: their values are not "
        "comparable to published values."
    )


def _evaluator_legend(
    marks: Mapping[str, EvaluatorMark], labels: Mapping[str, str]
) -> list[tuple[EvaluatorMark, str, str]]:
    """(mark, its columns, text) per distinct evaluator mark, in column order."""
    grouped: dict[EvaluatorMark, list[str]] = {}
    for metric, mark in marks.items():
        grouped.setdefault(mark, []).append(labels.get(metric, metric))
    out = []
    for mark, columns in grouped.items():
        about = (mark.note or mark.tag).rstrip(".")
        out.append((mark, ", ".join(columns), f"{mark.evaluator or 'evaluator not recorded'} — {about}."))
    return out


def _weights_words(mark: EvaluatorMark, escape: Callable[[str], str], sha: str) -> str:
    """' Weights FILE, sha256 SHA' (``sha``: the hash as the format shows it), or less when unknown."""
    parts = [f"weights {escape(mark.weights)}"] if mark.weights else []
    if mark.weights_sha256:
        parts.append(f"sha256 {sha}")
    return (" " + ", ".join(parts)).replace(" weights", " Weights", 1) if parts else ""


def _labels(table: ComparisonTable) -> dict[str, str]:
    return dict(zip(table.frame["metric"], table.frame["label"], strict=False))


def to_markdown(table: ComparisonTable) -> str:
    """A GitHub-flavoured Markdown table: model, kind, then one column per metric; a last N row
    (or "n=…" in the cells of a column whose N differs between models). Each evaluator column's header
    names its evaluator and pin (or says "demo stand-in"); a table scored by a demo stand-in starts
    with a line that says so, and the evaluators, their weights sha256 and pins close it."""
    heads, models, cells, n_row = _grid(table)
    kinds = _kinds(table)
    labels = _labels(table)
    header = ["model", "kind"]
    for metric, (label, arrow, unit) in zip(table.metrics, heads, strict=True):
        mark = table.marks.get(metric)
        about = "; ".join(t for t in (unit, mark.tag if mark else "") if t)
        header.append(f"{label} {arrow}".strip() + (f" ({about})" if about else ""))
    demo = _demo_sentence(table, "marked “demo stand-in”")
    lines = [f"**⚠ {_md_escape(demo)}**", ""] if demo else []
    lines += [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "| " + " | ".join([":---", ":---"] + ["---:"] * len(heads)) + " |",
    ]
    for model, line in zip(models, cells, strict=True):
        texts = []
        for c in line:
            main = f"**{c.value}**" if c.best else c.value
            texts.append(" ".join(t for t in (main, c.ci, f"({c.n})" if c.n else "") if t))
        kind = kinds[model] + (" (sanity baseline)" if kinds[model] in BASELINE_KINDS else "")
        lines.append("| " + " | ".join([_md_escape(model), _md_escape(kind), *texts]) + " |")
    lines.append("| " + " | ".join(["N", "", *n_row]) + " |")
    legend = _evaluator_legend(table.marks, labels)
    if legend:
        lines += ["", _footnote(table), "", "Evaluators (weights sha256 and where the hash came from):", ""]
        for mark, columns, text in legend:
            weights = _weights_words(mark, _md_escape, f"`{mark.weights_sha256}`")
            lines.append(f"- {_md_escape(columns)}: {_md_escape(text)}{weights}")
        return "\n".join(lines) + "\n"
    return "\n".join(lines) + "\n\n" + _footnote(table) + "\n"


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "−": "$-$",
    "—": "---",
    "–": "--",
    "∞": r"$\infty$",
    "²": r"$^2$",
    "·": r"\textperiodcentered{}",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "±": r"$\pm$",
}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX_SPECIAL))


def tex_escape(text: str) -> str:
    """LaTeX-safe text (pdflatex without extra packages beyond booktabs): specials and the Unicode
    signs the formatters emit."""
    return _TEX_RE.sub(lambda m: _TEX_SPECIAL[m.group(0)], str(text))


def to_latex(table: ComparisonTable, caption: str | None = None, label: str = "tab:comparison") -> str:
    """A booktabs ``table`` environment; best values in ``\\textbf``, CIs in ``\\scriptsize``, a rule
    before the baselines and before the real row, the N per column in a last row."""
    heads, models, cells, n_row = _grid(table)
    kinds = _kinds(table)
    labels = _labels(table)
    letters = {mark: _letter(i) for i, mark in enumerate(dict.fromkeys(table.marks.values()))}
    head = ["Model"]
    for metric, (name, arrow, unit) in zip(table.metrics, heads, strict=True):
        mark = table.marks.get(metric)
        head.append(
            tex_escape(f"{name} {arrow}".strip())
            + (r"\textsuperscript{" + letters[mark] + "}" if mark else "")
            + (f" {{\\scriptsize ({tex_escape(unit)})}}" if unit else "")
        )
    demo = _demo_sentence(
        table,
        "notes " + ", ".join(letters[m] for m in dict.fromkeys(m for m in table.marks.values() if m.demo)),
    )
    lines = [f"% {demo}"] if demo else []  # the file's first line says so, even where LaTeX hides it
    lines += [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + tex_escape(caption or _footnote(table)) + "}",
        r"\label{" + label + "}",
        r"\begin{tabular}{l" + "r" * len(heads) + "}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    previous = None
    for model, line in zip(models, cells, strict=True):
        kind = kinds[model]
        section = "real" if kind == "real" else "baseline" if kind in BASELINE_KINDS else "generator"
        if previous is not None and section != previous:
            lines.append(r"\midrule")
        previous = section
        texts = []
        for c in line:
            main = tex_escape(c.value)
            main = r"\textbf{" + main + "}" if c.best else main
            extra = " ".join(t for t in (c.ci, f"({c.n})" if c.n else "") if t)
            texts.append(main + (r" {\scriptsize " + tex_escape(extra) + "}" if extra else ""))
        name = tex_escape(model) + (r" {\scriptsize (sanity baseline)}" if section == "baseline" else "")
        lines.append(" & ".join([name, *texts]) + r" \\")
    lines += [
        r"\midrule",
        " & ".join([r"\textit{N}", *(tex_escape(n) for n in n_row)]) + r" \\",
        r"\bottomrule",
        r"\end{tabular}",
    ]
    legend = _evaluator_legend(table.marks, labels)
    if legend:
        lines += [r"\par\smallskip", r"{\footnotesize"]
        if demo:
            lines.append(r"\textbf{" + tex_escape(demo) + r"}\par")
        for mark, columns, text in legend:
            # The first 12 hex digits: 64 would not break across lines (the CSV has them all).
            sha = r"\texttt{" + tex_escape(mark.weights_sha256[:12]) + r"}\ldots{}"
            lines.append(
                r"\textsuperscript{" + letters[mark] + "}~" + tex_escape(f"{columns}: {text}")
                + _weights_words(mark, tex_escape, sha) + r"\par"
            )  # fmt: skip
        lines.append("}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _letter(i: int) -> str:
    """a, b, ..., z, aa, ab, ... (LaTeX note marks)."""
    return _letter(i // 26 - 1) + chr(ord("a") + i % 26) if i >= 26 else chr(ord("a") + i)


def to_csv_frame(table: ComparisonTable | Sequence[ComparisonTable]) -> pd.DataFrame:
    """Every number of one or several tables at full precision, plus the text the exports show."""
    tables = [table] if isinstance(table, ComparisonTable) else list(table)
    frames = []
    for t in tables:
        frame = t.frame.copy()
        texts = [
            format_estimate(v, lo, hi)
            for v, lo, hi in zip(frame["value"], frame["ci_low"], frame["ci_high"], strict=True)
        ]
        frame["shown"] = [f"{main} {ci}".strip() for main, ci in texts]
        frame["confidence"] = t.confidence
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*TABLE_COLUMNS, "shown"])


def _mean_std_text(mean: float, std: float) -> str:
    if pd.isna(std):
        return format_number(mean, decimals(mean, math.nan, math.nan))
    d = decimals(mean, mean - std, mean + std)
    return f"{format_number(mean, d)} ± {format_number(std, d)}"


def mean_std_markdown(frame: pd.DataFrame) -> str:
    """:func:`mean_std_table` as Markdown: rows (group value, model), columns metrics, "mean ± std (n)"."""
    if frame.empty:
        return ""
    column = str(frame["column"].iloc[0])
    metrics = list(dict.fromkeys(frame["metric"]))
    firsts = frame.drop_duplicates("metric").set_index("metric")
    heads, demo = {}, []
    for m in metrics:
        r = firsts.loc[m]
        evaluator, pin = str(r.get("evaluator", "") or ""), str(r.get("pin", "") or "")
        heads[m] = f"{r['label']} {r['arrow']}".strip() + (
            f" ({evaluator_tag(evaluator, pin)})" if evaluator else ""
        )
        demo += [
            name for name, how in zip(evaluator.split(SEP), pin.split(SEP), strict=False) if how == "demo"
        ]
    lines = []
    if demo:
        sentence = _demo_words("the columns marked “demo stand-in”", list(dict.fromkeys(demo)))
        lines += [f"**⚠ {_md_escape(sentence)}**", ""]
    lines += [
        "| " + " | ".join(_md_escape(h) for h in [column, "model", *(heads[m] for m in metrics)]) + " |",
        "| " + " | ".join([":---", ":---"] + ["---:"] * len(metrics)) + " |",
    ]
    for (value, model), rows in frame.groupby(["group_value", "model"], sort=False):
        by = rows.set_index("metric")
        cells = [
            f"{_mean_std_text(by.at[m, 'mean'], by.at[m, 'std'])} (n={int(by.at[m, 'n'])})"
            if m in by.index
            else "—"
            for m in metrics
        ]
        lines.append("| " + " | ".join([_md_escape(str(value)), _md_escape(str(model)), *cells]) + " |")
    return (
        "\n".join(lines)
        + "\n\nMean ± standard deviation over cases (samples of a case averaged first); n cases.\n"
    )


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def _group_rows(run: RunFiles, column: str, rng: np.random.Generator, resamples: int) -> pd.DataFrame:
    """summary.csv-shaped rows for the ``column=value`` groups the run did not summarise: per-case
    metrics only (set-level metrics need the images), mean over cases with a bootstrap CI."""
    cases = _require_case_column(run, column)
    confidence = run.settings.confidence
    per_case = per_case_means(run).merge(cases, on="case_id", how="inner")
    hib = run.summary.drop_duplicates("metric").set_index("metric")["higher_is_better"]
    rows = []
    for (value, model, metric), grp in per_case.groupby([column, "model", "metric"], sort=True):
        x = grp["value"].to_numpy(np.float64)
        lo, hi = bootstrap_mean_ci(x, rng, resamples, confidence)
        rows.append(
            {
                "model": model,
                "metric": metric,
                "value": float(x.mean()),
                "ci_low": lo,
                "ci_high": hi,
                "n": int(x.size),
                "higher_is_better": hib.get(metric, ""),
                "group": f"{column}={value}",
                "evaluator": "",
            }
        )
    return pd.DataFrame(rows)


def _groups_for(
    run: RunFiles, column: str, rng: np.random.Generator, resamples: int
) -> tuple[RunFiles, list[str]]:
    """The run (summary extended when needed) and the ``column=value`` groups of ``column``."""
    prefix = f"{column}="
    groups = [g for g in pd.unique(run.summary["group"]) if g.startswith(prefix)]
    if groups:
        return run, groups
    extra = _group_rows(run, column, rng, resamples)
    if extra.empty:
        raise ValueError(f"--group-by {column!r}: no per-case values to split (per_sample.parquet is empty)")
    log.info(
        "summary.csv has no %s groups (not in [metrics].group_by): computed from per_sample.parquet; "
        "set-level metrics (FID, KID, ...) are not available per group",
        column,
    )
    summary = pd.concat([run.summary, extra], ignore_index=True)
    return dataclasses.replace(run, summary=summary), list(dict.fromkeys(extra["group"]))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("._") or "_"


def _write_csv(dest: Path, frame: pd.DataFrame) -> None:
    with atomic_path(dest) as tmp:
        frame.to_csv(tmp, index=False)


def write_exports(
    run_dir: str | Path | RunFiles,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = EXPORT_FORMATS,
    group_by: str | None = None,
    reader_scores: pd.DataFrame | None = None,
    *,
    seed: int | None = None,
    resamples: int | None = None,
    paired: PairedTests | None = None,
) -> list[Path]:
    """Write the comparison exports of a run directory (or its :func:`reports.run.load_run`) and
    return the paths written (atomically).

    Files in ``out_dir`` (default ``run_dir``): ``comparison.md`` / ``.tex`` / ``.csv`` per format,
    ``paired_tests.csv`` with "csv". With ``group_by`` (a case column) also one
    ``comparison-<column>=<value>.<ext>`` per value and ``mean_std-<column>.md`` / ``.csv``; groups the
    run did not summarise (not in ``[metrics].group_by``) are computed from per_sample.parquet.
    ``seed`` (default ``[study].seed``) and ``resamples`` (default ``[metrics].bootstrap_resamples``)
    drive the bootstrap CIs computed here, at the run's ``[metrics].confidence``
    (:class:`audit.rundir.RunSettings`). ``paired`` (:func:`run_paired_tests` of the same run and
    settings) is written as paired_tests.csv instead of computing the tests again. Metrics left out of
    the tests (non-finite per-sample values) have no rows in paired_tests.csv; comparison.md ends with
    a line naming them and why. Every table names the evaluator of each clinical and distribution
    column (:mod:`reports.provenance`).
    """
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad:
        raise ValueError(
            f"unknown export format(s) {', '.join(bad)}; choose from {', '.join(EXPORT_FORMATS)}"
        )
    run = run_dir if isinstance(run_dir, RunFiles) else load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir
    seed = run.settings.seed if seed is None else int(seed)
    resamples = run.settings.bootstrap_resamples if resamples is None else int(resamples)
    rng = np.random.default_rng(seed)
    # The same rule of what the tests leave out, whether or not they are computed here.
    note = skipped_note(paired.skipped if paired is not None else nonfinite_metrics(run))
    written: list[Path] = []
    if group_by and not any(g.startswith(f"{group_by}=") for g in run.summary["group"]):
        _require_case_column(run, group_by)  # a bad column fails before any file is written

    def emit(stem: str, source: RunFiles, group: str, scores: pd.DataFrame | None, notes: str = "") -> None:
        table = comparison_table(source, group=group, reader_scores=scores)
        for fmt in formats:
            dest = out / f"{stem}.{fmt}"
            if fmt == "md":
                write_text(dest, to_markdown(table) + (f"\n{_md_escape(notes)}\n" if notes else ""))
            elif fmt == "tex":
                write_text(dest, to_latex(table))
            else:  # the CSV has every number, per-class metrics included
                full = comparison_table(
                    source, group=group, reader_scores=scores, per_class=True, details=True
                )
                _write_csv(dest, to_csv_frame(full))
            written.append(dest)

    emit("comparison", run, "", reader_scores, note)
    if "csv" in formats:
        if paired is None:
            paired = run_paired_tests(run, seed=seed, resamples=resamples)
        if paired.rng_state is not None:
            rng.bit_generator.state = paired.rng_state
        dest = out / "paired_tests.csv"
        _write_csv(dest, paired.frame)
        written.append(dest)
    if group_by:
        grouped, groups = _groups_for(run, group_by, rng, resamples)
        stems: set[str] = set()
        for group in groups:
            stem = f"comparison-{_safe(group)}"
            while stem in stems:  # two values that differ only in unsafe characters
                stem += "_"
            stems.add(stem)
            # Reader scores are over all rated items, not per group: left out of the group tables.
            emit(stem, grouped, group, None)
        frame = mean_std_table(run, group_by)
        if "md" in formats:
            dest = out / f"mean_std-{_safe(group_by)}.md"
            write_text(dest, mean_std_markdown(frame))
            written.append(dest)
        if "csv" in formats:
            dest = out / f"mean_std-{_safe(group_by)}.csv"
            _write_csv(dest, frame)
            written.append(dest)
    return written


__all__ = [
    "EXPORT_FORMATS",
    "ComparisonTable",
    "comparison_table",
    "mean_std_markdown",
    "mean_std_table",
    "tex_escape",
    "to_csv_frame",
    "to_latex",
    "to_markdown",
    "write_exports",
]
