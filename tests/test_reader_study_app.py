"""The rating app's flows, driven in-process by Streamlit's AppTest (no server, no browser).

Sign-in, rating, validation, going back to change an answer, resuming in a new session, flagging
and signing out, each checked against what the study database holds afterwards. What only a real
browser shows (concurrency, double clicks, the bytes on the wire) is in test_reader_study_e2e.py.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from reader_study import admin, placement, study, studydir
from reader_study.criteria import BUILTIN, DEFAULT_CRITERIA, TURING, TURING_QUESTION
from reader_study.serve import APP
from reader_study.store import Answer, Store, audit_log, ratings, readers, responses
from reader_study.store import landmarks as landmarks_table
from tests.reader_study_fixtures import LEAKY_TEXT, MODELS, make_study

STUDY_ENV = "XRAY_AUDIT_STUDY_DIR"
CONFIDENCE_QUESTION = "How sure are you?"
N_ITEMS = 6  # 2 real + 2 per model


class Study:
    """A fresh study for one test, with direct access to its database."""

    def __init__(self, root: Path):
        self.made = make_study(root, turing=True, per_model=2)
        self.path = self.made.path
        root_, info = study.load(self.path)
        self.store = Store(study.database_url(root_, info))
        self.ids = {r["name"]: r["id"] for r in self.store.table(readers)}

    def queue(self, reader: str = "alice") -> list[Any]:
        return self.store.queue(self.ids[reader])

    def rows(self, table: Any) -> list[dict[str, Any]]:
        return self.store.table(table)


@pytest.fixture
def media(monkeypatch) -> list[bytes]:
    """Every file the app hands to Streamlit's media store: what a browser would download."""
    sent: list[bytes] = []
    real = MemoryMediaFileStorage.load_and_get_id

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
        sent.append(bytes(path_or_data))
        return real(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", load_and_get_id)
    return sent


@pytest.fixture
def rs(tmp_path, monkeypatch) -> Iterator[Study]:
    # The app caches the opened study (and its database engine) per process: start clean.
    st.cache_resource.clear()
    st.cache_data.clear()
    s = Study(tmp_path)
    monkeypatch.setenv(STUDY_ENV, str(s.path))
    yield s
    s.store.close()
    st.cache_resource.clear()
    st.cache_data.clear()


def open_app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=30).run()


def button(at: AppTest, label: str) -> Any:
    found = [b for b in at.button if b.label == label]
    assert len(found) == 1, [b.label for b in at.button]
    return found[0]


def sign_in(at: AppTest, token: str) -> AppTest:
    [box] = [t for t in at.text_input if t.label == "Access token"]
    box.input(token)
    return button(at, "Sign in").click().run()


def radio(at: AppTest, label: str) -> Any:
    [found] = [r for r in at.radio if r.label == label]
    return found


def answer(
    at: AppTest, scores: dict[str, int], verdict: str | None = "real", confidence: int | None = 4
) -> None:
    for name, score in scores.items():
        radio(at, f"**{BUILTIN[name].question}**").set_value(score)
    if verdict is not None:
        radio(at, f"**{TURING_QUESTION}**").set_value(verdict)
    if confidence is not None:
        radio(at, CONFIDENCE_QUESTION).set_value(confidence)


def submit(at: AppTest) -> AppTest:
    return button(at, "Submit").click().run()


def progress_text(at: AppTest) -> str:
    [bar] = at.get("progress")
    return bar.proto.text


def item_line(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("Item **"))


def chunk_types(png: bytes) -> list[bytes]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(png):
        length = struct.unpack(">I", png[pos : pos + 4])[0]
        out.append(png[pos + 4 : pos + 8])
        pos += 12 + length
    return out


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def page_text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + errors(at)
    parts += [w.label for w in (*at.radio, *at.button, *at.text_input, *at.checkbox)]
    return "\n".join(parts)


ALL = {name: 3 for name in DEFAULT_CRITERIA}


