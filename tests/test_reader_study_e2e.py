"""End-to-end tests of the reader-study app: a real Streamlit server driven by a headless Chromium.

What only a browser can show: two readers rating at once on one SQLite file, a double-clicked
Submit, a server killed mid-study, which bytes and text actually reach the reader, and the login
gate. The store's own guarantees are tested without a browser elsewhere.

Needs Playwright (Python) and a system Chromium (``/usr/bin/chromium`` on Debian); the module is
skipped when either is missing, because Playwright's own browser download is not always possible.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import pytest

from benchmarks.streamlit_ws import free_port, wait_healthy
from reader_study import admin, study, studydir
from reader_study.criteria import TURING, TURING_QUESTION
from reader_study.serve import streamlit_command
from reader_study.store import Store, audit_log, ratings, readers, responses, submissions
from tests.reader_study_fixtures import LEAKY_TEXT, MODELS, make_study

sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("needs a system Chromium for Playwright (apt-get install chromium)", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
START_TIMEOUT_S = 30.0
UI_TIMEOUT_MS = 20_000
# Readers of the shared study: every test signs in as its own, so tests never see each other's ratings.
SHARED_READERS = ("alice", "bob", "carol", "dave", "erin", "gina", "ivan")
# reader_study.app reads it; importing the app module would run the app.
STUDY_ENV = "XRAY_AUDIT_STUDY_DIR"
PER_MODEL = 2  # 2 real + 2 per model = 6 items per reader
ERROR_ALERT = '[data-testid="stAlertContentError"], [data-testid="stException"]'
ITEM_TEXT = re.compile(r"^Item (\d+) of (\d+)")
CONFIDENCE_QUESTION = "How sure are you?"
SCORES = [1, 2, 3, 4, 5]
# criterion -> score, and for the Turing question (verdict, confidence)
Answers = dict[str, Any]

sync_api.expect.set_options(timeout=UI_TIMEOUT_MS)


class Server:
    """``xray-audit reader-study serve`` as a subprocess, on a free port."""

    def __init__(self, study_dir: Path, log_path: Path):
        self.study_dir = study_dir
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}/"

    def start(self) -> None:
        self.port = free_port()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                streamlit_command(self.port),
                env={**os.environ, STUDY_ENV: str(self.study_dir)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_healthy(self.url, self.proc, START_TIMEOUT_S):
            return
        self.stop()
        pytest.fail(f"the reader-study app did not answer within {START_TIMEOUT_S:.0f} s:\n{self.log()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown handlers, as in a crash or an OOM kill
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Study:
    path: Path
    tokens: dict[str, str]
    info: study.StudyInfo
    store: Store
    server: Server

    @property
    def questions(self) -> dict[str, str]:
        """criterion -> question, for the 1-5 criteria."""
        return {c.name: c.question for c in self.info.criteria}

    @property
    def n_answers(self) -> int:
        """Rating rows per rated item."""
        return len(self.info.criteria) + self.info.turing

    def reader_id(self, name: str) -> int:
        return next(r["id"] for r in self.store.table(readers) if r["name"] == name)

    def queue_items(self, name: str) -> list[str]:
        """The reader's item ids in the order the app shows them (item k is index k-1)."""
        return [e.item_id for e in self.store.queue(self.reader_id(name))]

    def rows(self, table: Any, name: str) -> list[dict[str, Any]]:
        rid = self.reader_id(name)
        return [r for r in self.store.table(table) if r["reader_id"] == rid]


