"""The reader-study app behind its real server, driven through the websocket protocol without a
browser (:mod:`benchmarks.streamlit_ws`): what a hand-made client, not a well-behaved browser, can
do. Session take-over by session id, malformed and oversized widget values, the HTTP side
(no-store, the metrics endpoint, media that outlive their display), and the websocket load check.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets
from streamlit.proto.WidgetStates_pb2 import WidgetState

from benchmarks import reader_study_ws
from benchmarks.streamlit_ws import Client
from reader_study import study
from reader_study.criteria import BUILTIN, TURING_QUESTION
from reader_study.store import Store, ratings, readers, responses
from tests.reader_study_fixtures import make_study

READERS = ("ann", "ben", "cat", "dan")
ANATOMY = f"**{BUILTIN['anatomy'].question}**"


@dataclass
class Served:
    path: Path
    tokens: dict[str, str]
    server: reader_study_ws.Server
    store: Store

    def rows(self, table, reader: str) -> list[dict]:
        rid = next(r["id"] for r in self.store.table(readers) if r["name"] == reader)
        return [r for r in self.store.table(table) if r["reader_id"] == rid]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    made = make_study(root, readers=READERS, per_model=2, turing=True, comment=True, size=128)
    path, info = study.load(made.path)
    store = Store(study.database_url(path, info))
    server = reader_study_ws.Server(path, root / "server.log")
    try:
        yield Served(path, made.tokens, server, store)
    finally:
        server.stop()
        store.close()


async def _signed_in(served: Served, reader: str) -> Client:
    c = Client(served.server.url)
    await c.connect()
    c.type_text("Access token", served.tokens[reader])
    await c.click("Sign in")
    assert any(t.startswith("Item **1**") for t in c.page.texts()), c.page.texts()
    return c


def _answer_all(c: Client, score: int = 3) -> None:
    for criterion in ("anatomy", "pathology", "quality"):
        c.choose(f"**{BUILTIN[criterion].question}**", score)
    c.choose(f"**{TURING_QUESTION}**", "real")
    c.choose("How sure are you?", 4)


def test_a_session_cannot_be_taken_over_by_its_session_id(served: Served) -> None:
    async def scenario() -> tuple[list[str], list[str], bool]:
        victim = await _signed_in(served, "ann")
        intruder = Client(served.server.url)
        await intruder.connect(existing_session_id=victim.session_id)
        # Still the victim's own session afterwards: the intruder got a new one, at the login.
        _answer_all(victim)
        await victim.click("Submit")
        stored = any(t.startswith("1 of ") for t in victim.page.texts())
        seen = intruder.page.texts() + [w.label for w, _ in intruder.page.widgets("text_input")]
        radios = [w.label for w, _ in intruder.page.widgets("radio")]
        await victim.close()
        await intruder.close()
        return seen, radios, stored

    seen, radios, stored = asyncio.run(scenario())
    assert "Access token" in seen and radios == []
    assert not any("ann" in t or " rated" in t for t in seen)
    assert stored and len(served.rows(responses, "ann")) == 1


def test_a_malformed_widget_value_shows_a_plain_message_and_no_stack_frames(served: Served) -> None:
    async def scenario() -> tuple[Client, list[str]]:
        c = await _signed_in(served, "ben")
        proto, _ = c.page.widget("radio", ANATOMY)
        # A radio's state is its option text; an integer makes Streamlit raise a TypeError inside the
        # script run (what the audit saw arrive as stack frames with showErrorDetails = false).
        c.set_state(WidgetState(id=proto.id, int_value=99))
        await c.click("Submit")
        texts = c.page.texts()
        await c.close()
        return c, texts

    c, texts = asyncio.run(scenario())
    everything = b"".join(m.SerializeToString() for m in c.received)
    assert c.page.exceptions() == []
    for leak in (b"Traceback", b'File "', b"TypeError", b"site-packages", b"register_widget"):
        assert leak not in everything, leak
    assert any("Something went wrong" in t for t in texts), texts
    assert served.rows(ratings, "ben") == []
    assert "TypeError" in served.server.log_text()  # the details went to the server log


def test_an_oversized_message_closes_the_connection_and_stores_nothing(served: Served) -> None:
    async def scenario() -> type[BaseException] | None:
        c = await _signed_in(served, "cat")
        _answer_all(c)
        c.type_text("Comment (optional)", "x" * 2_000_000, kind="text_area")  # over the 1 MB cap
        try:
            await c.click("Submit")
        except websockets.ConnectionClosed as exc:
            return type(exc)
        finally:
            await c.close()
        return None

    assert asyncio.run(scenario()) is not None
    assert served.rows(responses, "cat") == [] and served.rows(ratings, "cat") == []


def test_http_side_no_store_no_metrics_and_media_only_while_shown(served: Served) -> None:
    async def scenario() -> dict[str, tuple[int, dict[str, str], bytes]]:
        c = await _signed_in(served, "dan")
        [first] = c.page.image_urls()
        _answer_all(c)
        await c.click("Submit")
        [second] = c.page.image_urls()
        assert re.fullmatch(r"/media/[0-9a-f]+\.png", second)
        got = {name: c.fetch(url) for name, url in
               (("second", second), ("first", first), ("metrics", "/_stcore/metrics"), ("page", "/"))}  # fmt: skip
        await c.click("Sign out")
        got["after sign-out"] = c.fetch(second)
        await c.close()
        return got

    got = asyncio.run(scenario())
    status, headers, body = got["second"]
    assert status == 200 and headers["cache-control"] == "no-store" and "content-encoding" not in headers
    assert int(headers["content-length"]) == len(body)
    assert got["first"][0] == 404  # the item the reader moved on from is gone
    assert got["after sign-out"][0] == 404  # and the one shown when the reader signed out
    assert got["metrics"][0] == 404
    assert got["page"][0] == 200 and got["page"][1]["cache-control"] == "no-store"


def test_the_websocket_load_check_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """A small run of ``reader_study_load.py --mode websocket`` (the README's figures are 20 readers);
    its result is checked here against the database independently of the benchmark's own check."""
    result = reader_study_ws.run_ws_load(tmp_path, readers=3, ratings=3, think=0.0, size=64)
    assert result["ok"], result
    assert result["errors"] == 0 and result["integrity"]["lost"] == result["integrity"]["duplicates"] == 0
    assert result["baseline"]["submits"] == 3 and result["concurrent"]["submits"] == 9
    assert len(result["concurrent"]["image_bytes"]) == 1  # one byte length for every image
    made = study.load(tmp_path / "study")
    store = Store(study.database_url(*made))
    try:
        assert len(store.table(responses)) == 12 and len(store.table(ratings)) == 12 * 4
    finally:
        store.close()
