"""Inception-v3 features for FID: torch-fidelity's ``FeatureExtractorInceptionV3``, as torchmetrics uses it.

Contract: three channels (the grey image repeated), 299 px, ``uint8`` values 0-255, which is what
torch-fidelity's extractor asserts (``x.dtype == torch.uint8``) before it maps them to ``[-1, 1]``
with ``(x - 128) / 128``. Canonical ``[0, 1]`` images become ``rint(255 x)`` after the crop and the
antialiased resize to 299 px, so the extractor's own TF1-style resize is an identity. The extractor
computes in float32 (float64 is torch-fidelity's only other option), so only ``dtype="fp32"`` is
accepted. Weights come from a local, hash-verified file; nothing is downloaded.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from audit.evaluators.base import Evaluator, InputContract, load_state_dict_verified

__all__ = ["INCEPTION_CONTRACT", "INCEPTION_FEATURES", "InceptionFeatures", "InceptionOutput"]

INCEPTION_CONTRACT = InputContract(
    evaluator="inception-v3-fid", channels=3, size=299, value_range=(0.0, 255.0), integer=True
)
INCEPTION_FEATURES: tuple[str, ...] = ("64", "192", "768", "2048")


@dataclass(frozen=True, eq=False)
class InceptionOutput:
    """``features`` (N, D) float32 from layer ``feature`` (``"2048"``: the pool features of FID)."""

    features: np.ndarray
    feature: str


class InceptionFeatures(Evaluator[InceptionOutput]):
    """FID features from a built torch-fidelity extractor; use :meth:`from_file` to load weights."""

    def __init__(
        self,
        extractor: FeatureExtractorInceptionV3,
        *,
        weights_sha256: str | None = None,
        device: str = "auto",
        dtype: str = "fp32",
    ):
        if dtype != "fp32":
            raise ValueError(f"inception-v3-fid runs in float32 only (torch-fidelity), got dtype {dtype!r}")
        if len(extractor.features_list) != 1:
            raise ValueError(f"expected an extractor with one feature layer, got {extractor.features_list}")
        super().__init__(
            "inception-v3-fid", INCEPTION_CONTRACT, weights_sha256=weights_sha256, device=device, dtype=dtype
        )
        self.feature: str = extractor.features_list[0]
        self.model = extractor.eval().to(self.device)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], sha256: str, *, feature: str = "2048", device: str = "auto"
    ) -> InceptionFeatures:
        """Load torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (a state dict) from ``path``."""
        if feature not in INCEPTION_FEATURES:
            raise ValueError(f"feature must be one of {INCEPTION_FEATURES}, got {feature!r}")
        state = load_state_dict_verified(path, sha256)
        # torch-fidelity loads with weights_only=False; hand it a re-serialised copy of the tensors we
        # already loaded safely, so it never unpickles the user's file.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        try:
            extractor = FeatureExtractorInceptionV3(
                "inception-v3-compat", [feature], feature_extractor_weights_path=buffer
            )
        except RuntimeError as exc:
            raise ValueError(
                f"weights file {path} does not fit torch-fidelity's Inception-v3: {exc}"
            ) from exc
        return cls(extractor, weights_sha256=sha256, device=device)

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        (features,) = self.model(x)
        return {"features": features.float()}

    def _assemble(self, outputs: dict[str, Tensor], n: int) -> InceptionOutput:
        return InceptionOutput(features=outputs["features"].numpy(), feature=self.feature)
