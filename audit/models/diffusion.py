"""Diffusers pipelines as model kinds: text-to-image, ControlNet, img2img (SDEdit) and inpainting.

Every kind loads its pipeline once (from a local directory, or a hub id found in the local Hugging
Face cache, downloading only when online), generates in batches with one ``torch.Generator`` per
sample, converts the RGB output to one channel (BT.601 luma), rejects NaN, wrong-size and
single-value outputs as failed samples, and writes 8-bit PNGs (what the pipelines' VAEs resolve).

Conditions come from case columns with a declared encoding:

* ``image``: the file as RGB, as is (a sketch, an edge map, a colour-coded mask made for the model);
* ``binary``: any nonzero pixel in any channel is white, else black (a binary mask as RGB);
* ``structures``: an RGB mask with one structure per channel (the suite's lungs/heart/aorta
  convention), kept as three channels.

A ``perturbation`` (``"blur=2"``, ``"synonyms=/path/syn.csv"``, ...) applies one robustness-sweep
axis value from :mod:`audit.perturb` to the condition or the prompt before generation, seeded from
the sample's seed; a ``[models.sweep]`` table expands into the model plus one row per value, named
like ``controlnet[blur=2]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from audit import images
from audit.cases import PATH_COLUMNS, Case, is_present
from audit.config_base import ConfigError, ModelSpec, StudySection
from audit.images import XrayImage
from audit.models.base import ModelAdapter, ModelLoadError, SampleFailure, SampleRequest
from audit.models.generation import (
    GenerationSpec,
    GenerationStats,
    Timer,
    cpu_generators,
    free_memory,
    output_problem,
    resolve_device,
    to_grey,
    torch_dtype,
    validate_generation,
)
from audit.models.sweep import (
    Perturbation,
    SweepSpec,
    base_name,
    check_sweep,
    resolve_perturbation,
)

Encoding = Literal["image", "binary", "structures"]
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# Axis values for conditions are numbers; prompt axes take text (a synonym file, a fixed prompt).
@dataclasses.dataclass(frozen=True)
class DiffusersSpec(GenerationSpec):
    path: str = ""  # local directory or hub id ("org/name") of the (base) pipeline
    revision: str | None = None  # hub revision (branch, tag or commit) to pin
    steps: int = 50
    guidance: float = 7.5
    height: int = 512
    width: int = 512
    # Prompt template over case columns: "{prompt}", "chest x-ray, {labels}" ({labels} joins with ", ").
    prompt: str = "{prompt}"
    negative_prompt: str = ""
    scheduler: str | None = None  # a diffusers scheduler class, e.g. "DDIMScheduler"; default: the pipeline's
    attention_slicing: bool = False
    vae_tiling: bool = False
    compile: bool = False  # torch.compile the denoiser (pays off from a few hundred images on a GPU)
    perturbation: str = ""  # one sweep axis value, "axis=value"; set by [models.sweep] or by hand
    sweep: SweepSpec | None = None

    # Per kind: which loader builds the pipeline and whether there is a condition column.
    has_condition: ClassVar[bool] = False


@dataclasses.dataclass(frozen=True)
class Text2ImgSpec(DiffusersSpec):
    pass


@dataclasses.dataclass(frozen=True)
class ControlNetSpec(DiffusersSpec):
    # A string or a list; resolve_diffusers turns every one of these into a tuple.
    controlnet: str | tuple[str, ...] = ()  # one or more ControlNets (local dirs or hub ids)
    condition: str | tuple[str, ...] = ("anatomy_mask",)  # case column per ControlNet
    encoding: Encoding | tuple[Encoding, ...] = ("structures",)  # per condition (one value applies to all)
    conditioning_scale: float | tuple[float, ...] = (1.0,)  # per ControlNet (one value applies to all)

    has_condition: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class Img2ImgSpec(DiffusersSpec):
    condition: str = "anatomy_mask"  # the image SDEdit starts from
    encoding: Encoding = "structures"
    strength: float = 0.6  # t0: the fraction of the schedule that is re-noised and denoised

    has_condition: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class InpaintSpec(DiffusersSpec):
    condition: str = "pathology_mask"  # where to paint; the real reference image is kept elsewhere
    strength: float = 1.0
    prompt: str = "{labels}"

    has_condition: ClassVar[bool] = True


# ------------------------------------------------------------------------------------------- config


def is_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.sep in path and not HUB_ID.match(path)


def resolve_diffusers(spec: ModelSpec, base_dir: Path) -> ModelSpec:
    """Relative local paths against the config's directory; single strings to one-item lists."""
    assert isinstance(spec, DiffusersSpec)

    def local(p: str) -> str:
        if p.startswith("~"):
            return str(Path(p).expanduser())
        if is_local(p) or (base_dir / p).is_dir():
            return str((base_dir / p).resolve()) if not Path(p).is_absolute() else p
        return p

    changes: dict[str, Any] = {"path": local(spec.path) if spec.path else spec.path}
    if isinstance(spec, ControlNetSpec):
        changes["controlnet"] = tuple(local(p) for p in _as_tuple(spec.controlnet))
        changes["condition"] = _as_tuple(spec.condition)
        changes["encoding"] = _as_tuple(spec.encoding)
        changes["conditioning_scale"] = tuple(float(x) for x in _as_tuple(spec.conditioning_scale))
    changes |= resolve_perturbation(spec, base_dir)
    return dataclasses.replace(spec, **changes)


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def validate_diffusers(spec: ModelSpec, study: StudySection, where: str) -> None:
    assert isinstance(spec, DiffusersSpec)
    validate_generation(spec, where)
    if not spec.path:
        raise ConfigError(
            f"{where}: missing required key 'path' (a local pipeline directory or hub id, e.g. path = \"/models/sd15-cxr\")"
        )
    if spec.steps < 1:
        raise ConfigError(f"{where}: steps must be >= 1, got {spec.steps}")
    for key in ("height", "width"):
        value = getattr(spec, key)
        if value < 8 or value % 8:
            raise ConfigError(
                f"{where}: {key} must be a positive multiple of 8 (the VAE's stride), got {value}"
            )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(spec.prompt) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}: prompt template {spec.prompt!r} is malformed ({exc})") from None
    if any(not f.isidentifier() for f in fields):
        raise ConfigError(
            f"{where}: prompt template {spec.prompt!r} may only use plain column names like {{prompt}}"
        )
    for column in _as_tuple(getattr(spec, "condition", ())):
        if column not in PATH_COLUMNS:
            raise ConfigError(
                f"{where}: condition {column!r} is not an image column of the case manifest; use one of "
                f"{', '.join(PATH_COLUMNS)} (a sketch or any other control map goes in `control`)"
            )
    if isinstance(spec, (Img2ImgSpec, InpaintSpec)) and not 0 < spec.strength <= 1:
        raise ConfigError(f"{where}: strength must be in (0, 1], got {spec.strength}")
    if isinstance(spec, ControlNetSpec):
        n = len(spec.controlnet)
        if n == 0:
            raise ConfigError(
                f"{where}: missing required key 'controlnet' (e.g. controlnet = \"/models/cn-anatomy\")"
            )
        if len(spec.condition) != n:
            raise ConfigError(
                f"{where}: {n} controlnet(s) but {len(spec.condition)} condition column(s); give one per ControlNet"
            )
        for key in ("encoding", "conditioning_scale"):
            if len(getattr(spec, key)) not in (1, n):
                raise ConfigError(f"{where}: {key} needs one value, or one per ControlNet ({n})")
    check_sweep(spec, where)