def test_sign_in(rs, media):
    at = open_app()
    assert not at.exception
    assert not at.get("image") and not at.radio
    at = sign_in(at, "not-a-token")
    assert errors(at) == ["Unknown token. Check it with your study lead."]
    assert not at.get("image") and not at.radio and not media
    at = sign_in(at, rs.made.tokens["alice"])
    assert not errors(at) and not at.exception
    assert item_line(at).startswith(f"Item **1** of {N_ITEMS}") and "not rated yet" in item_line(at)
    assert progress_text(at) == f"0 of {N_ITEMS} rated · {N_ITEMS} left"
    assert [r.label for r in at.radio] == [
        *(f"**{BUILTIN[n].question}**" for n in DEFAULT_CRITERIA),
        f"**{TURING_QUESTION}**",
        CONFIDENCE_QUESTION,
    ]
    assert all(r.value is None for r in at.radio)  # nothing pre-selected
    assert len(at.get("image")) == 1
    # The image sent is the stored image of the reader's first item, re-rendered (no metadata).
    first = rs.queue()[0].item_id
    with Image.open(study.image_path(rs.path, first)) as im:
        stored = np.asarray(im)
    [png] = media
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), stored)
    assert chunk_types(png) == [b"IHDR", b"IDAT", b"IEND"]
    assert first not in at.get("image")[0].value[0]
    assert "alice" in page_text(at)


def test_sign_in_works_without_the_key(rs):
    (rs.path / studydir.KEY).unlink()  # the app must never need the unblinding key
    at = sign_in(open_app(), rs.made.tokens["bob"])
    assert not errors(at) and not at.exception and at.radio


def test_rate_stores_every_answer_and_moves_on(rs):
    at = sign_in(open_app(), rs.made.tokens["alice"])
    first, second = rs.queue()[0], rs.queue()[1]
    answer(at, {"anatomy": 2, "pathology": 4, "quality": 5}, verdict="synthetic", confidence=3)
    at = submit(at)
    assert not errors(at) and not at.exception
    stored = {(r["item_id"], r["criterion"]): r for r in rs.rows(ratings)}
    assert {k: (r["score"], r["turing_answer"], r["confidence"]) for k, r in stored.items()} == {
        (first.item_id, "anatomy"): (2, None, None),
        (first.item_id, "pathology"): (4, None, None),
        (first.item_id, "quality"): (5, None, None),
        (first.item_id, TURING): (None, "synthetic", 3),
    }
    assert all(r["reader_id"] == rs.ids["alice"] and r["read_number"] == 1 for r in stored.values())
    [head] = rs.rows(responses)
    assert not head["flagged"] and head["seconds"] is not None and head["seconds"] >= 0
    assert progress_text(at) == f"1 of {N_ITEMS} rated · {N_ITEMS - 1} left"
    assert item_line(at).startswith(f"Item **2** of {N_ITEMS}")
    # The next item's form starts empty: no answer carried over from the previous one.
    assert all(r.value is None for r in at.radio)
    assert rs.queue()[0].done and not second.done
    text = page_text(at)
    assert not any(m in text for m in MODELS) and LEAKY_TEXT not in text and "case-" not in text


def test_missing_answer_is_refused(rs):
    at = sign_in(open_app(), rs.made.tokens["alice"])
    answer(at, {"anatomy": 2, "quality": 5})  # pathology missing
    at = submit(at)
    assert len(errors(at)) == 1 and BUILTIN["pathology"].question in errors(at)[0]
    assert BUILTIN["anatomy"].question not in errors(at)[0]
    assert rs.rows(responses) == [] and rs.rows(ratings) == []
    assert item_line(at).startswith(f"Item **1** of {N_ITEMS}")
    # The Turing question counts too.
    at = sign_in(open_app(), rs.made.tokens["bob"])
    answer(at, ALL, verdict="real", confidence=None)
    at = submit(at)
    assert len(errors(at)) == 1 and TURING_QUESTION in errors(at)[0]
    assert rs.rows(responses) == []


