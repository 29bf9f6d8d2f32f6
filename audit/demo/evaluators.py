"""Small evaluators trained on the demo cohort, shipped with the package so the demo runs offline.

The pretrained torchxrayvision weights cannot be fetched on an offline machine, yet the demo must
still fill every clinical column.  So the project trains two small networks of its own on a demo
cohort rendered with a *different* seed from the audited one (see
:mod:`audit.demo.train_evaluators`, which regenerates these weights bit for bit on CPU):

:class:`NoduleClassifier`
    One logit per class of :data:`NODULE_CLASSES` for a 256 × 256 frontal film.  A fully
    convolutional trunk (stride 8) feeds a 1 × 1 "nodule evidence" head; the image logit is the
    largest cell of that map, so the network is trained with the pathology masks as well as the
    labels (a nodule covers a handful of the 32 × 32 cells).  :meth:`NoduleClassifier.features`
    gives a :data:`FEATURE_DIM`-d pooled vector (global mean and max of the trunk) for
    distribution metrics.

:class:`AnatomySegmenter`
    A four-level U-Net at 128 × 128 with one logit map per structure of :data:`STRUCTURES`
    (independent sigmoids: the aorta overlaps the heart and lungs on a projection).

Input contract (both; like torchxrayvision's): the canonical image of :mod:`audit.images` (float32
``(H, W)`` in ``[0, 1]``) is centre-cropped to a square of side ``min(H, W)``, resized with
bilinear interpolation and antialiasing, and mapped onto ``[-1024, 1024]`` by ``x * 2048 - 1024``;
the networks divide by 1024 themselves.  See :func:`prepare`.

Weights are float32 state dicts under ``audit/demo/weights`` with their sha256 in
``weights.json``; the loaders hash the bytes they read and hand exactly those bytes to
``torch.load(weights_only=True)`` only when the hash matches.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from importlib.resources.abc import Traversable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audit.atomic import sha256_bytes
from audit.demo.spec import (  # noqa: F401 - re-exported: torch-free constants live in spec
    CLASSIFIER_FILE,
    CLASSIFIER_SIZE,
    CLASSIFIER_STRIDE,
    FEATURE_DIM,
    NODULE_CLASSES,
    PREPROCESSING,
    SEGMENTER_FILE,
    SEGMENTER_SIZE,
    STRUCTURES,
    VALUE_RANGE,
    WEIGHTS_MANIFEST,
    read_manifest,
    weights_dir,
)
from audit.evaluators.base import InputContract, WeightsHashError

_TRUNK_CHANNELS = (16, 32, 48, 64)
_UNET_CHANNELS = (16, 32, 64, 128)


# --------------------------------------------------------------------------------------------- input


def prepare(pixels_list: Sequence[np.ndarray], size: int) -> Tensor:
    """float32 ``(N, 1, size, size)`` network input in ``[-1024, 1024]`` from canonical images.

    Crop, resize and range mapping are the shared :class:`~audit.evaluators.base.InputContract`
    pipeline; this adds the up-front [0, 1] check that the contract applies only after mapping.
    """
    if len(pixels_list) == 0:
        raise ValueError("prepare() needs at least one image")
    for i, pixels in enumerate(pixels_list):
        px = np.asarray(pixels)
        if px.ndim != 2:
            raise ValueError(f"image {i}: expected a 2-D (H, W) grey image, got shape {px.shape}")
        if px.size == 0 or not (float(px.min()) >= 0.0 and float(px.max()) <= 1.0):
            raise ValueError(
                f"image {i}: values must lie in [0, 1] (read images with audit.images.read_image)"
            )
    contract = InputContract("demo-evaluator", channels=1, size=size, value_range=VALUE_RANGE)
    return contract.prepare(pixels_list)


def prepare_classifier_input(pixels_list: Sequence[np.ndarray]) -> Tensor:
    return prepare(pixels_list, CLASSIFIER_SIZE)


def prepare_segmenter_input(pixels_list: Sequence[np.ndarray]) -> Tensor:
    return prepare(pixels_list, SEGMENTER_SIZE)


# --------------------------------------------------------------------------------------------- networks


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class NoduleClassifier(nn.Module):
    """Nodule logits for ``(N, 1, 256, 256)`` inputs in ``[-1024, 1024]``."""

    input_size = CLASSIFIER_SIZE
    classes = NODULE_CLASSES

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4 = _TRUNK_CHANNELS
        # Stride 8 keeps the smallest nodules (≈ 8 px across at 256 px) about one cell wide.
        self.trunk = nn.Sequential(
            _conv_block(1, c1, stride=2),
            _conv_block(c1, c2, stride=2),
            _conv_block(c2, c3, stride=2),
            _conv_block(c3, c4),
        )
        self.evidence = nn.Conv2d(c4, len(NODULE_CLASSES), 1)

    def feature_map(self, x: Tensor) -> Tensor:
        return self.trunk(x / VALUE_RANGE[1])

    def evidence_map(self, x: Tensor) -> Tensor:
        """Per-cell nodule logits, ``(N, classes, 32, 32)``."""
        return self.evidence(self.feature_map(x))

    def features(self, x: Tensor) -> Tensor:
        """``(N, FEATURE_DIM)``: global mean and global max of the trunk's channels."""
        fmap = self.feature_map(x)
        return torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, len(NODULE_CLASSES))`` logits: the strongest cell of the evidence map."""
        return self.evidence_map(x).amax(dim=(2, 3))

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and :meth:`features` from one pass of the trunk."""
        fmap = self.feature_map(x)
        logits = self.evidence(fmap).amax(dim=(2, 3))
        return logits, torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)


