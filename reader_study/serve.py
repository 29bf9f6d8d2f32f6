"""``xray-audit reader-study serve``: check the study (its database, and that no image's byte size
tells real from generated, :func:`reader_study.blinding.require`), then hand the process to
Streamlit."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from audit.streamlit_server import streamlit_command as audit_streamlit_command
from reader_study import blinding
from reader_study.admin import open_store

APP = Path(__file__).with_name("app.py")


def streamlit_command(port: int, address: str = "localhost") -> list[str]:
    """This app under the suite's Streamlit settings (:mod:`audit.streamlit_server`: headless, no
    telemetry, no static file serving, XSRF on, no-store responses, no metrics endpoint)."""
    return audit_streamlit_command(APP, port, address)


def serve(study_dir: Path, port: int, address: str = "localhost", progress: bool = True) -> int:
    root, info, store = open_store(study_dir)  # fails here, clearly, rather than in the browser
    store.close()
    measured = blinding.require(root, info, progress=progress)
    views = len(measured["views"])
    print(f"Blinding: every image has one byte size in each of {views} views (byte-size AUC 0.5)", flush=True)
    env = dict(os.environ, XRAY_AUDIT_STUDY_DIR=str(root.resolve()))
    print(
        f"Serving {info.title!r} ({info.n_items} items, {len(info.readers)} readers) on port {port}",
        flush=True,
    )
    os.execvpe(sys.executable, streamlit_command(port, address), env)
    return 0  # not reached
