"""Pretrained evaluator networks behind one interface (see :mod:`audit.evaluators.base`).

Submodules import their network libraries (torchxrayvision, torch-fidelity) on import, so import the
one you need: :mod:`.classifier`, :mod:`.segmenter`, :mod:`.inception`, :mod:`.user`.
"""

from audit.evaluators.base import (
    ContractError,
    Evaluator,
    InputContract,
    WeightsHashError,
    load_verified,
    resolve_device,
    resolve_dtype,
)

__all__ = [
    "ContractError",
    "Evaluator",
    "InputContract",
    "WeightsHashError",
    "load_verified",
    "resolve_device",
    "resolve_dtype",
]
