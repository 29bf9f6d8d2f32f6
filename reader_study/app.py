"""The rating app (Streamlit). Started by ``xray-audit reader-study serve STUDY_DIR``.

It reads the study directory named by ``$XRAY_AUDIT_STUDY_DIR``: ``study.json``, ``images/`` and
the database. It never opens ``key.parquet`` or ``blinding.json``, so nothing it can send names a
model, a case or a source file: items are opaque random ids, and images are bytes re-made by
:func:`reader_study.rendering.view` (IHDR/IDAT/IEND only, and of one byte length for every item:
stored, uncompressed scanlines), served under Streamlit's content-hash media URLs. The PNG row
filters are drawn per (reader, item, read) from a per-process secret, so a re-read is not served
at its first read's URL, and nobody can compute an item's URL from its pixels.

With ``--landmarks`` the image is drawn by streamlit-image-coordinates (its frontend ships in the
wheel, so it works offline) and the reader places landmarks on it step by step
(:mod:`reader_study.placement`). The component is handed an object whose ``save`` writes the same
:func:`reader_study.rendering.encode` bytes, so what reaches the browser is still an
IHDR/IDAT/IEND PNG of fixed length, as a ``data:`` URL inside the page's own traffic.

Sessions: a session shows nothing but the login until a valid token is entered. A signed-in session
is bound to the token's generation: every run of the page checks it, and every submit names it, so
a ``reader-study reissue`` ends the old sessions at their next interaction. Signed-in sessions are
marked non-resumable in Streamlit, so that nobody can take one over by presenting its session id
(a reader whose connection drops signs in again and resumes at the first unrated item). After that
every query is scoped to the reader, and the database itself refuses ratings for items outside the
reader's queue, from a retired token, or from a form that is out of date (another tab changed the
answer). There are no admin actions here; they are CLI-only.

Speed: the rating form is an ``st.fragment``, so a submit that the form refuses (a missing answer)
reruns the form only; a stored submit reruns the page once to show the next item. Rendered views
are cached per (item, read, window, zoom, pan) and process: moving on to an item and back costs no
image work.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import streamlit as st
from PIL import Image
from streamlit_image_coordinates import streamlit_image_coordinates

from audit.atomic import sha256_bytes
from reader_study import placement, rendering, study, text
from reader_study.criteria import CONFIDENCE_ANCHORS, TURING, TURING_QUESTION
from reader_study.rendering import ZOOMS, crop_box, view_pixels
from reader_study.store import (
    Answer,
    QueueEntry,
    Shown,
    StaleForm,
    Store,
    StoreError,
    TokenRetired,
)

STUDY_ENV = "XRAY_AUDIT_STUDY_DIR"
_VIEW_DEFAULTS = {"view_level": 0.5, "view_width": 1.0, "view_zoom": 1.0, "view_cx": 0.5, "view_cy": 0.5}
_SESSION_ENDED = "Your access token was reissued, so this session has ended. Sign in with the new token from your study lead."
log = logging.getLogger("xray_audit.reader_study")


@st.cache_resource
def _open(study_dir: str) -> tuple[Path, study.StudyInfo, Store]:
    root, info = study.load(study_dir)
    store = Store(study.database_url(root, info))
    store.check_schema()
    return root, info, store


@st.cache_resource
def _process_secret() -> bytes:
    """Keys the PNG row filters: without it, nobody can compute the bytes (and so the media URL) an
    item is sent as, and the same image read twice is sent as different bytes."""
    return secrets.token_bytes(32)


@st.cache_resource(max_entries=64, show_spinner=False)
def _pixels(path: str, sha256: str) -> np.ndarray:
    data = Path(path).read_bytes()
    if sha256_bytes(data) != sha256:
        raise StoreError("an image of this study changed on disk after the study was created")
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L"))
    pixels.setflags(write=False)  # shared by every session of the process
    return pixels


@st.cache_resource(max_entries=512, show_spinner=False)
def _view_bytes(path: str, sha256: str, settings: tuple[tuple[str, Any], ...], variant: bytes) -> bytes:
    """The PNG of one view of one item for one (reader, read): the page reruns on every click,
    and re-rendering the image each time was most of a submit's cost."""
    return rendering.view(_pixels(path, sha256), **dict(settings), variant=variant)


