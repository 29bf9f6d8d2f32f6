"""Train the small heatmap keypoint model behind ``xray-audit landmarks train``.

What it predicts
    The four points a Norberg angle needs, :data:`~audit.norberg.detector.DETECTOR_LANDMARKS`: both
    femoral-head centres and both craniolateral rim points. Annotations that give the head as
    outline points instead of a centre are turned into a centre by the least-squares circle fit of
    :func:`audit.norberg.geometry.locate_head_center` before training. Predicting the outline points
    and fitting circles to them was not chosen: where along the outline an annotator clicks is
    arbitrary, so those points have no position a heatmap can learn, while the centre of a disc is
    the best-defined point on the image (every edge pixel of the head votes for it).

Network
    A U-Net-lite (:class:`HeatmapNet`) on the suite's centre-square crop resized to ``size`` px,
    one logit map per landmark at ``stride`` (input px per heatmap cell). Each map is a spatial
    softmax trained by cross-entropy against a normalised Gaussian at the true point (``sigma``
    cells), so the predicted distribution's local centroid is an unbiased sub-pixel estimate; the
    exported module decodes it with :func:`~audit.norberg.detector.decode_heatmaps` and returns
    ``(B, 4, 2)`` input-pixel coordinates, the ``coordinates`` contract of user models.
    Why this matters: a Norberg angle's error is the rim (or centre) error across the head-rim line
    divided by the head-rim distance, which is only about 1.3 head radii (≈ 20 px on a 256 px
    phantom), so 1 px across that line is ≈ 3°. Sub-pixel decoding is what makes 3° reachable.

Augmentation
    A random similarity transform (rotation, scale, shift) applied to image and points together, a
    horizontal flip that swaps the ``left_*`` and ``right_*`` names (a mirrored pelvis is a valid
    pelvis with its sides exchanged), and brightness, contrast, gamma and Gaussian noise.

Reproducibility
    Initial weights, data order and augmentation come from explicit ``torch.Generator`` objects
    seeded from ``seed``; nothing touches the global RNGs or thread settings. On CPU, with the same
    torch build and thread count, the same data and seed give bit-identical weights (and the same
    ``model.ts`` bytes). The held-out cases are chosen by the sha256 of their ``case_id``, so adding
    or reordering rows does not reshuffle the split the way a seeded permutation would.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audit.atomic import sha256_bytes, sha256_file, write_bytes
from audit.cases import is_phantom
from audit.evaluators.base import InputContract, resolve_device
from audit.norberg.detector import (
    DETECTOR_LANDMARKS,
    MODEL_JSON,
    MODEL_TS,
    DetectorError,
    KeypointDetector,
    ModelSpec,
    decode_heatmaps,
    image_to_input,
    input_to_image,
    quiet_torchscript,
)
from audit.norberg.geometry import SIDES, GeometryError, case_angles, locate_head_center

__all__ = [
    "HeatmapNet",
    "KeypointModel",
    "TrainConfig",
    "TrainResult",
    "TrainingSet",
    "evaluate",
    "fit",
    "split_cases",
    "train_detector",
]

log = logging.getLogger(__name__)

VALUE_RANGE = (0.0, 1.0)
# Accuracy follows the number of optimiser steps, not epochs: on the 200-case phantom (160 training
# cases, batch 16), 200, 300 and 400 steps gave a held-out MAE of 5.7, 2.5 and 1.6 degrees.
RECOMMENDED_STEPS = 400
# left_* <-> right_* under a horizontal flip, as indices into DETECTOR_LANDMARKS.
_FLIP = tuple(
    DETECTOR_LANDMARKS.index(n.replace("left_", "#").replace("right_", "left_").replace("#", "right_"))
    for n in DETECTOR_LANDMARKS
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained detector besides the data; recorded in model.json."""

    epochs: int = 40
    size: int = 128
    seed: int = 0
    device: str = "cpu"
    val_fraction: float = 0.2
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    stride: int = 2  # input px per heatmap cell
    stem: int = 2  # input px per cell of the first feature map
    sigma: float = 1.5  # Gaussian target, heatmap cells
    coord_weight: float = 1.0  # weight of the L1 loss on the soft-argmax position, heatmap cells
    channels: tuple[int, ...] = (16, 32, 48, 64, 96)
    decode_radius: int = 4  # heatmap cells around the peak that the centroid uses
    flip_test: bool = True  # average with the mirrored image's estimate at prediction time
    augment: bool = True
    max_rotation_deg: float = 10.0
    max_scale: float = 0.08  # scale drawn from [1 - max_scale, 1 + max_scale]
    max_shift: float = 0.05  # fraction of the input size
    flip: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        depth = self.stem * 2 ** (len(self.channels) - 1)
        if self.size < 32 or self.size % depth:
            problems.append(
                f"size must be >= 32 and a multiple of {depth} (the deepest level's stride), got {self.size}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if (
            self.stem not in (1, 2, 4)
            or self.stride not in (1, 2, 4, 8)
            or not self.stem <= self.stride <= depth // 2
        ):
            problems.append(
                f"stem must be 1, 2 or 4 and stride 1, 2, 4 or 8, with stem <= stride < {depth}; "
                f"got stem {self.stem}, stride {self.stride}"
            )
        if len(self.channels) < 3 or any(c < 1 for c in self.channels):
            problems.append(f"channels needs >= 3 positive widths, got {self.channels}")
        if not self.sigma > 0 or self.decode_radius < 1:
            problems.append(
                f"sigma must be > 0 and decode_radius >= 1, got {self.sigma}, {self.decode_radius}"
            )
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------- network


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class HeatmapNet(nn.Module):
    """U-Net-lite: one level per entry of ``channels``, each at half the resolution of the one before.

    The first level runs at ``1 / stem`` of the input resolution (a strided first convolution: it
    still sees every input pixel, so sub-cell position survives in its channels); logits come out at
    ``stride`` input px per cell. The decoder merges like a feature pyramid: deeper features are
    projected to the skip's width by a 1x1 convolution at their own (coarse) resolution, upsampled,
    added to the skip and mixed by one 3x3 convolution. On a CPU the full-resolution decoder is where
    a U-Net's time goes; adding instead of concatenating makes it about a third as expensive.
    """

    def __init__(self, n_keypoints: int, channels: Sequence[int], stride: int = 2, stem: int = 2):
        super().__init__()
        chans = list(channels)
        self.down = nn.ModuleList()
        for i, c in enumerate(chans):
            c_in = 1 if i == 0 else chans[i - 1]
            self.down.append(nn.Sequential(*_conv(c_in, c, stem if i == 0 else 2), *_conv(c, c)))
        out_level = round(math.log2(stride // stem))
        self.skip_levels = list(range(len(chans) - 2, out_level - 1, -1))
        self.project = nn.ModuleList(
            [nn.Conv2d(chans[i + 1], chans[i], 1, bias=False) for i in self.skip_levels]
        )
        self.up = nn.ModuleList([nn.Sequential(*_conv(chans[i], chans[i])) for i in self.skip_levels])
        self.head = nn.Conv2d(chans[out_level], n_keypoints, 1)

    def forward(self, x: Tensor) -> Tensor:
        feats: list[Tensor] = []
        for block in self.down:
            x = block(x)
            feats.append(x)
        for i, (project, block) in enumerate(zip(self.project, self.up)):
            skip = feats[self.skip_levels[i]]
            x = F.interpolate(project(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(x + skip)
        return self.head(x)


class KeypointModel(nn.Module):
    """What ``model.ts`` holds: inputs in ``value_range`` -> ``(B, K, 2)`` input-pixel ``(x, y)``.

    With ``flip_test`` the image is also run mirrored and the two estimates are averaged (the
    mirrored one with its x reflected and its left/right names swapped back): the same network
    twice, which halves the variance of errors that are not mirror-symmetric.
    """

    def __init__(
        self,
        net: HeatmapNet,
        size: int,
        value_range: tuple[float, float],
        radius: int,
        flip_test: bool = True,
    ):
        super().__init__()
        self.net = net
        self.size = size
        self.lo = float(value_range[0])
        self.hi = float(value_range[1])
        self.radius = radius
        self.flip_test = flip_test
        self.swap = list(_FLIP)

    def logits(self, x: Tensor) -> Tensor:
        return self.net((x - self.lo) / (self.hi - self.lo))

    def _points(self, x: Tensor) -> Tensor:
        logits = self.logits(x)
        b, k, h, w = logits.shape
        prob = torch.softmax(logits.reshape(b, k, h * w), dim=2).reshape(b, k, h, w)
        return decode_heatmaps(prob, self.size, self.radius)

    def forward(self, x: Tensor) -> Tensor:
        points = self._points(x)
        if not self.flip_test:
            return points
        mirrored = self._points(torch.flip(x, dims=[3]))[:, self.swap]
        mirrored = torch.stack([self.size - 1 - mirrored[..., 0], mirrored[..., 1]], dim=2)
        return (points + mirrored) / 2


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """He-normal convolutions, zero biases, unit BatchNorm, all drawn from ``generator``."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True, eq=False)
class TrainingSet:
    """Annotated images as the network sees them, with the annotations for scoring.

    ``inputs`` float32 ``(N, 1, size, size)`` in [0, 1]; ``targets`` ``(N, K, 2)`` float64 input-pixel
    points in :data:`DETECTOR_LANDMARKS` order; ``shapes`` the original ``(H, W)``; ``annotations``
    the landmarks as annotated (image pixels, outline points included) for the angle errors.
    """

    case_ids: tuple[str, ...]
    inputs: Tensor
    targets: np.ndarray
    shapes: tuple[tuple[int, int], ...]
    annotations: tuple[Mapping[str, tuple[float, float]], ...]
    size: int

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, index: Sequence[int]) -> TrainingSet:
        idx = list(index)
        return TrainingSet(
            tuple(self.case_ids[i] for i in idx),
            self.inputs[idx],
            self.targets[idx],
            tuple(self.shapes[i] for i in idx),
            tuple(self.annotations[i] for i in idx),
            self.size,
        )


def detector_points(points: Mapping[str, Sequence[float]]) -> np.ndarray:
    """``(K, 2)`` image-pixel points in :data:`DETECTOR_LANDMARKS` order (centres fitted if needed)."""
    out = []
    for name in DETECTOR_LANDMARKS:
        side = name.split("_", 1)[0]
        if name.endswith("_head_center"):
            out.append(locate_head_center(points, side))
        else:
            if name not in points:
                raise GeometryError(f"{side} hip: no {name}; mark the craniolateral acetabular rim point")
            out.append(tuple(float(v) for v in points[name]))
    return np.asarray(out, dtype=np.float64)


def build_training_set(
    images: Mapping[str, np.ndarray],
    landmarks: Mapping[str, Mapping[str, tuple[float, float]]],
    size: int,
    source: str = "landmarks",
) -> TrainingSet:
    """Pair images and annotations by case_id; every unusable case is listed in one error."""
    problems = []
    ids = [cid for cid in landmarks if cid in images]
    missing = [cid for cid in landmarks if cid not in images]
    if missing:
        problems.append(
            f"{len(missing)} annotated case(s) have no image in the case manifest: {missing[:10]}"
            + (" …" if len(missing) > 10 else "")
            + ". Fix: add them to the cases file or drop their rows from the landmarks file"
        )
    targets, shapes = [], []
    for cid in ids:
        shape = tuple(int(v) for v in np.shape(images[cid]))
        try:
            pts = detector_points(landmarks[cid])
        except GeometryError as exc:
            problems.append(f"case {cid}: {exc}")
            continue
        inp = image_to_input(pts, shape, size)
        outside = [
            n
            for n, (x, y) in zip(DETECTOR_LANDMARKS, inp, strict=True)
            if not (-0.5 <= x <= size - 0.5 and -0.5 <= y <= size - 0.5)
        ]
        if outside:
            problems.append(
                f"case {cid}: {outside} lie outside the centre square the detector sees "
                f"(image {shape[1]}x{shape[0]} px, square of side {min(shape)}). Fix: crop or pad the "
                "image so that both hips lie in its centre square"
            )
            continue
        targets.append(inp)
        shapes.append(shape)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise DetectorError(f"{source}: {len(problems)} problem(s):\n{listed}")
    if not ids:
        raise DetectorError(f"{source}: no annotated case has an image; nothing to train on")
    contract = InputContract("landmark detector", channels=1, size=size, value_range=VALUE_RANGE)
    inputs = torch.cat([contract.prepare([images[cid]]) for cid in ids])
    return TrainingSet(
        tuple(ids),
        inputs,
        np.stack(targets),
        tuple(shapes),
        tuple(dict(landmarks[cid]) for cid in ids),
        size,
    )


def split_cases(case_ids: Sequence[str], val_fraction: float) -> tuple[list[int], list[int]]:
    """(train, held-out) indices: the ``round(f * N)`` (>= 1 when f > 0) ids of smallest sha256."""
    n = len(case_ids)
    n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * n))
    if n_val >= n:
        raise DetectorError(
            f"{n} annotated case(s) leave none to train on with val_fraction {val_fraction}; "
            "annotate more cases or lower --val-fraction"
        )
    order = sorted(range(n), key=lambda i: hashlib.sha256(case_ids[i].encode("utf-8")).hexdigest())
    held = sorted(order[:n_val])
    return [i for i in range(n) if i not in set(held)], held


# --------------------------------------------------------------------------------------------- augmentation


def _similarity(n: int, config: TrainConfig, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample 2x2 matrices ``A``, shifts ``t`` (normalised coords) and a flip mask.

    An output pixel at normalised ``p`` samples the input at ``A p + t``, so an input point ``q``
    lands at ``A^-1 (q - t)``.
    """
    angle = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(config.max_rotation_deg)
    scale = 1 + (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * config.max_scale
    shift = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1) * (2 * config.max_shift)
    flip = torch.rand(n, generator=g) < (0.5 if config.flip else 0.0)
    c, s = torch.cos(angle), torch.sin(angle)
    a = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1) / scale[:, None, None]
    mirror = torch.ones(n, 2, dtype=torch.float64)
    mirror[flip, 0] = -1.0
    a = a * mirror[:, None, :]
    return a, shift, flip


def warp(inputs: Tensor, points: np.ndarray, a: Tensor, t: Tensor, flip: Tensor) -> tuple[Tensor, np.ndarray]:
    """Resample ``inputs`` (N, 1, S, S) with the similarity ``(a, t)`` of :func:`_similarity` and move
    ``points`` (N, K, 2, input px) with it; flipped samples get their left/right names swapped.

    Samples whose points would leave the picture are returned unchanged (they have no heatmap to
    learn).
    """
    _, _, size, _ = inputs.shape
    q = torch.from_numpy((2 * points + 1) / size - 1)  # normalised coords, align_corners=False
    p = torch.einsum("nij,nkj->nki", torch.linalg.inv(a), q - t[:, None, :])
    pts = ((p + 1) * size - 1) / 2
    pts[flip] = pts[flip][:, list(_FLIP)]
    margin = 2.0
    inside = ((pts >= margin) & (pts <= size - 1 - margin)).all(dim=2).all(dim=1)
    theta = torch.cat([a, t[:, :, None]], dim=2)
    theta[~inside] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    pts[~inside] = torch.from_numpy(points[(~inside).numpy()])
    grid = F.affine_grid(theta.float(), list(inputs.shape), align_corners=False)
    x = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x, pts.numpy()


def augment(
    inputs: Tensor, targets: np.ndarray, config: TrainConfig, g: torch.Generator
) -> tuple[Tensor, np.ndarray]:
    """A randomly transformed copy of ``inputs`` (N, 1, S, S) in [0, 1] and its ``targets`` (N, K, 2)."""
    n = inputs.shape[0]
    x, pts = warp(inputs, targets, *_similarity(n, config, g))
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.4)
    contrast = 0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    offset = (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.1
    sigma = 0.03 * torch.rand(n, 1, 1, 1, generator=g)
    noise = torch.randn(x.shape, generator=g)
    x = x.clamp(0.0, 1.0) ** gamma
    x = (contrast * (x - 0.5) + 0.5 + offset + sigma * noise).clamp(0.0, 1.0)
    return x, pts


def heatmap_targets(points: np.ndarray, size: int, stride: int, sigma: float) -> Tensor:
    """Normalised Gaussians ``(N, K, h, w)`` centred on input-pixel ``points`` (N, K, 2)."""
    h = size // stride
    cells = torch.arange(h, dtype=torch.float64)
    centre = (torch.from_numpy(points) + 0.5) / stride - 0.5  # in heatmap cells
    gx = torch.exp(-((cells[None, None, :] - centre[..., 0:1]) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((cells[None, None, :] - centre[..., 1:2]) ** 2) / (2 * sigma**2))
    maps = gy[..., :, None] * gx[..., None, :]
    return (maps / maps.sum(dim=(2, 3), keepdim=True)).float()


# --------------------------------------------------------------------------------------------- training


def export(model: KeypointModel) -> bytes:
    """TorchScript bytes of ``model`` on CPU in eval mode."""
    model = model.eval().cpu()
    buffer = io.BytesIO()
    with quiet_torchscript():
        torch.jit.save(torch.jit.script(model), buffer)
    return buffer.getvalue()


def fit(
    data: TrainingSet,
    config: TrainConfig,
    *,
    progress: bool = False,
) -> tuple[KeypointModel, dict[str, Any]]:
    """Train on every case of ``data``; returns the model (eval mode, CPU) and a training record."""
    device = resolve_device(config.device)
    net = HeatmapNet(len(DETECTOR_LANDMARKS), config.channels, config.stride, config.stem)
    # Separate streams for initial weights and for data order/augmentation, so changing one knob of
    # the schedule does not also change the initialisation.
    init_weights(net, torch.Generator().manual_seed(2 * config.seed))
    g = torch.Generator().manual_seed(2 * config.seed + 1)
    model = KeypointModel(net, config.size, VALUE_RANGE, config.decode_radius, config.flip_test).to(device)
    n = len(data)
    steps_per_epoch = max(1, math.ceil(n / config.batch_size))
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    from tqdm.auto import tqdm

    losses = []
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(config.epochs), desc="landmarks train", unit="epoch", disable=not progress)
    for _epoch in bar:
        order = torch.randperm(n, generator=g).tolist()
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            x, pts = data.inputs[idx], data.targets[idx]
            if config.augment:
                x, pts = augment(x, pts, config, g)
            target = heatmap_targets(pts, config.size, config.stride, config.sigma).to(device)
            logits = model.logits(x.to(device))
            b, k, h, w = logits.shape
            logp = torch.log_softmax(logits.reshape(b, k, h * w), dim=2)
            loss = -(target.reshape(b, k, h * w) * logp).sum(dim=2).mean()
            if config.coord_weight:
                prob = logp.exp().reshape(b, k, h, w)
                cells = torch.arange(w, dtype=prob.dtype, device=device)
                ex = (prob.sum(dim=2) * cells).sum(dim=2)
                ey = (prob.sum(dim=3) * cells[:h]).sum(dim=2)
                truth = torch.from_numpy(pts).to(device=device, dtype=prob.dtype)
                truth = (truth + 0.5) / config.stride - 0.5  # heatmap cells
                l1 = (ex - truth[..., 0]).abs() + (ey - truth[..., 1]).abs()
                loss = loss + config.coord_weight * l1.mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
        losses.append(total / steps_per_epoch)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    model.eval().cpu()
    record = {
        "seconds": round(time.perf_counter() - start, 2),
        "parameters": count_parameters(model),
        "loss_first_epoch": round(losses[0], 6),
        "loss_last_epoch": round(losses[-1], 6),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    return model, record


def evaluate(detector: KeypointDetector, data: TrainingSet) -> dict[str, Any]:
    """Held-out errors of ``detector`` on ``data``: px per landmark and Norberg-angle degrees."""
    if detector.spec.size != data.size:
        raise DetectorError(f"detector input size {detector.spec.size} != data prepared at {data.size}")
    lo, hi = detector.spec.value_range
    pred_input = detector.predict_input(lo + data.inputs * (hi - lo))
    names = detector.landmarks
    index = [names.index(n) for n in DETECTOR_LANDMARKS]
    errors_px: dict[str, list[float]] = {n: [] for n in DETECTOR_LANDMARKS}
    angle_err: dict[str, list[float]] = {s: [] for s in SIDES}
    per_case = []
    for i, cid in enumerate(data.case_ids):
        pred = input_to_image(pred_input[i][index], data.shapes[i], data.size)
        truth = input_to_image(data.targets[i], data.shapes[i], data.size)
        for k, name in enumerate(DETECTOR_LANDMARKS):
            errors_px[name].append(float(np.hypot(*(pred[k] - truth[k]))))
        predicted = {n: (float(p[0]), float(p[1])) for n, p in zip(DETECTOR_LANDMARKS, pred, strict=True)}
        try:
            got = case_angles(predicted)
        except GeometryError:
            got = {s: float("nan") for s in SIDES}
        want = case_angles(data.annotations[i])
        for side in SIDES:
            angle_err[side].append(got[side] - want[side])
        per_case.append(
            {
                "case_id": cid,
                **{f"{s}_deg": round(got[s], 4) for s in SIDES},
                **{f"{s}_true_deg": round(want[s], 4) for s in SIDES},
            }
        )
    pooled = [e for s in SIDES for e in angle_err[s]]

    def mae(values: list[float]) -> float:
        arr = np.abs(np.asarray(values, dtype=np.float64))
        return float(np.mean(arr)) if np.isfinite(arr).all() else float("inf")

    return {
        "n_cases": len(data),
        "case_ids": list(data.case_ids),
        "px": {
            **{
                n: {"mean": round(float(np.mean(v)), 4), "max": round(float(np.max(v)), 4)}
                for n, v in errors_px.items()
            },
            "mean": round(float(np.mean([e for v in errors_px.values() for e in v])), 4),
        },
        "angle_mae_deg": {**{s: round(mae(angle_err[s]), 4) for s in SIDES}, "pooled": round(mae(pooled), 4)},
        "angle_bias_deg": {s: round(float(np.mean(angle_err[s])), 4) for s in SIDES},
        "per_case": per_case,
    }


# --------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    spec: ModelSpec
    held_out: Mapping[str, Any] | None  # None when val_fraction is 0
    seconds: float  # training only (data loading and evaluation excluded)
    parameters: int


def _images_digest(manifest: Any, ids: Sequence[str]) -> str:
    by_id = {case.case_id: case.image for case in manifest}
    lines = "".join(f"{cid}\t{sha256_file(by_id[cid])}\n" for cid in ids)
    return sha256_bytes(lines.encode("utf-8"))


def load_annotated(
    cases: str | os.PathLike[str],
    landmarks: str | os.PathLike[str],
    size: int,
    *,
    patient_left: str = "image-right",
    progress: bool = False,
) -> tuple[TrainingSet, Any]:
    """The annotated cases of a manifest as a :class:`TrainingSet`, and the loaded manifest."""
    from tqdm.auto import tqdm

    from audit import images
    from audit.cases import load_manifest
    from audit.norberg.landmarks import read_landmarks

    manifest = load_manifest(cases, check_pixels=False)
    sizes = {case.case_id: images.image_size(case.image) for case in manifest}
    marks = read_landmarks(landmarks, sizes, patient_left=patient_left)
    pixels = {}
    for case in tqdm(manifest.cases(), desc="images", unit="image", disable=not progress):
        if case.case_id in marks:
            pixels[case.case_id] = images.read_image(case.image).pixels
    skipped = len(manifest) - len(pixels)
    if skipped:
        log.info("%s: %d case(s) without landmarks are not used", cases, skipped)
    return build_training_set(pixels, marks, size, source=str(landmarks)), manifest


def train_detector(
    cases: str | os.PathLike[str],
    landmarks: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig = TrainConfig(),
    *,
    patient_left: str = "image-right",
    progress: bool = False,
) -> TrainResult:
    """Train on the annotated cases, score the held-out ones, write ``model.ts`` and ``model.json``.

    ``model.ts`` is written first and ``model.json`` (which pins its sha256) last, both atomically:
    a directory with a ``model.json`` holds a complete model, and a ``model.ts`` replaced without
    its ``model.json`` fails verification instead of loading.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DetectorError(f"{out} exists and is not a directory; give --out a directory for the model")
    data, manifest = load_annotated(
        cases, landmarks, config.size, patient_left=patient_left, progress=progress
    )
    train_idx, held_idx = split_cases(data.case_ids, config.val_fraction)
    log.info(
        "landmark detector: %d training and %d held-out case(s), %d px input, device %s",
        len(train_idx),
        len(held_idx),
        config.size,
        resolve_device(config.device),
    )
    per_epoch = max(1, math.ceil(len(train_idx) / config.batch_size))  # as fit() steps
    steps = config.epochs * per_epoch
    if steps < RECOMMENDED_STEPS:
        log.warning(
            "landmark detector: %d epochs x %d training case(s) is only %d optimiser steps; fewer than %d "
            "left the phantom's held-out error above 3 degrees. Consider --epochs %d.",
            config.epochs, len(train_idx), steps, RECOMMENDED_STEPS, math.ceil(RECOMMENDED_STEPS / per_epoch),
        )  # fmt: skip
    phantom = is_phantom(manifest.frame)
    if phantom:
        log.warning("landmark detector: the training cases are phantom drawings, not radiographs")
    model, record = fit(data.subset(train_idx), config, progress=progress)
    blob = export(model)
    sha = sha256_bytes(blob)
    write_bytes(out / MODEL_TS, blob)
    spec = ModelSpec(
        (out / MODEL_TS).resolve(), sha, DETECTOR_LANDMARKS, config.size, VALUE_RANGE, "coordinates"
    )
    held_out = None
    if held_idx:
        detector = KeypointDetector.from_torchscript(
            out / MODEL_TS, sha, DETECTOR_LANDMARKS, size=config.size, device="cpu"
        )
        held_out = evaluate(detector, data.subset(held_idx))
    training = {**asdict(config), "channels": list(config.channels), **record}
    data_record = {
        "cases": {"path": str(Path(cases).resolve()), "sha256": sha256_file(cases)},
        "landmarks": {"path": str(Path(landmarks).resolve()), "sha256": sha256_file(landmarks)},
        "images_sha256": _images_digest(manifest, data.case_ids),
        "n_annotated": len(data),
        "n_train": len(train_idx),
        "n_held_out": len(held_idx),
        "split": "held-out = the round(val_fraction * N) case_ids of smallest sha256(case_id)",
        "patient_left": patient_left,
        # A detector trained on drawings says so wherever its model.json is read.
        "phantom": phantom,
    }
    record_all = {"training": training, "data": data_record, "held_out": held_out}
    spec = ModelSpec(spec.model, sha, spec.landmarks, spec.size, spec.value_range, spec.output, record_all)
    spec.write(out / MODEL_JSON)
    return TrainResult(out, spec, held_out, record["seconds"], record["parameters"])