def test_back_edit_updates_the_rating_and_keeps_the_old_value(rs):
    at = sign_in(open_app(), rs.made.tokens["alice"])
    first = rs.queue()[0].item_id
    answer(at, {"anatomy": 2, "pathology": 3, "quality": 3})
    at = submit(at)
    assert item_line(at).startswith("Item **2**")
    at = button(at, "◀ Previous").click().run()
    assert item_line(at).startswith("Item **1**") and "rated, you can change" in item_line(at)
    # The stored answers are shown.
    assert radio(at, f"**{BUILTIN['anatomy'].question}**").value == 2
    assert radio(at, f"**{TURING_QUESTION}**").value == "real"
    radio(at, f"**{BUILTIN['anatomy'].question}**").set_value(5)
    at = submit(at)
    assert not errors(at)
    scores = {r["criterion"]: r["score"] for r in rs.rows(ratings) if r["item_id"] == first}
    assert scores == {"anatomy": 5, "pathology": 3, "quality": 3, TURING: None}
    assert len(rs.rows(ratings)) == 4  # changed in place, not added
    trail = [
        (r["action"], r["field"], r["old"], r["new"]) for r in rs.rows(audit_log) if r["item_id"] == first
    ]
    assert ("create", "anatomy", None, "score=2") in trail
    assert ("update", "anatomy", "score=2", "score=5") in trail
    assert progress_text(at) == f"1 of {N_ITEMS} rated · {N_ITEMS - 1} left"
    assert item_line(at).startswith("Item **2**")  # back to the first unrated item


def test_a_new_session_resumes_at_the_first_unrated_item(rs):
    at = sign_in(open_app(), rs.made.tokens["alice"])
    answer(at, ALL)
    at = submit(at)
    answer(at, ALL)
    at = submit(at)
    assert progress_text(at).startswith("2 of")
    again = sign_in(open_app(), rs.made.tokens["alice"])  # a reload: new session, same reader
    assert item_line(again).startswith("Item **3**") and "not rated yet" in item_line(again)
    assert progress_text(again) == f"2 of {N_ITEMS} rated · {N_ITEMS - 2} left"
    # A gap earlier in the queue comes first: item 5 rated elsewhere, item 3 still open.
    fifth = rs.queue()[4]
    rs.store.submit(
        rs.ids["alice"], fifth.item_id, 1, "elsewhere", [Answer("anatomy", score=1)],
        shown=rs.store.shown(rs.ids["alice"], fifth.item_id, 1),
    )  # fmt: skip
    later = sign_in(open_app(), rs.made.tokens["alice"])
    assert item_line(later).startswith("Item **3**")
    assert progress_text(later) == f"3 of {N_ITEMS} rated · {N_ITEMS - 3} left"
    # Another reader's session is unaffected.
    bob = sign_in(open_app(), rs.made.tokens["bob"])
    assert item_line(bob).startswith("Item **1**") and progress_text(bob).startswith("0 of")


def test_flag_needs_a_reason_and_replaces_the_scores(rs):
    at = sign_in(open_app(), rs.made.tokens["alice"])
    first = rs.queue()[0].item_id
    [flag] = [c for c in at.checkbox if c.label == "Unreadable / flag this image"]
    flag.check()
    at = submit(at)
    assert errors(at) == ["Give a reason for the flag, or untick it."]
    assert rs.rows(responses) == []
    [reason] = [t for t in at.text_input if t.label == "Reason for the flag"]
    reason.input("motion blur")
    at = submit(at)
    assert not errors(at)
    [head] = rs.rows(responses)
    assert head["item_id"] == first and head["flagged"] and head["flag_reason"] == "motion blur"
    assert rs.rows(ratings) == []
    assert progress_text(at).startswith("1 of") and item_line(at).startswith("Item **2**")
    # The next item starts unflagged.
    [flag] = [c for c in at.checkbox if c.label == "Unreadable / flag this image"]
    [reason] = [t for t in at.text_input if t.label == "Reason for the flag"]
    assert flag.value is False and reason.value == ""


def test_sign_out_returns_to_the_login(rs):
    at = sign_in(open_app(), rs.made.tokens["alice"])
    assert at.radio
    at = button(at, "Sign out").click().run()
    assert not at.radio and not at.get("image") and "reader_id" not in at.session_state
    assert [t.label for t in at.text_input] == ["Access token"]
    assert "alice" not in page_text(at)


