"""A browser-free Streamlit client: speaks the app's websocket protocol as a reader's browser does.

The browser and the server exchange protobufs over ``/_stcore/stream``: the client sends
``BackMsg.rerun_script`` with every widget's state (and, for a click inside an ``st.fragment``,
that fragment's id); the server answers with ``ForwardMsg``s: ``new_session`` when a run starts,
``delta``s that add or replace elements at a path of the page, and ``script_finished``. Images come
as ``/media/...`` URLs that the browser then fetches over HTTP.

:class:`Page` keeps the elements the way the browser does (a full run replaces the page, a fragment
run replaces that fragment's elements), finds widgets by label, and :class:`Client` sends the
values set on them the way the frontend serialises them (a radio's option text, a text box's
string, a checkbox's bool, a button's trigger). Widgets left alone are not sent: the server keeps
their last value, as it does for a browser that sends it again.

:class:`Client` is one browser tab. Used by ``benchmarks/reader_study_load.py --mode websocket`` and
by the reader-study tests that need the real server without Chromium.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from typing import Any

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState, WidgetStates

# script_finished statuses after which the page is settled (no further run follows by itself).
_SETTLED = (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY)


class ProtocolError(RuntimeError):
    pass


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base_url: str, proc: Any, timeout: float) -> bool:
    """Until the server at ``base_url`` answers its health check (True), its process ``proc`` (a
    ``subprocess.Popen``) exits, or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base_url.rstrip('/')}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return True
        except OSError:
            time.sleep(0.1)
    return False


class Page:
    """The elements on the page, by delta path, as the browser holds them between runs."""

    def __init__(self) -> None:
        self.elements: dict[tuple[int, ...], ForwardMsg] = {}
        self._fragments: tuple[str, ...] = ()
        self._pending: dict[tuple[int, ...], ForwardMsg] = {}

    def start(self, msg: ForwardMsg) -> None:
        """A run starts (``new_session``): remember whether it reruns the whole page or fragments."""
        self._fragments = tuple(msg.metadata.run.fragment_ids)
        self._pending = {}

    def add(self, msg: ForwardMsg) -> None:
        self._pending[tuple(msg.metadata.delta_path)] = msg

    def finish(self) -> None:
        """The run ended: its elements replace the page (a full run) or its fragments' elements."""
        if not self._fragments:
            self.elements = dict(self._pending)
        else:
            kept = {p: m for p, m in self.elements.items() if m.delta.fragment_id not in self._fragments}
            self.elements = {**kept, **self._pending}
        self._pending = {}

    def widgets(self, kind: str) -> list[tuple[Any, str]]:
        """``(proto, fragment id)`` of every widget of ``kind`` (``radio``, ``button``, ...), in
        page order."""
        out = []
        for path in sorted(self.elements):
            msg = self.elements[path]
            if msg.HasField("delta") and msg.delta.new_element.WhichOneof("type") == kind:
                out.append((getattr(msg.delta.new_element, kind), msg.delta.fragment_id))
        return out

    def widget(self, kind: str, label: str) -> tuple[Any, str]:
        found = [(w, f) for w, f in self.widgets(kind) if w.label == label]
        if len(found) != 1:
            raise ProtocolError(
                f"expected one {kind} {label!r}, found {[w.label for w, _ in self.widgets(kind)]}"
            )
        return found[0]

    def texts(self) -> list[str]:
        """Every markdown, alert, caption and progress text on the page (for checks and waits)."""
        out = []
        for msg in self.elements.values():
            if not (msg.HasField("delta") and msg.delta.WhichOneof("type") == "new_element"):
                continue
            element = msg.delta.new_element
            kind = element.WhichOneof("type")
            if kind in ("markdown", "alert", "caption"):
                out.append(getattr(element, kind).body)
            elif kind == "progress":
                out.append(element.progress.text)
        return out

    def image_urls(self) -> list[str]:
        out = []
        for msg in self.elements.values():
            if msg.HasField("delta") and msg.delta.new_element.WhichOneof("type") == "imgs":
                out.extend(img.url for img in msg.delta.new_element.imgs.imgs)
        return out

    def exceptions(self) -> list[str]:
        """Exception elements (what ``client.showErrorDetails`` lets through), as text."""
        out = []
        for msg in self.elements.values():
            if msg.HasField("delta") and msg.delta.new_element.WhichOneof("type") == "exception":
                e = msg.delta.new_element.exception
                out.append(f"{e.type}: {e.message}\n" + "\n".join(e.stack_trace))
        return out


