"""Train the shipped demo evaluators: ``python -m audit.demo.train_evaluators [--out DIR]``.

Data
    A training cohort rendered by :func:`audit.demo.cohort.build_cohort` with seed
    :data:`TRAIN_SEED` (different poses, exposures and nodules from the audited seed-0 demo),
    :data:`TRAIN_CASES` cases at 256 px (≈ 3 min to render on 2 cores; cached under the suite's
    home directory).  Its last :data:`VALIDATION_CASES` cases are held out for validation; the
    audited 48-case seed-0 demo cohort is the test set.  Neither is used for training or model
    selection: the schedule is fixed.

Reproducibility
    Weight initialisation, data order and augmentation come from explicit ``torch.Generator``s
    seeded with :data:`TRAIN_SEED`; training runs on CPU in float32 with deterministic
    algorithms, so a rerun on the same machine and torch build gives the same bytes (other CPUs
    or BLAS builds may round differently).  The weights, their sha256 and the held-out metrics
    go to ``weights.json``.

Nodule classifier
    Trained on :data:`PATCH_PX`-px patches of the 256 px films (half centred near a nodule, half
    anywhere on a normal film) with a dense loss on its evidence cells against the pathology
    masks plus a loss on each patch's strongest cell; being fully convolutional it then scores
    whole films by their strongest cell.  Patches give far more nodule views per CPU second than
    whole films: trained on whole films for the same time, it stayed at chance (AUC ≈ 0.5).

Anatomy segmenter
    Whole films at 128 px, BCE plus soft Dice against the 256 px masks (logits upsampled).

Augmentation
    Small shifts (±:data:`MAX_SHIFT_PX` at 256 px), contrast/brightness/gamma jitter and a little
    noise.  No flips: left and right are anatomy on a chest film.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from audit import images
from audit.atomic import sha256_bytes, write_bytes, write_text
from audit.demo import cohort
from audit.demo import evaluators as ev

log = logging.getLogger(__name__)

TRAIN_SEED = 1
TEST_SEED = 0
TRAIN_CASES = 256
TEST_CASES = 48
COHORT_SIZE = 256
VALIDATION_CASES = 32
MAX_SHIFT_PX = 8

CLASSIFIER_STEPS = 1500
PATCH_PX = 128
PATCH_BATCH = 24
PATCH_JITTER_PX = 36  # keeps the nodule centre inside the scored zone of the patch
PATCH_BORDER_CELLS = 2  # evidence cells (8 px) at each patch edge left out of the loss
PATCH_EDGE_OVERSHOOT_PX = 32
SEGMENTER_EPOCHS = 12
BATCH = 16
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
EVIDENCE_POS_WEIGHT = 5.0


@dataclass(frozen=True)
class Cohort:
    images: Tensor  # float32 (N, 1, 256, 256) in [0, 1]
    anatomy: Tensor  # float32 (N, 3, 256, 256) in {0, 1}
    nodule: Tensor  # float32 (N, 1, 256, 256) in {0, 1}
    label: Tensor  # float32 (N,) 1 = Nodule

    def subset(self, index: slice) -> Cohort:
        return Cohort(self.images[index], self.anatomy[index], self.nodule[index], self.label[index])

    def __len__(self) -> int:
        return int(self.label.shape[0])


def load_cohort(n_cases: int, seed: int, root: Path | None = None) -> Cohort:
    manifest = cohort.build_cohort(n_cases=n_cases, size=COHORT_SIZE, seed=seed, root=root, progress=True)
    base = manifest.parent
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    pics, anatomy, nodule, label = [], [], [], []
    for row in frame.itertuples(index=False):
        px = images.read_image(base / row.image).pixels
        pics.append(px)
        anatomy.append(images.read_mask(base / row.anatomy_mask).transpose(2, 0, 1))
        if row.pathology_mask:
            nodule.append(images.read_mask(base / row.pathology_mask)[..., 0])
        else:
            nodule.append(np.zeros(px.shape, dtype=bool))
        label.append(row.labels == cohort.NODULE_LABEL)
    return Cohort(
        images=torch.from_numpy(np.stack(pics)[:, None].astype(np.float32)),
        anatomy=torch.from_numpy(np.stack(anatomy).astype(np.float32)),
        nodule=torch.from_numpy(np.stack(nodule)[:, None].astype(np.float32)),
        label=torch.tensor(label, dtype=torch.float32),
    )


# --------------------------------------------------------------------------------------------- augmentation


def _shift(x: Tensor, dy: int, dx: int, mode: str) -> Tensor:
    """Translate ``(C, H, W)`` by whole pixels; image edges are replicated, masks padded with 0."""
    m = MAX_SHIFT_PX
    padded = F.pad(x[None], (m, m, m, m), mode=mode)[0]
    h, w = x.shape[-2:]
    return padded[:, m - dy : m - dy + h, m - dx : m - dx + w]


def augment(batch: Cohort, g: torch.Generator) -> Cohort:
    n = len(batch)
    shifts = torch.randint(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1, (n, 2), generator=g).tolist()
    contrast = 0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    offset = -0.04 + 0.08 * torch.rand(n, 1, 1, 1, generator=g)
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.3)
    sigma = 0.01 * torch.rand(n, 1, 1, 1, generator=g)
    noise = torch.randn(batch.images.shape, generator=g)
    pics, anatomy, nodule = [], [], []
    for i, (dy, dx) in enumerate(shifts):
        pics.append(_shift(batch.images[i], dy, dx, "replicate"))
        anatomy.append(_shift(batch.anatomy[i], dy, dx, "constant"))
        nodule.append(_shift(batch.nodule[i], dy, dx, "constant"))
    x = torch.stack(pics).clamp(0.0, 1.0) ** gamma
    x = (contrast * (x - 0.5) + 0.5 + offset + sigma * noise).clamp(0.0, 1.0)
    return Cohort(x, torch.stack(anatomy), torch.stack(nodule), batch.label)


def to_input(images01: Tensor, size: int) -> Tensor:
    """Same mapping as :func:`audit.demo.evaluators.prepare` for already-square batches."""
    x = images01
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    lo, hi = ev.VALUE_RANGE
    return lo + x.clamp(0.0, 1.0) * (hi - lo)


# --------------------------------------------------------------------------------------------- losses


def classifier_loss(model: ev.NoduleClassifier, batch: Cohort, scored: Tensor) -> Tensor:
    """Dense loss on the ``scored`` evidence cells, plus the max over them per patch."""
    evidence = model.evidence_map(to_input(batch.images, batch.images.shape[-1]))
    cell_target = F.adaptive_max_pool2d(batch.nodule, evidence.shape[-2:])
    weight = scored.to(evidence.dtype) * (1.0 + (EVIDENCE_POS_WEIGHT - 1.0) * cell_target)
    cell_loss = (F.binary_cross_entropy_with_logits(evidence, cell_target, reduction="none") * weight).sum()
    cell_loss = cell_loss / scored.sum()
    masked = evidence.masked_fill(~scored, float("-inf"))
    patch_target = (cell_target * scored).amax(dim=(1, 2, 3))
    patch_loss = F.binary_cross_entropy_with_logits(masked.amax(dim=(1, 2, 3)), patch_target)
    return cell_loss + patch_loss


def nodule_centres(data: Cohort) -> Tensor:
    """int64 (N, 2) row, column of each nodule mask's centroid; -1 without a nodule."""
    centres = torch.full((len(data), 2), -1, dtype=torch.int64)
    for i in range(len(data)):
        rows, cols = torch.nonzero(data.nodule[i, 0], as_tuple=True)
        if rows.numel():
            centres[i] = torch.stack([rows.float().mean(), cols.float().mean()]).round().long()
    return centres