def _variant(entry: QueueEntry) -> bytes:
    key = f"{st.session_state.reader_id}:{entry.item_id}:{entry.read_number}".encode()
    return hmac.new(_process_secret(), key, hashlib.sha256).digest()


class _EncodedPNG:
    """PNG bytes for streamlit-image-coordinates, which base64-encodes whatever ``save`` writes:
    given a PIL image or an array it would re-encode it itself, with its own chunks."""

    def __init__(self, data: bytes):
        self.data = data

    def save(self, fp: Any, **_: Any) -> None:
        fp.write(self.data)


def _reset_view() -> None:
    st.session_state.update(_VIEW_DEFAULTS)


def _go(position: int) -> None:
    st.session_state.position = position
    st.session_state.submission = str(uuid.uuid4())
    st.session_state.shown_at = time.monotonic()


def _sign_out(message: str | None = None) -> None:
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    if message:
        st.session_state.signed_out_because = message


def _forbid_resume() -> None:
    """Mark this Streamlit session non-resumable: a connection presenting its session id gets a
    new session (the login) instead of this signed-in one."""
    from streamlit.runtime import Runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is not None and Runtime.exists():
        Runtime.instance().mark_session_nonresumable(ctx.session_id)


def _login(store: Store, info: study.StudyInfo) -> None:
    st.title(info.title)
    if reason := st.session_state.get("signed_out_because"):
        st.warning(reason)
    with st.form("login", clear_on_submit=True):
        token = st.text_input("Access token", type="password", help="The token the study lead gave you.")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        who = store.authenticate(token or "")
        if who is None:
            time.sleep(0.5)  # slows guessing; tokens are 192-bit anyway
            st.error("Unknown token. Check it with your study lead.")
            return
        _sign_out()
        _forbid_resume()
        st.session_state.reader_id = who.reader_id
        st.session_state.reader_name = who.name
        st.session_state.token_generation = who.token_generation
        st.session_state.position = None
        st.rerun()


def _first_unrated(queue: list[QueueEntry], after: int = -1) -> int | None:
    open_ = [e.position for e in queue if not e.done and e.available_after is None]
    later = [p for p in open_ if p > after]
    return (later or open_ or [None])[0]


def _viewer(root: Path, entry: QueueEntry, store: Store, info: study.StudyInfo) -> None:
    for key, value in _VIEW_DEFAULTS.items():
        st.session_state.setdefault(key, value)
    with st.sidebar:
        st.subheader("View")
        st.slider("Brightness (window level)", 0.0, 1.0, step=0.01, key="view_level")
        st.slider("Contrast (window width)", 0.05, 1.0, step=0.01, key="view_width")
        st.select_slider("Zoom", options=list(ZOOMS), format_func=lambda z: f"{z:g}×", key="view_zoom")
        if st.session_state.view_zoom > 1:
            st.slider("Pan left-right", 0.0, 1.0, step=0.01, key="view_cx")
            st.slider("Pan up-down", 0.0, 1.0, step=0.01, key="view_cy")
        st.button("Reset view", on_click=_reset_view)
    sha = store.image_sha256(entry.item_id)
    if sha is None:
        st.error("This item is missing from the study database.")
        return
    path = str(study.image_path(root, entry.item_id))
    settings = {
        "level": float(st.session_state.view_level),
        "width": float(st.session_state.view_width),
        "zoom": float(st.session_state.view_zoom),
        "cx": float(st.session_state.view_cx),
        "cy": float(st.session_state.view_cy),
        "out_size": rendering.display_size(info.image_size),
    }
    if info.landmarks is None:
        png = _view_bytes(path, sha, tuple(sorted(settings.items())), _variant(entry))
        st.image(png, output_format="PNG", width="stretch")
    else:
        _landmark_viewer(entry, _pixels(path, sha), settings, store, info)


# --- landmarks ----------------------------------------------------------------------------------


def _visit() -> str:
    """One visit of one item: a new one on every move (see _go), so its state starts afresh."""
    return f"{st.session_state.position}-{st.session_state.submission}"


