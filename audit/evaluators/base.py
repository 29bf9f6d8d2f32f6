"""The evaluator interface: input contracts, device/dtype resolution and hash-verified weight loading.

An evaluator is a pretrained network the suite runs on images (a pathology classifier, an anatomy
segmenter, the Inception-v3 of FID, or a network a user supplies). Each one states its input as an
:class:`InputContract` and enforces it on every batch, because a wrong input range does not crash a
network: it silently produces plausible numbers. The pipeline from the canonical image of
:mod:`audit.images` (float32 ``(H, W)`` in ``[0, 1]``) to a network input is:

1. center crop to a square of side ``min(H, W)`` (offset ``(H - side) // 2``, ``(W - side) // 2``);
2. resize to ``size`` × ``size`` with bilinear interpolation and antialiasing
   (``torch.nn.functional.interpolate(..., antialias=True)``, which matches Pillow's BILINEAR);
3. map ``[0, 1]`` affinely onto ``value_range`` (``lo + x * (hi - lo)``; for xrv's
   ``[-1024, 1024]`` this is exactly ``xrv.utils.normalize(x, maxval=1)``), rounding to integers
   for integer contracts such as Inception's ``uint8``;
4. repeat the grey channel ``channels`` times.

:meth:`InputContract.check` then verifies shape, dtype and value range of the whole batch before it
is cast to the network's dtype, so an image outside ``[0, 1]`` anywhere in the input raises
:class:`ContractError` instead of reaching the network (and, for ``uint8``, instead of wrapping).

Weights are read once into memory, hashed, compared with the expected sha256 and only then
unpickled, so the bytes that were verified are the bytes that get loaded. No file is ever unpickled
with code execution, pinned or not: :func:`load_verified` is ``torch.load(weights_only=True)``, and
:func:`load_state_dict_verified` (every torchxrayvision and torch-fidelity file) also reads
torchxrayvision's pickled DenseNet modules, through inert stand-ins for an explicit allowlist of
classes (:mod:`audit.evaluators.safe_pickle`); anything else a pickle names raises
:class:`UnsafePickleError`.
"""

from __future__ import annotations

import io
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from audit.atomic import sha256_bytes
from audit.evaluators.safe_pickle import (
    PICKLE_ALLOWLIST,
    UnsafePickleError,
    load_state_dict,
    load_weights_only,
)

__all__ = [
    "DTYPES",
    "PICKLE_ALLOWLIST",
    "ContractError",
    "Evaluator",
    "InputContract",
    "UnsafePickleError",
    "WeightsHashError",
    "load_state_dict_verified",
    "load_verified",
    "load_verified_torchscript",
    "read_verified",
    "resolve_device",
    "resolve_dtype",
    "strip_data_parallel",
]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

Output = TypeVar("Output")


class ContractError(ValueError):
    """A batch does not satisfy an evaluator's input contract."""


class WeightsHashError(ValueError):
    """A weights file's sha256 is not the one the caller pinned."""


# --------------------------------------------------------------------------------------------- contract