def _fresh_study(tmp_path, monkeypatch, **options: Any) -> Study:
    st.cache_resource.clear()
    s = Study.__new__(Study)
    s.made = make_study(tmp_path, **{"turing": True, "per_model": 2, **options})
    s.path = s.made.path
    root_, _ = study.load(s.path)
    s.store = Store(study.database_url(root_, study.load(s.path)[1]))
    s.ids = {r["name"]: r["id"] for r in s.store.table(readers)}
    monkeypatch.setenv(STUDY_ENV, str(s.path))
    return s


def test_a_reread_is_not_given_away_by_its_url_bytes_or_the_item_count(tmp_path, monkeypatch, media):
    """The first version sent a re-read under its first read's URL (the same bytes) and counted
    "Item N of M" over the items available now, so M grew right after the item to be re-read was
    rated. Now M is the whole queue, and the re-read is other bytes of the same length."""
    s = _fresh_study(tmp_path, monkeypatch, reread_percent=50, washout="0d")
    try:
        queue = s.queue()
        total = len(queue)
        assert [e.read_number for e in queue].count(2) == 3
        at = sign_in(open_app(), s.made.tokens["alice"])
        shown: dict[tuple[str, int], bytes] = {}
        for entry in queue:
            assert item_line(at).startswith(f"Item **{entry.position + 1}** of {total}"), item_line(at)
            shown[(entry.item_id, entry.read_number)] = media[-1]
            answer(at, ALL)
            at = submit(at)
            assert not errors(at) and not at.exception
        assert progress_text(at) == f"{total} of {total} rated · 0 left"
        for entry in (e for e in queue if e.read_number == 2):
            first, again = shown[(entry.item_id, 1)], shown[(entry.item_id, 2)]
            assert first != again and len(first) == len(again)  # so another content-hash URL
            np.testing.assert_array_equal(
                np.asarray(Image.open(io.BytesIO(first))), np.asarray(Image.open(io.BytesIO(again)))
            )
        assert len({len(png) for png in media}) == 1  # every image sent has one byte length
    finally:
        s.store.close()


def test_a_session_ends_when_its_token_is_reissued(rs):
    at = sign_in(open_app(), rs.made.tokens["alice"])
    answer(at, ALL)
    admin.reissue(rs.path, "alice")  # the study lead reissues while alice is signed in
    at = submit(at)
    assert [t.label for t in at.text_input] == ["Access token"] and not at.radio
    assert any("token was reissued" in w.value for w in at.warning)
    assert rs.rows(ratings) == []  # the old session stored nothing
    # The old token is dead; a page run without a click (a rerun) shows the login too.
    at = sign_in(at, rs.made.tokens["alice"])
    assert errors(at) == ["Unknown token. Check it with your study lead."]


def test_a_second_tab_cannot_silently_overwrite_the_first(rs):
    tab_a = sign_in(open_app(), rs.made.tokens["alice"])
    tab_b = sign_in(open_app(), rs.made.tokens["alice"])  # the same reader, a second tab
    first = rs.queue()[0].item_id
    answer(tab_a, {"anatomy": 2, "pathology": 2, "quality": 2})
    tab_a = submit(tab_a)
    assert not errors(tab_a)
    answer(tab_b, {"anatomy": 5, "pathology": 5, "quality": 5})
    tab_b = submit(tab_b)
    [warning] = [w.value for w in tab_b.warning]
    assert "changed in another tab" in warning and "NOT saved" in warning and "anatomy: 2" in warning
    assert {r["criterion"]: r["score"] for r in rs.rows(ratings) if r["criterion"] != TURING} == {
        "anatomy": 2, "pathology": 2, "quality": 2,
    }  # fmt: skip
    assert [r["action"] for r in rs.rows(audit_log)].count("refuse_stale_form") == 1
    # The refused tab now shows the stored answer, and a submit from it goes through.
    assert item_line(tab_b).startswith("Item **1**")
    assert radio(tab_b, f"**{BUILTIN['anatomy'].question}**").value == 2
    radio(tab_b, f"**{BUILTIN['anatomy'].question}**").set_value(4)
    tab_b = submit(tab_b)
    assert not tab_b.warning and not errors(tab_b)
    assert {r["criterion"]: r["score"] for r in rs.rows(ratings) if r["item_id"] == first}["anatomy"] == 4


