"""Side channels a reader could unblind with, measured: the byte size of every image a study sends.

A compressed PNG's size follows its content. On the demo, the PNGs readers downloaded were
92-124 kB for real radiographs (noise grain compresses badly) and 56-65 kB for generated ones:
"size > 80 kB means real" answered the Turing question 52 times out of 52. The study therefore
encodes every image with :func:`reader_study.rendering.encode` (stored, uncompressed deflate
blocks), whose length depends on the image's shape only.

This module measures that it holds, per study: for the stored file and for every kind of view the
app renders (:data:`VIEWS`: the default view, a narrow window, zoomed and panned views, and for a
landmark study the drawn RGB view), the byte length of every item, and the AUC of byte length for
``real`` against each model (the Mann-Whitney statistic, ties counted half, computed exactly with
integers). A study is blinded on this channel only when every view has one byte length for all its
items (which also rules out sizes telling two models apart) and every AUC is exactly 1/2:
``reader-study create`` records the measurement in ``blinding.json`` (owner-only; it names the
models, so the app never reads it) and refuses to write a study that fails, and ``reader-study
serve`` measures again and refuses to start.

Torch-free, like everything under ``reader_study``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from audit.atomic import write_text
from reader_study import placement, rendering, study
from reader_study.studydir import BLINDING_FILE

REAL = "real"


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """A view the app can render: window level/width, zoom and pan centre (fractions)."""

    level: float = 0.5
    width: float = 1.0
    zoom: float = 1.0
    cx: float = 0.5
    cy: float = 0.5


# The kinds of view a reader can ask for: the default, a narrow window, and zoomed, panned views
# up to the largest zoom (rendering.ZOOMS) at the image's corners. "stored" is the file itself.
VIEWS: dict[str, ViewSpec] = {
    "default": ViewSpec(),
    "windowed": ViewSpec(level=0.35, width=0.3),
    "zoom-1.5-corner": ViewSpec(zoom=1.5, cx=0.0, cy=1.0),
    "zoom-2-panned": ViewSpec(zoom=2.0, cx=0.3, cy=0.7, level=0.6, width=0.5),
    "zoom-4-corner": ViewSpec(zoom=4.0, cx=1.0, cy=0.0),
}
STORED = "stored"
LANDMARKS = "landmarks-drawn"


class BlindingError(RuntimeError):
    pass


def byte_size_auc(real: Sequence[int], other: Sequence[int]) -> Fraction:
    """P(other > real) + P(other == real) / 2 over all pairs: the AUC of byte size for telling
    ``other`` from ``real``, exactly. 1/2 when sizes carry no information (e.g. all equal)."""
    a = np.sort(np.asarray(real, dtype=np.int64))
    b = np.asarray(other, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        raise BlindingError("byte-size AUC needs items of both strata")
    below = np.searchsorted(a, b, side="left")
    equal = np.searchsorted(a, b, side="right") - below
    return Fraction(int(2 * below.sum() + equal.sum()), 2 * len(a) * len(b))


def _views(info: study.StudyInfo) -> dict[str, Callable[[np.ndarray, bytes], bytes]]:
    """name -> (stored pixels, variant) -> the bytes the app would send for that view."""
    out_size = rendering.display_size(info.image_size)

    def plain(spec: ViewSpec) -> Callable[[np.ndarray, bytes], bytes]:
        def render(pixels: np.ndarray, variant: bytes) -> bytes:
            return rendering.view(pixels, **dataclasses.asdict(spec), out_size=out_size, variant=variant)

        return render

    views = {name: plain(spec) for name, spec in VIEWS.items()}
    if info.landmarks is not None:

        def drawn(pixels: np.ndarray, variant: bytes) -> bytes:
            box = placement.ViewBox(
                *rendering.crop_box(*pixels.shape, 1.0, 0.5, 0.5), out=placement.drawn_size(out_size)
            )
            shown = rendering.view_pixels(pixels, out_size=out_size)
            return rendering.encode(placement.draw(shown, placement.Placement(), box), variant)

        views[LANDMARKS] = drawn
    return views


def measure(
    study_dir: str | Path, info: study.StudyInfo, key: pd.DataFrame, progress: bool = True
) -> dict[str, Any]:
    """Byte lengths of every item's stored file and views, and the AUC of real against each model.

    Each item is rendered under its own random variant (row filters), as a reader session would.
    """
    root = Path(study_dir)
    views = _views(info)
    sizes: dict[str, dict[str, list[int]]] = {name: {} for name in (STORED, *views)}
    rng = np.random.default_rng()
    items = list(zip(key["item"], key["model"]))
    for item, model in tqdm(items, desc="measuring image sizes", unit="item", disable=not progress):
        path = study.image_path(root, item)
        sizes[STORED].setdefault(model, []).append(path.stat().st_size)
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("L"))
        for name, render in views.items():
            variant = rng.bytes(16)
            sizes[name].setdefault(model, []).append(len(render(pixels, variant)))
    return report(sizes)


def report(sizes: Mapping[str, Mapping[str, Sequence[int]]]) -> dict[str, Any]:
    """The measurement as written to ``blinding.json``: per view, the distinct lengths and each
    model's AUC against ``real`` (with its exact fraction)."""
    out: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "views": {},
    }
    for view, by_model in sizes.items():
        real = by_model.get(REAL, [])
        aucs = {}
        for model, lengths in sorted(by_model.items()):
            if model == REAL or not real:
                continue
            auc = byte_size_auc(real, lengths)
            aucs[model] = {"auc": float(auc), "exact": f"{auc.numerator}/{auc.denominator}"}
        out["views"][view] = {
            "bytes": sorted({int(n) for lengths in by_model.values() for n in lengths}),
            "items": {model: len(lengths) for model, lengths in sorted(by_model.items())},
            "auc_vs_real": aucs,
        }
    return out


