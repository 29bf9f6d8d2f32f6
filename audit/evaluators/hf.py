"""Hugging Face image backbones as feature evaluators: RadDino (CheXGenBench's FD/KID/PRDC) and any
``hf:ORG/NAME@REVISION`` a study names.

The features are the backbone's ``pooler_output`` (for DINOv2 models such as RadDino: the
layer-normed CLS token), one vector per image. Preprocessing is the model's own image processor, read
from the pinned ``preprocessor_config.json``, at the model's own resolution (RadDino: shortest edge to
518 px, bicubic, centre crop 518, its own mean/std), never a fixed 299 px as in CheXGenBench. A
canonical image (float ``(H, W)`` in ``[0, 1]``) reaches the processor the way the model card feeds it:
as an 8-bit RGB PIL image (``rint(255 x)``, grey repeated), so the processor's own ``1/255`` rescale
applies exactly once.

Loading is local only: every pinned file is read once and hashed, and exactly those bytes are
written to a private temporary folder from which ``transformers`` builds the model
(``use_safetensors=True``, ``local_files_only=True``, ``trust_remote_code=False``): nothing else in
the store folder, and nothing changed after the check, can reach the model. A config that asks for remote code
(``auto_map``) or a snapshot without safetensors weights is refused: those paths execute or unpickle
code from the download.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from audit.evaluators.base import ContractError, Evaluator, InputContract, read_verified

__all__ = ["HFFeatures", "HFFeaturesOutput", "processor_description", "raddino_architecture"]


@dataclass(frozen=True, eq=False)
class HFFeaturesOutput:
    """``features`` (N, D) float32: the backbone's ``pooler_output`` per image."""

    features: np.ndarray


def processor_description(processor: Any) -> str:
    """What the processor does, in one line, for run.json and the report."""
    d = processor.to_dict()
    keys = ("size", "crop_size", "do_center_crop", "resample", "do_rescale", "rescale_factor")
    keys += ("do_normalize", "image_mean", "image_std")
    parts = [f"{k}={_plain(d[k])}" for k in keys if k in d]
    return f"{type(processor).__name__}({', '.join(parts)}); input rint(255x) uint8 grey as RGB"


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [round(v, 6) if isinstance(v, float) else v for v in value]
    if isinstance(value, float):
        return round(value, 8)
    if hasattr(value, "value"):  # PIL.Image.Resampling
        return getattr(value, "name", value.value)
    return value