# ------------------------------------------------------------------------------------------- inputs


def prompt_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def render_prompt(template: str, case: Case) -> str:
    """The template with case columns filled in; ``{labels}`` joins the case's labels with ", "."""
    values: dict[str, str] = {}
    for field in prompt_fields(template):
        if field == "labels":
            values[field] = ", ".join(case.labels())
        else:
            values[field] = str(case.fields.get(field, ""))
    return template.format_map(values)


def load_condition(path: Path, encoding: str) -> np.ndarray:
    """A condition file as float32 ``(C, H, W)`` in [0, 1] (see the module docstring for encodings)."""
    if encoding == "image":
        from PIL import Image

        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
    mask = images.read_mask(path)  # (H, W, C) bool
    if encoding == "binary":
        return mask.any(axis=2)[None].astype(np.float32)
    if mask.shape[2] != 3:
        raise images.ImageReadError(
            f'{path}: encoding = "structures" needs an RGB mask with one structure per channel, but this '
            f'mask has {mask.shape[2]} channel; use encoding = "binary" for a single-structure mask'
        )
    return np.ascontiguousarray(np.moveaxis(mask, -1, 0).astype(np.float32))


def condition_image(condition: np.ndarray) -> Any:
    """``(C, H, W)`` [0, 1] as the RGB PIL image diffusers pipelines take (one channel repeated)."""
    from PIL import Image

    rgb = np.repeat(condition, 3, axis=0) if condition.shape[0] == 1 else condition
    return Image.fromarray(np.rint(np.moveaxis(rgb, 0, -1) * 255).astype(np.uint8), mode="RGB")


