"""Where the suite keeps files that outlive a run (never inside the installed package)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_ENV = "XRAY_AUDIT_HOME"


def home_dir() -> Path:
    """Root of the suite's cache: ``$XRAY_AUDIT_HOME`` or the platform's user cache dir."""
    env = os.environ.get(HOME_ENV)
    root = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("xray-audit"))
    root.mkdir(parents=True, exist_ok=True)
    return root
