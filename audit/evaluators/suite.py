"""Which evaluator network produces which metric in a run, resolved once, loaded only when needed.

A study's ``[evaluators]`` table names a source per role:

``classifier``  pathology probabilities and pooled features (pathology_auc/f1, fxd, prdc)
``segmenter``   lungs/heart/aorta masks (dice_*, dice_mask_*)
``features``    the FID feature extractor (fid, kid): Inception-v3, or any ``hf:ORG/NAME@REVISION``
``raddino``     RadDino's CLS features (fd_raddino, kid_raddino, prdc_raddino), as CheXGenBench ranks

:func:`resolve_evaluators` turns that into an :class:`EvaluatorPlan` per role without importing torch
or loading a network: it only checks that verified weights exist (hashing the file). A role whose
weights are missing becomes an :class:`Unavailable` that names the file and the command that fixes
it, so the runner can stop before any work, or with ``--keep-going`` list the metrics it cannot
compute. ``auto`` picks the pretrained network when its verified weights are present and the demo
network otherwise, and the plan records which, so the report can say so next to every number.

:func:`load_backend` builds the network for a plan (torch, torchxrayvision) the first time an image
actually has to be evaluated; a rerun whose outputs are all in the feature cache never loads one.
Every backend maps canonical images (float ``(H, W)`` in ``[0, 1]``) to one output dict per image:

* classifier: ``probs`` float32 (C,) in :attr:`Backend.classes` order, ``features`` float32 (D,)
* segmenter:  ``masks`` bool (3, F, F) in the network's centre-square frame of side F (:func:`mask_frame`)
* features:   ``features`` float32 (D,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from audit.config import EvaluatorsSection, MetricsSection
from audit.feature_cache import EvaluatorKey

Role = Literal["classifier", "segmenter", "features", "raddino"]
ROLES: tuple[Role, ...] = ("classifier", "segmenter", "features", "raddino")

# Config entry of [metrics].clinical / .distribution -> the role whose outputs it needs.
ENTRY_ROLE: dict[str, Role] = {
    "pathology_auc": "classifier",
    "pathology_f1": "classifier",
    "fxd": "classifier",
    "prdc": "classifier",
    "dice": "segmenter",
    "fid": "features",
    "kid": "features",
    "fd_raddino": "raddino",
    "kid_raddino": "raddino",
    "prdc_raddino": "raddino",
}

# Bump when a backend's output format changes; part of every cache key.
OUTPUT_VERSION = "outputs-v1"

PSPNET_WEIGHTS = "pspnet-chestx-det"
INCEPTION_WEIGHTS = "inception-v3-fid"
RADDINO_WEIGHTS = "rad-dino"
DEMO_PIN_NOTE = (
    "demo stand-in trained on synthetic DRRs of the demo cohort; not comparable to published values"
)


@dataclasses.dataclass(frozen=True)
class EvaluatorPlan:
    """A resolved evaluator: what it is, where its verified weights are, and why it was chosen."""

    role: Role
    source: Literal["xrv", "inception", "demo", "user", "hf"]
    key: EvaluatorKey
    label: str
    weights: str | None  # weights-manager name, or a demo file name
    weights_path: Path | None  # a file; for "hf", the verified snapshot directory
    note: str = ""
    # Where the hash the weights were verified against comes from (audit.weights.store.PinSource, or
    # "demo" for the shipped demo networks), and that in words for run.json and the report.
    pin: str = ""
    pin_note: str = ""
    files: tuple[tuple[str, str], ...] = ()  # hf: (file name, sha256) of every verified file

    @property
    def name(self) -> str:
        return self.key.evaluator

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.key.evaluator,
            "role": self.role,
            "source": self.source,
            "label": self.label,
            "weights": self.weights,
            "weights_sha256": self.key.weights_sha256,
            "preprocessing": self.key.preprocessing,
            "note": self.note,
            "pin": self.pin,
            "pin_note": self.pin_note,
            **({"files": dict(self.files)} if self.files else {}),
        }


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """A role that cannot run here; ``reason`` names the missing file and the fix."""

    role: Role
    reason: str


def needed_roles(metrics: MetricsSection) -> dict[Role, list[str]]:
    """Role -> the config entries that need it, for the entries the study asks for."""
    out: dict[Role, list[str]] = {}
    for entry in (*metrics.clinical, *metrics.distribution):
        out.setdefault(ENTRY_ROLE[entry], []).append(entry)
    return out


def resolve_evaluators(
    metrics: MetricsSection, evaluators: EvaluatorsSection
) -> dict[Role, EvaluatorPlan | Unavailable]:
    """An :class:`EvaluatorPlan` (or :class:`Unavailable`) for every role the study's metrics need."""
    out: dict[Role, EvaluatorPlan | Unavailable] = {}
    for role in needed_roles(metrics):
        choice = {
            "classifier": evaluators.classifier,
            "segmenter": evaluators.segmenter,
            "features": evaluators.features,
            "raddino": RADDINO_WEIGHTS,
        }[role]
        resolved = _resolve(role, choice, evaluators)
        if isinstance(resolved, EvaluatorPlan) and evaluators.dtype != "fp32":
            # Half-precision outputs differ from float32 ones: they must not share cache entries
            # (fp32 keys stay as they were, so existing caches remain valid).
            key = dataclasses.replace(
                resolved.key, preprocessing=f"{resolved.key.preprocessing};dtype={evaluators.dtype}"
            )
            resolved = dataclasses.replace(resolved, key=key)
        out[role] = resolved
    return out