# ------------------------------------------------------------------------------------------- adapter


class DiffusersAdapter(ModelAdapter):
    spec: DiffusersSpec
    generates = True
    loads_model = True
    pipeline_role: ClassVar[str] = "text2img"

    def __init__(self, spec: ModelSpec, study: StudySection):
        super().__init__(spec, study)
        self._pipe: Any = None
        self._device: Any = None
        self._stats = GenerationStats()
        self._weights: str | None = None
        self._scheduler: str | None = None
        self._perturbation = Perturbation(self.spec.perturbation)

    # -- checks before any work

    def preflight(self, cases: Sequence[Case]) -> list[tuple[Case, int, str]]:
        spec = self.spec
        for source in self._sources():
            if is_local(source) and not Path(source).is_dir():
                raise ModelLoadError(
                    f"model directory {source} does not exist; point path at a diffusers pipeline directory "
                    "(the one with model_index.json) or give a hub id like org/name"
                )
        problems = []
        for case in cases:
            reasons = self.case_problems(case)
            problems += [(case, s, r) for r in reasons for s in range(self.samples_per_case())]
        del spec
        return problems

    def case_problems(self, case: Case) -> list[str]:
        reasons = []
        for field in prompt_fields(self.spec.prompt):
            if field != "labels" and not is_present(case.fields.get(field)):
                reasons.append(
                    f"column {field!r} (used by the prompt template {self.spec.prompt!r}) is empty or missing "
                    "for this case"
                )
        for column in self._condition_columns():
            if case.path(column) is None:
                reasons.append(f"column {column!r} (the model's condition) is empty or missing for this case")
        return reasons

    def _condition_columns(self) -> tuple[str, ...]:
        return ()

    def _sources(self) -> list[str]:
        return [self.spec.path]

    def batch_size(self) -> int:
        return self.spec.batch_size

    def seed_name(self) -> str:
        # A sweep row starts from its base model's noise, so only the perturbation differs.
        return base_name(self.spec.name, self.spec.perturbation)

    # -- loading

    def _load(self) -> Any:
        if self._pipe is not None:
            return self._pipe
        import torch

        timer = Timer()
        self._device = resolve_device(self.spec)
        dtype = torch_dtype(self.spec)
        self._stats.start(self._device)
        self._stats.dtype = self.spec.dtype
        pipe = self._build(dtype)
        if self.spec.scheduler:
            import diffusers

            cls = getattr(diffusers, self.spec.scheduler, None)
            if cls is None or not hasattr(cls, "from_config"):
                raise ModelLoadError(
                    f"scheduler {self.spec.scheduler!r} is not a diffusers scheduler class "
                    "(e.g. DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler)"
                )
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
        if self.spec.attention_slicing:
            pipe.enable_attention_slicing()
        if self.spec.vae_tiling:
            pipe.vae.enable_tiling()
        pipe = pipe.to(self._device)
        if self.spec.compile:
            for name in ("unet", "transformer"):
                if getattr(pipe, name, None) is not None:
                    setattr(pipe, name, torch.compile(getattr(pipe, name)))
        pipe.set_progress_bar_config(disable=True)
        self._scheduler = type(pipe.scheduler).__name__
        self._pipe = pipe
        self._stats.load_seconds = timer.seconds
        return pipe

    def _build(self, dtype: Any) -> Any:
        from diffusers import AutoPipelineForText2Image

        return self._from_pretrained(AutoPipelineForText2Image, self.spec.path, dtype)

    def _from_pretrained(self, cls: Any, source: str, dtype: Any, **extra: Any) -> Any:
        """Load from a local directory, or a hub id from the local cache first, then (if allowed) the hub."""
        kwargs = {"torch_dtype": dtype, **extra}
        if self.spec.revision:
            kwargs["revision"] = self.spec.revision
        what = f"{cls.__name__.removeprefix('AutoPipelineFor')} {source}"
        if is_local(source):
            try:
                obj = cls.from_pretrained(source, **kwargs)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot load {what}: {_first_line(exc)}") from exc
            self._note_weights(source, local=True)
            return obj
        try:
            obj = cls.from_pretrained(source, local_files_only=True, **kwargs)
        except Exception as cached_exc:
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
                raise ModelLoadError(_offline_message(source, self.spec.revision, cached_exc)) from cached_exc
            try:
                obj = cls.from_pretrained(source, **kwargs)
            except Exception as exc:
                raise ModelLoadError(_offline_message(source, self.spec.revision, exc)) from exc
        self._note_weights(source, local=False)
        return obj

    def _note_weights(self, source: str, local: bool) -> None:
        ident = (
            weights_identity(source, self.spec.revision)
            if local
            else hub_identity(source, self.spec.revision)
        )
        self._weights = ident if self._weights is None else f"{self._weights};{ident}"

    # -- generation

    def produce(
        self, requests: Sequence[SampleRequest], reference: Callable[[Case], XrayImage]
    ) -> list[Path | SampleFailure]:
        # Cases the model cannot take (no condition file, an empty prompt column) fail on their own;
        # preflight stops the run on them unless --keep-going.
        problems = {id(r): self.case_problems(r.case) for r in requests}
        usable = [r for r in requests if not problems[id(r)]]
        done = dict(zip(map(id, usable), self._generate(usable, reference), strict=True)) if usable else {}
        return [done[id(r)] if id(r) in done else SampleFailure("; ".join(problems[id(r)])) for r in requests]

    def _generate(
        self, requests: Sequence[SampleRequest], reference: Callable[[Case], XrayImage]
    ) -> list[Path | SampleFailure]:
        import torch

        pipe = self._load()
        timer = Timer()
        prompts = [self._prompt(r) for r in requests]
        kwargs = self._call_kwargs(requests, reference)
        try:
            with torch.inference_mode():
                result = pipe(
                    prompt=prompts,
                    negative_prompt=[self.spec.negative_prompt] * len(requests)
                    if self.spec.negative_prompt
                    else None,
                    num_inference_steps=self.spec.steps,
                    guidance_scale=self.spec.guidance,
                    generator=cpu_generators([r.seed for r in requests]),
                    output_type="np",
                    **kwargs,
                )
        except torch.cuda.OutOfMemoryError as exc:
            free_memory()
            raise ModelLoadError(
                f"out of GPU memory at batch_size = {self.spec.batch_size} ({_first_line(exc)}); lower "
                "batch_size, or set attention_slicing = true / vae_tiling = true"
            ) from exc
        out: list[Path | SampleFailure] = []
        for req, image in zip(requests, result.images, strict=True):
            out.append(self._write(req, image))
        self._stats.seconds += timer.seconds
        self._stats.images += len(requests)
        return out

    def _write(self, req: SampleRequest, image: Any) -> Path | SampleFailure:
        try:
            pixels = to_grey(image)
        except ValueError as exc:
            return SampleFailure(f"unusable pipeline output: {exc}")
        problem = output_problem(pixels, (self.spec.height, self.spec.width))
        if problem:
            return SampleFailure(problem)
        images.write_png(req.dest, np.clip(pixels, 0.0, 1.0), bit_depth=8)
        return req.dest

    def _prompt(self, req: SampleRequest) -> str:
        return self._perturbation.prompt(render_prompt(self.spec.prompt, req.case), req.seed)

    def _condition(self, req: SampleRequest, column: str, encoding: str) -> np.ndarray:
        path = req.case.path(column)
        assert path is not None  # preflight / case_problems reject cases without it
        return self._perturbation.condition(load_condition(path, encoding), req.seed)

    def _call_kwargs(
        self, requests: Sequence[SampleRequest], reference: Callable[[Case], XrayImage]
    ) -> dict[str, Any]:
        return {"height": self.spec.height, "width": self.spec.width}

    def sample_info(self, request: SampleRequest) -> dict[str, Any]:
        return {
            "steps": self.spec.steps,
            "guidance": self.spec.guidance,
            "strength": getattr(self.spec, "strength", None),
            "scheduler": self._scheduler,
            "dtype": self.spec.dtype,
            "weights": self._weights,
            "prompt": self._prompt(request),
            "perturbation": self.spec.perturbation or None,
        }

    def release(self) -> None:
        self._pipe = None
        free_memory()

    def stats(self) -> dict[str, Any]:
        return self._stats.as_dict()