def sample_patches(data: Cohort, centres: Tensor, g: torch.Generator) -> tuple[Cohort, Tensor]:
    """Patches and the evidence cells to score in each, ``(N, 1, cells, cells)`` bool.

    Half the patches hold a nodule inside the scored zone, half lie anywhere on a normal film.
    Cells within :data:`PATCH_BORDER_CELLS` of a patch edge are not scored because there the
    network sees zero padding that the same place inside a full film never sees; at an edge of
    the film itself the padding is real, so those cells are scored.  Corners are drawn past the
    film's edges and clamped so that edge cells come up often: a full film's max covers them too.
    """
    size = data.images.shape[-1]
    p = PATCH_PX
    positives = torch.nonzero(centres[:, 0] >= 0).flatten()
    negatives = torch.nonzero(centres[:, 0] < 0).flatten()
    n_pos = PATCH_BATCH // 2
    n_neg = PATCH_BATCH - n_pos
    pick_pos = positives[torch.randint(len(positives), (n_pos,), generator=g)]
    pick_neg = negatives[torch.randint(len(negatives), (n_neg,), generator=g)]
    jitter = torch.randint(-PATCH_JITTER_PX, PATCH_JITTER_PX + 1, (n_pos, 2), generator=g)
    pos_corner = centres[pick_pos] + jitter - p // 2
    reach = PATCH_EDGE_OVERSHOOT_PX
    neg_corner = torch.randint(-reach, size - p + reach + 1, (n_neg, 2), generator=g)
    corners = torch.cat([pos_corner, neg_corner]).clamp(0, size - p).tolist()
    index = torch.cat([pick_pos, pick_neg]).tolist()

    def cut(x: Tensor) -> Tensor:
        return torch.stack([x[i, :, r : r + p, c : c + p] for i, (r, c) in zip(index, corners, strict=True)])

    cells = p // ev.CLASSIFIER_STRIDE
    m = PATCH_BORDER_CELLS
    inner = torch.zeros(cells, dtype=torch.bool)
    inner[m:-m] = True
    scored = torch.zeros((len(index), 1, cells, cells), dtype=torch.bool)
    for k, (r, c) in enumerate(corners):
        rows, cols = inner.clone(), inner.clone()
        rows[:m] |= r == 0
        rows[-m:] |= r == size - p
        cols[:m] |= c == 0
        cols[-m:] |= c == size - p
        scored[k, 0] = rows[:, None] & cols[None, :]
    batch = Cohort(cut(data.images), cut(data.anatomy), cut(data.nodule), data.label[index])
    return batch, scored