def _resolve(role: Role, choice: str, evaluators: EvaluatorsSection) -> EvaluatorPlan | Unavailable:
    from audit import weights

    if choice == "demo":
        return _demo_plan(role, note="")
    if choice == "user":
        return _user_plan(evaluators)
    if role == "raddino" or choice.startswith("hf:"):
        return _hf_plan(role, choice, evaluators)
    name = {
        "classifier": evaluators.classifier_weights,
        "segmenter": PSPNET_WEIGHTS,
        "features": INCEPTION_WEIGHTS,
    }[role]
    st = weights.status(name)  # one hash of the file: the check and the pin come from it
    try:
        path = weights.require(st)
    except weights.WeightsError as exc:
        if choice == "auto":
            return _demo_plan(
                role,
                note=f"auto: verified {name} weights are not present ({st.state}), "
                "so the demo evaluator was used; its numbers are only meaningful on the demo cohort",
            )
        return Unavailable(role, str(exc))
    sha = st.weights_sha256
    pin = {"pin": st.pin, "pin_note": st.pin_note}
    if role == "classifier":
        contract = XRV_CLASSIFIER_INPUT
        return EvaluatorPlan(
            role,
            "xrv",
            EvaluatorKey(f"xrv-{name}", sha, _preprocessing(contract)),
            f"torchxrayvision DenseNet-121 ({name}), sigmoid + op_norm; pooled features2 (1024-d)",
            name,
            path,
            note="auto: verified weights present" if choice == "auto" else "",
            **pin,
        )
    if role == "segmenter":
        contract = PSPNET_INPUT
        return EvaluatorPlan(
            role,
            "xrv",
            EvaluatorKey("xrv-pspnet-chestx-det", sha, _preprocessing(contract)),
            "torchxrayvision PSPNet (ChestX-Det): lungs = left + right lung, heart, aorta; masks at 512 px",
            name,
            path,
            note="auto: verified weights present" if choice == "auto" else "",
            **pin,
        )
    contract = INCEPTION_INPUT
    return EvaluatorPlan(
        role,
        "inception",
        EvaluatorKey("inception-v3-fid", sha, _preprocessing(contract)),
        "Inception-v3 (torch-fidelity TF-FID port), pool3 2048-d; grey repeated to 3 channels, "
        "centre-square crop, bilinear antialias resize to 299 px, rint to uint8",
        name,
        path,
        note="auto: verified weights present" if choice == "auto" else "",
        **pin,
    )


def _hf_plan(role: Role, spec: str, evaluators: EvaluatorsSection) -> EvaluatorPlan | Unavailable:
    """RadDino (role ``raddino``) or the ``hf:`` backbone of ``features``, verified file by file."""
    from audit import weights

    config_pins = evaluators.hf_sha256 if role == "features" else {}
    st = weights.status(spec, config_pins)
    try:
        path = weights.require(st)
    except weights.WeightsError as exc:
        return Unavailable(role, str(exc))
    e = weights.entry(spec)
    pins = weights.pins_of(e, config_pins)
    files = tuple((f, p.sha256) for f, p in sorted(pins.items()) if p is not None)
    # The processor's settings are part of what it pins (preprocessor_config.json), so its hash keys
    # the cache; a processor change in transformers itself is caught by the transformers version.
    from importlib.metadata import version  # not `import transformers`: resolving loads no torch

    pinned = dict(files)
    preprocessing = (
        f"hf-processor;{pinned['preprocessor_config.json'][:16]};config;{pinned['config.json'][:16]};"
        f"rint-uint8-rgb;pooler_output;transformers-{version('transformers')};{OUTPUT_VERSION}"
    )
    name = "rad-dino" if e.name == RADDINO_WEIGHTS else spec
    what = "RadDino (microsoft/rad-dino)" if e.name == RADDINO_WEIGHTS else e.repo
    return EvaluatorPlan(
        role,
        "hf",
        EvaluatorKey(name, st.weights_sha256, preprocessing),
        f"{what} at {e.revision[:12]}: CLS embedding (pooler_output); the model's own image processor "
        "(preprocessor_config.json) at its own resolution",
        e.name,
        path,
        pin=st.pin,
        pin_note=st.pin_note,
        files=files,
    )