def _placement(entry: QueueEntry, store: Store, info: study.StudyInfo) -> placement.Placement:
    """This visit's placement; a new visit starts from the reader's stored points (back-edit, resume)."""
    held = st.session_state.get("lm_placement")
    if held is None or held[0] != _visit():
        points = store.landmarks(st.session_state.reader_id, entry.item_id, entry.read_number)
        held = (_visit(), placement.Placement.from_points(points, placement.screen_sides(info.patient_left)))
        st.session_state.lm_placement = held
    return held[1]


def _set_placement(p: placement.Placement) -> None:
    st.session_state.lm_placement = (_visit(), p)


def _held() -> placement.Placement | None:
    """The placement a button pressed on this page acts on (None if the page has moved on)."""
    held = st.session_state.get("lm_placement")
    return held[1] if held is not None and held[0] == _visit() else None


def _undo() -> None:
    if (current := _held()) is not None:
        _set_placement(current.undo())


def _finish_outline() -> None:
    if (current := _held()) is not None and current.can_finish_outline():
        _set_placement(current.finish_outline())


def _clear(side: str) -> None:
    if (current := _held()) is not None:
        _set_placement(current.clear(side))


def _landmark_help(info: study.StudyInfo) -> None:
    first, second = placement.screen_sides(info.patient_left)
    display = (
        "the standard radiographic display" if info.patient_left == "image-right" else "mirrored display"
    )
    st.info(
        f"**Landmarks.** Images are in {display}: the patient's "
        f"**{first}** hip is on the image's left, the **{second}** on its right. For each hip click at "
        f"least {placement.MIN_OUTLINE} points spread around the femoral-head outline, press "
        "**Outline done**, then click the craniolateral acetabular rim point. Zoom and pan (View, "
        "in the sidebar) to place points precisely; they stay where you put them."
    )


def _landmark_viewer(
    entry: QueueEntry, pixels: np.ndarray, settings: dict[str, Any], store: Store, info: study.StudyInfo
) -> None:
    visit = _visit()
    key = f"lm-click-{visit}"
    current = _placement(entry, store, info)
    # A click is on the image the reader saw, i.e. the view of the previous run: map it with that
    # view's box, not with sliders that may have moved since.
    shown = st.session_state.get("lm_shown")
    if shown is not None and shown[0] == visit:
        current = placement.handle_click(current, st.session_state.get(key), shown[1])
        _set_placement(current)
    size = pixels.shape[0]
    box = placement.ViewBox(
        *crop_box(size, size, settings["zoom"], settings["cx"], settings["cy"]),
        out=placement.drawn_size(settings["out_size"]),
    )
    st.markdown(placement.instruction(current.next_step(), info.patient_left))
    rgb = placement.draw(view_pixels(pixels, **settings), current, box)
    png = _EncodedPNG(rendering.encode(rgb, _variant(entry)))
    streamlit_image_coordinates(png, key=key, width="stretch", cursor="crosshair")
    st.session_state.lm_shown = (visit, box)
    cols = st.columns(4)
    cols[0].button("Undo last point", on_click=_undo, disabled=not current.points, width="stretch")
    cols[1].button(
        "Outline done", on_click=_finish_outline, disabled=not current.can_finish_outline(), width="stretch",
        help=f"after at least {placement.MIN_OUTLINE} outline points: go on to this hip's rim point",
    )  # fmt: skip
    for col, side in zip(cols[2:], placement.screen_sides(info.patient_left)):
        col.button(
            f"Clear {side}", on_click=_clear, args=(side,), width="stretch",
            help=f"remove every point of the patient's {side} hip",
            disabled=not any(placement.side_of(n) == side for n, _, _ in current.points),
        )  # fmt: skip
    st.caption(
        "Orange: the patient's right hip, blue: the left; circles are outline points, squares rim "
        "points. The thin circle is fitted to your outline points."
    )


def _index(options: list[Any], value: Any) -> int | None:
    return options.index(value) if value in options else None


def _form_key(entry: QueueEntry) -> str:
    # Radio state follows its key, not its form: keys shared by every item would pre-select this
    # item's answers on the next one and hide the stored answers when the reader goes back.
    return f"rate-{entry.position}-{st.session_state.submission}"