class Text2ImgAdapter(DiffusersAdapter):
    spec: Text2ImgSpec


class ControlNetAdapter(DiffusersAdapter):
    spec: ControlNetSpec

    def _sources(self) -> list[str]:
        return [self.spec.path, *self.spec.controlnet]

    def _condition_columns(self) -> tuple[str, ...]:
        return self.spec.condition

    def _build(self, dtype: Any) -> Any:
        from diffusers import AutoPipelineForText2Image, ControlNetModel

        nets = [self._from_pretrained(ControlNetModel, p, dtype) for p in self.spec.controlnet]
        return self._from_pretrained(
            AutoPipelineForText2Image, self.spec.path, dtype, controlnet=nets[0] if len(nets) == 1 else nets
        )

    def _call_kwargs(self, requests, reference):  # type: ignore[no-untyped-def]
        spec = self.spec
        n = len(spec.controlnet)
        encodings = spec.encoding * n if len(spec.encoding) == 1 else spec.encoding
        scales = spec.conditioning_scale * n if len(spec.conditioning_scale) == 1 else spec.conditioning_scale
        # Several ControlNets take one list per sample ([net 1 image, net 2 image, ...]): a list per
        # net would be read as per-sample lists and silently swap conditions between samples.
        per_sample = [
            [
                condition_image(self._condition(r, column, enc))
                for column, enc in zip(spec.condition, encodings, strict=True)
            ]
            for r in requests
        ]
        return {
            "height": spec.height,
            "width": spec.width,
            "image": [conds[0] for conds in per_sample] if n == 1 else per_sample,
            "controlnet_conditioning_scale": scales[0] if n == 1 else list(scales),
        }


