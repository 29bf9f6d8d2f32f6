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
Which value picks which network, and how it is named and keyed, is the table
:data:`audit.evaluators.registry.EVALUATORS`; this module holds how each source is resolved
(:data:`PLANNERS`).

:func:`load_backend` builds the network for a plan (torch, torchxrayvision) with the
:func:`load_options` of the study, the first time an image actually has to be evaluated; a rerun whose
outputs are all in the feature cache never loads one. :func:`classifier_of` says what is known of a
classifier plan without loading it (classes, pooled features, threshold policy).
Every backend maps canonical images (float ``(H, W)`` in ``[0, 1]``) to one output dict per image:

* classifier: ``probs`` float32 (C,) in :attr:`Backend.classes` order, ``features`` float32 (D,)
* segmenter:  ``masks`` bool (3, F, F) in the network's centre-square frame of side F (:func:`mask_frame`)
* features:   ``features`` float32 (D,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from audit.config import EvaluatorsSection, MetricsSection
from audit.evaluators.backends import ClassifierBackend
from audit.evaluators.plan import (
    OUTPUT_VERSION,
    PIPELINE_VERSION,
    Backend,
    EvaluatorPlan,
    LoadOptions,
    Role,
    Source,
    Unavailable,
    preprocessing_key,
)
from audit.evaluators.registry import AUTO, DEMO, EvaluatorKind, hub_kind, kind_of, pick
from audit.feature_cache import EvaluatorKey
from audit.metrics import catalogue

# Config entry of [metrics].clinical / .distribution -> the role whose outputs it needs.
ENTRY_ROLE: dict[str, Role] = {m.entry: m.evaluator for m in catalogue.CATALOGUE if m.evaluator}

DEMO_PIN_NOTE = (
    "demo stand-in trained on synthetic DRRs of the demo cohort; not comparable to published values"
)
# How the user's classifier turns its outputs into probabilities, by [evaluators.user_classifier].output.
USER_OUTPUTS: dict[str, str] = {"logits": "sigmoid of its logits", "probabilities": "its own probabilities"}


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
            "raddino": "rad-dino",  # not configurable: CheXGenBench's features
        }[role]
        kind = pick(role, choice)
        resolved = PLANNERS[kind.source](kind, choice, evaluators)
        if isinstance(resolved, EvaluatorPlan) and evaluators.dtype != "fp32":
            # Half-precision outputs differ from float32 ones: they must not share cache entries
            # (fp32 keys stay as they were, so existing caches remain valid).
            key = dataclasses.replace(
                resolved.key, preprocessing=f"{resolved.key.preprocessing};dtype={evaluators.dtype}"
            )
            resolved = dataclasses.replace(resolved, key=key)
        out[role] = resolved
    return out


def _pretrained_plan(
    kind: EvaluatorKind, choice: str, evaluators: EvaluatorsSection
) -> EvaluatorPlan | Unavailable:
    """An xrv or Inception network from the weights manager; ``auto`` falls back to the demo one."""
    from audit import weights

    # The classifier is the one pretrained entry whose weights the study picks.
    name = kind.weights_entry if kind.weights_entry is not None else evaluators.classifier_weights
    st = weights.status(name)  # one hash of the file: the check and the pin come from it
    try:
        path = weights.require(st)
    except weights.WeightsError as exc:
        if choice == AUTO:
            return _demo(
                pick(kind.role, DEMO),
                note=f"auto: verified {name} weights are not present ({st.state}), "
                "so the demo evaluator was used; its numbers are only meaningful on the demo cohort",
            )
        return Unavailable(kind.role, str(exc))
    assert kind.input_contract is not None
    fields = {"weights": name}
    return EvaluatorPlan(
        kind.role,
        kind.source,
        EvaluatorKey(
            kind.evaluator.format_map(fields), st.weights_sha256, preprocessing_key(kind.input_contract)
        ),
        kind.label.format_map(fields),
        name,
        path,
        note="auto: verified weights present" if choice == AUTO else "",
        pin=st.pin,
        pin_note=st.pin_note,
    )


def _hf_plan(kind: EvaluatorKind, choice: str, evaluators: EvaluatorsSection) -> EvaluatorPlan | Unavailable:
    """RadDino (role ``raddino``) or the ``hf:`` backbone of ``features``, verified file by file."""
    from audit import weights

    spec = kind.weights_entry or choice
    # [evaluators].hf_sha256 pins the backbone the config names, never RadDino's released files.
    config_pins = evaluators.hf_sha256 if kind.weights_entry is None else {}
    st = weights.status(spec, config_pins)
    try:
        path = weights.require(st)
    except weights.WeightsError as exc:
        return Unavailable(kind.role, str(exc))
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
    # A spec naming a listed backbone at its pinned commit (hf:microsoft/rad-dino@...) is named as it.
    named = hub_kind(e.name) or kind
    fields = {"spec": spec, "repo": e.repo, "revision": e.revision[:12]}
    return EvaluatorPlan(
        kind.role,
        kind.source,
        EvaluatorKey(named.evaluator.format_map(fields), st.weights_sha256, preprocessing),
        named.label.format_map(fields),
        e.name,
        path,
        pin=st.pin,
        pin_note=st.pin_note,
        files=files,
    )


