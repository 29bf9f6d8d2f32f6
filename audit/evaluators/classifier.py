"""Pathology classifier: a torchxrayvision DenseNet-121, probabilities plus pooled features.

Probabilities are computed here from the model's linear head, never taken from ``model.forward``:
xrv's forward returns logits, ``sigmoid(logits)`` (``apply_sigmoid``) or ``op_norm(sigmoid(logits))``
(when ``op_threshs`` is set, as with named weights), and older xrv versions differed again, which is
how callers ended up applying the sigmoid twice. Reading the head's logits and applying the sigmoid
exactly once makes the result independent of those flags. When the model carries operating points,
xrv's ``op_norm`` is applied after the sigmoid (so 0.5 is each class's calibrated threshold, the
convention of :mod:`audit.metrics.functional.clinical`); ``use_op_norm=False`` gives plain sigmoids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchxrayvision as xrv
from torch import Tensor, nn

from audit.evaluators.base import Evaluator, InputContract, load_state_dict_verified, strip_data_parallel

__all__ = ["DEFAULT_WEIGHTS", "XRV_CLASSIFIER_CONTRACT", "ClassifierOutput", "PathologyClassifier"]

DEFAULT_WEIGHTS = "densenet121-res224-all"
XRV_CLASSIFIER_CONTRACT = InputContract(
    evaluator="xrv-densenet121", channels=1, size=224, value_range=(-1024.0, 1024.0)
)


@dataclass(frozen=True, eq=False)
class ClassifierOutput:
    """``probabilities`` (N, C) in ``pathologies`` order and pooled ``features`` (N, 1024), float32.

    ``calibration`` is ``"sigmoid"`` or ``"sigmoid+op_norm"``. An empty pathology name marks an
    output the weights were not trained for (xrv keeps such slots; op_norm pins them to 0.5).
    """

    probabilities: np.ndarray
    features: np.ndarray
    pathologies: tuple[str, ...]
    calibration: str


class PathologyClassifier(Evaluator[ClassifierOutput]):
    """Wraps an ``xrv.models.DenseNet``; build it with :meth:`from_file` or pass a built module."""

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str = "xrv-densenet121",
        weights_sha256: str | None = None,
        pathologies: Sequence[str] | None = None,
        use_op_norm: bool = True,
        device: str = "auto",
        dtype: str = "fp32",
    ):
        super().__init__(
            name, XRV_CLASSIFIER_CONTRACT, weights_sha256=weights_sha256, device=device, dtype=dtype
        )
        head = getattr(model, "classifier", None)
        if not isinstance(head, nn.Linear) or not callable(getattr(model, "features2", None)):
            raise TypeError(
                f"{name}: expected an xrv DenseNet whose .classifier is a plain nn.Linear (logits) and which "
                f"has .features2; got {type(model).__name__} with classifier {type(head).__name__}. A head that "
                "already ends in a sigmoid would have it applied twice."
            )
        names = tuple(
            pathologies if pathologies is not None else getattr(model, "pathologies", model.targets)
        )
        if len(names) != head.out_features:
            raise ValueError(
                f"{name}: {len(names)} pathology names for a head with {head.out_features} outputs; pass "
                "pathologies= with one name per output"
            )
        self.pathologies: tuple[str, ...] = names
        op_threshs = getattr(model, "op_threshs", None)
        # Our own float32 copy: model.to(fp16) would also cast the buffer.
        self.op_threshs: Tensor | None = (
            op_threshs.detach().to(self.device, torch.float32)
            if (use_op_norm and op_threshs is not None)
            else None
        )
        if self.op_threshs is not None and self.op_threshs.numel() != head.out_features:
            raise ValueError(
                f"{name}: op_threshs has {self.op_threshs.numel()} entries, head {head.out_features}"
            )
        self.calibration = "sigmoid+op_norm" if self.op_threshs is not None else "sigmoid"
        self.model = model.eval().to(device=self.device, dtype=self.dtype)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        sha256: str,
        *,
        weights: str = DEFAULT_WEIGHTS,
        use_op_norm: bool = True,
        device: str = "auto",
        dtype: str = "fp32",
    ) -> PathologyClassifier:
        """Load local weights for the named xrv weights (labels and operating points come from xrv).

        The file may hold a state dict or a whole pickled xrv DenseNet (the format of xrv's own
        ``.pt`` downloads), which is read without running any of its code
        (:func:`~audit.evaluators.base.load_state_dict_verified`). The sha256 is checked before
        anything is unpickled. Nothing is downloaded.
        """
        if weights not in xrv.models.model_urls or not weights.startswith("densenet"):
            known = sorted(k for k in xrv.models.model_urls if k.startswith("densenet"))
            raise ValueError(f"unknown xrv DenseNet weights {weights!r}; known: {known}")
        meta = xrv.models.model_urls[weights]
        state = load_state_dict_verified(path, sha256)
        model = xrv.models.DenseNet(weights=None, num_classes=len(meta["labels"]))
        try:
            model.load_state_dict(strip_data_parallel(state))
        except RuntimeError as exc:
            raise ValueError(f"weights file {path} does not fit xrv DenseNet {weights!r}: {exc}") from exc
        if "op_threshs" in meta:
            model.op_threshs = torch.tensor(meta["op_threshs"], dtype=torch.float32)
        return cls(
            model,
            name=f"xrv-{weights}",
            weights_sha256=sha256,
            pathologies=meta["labels"],
            use_op_norm=use_op_norm,
            device=device,
            dtype=dtype,
        )

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.model.features2(x)
        logits = self.model.classifier(features).float()
        probs = torch.sigmoid(logits)
        if self.op_threshs is not None:
            probs = xrv.models.op_norm(probs, self.op_threshs)
        return {"probabilities": probs, "features": features.float()}

    def _assemble(self, outputs: dict[str, Tensor], n: int) -> ClassifierOutput:
        return ClassifierOutput(
            probabilities=outputs["probabilities"].numpy(),
            features=outputs["features"].numpy(),
            pathologies=self.pathologies,
            calibration=self.calibration,
        )