def test_an_oversized_comment_is_capped_and_control_characters_are_stripped(tmp_path, monkeypatch):
    """A 20 MB comment was stored twice (the audit log cannot be purged) and sent back on every
    display. The browser's counter stops at 2,000 characters; what a hand-made client sends beyond
    is cut by Streamlit at the widget's limit, and the store and the database refuse more."""
    s = _fresh_study(tmp_path, monkeypatch, comment=True)
    try:
        at = sign_in(open_app(), s.made.tokens["alice"])
        [box] = [t for t in at.text_area if t.label == "Comment (optional)"]
        assert box.proto.max_chars == 2000  # the browser shows a counter and stops at the limit
        box.set_value("x" * 20_000)  # as a hand-made client would send it (input() stops at the limit)
        answer(at, ALL)
        at = submit(at)
        assert not errors(at) and not at.exception
        assert [len(r["comment"]) for r in s.rows(responses)] == [2000]
        assert all(len(r["new"] or "") <= 2000 for r in s.rows(audit_log))
        [box] = [t for t in at.text_area if t.label == "Comment (optional)"]
        box.input("looks \u202efine\u202c\x00 to me")
        answer(at, ALL)
        at = submit(at)
        assert not errors(at)
        assert min(r["comment"] for r in s.rows(responses)) == "looks fine to me"
    finally:
        s.store.close()


def test_no_study_configured(monkeypatch):
    monkeypatch.delenv(STUDY_ENV, raising=False)
    at = open_app()
    assert len(errors(at)) == 1 and "No study configured" in errors(at)[0] and not at.text_input


def test_not_a_study(tmp_path, monkeypatch, caplog):
    """Anyone can load the login page: what is wrong goes to the server log, not to the visitor
    (a database error names the host and user)."""
    st.cache_resource.clear()
    monkeypatch.setenv(STUDY_ENV, str(tmp_path))
    with caplog.at_level(logging.ERROR):
        at = open_app()
    assert len(errors(at)) == 1 and "cannot be opened" in errors(at)[0] and str(tmp_path) not in errors(at)[0]
    assert "is not a reader study directory" in caplog.text
    assert not at.text_input


# --- landmarks (--landmarks norberg) ------------------------------------------------------------


class LandmarkStudy(Study):
    def __init__(self, root: Path):
        self.made = make_study(root, per_model=1, landmarks="norberg", criteria="quality")
        self.path = self.made.path
        root_, self.info = study.load(self.path)
        self.store = Store(study.database_url(root_, self.info))
        self.ids = {r["name"]: r["id"] for r in self.store.table(readers)}


@pytest.fixture
def lm(tmp_path, monkeypatch) -> Iterator[LandmarkStudy]:
    st.cache_resource.clear()
    st.cache_data.clear()
    s = LandmarkStudy(tmp_path)
    monkeypatch.setenv(STUDY_ENV, str(s.path))
    yield s
    s.store.close()
    st.cache_resource.clear()
    st.cache_data.clear()


DRAWN = placement.drawn_size(64)  # the fixture's 64 px images are drawn at 512
SHOWN = 640  # as if the browser drew them 640 px wide


def clicker(at: AppTest) -> Any:
    [el] = [e for e in _walk(at.main) if getattr(e, "key", "") and e.key.startswith("lm-click-")]
    return el


def _walk(node: Any) -> Iterator[Any]:
    for child in getattr(node, "children", {}).values():
        yield child
        yield from _walk(child)


def sent_png(at: AppTest) -> bytes:
    """The PNG the component was given, from the data: URL it sends to the browser."""
    src = json.loads(clicker(at).proto.json_args)["src"]
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return base64.b64decode(src[len(prefix) :])


_CLOCK = iter(range(1, 10**6))


def click(at: AppTest, x: float, y: float) -> AppTest:
    """A click at stored pixel (x, y) of an unzoomed view: what the component would report."""
    at.session_state[clicker(at).key] = {
        "x": (x + 0.5) * SHOWN / 64, "y": (y + 0.5) * SHOWN / 64, "width": SHOWN, "height": SHOWN,
        "unix_time": next(_CLOCK),
    }  # fmt: skip
    return at.run()


def instruction(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith(("Next:", "All landmarks")))