def _open_study(root: Path, readers_: tuple[str, ...]) -> Study:
    created = make_study(root, readers=readers_, per_model=PER_MODEL, turing=True)
    path, info = study.load(created.path)
    store = Store(study.database_url(path, info))
    return Study(path, created.tokens, info, store, Server(path, root / "server.log"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    """One study and one server for every test that does not restart the server."""
    s = _open_study(tmp_path_factory.mktemp("e2e-shared"), SHARED_READERS)
    try:
        s.server.start()
        yield s
    finally:
        s.server.stop()
        s.store.close()


def _launch(p: Any) -> Any:
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = _launch(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def context(browser: Any) -> Iterator[Any]:
    ctx = _context(browser)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def new_page(context: Any) -> Iterator[Callable[[], Any]]:
    """New tabs, closed after the test. Each tab is its own Streamlit session (session state lives
    with the websocket, not with cookies); sharing one context only shares the cached app code."""
    pages = []

    def make() -> Any:
        pages.append(context.new_page())
        return pages[-1]

    yield make
    for page in pages:
        page.close()


def _context(browser: Any) -> Any:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(UI_TIMEOUT_MS)
    return ctx


# --- driving the app --------------------------------------------------------------------------


def wait_idle(page: Any) -> None:
    """Until the script run has finished, nothing on the page is left over from an earlier run and
    every element is drawn (a widget whose code is still loading shows as a skeleton)."""
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app && app.dataset.testScriptState === 'notRunning'
                && app.dataset.testConnectionState === 'CONNECTED'
                && !document.querySelector('[data-stale="true"], [data-testid="stSkeleton"]');
        }"""
    )


def sign_in(page: Any, url: str, token: str) -> None:
    page.goto(url)
    page.get_by_label("Access token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in").click()


def wait_for(page: Any, item: int, done: int, total: int) -> None:
    """Until the page shows item ``item`` and the progress ``done of total rated``, and is idle."""
    sync_api.expect(page.get_by_text(re.compile(rf"^Item {item} of {total}\b"))).to_be_visible()
    sync_api.expect(page.get_by_text(f"{done} of {total} rated", exact=False)).to_be_visible()
    wait_idle(page)


def shown(page: Any) -> tuple[int, int, int]:
    """(item number, rated, total) as the page states them."""
    item = ITEM_TEXT.match(page.get_by_text(ITEM_TEXT).inner_text())
    progress = re.search(r"(\d+) of (\d+) rated", page.get_by_text(" rated · ").inner_text())
    assert item and progress, page.content()
    return int(item.group(1)), int(progress.group(1)), int(progress.group(2))


def radio_group(page: Any, question: str) -> Any:
    return page.locator("[data-testid='stRadio']").filter(has=page.get_by_text(question, exact=True))


def _groups(s: Study, answers: Answers) -> list[tuple[Any, Any, list[Any]]]:
    """(question, answer, options) for each radio group the answers fill."""
    out = []
    for name, value in answers.items():
        if name == TURING:
            verdict, confidence = value
            out.append((TURING_QUESTION, verdict, ["real", "synthetic"]))
            out.append((CONFIDENCE_QUESTION, confidence, SCORES))
        else:
            out.append((s.questions[name], value, SCORES))
    return out


def choose(page: Any, s: Study, answers: Answers) -> None:
    for question, value, options in _groups(s, answers):
        radio_group(page, question).get_by_test_id("stRadioOption").nth(options.index(value)).click()


def checked(page: Any, s: Study) -> Answers:
    """The answers the form shows as selected (None where nothing is selected)."""

    def selected(question: str, options: list[Any]) -> Any:
        radios = radio_group(page, question).locator("input[type='radio']")
        assert radios.count() == len(options), question
        picked = [options[i] for i in range(radios.count()) if radios.nth(i).is_checked()]
        assert len(picked) <= 1
        return picked[0] if picked else None

    out: Answers = {name: selected(q, SCORES) for name, q in s.questions.items()}
    if s.info.turing:
        out[TURING] = (
            selected(TURING_QUESTION, ["real", "synthetic"]),
            selected(CONFIDENCE_QUESTION, SCORES),
        )
    return out


def blank(s: Study) -> Answers:
    out: Answers = dict.fromkeys(s.questions)
    if s.info.turing:
        out[TURING] = (None, None)
    return out


def answers_for(s: Study, k: int, salt: int = 0) -> Answers:
    """Distinct, reproducible answers per item, so that a row stored for the wrong item shows up."""
    out: Answers = {name: (k + j + salt) % 5 + 1 for j, name in enumerate(s.questions)}
    if s.info.turing:
        out[TURING] = (("real", "synthetic")[(k + salt) % 2], (k + salt + 2) % 5 + 1)
    return out


def stored(s: Study, reader: str) -> dict[str, Answers]:
    """item -> answers, from the database."""
    out: dict[str, Answers] = {}
    for r in s.rows(ratings, reader):
        assert r["read_number"] == 1
        value = (r["turing_answer"], r["confidence"]) if r["criterion"] == TURING else r["score"]
        out.setdefault(r["item_id"], {})[r["criterion"]] = value
    return out


def submit(page: Any) -> Any:
    return page.get_by_role("button", name="Submit")


def rate(page: Any, s: Study, answers: Answers, *, item: int, done: int, total: int) -> None:
    """Answer the item on screen, submit, and wait until the app has moved on to ``item``."""
    choose(page, s, answers)
    submit(page).click()
    wait_for(page, item, done, total)


def page_errors(page: Any) -> list[str]:
    alerts = page.locator(ERROR_ALERT)
    texts = [alerts.nth(i).inner_text() for i in range(alerts.count())]
    if "database is locked" in page.content():
        texts.append("'database is locked' on the page")
    return texts


# --- tests ------------------------------------------------------------------------------------


def test_two_readers_rating_at_once_lose_nothing(shared: Study, browser: Any) -> None:
    total = shared.info.n_items
    salts = {"alice": 0, "bob": 2}
    contexts = {r: _context(browser) for r in salts}  # two browsers as far as the server can tell
    try:
        pages = {r: ctx.new_page() for r, ctx in contexts.items()}
        for r, page in pages.items():
            sign_in(page, shared.server.url, shared.tokens[r])
        for page in pages.values():
            wait_for(page, 1, 0, total)
        errors: dict[str, list[str]] = {r: [] for r in salts}
        for k in range(total):
            for r, page in pages.items():
                choose(page, shared, answers_for(shared, k, salts[r]))
            # Both clicks go out before either answer is back, so the two sessions' script runs
            # (threads of one server process) write to the database at the same time.
            for page in pages.values():
                submit(page).click()
            for r, page in pages.items():
                sync_api.expect(page.get_by_text(f"{k + 1} of {total} rated")).to_be_visible()
                wait_idle(page)
                errors[r] += page_errors(page)
        for page in pages.values():
            sync_api.expect(page.get_by_text("All items are rated")).to_be_visible()
    finally:
        for ctx in contexts.values():
            ctx.close()

    assert errors == {"alice": [], "bob": []}
    for reader, salt in salts.items():
        order = shared.queue_items(reader)
        assert stored(shared, reader) == {item: answers_for(shared, k, salt) for k, item in enumerate(order)}
        assert len(shared.rows(ratings, reader)) == total * shared.n_answers
        assert len(shared.rows(submissions, reader)) == total
        assert len(shared.rows(responses, reader)) == total
    assert "database is locked" not in shared.server.log()
    assert "Traceback" not in shared.server.log()


def test_double_click_on_submit_stores_one_submission(shared: Study, new_page: Callable[[], Any]) -> None:
    total, reader = shared.info.n_items, "carol"
    page = new_page()
    sign_in(page, shared.server.url, shared.tokens[reader])
    wait_for(page, 1, 0, total)
    choose(page, shared, answers_for(shared, 0))
    submit(page).dblclick()
    wait_for(page, 2, 1, total)
    # The second click reaches the server within milliseconds of the first; a second submit
    # would start its own run right after the first one. Leave it the time to show.
    time.sleep(0.5)
    wait_idle(page)

    assert shown(page) == (2, 1, total)
    assert len(shared.rows(submissions, reader)) == 1
    assert stored(shared, reader) == {shared.queue_items(reader)[0]: answers_for(shared, 0)}
    assert len(shared.rows(responses, reader)) == 1
    assert page_errors(page) == []


def test_next_item_starts_blank_and_a_back_edit_is_audited(
    shared: Study, new_page: Callable[[], Any]
) -> None:
    total, reader = shared.info.n_items, "dave"
    page = new_page()
    sign_in(page, shared.server.url, shared.tokens[reader])
    wait_for(page, 1, 0, total)
    assert checked(page, shared) == blank(shared)
    first_answers = answers_for(shared, 0)
    rate(page, shared, first_answers, item=2, done=1, total=total)
    # The answers just given must not be pre-selected on the next item.
    assert checked(page, shared) == blank(shared)
    rate(page, shared, answers_for(shared, 1), item=3, done=2, total=total)

    for item in (2, 1):
        page.get_by_role("button", name="◀ Previous").click()
        wait_for(page, item, 2, total)
    sync_api.expect(page.get_by_text("rated, you can change your answers")).to_be_visible()
    assert checked(page, shared) == first_answers  # the stored answers, not the last ones given

    changed = next(iter(shared.questions))
    new_score = first_answers[changed] % 5 + 1
    choose(page, shared, {changed: new_score})
    submit(page).click()
    wait_for(page, 3, 2, total)  # on to the first unrated item after the edited one

    first = shared.queue_items(reader)[0]
    assert stored(shared, reader)[first] == {**first_answers, changed: new_score}
    assert len(shared.rows(submissions, reader)) == 3
    trail = [r for r in shared.rows(audit_log, reader) if r["item_id"] == first and r["field"] == changed]
    assert [(r["action"], r["old"], r["new"]) for r in trail] == [
        ("create", None, f"score={first_answers[changed]}"),
        ("update", f"score={first_answers[changed]}", f"score={new_score}"),
    ]
    assert trail[0]["submission_id"] != trail[1]["submission_id"]
    edit = [r for r in shared.rows(audit_log, reader) if r["submission_id"] == trail[1]["submission_id"]]
    assert edit == trail[1:]  # the unchanged answers were not rewritten
    assert page_errors(page) == []


def _png_chunks(data: bytes) -> list[tuple[str, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((kind.decode("latin-1"), data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def test_nothing_reaching_the_reader_names_a_model_case_or_file(
    shared: Study, new_page: Callable[[], Any]
) -> None:
    total, reader = shared.info.n_items, "erin"
    key = pd.read_parquet(shared.path / studydir.KEY)
    assert len(key) == total and set(key.model) == {"real", *MODELS}
    secrets = {LEAKY_TEXT, *MODELS, *key.case_id}
    secrets |= {part for p in key.source_path for part in (Path(p).name, Path(p).stem)}

    page = new_page()
    frames: list[bytes] = []
    page.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda f: frames.append(f if isinstance(f, bytes) else f.encode())),
    )
    sign_in(page, shared.server.url, shared.tokens[reader])
    headers, bodies, urls, lengths = set(), set(), [], set()
    for k in range(1, total + 1):
        wait_for(page, k, 0, total)
        src = page.locator("[data-testid='stMain'] img").get_attribute("src")
        urls.append(src)
        response = page.request.get(src, headers={"Accept-Encoding": "gzip, deflate, br"})
        assert response.ok, src
        body = response.body()
        # What crosses the wire: one length for every item (the byte size told real from generated
        # before), never compressed on the way, never cached.
        assert "content-encoding" not in response.headers and response.headers["cache-control"] == "no-store"
        lengths.add(int(response.headers["content-length"]))
        if k > 1:
            assert page.request.get(urls[-2]).status == 404  # a media file lives while it is shown
        chunks = _png_chunks(body)
        assert [c for c, _ in chunks if c != "IDAT"] == ["IHDR", "IEND"], [c for c, _ in chunks]
        width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
        headers.add((width, height, depth, colour))
        bodies.add(body)
        html = page.content()
        assert [x for x in secrets if x in html or x in src] == [], f"item {k}"
        if k < total:
            page.get_by_role("button", name="Next ▶").click()

    assert headers == {(shared.info.image_size, shared.info.image_size, 8, 0)}  # 8-bit greyscale
    assert len(lengths) == 1 and lengths == {len(next(iter(bodies)))}
    assert page.request.get(f"{shared.server.url}_stcore/metrics").status == 404
    assert len(bodies) == total  # every item was visited, each a different image
    assert all(re.fullmatch(r"http://localhost:\d+/media/[0-9a-f]+\.png", u) for u in urls), urls
    everything = b"".join(frames)
    assert len(everything) > 1000  # the websocket traffic was captured at all
    assert [x for x in secrets if x.encode() in everything] == []
    assert not shared.rows(ratings, reader)  # looking around stores nothing


def _assert_login_only(page: Any) -> None:
    sync_api.expect(page.get_by_label("Access token", exact=True)).to_be_visible()
    assert page.locator("[data-testid='stMain'] img").count() == 0
    assert submit(page).count() == 0
    assert page.get_by_text(" rated · ").count() == 0


def test_wrong_or_missing_token_sees_only_the_login(shared: Study, new_page: Callable[[], Any]) -> None:
    media: list[str] = []
    page = new_page()
    # Streamlit serves st.image bytes under /media/ (its own assets are under /static/).
    page.on("response", lambda r: media.append(r.url) if urlparse(r.url).path.startswith("/media/") else None)
    page.goto(shared.server.url)
    sync_api.expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    wait_idle(page)
    _assert_login_only(page)

    token = shared.tokens["gina"]
    # None of these is a token: nothing, one character off, and a real token twice over.
    for attempt in ("", token[:-1] + ("A" if token[-1] != "A" else "B"), token + token):
        page.get_by_label("Access token", exact=True).fill(attempt)
        page.get_by_role("button", name="Sign in").click()
        # A refused token holds its run for 0.5 s, long enough to see it start: without this the
        # previous attempt's error would pass for this one's.
        page.wait_for_function(
            "() => document.querySelector('[data-testid=\"stApp\"]').dataset.testScriptState !== 'notRunning'"
        )
        wait_idle(page)
        sync_api.expect(page.locator(ERROR_ALERT)).to_contain_text("Unknown token")
        _assert_login_only(page)
    assert media == []


def test_a_reissue_ends_a_live_session_at_its_next_click(shared: Study, new_page: Callable[[], Any]) -> None:
    """The study lead reissues a token while the reader is signed in: the open tab's next Submit
    stores nothing and shows the login, and the old token no longer signs in."""
    total, reader = shared.info.n_items, "ivan"
    page = new_page()
    sign_in(page, shared.server.url, shared.tokens[reader])
    wait_for(page, 1, 0, total)
    rate(page, shared, answers_for(shared, 0), item=2, done=1, total=total)
    new_token = admin.reissue(shared.path, reader)
    choose(page, shared, answers_for(shared, 1))
    submit(page).click()
    sync_api.expect(page.get_by_text("token was reissued", exact=False)).to_be_visible()
    wait_idle(page)
    _assert_login_only(page)
    assert len(shared.rows(ratings, reader)) == shared.n_answers  # the first item only
    sign_in(page, shared.server.url, shared.tokens[reader])
    sync_api.expect(page.locator(ERROR_ALERT)).to_contain_text("Unknown token")
    sign_in(page, shared.server.url, new_token)
    wait_for(page, 2, 1, total)  # resumes at the first unrated item
    assert page_errors(page) == []


def test_ratings_survive_a_killed_server_and_the_reader_resumes(
    tmp_path: Path, new_page: Callable[[], Any]
) -> None:
    s = _open_study(tmp_path, ("hana",))
    total, reader = s.info.n_items, "hana"
    try:
        s.server.start()
        page = new_page()
        sign_in(page, s.server.url, s.tokens[reader])
        wait_for(page, 1, 0, total)
        rate(page, s, answers_for(s, 0), item=2, done=1, total=total)
        page.get_by_role("button", name="Next ▶").click()  # item 2 is left unrated
        wait_for(page, 3, 1, total)
        rate(page, s, answers_for(s, 2), item=4, done=2, total=total)
        rate(page, s, answers_for(s, 3), item=5, done=3, total=total)
        s.server.kill()
        assert s.server.proc is not None and s.server.proc.returncode == -9

        order = s.queue_items(reader)
        expected = {order[k]: answers_for(s, k) for k in (0, 2, 3)}
        assert stored(s, reader) == expected

        s.server.start()
        page = new_page()
        sign_in(page, s.server.url, s.tokens[reader])
        wait_for(page, 2, 3, total)  # the first unrated item, not the one after the last rated
        assert checked(page, s) == blank(s)
        page.get_by_role("button", name="Next ▶").click()
        wait_for(page, 3, 3, total)
        assert checked(page, s) == answers_for(s, 2)
        assert stored(s, reader) == expected
        assert len(s.rows(submissions, reader)) == 3
        assert page_errors(page) == []
    finally:
        s.server.stop()
        s.store.close()


# --- landmarks (--landmarks norberg) ----------------------------------------------------------

COMPONENT_FRAME = "iframe[title='streamlit_image_coordinates.streamlit_image_coordinates']"
# Where the test clicks, in CSS pixels of the drawn image, in the order the app asks for points.
LANDMARK_CLICKS = {
    "right_head_1": (60, 200), "right_head_2": (110, 150), "right_head_3": (160, 200), "right_rim": (80, 120),
    "left_head_1": (340, 200), "left_head_2": (390, 150), "left_head_3": (440, 200), "left_rim": (420, 118.5),
}  # fmt: skip


def next_step(page: Any, pattern: str) -> None:
    sync_api.expect(page.get_by_text(re.compile(rf"^Next: {pattern}"))).to_be_visible()
    wait_idle(page)


def test_landmarks_clicked_in_the_browser_are_stored_where_clicked(
    tmp_path: Path, new_page: Callable[[], Any]
) -> None:
    created = make_study(tmp_path, readers=("lena",), per_model=1, landmarks="norberg", criteria="quality")
    path, info = study.load(created.path)
    store = Store(study.database_url(path, info))
    s = Study(path, created.tokens, info, store, Server(path, tmp_path / "server.log"))
    key = pd.read_parquet(path / studydir.KEY)
    secrets = {LEAKY_TEXT, *MODELS, *key.case_id}
    secrets |= {part for p in key.source_path for part in (Path(p).name, Path(p).stem)}
    try:
        s.server.start()
        page = new_page()
        frames: list[bytes] = []

        def received(f: Any) -> None:
            frames.append(f if isinstance(f, bytes) else f.encode())

        page.on("websocket", lambda ws: ws.on("framereceived", received))
        sign_in(page, s.server.url, s.tokens["lena"])
        next_step(page, "femoral-head outline point 1 ")
        img = page.frame_locator(COMPONENT_FRAME).locator("img#image")
        sync_api.expect(img).to_be_visible()
        # The image is a data: URL of the app's own PNG: no file name, path or media URL.
        src = img.get_attribute("src")
        assert src.startswith("data:image/png;base64,")
        chunks = _png_chunks(base64.b64decode(src.split(",", 1)[1]))
        assert [c for c, _ in chunks if c != "IDAT"] == ["IHDR", "IEND"]
        assert struct.unpack(">IIBB", chunks[0][1][:10]) == (512, 512, 8, 2)  # 8-bit RGB
        frame_src = page.locator(COMPONENT_FRAME).get_attribute("src")
        html = page.content() + page.frame_locator(COMPONENT_FRAME).locator("html").inner_html()
        assert [x for x in secrets if x in html or x in frame_src] == []

        width = img.evaluate("el => el.width")  # what the component reports with each click
        assert width == img.evaluate("el => el.height") and width > 300
        for name, (x, y) in LANDMARK_CLICKS.items():
            img.click(position={"x": x, "y": y})
            if name.endswith("_head_3"):
                next_step(page, "femoral-head outline point 4 ")
                page.get_by_role("button", name="Outline done").click()
                next_step(page, "the craniolateral acetabular rim point")
            elif name.endswith("_rim"):
                after_rim = re.compile(r"^(Next: femoral-head outline point 1 |All landmarks)")
                sync_api.expect(page.get_by_text(after_rim)).to_be_visible()
                wait_idle(page)
            else:
                next_step(page, f"femoral-head outline point {int(name[-1]) + 1} ")
        sync_api.expect(page.get_by_text("All landmarks are placed")).to_be_visible()
        radio_group(page, s.questions["quality"]).get_by_test_id("stRadioOption").nth(3).click()
        submit(page).click()
        wait_for(page, 2, 1, s.info.n_items)
        assert page_errors(page) == []

        item = s.queue_items("lena")[0]
        stored = s.store.landmarks(s.reader_id("lena"), item, 1)
        assert set(stored) == set(LANDMARK_CLICKS)
        for name, (x, y) in LANDMARK_CLICKS.items():
            # Pixel edges scale by 64 / width; the stored frame puts pixel centres at integers.
            expected = (x * 64 / width - 0.5, y * 64 / width - 0.5)
            # Chrome reports whole CSS pixels: 118.5 arrives as 118, half a pixel off.
            assert stored[name] == pytest.approx(expected, abs=0.5 * 64 / width + 1e-12), name
        everything = b"".join(frames)
        assert len(everything) > 1000 and [x for x in secrets if x.encode() in everything] == []
        assert "Traceback" not in s.server.log()
    finally:
        if s.server.proc is not None and s.server.proc.poll() is None:
            s.server.kill()  # a throw-away study: no need to wait for a clean shutdown
        s.store.close()
