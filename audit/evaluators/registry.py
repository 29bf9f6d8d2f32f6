"""Every built-in evaluator, listed explicitly in one table (:data:`EVALUATORS`).

An entry says which role it fills, which ``[evaluators]`` values pick it, where its weights come from,
the input contract that keys its cached outputs, how the report names it, and the backend that loads
it. :mod:`audit.evaluators.suite` resolves a study through this table; adding an evaluator means adding
one entry here (and its backend class in :mod:`audit.evaluators.backends`). Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from audit.demo import spec as demo
from audit.evaluators.backends import (
    DemoAnatomyBackend,
    DemoClassifierBackend,
    HFBackend,
    InceptionBackend,
    PSPNetBackend,
    UserBackend,
    XrvClassifierBackend,
)
from audit.evaluators.plan import Backend, ContractFields, EvaluatorPlan, LoadOptions, Role, Source

Loader = Callable[[EvaluatorPlan, LoadOptions], Backend]

# The [evaluators] value that asks for the pretrained network when its verified weights are present,
# and for the role's demo network otherwise.
AUTO = "auto"
DEMO = "demo"


@dataclasses.dataclass(frozen=True)
class EvaluatorKind:
    """One built-in evaluator.

    ``evaluator`` and ``label`` are templates filled by the resolver (``str.format_map``):
    ``{weights}`` the xrv weights entry; ``{spec}``, ``{repo}``, ``{revision}`` an hf backbone;
    ``{stem}``, ``{file}``, ``{what}``, ``{classes}``, ``{outputs}`` the user's classifier.
    """

    name: str
    role: Role
    source: Source
    # Values of [evaluators].<role> that pick it; one ending in ":" is a prefix (hf:ORG/NAME@REVISION).
    choices: tuple[str, ...]
    # The audit.weights manifest entry (demo: the file in the demo weights manifest); None where the
    # study config names it: [evaluators].classifier_weights, the hf: spec, the user's file.
    weights_entry: str | None
    # The contract that keys its cached outputs; None where the model's own image processor (hf) or
    # [evaluators.user_classifier] gives it.
    input_contract: ContractFields | None
    evaluator: str  # the cache key's evaluator name (template)
    label: str  # how run.json and the report describe it (template)
    loader: Loader

    def picked_by(self, choice: str) -> bool:
        return any(choice.startswith(c) if c.endswith(":") else choice == c for c in self.choices)


_XRV_RANGE = (-1024.0, 1024.0)
_HF_LABEL = (
    "at {revision}: CLS embedding (pooler_output); the model's own image processor "
    "(preprocessor_config.json) at its own resolution"
)

EVALUATORS: dict[str, EvaluatorKind] = {
    k.name: k
    for k in (
        EvaluatorKind(
            "xrv-densenet121",
            "classifier",
            "xrv",
            ("xrv", AUTO),
            None,
            ContractFields(channels=1, size=224, value_range=_XRV_RANGE),
            "xrv-{weights}",
            "torchxrayvision DenseNet-121 ({weights}), sigmoid + op_norm; pooled features2 (1024-d)",
            XrvClassifierBackend,
        ),
        EvaluatorKind(
            "xrv-pspnet",
            "segmenter",
            "xrv",
            ("xrv", AUTO),
            "pspnet-chestx-det",
            ContractFields(channels=1, size=512, value_range=_XRV_RANGE),
            "xrv-pspnet-chestx-det",
            "torchxrayvision PSPNet (ChestX-Det): lungs = left + right lung, heart, aorta; masks at 512 px",
            PSPNetBackend,
        ),
        EvaluatorKind(
            "inception-v3",
            "features",
            "inception",
            ("inception", AUTO),
            "inception-v3-fid",
            ContractFields(channels=3, size=299, value_range=(0.0, 255.0), integer=True),
            "inception-v3-fid",
            "Inception-v3 (torch-fidelity TF-FID port), pool3 2048-d; grey repeated to 3 channels, "
            "centre-square crop, bilinear antialias resize to 299 px, rint to uint8",
            InceptionBackend,
        ),
        EvaluatorKind(
            "hf",
            "features",
            "hf",
            ("hf:",),
            None,
            None,
            "{spec}",
            "{repo} " + _HF_LABEL,
            HFBackend,
        ),
        EvaluatorKind(
            "rad-dino",
            "raddino",
            "hf",
            ("rad-dino",),
            "rad-dino",
            None,
            "rad-dino",
            "RadDino (microsoft/rad-dino) " + _HF_LABEL,
            HFBackend,
        ),
        EvaluatorKind(
            "demo-classifier",
            "classifier",
            "demo",
            (DEMO,),
            demo.CLASSIFIER_FILE,
            ContractFields(channels=1, size=demo.CLASSIFIER_SIZE, value_range=demo.VALUE_RANGE),
            "demo-nodule-classifier",
            "demo Nodule classifier trained on a separate demo cohort (sigmoid, no operating-point "
            f"calibration); pooled trunk features ({demo.FEATURE_DIM}-d)",
            DemoClassifierBackend,
        ),
        EvaluatorKind(
            "demo-segmenter",
            "segmenter",
            "demo",
            (DEMO,),
            demo.SEGMENTER_FILE,
            ContractFields(channels=1, size=demo.SEGMENTER_SIZE, value_range=demo.VALUE_RANGE),
            "demo-anatomy-segmenter",
            f"demo lungs/heart/aorta U-Net trained on a separate demo cohort; masks at {demo.SEGMENTER_SIZE} px",
            DemoAnatomyBackend,
        ),
        # The same network and cache entries as the demo segmenter: one pass gives masks and features.
        EvaluatorKind(
            "demo-features",
            "features",
            "demo",
            (DEMO,),
            demo.SEGMENTER_FILE,
            ContractFields(channels=1, size=demo.SEGMENTER_SIZE, value_range=demo.VALUE_RANGE),
            "demo-anatomy-segmenter",
            "demo anatomy U-Net's encoder features (256-d, mean and max of the deepest level), standing "
            "in for Inception-v3: not comparable with published FID values",
            DemoAnatomyBackend,
        ),
        EvaluatorKind(
            "user",
            "classifier",
            "user",
            ("user",),
            None,
            None,
            "user-{stem}",
            "user classifier {file} ({what}); classes {classes}; {outputs}; no pooled features",
            UserBackend,
        ),
    )
}


def choices(role: Role) -> tuple[str, ...]:
    """The ``[evaluators].<role>`` values the table offers (a prefix such as ``hf:`` left out: the config
    checks the full form)."""
    return tuple(
        dict.fromkeys(
            c for k in EVALUATORS.values() if k.role == role for c in k.choices if not c.endswith(":")
        )
    )


def pick(role: Role, choice: str) -> EvaluatorKind:
    """The evaluator that ``[evaluators].<role> = choice`` picks (``auto``: the pretrained one)."""
    for kind in EVALUATORS.values():
        if kind.role == role and kind.picked_by(choice):
            return kind
    offered = sorted({c for k in EVALUATORS.values() if k.role == role for c in k.choices})
    raise ValueError(f"no {role} evaluator is picked by {choice!r}; choices: {', '.join(offered)}")


def kind_of(plan: EvaluatorPlan) -> EvaluatorKind:
    """The table entry a resolved plan came from (role and source name exactly one)."""
    for kind in EVALUATORS.values():
        if kind.role == plan.role and kind.source == plan.source:
            return kind
    raise ValueError(f"{plan.name}: no {plan.source} evaluator fills the {plan.role} role")


def hub_kind(weights_entry: str) -> EvaluatorKind | None:
    """The listed hf evaluator whose weights are ``weights_entry`` (RadDino), if any."""
    for kind in EVALUATORS.values():
        if kind.source == "hf" and kind.weights_entry == weights_entry:
            return kind
    return None