def place_all(
    at: AppTest, points: dict[str, tuple[float, float]], order: tuple[str, str] = placement.screen_sides()
) -> AppTest:
    """Click the points in the order the app asks for them, pressing Outline done after each outline."""
    for side in order:
        outline = [n for n in points if n.startswith(f"{side}_head_")]
        for name in outline:
            assert f"outline point **{name.rsplit('_', 1)[1]}**" in instruction(at), instruction(at)
            at = click(at, *points[name])
        if len(outline) < placement.MAX_OUTLINE:
            at = button(at, "Outline done").click().run()
        assert "rim point" in instruction(at) and side.upper() in instruction(at)
        at = click(at, *points[f"{side}_rim"])
    return at


HIPS = {
    "right_head_1": (10.0, 30.0), "right_head_2": (16.0, 24.0), "right_head_3": (22.0, 30.0),
    "right_rim": (12.0, 21.0), "left_head_1": (40.0, 30.0), "left_head_2": (46.0, 24.0),
    "left_head_3": (52.0, 30.0), "left_rim": (50.0, 21.0),
}  # fmt: skip


def test_landmarks_are_placed_step_by_step_and_stored(lm, media):
    at = sign_in(open_app(), lm.made.tokens["alice"])
    assert not at.exception and not errors(at)
    first = lm.queue()[0].item_id
    assert "patient's **RIGHT** hip, on the image's left" in instruction(at)
    assert any("patient's **right** hip is on the image's left" in i.value for i in at.info)
    # The component gets the stored image, drawn pixel for pixel at 512, as a metadata-free PNG.
    png = sent_png(at)
    assert chunk_types(png) == [b"IHDR", b"IDAT", b"IEND"]
    with Image.open(study.image_path(lm.path, first)) as im:
        stored = np.asarray(im)
    drawn = np.asarray(Image.open(io.BytesIO(png)))
    assert drawn.shape == (DRAWN, DRAWN, 3)
    factor = DRAWN // 64
    np.testing.assert_array_equal(drawn[..., 1], np.kron(stored, np.ones((factor, factor), np.uint8)))
    assert not media  # no st.image: the component carries the image
    assert [b.disabled for b in at.button if b.label in ("Undo last point", "Outline done")] == [True, True]

    at = click(at, *HIPS["right_head_1"])
    assert "outline point **2**" in instruction(at)
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(sent_png(at)))), drawn)  # a marker
    at = at.run()  # a rerun repeats the component's last click: not a second point
    assert "outline point **2**" in instruction(at)
    at = place_all(at, {n: xy for n, xy in HIPS.items() if n != "right_head_1"})
    assert instruction(at).startswith("All landmarks are placed")
    radio(at, f"**{BUILTIN['quality'].question}**").set_value(4)
    at = submit(at)
    assert not errors(at) and not at.exception
    assert item_line(at).startswith("Item **2**")
    assert lm.store.landmarks(lm.ids["alice"], first, 1) == HIPS
    assert [r["score"] for r in lm.rows(ratings)] == [4]
    created = {r["field"] for r in lm.rows(audit_log) if r["action"] == "create"}
    assert {f"landmark:{n}" for n in HIPS} <= created
    # The next item starts with no points.
    assert "outline point **1**" in instruction(at) and "RIGHT" in instruction(at)

    # Back to the first item: its points are shown again; move the left rim and resubmit.
    at = button(at, "◀ Previous").click().run()
    assert instruction(at).startswith("All landmarks are placed")
    at = button(at, "Undo last point").click().run()
    assert "rim point" in instruction(at) and "LEFT" in instruction(at)
    at = click(at, 49.0, 20.0)
    at = submit(at)
    assert not errors(at)
    assert lm.store.landmarks(lm.ids["alice"], first, 1) == {**HIPS, "left_rim": (49.0, 20.0)}
    [moved] = [r for r in lm.rows(audit_log) if r["action"] == "update"]
    assert (moved["field"], moved["old"], moved["new"]) == (
        "landmark:left_rim", "x=50.0,y=21.0", "x=49.0,y=20.0",
    )  # fmt: skip
    # Nothing on the page or handed to the component names a model, a case or a source file.
    key = pd.read_parquet(lm.path / studydir.KEY)
    secrets = {LEAKY_TEXT, *MODELS, *key.case_id, *(Path(p).name for p in key.source_path)}
    text = "\n".join([page_text(at), *(i.value for i in at.info), clicker(at).proto.json_args])
    assert [x for x in secrets if x in text] == [] and "case-" not in text


