"""Torch-free facts about the demo evaluators: sizes, classes, file names and the weights manifest.

Kept apart from :mod:`audit.demo.evaluators` (which imports torch) so that resolving which evaluator a
run uses, and a run whose outputs are all cached, never import torch.
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

NODULE_CLASSES: tuple[str, ...] = ("Nodule",)
STRUCTURES: tuple[str, ...] = ("lungs", "heart", "aorta")
CLASSIFIER_SIZE = 256
SEGMENTER_SIZE = 128
FEATURE_DIM = 128
CLASSIFIER_STRIDE = 8  # input pixels per evidence cell
VALUE_RANGE: tuple[float, float] = (-1024.0, 1024.0)
PREPROCESSING = "center-crop, bilinear antialias resize, x*2048-1024"

WEIGHTS_MANIFEST = "weights.json"
CLASSIFIER_FILE = "nodule_classifier.pt"
SEGMENTER_FILE = "anatomy_segmenter.pt"


def weights_dir() -> Traversable:
    """Where the shipped weights and ``weights.json`` live (package data of :mod:`audit.demo`)."""
    return resources.files("audit.demo") / "weights"


def read_manifest(directory: Traversable | None = None) -> dict[str, Any]:
    directory = directory if directory is not None else weights_dir()
    path = directory / WEIGHTS_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"{path}: cannot read the demo evaluators' weights manifest ({exc}); reinstall xray-audit "
            "or regenerate the weights with `python -m audit.demo.train_evaluators`"
        ) from exc
    return manifest