class Img2ImgAdapter(DiffusersAdapter):
    spec: Img2ImgSpec

    def _condition_columns(self) -> tuple[str, ...]:
        return (self.spec.condition,)

    def _build(self, dtype: Any) -> Any:
        from diffusers import AutoPipelineForImage2Image

        return self._from_pretrained(AutoPipelineForImage2Image, self.spec.path, dtype)

    def _call_kwargs(self, requests, reference):  # type: ignore[no-untyped-def]
        size = (self.spec.width, self.spec.height)
        start = [
            condition_image(self._condition(r, self.spec.condition, self.spec.encoding)).resize(size)
            for r in requests
        ]
        return {"image": start, "strength": self.spec.strength}


class InpaintAdapter(DiffusersAdapter):
    spec: InpaintSpec

    def _condition_columns(self) -> tuple[str, ...]:
        return (self.spec.condition,)

    def _build(self, dtype: Any) -> Any:
        from diffusers import AutoPipelineForInpainting

        return self._from_pretrained(AutoPipelineForInpainting, self.spec.path, dtype)

    def _call_kwargs(self, requests, reference):  # type: ignore[no-untyped-def]
        from PIL import Image

        base, masks = [], []
        for r in requests:
            pixels = reference(r.case).pixels
            base.append(condition_image(pixels[None]))
            cond = self._condition(r, self.spec.condition, "binary")
            masks.append(Image.fromarray(np.rint(cond[0] * 255).astype(np.uint8), mode="L"))
        return {
            "image": base,
            "mask_image": masks,
            "strength": self.spec.strength,
            "height": self.spec.height,
            "width": self.spec.width,
        }


# ------------------------------------------------------------------------------------------- identity


def weights_identity(directory: str, revision: str | None = None) -> str:
    """``sha256:<digest>`` over the names, sizes and sha256 of a local model directory's weight and
    config files: two directories with the same files get the same identity wherever they live."""
    from audit.atomic import sha256_file

    root = Path(directory)
    entries = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (
            ".safetensors",
            ".bin",
            ".pt",
            ".ckpt",
            ".json",
            ".txt",
            ".model",
        ):
            entries.append([path.relative_to(root).as_posix(), path.stat().st_size, sha256_file(path)])
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return f"sha256:{digest}"


def hub_identity(repo: str, revision: str | None) -> str:
    """``hub:<repo>@<commit>`` from the local snapshot the pipeline was loaded from."""
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(repo, revision=revision, local_files_only=True))
        return f"hub:{repo}@{snapshot.name}"
    except Exception:  # noqa: BLE001 - the identity is informative; loading already succeeded
        return f"hub:{repo}@{revision or 'unknown'}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _offline_message(repo: str, revision: str | None, exc: BaseException) -> str:
    rev = f" (revision {revision})" if revision else ""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return (
        f"model {repo}{rev} is not a local directory, is not in the Hugging Face cache ({cache}), and could "
        f"not be downloaded ({_first_line(exc)}). On a machine with internet run "
        f"`huggingface-cli download {repo}{' --revision ' + revision if revision else ''} --local-dir DIR`, "
        'copy DIR here and set path = "DIR" (or copy the whole Hugging Face cache)'
    )