class HFFeatures(Evaluator[HFFeaturesOutput]):
    """A transformers vision backbone and its image processor; ``run`` gives ``pooler_output`` features."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        name: str,
        weights_sha256: str | None,
        device: str = "auto",
        dtype: str = "fp32",
    ):
        crop = _output_size(processor)
        contract = InputContract(evaluator=name, channels=3, size=crop, value_range=(-1e4, 1e4))
        super().__init__(name, contract, weights_sha256=weights_sha256, device=device, dtype=dtype)
        self.processor = processor
        self.preprocessing = processor_description(processor)
        self.model = model.eval().to(device=self.device, dtype=self.dtype)

    @classmethod
    def from_dir(
        cls,
        directory: str | os.PathLike[str],
        files: Mapping[str, str],
        *,
        name: str,
        weights_file: str = "model.safetensors",
        device: str = "auto",
        dtype: str = "fp32",
    ) -> HFFeatures:
        """Build from a local snapshot after checking every file in ``files`` (name -> sha256)."""
        import tempfile

        from transformers import AutoImageProcessor, AutoModel

        root = Path(directory)
        if weights_file not in files or not weights_file.endswith(".safetensors"):
            raise ContractError(
                f"{name}: the snapshot must pin safetensors weights ({weights_file}); pickled "
                "pytorch_model.bin files are not loaded"
            )
        # transformers reads whatever else lies in a model folder (a stray processor_config.json
        # overrides the pinned preprocessor_config.json) and reads it after our check; so it gets a
        # private folder holding exactly the verified bytes and nothing else.
        with tempfile.TemporaryDirectory(prefix="xray-audit-hf-") as private:
            for filename, sha in files.items():
                data = read_verified(root / filename, sha)  # raises naming the file
                (Path(private) / filename).write_bytes(data)
                del data
            config = json.loads((Path(private) / "config.json").read_text())
            if "auto_map" in config:
                raise ContractError(
                    f"{name}: {root / 'config.json'} asks for remote code (auto_map); only architectures "
                    "built into transformers are loaded"
                )
            common = {"local_files_only": True, "trust_remote_code": False}
            model = AutoModel.from_pretrained(private, use_safetensors=True, **common)
            processor = AutoImageProcessor.from_pretrained(private, **common)
        return cls(
            model, processor, name=name, weights_sha256=files[weights_file], device=device, dtype=dtype
        )

    def _pixel_values(self, images: Sequence[np.ndarray], batch_index: int) -> Tensor:
        from PIL import Image

        pil = []
        for i, im in enumerate(images):
            arr = np.asarray(im)
            if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating) or min(arr.shape) == 0:
                raise ContractError(
                    f"{self.name}: image {i} of batch {batch_index} must be a non-empty 2-D float array in "
                    f"[0, 1]; got {arr.dtype} {arr.shape}"
                )
            if not (np.nanmin(arr) >= 0.0 and np.nanmax(arr) <= 1.0) or np.isnan(arr).any():
                raise ContractError(
                    f"{self.name}: image {i} of batch {batch_index} has values outside [0, 1]. Fix: pass "
                    "images as audit.images.read_image returns them"
                )
            grey = np.rint(arr * 255.0).astype(np.uint8)
            pil.append(Image.fromarray(grey, mode="L").convert("RGB"))
        x = self.processor(images=pil, return_tensors="pt")["pixel_values"].float()
        if x.ndim != 4 or tuple(x.shape[1:]) != self.contract.shape or not bool(torch.isfinite(x).all()):
            raise ContractError(
                f"{self.name}: the image processor gave {tuple(x.shape)}, expected (N, "
                f"{', '.join(map(str, self.contract.shape))}) finite values"
            )
        return x

    def run(self, images: Sequence[np.ndarray], batch_size: int = 16) -> HFFeaturesOutput:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(images) == 0:
            raise ValueError(f"{self.name}: no images to evaluate")
        parts = []
        with torch.inference_mode():
            for index, start in enumerate(range(0, len(images), batch_size)):
                x = self._pixel_values(images[start : start + batch_size], index)
                parts.append(self._forward(x.to(self.device, self.dtype))["features"].cpu())
        return self._assemble({"features": torch.cat(parts)}, len(images))

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        try:
            out = self.model(pixel_values=x)
        except (TypeError, ValueError) as exc:  # e.g. CLIPModel also wants input_ids
            raise ContractError(
                f"{self.name}: the backbone's forward does not run on pixel_values alone ({exc}); use an "
                "image backbone (DINOv2, ViT, ConvNeXt, Swin), not a two-tower model"
            ) from None
        pooled = getattr(out, "pooler_output", None)
        if pooled is None or pooled.ndim != 2:
            raise ContractError(
                f"{self.name}: the backbone returns no 2-D pooler_output; pick a model whose output has one "
                "(ViT/DINOv2/CLIP vision towers)"
            )
        return {"features": pooled.float()}

    def _assemble(self, outputs: dict[str, Tensor], n: int) -> HFFeaturesOutput:
        return HFFeaturesOutput(features=outputs["features"].numpy())


def _output_size(processor: Any) -> int:
    d = processor.to_dict()
    crop = d.get("crop_size") if d.get("do_center_crop") else None
    size = crop or d.get("size") or {}
    if isinstance(size, int):
        return size
    if "height" in size and size.get("height") == size.get("width"):
        return int(size["height"])
    if "shortest_edge" in size and crop is None:
        raise ContractError(
            "the image processor resizes the shortest edge without a square centre crop; features of "
            "non-square images would then differ in token count"
        )
    raise ContractError(f"cannot tell the processor's output size from {size!r}")


# RadDino's shapes (microsoft/rad-dino config.json / preprocessor_config.json at the pinned revision):
# DINOv2 ViT-B/14 at 518 px. Random-init, for timing and tests only: the real model is always built
# from the verified snapshot.
RADDINO_IMAGE_MEAN = (0.5307, 0.5307, 0.5307)
RADDINO_IMAGE_STD = (0.2583, 0.2583, 0.2583)


def raddino_architecture(seed: int = 0, *, image_size: int = 518, tiny: bool = False) -> tuple[Any, Any]:
    """A random-init ``(Dinov2Model, BitImageProcessor)`` with RadDino's shapes (``tiny``: a 2-layer,
    64-wide model at ``image_size`` for fast tests)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    # ViT-B/14 as in RadDino's config.json; the tiny variant only shrinks width and depth.
    width, depth, heads, mlp = (64, 2, 4, 128) if tiny else (768, 12, 12, 3072)
    config = Dinov2Config(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=mlp,
        patch_size=14,
        image_size=image_size,
        layerscale_value=1.0,
    )
    generator = torch.Generator().manual_seed(seed)
    model = Dinov2Model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    processor = BitImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=list(RADDINO_IMAGE_MEAN),
        image_std=list(RADDINO_IMAGE_STD),
    )
    return model.eval(), processor
