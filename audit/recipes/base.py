"""What a recipe is: a paper's evaluation as a study template, its table layout and its published figures.

Pure data and pandas-free functions (no torch): ``xray-audit init`` writes the templates and
``xray-audit report --layout`` (reports.layouts) resolves a layout's cells against a run.

A layout is built per run by the recipe (:attr:`Recipe.layout`) from a :class:`RunView` (which
models and group values the run has) as :class:`PaperTable` objects whose cells are either fixed
text or a :class:`Ref` to one number of the run: (model, metric, group) of ``summary.csv`` (or a
reader score), shown as the value or as the knee paper's mean ± std over cases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

Style = Literal["value", "mean_std"]
READER = "reader "  # a Ref metric "reader anatomy" is the mean reader score for that criterion


@dataclasses.dataclass(frozen=True)
class Ref:
    """One number of the run: ``summary.csv``'s row (model, metric, group), or with ``style =
    "mean_std"`` the mean ± std (ddof 1) over the group's cases of the per-case values (the mean is
    summary.csv's value). ``dash``: shown as "—" (the paper shows none there, e.g. XReal's real row)."""

    model: str
    metric: str
    group: str = ""
    style: Style = "value"
    digits: int = 3
    std_digits: int = 2
    dash: bool = False
    source: str = ""  # Norberg metrics: norberg_summary.csv's source ("detector", "readers"); "": summary.csv


Cell = str | Ref


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """A table in a paper's shape: ``header`` rows (a label spanning several columns is repeated in
    each, and merged when drawn), then ``rows`` of cells, ``row_labels`` leading cells per row."""

    title: str
    caption: str
    header: tuple[tuple[str, ...], ...]
    rows: tuple[tuple[Cell, ...], ...]
    row_labels: int
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Published:
    """A table exactly as the paper prints it (strings: trailing zeros and marks survive)."""

    title: str
    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    source: str  # where in the paper: file and lines
    data: str  # what the numbers were computed on (the paper's data and settings)


@dataclasses.dataclass(frozen=True)
class RunView:
    """What a layout needs to know about a run: its models in run order with their kinds, the
    values of its case columns, and which metrics it has."""

    models: tuple[tuple[str, str], ...]  # (name, kind)
    metrics: frozenset[str]
    group_values: Mapping[str, tuple[str, ...]]  # case column -> its values, sorted
    simulated_readers: bool = False  # the reader scores come from simulated readers (a demo)
    demo: bool = False  # the run used the embedded demo data or generators (every table says so)
    pixel_range: float = 1.0  # [metrics].pixel_range of the run (MSE/MAE scale)
    overlap_threshold: float = 0.5  # [metrics].overlap_threshold of the run
    norberg_sources: tuple[str, ...] = ()  # norberg_summary.csv's sources: "detector", "readers"

    def names(self) -> list[str]:
        return [name for name, _ in self.models]

    def kind(self, model: str) -> str:
        return dict(self.models).get(model, "")


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """How a model appears in a paper's table: its group (XReal's "Model type") and label."""

    group: str
    label: str


@dataclasses.dataclass(frozen=True)
class DemoStudy:
    """What ``init RECIPE --demo`` wrote: the study config and the files it needs."""

    study: Path
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    paper: str  # the paper's file in ../shared/papers/
    citation: str
    summary: str  # one line for `init --list`
    study_toml: Callable[[], str]  # the commented template, with placeholders for the user's paths
    recipe_md: Callable[[], str]
    layout: Callable[[RunView], list[PaperTable]]
    published: tuple[Published, ...]
    demo: Callable[[Path, bool], DemoStudy]  # (directory, progress) -> the demo study it wrote


REAL_KINDS = ("real",)
BASELINE_KINDS = ("degrade", "training-copy")


def ordered_rows(view: RunView, known: Mapping[str, RowSpec], real_label: str) -> list[tuple[str, RowSpec]]:
    """The run's models as table rows: those the recipe knows in the recipe's order, then the others
    (generators, then sanity baselines, labelled as such), the reference images last."""
    names = view.names()
    rows = [(m, spec) for m, spec in known.items() if m in names]
    seen = {m for m, _ in rows}
    others = [m for m in names if m not in seen and view.kind(m) not in (*REAL_KINDS, *BASELINE_KINDS)]
    rows += [(m, RowSpec("Other models", m)) for m in others]
    rows += [(m, RowSpec("Sanity baselines", m)) for m in names if view.kind(m) in BASELINE_KINDS]
    rows += [(m, RowSpec("", real_label)) for m in names if view.kind(m) in REAL_KINDS]
    return rows


def template_preamble(title: str, recipe: str, paper: str) -> str:
    """The first lines of every recipe's study.toml: what it is and the two commands after it."""
    return (
        f"# {title}.\n"
        f"# Written by `xray-audit init {recipe}`. Replace the CAPITALISED placeholders with your paths, then:\n"
        f"#   xray-audit run study.toml && xray-audit report RUN_DIR --layout {recipe}\n"
        f"# Quoted passages are the paper's wording (../shared/papers/{paper}).\n"
    )


def published_markdown(tables: Sequence[Published]) -> str:
    """The paper's own tables as Markdown (RECIPE.md and the layouts' "Published" block)."""

    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = []
    for t in tables:
        out += [
            f"**{t.title}** ({t.source}). {t.caption}".rstrip(),
            "",
            row(t.header),
            "|" + "---|" * len(t.header),
        ]
        out += [row(r) for r in t.rows]
        out += ["", f"*On the paper's data:* {t.data}", ""]
    return "\n".join(out)