def _user_plan(evaluators: EvaluatorsSection) -> EvaluatorPlan | Unavailable:
    from audit.atomic import sha256_file

    user = evaluators.user_classifier
    assert user is not None  # the config checks classifier = "user" comes with its table
    path = Path(user.path)
    if not path.is_file():
        return Unavailable(
            "classifier",
            f"user classifier file {path} does not exist. Fix: [evaluators.user_classifier].path in the study config",
        )
    found = sha256_file(path)
    if found != user.sha256.lower():
        return Unavailable(
            "classifier",
            f"user classifier file {path} has sha256 {found}, the config pins {user.sha256.lower()}; it was not "
            "loaded. Fix: restore the pinned file, or update [evaluators.user_classifier].sha256 if the change "
            "is intended",
        )
    lo, hi = user.value_range
    what = f"{user.format}" + (f" {user.architecture}" if user.architecture else "")
    preprocessing = (
        f"{PIPELINE_VERSION};{user.channels}ch;{user.size}px;[{lo:g},{hi:g}]float;"
        f"{user.output};{OUTPUT_VERSION}"
    )
    return EvaluatorPlan(
        "classifier",
        "user",
        EvaluatorKey(f"user-{path.stem}", found, preprocessing),
        f"user classifier {path.name} ({what}); classes {', '.join(user.labels)}; "
        f"{'sigmoid of its logits' if user.output == 'logits' else 'its own probabilities'}; no pooled features",
        path.name,
        path,
        pin="config",
        pin_note="verified against the hash given in the study config ([evaluators.user_classifier].sha256)",
    )


# InputContract.preprocessing_version (audit.evaluators.base imports torch, which resolving must not);
# a test keeps the two equal.
PIPELINE_VERSION = "center-square/bilinear-antialias/affine-v1"


@dataclasses.dataclass(frozen=True)
class _Contract:
    """The fields of an evaluator's InputContract that key its cached outputs."""

    channels: int
    size: int
    value_range: tuple[float, float]
    integer: bool = False
    preprocessing_version: str = PIPELINE_VERSION


# Copies of the fields of the networks' InputContracts that key their cached outputs (a test keeps
# them equal to the contracts in audit.evaluators.classifier / .segmenter / .inception).
XRV_CLASSIFIER_INPUT = _Contract(channels=1, size=224, value_range=(-1024.0, 1024.0))
PSPNET_INPUT = _Contract(channels=1, size=512, value_range=(-1024.0, 1024.0))
INCEPTION_INPUT = _Contract(channels=3, size=299, value_range=(0.0, 255.0), integer=True)


def _preprocessing(contract: Any) -> str:
    lo, hi = contract.value_range
    kind = "uint8" if contract.integer else "float"
    return (
        f"{contract.preprocessing_version};{contract.channels}ch;{contract.size}px;[{lo:g},{hi:g}]{kind};"
        f"{OUTPUT_VERSION}"
    )


def _demo_plan(role: Role, note: str) -> EvaluatorPlan:
    from audit.demo import spec as demo

    manifest = demo.read_manifest()
    if role == "classifier":
        file, size, name = demo.CLASSIFIER_FILE, demo.CLASSIFIER_SIZE, "demo-nodule-classifier"
        label = (
            "demo Nodule classifier trained on a separate demo cohort (sigmoid, no operating-point "
            f"calibration); pooled trunk features ({demo.FEATURE_DIM}-d)"
        )
    elif role == "segmenter":
        file, size, name = demo.SEGMENTER_FILE, demo.SEGMENTER_SIZE, "demo-anatomy-segmenter"
        label = f"demo lungs/heart/aorta U-Net trained on a separate demo cohort; masks at {size} px"
    else:
        # The same network and cache entries as the demo segmenter: one pass gives masks and features.
        file, size, name = demo.SEGMENTER_FILE, demo.SEGMENTER_SIZE, "demo-anatomy-segmenter"
        label = (
            "demo anatomy U-Net's encoder features (256-d, mean and max of the deepest level), standing "
            "in for Inception-v3: not comparable with published FID values"
        )
    sha = manifest["files"][file]["sha256"]
    preprocessing = f"demo;{demo.PREPROCESSING};{size}px;{OUTPUT_VERSION}"
    return EvaluatorPlan(
        role, "demo", EvaluatorKey(name, sha, preprocessing), label, file, None, note, "demo", DEMO_PIN_NOTE
    )


