"""Pretrained weights: one explicit manifest, a verified local store, and nothing used unverified.

:mod:`~audit.weights.manifest` lists every known file and the pins this release ships;
:mod:`~audit.weights.store` says where files live, which pin each is checked against and whether it
matches; :mod:`~audit.weights.download` fetches (resumable, verified before it is renamed into place);
:mod:`~audit.weights.importing` copies files users already have (a folder, or the torchxrayvision,
torch hub and Hugging Face caches).
"""

from __future__ import annotations

from audit.weights import manifest as _manifest
from audit.weights.download import fetch
from audit.weights.importing import ImportReport, default_search_dirs, import_dir
from audit.weights.manifest import MANIFEST, FileSpec, WeightsEntry, WeightsError, entry, is_hub_spec
from audit.weights.store import (
    PINS_FILE,
    Pin,
    Status,
    check_sha256,
    entry_dir,
    entry_path,
    expected_sha256,
    fix_hint,
    pins_of,
    require,
    status,
    statuses,
    user_pins,
    weights_dir,
    weights_path,
)

__all__ = [
    "MANIFEST",
    "PINS_FILE",
    "FileSpec",
    "ImportReport",
    "Pin",
    "Status",
    "WeightsEntry",
    "WeightsError",
    "check_sha256",
    "default_entries",
    "default_search_dirs",
    "entry",
    "entry_dir",
    "entry_path",
    "expected_sha256",
    "fetch",
    "fix_hint",
    "import_dir",
    "is_hub_spec",
    "pins_of",
    "require",
    "status",
    "statuses",
    "user_pins",
    "weights_dir",
    "weights_path",
]


def default_entries() -> list[str]:
    """The entries the default ``[evaluators]`` need (classifier, segmenter, FID features)."""
    return [name for name, e in _manifest.MANIFEST.items() if e.default]