@dataclass(frozen=True)
class InputContract:
    """What an evaluator's network accepts, and how canonical images are brought there.

    ``integer`` contracts (Inception's uint8) round the mapped values to integers and are cast to
    ``torch.uint8`` for the network; all others are float. ``preprocessing_version`` names this
    pipeline so that cached features can be invalidated when it changes.
    """

    evaluator: str
    channels: int
    size: int
    value_range: tuple[float, float]
    integer: bool = False
    crop: Literal["center-square"] = "center-square"
    resize: Literal["bilinear-antialias"] = "bilinear-antialias"
    preprocessing_version: str = "center-square/bilinear-antialias/affine-v1"

    def __post_init__(self) -> None:
        lo, hi = self.value_range
        if not lo < hi:
            raise ValueError(
                f"{self.evaluator}: value_range must be (lo, hi) with lo < hi, got {self.value_range}"
            )
        if self.channels < 1 or self.size < 1:
            raise ValueError(
                f"{self.evaluator}: channels and size must be >= 1, got {self.channels}, {self.size}"
            )
        if self.integer and not (lo >= 0 and hi <= 255):
            raise ValueError(
                f"{self.evaluator}: integer contracts are uint8, value_range must lie in [0, 255]"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image tensor shape ``(channels, size, size)``."""
        return (self.channels, self.size, self.size)

    def _prepare_one(self, image: np.ndarray, index: int) -> Tensor:
        arr = np.asarray(image)
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
            raise ContractError(
                f"{self.evaluator}: image {index} must be a 2-D float array (H, W) in [0, 1] as "
                f"audit.images returns it; got {arr.dtype} {arr.shape}"
            )
        if min(arr.shape) == 0:
            raise ContractError(f"{self.evaluator}: image {index} is empty, shape {arr.shape}")
        x = torch.from_numpy(np.array(arr, dtype=np.float32))  # a writable copy: image pixels are read-only
        h, w = x.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[top : top + side, left : left + side][None, None]
        if side != self.size:
            lo, hi = x.min(), x.max()
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )
            # The filter weights are non-negative and sum to 1 only up to rounding: a saturated 1.0 can
            # come out as 1.0000001 and fail the range check. Clamping to the image's own range removes
            # that rounding and nothing else, so a truly out-of-range image still fails the check.
            x = x.clamp_(lo, hi)
        return x[0, 0]

    def prepare(self, images: Sequence[np.ndarray]) -> Tensor:
        """Canonical images -> float32 batch ``(N, channels, size, size)`` in the contract's value scale."""
        if len(images) == 0:
            raise ContractError(f"{self.evaluator}: no images to prepare")
        x = torch.stack([self._prepare_one(im, i) for i, im in enumerate(images)])[:, None]
        lo, hi = self.value_range
        x = lo + x * (hi - lo)
        if self.integer:
            x = torch.round(x)  # half to even, like np.rint in audit.images
        return x.expand(-1, self.channels, -1, -1).contiguous()

    def check(self, batch: Tensor, batch_index: int = 0) -> None:
        """Raise :class:`ContractError` unless ``batch`` is a float32 ``(N, C, S, S)`` batch within range."""
        where = f"{self.evaluator}: input contract violated in batch {batch_index}"
        if not isinstance(batch, Tensor):
            raise ContractError(f"{where}: expected a torch.Tensor, got {type(batch).__name__}")
        if batch.dtype != torch.float32:
            raise ContractError(f"{where}: expected dtype torch.float32 before casting, got {batch.dtype}")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.shape or batch.shape[0] == 0:
            raise ContractError(
                f"{where}: expected shape (N>=1, {', '.join(map(str, self.shape))}), got {tuple(batch.shape)}"
            )
        lo, hi = self.value_range
        got_lo, got_hi = float(batch.min()), float(batch.max())
        if not (got_lo >= lo and got_hi <= hi):  # written this way so NaN fails too
            raise ContractError(
                f"{where}: expected values in [{lo:g}, {hi:g}], got [{got_lo:.9g}, {got_hi:.9g}]. "
                "Fix: pass float images in [0, 1] (H x W), as audit.images.read_image returns them."
            )
        if self.integer and not bool(torch.all(batch == torch.round(batch))):
            raise ContractError(f"{where}: expected integer values for a uint8 network input")


# --------------------------------------------------------------------------------------------- device


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; explicit CUDA devices must exist."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", spec):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {spec!r} requested but CUDA is not available; use device='cpu' or 'auto'"
            )
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")


def resolve_dtype(spec: str) -> torch.dtype:
    """``"fp32"`` / ``"fp16"`` / ``"bf16"`` -> the torch dtype."""
    try:
        return DTYPES[spec]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {spec!r}") from None


# --------------------------------------------------------------------------------------------- weights


def _check_sha256(expected: str) -> str:
    if not isinstance(expected, str) or not _SHA256_RE.fullmatch(expected.lower()):
        raise ValueError(f"expected sha256 must be 64 hex digits, got {expected!r}")
    return expected.lower()