class Client:
    """One browser tab on a Streamlit server."""

    def __init__(self, base_url: str, open_timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.page = Page()
        self.session_id = ""
        self.received: list[ForwardMsg] = []  # every message, for leak checks
        self._ws: Any = None
        self._page_hash = ""
        self._pending: dict[str, WidgetState] = {}
        self._timeout = open_timeout

    async def connect(self, existing_session_id: str = "") -> float:
        """Open the websocket and run the page once; seconds until it settled."""
        url = "ws" + self.base_url.removeprefix("http") + "/_stcore/stream"
        # The frontend sends its XSRF token and a session id to resume in the subprotocol list.
        protocols = (
            ["streamlit", "PLACEHOLDER_AUTH_TOKEN", existing_session_id]
            if existing_session_id
            else ["streamlit"]
        )
        self._ws = await websockets.connect(
            url, subprotocols=protocols, max_size=None, open_timeout=self._timeout, compression=None
        )
        return await self.rerun(WidgetStates())

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def rerun(self, states: WidgetStates, fragment_id: str = "", timeout: float = 60.0) -> float:
        """Send one rerun request and read until the page has settled; seconds it took."""
        back = BackMsg()
        back.rerun_script.widget_states.CopyFrom(states)
        back.rerun_script.page_script_hash = self._page_hash
        back.rerun_script.fragment_id = fragment_id
        start = time.perf_counter()
        await self._ws.send(back.SerializeToString())
        await asyncio.wait_for(self._until_settled(), timeout)
        return time.perf_counter() - start

    async def send_raw(self, states: WidgetStates) -> None:
        """Send widget states as they are (a hand-made client's malformed values included)."""
        back = BackMsg()
        back.rerun_script.widget_states.CopyFrom(states)
        back.rerun_script.page_script_hash = self._page_hash
        await self._ws.send(back.SerializeToString())
        await asyncio.wait_for(self._until_settled(), 60.0)

    async def _until_settled(self) -> None:
        while True:
            data = await self._ws.recv()
            msg = ForwardMsg()
            msg.ParseFromString(data)
            self.received.append(msg)
            kind = msg.WhichOneof("type")
            if kind == "new_session":
                self.session_id = msg.new_session.initialize.session_id or self.session_id
                self._page_hash = msg.new_session.page_script_hash
                self.page.start(msg)
            elif kind == "delta":
                self.page.add(msg)
            elif kind == "script_finished":
                if msg.script_finished == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                    raise ProtocolError("the app failed to compile")
                if msg.script_finished in _SETTLED:
                    self.page.finish()
                    return

    # --- interactions ---------------------------------------------------------------------------

    def choose(self, label: str, option: object) -> None:
        """Select ``option`` of the radio ``label`` (sent with the next click)."""
        proto, _ = self.page.widget("radio", label)
        if str(option) not in proto.options:
            raise ProtocolError(f"{label!r} has no option {option!r}: {list(proto.options)}")
        self._set(proto.id, string_value=str(option))

    def type_text(self, label: str, value: str, kind: str = "text_input") -> None:
        """Type into the ``text_input`` (or ``text_area``) ``label``."""
        proto, _ = self.page.widget(kind, label)
        self._set(proto.id, string_value=value)

    def tick(self, label: str, value: bool = True) -> None:
        proto, _ = self.page.widget("checkbox", label)
        self._set(proto.id, bool_value=value)

    def set_state(self, state: WidgetState) -> None:
        """Send this widget state as it is with the next click (for hand-made, malformed values)."""
        self._pending[state.id] = state

    def _set(self, widget_id: str, **value: Any) -> None:
        state = WidgetState(id=widget_id, **value)
        self._pending[widget_id] = state

    async def click(self, label: str) -> float:
        """Press the button (or form submit button) ``label``, sending the values set since the last
        click; seconds until the page settled. A button inside a fragment reruns that fragment."""
        proto, fragment = self.page.widget("button", label)
        states = WidgetStates()
        states.widgets.extend(self._pending.values())
        states.widgets.append(WidgetState(id=proto.id, trigger_value=True))
        self._pending = {}
        return await self.rerun(states, fragment)

    def fetch(self, url: str) -> tuple[int, dict[str, str], bytes]:
        """GET a URL of the page (a media file) as the browser does: status, headers, body."""
        full = url if url.startswith("http") else self.base_url + url
        try:
            with urllib.request.urlopen(full, timeout=30) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, b""