def train_classifier(model: ev.NoduleClassifier, data: Cohort, g: torch.Generator) -> None:
    centres = nodule_centres(data)
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=LEARNING_RATE, total_steps=CLASSIFIER_STEPS, pct_start=0.15
    )
    model.train()
    total = 0.0
    for step in range(CLASSIFIER_STEPS):
        patches, scored = sample_patches(data, centres, g)
        loss = classifier_loss(model, augment(patches, g), scored)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        total += float(loss.detach())
        if (step + 1) % 100 == 0:
            log.info("classifier step %d/%d loss %.4f", step + 1, CLASSIFIER_STEPS, total / 100)
            total = 0.0
    model.eval()


def segmenter_loss(model: ev.AnatomySegmenter, batch: Cohort) -> Tensor:
    logits = model(to_input(batch.images, ev.SEGMENTER_SIZE))
    # Scored against the full-resolution masks: that is the resolution Dice is reported at.
    logits = F.interpolate(logits, size=batch.anatomy.shape[-2:], mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(logits, batch.anatomy)
    prob = torch.sigmoid(logits)
    inter = (prob * batch.anatomy).sum(dim=(2, 3))
    soft_dice = (2 * inter + 1.0) / (prob.sum(dim=(2, 3)) + batch.anatomy.sum(dim=(2, 3)) + 1.0)
    return bce + (1.0 - soft_dice).mean()


def train(
    model: nn.Module,
    data: Cohort,
    loss_fn: Callable[[Any, Cohort], Tensor],
    epochs: int,
    g: torch.Generator,
    name: str,
) -> None:
    steps_per_epoch = (len(data) + BATCH - 1) // BATCH
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=LEARNING_RATE, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=g)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * BATCH : (step + 1) * BATCH]
            batch = augment(Cohort(data.images[idx], data.anatomy[idx], data.nodule[idx], data.label[idx]), g)
            loss = loss_fn(model, batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
        log.info("%s epoch %d/%d loss %.4f", name, epoch + 1, epochs, total / steps_per_epoch)
    model.eval()


# --------------------------------------------------------------------------------------------- metrics


@torch.inference_mode()
def classifier_metrics(model: ev.NoduleClassifier, data: Cohort) -> dict[str, float]:
    logits = torch.cat(
        [model(to_input(data.images[i : i + 16], ev.CLASSIFIER_SIZE)) for i in range(0, len(data), 16)]
    )
    labels = data.label.numpy().astype(int)
    scores = logits[:, 0].double().numpy()
    return {
        "n_cases": len(data),
        "n_nodule": int(labels.sum()),
        "auc_nodule": round(float(roc_auc_score(labels, scores)), 4),
        "accuracy_at_0": round(float(((scores > 0) == labels).mean()), 4),
    }


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    denom = pred.sum() + target.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(pred, target).sum() / denom)


