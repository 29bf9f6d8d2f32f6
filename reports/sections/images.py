"""The "Image grid" section: reference | condition | sample 0 of each model for a few cases, as
inline PNG thumbnails (:mod:`reports.thumbnail`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit import images, rundir
from reports.privacy import Withheld
from reports.run import ModelRow, RunFiles
from reports.sections.base import PageContext, Section
from reports.sections.common import MAX_ERROR_CHARS, escape, model_label
from reports.thumbnail import blend_overlay, data_uri, present, read_thumb, shrink

THUMB_PX = 160
# The condition column shows the first of these a case has.
CONDITION_COLUMNS = (
    ("anatomy_mask", "anatomy mask"),
    ("control", "control"),
    ("pathology_mask", "pathology mask"),
)


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


def _file_name(path: str) -> str:
    """A missing file as the grid names it: without its directory, as the condition cells do."""
    return Path(path).name


def _img(pixels: np.ndarray, alt: str) -> str:
    h, w = pixels.shape[:2]
    return (
        f'<img src="{data_uri(pixels)}" width="{w}" height="{h}" alt="{escape(alt)}" title="{escape(alt)}">'
    )


def _placeholder(reason: str) -> str:
    return f'<div class="ph" title="{escape(reason)}">{escape(reason)}</div>'


def _condition_cell(case: Mapping[str, Any], reference: np.ndarray | None, size: int) -> tuple[str, str]:
    """(cell html, caption) for the condition column."""
    for column, caption in CONDITION_COLUMNS:
        path = present(case.get(column))
        if path is None:
            continue
        if column == "control":
            thumb, why = read_thumb(path, size, _file_name)
            return (
                _img(thumb, f"control for {case['case_id']}") if thumb is not None else _placeholder(why)
            ), caption
        try:
            mask = images.read_mask(path)
        except FileNotFoundError:
            return _placeholder(f"{caption} not found: {Path(path).name}"), caption
        except (OSError, ValueError) as exc:
            return _placeholder(f"{caption} unreadable: {exc}"), caption
        base = reference if reference is not None else shrink(np.zeros(mask.shape[:2], np.float32), size)
        pixels = blend_overlay(base, mask)
        if column == "anatomy_mask" and mask.shape[2] == 3:
            caption = "anatomy mask (R lungs · G heart · B aorta)"
        return _img(pixels, f"{caption} for {case['case_id']}"), caption
    return _placeholder("no condition"), "none"


def render_grid(
    run: RunFiles, models: Sequence[ModelRow], k: int, withheld: Withheld, size: int = THUMB_PX
) -> str:
    """The grid; a sample ``withheld`` names (a training image that may not be shown) is a placeholder."""
    if run.cases is None:
        return f"<p>No image grid: {escape(rundir.CASES)} is missing from the run directory.</p>"
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
        f"<th>{model_label(m)}</th>" for m in models
    )
    rows = []
    for case_id in chosen:
        case = cases.loc[case_id].to_dict()
        reference, why = read_thumb(present(case.get("image")), size, _file_name)
        ref_cell = _img(reference, f"reference {case_id}") if reference is not None else _placeholder(why)
        cond_cell, cond_caption = _condition_cell(case, reference, size)
        meta = [f'<div class="case-id">{escape(case_id)}</div>']
        for column in ("group", "view", "labels"):
            value = present(case.get(column))
            if value is not None:
                meta.append(f'<div class="sub">{escape(column)}: {escape(value)}</div>')
        prompt = present(case.get("prompt"))
        if prompt is not None:
            short = prompt if len(prompt) <= 160 else prompt[:157] + "…"
            meta.append(f'<div class="prompt" title="{escape(prompt)}">“{escape(short)}”</div>')
        cells = [
            f'<th scope="row" class="case">{"".join(meta)}</th>',
            f"<td>{ref_cell}</td>",
            f'<td>{cond_cell}<div class="cap">{escape(cond_caption)}</div></td>',
        ]
        for m in models:
            entry = paths.get((m.name, case_id))
            if entry is None:
                reason = failed.get((m.name, case_id), "no sample for this case")
                cells.append(f"<td>{_placeholder(reason)}</td>")
                continue
            reason = withheld.reason(m.name, case_id, int(entry[1]))
            if reason is not None:
                cells.append(f"<td>{_placeholder(reason)}</td>")
                continue
            path = present(entry[0])
            if path is not None and not Path(path).is_absolute():
                path = str(run.run_dir / path)  # suite-generated samples may be recorded run-relative
            thumb, why = read_thumb(path, size, _file_name)
            cell = (
                _img(thumb, f"{m.name} · {case_id} · sample {entry[1]}")
                if thumb is not None
                else _placeholder(why)
            )
            cells.append(f"<td>{cell}</td>")
        rows.append(f'<tr data-case="{escape(case_id)}">{"".join(cells)}</tr>')
    return (
        '<div class="grid-wrap"><table class="grid"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def render(ctx: PageContext) -> str:
    return (
        '\n<p class="small">Reference | condition | sample 0 of each model, for '
        f"{ctx.grid_cases} case(s) chosen deterministically\n(by case id, spread over groups).</p>\n"
        f"{render_grid(ctx.run, ctx.models, ctx.grid_cases, ctx.withheld)}\n"
    )


SECTION = Section("images", "Images", "Image grid", render)