# --------------------------------------------------------------------------------------------- backends


class Backend(Protocol):
    plan: EvaluatorPlan
    classes: tuple[str, ...]  # classifier output classes (empty for other roles)
    calibration: str  # classifier: "sigmoid" or "sigmoid+op_norm"

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]: ...


def load_backend(plan: EvaluatorPlan, device: str, dtype: str, batch_size: int) -> Backend:
    """Build the network of ``plan`` on ``device`` (``auto`` resolved here, once)."""
    if plan.source == "demo":
        return _DemoBackend(plan, device, dtype, batch_size)
    if plan.source in ("xrv", "inception"):
        return _PretrainedBackend(plan, device, dtype, batch_size)
    if plan.source == "hf":
        return _HFBackend(plan, device, dtype, batch_size)
    raise ValueError(f"{plan.name}: a user classifier is loaded with load_user_backend")


def load_user_backend(plan: EvaluatorPlan, evaluators: EvaluatorsSection) -> Backend:
    """The user's classifier of ``plan`` as described by ``[evaluators.user_classifier]``."""
    return _UserBackend(plan, evaluators)


class _UserBackend:
    def __init__(self, plan: EvaluatorPlan, evaluators: EvaluatorsSection):
        from audit.evaluators.base import InputContract
        from audit.evaluators.user import UserEvaluator

        user = evaluators.user_classifier
        assert user is not None and plan.weights_path is not None
        self.plan = plan
        self.batch_size = evaluators.batch_size
        self.classes = tuple(user.labels)
        self.calibration = "sigmoid" if user.output == "logits" else "probabilities"
        self.output = user.output
        lo, hi = user.value_range
        contract = InputContract(
            evaluator=plan.name, channels=user.channels, size=user.size, value_range=(float(lo), float(hi))
        )
        common = {
            "name": plan.name,
            "labels": user.labels,
            "device": evaluators.device,
            "dtype": evaluators.dtype,
        }
        if user.format == "torchscript":
            self.net = UserEvaluator.from_torchscript(
                plan.weights_path, plan.key.weights_sha256, contract, **common
            )
        else:
            self.net = UserEvaluator.from_state_dict(
                plan.weights_path,
                plan.key.weights_sha256,
                user.architecture,
                len(user.labels),
                contract,
                **common,
            )

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = self.net.run(list(images), batch_size=self.batch_size).outputs.astype(np.float64)
        if self.output == "logits":
            probs = 1.0 / (1.0 + np.exp(-out))
        else:
            probs = out
            if not (np.all(probs >= 0.0) and np.all(probs <= 1.0)):
                raise ValueError(
                    f"{self.plan.name}: outputs span [{probs.min():g}, {probs.max():g}] but the config says "
                    'output = "probabilities"; set output = "logits" if the network ends without a sigmoid'
                )
        return [{"probs": probs[i].astype(np.float32)} for i in range(len(images))]


class _PretrainedBackend:
    def __init__(self, plan: EvaluatorPlan, device: str, dtype: str, batch_size: int):
        self.plan = plan
        self.batch_size = batch_size
        self.classes: tuple[str, ...] = ()
        self.calibration = ""
        assert plan.weights_path is not None
        sha = plan.key.weights_sha256
        if plan.role == "classifier":
            from audit.evaluators.classifier import PathologyClassifier

            # xrv publishes its DenseNets as pickled modules: from_file verifies the sha256, then rebuilds
            # the state dict through the allowlist unpickler (audit.evaluators.safe_pickle), never running
            # code from the file.
            self.net = PathologyClassifier.from_file(
                plan.weights_path,
                sha,
                weights=str(plan.weights),
                device=device,
                dtype=dtype,
            )
            # xrv keeps output slots for classes a dataset lacks, named "": they are not predictions.
            self.keep = [i for i, c in enumerate(self.net.pathologies) if c]
            self.classes = tuple(self.net.pathologies[i] for i in self.keep)
            self.calibration = self.net.calibration
        elif plan.role == "segmenter":
            from audit.evaluators.segmenter import AnatomySegmenter

            self.net = AnatomySegmenter.from_file(plan.weights_path, sha, device=device, dtype=dtype)
        else:
            from audit.evaluators.inception import InceptionFeatures

            self.net = InceptionFeatures.from_file(plan.weights_path, sha, device=device)

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = self.net.run(list(images), batch_size=self.batch_size)
        if self.plan.role == "classifier":
            probs = out.probabilities[:, self.keep]
            return [{"probs": probs[i], "features": out.features[i]} for i in range(len(images))]
        if self.plan.role == "segmenter":
            return [{"masks": out.masks[i]} for i in range(len(images))]
        return [{"features": out.features[i]} for i in range(len(images))]