@st.fragment
def _form(entry: QueueEntry, info: study.StudyInfo, store: Store) -> None:
    """The answers of one item. A fragment: a click in it reruns only this function, and a stored
    submit reruns the page once to show the next item."""
    reader_id = st.session_state.reader_id
    form = _form_key(entry)
    previous = store.response(reader_id, entry.item_id, entry.read_number)
    # What this form is made from, fixed when it is first drawn: a submit from it is refused once
    # the stored answer has changed (another tab) or the token has been reissued.
    shown_key = f"{form}-shown"
    if shown_key not in st.session_state:
        st.session_state[shown_key] = Shown(
            st.session_state.token_generation, previous.revision if previous else 0
        )
    if stale := st.session_state.pop("stale", None):
        st.warning(stale)
    answers_before = previous.answers if previous else {}
    scores = [1, 2, 3, 4, 5]
    with st.form(form):
        chosen: dict[str, int | None] = {}
        for c in info.criteria:
            before = answers_before.get(c.name)
            chosen[c.name] = st.radio(
                f"**{c.question}**",
                scores,
                index=_index(scores, before.score if before else None),
                horizontal=True,
                captions=list(c.anchors),
                key=f"{form}-c-{c.name}",
            )
        verdict = confidence = None
        if info.turing:
            before = answers_before.get(TURING)
            verdict = st.radio(
                f"**{TURING_QUESTION}**",
                ["real", "synthetic"],
                index=_index(["real", "synthetic"], before.turing_answer if before else None),
                horizontal=True,
                key=f"{form}-c-turing",
            )
            confidence = st.radio(
                "How sure are you?",
                scores,
                index=_index(scores, before.confidence if before else None),
                horizontal=True,
                captions=list(CONFIDENCE_ANCHORS),
                key=f"{form}-c-confidence",
            )
        comment = None
        if info.comment:
            comment = st.text_area(
                "Comment (optional)",
                value=(previous.comment if previous else "") or "",
                max_chars=text.MAX_TEXT,
                key=f"{form}-comment",
            )
        flagged = st.checkbox(
            "Unreadable / flag this image", value=bool(previous and previous.flagged), key=f"{form}-flag"
        )
        reason = st.text_input(
            "Reason for the flag",
            value=(previous.flag_reason if previous else "") or "",
            max_chars=text.MAX_TEXT,
            key=f"{form}-reason",
        )
        submitted = st.form_submit_button("Submit", type="primary")
    if not submitted:
        return
    _submit(entry, info, store, chosen, verdict, confidence, comment, bool(flagged), reason or "")


def _submit(
    entry: QueueEntry,
    info: study.StudyInfo,
    store: Store,
    chosen: dict[str, int | None],
    verdict: str | None,
    confidence: int | None,
    comment: str | None,
    flagged: bool,
    reason: str,
) -> None:
    missing = [c.question for c in info.criteria if chosen[c.name] is None]
    if info.turing and (verdict is None or confidence is None):
        missing.append(TURING_QUESTION)
    points = None
    if info.landmarks is not None:
        points = _placement(entry, store, info).as_dict()
        todo = placement.problems(points, placement.screen_sides(info.patient_left))
        if todo:
            missing.append("place the landmarks: " + ", ".join(todo))
        if todo and points and flagged:
            st.error(
                "A flagged image keeps its landmarks only when both hips are complete: place "
                + ", ".join(todo)
                + ", or clear both hips."
            )
            return
    if flagged and not text.clean(reason):
        st.error("Give a reason for the flag, or untick it.")
        return
    if missing and not flagged:
        st.error("Please answer: " + "; ".join(missing) + " (or flag the image as unreadable).")
        return
    answers = [Answer(name, score=score) for name, score in chosen.items() if score is not None]
    if info.turing and verdict is not None and confidence is not None:
        answers.append(Answer(TURING, turing_answer=verdict, confidence=confidence))
    form = _form_key(entry)
    try:
        store.submit(
            st.session_state.reader_id,
            entry.item_id,
            entry.read_number,
            st.session_state.submission,
            answers,
            shown=st.session_state[f"{form}-shown"],
            flagged=flagged,
            flag_reason=reason if flagged else None,
            comment=comment,
            seconds=time.monotonic() - st.session_state.shown_at,
            points=points,
        )
    except TokenRetired:
        _sign_out(_SESSION_ENDED)
        st.rerun(scope="app")
    except StaleForm as exc:
        # A new form (new key) is drawn from the stored answer, with the reason above it.
        st.session_state.stale = str(exc)
        _go(entry.position)
        st.rerun(scope="app")
    except StoreError as exc:
        st.error(str(exc))
        return
    except sa.exc.OperationalError:
        st.error(
            "The ratings database is busy or unreachable; this answer was NOT saved. Press Submit again."
        )
        return
    st.session_state.saved = True
    queue = store.queue(st.session_state.reader_id)
    nxt = _first_unrated(queue, after=entry.position)
    _go(entry.position if nxt is None else nxt)
    st.rerun(scope="app")


