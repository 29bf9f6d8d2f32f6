"""Keypoint detectors for Norberg landmarks on radiographs: trained here or supplied by the user.

A detector is a TorchScript module plus a ``model.json`` that pins its sha256 and states its
contract. The file is read once, hashed, and only bytes that match the pin reach ``torch.jit.load``
(:func:`audit.evaluators.base.load_verified_torchscript`), as for user classifiers.

Input contract
    The canonical image of :mod:`audit.images` (float32 ``(H, W)`` in ``[0, 1]``) goes through the
    suite's :class:`~audit.evaluators.base.InputContract` pipeline: centre-square crop of side
    ``min(H, W)``, bilinear antialiased resize to ``size`` × ``size``, affine map of ``[0, 1]`` onto
    ``value_range``. The network sees float32 ``(B, 1, size, size)``.

Output contract (``output`` in ``model.json``)
    ``"coordinates"``: float ``(B, K, 2)``, ``(x, y)`` in input pixels for the ``K`` names of
    ``landmarks``, in that order. ``"heatmaps"``: float ``(B, K, h, w)``, one non-negative map per
    landmark (any resolution; negative values count as zero); decoded by :func:`decode_heatmaps`.

Coordinates
    Pixel coordinates with the origin top-left, ``x`` the column and ``y`` the row, pixel centres at
    integers (the pixel in column 3 spans ``x`` in ``[2.5, 3.5]``), the convention of the annotation
    files of :mod:`audit.norberg.landmarks`. The crop and resize are undone exactly:
    ``x_image = (x_input + 0.5) * side / size - 0.5 + left`` (:func:`input_to_image`), which is the
    inverse of the sampling grid of ``F.interpolate(..., align_corners=False)``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from audit.atomic import write_text
from audit.evaluators.base import (
    InputContract,
    load_verified_torchscript,
    resolve_device,
)
from audit.norberg.geometry import SIDES, head_center, rim

__all__ = [
    "DETECTOR_LANDMARKS",
    "MODEL_FORMAT",
    "OUTPUTS",
    "DetectorError",
    "KeypointDetector",
    "ModelSpec",
    "decode_heatmaps",
    "image_to_input",
    "input_to_image",
    "predict_landmarks",
    "quiet_torchscript",
    "read_spec",
    "write_landmarks_csv",
]

log = logging.getLogger(__name__)

MODEL_FORMAT = "xray-audit-keypoints/1"
MODEL_JSON = "model.json"
MODEL_TS = "model.ts"
OUTPUTS = ("coordinates", "heatmaps")
# The four points a Norberg angle needs: both head centres and both craniolateral rim points.
DETECTOR_LANDMARKS: tuple[str, ...] = tuple([head_center(s) for s in SIDES] + [rim(s) for s in SIDES])

_SPEC_KEYS = {"format", "model", "sha256", "landmarks", "input", "output", "training", "data", "held_out"}
_INPUT_KEYS = {"size", "channels", "value_range", "crop", "resize"}


class DetectorError(ValueError):
    """A keypoint model or its ``model.json`` is unusable; the message names the file and the fix."""


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    # torch 2.5+ marks TorchScript deprecated; it is still the portable format users can pin and load.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


def _load_torchscript(path: str | os.PathLike[str], sha256: str) -> nn.Module:
    with quiet_torchscript():
        return load_verified_torchscript(path, sha256)


# --------------------------------------------------------------------------------------------- coordinates


def _crop_geometry(shape: tuple[int, int]) -> tuple[int, int, int]:
    h, w = int(shape[0]), int(shape[1])
    side = min(h, w)
    return side, (h - side) // 2, (w - side) // 2


def image_to_input(xy: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Image-pixel ``(..., 2)`` points of an ``(H, W)`` image -> input-pixel points at ``size``."""
    side, top, left = _crop_geometry(shape)
    xy = np.asarray(xy, dtype=np.float64)
    offset = np.array([left, top], dtype=np.float64)
    return (xy - offset + 0.5) * (size / side) - 0.5