class AnatomySegmenter(nn.Module):
    """U-Net: ``(N, 1, 128, 128)`` in ``[-1024, 1024]`` to ``(N, 3, 128, 128)`` logits (lungs, heart, aorta)."""

    input_size = SEGMENTER_SIZE
    structures = STRUCTURES

    def __init__(self) -> None:
        super().__init__()
        c = _UNET_CHANNELS
        self.down = nn.ModuleList([_conv_block(1, c[0])] + [_conv_block(c[i], c[i + 1]) for i in range(3)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2) for i in range(3)])
        self.merge = nn.ModuleList([_conv_block(2 * c[i], c[i]) for i in range(3)])
        self.head = nn.Conv2d(c[0], len(STRUCTURES), 1)

    def encoder_features(self, x: Tensor) -> Tensor:
        """``(N, 2 * 128)``: global mean and max of the U-Net's deepest encoder level.

        A generic image descriptor the segmenter learnt without pathology labels; the demo uses it
        in place of Inception-v3 for FID/KID when Inception's verified weights are absent.
        """
        h = x / VALUE_RANGE[1]
        for level, block in enumerate(self.down):
            if level:
                h = F.max_pool2d(h, 2)
            h = block(h)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x)[0]

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and :meth:`encoder_features` from one pass (the suite caches both at once)."""
        skips = []
        h = x / VALUE_RANGE[1]
        for level, block in enumerate(self.down):
            if level:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        features = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        for level in reversed(range(3)):
            h = self.merge[level](torch.cat([skips[level], self.up[level](h)], dim=1))
        return self.head(h), features


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """He-normal convolutions and zero biases drawn from ``generator`` (no global seeding)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------- loading


def read_verified_state(name: str, directory: Traversable | None = None) -> dict[str, Tensor]:
    """The state dict in ``name``, loaded only after its bytes match the sha256 in ``weights.json``."""
    directory = directory if directory is not None else weights_dir()
    entry = read_manifest(directory).get("files", {}).get(name)
    path = directory / name
    if not isinstance(entry, dict) or "sha256" not in entry:
        raise WeightsHashError(
            f"{path}: no sha256 for this file in {WEIGHTS_MANIFEST}; regenerate the weights with "
            "`python -m audit.demo.train_evaluators`"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(
            f"{path}: demo evaluator weights are missing ({exc}); reinstall xray-audit or run "
            "`python -m audit.demo.train_evaluators`"
        ) from exc
    found = sha256_bytes(data)
    if found != entry["sha256"]:
        raise WeightsHashError(
            f"{path}: sha256 {found} does not match {entry['sha256']} recorded in {WEIGHTS_MANIFEST}; "
            "the file is corrupt or was replaced. Reinstall xray-audit or regenerate the weights with "
            "`python -m audit.demo.train_evaluators`"
        )
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise WeightsHashError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _load(model: nn.Module, name: str, device: str | torch.device) -> nn.Module:
    model.load_state_dict(read_verified_state(name))
    model.eval()
    model.requires_grad_(False)
    return model.to(device)


def load_nodule_classifier(device: str | torch.device = "cpu") -> NoduleClassifier:
    """The shipped :class:`NoduleClassifier`, hash-verified, in eval mode."""
    model = _load(NoduleClassifier(), CLASSIFIER_FILE, device)
    assert isinstance(model, NoduleClassifier)
    return model


def load_anatomy_segmenter(device: str | torch.device = "cpu") -> AnatomySegmenter:
    """The shipped :class:`AnatomySegmenter`, hash-verified, in eval mode."""
    model = _load(AnatomySegmenter(), SEGMENTER_FILE, device)
    assert isinstance(model, AnatomySegmenter)
    return model


# --------------------------------------------------------------------------------------------- inference


@torch.inference_mode()
def nodule_probabilities(model: NoduleClassifier, pixels_list: Sequence[np.ndarray]) -> np.ndarray:
    """float64 ``(N, len(NODULE_CLASSES))`` sigmoid probabilities."""
    device = next(model.parameters()).device
    logits = model(prepare_classifier_input(pixels_list).to(device))
    return torch.sigmoid(logits).double().cpu().numpy()


@torch.inference_mode()
def segment_anatomy(model: AnatomySegmenter, pixels_list: Sequence[np.ndarray]) -> list[np.ndarray]:
    """bool ``(H, W, 3)`` masks (lungs, heart, aorta) at each image's own size.

    Logits are resized bilinearly back onto the centre-crop square and thresholded at 0; pixels
    outside the crop of a non-square image are False.
    """
    device = next(model.parameters()).device
    logits = model(prepare_segmenter_input(pixels_list).to(device)).float().cpu()
    masks = []
    for i, pixels in enumerate(pixels_list):
        h, w = np.asarray(pixels).shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        up = F.interpolate(logits[i : i + 1], size=(side, side), mode="bilinear", align_corners=False)[0]
        mask = np.zeros((h, w, len(STRUCTURES)), dtype=bool)
        mask[top : top + side, left : left + side] = (up > 0).permute(1, 2, 0).numpy()
        masks.append(mask)
    return masks