def failures(measured: Mapping[str, Any]) -> list[str]:
    """Every view whose items do not all have one byte length, and every (view, model) whose
    byte-size AUC against real is not exactly 1/2. The AUC alone is not enough: real images of
    100 and 300 bytes against a model's of 200 give 1/2 and are told apart at once; and sizes
    could separate two models from each other."""
    out = []
    for view, entry in measured["views"].items():
        if len(entry["bytes"]) > 1:
            out.append(f"{view}: {len(entry['bytes'])} different byte lengths ({entry['bytes'][:4]}...)")
        for model, auc in entry["auc_vs_real"].items():
            if Fraction(auc["exact"]) != Fraction(1, 2):
                out.append(f"{view}: {model} vs real AUC {auc['auc']:.3f}")
    return out


def save(study_dir: Path, measured: Mapping[str, Any]) -> Path:
    path = study_dir / BLINDING_FILE
    write_text(path, json.dumps(measured, indent=2) + "\n")
    os.chmod(path, 0o600)
    return path


def require(study_dir: str | Path, info: study.StudyInfo, progress: bool = True) -> dict[str, Any]:
    """Measure the study's images again; a BlindingError unless every byte-size AUC is exactly 1/2
    (also for a study without ``blinding.json``: made by an earlier xray-audit, whose compressed
    images give their source away); a StudyError (:func:`reader_study.study.read_key`) without the key."""
    root = Path(study_dir)
    if not (root / BLINDING_FILE).is_file():
        raise BlindingError(
            f"{root} has no {BLINDING_FILE}: it was created by an earlier xray-audit, whose images' byte "
            "sizes tell real from generated. Export what it holds (`xray-audit reader-study export`) and "
            "create the study again"
        )
    measured = measure(
        root, info, study.read_key(root, "the study's blinding cannot be checked"), progress=progress
    )
    bad = failures(measured)
    if bad:
        raise BlindingError(
            "the images' byte sizes tell models apart, so this study would not be blinded: "
            + "; ".join(bad[:5])
            + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "")
            + ". Were its images replaced? Create the study again."
        )
    return measured


def report_of(study_dir: str | Path) -> dict[str, Any]:
    """The measurement ``create`` recorded in ``blinding.json``."""
    return json.loads((Path(study_dir) / BLINDING_FILE).read_text(encoding="utf-8"))
