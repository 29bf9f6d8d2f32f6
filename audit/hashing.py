"""Content keys: :func:`stable_hash` of plain data (configs, cache keys, shard plans).

A module of its own, importing nothing from the suite, so that the config, the feature cache and the
run plan can all key their work without importing each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``; used to key resumable work and caches."""
    blob = json.dumps(plain(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def plain(obj: Any) -> Any:
    """``obj`` with paths as strings and tuples as lists: what JSON and the hash see."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
