"""``xray-audit dashboard RUN_DIR``: check the run directory, then hand the process to Streamlit."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from audit import rundir
from audit.streamlit_server import streamlit_command as audit_streamlit_command
from reader_study.studydir import RATINGS_PARQUET

APP = Path(__file__).with_name("app.py")
# The app's environment. Defined here, not in dashboards.data, so that the CLI does not import
# Streamlit's caches (which log "No runtime found" outside a running app).
RUN_ENV = "XRAY_AUDIT_RUN_DIR"
STUDY_ENV = "XRAY_AUDIT_STUDY_DIR"
COMPARE_ENV = "XRAY_AUDIT_COMPARE_RUN_DIR"
log = logging.getLogger(__name__)


def streamlit_command(port: int, address: str = "localhost") -> list[str]:
    """This app under the suite's Streamlit settings (:mod:`audit.streamlit_server`: headless, no
    telemetry, no static file serving, XSRF on, no-store responses, no metrics endpoint)."""
    return audit_streamlit_command(APP, port, address)


def dashboard_env(
    run_dir: str | Path, study_dir: str | Path | None = None, compare: str | Path | None = None
) -> dict[str, str]:
    """The app's environment: absolute paths, checked here so that a typo fails in the terminal."""
    env = dict(os.environ)
    env[RUN_ENV] = str(rundir.require_run_dir(run_dir).resolve())
    for key, path, what in ((STUDY_ENV, study_dir, "reader study"), (COMPARE_ENV, compare, "run")):
        env.pop(key, None)
        if path is None:
            continue
        if what == "run":
            env[key] = str(rundir.require_run_dir(path).resolve())
            continue
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: reader study directory not found (--reader-study)")
        if not (root / RATINGS_PARQUET).is_file():
            log.warning(
                "%s has no %s yet; the reader page will ask for `xray-audit reader-study export %s`",
                root,
                RATINGS_PARQUET,
                root,
            )
        env[key] = str(root.resolve())
    return env


def serve(
    run_dir: str | Path,
    study_dir: str | Path | None = None,
    port: int = 8501,
    address: str = "localhost",
    compare: str | Path | None = None,
) -> int:
    env = dashboard_env(run_dir, study_dir, compare)  # fails here, clearly, rather than in the browser
    print(f"Serving the dashboard of {env[RUN_ENV]} on http://{address}:{port}/", flush=True)
    os.execvpe(sys.executable, streamlit_command(port, address), env)
    return 0  # not reached
