"""``xray-audit report RUN --layout RECIPE``: a paper's own table layout, filled from the run.

The recipe (:mod:`audit.recipes`) says where each number goes (:class:`audit.recipes.base.Ref`);
this module looks the numbers up and writes ``table-RECIPE.md``, ``.tex`` and ``.csv``:

* every number is summary.csv's value for (model, metric, group), a reader score from the reader
  statistics, or (knee) mean ± std over cases, whose mean is summary.csv's value and whose std
  (ddof 1) is over the per-case values of per_sample.parquet (samples of a case averaged first);
* md and tex keep the paper's shape: the CI is a second line in the cell; the csv has one row per
  cell with value, CI, N and std;
* below the table, the paper's own numbers ("published"), labelled as the paper's, on its data.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from audit import rundir
from audit.atomic import write_text
from audit.cases import is_phantom
from audit.recipes.base import READER, PaperTable, Recipe, Ref, RunView, published_markdown
from reports.provenance import MARK_COLUMNS, EvaluatorMark, demo_evaluators, mark_fields, metric_mark
from reports.run import RunFiles, order_models
from reports.statistics import per_case_means

log = logging.getLogger(__name__)

DASH = "—"
MISSING = "n/a"
CSV_COLUMNS = (
    "table", "row", "column", "model", "metric", "group", "text", "value", "ci_low", "ci_high", "n", "std",
    *MARK_COLUMNS,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Number:
    """One resolved cell: the text shown and the numbers behind it."""

    text: str
    ci: str  # the second line, "[lo, hi]" ("" when there is none)
    value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: float = math.nan
    std: float = math.nan


def _is_demo(run: RunFiles) -> bool:
    """Whether the run used the embedded demo: its generators, or a study `init --demo` wrote."""
    callables = [str(m.get("callable", "")) for m in run.settings.models]
    return any(c.startswith("audit.demo.") for c in callables) or run.settings.name.endswith("-demo")


def _norberg_summary(run: RunFiles) -> pd.DataFrame | None:
    path = run.run_dir / rundir.NORBERG_SUMMARY
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in ("value", "ci_low", "ci_high", "n"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def run_view(
    run: RunFiles, reader_scores: pd.DataFrame | None, simulated: bool, norberg: pd.DataFrame | None
) -> RunView:
    groups: dict[str, tuple[str, ...]] = {}
    for label in run.summary["group"].unique():
        column, sep, value = str(label).partition("=")
        if sep:
            groups.setdefault(column, ())
            groups[column] = (*groups[column], value)
    metrics = set(run.summary["metric"].astype(str))
    if reader_scores is not None:
        metrics |= {f"{READER}{c}" for c in reader_scores["criterion"].astype(str).unique()}
    sources = tuple(dict.fromkeys(norberg["source"])) if norberg is not None and "source" in norberg else ()
    return RunView(
        models=tuple((m.name, m.kind) for m in order_models(run)),
        metrics=frozenset(metrics),
        group_values={k: tuple(sorted(set(v))) for k, v in groups.items()},
        simulated_readers=simulated,
        demo=_is_demo(run),
        pixel_range=float(run.settings.metrics.pixel_range),
        overlap_threshold=float(run.settings.metrics.overlap_threshold),
        norberg_sources=sources,
    )


class _Resolver:
    def __init__(
        self, run: RunFiles, reader_scores: pd.DataFrame | None, norberg: pd.DataFrame | None
    ) -> None:
        self._summary = {
            (str(r.model), str(r.metric), str(r.group)): r for r in run.summary.itertuples(index=False)
        }
        self._norberg = (
            {
                (str(r.model), str(r.metric), str(r.group), str(r.source)): r
                for r in norberg.itertuples(index=False)
            }
            if norberg is not None and "source" in norberg
            else {}
        )
        self._readers = (
            {(str(r.model), str(r.criterion)): r for r in reader_scores.itertuples(index=False)}
            if reader_scores is not None
            else {}
        )
        # A reader study names the reference images "real", whatever the run's real-kind model is called.
        self._reader_name = {m.name: "real" for m in order_models(run) if m.is_real}
        self._run = run
        self._per_case: pd.DataFrame | None = None
        self._groups: dict[str, dict[str, set[str]]] = {}  # case column -> group label -> case ids
        self.missing: list[Ref] = []

    def _std(self, ref: Ref) -> float:
        from audit.evaluation import groups_of

        if self._per_case is None:
            self._per_case = per_case_means(self._run)
        pc = self._per_case
        pc = pc[(pc["model"] == ref.model) & (pc["metric"] == ref.metric)]
        if ref.group:
            column = ref.group.partition("=")[0]
            cases = self._run.cases
            if cases is None or column not in cases:
                return math.nan
            if column not in self._groups:
                # The same membership as summary.csv's group rows (missing values form "(missing)").
                self._groups[column] = {g: set(ids) for g, ids in groups_of(cases, [column])}
            members = self._groups[column].get(ref.group)
            if members is None:
                return math.nan
            pc = pc[pc["case_id"].isin(members)]
        values = pc["value"].to_numpy(np.float64)
        return float(np.std(values, ddof=1)) if values.size > 1 else math.nan

    def _row(self, ref: Ref) -> tuple[float, float, float, float] | None:
        if ref.metric.startswith(READER):
            model = self._reader_name.get(ref.model, ref.model)
            row = self._readers.get((model, ref.metric[len(READER) :]))
            return (
                None
                if row is None
                else (float(row.mean), float(row.ci_low), float(row.ci_high), float(row.n_ratings))
            )
        hit = (
            self._norberg.get((ref.model, ref.metric, ref.group, ref.source))
            if ref.source
            else self._summary.get((ref.model, ref.metric, ref.group))
        )
        return (
            None if hit is None else (float(hit.value), float(hit.ci_low), float(hit.ci_high), float(hit.n))
        )

    def number(self, ref: Ref) -> Number:
        if ref.dash:
            return Number(DASH, "")
        found = self._row(ref)
        if found is None:
            self.missing.append(ref)
            return Number(MISSING, "")
        value, lo, hi, n = found
        if not math.isfinite(value):
            return Number(MISSING if math.isnan(value) else _fmt(value, ref.digits), "", value, lo, hi, n)
        ci = (
            f"[{_fmt(lo, ref.digits)}, {_fmt(hi, ref.digits)}]"
            if math.isfinite(lo) and math.isfinite(hi)
            else ""
        )
        if ref.style == "mean_std":
            std = self._std(ref)
            text = f"{_fmt(value, ref.digits)}±{_fmt(std, ref.std_digits)}"
            return Number(text, ci, value, lo, hi, n, std)
        return Number(_fmt(value, ref.digits), ci, value, lo, hi, n)


def _fmt(x: float, digits: int) -> str:
    if math.isnan(x):
        return MISSING
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}f}"


@dataclasses.dataclass(frozen=True)
class Filled:
    table: PaperTable
    cells: tuple[tuple[str | Number, ...], ...]


def fill(
    recipe: Recipe, run: RunFiles, reader_scores: pd.DataFrame | None, simulated: bool
) -> tuple[RunView, list[Filled]]:
    """The run as the layout sees it, and the recipe's tables for it with every Ref resolved."""
    norberg = _norberg_summary(run)
    view = run_view(run, reader_scores, simulated, norberg)
    resolver = _Resolver(run, reader_scores, norberg)
    out = []
    refs = 0
    for table in recipe.layout(view):
        cells = tuple(
            tuple(resolver.number(c) if isinstance(c, Ref) else c for c in row) for row in table.rows
        )
        refs += sum(isinstance(c, Ref) and not c.dash for row in table.rows for c in row)
        out.append(Filled(table, cells))
    if resolver.missing:
        metrics = sorted({r.metric for r in resolver.missing})
        log.warning(
            "--layout %s: %d of %d cells have no value in this run (n/a): %s%s",
            recipe.name,
            len(resolver.missing),
            refs,
            ", ".join(metrics[:8]),
            "; was the run made from this recipe's study (`xray-audit init " + recipe.name + "`)?"
            if len(resolver.missing) * 2 > refs
            else "",
        )
    return view, out


