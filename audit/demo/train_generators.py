"""Train the shipped demo generators: ``python -m audit.demo.train_generators [--out DIR]``.

Data
    The demo evaluators' training cohort (:mod:`audit.demo.train_evaluators`): 256 cases rendered by
    :func:`audit.demo.cohort.build_cohort` with seed 1 (different poses, exposures and nodules from
    the audited seed-0 demo; shared cache, so no second render).  Its last 32 cases are held out for
    validation and the audited 48-case seed-0 cohort is the test set; neither is used for training or
    model selection: the schedule is fixed.  Images and masks are brought to the 64 px model frame
    once (:func:`audit.demo.generators.to_frame`); metrics compare the outputs, resized back to
    256 px exactly as the suite's callables do, with the 256 px references.  No augmentation: the
    generators are meant to learn this cohort's distribution, and the fixed schedules are short
    (the manifest records the final training loss beside the held-out metrics).

Networks (architectures in :mod:`audit.demo.generators`)
    * conditional DDPM: v-prediction on the cosine schedule, noisy image ⊕ mask, MSE on v;
    * unconditional DDPM for SDEdit: the same on images alone, plus the sketch rendering, per-pixel
      ridge least squares of the training frames on the masks and their blurs
      (:func:`fit_sketch`);
    * U-Net regressor: mask to image, L1 loss.
    Both diffusion networks keep an exponential moving average of their weights (what ships).

Reproducibility
    Weight initialisation, batch order, noise and timesteps come from explicit
    ``torch.Generator``\\ s seeded from :data:`TRAIN_SEED`; training runs on CPU in float32 with
    deterministic algorithms, so a rerun on the same machine and torch build gives the same bytes
    (other CPUs or BLAS builds may round differently).  Held-out samples use noise seeded per case
    from :data:`EVAL_SEED`.  Weights, sha256, sizes, schedules, timings and held-out metrics (with
    the mean training image as the trivial baseline) go to ``generators.json``; the evaluators'
    ``weights.json`` is left alone.
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
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audit.atomic import sha256_bytes, write_bytes, write_text
from audit.demo import cohort
from audit.demo import generators as gen
from audit.demo import train_evaluators as te

log = logging.getLogger(__name__)

TRAIN_SEED = te.TRAIN_SEED
TEST_SEED = te.TEST_SEED
TRAIN_CASES = te.TRAIN_CASES
TEST_CASES = te.TEST_CASES
VALIDATION_CASES = te.VALIDATION_CASES
EVAL_SEED = 20240  # noise of the held-out samples, one generator per case

DIFFUSION_STEPS = 1400
DIFFUSION_BATCH = 16
DIFFUSION_LR = 1e-3
EMA_DECAY = 0.995
REGRESSOR_STEPS = 600
REGRESSOR_BATCH = 16
REGRESSOR_LR = 3e-3
WEIGHT_DECAY = 1e-4
WARMUP_FRACTION = 0.05
EVAL_STRENGTHS = (0.4, 0.6, 0.8)
SKETCH_RIDGE = 0.1


@dataclass(frozen=True)
class Frames:
    images: Tensor  # float32 (N, 1, SIZE, SIZE) in [0, 1]
    anatomy: Tensor  # float32 (N, 3, SIZE, SIZE) soft masks in [0, 1]
    reference: Tensor  # float32 (N, 1, 256, 256): what metrics compare with

    def subset(self, index: slice) -> Frames:
        return Frames(self.images[index], self.anatomy[index], self.reference[index])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_frames(n_cases: int, seed: int) -> Frames:
    data = te.load_cohort(n_cases, seed)
    return Frames(gen.to_frame(data.images), gen.to_frame(data.anatomy), data.images)


# --------------------------------------------------------------------------------------------- training


class EMA:
    """Exponential moving average of a model's floating-point state, with the usual warm-up.

    The effective decay ``min(decay, (1 + step) / (10 + step))`` lets early averages follow the
    fast-moving weights instead of remembering the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                self.state[key].mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                self.state[key].copy_(value)
        self.updates += 1

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.state)


