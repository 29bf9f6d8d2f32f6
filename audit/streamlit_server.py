"""The one Streamlit invocation both apps (the review dashboard, the reader-study app) are served with.

Kept in one place because its flags are security settings: no static file serving (nothing on disk
is reachable by URL), XSRF protection on, the agent API, telemetry, the file watcher and the
developer menu off, and errors without tracebacks in the browser.
"""

from __future__ import annotations

import sys
from pathlib import Path


def streamlit_command(app: Path, port: int, address: str = "localhost") -> list[str]:
    """``python -m streamlit run APP`` headless on ``address:port`` with the settings above."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.port", str(port),
        "--server.address", address,
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