# --------------------------------------------------------------------------------------------- formats


def _spans(row: Sequence[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for label in row:
        if out and out[-1][0] == label:
            out[-1] = (label, out[-1][1] + 1)
        else:
            out.append((label, 1))
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(recipe: Recipe, filled: Sequence[Filled], banner: Sequence[str]) -> str:
    lines = [f"<!-- xray-audit report --layout {recipe.name}: {recipe.citation} -->"]
    lines += [f"**{b}**" for b in banner]
    for f in filled:
        t = f.table
        lines += ["", f"### {t.title}", "", t.caption, ""]
        top, last = (t.header[0], t.header[-1]) if len(t.header) > 1 else ((), t.header[0])
        head = []
        for i, label in enumerate(last):
            group = top[i] if top else ""
            start = bool(top) and i >= t.row_labels and (i == 0 or top[i - 1] != group)
            head.append(f"{group}<br>{label}" if start and group != label else label)
        lines.append("| " + " | ".join(_md_escape(h) for h in head) + " |")
        lines.append("|" + "".join(":---|" if i < t.row_labels else "---:|" for i in range(len(last))))
        for row in f.cells:
            out = []
            for cell in row:
                if isinstance(cell, Number):
                    out.append(cell.text + (f"<br><sub>{cell.ci}</sub>" if cell.ci else ""))
                else:
                    out.append(_md_escape(cell))
            lines.append("| " + " | ".join(out) + " |")
        lines += [""] + [f"- {n}" for n in t.notes]
        lines.append(
            "- Second line of a cell: its 95% CI (bootstrap over cases; readers × items for reader scores); N per cell in the .csv."
        )
    lines += ["", "## Published: the paper's own numbers, on its data (not computed by this run)", ""]
    lines.append(published_markdown(recipe.published))
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "—": "---", "†": r"\textdagger{}",
        "‡": r"\textdaggerdbl{}", "²": r"$^2$", "×": r"$\times$", "∞": r"$\infty$", "−": "-",
        "σ": r"$\sigma$", "°": r"$^\circ$", "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$",
        "→": r"$\rightarrow$", "–": "--", "’": "'", "“": "``", "”": "''", "|": r"\textbar{}",
        "<": r"\textless{}", ">": r"\textgreater{}"}  # fmt: skip


def _tex(text: str) -> str:
    """``text`` for pdflatex: specials escaped, known symbols as math, any other non-ASCII character as
    ``?`` (pdflatex stops at one it has no definition for)."""
    return "".join(_TEX.get(ch, ch if ch.isascii() else "?") for ch in text)


def latex(recipe: Recipe, filled: Sequence[Filled], banner: Sequence[str]) -> str:
    lines = [
        f"% xray-audit report --layout {recipe.name}: {recipe.citation}",
        "% needs \\usepackage{booktabs}",
    ]
    lines += [f"% {b}" for b in banner]
    for f in filled:
        t = f.table
        ncol = len(t.header[-1])
        lines += [r"\begin{table}[t]", r"\centering", f"\\caption{{{_tex(t.title)}: {_tex(t.caption)}}}"]
        lines.append(r"\begin{tabular}{" + "l" * t.row_labels + "c" * (ncol - t.row_labels) + "}")
        lines.append(r"\toprule")
        if len(t.header) > 1:
            cells, rules, col = [], [], 1
            for label, span in _spans(t.header[0]):
                if col <= t.row_labels:
                    cells += [""] * span
                else:
                    cells.append(
                        f"\\multicolumn{{{span}}}{{c}}{{{_tex(label)}}}" if span > 1 else _tex(label)
                    )
                    rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
                col += span
            lines.append(" & ".join(cells) + r" \\")
            lines.append(" ".join(rules))
        lines.append(" & ".join(_tex(h) for h in t.header[-1]) + r" \\")
        lines.append(r"\midrule")
        for row in f.cells:
            out = []
            for cell in row:
                if isinstance(cell, Number):
                    text = _tex(cell.text)
                    out.append(
                        f"\\shortstack{{{text}\\\\{{\\scriptsize {_tex(cell.ci)}}}}}" if cell.ci else text
                    )
                else:
                    out.append(_tex(cell))
            lines.append("{}" + " & ".join(out) + r" \\")  # {}: a cell starting with [ is not \\[len]
        lines += [r"\bottomrule", r"\end{tabular}"]
        notes = [*banner, *t.notes, "Second line of a cell: its 95% CI; N per cell in the csv."]
        lines += [r"\par\smallskip\footnotesize " + " ".join(_tex(n) for n in notes)]
        lines += [r"\end{table}", ""]
    for p in recipe.published:
        lines += [r"\begin{table}[t]", r"\centering"]
        lines.append(
            f"\\caption{{Published ({_tex(p.title)}; the paper's own numbers, on its data, not this run)}}"
        )
        lines.append(r"\begin{tabular}{" + "l" * len(p.header) + "}")
        lines += [r"\toprule", " & ".join(_tex(h) for h in p.header) + r" \\", r"\midrule"]
        lines += [" & ".join(_tex(c) for c in r) + r" \\" for r in p.rows]
        lines += [
            r"\bottomrule",
            r"\end{tabular}",
            r"\par\smallskip\footnotesize " + _tex(f"{p.source}. {p.data}"),
        ]
        lines += [r"\end{table}", ""]
    return "\n".join(lines)


def marks(run: RunFiles, filled: Sequence[Filled]) -> dict[str, EvaluatorMark | None]:
    """The evaluator behind each metric of the tables (None for pixel metrics and reader scores)."""
    named = (
        run.summary[run.summary["evaluator"].astype(str) != ""]
        .drop_duplicates("metric")
        .set_index("metric")["evaluator"]
        if "evaluator" in run.summary
        else pd.Series(dtype=str)
    )
    metrics = {c.metric for f in filled for row in f.table.rows for c in row if isinstance(c, Ref)}
    return {m: metric_mark(run.info, m, str(named.get(m, ""))) for m in sorted(metrics)}


def csv_frame(filled: Sequence[Filled], by_metric: dict[str, EvaluatorMark | None]) -> pd.DataFrame:
    rows = []
    for f in filled:
        t = f.table
        header = [" / ".join(dict.fromkeys(h[i] for h in t.header if h[i])) for i in range(len(t.header[-1]))]
        for raw, row in zip(t.rows, f.cells, strict=True):
            labels = " / ".join(str(c) for c in row[: t.row_labels] if isinstance(c, str) and c)
            for i in range(t.row_labels, len(row)):
                cell, ref = row[i], raw[i]
                if not isinstance(cell, Number) or not isinstance(ref, Ref):
                    continue
                rows.append(
                    {
                        "table": t.title, "row": labels, "column": header[i], "model": ref.model,
                        "metric": ref.metric, "group": ref.group, "text": cell.text, "value": cell.value,
                        "ci_low": cell.ci_low, "ci_high": cell.ci_high, "n": cell.n, "std": cell.std,
                        **mark_fields(by_metric.get(ref.metric)),
                    }
                )  # fmt: skip
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def write_layout(
    recipe: Recipe,
    run: RunFiles,
    out: Path,
    formats: Sequence[str],
    reader_scores: pd.DataFrame | None = None,
    simulated: bool = False,
) -> list[Path]:
    """Write ``table-<recipe>.{md,tex,csv}`` (those of ``formats``) into ``out``; returns the paths."""
    view, filled = fill(recipe, run, reader_scores, simulated)
    by_metric = marks(run, filled)
    banner = []
    demo = demo_evaluators(by_metric.values())
    if demo:
        columns = sorted(m for m, mark in by_metric.items() if mark is not None and mark.demo)
        banner.append(
            f"Demo stand-in evaluators: {', '.join(columns)} were scored by {' and '.join(demo)}, networks "
            "trained on synthetic DRRs of the demo cohort: not comparable to the published numbers below."
        )
    if is_phantom(run.cases):
        banner.append("PHANTOM: the cases are a drawn pelvis phantom, not anatomy.")
    if simulated:
        banner.append("Reader scores from SIMULATED readers (demo), not radiologists.")
    if view.demo:
        banner.append(
            "DEMO: the embedded synthetic data and the small demo generators/evaluators trained on it; the "
            "numbers show the layout working, not anything about real models."
        )
    written = []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"table-{recipe.name}"
    if "md" in formats:
        written.append(out / f"{stem}.md")
        write_text(written[-1], markdown(recipe, filled, banner))
    if "tex" in formats:
        written.append(out / f"{stem}.tex")
        write_text(written[-1], latex(recipe, filled, banner))
    if "csv" in formats:
        written.append(out / f"{stem}.csv")
        write_text(written[-1], csv_frame(filled, by_metric).to_csv(index=False))
    return written