def test_a_mirrored_study_asks_for_the_hip_on_the_image_left_first(tmp_path, monkeypatch):
    st.cache_resource.clear()
    made = make_study(
        tmp_path, per_model=1, landmarks="norberg", criteria="quality", patient_left="image-left"
    )
    _, info = study.load(made.path)
    assert info.patient_left == "image-left"
    monkeypatch.setenv(STUDY_ENV, str(made.path))
    at = sign_in(open_app(), made.tokens["alice"])
    assert not at.exception and not errors(at)
    # Mirrored: the patient's left hip is on the image's left, so it is asked for first.
    assert "patient's **LEFT** hip, on the image's left" in instruction(at)
    assert any(
        "mirrored display" in i.value and "**left** hip is on the image's left" in i.value for i in at.info
    )
    mirrored = {
        n.replace("right", "LEFT").replace("left", "right").replace("LEFT", "left"): xy
        for n, xy in HIPS.items()
    }
    at = place_all(at, mirrored, order=("left", "right"))
    assert instruction(at).startswith("All landmarks are placed")
    radio(at, f"**{BUILTIN['quality'].question}**").set_value(4)
    at = submit(at)
    assert not errors(at) and not at.exception
    store = Store(study.database_url(made.path, info))
    try:
        alice = next(r["id"] for r in store.table(readers) if r["name"] == "alice")
        first = store.queue(alice)[0].item_id
        assert store.landmarks(alice, first, 1) == mirrored
    finally:
        store.close()
    st.cache_resource.clear()


def test_a_zoomed_click_incomplete_landmarks_and_a_flag(lm):
    at = sign_in(open_app(), lm.made.tokens["alice"])
    first = lm.queue()[0].item_id
    for name, value in (("view_zoom", 2.0), ("view_cx", 1.0), ("view_cy", 0.0)):
        at.session_state[name] = value
    at = at.run()
    # Zoom 2 at the top-right corner shows stored columns 32..63 and rows 0..31, drawn at 512; the
    # middle of the view (320 of 640) is the edge at column 48 (x = 47.5), a quarter down row 8's.
    at.session_state[clicker(at).key] = {"x": 320, "y": 160, "width": SHOWN, "height": SHOWN, "unix_time": 1}
    at = at.run()
    assert at.session_state["lm_placement"][1].as_dict() == {"right_head_1": (47.5, 7.5)}
    assert "outline point **2**" in instruction(at)
    radio(at, f"**{BUILTIN['quality'].question}**").set_value(3)
    at = submit(at)
    assert errors(at) == [
        (
            "Please answer: place the landmarks: 2 more outline point(s) of the patient's right femoral head, "
            "the patient's right acetabular rim point, 3 more outline point(s) of the patient's left femoral "
            "head, the patient's left acetabular rim point (or flag the image as unreadable)."
        )
    ]
    assert lm.rows(responses) == [] and lm.rows(landmarks_table) == []
    assert "outline point **2**" in instruction(at)  # the point placed is still there
    # A flagged image keeps no half-placed hips.
    [flag] = [c for c in at.checkbox if c.label == "Unreadable / flag this image"]
    flag.check()
    [reason] = [t for t in at.text_input if t.label == "Reason for the flag"]
    reason.input("one hip only")
    at = submit(at)
    assert len(errors(at)) == 1 and "only when both hips are complete" in errors(at)[0]
    assert lm.rows(responses) == []
    at = button(at, "Clear right").click().run()
    [flag] = [c for c in at.checkbox if c.label == "Unreadable / flag this image"]
    flag.check()
    [reason] = [t for t in at.text_input if t.label == "Reason for the flag"]
    reason.input("one hip only")
    at = submit(at)
    assert not errors(at)
    assert lm.store.landmarks(lm.ids["alice"], first, 1) == {}
    [head] = lm.rows(responses)
    assert head["item_id"] == first and head["flagged"] and head["flag_reason"] == "one hip only"
