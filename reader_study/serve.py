"""``xray-audit reader-study serve``: check the study, then hand the process to Streamlit."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from reader_study.admin import open_store

APP = Path(__file__).with_name("app.py")


def streamlit_command(port: int, address: str = "localhost") -> list[str]:
    """The Streamlit invocation: headless, no telemetry, no file watcher, no developer menu,
    no static file serving (nothing of the study directory is reachable by URL)."""
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--server.enableStaticServing", "false",
        "--server.enableXsrfProtection", "true",
        "--server.enableAgentApi", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--client.showErrorDetails", "false",
        "--global.developmentMode", "false",
    ]  # fmt: skip
    return [*cmd, "--server.address", address]


def serve(study_dir: Path, port: int, address: str = "localhost") -> int:
    root, info, store = open_store(study_dir)  # fails here, clearly, rather than in the browser
    store.close()
    env = dict(os.environ, XRAY_AUDIT_STUDY_DIR=str(root.resolve()))
    print(
        f"Serving {info.title!r} ({info.n_items} items, {len(info.readers)} readers) on port {port}",
        flush=True,
    )
    os.execvpe(sys.executable, streamlit_command(port, address), env)
    return 0  # not reached