@torch.inference_mode()
def segmenter_metrics(model: ev.AnatomySegmenter, data: Cohort) -> dict[str, float]:
    """Mean per-case Dice at the cohort's 256 px, logits upsampled bilinearly and cut at 0."""
    scores: dict[str, list[float]] = {s: [] for s in ev.STRUCTURES}
    for i in range(0, len(data), 16):
        logits = model(to_input(data.images[i : i + 16], ev.SEGMENTER_SIZE))
        logits = F.interpolate(logits, size=data.anatomy.shape[-2:], mode="bilinear", align_corners=False)
        pred = (logits > 0).numpy()
        target = data.anatomy[i : i + 16].numpy() > 0.5
        for k, s in enumerate(ev.STRUCTURES):
            scores[s].extend(dice(p[k], t[k]) for p, t in zip(pred, target, strict=True))
    out: dict[str, float] = {"n_cases": len(data)}
    out.update({f"dice_{s}": round(float(np.mean(v)), 4) for s, v in scores.items()})
    return out


# --------------------------------------------------------------------------------------------- main


def state_bytes(model: nn.Module) -> bytes:
    state = {
        k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def default_out() -> Path:
    return Path(__file__).resolve().parent / "weights"


def run(out: Path, threads: int = 2) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    full = load_cohort(TRAIN_CASES, TRAIN_SEED)
    test = load_cohort(TEST_CASES, TEST_SEED)
    split = len(full) - VALIDATION_CASES
    train_set, val_set = full.subset(slice(0, split)), full.subset(slice(split, None))
    data_s = time.perf_counter() - start

    cohorts = {
        "train": {
            "seed": TRAIN_SEED,
            "n_cases": TRAIN_CASES,
            "size": COHORT_SIZE,
            "cases": f"0..{split - 1}",
        },
        "validation": {
            "seed": TRAIN_SEED,
            "n_cases": TRAIN_CASES,
            "size": COHORT_SIZE,
            "cases": f"{split}..{TRAIN_CASES - 1}",
        },
        "test": {
            "seed": TEST_SEED,
            "n_cases": TEST_CASES,
            "size": COHORT_SIZE,
            "cases": "all (audited demo)",
        },
        "build_version": cohort.BUILD_VERSION,
    }
    files: dict[str, Any] = {}
    classifier = ev.NoduleClassifier()
    segmenter = ev.AnatomySegmenter()
    jobs: list[
        tuple[str, nn.Module, Callable[[torch.Generator], None], Callable[..., Any], dict[str, Any]]
    ] = [
        (
            ev.CLASSIFIER_FILE,
            classifier,
            lambda g: train_classifier(classifier, train_set, g),
            classifier_metrics,
            {"steps": CLASSIFIER_STEPS, "patch_px": PATCH_PX, "batch": PATCH_BATCH},
        ),
        (
            ev.SEGMENTER_FILE,
            segmenter,
            lambda g: train(segmenter, train_set, segmenter_loss, SEGMENTER_EPOCHS, g, "segmenter"),
            segmenter_metrics,
            {"epochs": SEGMENTER_EPOCHS, "batch": BATCH},
        ),
    ]
    for stream, (name, model, fit, metrics_fn, schedule) in enumerate(jobs):
        t0 = time.perf_counter()
        # One seed for the initial weights and one for data order and augmentation, per network.
        ev.init_weights(model, torch.Generator().manual_seed(1000 * TRAIN_SEED + 2 * stream))
        fit(torch.Generator().manual_seed(1000 * TRAIN_SEED + 2 * stream + 1))
        seconds = time.perf_counter() - t0
        data = state_bytes(model)
        write_bytes(out / name, data)
        files[name] = {
            "sha256": sha256_bytes(data),
            "bytes": len(data),
            "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "input_size": model.input_size,
            "outputs": list(getattr(model, "classes", getattr(model, "structures", ()))),
            "training_seed": TRAIN_SEED,
            "schedule": schedule,
            "train_seconds": round(seconds, 1),
            "metrics": {"validation": metrics_fn(model, val_set), "test": metrics_fn(model, test)},
        }
        log.info("%s: %s", name, json.dumps(files[name]["metrics"]))
    manifest = {
        "format": 1,
        "preprocessing": ev.PREPROCESSING,
        "cohorts": cohorts,
        "files": files,
        "training": {
            "command": "python -m audit.demo.train_evaluators",
            "torch": torch.__version__,
            "threads": threads,
            "machine": platform.machine(),
            "cohort_load_seconds": round(data_s, 1),
            "total_seconds": round(time.perf_counter() - start, 1),
        },
    }
    write_text(out / ev.WEIGHTS_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--out", type=Path, default=default_out(), help="where to write weights (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run(args.out, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
