"""The ASGI app both Streamlit apps run as (``streamlit run`` of this file, see
:func:`audit.streamlit_server.streamlit_command`): the page script named by the first script
argument, behind :class:`LockedDown`.

Streamlit finds ``app = st.App(...)`` here by reading the file, and serves it with uvicorn under the
command line's ``--server.*`` settings.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import streamlit as st
from starlette.middleware import Middleware

log = logging.getLogger("xray_audit.streamlit")
METRICS_PATH = "/_stcore/metrics"
STATIC_PREFIX = "/static/"  # Streamlit's own content-hashed JS/CSS: cacheable, nothing private


class LockedDown:
    """ASGI middleware: ``/_stcore/metrics`` answers 404 (session counts and memory, to anyone), and
    every other response but Streamlit's static assets gets ``Cache-Control: no-store``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.rstrip("/").endswith(METRICS_PATH):
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]
            await send({"type": "http.response.start", "status": 404, "headers": headers})
            await send({"type": "http.response.body", "body": b"Not found"})
            return
        if path.startswith(STATIC_PREFIX):
            await self.app(scope, receive, send)
            return

        async def no_store(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                message = {**message, "headers": [*headers, (b"cache-control", b"no-store")]}
            await send(message)

        await self.app(scope, receive, no_store)


def plain_error(exc: Exception) -> bool:
    """An uncaught error: the details to the server log, a plain sentence to the browser."""
    log.error("uncaught error in the app script", exc_info=exc)
    st.error("Something went wrong on the server (it has been logged). Reload the page to continue.")
    return True  # nothing more in the browser: no type, message or traceback


def _page() -> str:
    if len(sys.argv) < 2:
        raise SystemExit("usage: streamlit run audit/streamlit_asgi.py [flags] -- PAGE_SCRIPT")
    return sys.argv[1]


app = st.App(_page(), middleware=[Middleware(LockedDown)], on_script_error=plain_error)
