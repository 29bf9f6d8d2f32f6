"""What the golden test freezes of a demo run, how it is normalised, and how two versions are compared.

Shared by tests/test_golden_outputs.py (compare) and tests/golden/update.py (record). Everything here
reads files only; nothing runs the pipeline.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import platform
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

GOLDEN_DIR = Path(__file__).resolve().parent / "demo"
ENVIRONMENT_JSON = "environment.json"
REPORT_FORMATS = "csv,md,tex,html"  # `xray-audit report RUN_DIR --format ... --out DIR`


@dataclasses.dataclass(frozen=True)
class Item:
    """One golden file: ``name`` is its file name under GOLDEN_DIR."""

    name: str
    kind: str  # csv (compared as text cells) | parquet | text | run_json | html_tables
    source: str  # "run": the demo's run directory; "report": the `xray-audit report` output dir
    file: str  # the file it is made from, in its source directory
    keys: tuple[str, ...] = ()  # columns that name a row in failure messages


ITEMS = (
    Item("summary.csv", "csv", "run", "summary.csv", ("model", "metric", "group")),
    Item(
        "per_sample.parquet", "parquet", "run", "per_sample.parquet", ("model", "case_id", "sample", "metric")
    ),
    Item("samples.parquet", "parquet", "run", "samples.parquet", ("model", "case_id", "sample")),
    Item("cases.parquet", "parquet", "run", "cases.parquet", ("case_id",)),
    Item("run_json.csv", "run_json", "run", "run.json", ("key",)),
    Item("config.toml", "text", "run", "config.toml"),
    Item("comparison.csv", "csv", "report", "comparison.csv", ("group", "model", "metric")),
    Item("paired_tests.csv", "csv", "report", "paired_tests.csv", ("metric", "model_a", "model_b")),
    Item("comparison.md", "text", "report", "comparison.md"),
    Item("comparison.tex", "text", "report", "comparison.tex"),
    Item("report_tables.csv", "html_tables", "report", "report.html", ("section", "table", "row", "col")),
)
BY_NAME = {item.name: item for item in ITEMS}

# Columns that legitimately differ between two runs of the same code on the same machine (found by
# diffing two fresh demo runs); dropped before recording and before comparing.
VOLATILE_COLUMNS = {
    # wall-clock generation time per sample
    "samples.parquet": ("seconds",),
}
# run.json keys (flattened as /a/b/c) that legitimately differ between two identical runs.
VOLATILE_RUN_JSON = (
    r"/started",  # dates
    r"/finished",
    r"/timings/.*",  # durations
    r"/generation/[^/]+/(generation_seconds|images_per_s)",
    # What this process generated: absent when an earlier run of the same session already made the
    # samples (the full suite), so it describes the process, not the outputs.
    r"/generation/[^/]+/this_process(/.*)?",
    r"/versions/.*",  # package versions: recorded in environment.json instead
    # sha256 of config.toml and of the case manifest as the run read them: both hold absolute paths
    # (the run dir, the demo cohort under XRAY_AUDIT_HOME). The content is compared via config.toml
    # and cases.parquet with their paths made relative.
    r"/config_hash",
    r"/cases_hash",
)
# Placeholders for the absolute directories a demo run's files mention: its run directory, the demo
# cohort and the generators' training cohort of the privacy audit (both under XRAY_AUDIT_HOME). The rest of each path is still compared.
RUN_DIR, COHORT_DIR, TRAINING_DIR = "<run>", "<cohort>", "<training>"

# report.html: the tables of these sections are frozen (cell text and the cell's own title tooltip).
# Left out: distributions (plots only), images (the image grid), failures, and provenance, which holds
# dates, durations, package versions, paths and hashes -- except its "N per metric" table.
REPORT_SECTIONS = ("results", "groups", "model-tests", "norberg", "reader-study", "metric-validity")
REPORT_EXTRA_TABLES = {"provenance": ("n-per-metric",)}  # section: table classes kept there
# The evaluators table describes the networks (sha256, notes on which weights are installed), not
# results; its content is frozen through run_json.csv (/evaluation/evaluators/...).
REPORT_SKIP_TABLES = ("evaluators",)
REPORT_TABLE_COLUMNS = ["section", "table", "table_index", "r", "c", "row", "col", "text", "title"]


# ---------------------------------------------------------------------------------------------
# Normalising a run into the golden form
# ---------------------------------------------------------------------------------------------


def path_placeholders(run_dir: Path) -> list[tuple[str, str]]:
    """(absolute prefix, placeholder) pairs, longest first, from the paths the run's config.toml names."""
    config = tomllib.loads((run_dir / "config.toml").read_text())
    study = config["study"]
    dirs = [(str(study["output"]), RUN_DIR), (str(Path(study["cases"]).parent), COHORT_DIR)]
    if "privacy" in config:
        dirs.append((str(Path(config["privacy"]["training_cases"]).parent), TRAINING_DIR))
    pairs = {}
    for raw, label in dirs:
        for form in (raw, str(Path(raw).resolve())):
            pairs[form] = label
    for form in (str(run_dir), str(run_dir.resolve())):
        pairs.setdefault(form, RUN_DIR)
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def unpath(text: str, placeholders: list[tuple[str, str]]) -> str:
    for prefix, label in placeholders:
        text = text.replace(prefix, label)
    return text


