"""The one Streamlit invocation both apps (the review dashboard, the reader-study app) are served with.

Kept in one place because its flags are security settings: no static file serving (nothing on disk
is reachable by URL), XSRF protection on, the agent API, telemetry, websocket compression, the file
watcher and the developer menu off, client messages capped at 1 MB, and errors shown to the browser
without type, message or traceback (``client.showErrorDetails = none``: the deprecated ``false``
means "stacktrace", which sent stack frames to readers after a malformed widget value).

``runner.postScriptGC`` is off: Streamlit's full ``gc.collect(2)`` after every script run was 69 %
of the reader app's CPU per submit (two runs, about 50 ms each, with the GIL held); Python's own
generational collection still runs.

The app is started through :mod:`audit.streamlit_asgi`, an ``st.App`` around the page script, so
that every HTTP response passes :class:`audit.streamlit_asgi.LockedDown`: ``Cache-Control:
no-store`` (a browser keeps no copy of a study image), and ``/_stcore/metrics``, which Streamlit
serves to anyone without a session or a setting to turn it off, answers 404.
"""

from __future__ import annotations

import sys
from pathlib import Path

ASGI_MODULE = Path(__file__).with_name("streamlit_asgi.py")
MAX_CLIENT_MESSAGE_MB = 1  # a widget state is a few bytes; a 20 MB "comment" is an attack


def streamlit_command(app: Path, port: int, address: str = "localhost") -> list[str]:
    """``python -m streamlit run`` of :mod:`audit.streamlit_asgi` serving the page script ``app``,
    headless on ``address:port`` with the settings above."""
    return [
        sys.executable, "-m", "streamlit", "run", str(ASGI_MODULE),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--server.enableStaticServing", "false",
        "--server.enableXsrfProtection", "true",
        "--server.enableAgentApi", "false",
        "--server.enableWebsocketCompression", "false",
        "--server.maxWidgetStateSize", str(MAX_CLIENT_MESSAGE_MB),
        "--runner.postScriptGC", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--client.showErrorDetails", "none",
        "--global.developmentMode", "false",
        "--", str(app),
    ]  # fmt: skip