class _HFBackend:
    def __init__(self, plan: EvaluatorPlan, device: str, dtype: str, batch_size: int):
        from audit.evaluators.hf import HFFeatures

        assert plan.weights_path is not None
        self.plan = plan
        self.batch_size = batch_size
        self.classes: tuple[str, ...] = ()
        self.calibration = ""
        self.net = HFFeatures.from_dir(
            plan.weights_path, dict(plan.files), name=plan.name, device=device, dtype=dtype
        )

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = self.net.run(list(images), batch_size=self.batch_size).features
        return [{"features": out[i]} for i in range(len(images))]


class _DemoBackend:
    def __init__(self, plan: EvaluatorPlan, device: str, dtype: str, batch_size: int):
        import torch

        from audit.demo import evaluators as demo
        from audit.evaluators.base import resolve_device, resolve_dtype

        self.plan = plan
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.classes: tuple[str, ...] = ()
        self.calibration = ""
        self._torch = torch
        self._demo = demo
        if plan.role == "classifier":
            self.net = demo.load_nodule_classifier(self.device)
            self.classes = demo.NODULE_CLASSES
            self.calibration = "sigmoid"
        else:
            self.net = demo.load_anatomy_segmenter(self.device)
        self.net = self.net.to(dtype=self.dtype)

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        torch, demo = self._torch, self._demo
        out: list[dict[str, np.ndarray]] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = list(images[start : start + self.batch_size])
                if self.plan.role == "classifier":
                    x = demo.prepare_classifier_input(batch).to(self.device, self.dtype)
                    logits, feats = self.net.forward_with_features(x)
                    probs = torch.sigmoid(logits.float()).cpu().numpy()
                    feats = feats.float().cpu().numpy()
                    out += [{"probs": probs[i], "features": feats[i]} for i in range(len(batch))]
                else:
                    # Segmenter and FID stand-in share one cache key, so both outputs are stored.
                    x = demo.prepare_segmenter_input(batch).to(self.device, self.dtype)
                    logits, feats = self.net.forward_with_features(x)
                    masks = (logits.float() > 0).cpu().numpy()
                    feats = feats.float().cpu().numpy()
                    out += [{"masks": masks[i], "features": feats[i]} for i in range(len(batch))]
        return out


def mask_frame(plan: EvaluatorPlan) -> int:
    """Side of the square frame a segmenter plan's masks come in (known without loading it)."""
    if plan.source == "demo":
        from audit.demo.spec import SEGMENTER_SIZE

        return SEGMENTER_SIZE
    return PSPNET_INPUT.size


def mask_to_frame(mask: np.ndarray, frame: int) -> np.ndarray:
    """An RGB anatomy mask (H, W, 3) as bool (3, frame, frame) in an evaluator's centre-square frame.

    Same crop as :class:`~audit.evaluators.base.InputContract`; the resize is bilinear with
    antialiasing on the 0/1 mask, thresholded at 0.5 (area-weighted majority when shrinking).
    """
    import torch
    import torch.nn.functional as F

    m = np.asarray(mask)
    if m.ndim != 3 or m.shape[-1] != 3:
        raise ValueError(f"anatomy mask must be RGB (H, W, 3) (R lungs, G heart, B aorta); got {m.shape}")
    h, w = m.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = np.ascontiguousarray(np.moveaxis(m[top : top + side, left : left + side] != 0, -1, 0))
    x = torch.from_numpy(crop.astype(np.float32))[None]
    if side != frame:
        x = F.interpolate(x, size=(frame, frame), mode="bilinear", align_corners=False, antialias=True)
    return (x[0] > 0.5).numpy()