def input_to_image(xy: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """Input-pixel ``(..., 2)`` points at ``size`` -> image pixels of the ``(H, W)`` original."""
    side, top, left = _crop_geometry(shape)
    xy = np.asarray(xy, dtype=np.float64)
    offset = np.array([left, top], dtype=np.float64)
    return (xy + 0.5) * (side / size) - 0.5 + offset


def decode_heatmaps(heatmaps: Tensor, size: int, radius: int = 3, iterations: int = 3) -> Tensor:
    """``(B, K, h, w)`` non-negative maps -> ``(B, K, 2)`` sub-pixel ``(x, y)`` in input pixels.

    Starting at the peak cell, the estimate is moved ``iterations`` times to the centroid of the map
    inside a window of half-width ``radius`` cells centred on the current estimate (its edge cells
    weighted by how much of them the window covers). Re-centring makes the window symmetric about
    the answer, which removes the pull towards the peak cell that a window fixed on that cell has,
    and the window keeps a second, weaker blob elsewhere from pulling the estimate the way a
    whole-map soft-argmax would. Heatmap cell ``j`` covers input pixels
    ``[j * size / w - 0.5, (j + 1) * size / w - 0.5]``. TorchScript-compatible: trained models decode
    inside their exported module with it.
    """
    b, k, h, w = heatmaps.shape
    weights = heatmaps.float().clamp_min(0.0)
    peak = weights.reshape(b, k, h * w).argmax(dim=2)
    cy = torch.div(peak, w, rounding_mode="floor").to(weights.dtype)
    cx = (peak % w).to(weights.dtype)
    ys = torch.arange(h, dtype=weights.dtype, device=weights.device).view(1, 1, h)
    xs = torch.arange(w, dtype=weights.dtype, device=weights.device).view(1, 1, w)
    for _ in range(iterations):
        wy = (radius + 0.5 - (ys - cy.unsqueeze(2)).abs()).clamp(0.0, 1.0)  # (b, k, h)
        wx = (radius + 0.5 - (xs - cx.unsqueeze(2)).abs()).clamp(0.0, 1.0)  # (b, k, w)
        local = weights * wy.unsqueeze(3) * wx.unsqueeze(2)
        mass = local.sum(dim=(2, 3))
        safe = mass.clamp_min(1e-30)
        cx = torch.where(mass > 0, (local.sum(dim=2) * xs).sum(dim=2) / safe, cx)
        cy = torch.where(mass > 0, (local.sum(dim=3) * ys).sum(dim=2) / safe, cy)
    x = (cx + 0.5) * (size / w) - 0.5
    y = (cy + 0.5) * (size / h) - 0.5
    return torch.stack([x, y], dim=2)


# --------------------------------------------------------------------------------------------- model.json


@dataclass(frozen=True)
class ModelSpec:
    """A keypoint model's ``model.json``: the pinned TorchScript file and its contract.

    ``record`` keeps the provenance a trained model carries (``training``, ``data``, ``held_out``).
    """

    model: Path
    sha256: str
    landmarks: tuple[str, ...]
    size: int
    value_range: tuple[float, float] = (0.0, 1.0)
    output: Literal["coordinates", "heatmaps"] = "coordinates"
    record: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise DetectorError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if not self.landmarks or len(set(self.landmarks)) != len(self.landmarks):
            raise DetectorError(f"landmarks must be distinct names, got {list(self.landmarks)}")
        missing = [n for n in DETECTOR_LANDMARKS if n not in self.landmarks]
        if missing:
            raise DetectorError(
                f"landmarks {list(self.landmarks)} lack {missing}; a Norberg detector must predict "
                f"{list(DETECTOR_LANDMARKS)}"
            )

    def contract(self) -> InputContract:
        return InputContract(
            f"keypoint model {self.model}", channels=1, size=self.size, value_range=self.value_range
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": MODEL_FORMAT,
            "model": self.model.name,
            "sha256": self.sha256,
            "landmarks": list(self.landmarks),
            "input": {
                "size": self.size,
                "channels": 1,
                "value_range": list(self.value_range),
                "crop": "center-square",
                "resize": "bilinear-antialias",
            },
            "output": self.output,
        }
        out.update(self.record)
        return out

    def write(self, path: str | os.PathLike[str]) -> None:
        write_text(path, json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")


def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """Read ``MODEL_DIR/model.json`` (or a ``.json`` path); unknown keys and bad values are errors."""
    p = Path(path)
    if p.is_dir() or (p.suffix.lower() != ".json" and not p.is_file()):
        p = p / MODEL_JSON
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: no keypoint model description. Fix: give a directory written by `xray-audit landmarks "
            f"train`, or write {MODEL_JSON} next to your TorchScript file (see README, Landmark detector)"
        )
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DetectorError(f"{p}: not valid JSON ({exc})") from None
    problems: list[str] = []

    def need(mapping: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in mapping:
            problems.append(f"{where}: missing key {key!r}")
        return mapping.get(key)

    if not isinstance(raw, dict):
        raise DetectorError(f"{p}: expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _SPEC_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown}; known: {sorted(_SPEC_KEYS)}")
    fmt = need(raw, "format", "top level")
    if fmt is not None and fmt != MODEL_FORMAT:
        problems.append(f"format is {fmt!r}; this release reads {MODEL_FORMAT!r}")
    model = need(raw, "model", "top level")
    sha = need(raw, "sha256", "top level")
    names = need(raw, "landmarks", "top level")
    output = raw.get("output", "coordinates")
    contract = need(raw, "input", "top level")
    size, value_range = None, (0.0, 1.0)
    if contract is not None:
        if not isinstance(contract, dict):
            problems.append("input: expected an object with size, channels, value_range")
            contract = {}
        bad = sorted(set(contract) - _INPUT_KEYS)
        if bad:
            problems.append(f"input: unknown key(s) {bad}; known: {sorted(_INPUT_KEYS)}")
        size = need(contract, "size", "input")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 8):
            problems.append(f"input.size must be an integer >= 8, got {size!r}")
        if contract.get("channels", 1) != 1:
            problems.append(f"input.channels must be 1 (grey radiographs), got {contract.get('channels')!r}")
        if contract.get("crop", "center-square") != "center-square":
            problems.append(f"input.crop must be 'center-square', got {contract.get('crop')!r}")
        if contract.get("resize", "bilinear-antialias") != "bilinear-antialias":
            problems.append(f"input.resize must be 'bilinear-antialias', got {contract.get('resize')!r}")
        vr = contract.get("value_range", [0.0, 1.0])
        if (
            not isinstance(vr, list)
            or len(vr) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vr)
            or not vr[0] < vr[1]
        ):
            problems.append(f"input.value_range must be [lo, hi] numbers with lo < hi, got {vr!r}")
        else:
            value_range = (float(vr[0]), float(vr[1]))
    if model is not None and not isinstance(model, str):
        problems.append(f"model must be a file name (relative to {p.parent}), got {model!r}")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        problems.append(f"sha256 must be 64 hex digits (sha256sum of the model file), got {sha!r}")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        problems.append(f"landmarks must be a list of names, got {names!r}")
    if output not in OUTPUTS:
        problems.append(f"output must be one of {list(OUTPUTS)}, got {output!r}")
    if problems:
        raise DetectorError(f"{p}: {len(problems)} problem(s):\n" + "\n".join(f"  - {x}" for x in problems))
    record = {k: raw[k] for k in ("training", "data", "held_out") if k in raw}
    try:
        return ModelSpec(
            model=(p.parent / model).resolve(),
            sha256=sha.lower(),
            landmarks=tuple(names),
            size=size,
            value_range=value_range,
            output=output,
            record=record,
        )
    except DetectorError as exc:
        raise DetectorError(f"{p}: {exc}") from None