def fit(
    model: nn.Module,
    loss_fn: Callable[[Tensor, torch.Generator], Tensor],
    n_items: int,
    steps: int,
    batch: int,
    lr: float,
    g: torch.Generator,
    name: str,
    ema_decay: float | None = None,
) -> float:
    """Train for ``steps`` batches (epochs of a ``g``-drawn permutation); returns the last 100 steps' mean loss."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=steps, pct_start=WARMUP_FRACTION
    )
    ema = EMA(model, ema_decay) if ema_decay is not None else None
    model.train()
    order = torch.randperm(n_items, generator=g)
    cursor = 0
    window: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        if cursor + batch > n_items:
            order, cursor = torch.randperm(n_items, generator=g), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        loss = loss_fn(idx, g)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if ema is not None:
            ema.update(model)
        window = (window + [float(loss.detach())])[-100:]
        if (step + 1) % 100 == 0:
            log.info(
                "%s step %d/%d loss %.4f (%.0f s)",
                name,
                step + 1,
                steps,
                float(np.mean(window)),
                time.perf_counter() - start,
            )
    if ema is not None:
        ema.copy_to(model)
    model.eval()
    return float(np.mean(window))


def diffusion_loss(
    model: nn.Module, data: Frames, scheduler: Any, conditional: bool
) -> Callable[[Tensor, torch.Generator], Tensor]:
    def loss(idx: Tensor, g: torch.Generator) -> Tensor:
        x0 = gen.to_model_range(data.images[idx])
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, gen.TRAIN_TIMESTEPS, (x0.shape[0],), generator=g)
        noisy = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
        pred = model(noisy, t, data.anatomy[idx]) if conditional else model(noisy, t)
        return F.mse_loss(pred, target)

    return loss


def regression_loss(model: nn.Module, data: Frames) -> Callable[[Tensor, torch.Generator], Tensor]:
    def loss(idx: Tensor, g: torch.Generator) -> Tensor:
        return F.l1_loss(model(data.anatomy[idx]), data.images[idx])

    return loss


def fit_sketch(data: Frames) -> Tensor:
    """Per-pixel ridge least squares of the image on :func:`gen.sketch_features` (see :class:`gen.SDEditModel`).

    Returns ``(SKETCH_FEATURES, SIZE, SIZE)`` float32 weights.  The ridge term keeps pixels where a
    feature hardly varies over the training set (the aorta's blur far from the aorta) well posed.
    """
    x = gen.sketch_features(data.anatomy.double())
    y = data.images.double()[:, 0]
    gram = torch.einsum("nihw,njhw->hwij", x, x) + SKETCH_RIDGE * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, torch.einsum("nihw,nhw->hwi", x, y))
    return weights.permute(2, 0, 1).float().contiguous()


# --------------------------------------------------------------------------------------------- metrics


def image_metrics(generated: Tensor, reference: Tensor) -> dict[str, float]:
    """Mean over cases of MAE, MSE and PSNR (data range 1) at the reference's resolution."""
    out = gen.to_reference_size(generated, reference.shape[-2], reference.shape[-1]).double()
    ref = reference.double()
    mae = (out - ref).abs().mean(dim=(1, 2, 3))
    mse = ((out - ref) ** 2).mean(dim=(1, 2, 3))
    psnr = 10.0 * torch.log10(1.0 / mse)
    return {
        "n_cases": int(ref.shape[0]),
        "mae": round(float(mae.mean()), 4),
        "mse": round(float(mse.mean()), 5),
        "psnr": round(float(psnr.mean()), 2),
    }


def eval_noise(n: int) -> Tensor:
    return torch.cat(
        [
            torch.randn((1, 1, gen.SIZE, gen.SIZE), generator=torch.Generator().manual_seed(EVAL_SEED + i))
            for i in range(n)
        ]
    )


@torch.inference_mode()
def generate(model: nn.Module, data: Frames, **options: Any) -> Tensor:
    noise = eval_noise(len(data))
    chunks = []
    for i in range(0, len(data), gen.DEFAULT_BATCH_SIZE):
        sl = slice(i, i + gen.DEFAULT_BATCH_SIZE)
        if isinstance(model, gen.ConditionalDDPM):
            chunks.append(gen.generate_conditional(model, data.anatomy[sl], noise[sl], **options))
        elif isinstance(model, gen.SDEditModel):
            chunks.append(gen.generate_sdedit(model, data.anatomy[sl], noise[sl], **options))
        else:
            assert isinstance(model, gen.UNetRegressor)
            chunks.append(gen.generate_regression(model, data.anatomy[sl]))
    return torch.cat(chunks)


def held_out_metrics(model: nn.Module, splits: dict[str, Frames], **options: Any) -> dict[str, Any]:
    return {
        name: image_metrics(generate(model, data, **options), data.reference) for name, data in splits.items()
    }


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
    full = load_frames(TRAIN_CASES, TRAIN_SEED)
    test = load_frames(TEST_CASES, TEST_SEED)
    split = len(full) - VALIDATION_CASES
    train_set, val_set = full.subset(slice(0, split)), full.subset(slice(split, None))
    splits = {"validation": val_set, "test": test}
    data_s = time.perf_counter() - start

    mean_image = train_set.images.mean(dim=0, keepdim=True)
    baseline = {
        name: image_metrics(mean_image.expand(len(data), -1, -1, -1), data.reference)
        for name, data in splits.items()
    }
    log.info("baseline (mean training image): %s", json.dumps(baseline))

    scheduler = gen.ddpm_scheduler()
    diffusion_schedule = {
        "steps": DIFFUSION_STEPS,
        "batch": DIFFUSION_BATCH,
        "lr": DIFFUSION_LR,
        "ema_decay": EMA_DECAY,
        "loss": "MSE on v",
    }
    sampling = {"steps": gen.DEFAULT_STEPS, "batch_size": gen.DEFAULT_BATCH_SIZE}

    def train_conditional(model: nn.Module, g: torch.Generator) -> float:
        loss = diffusion_loss(model, train_set, scheduler, conditional=True)
        return fit(
            model,
            loss,
            len(train_set),
            DIFFUSION_STEPS,
            DIFFUSION_BATCH,
            DIFFUSION_LR,
            g,
            "conditional",
            EMA_DECAY,
        )

    def train_sdedit(model: nn.Module, g: torch.Generator) -> float:
        assert isinstance(model, gen.SDEditModel)
        model.sketch_weights.copy_(fit_sketch(train_set))
        loss = diffusion_loss(model, train_set, scheduler, conditional=False)
        return fit(
            model,
            loss,
            len(train_set),
            DIFFUSION_STEPS,
            DIFFUSION_BATCH,
            DIFFUSION_LR,
            g,
            "unconditional",
            EMA_DECAY,
        )

    def train_regressor(model: nn.Module, g: torch.Generator) -> float:
        loss = regression_loss(model, train_set)
        return fit(
            model, loss, len(train_set), REGRESSOR_STEPS, REGRESSOR_BATCH, REGRESSOR_LR, g, "regressor"
        )

    def conditional_metrics(model: nn.Module) -> dict[str, Any]:
        return {"default": held_out_metrics(model, splits, steps=gen.DEFAULT_STEPS)} | sampling

    def sdedit_metrics(model: nn.Module) -> dict[str, Any]:
        assert isinstance(model, gen.SDEditModel)
        out: dict[str, Any] = {
            f"strength_{s}": held_out_metrics(model, splits, steps=gen.DEFAULT_STEPS, strength=s)
            for s in EVAL_STRENGTHS
        }
        out["default"] = out[f"strength_{gen.DEFAULT_STRENGTH}"]
        out["sketch_only"] = {
            n: image_metrics(model.sketch(d.anatomy), d.reference) for n, d in splits.items()
        }
        return out | sampling | {"strength": gen.DEFAULT_STRENGTH}

    def regressor_metrics(model: nn.Module) -> dict[str, Any]:
        return {"default": held_out_metrics(model, splits)}

    jobs = [
        (
            gen.CONDITIONAL_FILE,
            gen.ConditionalDDPM(),
            train_conditional,
            conditional_metrics,
            diffusion_schedule,
        ),
        (gen.UNCONDITIONAL_FILE, gen.SDEditModel(), train_sdedit, sdedit_metrics, diffusion_schedule),
        (
            gen.REGRESSOR_FILE,
            gen.UNetRegressor(),
            train_regressor,
            regressor_metrics,
            {"steps": REGRESSOR_STEPS, "batch": REGRESSOR_BATCH, "lr": REGRESSOR_LR, "loss": "L1"},
        ),
    ]
    files: dict[str, Any] = {}
    for stream, (name, model, train_fn, metrics_fn, schedule) in enumerate(jobs):
        t0 = time.perf_counter()
        # One seed for the initial weights and one for batches, noise and timesteps, per network.
        gen.init_weights(model, torch.Generator().manual_seed(1000 * TRAIN_SEED + 2 * stream))
        final_loss = train_fn(model, torch.Generator().manual_seed(1000 * TRAIN_SEED + 2 * stream + 1))
        seconds = time.perf_counter() - t0
        data = state_bytes(model)
        write_bytes(out / name, data)
        t1 = time.perf_counter()
        metrics = metrics_fn(model)
        files[name] = {
            "sha256": sha256_bytes(data),
            "bytes": len(data),
            "architecture": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "frame_px": gen.SIZE,
            "training_seed": TRAIN_SEED,
            "schedule": dict(schedule),
            "final_train_loss": round(final_loss, 5),
            "train_seconds": round(seconds, 1),
            "metrics_seconds": round(time.perf_counter() - t1, 1),
            "metrics": metrics,
        }
        log.info("%s: %s", name, json.dumps(files[name]["metrics"]))
    manifest = {
        "format": 1,
        "frame": f"{gen.SIZE} px, bilinear antialias resize of the whole image; output resized bilinearly",
        "diffusion": gen.schedule_config()
        | {
            "unet_channels": list(gen.DIFFUSION_CHANNELS),
            "layers_per_block": gen.DIFFUSION_LAYERS_PER_BLOCK,
            "space_to_depth": gen.PATCH,
        },
        "regressor_channels": list(gen.REGRESSOR_CHANNELS),
        "sketch": {"blur_px": list(gen.SKETCH_BLUR_PX), "ridge": SKETCH_RIDGE},
        "cohorts": {
            "train": {
                "seed": TRAIN_SEED,
                "n_cases": TRAIN_CASES,
                "size": te.COHORT_SIZE,
                "cases": f"0..{split - 1}",
            },
            "validation": {
                "seed": TRAIN_SEED,
                "n_cases": TRAIN_CASES,
                "size": te.COHORT_SIZE,
                "cases": f"{split}..{TRAIN_CASES - 1}",
            },
            "test": {
                "seed": TEST_SEED,
                "n_cases": TEST_CASES,
                "size": te.COHORT_SIZE,
                "cases": "all (audited demo)",
            },
            "build_version": cohort.BUILD_VERSION,
        },
        "evaluation": {
            "noise_seed": EVAL_SEED,
            "metrics": "mean over cases at 256 px; PSNR with data range 1",
            "baseline_mean_training_image": baseline,
        },
        "files": files,
        "training": {
            "command": gen.RETRAIN_COMMAND,
            "torch": torch.__version__,
            "diffusers": _diffusers_version(),
            "threads": threads,
            "machine": platform.machine(),
            "cohort_load_seconds": round(data_s, 1),
            "total_seconds": round(time.perf_counter() - start, 1),
        },
    }
    write_text(out / gen.WEIGHTS_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


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
