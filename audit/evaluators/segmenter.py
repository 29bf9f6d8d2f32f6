"""Anatomy segmenter: torchxrayvision's ChestX-Det PSPNet, reduced to lungs, heart and aorta masks.

xrv's ``PSPNet`` wrapper takes one channel in ``[-1024, 1024]`` at 512 px, repeats it to three
channels, maps it to ``[0, 1]``, applies the ImageNet ``Normalize`` and returns per-target *logits*
``(N, 14, 512, 512)`` (no sigmoid). We call that forward as is, so its own preprocessing is honoured,
then apply the sigmoid once and threshold at ``> 0.5``. Lungs are the union of the left and right
lung masks. Masks are in the contract's frame: center-cropped square, resized to 512 px.

``PSPNet.__init__`` downloads weights, so :func:`build_pspnet` assembles the same wrapper without
calling it, and :meth:`AnatomySegmenter.from_file` loads a local, hash-verified state dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torchxrayvision.baseline_models.chestx_det import PSPNet
from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

from audit.evaluators.base import Evaluator, InputContract, load_state_dict_verified, strip_data_parallel
from audit.metrics.functional.clinical import ANATOMY_STRUCTURES

__all__ = [
    "MASK_THRESHOLD",
    "PSPNET_CONTRACT",
    "STRUCTURE_TARGETS",
    "AnatomySegmenter",
    "SegmenterOutput",
    "build_pspnet",
    "structure_indices",
]

# The one place where suite structures are tied to ChestX-Det target names; the order of the keys
# is the channel order of the masks and of a case's RGB anatomy_mask (R lungs, G heart, B aorta).
STRUCTURE_TARGETS: dict[str, tuple[str, ...]] = {
    "lungs": ("Left Lung", "Right Lung"),
    "heart": ("Heart",),
    "aorta": ("Aorta",),
}
assert tuple(STRUCTURE_TARGETS) == ANATOMY_STRUCTURES, "mask channels must follow ANATOMY_STRUCTURES"

MASK_THRESHOLD = 0.5
PSPNET_CONTRACT = InputContract(
    evaluator="xrv-pspnet-chestx-det", channels=1, size=512, value_range=(-1024.0, 1024.0)
)


def structure_indices(
    targets: tuple[str, ...] | list[str] = tuple(PSPNet.targets),
) -> dict[str, tuple[int, ...]]:
    """Output channel indices of each structure's targets, looked up by name in ``targets``."""
    missing = [t for names in STRUCTURE_TARGETS.values() for t in names if t not in targets]
    if missing:
        raise ValueError(
            f"segmenter targets {list(targets)} lack {missing}; expected ChestX-Det target names"
        )
    return {s: tuple(list(targets).index(t) for t in names) for s, names in STRUCTURE_TARGETS.items()}


def build_pspnet() -> PSPNet:
    """xrv's PSPNet wrapper with random weights, built without ``PSPNet.__init__`` (which downloads)."""
    model = PSPNet.__new__(PSPNet)
    nn.Module.__init__(model)
    # Mirrors PSPNet.__init__ of torchxrayvision 1.5.7, minus the download.
    model.transform = torchvision.transforms.Compose(
        [torchvision.transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    )
    model.model = pspnet(len(PSPNet.targets))
    return model.eval()


@dataclass(frozen=True, eq=False)
class SegmenterOutput:
    """Boolean ``masks`` (N, len(structures), 512, 512) in the contract's cropped, resized frame."""

    masks: np.ndarray
    structures: tuple[str, ...]


class AnatomySegmenter(Evaluator[SegmenterOutput]):
    """Lungs/heart/aorta masks from a PSPNet-style module returning per-target logits."""

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str = "xrv-pspnet-chestx-det",
        weights_sha256: str | None = None,
        device: str = "auto",
        dtype: str = "fp32",
    ):
        super().__init__(name, PSPNET_CONTRACT, weights_sha256=weights_sha256, device=device, dtype=dtype)
        self.targets: tuple[str, ...] = tuple(getattr(model, "targets", PSPNet.targets))
        self.indices = structure_indices(self.targets)
        self.model = model.eval().to(device=self.device, dtype=self.dtype)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], sha256: str, *, device: str = "auto", dtype: str = "fp32"
    ) -> AnatomySegmenter:
        """Load a local PSPNet state dict (xrv's ``pspnet_chestxray_best_model_4.pth`` format)."""
        state = strip_data_parallel(load_state_dict_verified(path, sha256))
        model = build_pspnet()
        try:
            model.model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"weights file {path} does not fit the ChestX-Det PSPNet: {exc}") from exc
        return cls(model, weights_sha256=sha256, device=device, dtype=dtype)

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.model(x)
        if logits.ndim != 4 or logits.shape[1] != len(self.targets):
            raise ValueError(
                f"{self.name}: expected logits (N, {len(self.targets)}, H, W), got {tuple(logits.shape)}"
            )
        target_masks = torch.sigmoid(logits.float()) > MASK_THRESHOLD
        masks = [target_masks[:, list(idx)].any(dim=1) for idx in self.indices.values()]
        return {"masks": torch.stack(masks, dim=1)}

    def _assemble(self, outputs: dict[str, Tensor], n: int) -> SegmenterOutput:
        return SegmenterOutput(masks=outputs["masks"].numpy(), structures=tuple(self.indices))