# --------------------------------------------------------------------------------------------- detector


class KeypointDetector:
    """A verified keypoint module and its contract; :meth:`predict` gives image-pixel landmarks."""

    def __init__(self, module: nn.Module, spec: ModelSpec, *, device: str | torch.device = "auto"):
        self.spec = spec
        self.contract = spec.contract()
        self.device = resolve_device(device)
        self.module = module.eval().to(self.device)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | torch.device = "auto") -> KeypointDetector:
        """From ``MODEL_DIR`` (or its ``model.json``): the TorchScript file is verified, then loaded."""
        spec = read_spec(path)
        return cls(_load_torchscript(spec.model, spec.sha256), spec, device=device)

    @classmethod
    def from_torchscript(
        cls,
        path: str | os.PathLike[str],
        sha256: str,
        landmarks: Sequence[str],
        *,
        size: int,
        value_range: tuple[float, float] = (0.0, 1.0),
        output: Literal["coordinates", "heatmaps"] = "coordinates",
        device: str | torch.device = "auto",
    ) -> KeypointDetector:
        spec = ModelSpec(
            Path(path).resolve(), sha256.lower(), tuple(landmarks), size, tuple(value_range), output
        )
        return cls(_load_torchscript(path, sha256), spec, device=device)

    @property
    def landmarks(self) -> tuple[str, ...]:
        return self.spec.landmarks

    def _outputs(self, x: Tensor, first: int) -> Tensor:
        out = self.module(x.to(self.device))
        k = len(self.spec.landmarks)
        name = self.spec.model
        if not isinstance(out, Tensor):
            raise DetectorError(f"{name}: expected one tensor output, got {type(out).__name__}")
        out = out.detach().float().cpu()
        if self.spec.output == "heatmaps":
            if out.ndim != 4 or out.shape[:2] != (x.shape[0], k):
                raise DetectorError(
                    f"{name}: output 'heatmaps' must be (B={x.shape[0]}, K={k}, h, w), got {tuple(out.shape)}"
                )
            out = decode_heatmaps(out, self.spec.size)
        elif out.ndim != 3 or tuple(out.shape) != (x.shape[0], k, 2):
            raise DetectorError(
                f"{name}: output 'coordinates' must be (B={x.shape[0]}, K={k}, 2), got {tuple(out.shape)}; "
                'set "output": "heatmaps" in model.json if it returns heatmaps'
            )
        bad = ~torch.isfinite(out).all(dim=2).all(dim=1)
        if bool(bad.any()):
            which = (first + torch.nonzero(bad)[:, 0]).tolist()
            raise DetectorError(f"{name}: non-finite landmarks for image(s) {which}")
        return out

    def predict_input(self, batch: Tensor, batch_size: int = 16) -> np.ndarray:
        """Input-pixel ``(N, K, 2)`` landmarks of a prepared ``(N, 1, size, size)`` batch."""
        parts = []
        with torch.inference_mode():
            for start in range(0, batch.shape[0], batch_size):
                chunk = batch[start : start + batch_size]
                self.contract.check(chunk, batch_index=start // batch_size)
                parts.append(self._outputs(chunk, start))
        return torch.cat(parts).double().numpy()

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
        """Image-pixel ``(N, K, 2)`` landmarks for canonical images (float ``(H, W)`` in ``[0, 1]``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            xy = self.predict_input(self.contract.prepare(chunk), batch_size)
            out.extend(
                input_to_image(p, np.shape(im), self.spec.size) for p, im in zip(xy, chunk, strict=True)
            )
        if not out:
            raise ValueError("no images to predict landmarks on")
        return np.stack(out)


def predict_landmarks(
    detector: KeypointDetector,
    images: Mapping[str, np.ndarray],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, dict[str, tuple[float, float]]]:
    """``case_id -> landmark -> (x, y)`` in image pixels, the shape :func:`read_landmarks` returns."""
    from tqdm.auto import tqdm

    ids = list(images)
    result: dict[str, dict[str, tuple[float, float]]] = {}
    bar = tqdm(total=len(ids), desc="landmarks", unit="image", disable=not progress)
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        xy = detector.predict([images[c] for c in chunk], batch_size)
        for cid, points in zip(chunk, xy, strict=True):
            result[cid] = {
                name: (float(p[0]), float(p[1])) for name, p in zip(detector.landmarks, points, strict=True)
            }
        bar.update(len(chunk))
    bar.close()
    return result


def write_landmarks_csv(
    landmarks: Mapping[str, Mapping[str, tuple[float, float]]], path: str | os.PathLike[str]
) -> Path:
    """Annotation-format CSV (``case_id,landmark,x,y``), written atomically; returns the path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "landmark", "x", "y"])
    for cid, points in landmarks.items():
        for name, (x, y) in points.items():
            if not (math.isfinite(x) and math.isfinite(y)):
                raise DetectorError(f"case {cid}: landmark {name} is not finite ({x}, {y})")
            writer.writerow([cid, name, f"{x:.4f}", f"{y:.4f}"])
    write_text(path, buffer.getvalue())
    return Path(path)
