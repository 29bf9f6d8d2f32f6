"""What the generating kinds share: device and dtype resolution, per-sample seeding, output checks.

A sample's seed comes from (study seed, model, case_id, sample index) only (``derive_seed``) and
feeds its own ``torch.Generator``, so an image does not depend on batch size, shard or which GPU
made it: diffusers kinds get CPU generators, whose draws diffusers' ``randn_tensor`` moves to the
device, so even CPU and GPU start from the same noise; ``python`` callables get generators on their
device (documented in the contract, so they can draw there directly).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from audit.config_base import ConfigError, ModelSpec

if TYPE_CHECKING:
    import torch

Dtype = Literal["fp32", "fp16", "bf16"]
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# ITU-R BT.601 luma, as PIL's "L" conversion: how a pipeline's RGB output becomes one X-ray channel.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class GenerationSpec(ModelSpec):
    """Keys every generating kind shares."""

    batch_size: int = 8
    dtype: Dtype = "fp32"
    device: str = "auto"  # "auto" = CUDA when present, else CPU; or "cpu", "cuda", "cuda:1"


def validate_generation(spec: GenerationSpec, where: str) -> None:
    if spec.batch_size < 1:
        raise ConfigError(f"{where}: batch_size must be >= 1, got {spec.batch_size}")
    if spec.device != "auto" and spec.device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f'{where}: device must be "auto", "cpu", "cuda", "cuda:N" or "mps", got {spec.device!r}'
        )


def resolve_device(spec: GenerationSpec) -> torch.device:
    """The device once, from the spec; a missing GPU is an error, never a silent CPU fallback."""
    import torch

    from audit.models.base import ModelLoadError

    if spec.device == "auto":
        # Under `accelerate launch` / torchrun each process takes the GPU of its LOCAL_RANK.
        local = os.environ.get("LOCAL_RANK")
        if torch.cuda.is_available():
            device = torch.device(
                "cuda", int(local) % torch.cuda.device_count() if local else torch.cuda.current_device()
            )
        else:
            device = torch.device("cpu")
    else:
        device = torch.device(spec.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(
                f'device = "{spec.device}" but torch sees no CUDA device; use device = "auto" or "cpu"'
            )
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f'device = "{spec.device}" but only {torch.cuda.device_count()} CUDA device(s) are visible'
            )
    if device.type == "cpu" and spec.dtype == "fp16":
        raise ModelLoadError(
            'dtype = "fp16" on the CPU: most pipeline ops have no fp16 CPU kernels (errors or minutes '
            'per image); use dtype = "fp32" or "bf16" there, or run on a GPU'
        )
    return device


def torch_dtype(spec: GenerationSpec) -> torch.dtype:
    import torch

    return getattr(torch, TORCH_DTYPES[spec.dtype])


def cpu_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    import torch

    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def to_grey(image: Any) -> np.ndarray:
    """One output image as float32 ``(H, W)``: RGB through BT.601 luma, integers scaled to [0, 1].

    Accepts numpy arrays ``(H, W)``, ``(H, W, 1|3|4)``, ``(1|3, H, W)``, torch tensors of those
    shapes and PIL images. Raises ``ValueError`` for anything else, or for floats outside [0, 1].
    """
    if hasattr(image, "detach"):  # a torch tensor, without importing torch here
        image = image.detach().float().cpu().numpy()
    elif not isinstance(image, np.ndarray):
        from PIL import Image

        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("I;16") if image.mode.startswith("I") else image)
        else:
            raise ValueError(f"expected an image array, tensor or PIL image, got {type(image).__name__}")
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image dtype {arr.dtype} is not float, uint8 or uint16")
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr @ LUMA
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"image shape {np.shape(image)} is not (H, W), (H, W, C) or (C, H, W)")
    finite = arr[np.isfinite(arr)]
    if finite.size and (finite.min() < -1e-4 or finite.max() > 1 + 1e-4):
        raise ValueError(
            f"float image values span [{finite.min():.4g}, {finite.max():.4g}]; the contract is [0, 1]"
        )
    return arr


def output_problem(pixels: np.ndarray, expected_hw: tuple[int, int] | None) -> str | None:
    """Why an output must not be scored (NaN, wrong size, a single value everywhere), or None."""
    if not np.isfinite(pixels).all():
        bad = int((~np.isfinite(pixels)).sum())
        return (
            f"output contains NaN/inf in {bad} of {pixels.size} pixels (with dtype fp16 this is usually an "
            "overflow in the VAE: try bf16 or fp32)"
        )
    if expected_hw is not None and tuple(pixels.shape) != tuple(expected_hw):
        h, w = pixels.shape
        return f"output is {w}x{h} px (width x height), expected {expected_hw[1]}x{expected_hw[0]}"
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi - lo < 1.0 / 65535:
        return (
            f"output is one value ({lo:.4g}) everywhere: a diverged sampler, or a safety checker that "
            "replaced the image with black"
        )
    return None


class GenerationStats:
    """Wall time, image count and peak GPU memory of one model's generation in this process."""

    def __init__(self) -> None:
        self.load_seconds = 0.0
        self.seconds = 0.0
        self.images = 0
        self.device: str | None = None
        self.dtype: str | None = None

    def start(self, device: torch.device) -> None:
        import torch

        self.device = str(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def as_dict(self) -> dict[str, Any]:
        if self.device is None:
            return {}
        out: dict[str, Any] = {
            "device": self.device,
            "dtype": self.dtype,
            "load_seconds": round(self.load_seconds, 3),
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images / self.seconds, 4) if self.seconds > 0 else None,
            "peak_gpu_memory_mb": None,
        }
        if self.device.startswith("cuda"):
            import torch

            out["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
            out["gpu"] = torch.cuda.get_device_name(self.device)
        return out


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def free_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