def _unpath_frame(frame: pd.DataFrame, placeholders: list[tuple[str, str]]) -> pd.DataFrame:
    frame = frame.copy()
    for col in frame.columns:
        if pd.api.types.is_string_dtype(frame[col]):  # keeps the dtype and the missing values
            for prefix, label in placeholders:
                frame[col] = frame[col].str.replace(prefix, label, regex=False)
    return frame


def read_csv_text(path: Path) -> pd.DataFrame:
    """A CSV as its text cells: compares numbers exactly as written (repr round-trips) with no parsing."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)


def flatten_json(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in flatten_json(v, f"{prefix}/{k}")]
    if isinstance(value, list):
        return [kv for i, v in enumerate(value) for kv in flatten_json(v, f"{prefix}[{i}]")]
    return [(prefix, json.dumps(value, ensure_ascii=False))]


def run_json_frame(path: Path, placeholders: list[tuple[str, str]]) -> pd.DataFrame:
    volatile = re.compile("|".join(f"(?:{p})" for p in VOLATILE_RUN_JSON))
    rows = [
        (key, unpath(value, placeholders))
        for key, value in flatten_json(json.loads(path.read_text()))
        if not volatile.fullmatch(key)
    ]
    return pd.DataFrame(rows, columns=["key", "value"], dtype=str)


def collect(run_dir: Path, report_dir: Path) -> dict[str, pd.DataFrame | str]:
    """The golden form of every item, from a demo run directory and an `xray-audit report` output dir."""
    run_dir, report_dir = Path(run_dir), Path(report_dir)
    placeholders = path_placeholders(run_dir)
    out: dict[str, pd.DataFrame | str] = {}
    for item in ITEMS:
        src = (run_dir if item.source == "run" else report_dir) / item.file
        if item.kind == "csv":
            value: pd.DataFrame | str = read_csv_text(src)
        elif item.kind == "parquet":
            value = _unpath_frame(pd.read_parquet(src), placeholders)
        elif item.kind == "text":
            value = unpath(src.read_text(), placeholders)
        elif item.kind == "run_json":
            value = run_json_frame(src, placeholders)
        elif item.kind == "html_tables":
            value = report_tables(src)
        else:  # pragma: no cover
            raise ValueError(item.kind)
        if isinstance(value, pd.DataFrame):
            value = value.drop(columns=list(VOLATILE_COLUMNS.get(item.name, ())))
        out[item.name] = value
    return out


def write_golden(values: dict[str, pd.DataFrame | str], golden_dir: Path = GOLDEN_DIR) -> list[Path]:
    golden_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for item in ITEMS:
        value, dest = values[item.name], golden_dir / item.name
        if item.kind == "parquet":
            value.to_parquet(dest, index=False)
        elif item.kind == "text":
            dest.write_text(value)
        else:
            value.to_csv(dest, index=False, lineterminator="\n")
        written.append(dest)
    return written


def read_golden(golden_dir: Path = GOLDEN_DIR) -> dict[str, pd.DataFrame | str]:
    out: dict[str, pd.DataFrame | str] = {}
    for item in ITEMS:
        path = golden_dir / item.name
        if item.kind == "parquet":
            out[item.name] = pd.read_parquet(path)
        elif item.kind == "text":
            out[item.name] = path.read_text()
        else:
            out[item.name] = read_csv_text(path)
    return out


# ---------------------------------------------------------------------------------------------
# report.html tables
# ---------------------------------------------------------------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _squash(parts: list[str]) -> str:
    return " ".join(" ".join(parts).split())


class _TableCells(HTMLParser):
    """Every cell of the kept tables, in document order, with its section, table label, and the
    labels of its row (the row's leading header cell) and column (the header cells above it)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.section = ""
        self.h3: list[str] | None = None
        self.last_h3 = ""
        self.tables_in_section: dict[str, int] = {}
        self.table: dict[str, Any] | None = None
        self.cell: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []

    def _keep(self, classes: list[str]) -> bool:
        if any(c in REPORT_SKIP_TABLES for c in classes):
            return False
        if self.section in REPORT_SECTIONS:
            return True
        return any(c in REPORT_EXTRA_TABLES.get(self.section, ()) for c in classes)

    def _label(self) -> str:
        for _, attrs in reversed(self.stack):
            for key in ("data-table", "data-metric"):
                if attrs.get(key):
                    return attrs[key]
        return self.last_h3

    def handle_starttag(self, tag: str, attrs_list: list[tuple[str, str | None]]) -> None:
        attrs = {k: v or "" for k, v in attrs_list}
        if tag == "section":
            self.section, self.last_h3 = attrs.get("id", ""), ""
        if tag == "h3":
            self.h3 = []
        if tag == "table" and self.table is None:
            classes = attrs.get("class", "").split()
            index = self.tables_in_section.get(self.section, 0)
            self.tables_in_section[self.section] = index + 1
            if self._keep(classes):
                self.table = {
                    "label": self._label(),
                    "index": index,
                    "head": [],
                    "body": [],
                    "in_head": False,
                }
        if self.table is not None:
            if tag == "thead":
                self.table["in_head"] = True
            elif tag == "tbody":
                self.table["in_head"] = False
            elif tag == "tr":
                (self.table["head"] if self.table["in_head"] else self.table["body"]).append([])
            elif tag in ("td", "th") and self.cell is None:
                self.cell = {
                    "tag": tag,
                    "title": attrs.get("title", ""),
                    "text": [],
                    "span": attrs.get("colspan"),
                }
        if tag not in _VOID:
            self.stack.append((tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if tag in ("td", "th") and self.cell is not None and self.table is not None:
            rows = self.table["head"] if self.table["in_head"] else self.table["body"]
            if not rows:
                rows.append([])
            span = int(self.cell["span"]) if str(self.cell["span"] or "").isdigit() else 1
            text = _squash(self.cell["text"])
            rows[-1].extend([{**self.cell, "text": text}] + [{**self.cell, "text": text}] * (span - 1))
            self.cell = None
        if tag == "h3" and self.h3 is not None:
            self.last_h3, self.h3 = _squash(self.h3), None
        if tag == "table" and self.table is not None and sum(t == "table" for t, _ in self.stack) == 1:
            self._flush()
            self.table = None
        while self.stack:
            open_tag, _ = self.stack.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell["text"].append(data)
        if self.h3 is not None:
            self.h3.append(data)

    def _flush(self) -> None:
        table = self.table
        assert table is not None
        width = max((len(r) for r in table["head"] + table["body"]), default=0)
        cols = [
            " / ".join(r[c]["text"] for r in table["head"] if c < len(r) and r[c]["text"])
            for c in range(width)
        ]
        for r, cells in enumerate(table["body"]):
            row = cells[0]["text"] if cells and cells[0]["tag"] == "th" else ""
            for c, cell in enumerate(cells):
                self.rows.append(
                    {
                        "section": self.section,
                        "table": table["label"],
                        "table_index": str(table["index"]),
                        "r": str(r),
                        "c": str(c),
                        "row": row,
                        "col": cols[c] if c < len(cols) else "",
                        "text": cell["text"],
                        "title": cell["title"],
                    }
                )


def report_tables(path_or_html: Path | str) -> pd.DataFrame:
    """The cells of the report's results tables (see REPORT_SECTIONS), one row per cell, as text."""
    html = path_or_html.read_text() if isinstance(path_or_html, Path) else path_or_html
    parser = _TableCells()
    parser.feed(html)
    parser.close()
    return pd.DataFrame(parser.rows, columns=REPORT_TABLE_COLUMNS, dtype=str)


# ---------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------

MAX_ROWS_SHOWN = 5


def _same(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Element-wise exact equality, NaN/None/NA equal to each other."""
    na_a, na_b = a.isna().to_numpy(), b.isna().to_numpy()
    if pd.api.types.is_float_dtype(a) and pd.api.types.is_float_dtype(b):
        x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            return (x == y) | (na_a & na_b)
    x, y = a.to_numpy(dtype=object), b.to_numpy(dtype=object)
    same, both = na_a & na_b, ~(na_a | na_b)
    same[both] = [bool(u == v) and type(u) is type(v) for u, v in zip(x[both], y[both])]
    return same


def _describe(value: Any) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _delta(a: Any, b: Any) -> str:
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return ""
    if not (np.isfinite(x) and np.isfinite(y)):
        return ""
    rel = abs(y - x) / abs(x) if x else float("inf")
    return f" (actual - golden = {y - x:.3g}, relative {rel:.3g})"


def _row_name(frame: pd.DataFrame, i: int, keys: tuple[str, ...]) -> str:
    named = [f"{k}={_describe(frame[k].iloc[i])}" for k in keys if k in frame.columns]
    return f"row {i}" + (f" ({', '.join(named)})" if named else "")


def compare_frames(
    name: str, golden: pd.DataFrame, actual: pd.DataFrame, keys: tuple[str, ...] = ()
) -> list[str]:
    """Exact comparison of two frames; returns one line per problem (empty: identical), each naming
    the file, the column and the first differing rows with golden and actual values."""
    problems = []
    missing = [c for c in golden.columns if c not in actual.columns]
    extra = [c for c in actual.columns if c not in golden.columns]
    if missing:
        problems.append(f"{name}: columns missing from the output: {missing}")
    if extra:
        problems.append(f"{name}: columns new in the output: {extra}")
    common = [c for c in golden.columns if c in actual.columns]
    if not missing and not extra and list(golden.columns) != list(actual.columns):
        problems.append(f"{name}: column order {list(actual.columns)}, golden {list(golden.columns)}")
    if len(golden) != len(actual):
        problems.append(f"{name}: {len(actual)} rows, golden {len(golden)}")
        usable = [k for k in keys if k in common]
        if usable:
            g = set(golden[usable].astype(str).itertuples(index=False, name=None))
            a = set(actual[usable].astype(str).itertuples(index=False, name=None))
            for label, rows in (("missing from the output", g - a), ("new in the output", a - g)):
                if rows:
                    shown = sorted(rows)[:MAX_ROWS_SHOWN]
                    problems.append(f"{name}: {len(rows)} row(s) {label}, first {usable}: {shown}")
        return problems
    golden, actual = golden.reset_index(drop=True), actual.reset_index(drop=True)
    for col in common:
        if str(golden[col].dtype) != str(actual[col].dtype):
            problems.append(
                f"{name}: column {col!r} has dtype {actual[col].dtype}, golden {golden[col].dtype}"
            )
        same = _same(golden[col], actual[col])
        bad = np.flatnonzero(~same)
        if not len(bad):
            continue
        lines = [f"{name}: column {col!r} differs in {len(bad)} of {len(golden)} rows; first:"]
        for i in bad[:MAX_ROWS_SHOWN]:
            g, a = golden[col].iloc[i], actual[col].iloc[i]
            where = _row_name(golden, i, keys)
            lines.append(f"    {where}: golden {_describe(g)}, actual {_describe(a)}{_delta(g, a)}")
        problems.append("\n".join(lines))
    return problems


def compare_text(name: str, golden: str, actual: str, context: int = 1, max_lines: int = 30) -> list[str]:
    if golden == actual:
        return []
    g, a = golden.splitlines(), actual.splitlines()
    first = next((i for i, (x, y) in enumerate(zip(g, a)) if x != y), min(len(g), len(a)))
    diff = list(difflib.unified_diff(g, a, "golden", "actual", n=context, lineterm=""))
    shown = "\n".join(f"    {line}" for line in diff[:max_lines])
    more = f"\n    ... {len(diff) - max_lines} more diff lines" if len(diff) > max_lines else ""
    where = f"first at line {first + 1} ({len(g)} lines golden, {len(a)} actual)"
    return [f"{name}: text differs, {where}:\n{shown}{more}"]


def compare(name: str, golden: pd.DataFrame | str, actual: pd.DataFrame | str) -> list[str]:
    item = BY_NAME[name]
    if item.kind == "text":
        return compare_text(name, golden, actual)
    return compare_frames(name, golden, actual, item.keys)


# ---------------------------------------------------------------------------------------------
# The environment the golden numbers are exact for
# ---------------------------------------------------------------------------------------------


def environment(run_dir: Path, torch_threads: int) -> dict[str, Any]:
    """What decides the last bits of the numbers besides the code: package versions (as run.json
    records them), torch's intra-op thread count (the demo generators' outputs change in the last
    float32 bits with it), the CPU kernels torch picked, and the evaluators the run used."""
    import torch

    info = json.loads((Path(run_dir) / "run.json").read_text())
    versions = {k: v for k, v in sorted(info.get("versions", {}).items()) if k != "xray-audit"}
    evaluators = info.get("evaluation", {}).get("evaluators", {})
    return {
        "versions": versions,
        "torch_threads": torch_threads,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_available": torch.cuda.is_available(),
        "machine": platform.machine(),
        "evaluators": {role: e.get("name") for role, e in sorted(evaluators.items())},
    }


def environment_differences(golden: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    g, a = dict(flatten_json(golden)), dict(flatten_json(actual))
    return [
        f"{k}: golden {g.get(k, '(none)')}, here {a.get(k, '(none)')}"
        for k in sorted(g | a)
        if g.get(k) != a.get(k)
    ]


def write_environment(info: dict[str, Any], golden_dir: Path = GOLDEN_DIR) -> Path:
    dest = golden_dir / ENVIRONMENT_JSON
    dest.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return dest


def read_environment(golden_dir: Path = GOLDEN_DIR) -> dict[str, Any]:
    return json.loads((golden_dir / ENVIRONMENT_JSON).read_text())
