"""Pretrained evaluator networks behind one interface (see :mod:`audit.evaluators.base`).

Submodules import their network libraries (torch, torchxrayvision, torch-fidelity) on import, so
import the one you need: :mod:`.classifier`, :mod:`.segmenter`, :mod:`.inception`, :mod:`.user`,
:mod:`.hf` (Hugging Face backbones such as RadDino); :mod:`.safe_pickle` reads weight files without
running code from them, and :mod:`.speed` holds the measured CPU throughputs.
Torch-free: :mod:`.registry` lists every built-in evaluator, :mod:`.suite` resolves which one a study
uses into a plan (:mod:`.plan`), and :mod:`.backends` holds the classes that load them on demand.
The names below are loaded on first access, so that resolving and a run whose outputs are all cached
never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ContractError",
    "Evaluator",
    "InputContract",
    "UnsafePickleError",
    "WeightsHashError",
    "load_state_dict_verified",
    "load_verified",
    "resolve_device",
    "resolve_dtype",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("audit.evaluators.base"), name)
    raise AttributeError(f"module 'audit.evaluators' has no attribute {name!r}")
