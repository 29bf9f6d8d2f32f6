"""User-supplied evaluators: a TorchScript file, or a state dict plus an architecture name.

The chest networks do not fit knees, hips or fractures, so users bring their own. Each file is pinned
by its own sha256 and verified before it is loaded; the user states the input contract (channels,
size, value range) the network was trained with. Outputs are the network's raw outputs as float32,
``(N, ...)``: the evaluator does not guess whether they are logits or probabilities.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torchvision
import torchxrayvision as xrv
from torch import Tensor, nn

from audit.evaluators.base import (
    Evaluator,
    InputContract,
    load_verified,
    load_verified_torchscript,
    strip_data_parallel,
)

__all__ = ["ARCHITECTURES", "UserEvaluator", "UserOutput", "build_architecture"]


def _xrv_densenet121(num_outputs: int) -> nn.Module:
    return xrv.models.DenseNet(weights=None, num_classes=num_outputs)


def _resnet18(num_outputs: int) -> nn.Module:
    net = torchvision.models.resnet18(weights=None, num_classes=num_outputs)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def _densenet121(num_outputs: int) -> nn.Module:
    net = torchvision.models.densenet121(weights=None, num_classes=num_outputs)
    net.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


# One-channel architectures a state dict may name; random-init constructors, nothing downloads.
ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "xrv-densenet121": _xrv_densenet121,
    "torchvision-resnet18": _resnet18,
    "torchvision-densenet121": _densenet121,
}


def build_architecture(architecture: str, num_outputs: int) -> nn.Module:
    """A random-init, one-input-channel network of a registered architecture."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    return ARCHITECTURES[architecture](num_outputs)


@dataclass(frozen=True, eq=False)
class UserOutput:
    """Raw network ``outputs`` (N, ...) float32; ``labels`` name the last axis when given."""

    outputs: np.ndarray
    labels: tuple[str, ...] | None


class UserEvaluator(Evaluator[UserOutput]):
    """Any module with a user-stated contract; build with :meth:`from_torchscript` or :meth:`from_state_dict`."""

    def __init__(
        self,
        model: nn.Module,
        contract: InputContract,
        *,
        name: str,
        weights_sha256: str | None = None,
        labels: Sequence[str] | None = None,
        device: str = "auto",
        dtype: str = "fp32",
    ):
        super().__init__(name, contract, weights_sha256=weights_sha256, device=device, dtype=dtype)
        self.labels: tuple[str, ...] | None = None if labels is None else tuple(labels)
        self.model = model.eval().to(device=self.device, dtype=self.dtype)

    @classmethod
    def from_torchscript(
        cls,
        path: str | os.PathLike[str],
        sha256: str,
        contract: InputContract,
        *,
        name: str,
        labels: Sequence[str] | None = None,
        device: str = "auto",
        dtype: str = "fp32",
    ) -> UserEvaluator:
        module = load_verified_torchscript(path, sha256)
        return cls(
            module, contract, name=name, weights_sha256=sha256, labels=labels, device=device, dtype=dtype
        )

    @classmethod
    def from_state_dict(
        cls,
        path: str | os.PathLike[str],
        sha256: str,
        architecture: str,
        num_outputs: int,
        contract: InputContract,
        *,
        name: str,
        labels: Sequence[str] | None = None,
        device: str = "auto",
        dtype: str = "fp32",
    ) -> UserEvaluator:
        if contract.channels != 1:
            raise ValueError(
                f"{name}: registered architectures take one input channel, contract has {contract.channels}"
            )
        if labels is not None and len(labels) != num_outputs:
            raise ValueError(f"{name}: {len(labels)} labels for {num_outputs} outputs")
        model = build_architecture(architecture, num_outputs)
        state = strip_data_parallel(load_verified(path, sha256))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(
                f"weights file {path} does not fit architecture {architecture!r} with {num_outputs} outputs: {exc}"
            ) from exc
        return cls(
            model, contract, name=name, weights_sha256=sha256, labels=labels, device=device, dtype=dtype
        )

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        out = self.model(x)
        if not isinstance(out, Tensor) or out.ndim < 1 or out.shape[0] != x.shape[0]:
            raise ValueError(f"{self.name}: expected one output tensor with a batch axis of {x.shape[0]}")
        return {"outputs": out.float()}

    def _assemble(self, outputs: dict[str, Tensor], n: int) -> UserOutput:
        values = outputs["outputs"].numpy()
        if self.labels is not None and (values.ndim != 2 or values.shape[1] != len(self.labels)):
            raise ValueError(
                f"{self.name}: outputs of shape {values.shape} do not match {len(self.labels)} labels"
            )
        return UserOutput(outputs=values, labels=self.labels)