def _user_plan(
    kind: EvaluatorKind, choice: str, evaluators: EvaluatorsSection
) -> EvaluatorPlan | Unavailable:
    """The classifier of ``[evaluators.user_classifier]``, verified against the hash the config pins."""
    from audit.atomic import sha256_file

    user = evaluators.user_classifier
    assert user is not None  # the config checks classifier = "user" comes with its table
    path = Path(user.path)
    if not path.is_file():
        return Unavailable(
            kind.role,
            f"user classifier file {path} does not exist. Fix: [evaluators.user_classifier].path in the study config",
        )
    found = sha256_file(path)
    if found != user.sha256.lower():
        return Unavailable(
            kind.role,
            f"user classifier file {path} has sha256 {found}, the config pins {user.sha256.lower()}; it was not "
            "loaded. Fix: restore the pinned file, or update [evaluators.user_classifier].sha256 if the change "
            "is intended",
        )
    lo, hi = user.value_range
    preprocessing = (
        f"{PIPELINE_VERSION};{user.channels}ch;{user.size}px;[{lo:g},{hi:g}]float;"
        f"{user.output};{OUTPUT_VERSION}"
    )
    fields = {
        "stem": path.stem,
        "file": path.name,
        "what": f"{user.format}" + (f" {user.architecture}" if user.architecture else ""),
        "classes": ", ".join(user.labels),
        "outputs": USER_OUTPUTS[user.output],
    }
    return EvaluatorPlan(
        kind.role,
        kind.source,
        EvaluatorKey(kind.evaluator.format_map(fields), found, preprocessing),
        kind.label.format_map(fields),
        path.name,
        path,
        pin="config",
        pin_note="verified against the hash given in the study config ([evaluators.user_classifier].sha256)",
    )


def _demo_plan(kind: EvaluatorKind, choice: str, evaluators: EvaluatorsSection) -> EvaluatorPlan:
    return _demo(kind, note="")


def _demo(kind: EvaluatorKind, note: str) -> EvaluatorPlan:
    """A shipped demo network, verified against the demo weights manifest when it is loaded."""
    from audit.demo import spec as demo

    assert kind.weights_entry is not None and kind.input_contract is not None
    sha = demo.read_manifest()["files"][kind.weights_entry]["sha256"]
    preprocessing = f"demo;{demo.PREPROCESSING};{kind.input_contract.size}px;{OUTPUT_VERSION}"
    return EvaluatorPlan(
        kind.role,
        kind.source,
        EvaluatorKey(kind.evaluator, sha, preprocessing),
        kind.label,
        kind.weights_entry,
        None,
        note,
        "demo",
        DEMO_PIN_NOTE,
    )


Planner = Callable[[EvaluatorKind, str, EvaluatorsSection], EvaluatorPlan | Unavailable]
# How each source's evaluators are resolved: which weights, verified how, keyed how.
PLANNERS: dict[Source, Planner] = {
    "xrv": _pretrained_plan,
    "inception": _pretrained_plan,
    "hf": _hf_plan,
    "demo": _demo_plan,
    "user": _user_plan,
}


# --------------------------------------------------------------------------------------------- loading


def load_options(evaluators: EvaluatorsSection) -> LoadOptions:
    """How the study's ``[evaluators]`` asks networks to be built (device, dtype, batch size, and the
    user classifier's description, which only the user evaluator reads)."""
    return LoadOptions(evaluators.device, evaluators.dtype, evaluators.batch_size, evaluators.user_classifier)


def load_backend(plan: EvaluatorPlan, options: LoadOptions) -> Backend:
    """Build the network of ``plan`` with ``options`` (device ``auto`` resolved here, once), by the
    loader of its :data:`~audit.evaluators.registry.EVALUATORS` entry."""
    return kind_of(plan).loader(plan, options)


def classifier_of(plan: EvaluatorPlan) -> type[ClassifierBackend]:
    """The backend class of a classifier plan (its table entry's loader): what is known of the
    classifier without loading it."""
    loader = kind_of(plan).loader
    if not (isinstance(loader, type) and issubclass(loader, ClassifierBackend)):
        raise TypeError(f"{plan.name}: the {plan.role} evaluator is not a classifier")
    return loader


def mask_frame(plan: EvaluatorPlan) -> int:
    """Side of the square frame a segmenter plan's masks come in (known without loading it)."""
    contract = kind_of(plan).input_contract
    if contract is None:
        raise ValueError(f"{plan.name}: a {plan.role} evaluator has no fixed input frame")
    return contract.size


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