def read_verified(path: str | os.PathLike[str], sha256: str) -> bytes:
    """The bytes of ``path``, after checking they hash to ``sha256``.

    The file is read once and the same bytes are hashed and returned, so nothing can swap the file
    between verification and loading.
    """
    expected = _check_sha256(sha256)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {p} does not exist. Fix: check the path in the config")
    data = p.read_bytes()
    actual = sha256_bytes(data)
    if actual != expected:
        raise WeightsHashError(
            f"weights file {p} has sha256 {actual}, expected {expected}. The file is not the one that was "
            "pinned; it was not loaded. Fix: re-download the weights or update the pinned sha256 if the "
            "change is intended."
        )
    return data


def load_verified(path: str | os.PathLike[str], sha256: str) -> Any:
    """``torch.load(weights_only=True)`` of a hash-verified file on CPU.

    A pickle that needs more than torch's tensor types raises :class:`UnsafePickleError`; use
    :func:`load_state_dict_verified` for torchxrayvision's pickled DenseNet modules.
    """
    return load_weights_only(read_verified(path, sha256), path)


def load_state_dict_verified(path: str | os.PathLike[str], sha256: str) -> dict[str, Tensor]:
    """The state dict of a hash-verified weights file: a saved state dict, or an allowlisted pickled module.

    The one loading path for torchxrayvision and torch-fidelity files. A pickled module (xrv's DenseNet
    ``.pt`` downloads, zip or legacy format) is read through inert stand-ins and flattened into what
    its ``state_dict()`` would be; no class from the file is imported or run. Raises
    :class:`WeightsHashError` before anything is unpickled, and :class:`UnsafePickleError` when the
    pickle names a global outside torch's tensor types and :data:`PICKLE_ALLOWLIST`.
    """
    return load_state_dict(read_verified(path, sha256), path)


def load_verified_torchscript(path: str | os.PathLike[str], sha256: str) -> torch.jit.ScriptModule:
    """``torch.jit.load`` of a hash-verified TorchScript file, on CPU."""
    data = read_verified(path, sha256)
    return torch.jit.load(io.BytesIO(data), map_location="cpu")


def strip_data_parallel(state: Any) -> dict[str, Tensor]:
    """A state dict with DataParallel's ``module.`` prefixes removed (when every key has one)."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"expected a state dict (str -> tensor), got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


# --------------------------------------------------------------------------------------------- evaluator


class Evaluator(ABC, Generic[Output]):
    """A pretrained network with an input contract, run batched under ``torch.inference_mode()``.

    Subclasses set :attr:`contract` and the model, and implement :meth:`_forward` (one batch, already
    checked and cast, to a dict of CPU tensors) and :meth:`_assemble` (concatenated tensors to the
    evaluator's output). ``device`` is resolved once, at construction.
    """

    name: str
    contract: InputContract
    weights_sha256: str | None
    device: torch.device
    dtype: torch.dtype

    def __init__(
        self, name: str, contract: InputContract, *, weights_sha256: str | None, device: str, dtype: str
    ):
        self.name = name
        self.contract = contract
        self.weights_sha256 = None if weights_sha256 is None else _check_sha256(weights_sha256)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)

    def _to_model_input(self, batch: Tensor) -> Tensor:
        if self.contract.integer:
            return batch.to(device=self.device, dtype=torch.uint8)
        return batch.to(device=self.device, dtype=self.dtype)

    @abstractmethod
    def _forward(self, x: Tensor) -> dict[str, Tensor]: ...

    @abstractmethod
    def _assemble(self, outputs: dict[str, Tensor], n: int) -> Output: ...

    def run(self, images: Sequence[np.ndarray], batch_size: int = 16) -> Output:
        """Evaluate canonical images (float ``(H, W)`` in ``[0, 1]``) in batches of ``batch_size``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(images) == 0:
            raise ValueError(f"{self.name}: no images to evaluate")
        parts: dict[str, list[Tensor]] = {}
        with torch.inference_mode():
            for index, start in enumerate(range(0, len(images), batch_size)):
                batch = self.contract.prepare(images[start : start + batch_size])
                self.contract.check(batch, batch_index=index)
                for key, value in self._forward(self._to_model_input(batch)).items():
                    parts.setdefault(key, []).append(value.detach().cpu())
        return self._assemble({k: torch.cat(v) for k, v in parts.items()}, len(images))