def _reader_page(root: Path, info: study.StudyInfo, store: Store) -> None:
    reader_id = st.session_state.reader_id
    queue = store.queue(reader_id)
    available = [e for e in queue if e.available_after is None]
    done = sum(e.done for e in queue)
    total = len(queue)
    with st.sidebar:
        st.caption(f"Signed in as **{st.session_state.reader_name}**")
        st.button("Sign out", on_click=_sign_out)
    st.progress(done / total if total else 1.0, text=f"{done} of {total} rated · {total - done} left")
    if st.session_state.pop("saved", False):
        st.toast("Saved")
    if st.session_state.get("position") is None:
        first = _first_unrated(queue)
        _go(first if first is not None else (available[-1].position if available else 0))
    waiting = [e for e in queue if e.available_after is not None]
    if not available:
        st.info("No items are available to you yet.")
        return
    positions = [e.position for e in available]
    pos = st.session_state.position if st.session_state.position in positions else positions[0]
    entry = next(e for e in available if e.position == pos)
    i = positions.index(pos)

    nav = st.columns([1, 1, 1, 3])
    if nav[0].button("◀ Previous", disabled=i == 0, width="stretch"):
        _go(positions[i - 1])
        st.rerun()
    if nav[1].button("Next ▶", disabled=i == len(positions) - 1, width="stretch"):
        _go(positions[i + 1])
        st.rerun()
    first = _first_unrated(queue)
    if nav[2].button("First unrated", disabled=first is None or first == pos, width="stretch"):
        _go(first)  # type: ignore[arg-type]
        st.rerun()
    status = "rated, you can change your answers" if entry.done else "not rated yet"
    label = " · practice item" if entry.calibration else ""
    # The item's place in the whole queue, re-reads included: a count of the items available now
    # would grow right after the item that is to be re-read, and so point at it.
    nav[3].markdown(f"Item **{entry.position + 1}** of {total}{label} · {status}")

    if first is None and done == total:
        st.success("All items are rated. Thank you! You can still go back and change an answer.")
    elif first is None and waiting:
        when = min(e.available_after for e in waiting if e.available_after)  # type: ignore[type-var]
        st.info(
            f"{len(waiting)} further item(s) become available after "
            f"{when.strftime('%Y-%m-%d %H:%M UTC') if when.year < 9999 else 'you finish the others'}."
        )

    left, right = st.columns([3, 2])
    with left:
        _viewer(root, entry, store, info)
    with right:
        if info.landmarks is not None:
            _landmark_help(info)
        if info.show_prompt and entry.prompt:
            st.info(f"Intended finding: {entry.prompt}")
        _form(entry, info, store)


def main() -> None:
    study_dir = os.environ.get(STUDY_ENV)
    st.set_page_config(page_title="Reader study", layout="wide", menu_items={})
    if not study_dir:
        st.error(
            f"No study configured: start the app with `xray-audit reader-study serve STUDY_DIR` ({STUDY_ENV})."
        )
        return
    try:
        root, info, store = _open(study_dir)
    except (study.StudyError, StoreError) as exc:
        # Anyone can load the page: the details (paths, database host and user) go to the log.
        log.error("cannot open the study: %s", exc)
        st.error(
            "The study cannot be opened right now. Tell your study lead (details are in the server log)."
        )
        return
    if "reader_id" not in st.session_state:
        _login(store, info)
        return
    if store.token_generation(st.session_state.reader_id) != st.session_state.get("token_generation"):
        _sign_out(_SESSION_ENDED)
        _login(store, info)
        return
    _reader_page(root, info, store)


if __name__ == "__main__":  # `streamlit run` and AppTest run the script as __main__
    main()
