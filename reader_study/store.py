"""Durable storage of a reader study: readers, items, per-reader queues, ratings and the audit trail.

One SQLAlchemy Core schema (:mod:`reader_study.schema`) serves SQLite (the default, a file in the study directory) and
PostgreSQL (a ``postgresql+psycopg://`` URL, for multi-site studies).

Guarantees, enforced by the database rather than by the app:

* ``ratings``: ``UNIQUE(reader_id, item_id, criterion, read_number)``, ``CHECK(score BETWEEN 1
  AND 5)``, ``CHECK(confidence BETWEEN 1 AND 5)``, and a foreign key to the reader's own
  assignment, so nobody can rate an item that is not in their queue.
* ``landmarks``: points a reader placed (``--landmarks``), in the study image's pixels;
  ``UNIQUE(reader_id, item_id, read_number, landmark)`` and the same foreign key to the reader's
  own assignment. A submit replaces the item's set: added, moved and removed points are each an
  audit row (``create``, ``update``, ``delete``). The table was added without a schema version
  change: older databases lack it and are still read, as their studies have no landmarks.
* ``submissions``: one row per submit, keyed by a client-made UUID (``UNIQUE``). A double click
  or a rerun repeats the UUID and changes nothing.
* ``responses.edits`` counts the submits that changed a stored answer; with it every submit names
  the revision of the answer its form showed (:class:`Shown`), and a form that is out of date (the
  answer changed in another tab since) is refused (:class:`StaleForm`), with an audit row.
* ``responses.comment`` and ``flag_reason`` hold at most :data:`reader_study.text.MAX_TEXT`
  characters (``CHECK``), cleaned by :func:`reader_study.text.clean`.
* ``readers.token_generation`` counts the reader's tokens (1 at creation, +1 per reissue). A
  submit names the generation its session signed in with, is refused (:class:`TokenRetired`) once
  the token was reissued, and every audit row a reader writes records it.
* ``audit_log``: append-only (triggers reject ``UPDATE`` and ``DELETE`` on both backends); every
  created or changed answer is a row with who, what, old, new and when (UTC, ISO 8601).
* SQLite connections run in WAL mode with a busy timeout and foreign keys on, and write
  transactions start with ``BEGIN IMMEDIATE``: a deferred transaction that later needs the write
  lock fails at once with "database is locked" whatever the timeout, an immediate one waits.

Tokens are never stored: ``readers.token_sha256`` holds the SHA-256 of a 192-bit random token.

Schema version 2 added ``token_generation``, ``edits`` and the length checks; :meth:`Store.upgrade`
adds the columns to a version-1 database (``status``, ``export`` and ``reissue`` call it), but the
length ``CHECK`` only exists in databases created by version 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from reader_study import text
from reader_study.placement import PlacementError, check_points, sort_key

# The tables are declared in reader_study.schema; these names are what the rest of the suite
# imports from here.
from reader_study.schema import (
    SCHEMA_VERSION,
    SCORE_MAX,
    SCORE_MIN,
    TURING_ANSWERS,
    assignments,
    audit_log,
    items,
    landmarks,
    meta_table,
    metadata,
    ratings,
    readers,
    responses,
    submissions,
)

BUSY_TIMEOUT_MS = 30_000
_RETRIES = 5


class StoreError(RuntimeError):
    """A request the study's database cannot honour (unknown item, bad answer, wrong schema)."""


class TokenRetired(StoreError):
    """The session's token was reissued: the session has ended (nothing was stored)."""


class StaleForm(StoreError):
    """The answer changed after the form was shown (another tab or window): nothing was stored."""

    def __init__(self, message: str, stored: Response | None):
        super().__init__(message)
        self.stored = stored


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(24)


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the per-connection settings this module's guarantees rely on."""
    if url.startswith("postgresql://"):
        # psycopg 3 is the maintained driver; SQLAlchemy's bare scheme means psycopg2.
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    try:
        engine = sa.create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise StoreError(
            f"the database driver for {url.split(':', 1)[0]} is not installed ({exc.name}); "
            "for PostgreSQL: pip install 'xray-audit[postgres]'"
        ) from exc
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Autocommit at the driver level, so that the BEGIN below is the only one issued.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'IMMEDIATE')}")


@dataclasses.dataclass(frozen=True)
class Answer:
    """One criterion's answer: a 1-5 score, or for the Turing question a verdict and confidence."""

    criterion: str
    score: int | None = None
    turing_answer: str | None = None
    confidence: int | None = None

    def validate(self) -> None:
        for name, value in (("score", self.score), ("confidence", self.confidence)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not SCORE_MIN <= value <= SCORE_MAX
            ):
                raise StoreError(f"{self.criterion}: {name} must be an integer 1-5, got {value!r}")
        if self.turing_answer is not None and self.turing_answer not in TURING_ANSWERS:
            raise StoreError(
                f"{self.criterion}: answer must be 'real' or 'synthetic', got {self.turing_answer!r}"
            )
        if self.score is None and self.turing_answer is None:
            raise StoreError(f"{self.criterion}: no answer given")


@dataclasses.dataclass(frozen=True)
class QueueEntry:
    position: int
    item_id: str
    read_number: int
    calibration: bool
    prompt: str | None
    available_after: datetime | None  # None: available now
    done: bool


@dataclasses.dataclass(frozen=True)
class Response:
    flagged: bool
    flag_reason: str | None
    comment: str | None
    answers: dict[str, Answer]
    edits: int = 0

    @property
    def revision(self) -> int:
        """1 for the first stored answer, +1 per submit that changed it (0: nothing stored)."""
        return 1 + self.edits

    def describe(self) -> str:
        """The stored answer in words, for a reader whose other tab changed it."""
        parts = []
        for name, a in sorted(self.answers.items()):
            if a.turing_answer is not None:
                parts.append(f"{name}: {a.turing_answer} (confidence {a.confidence})")
            else:
                parts.append(f"{name}: {a.score}")
        if self.flagged:
            parts.append(f"flagged ({self.flag_reason})")
        return "; ".join(parts) or "no answers"


@dataclasses.dataclass(frozen=True)
class SignedIn:
    """Who a token belongs to, and which of the reader's tokens it is."""

    reader_id: int
    name: str
    token_generation: int


@dataclasses.dataclass(frozen=True)
class Shown:
    """What a form was made from: the session's token generation and the answer's revision then
    (0: no answer was stored). A submit is refused when either is no longer current."""

    token_generation: int
    revision: int


@dataclasses.dataclass(frozen=True)
class SubmitResult:
    created: bool  # False: this submission id was already stored (a double click), nothing changed
    changes: int  # audit rows written
    refused: str | None = None  # "token" or "stale": refused, see Store.submit (raised, not returned)


@dataclasses.dataclass(frozen=True)
class _Submission:
    """One checked submit (Store.submit's arguments after validation)."""

    reader_id: int
    item_id: str
    read_number: int
    submission_id: str
    answers: tuple[Answer, ...]
    shown: Shown
    flagged: bool
    flag_reason: str | None
    comment: str | None
    seconds: float | None
    points: dict[str, tuple[float, float]] | None

    def describe(self) -> str:
        return _describe(
            {a.criterion: a.score if a.turing_answer is None else a.turing_answer for a in self.answers}
        )


class Store:
    """All reads and writes of one study's database. Every method runs in its own transaction."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    # --- creation -------------------------------------------------------------------------------

    def create_schema(self) -> None:
        with self.engine.begin() as conn:
            existing = sa.inspect(conn).get_table_names()
            if "study_meta" in existing:
                raise StoreError(
                    f"{self.engine.url.render_as_string(hide_password=True)} already holds a reader "
                    "study; give a new database (or drop the old one) to create another"
                )
            metadata.create_all(conn)
            conn.execute(meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))

    def upgrade(self) -> bool:
        """Bring a schema-1 database to version 2 (the added columns; not the length CHECKs, which
        SQLite cannot add to a table). True when it upgraded."""
        if self._schema_version() != 1:
            return False
        added = (
            ("readers", "token_generation INTEGER NOT NULL DEFAULT 1"),
            ("responses", "edits INTEGER NOT NULL DEFAULT 0"),
            ("audit_log", "token_generation INTEGER"),
        )
        with self.engine.begin() as conn:
            # Again inside the write transaction: another admin command may have upgraded meanwhile.
            version = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version").with_for_update()
            ).scalar()
            if version != "1":
                return False
            for table, column in added:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column}")
            conn.execute(
                meta_table.update()
                .where(meta_table.c.key == "schema_version")
                .values(value=str(SCHEMA_VERSION))
            )
            self._log(conn, actor="admin", action="upgrade_schema", old="1", new=str(SCHEMA_VERSION))
        return True

    def _schema_version(self) -> int | None:
        try:
            with self._read() as conn:
                row = conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).first()
        except sa.exc.OperationalError as exc:
            if "no such table" in str(exc.orig):
                raise StoreError(f"the database holds no reader study ({exc.orig})") from exc
            raise StoreError(f"cannot open the study database: {exc.orig}") from exc
        except sa.exc.ProgrammingError as exc:
            raise StoreError(f"the database holds no reader study ({exc.orig})") from exc
        return int(row[0]) if row is not None else None

    def check_schema(self) -> None:
        version = self._schema_version()
        if version != SCHEMA_VERSION:
            hint = (
                " (made by an earlier xray-audit: `xray-audit reader-study status STUDY_DIR` upgrades it)"
                if version == 1
                else ""
            )
            raise StoreError(
                f"the study database has schema version {version if version is not None else 'none'}, "
                f"this xray-audit reads version {SCHEMA_VERSION}{hint}"
            )

    def add_items(self, rows: Iterable[Mapping[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(items.insert(), [dict(r) for r in rows])

    def add_reader(self, name: str, token: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                readers.insert().values(name=name, token_sha256=hash_token(token), token_issued_at=utc_now())
            )
            reader_id = int(result.inserted_primary_key[0])
            self._log(conn, actor="admin", action="add_reader", reader_id=reader_id)
            return reader_id

    def add_assignments(self, rows: Sequence[Mapping[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(assignments.insert(), [dict(r) for r in rows])

    def reissue_token(self, name: str, token: str) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(
                readers.update()
                .where(readers.c.name == name)
                .values(
                    token_sha256=hash_token(token),
                    token_issued_at=utc_now(),
                    token_generation=readers.c.token_generation + 1,
                )
            )
            if result.rowcount != 1:
                raise StoreError(f"no reader named {name!r} in this study (see `reader-study status`)")
            reader_id = conn.execute(sa.select(readers.c.id).where(readers.c.name == name)).scalar_one()
            self._log(conn, actor="admin", action="reissue_token", reader_id=reader_id)

    # --- reading --------------------------------------------------------------------------------

    def _read(self) -> Any:
        return self.engine.connect().execution_options(sqlite_begin="DEFERRED")

    def authenticate(self, token: str) -> SignedIn | None:
        """The reader a token belongs to, or None. Compares digests in constant time."""
        if not token or len(token) > 200:
            return None
        digest = hash_token(token.strip())
        with self._read() as conn:
            rows = conn.execute(
                sa.select(readers.c.id, readers.c.name, readers.c.token_sha256, readers.c.token_generation)
            ).all()
        found = None
        for reader_id, name, stored, generation in rows:
            if hmac.compare_digest(stored, digest):
                found = SignedIn(int(reader_id), str(name), int(generation))
        return found

    def token_generation(self, reader_id: int) -> int | None:
        """The reader's current token generation (None: no such reader)."""
        with self._read() as conn:
            value = conn.execute(
                sa.select(readers.c.token_generation).where(readers.c.id == reader_id)
            ).scalar()
        return None if value is None else int(value)

    def shown(self, reader_id: int, item_id: str, read_number: int) -> Shown:
        """What a form made now would show: the current token generation and answer revision."""
        generation = self.token_generation(reader_id)
        if generation is None:
            raise StoreError(f"no reader with id {reader_id}")
        response = self.response(reader_id, item_id, read_number)
        return Shown(generation, response.revision if response else 0)

    def queue(self, reader_id: int, now: datetime | None = None) -> list[QueueEntry]:
        """The reader's items in order, with whether each is rated and when it becomes available."""
        now = now or datetime.now(UTC)
        a, r, i = assignments, responses, items
        first = sa.alias(responses, "first_read")
        query = (
            sa.select(
                a.c.position,
                a.c.item_id,
                a.c.read_number,
                a.c.calibration,
                a.c.available_after,
                a.c.washout_days,
                i.c.prompt,
                r.c.created_at.label("done_at"),
                first.c.created_at.label("first_done_at"),
            )
            .join(i, i.c.id == a.c.item_id)
            .outerjoin(
                r,
                (r.c.reader_id == a.c.reader_id)
                & (r.c.item_id == a.c.item_id)
                & (r.c.read_number == a.c.read_number),
            )
            .outerjoin(
                first,
                (first.c.reader_id == a.c.reader_id)
                & (first.c.item_id == a.c.item_id)
                & (first.c.read_number == 1),
            )
            .where(a.c.reader_id == reader_id)
            .order_by(a.c.position)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        out = []
        for row in rows:
            after = parse_utc(row.available_after) if row.available_after else None
            if row.washout_days is not None:
                first_at = parse_utc(row.first_done_at) if row.first_done_at else None
                # Not yet read the first time: not available until then plus the washout.
                relative = (
                    (first_at + timedelta(days=row.washout_days))
                    if first_at
                    else datetime.max.replace(tzinfo=UTC)
                )
                after = max(after, relative) if after else relative
            if after is not None and after <= now:
                after = None
            out.append(
                QueueEntry(
                    position=int(row.position),
                    item_id=row.item_id,
                    read_number=int(row.read_number),
                    calibration=bool(row.calibration),
                    prompt=row.prompt,
                    available_after=after,
                    done=row.done_at is not None,
                )
            )
        return out

    def response(self, reader_id: int, item_id: str, read_number: int) -> Response | None:
        with self._read() as conn:
            head = conn.execute(
                sa.select(responses).where(
                    (responses.c.reader_id == reader_id)
                    & (responses.c.item_id == item_id)
                    & (responses.c.read_number == read_number)
                )
            ).first()
            if head is None:
                return None
            rows = conn.execute(
                sa.select(ratings).where(
                    (ratings.c.reader_id == reader_id)
                    & (ratings.c.item_id == item_id)
                    & (ratings.c.read_number == read_number)
                )
            ).all()
        return _response(head, rows)

    def landmarks(self, reader_id: int, item_id: str, read_number: int) -> dict[str, tuple[float, float]]:
        """The points the reader stored on the item (stored-image frame), by landmark name."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(landmarks.c.landmark, landmarks.c.x, landmarks.c.y).where(
                    (landmarks.c.reader_id == reader_id)
                    & (landmarks.c.item_id == item_id)
                    & (landmarks.c.read_number == read_number)
                )
            ).all()
        return {row.landmark: (float(row.x), float(row.y)) for row in rows}

    def image_sha256(self, item_id: str) -> str | None:
        with self._read() as conn:
            return conn.execute(sa.select(items.c.image_sha256).where(items.c.id == item_id)).scalar()

    # --- writing --------------------------------------------------------------------------------

    def submit(
        self,
        reader_id: int,
        item_id: str,
        read_number: int,
        submission_id: str,
        answers: Sequence[Answer],
        *,
        shown: Shown,
        flagged: bool = False,
        flag_reason: str | None = None,
        comment: str | None = None,
        seconds: float | None = None,
        points: Mapping[str, tuple[float, float]] | None = None,
    ) -> SubmitResult:
        """Store one submit of one item. Idempotent in ``submission_id``; changes are audited.

        ``shown`` is what the form was made from (:meth:`shown` when it was drawn): a submit from
        a session whose token has since been reissued raises :class:`TokenRetired`, one from a form
        whose answer has changed since (another tab) :class:`StaleForm`; both store nothing but an
        audit row saying so. ``points`` (landmark -> (x, y), stored-image frame) is the item's whole
        set of landmarks: stored ones it lacks are deleted. None leaves the stored landmarks as
        they are.
        """
        for answer in answers:
            answer.validate()
        if len({a.criterion for a in answers}) != len(answers):
            raise StoreError("an answer is given twice for the same criterion")
        flag_reason, comment = text.clean(flag_reason), text.clean(comment)
        for what, value in (("the flag reason", flag_reason), ("the comment", comment)):
            if text.too_long(value):
                raise StoreError(
                    f"{what} is {len(value or '')} characters long; at most {text.MAX_TEXT} are kept: shorten it"
                )
        if flagged and not flag_reason:
            raise StoreError("a flagged image needs a reason")
        checked = None
        if points is not None:
            try:
                checked = check_points(points)
            except PlacementError as exc:
                raise StoreError(str(exc)) from exc
        if not flagged and not answers and not checked:
            raise StoreError("nothing to submit: answer the questions or flag the image")
        sub = _Submission(
            reader_id, item_id, read_number, submission_id, tuple(answers), shown, flagged,
            flag_reason if flagged else None, comment, seconds, checked,
        )  # fmt: skip
        for attempt in range(_RETRIES):
            try:
                with self.engine.begin() as conn:
                    result = self._submit(conn, sub)
                break
            except sa.exc.IntegrityError:
                # PostgreSQL under READ COMMITTED: a concurrent submit of the same answer slot won
                # the insert race. Retry; the second pass sees its row (or its submission id).
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        # Raised after the commit, so that the audit row of the refusal is kept.
        if result.refused == "token":
            raise TokenRetired(
                "your access token was reissued: this session has ended; sign in with the new token"
            )
        if result.refused == "stale":
            stored = self.response(reader_id, item_id, read_number)
            raise StaleForm(
                "this item's answer was changed in another tab or window after this form was shown, so "
                f"your answer was NOT saved. Stored now: {stored.describe() if stored else 'no answers'}.",
                stored,
            )
        return result

    def _submit(self, conn: Connection, sub: _Submission) -> SubmitResult:
        # The answer's assignment row is locked first (PostgreSQL; SQLite's BEGIN IMMEDIATE already
        # serialises every write): two submits of one answer, a double click or two tabs, then run
        # one after the other, and the second sees what the first committed. Under READ COMMITTED
        # without it, a second tab's form could pass the revision check before the first tab
        # committed and then overwrite it.
        assigned = conn.execute(
            sa.select(assignments.c.position)
            .where(
                (assignments.c.reader_id == sub.reader_id)
                & (assignments.c.item_id == sub.item_id)
                & (assignments.c.read_number == sub.read_number)
            )
            .with_for_update()
        ).first()
        if assigned is None:
            raise StoreError("this item is not in your queue")
        if conn.execute(sa.select(submissions.c.id).where(submissions.c.id == sub.submission_id)).first():
            return SubmitResult(created=False, changes=0)
        now = utc_now()
        key = {"reader_id": sub.reader_id, "item_id": sub.item_id, "read_number": sub.read_number}

        # Inserts are collected and sent as one batch per table: under SQLite every statement is
        # time spent holding the database's single write lock.
        audit_rows: list[dict[str, Any]] = []
        new_ratings: list[dict[str, Any]] = []

        def log(action: str, field: str | None, old: Any, new: Any) -> None:
            audit_rows.append(
                _audit_row(
                    actor=f"reader:{sub.reader_id}", action=action, field=field, old=old, new=new,
                    submission_id=sub.submission_id, token_generation=sub.shown.token_generation, **key,
                )
            )  # fmt: skip

        where = (
            (responses.c.reader_id == sub.reader_id)
            & (responses.c.item_id == sub.item_id)
            & (responses.c.read_number == sub.read_number)
        )
        # FOR SHARE: a reissue (an UPDATE of this row) waits for this submit, or this submit waits
        # for the reissue and then sees the new generation; either way none slips between.
        generation = conn.execute(
            sa.select(readers.c.token_generation)
            .where(readers.c.id == sub.reader_id)
            .with_for_update(read=True)
        ).scalar()
        head = conn.execute(sa.select(responses).where(where)).first()
        revision = 0 if head is None else 1 + int(head.edits)
        # A retired token first: an ended session learns nothing about the stored answer.
        refusals = (
            ("token", "refuse_retired_token", "generation", generation, sub.shown.token_generation, ""),
            ("stale", "refuse_stale_form", "revision", revision, sub.shown.revision, f": {sub.describe()}"),
        )
        for refused, action, what, current, shown, attempted in refusals:
            if current != shown:
                log(action, None, f"{what}={current}", f"{what}={shown}{attempted}")
                conn.execute(audit_log.insert(), audit_rows)
                return SubmitResult(created=False, changes=0, refused=refused)

        conn.execute(submissions.insert().values(id=sub.submission_id, at=now, **key))
        fields = {"flagged": sub.flagged, "flag_reason": sub.flag_reason, "comment": sub.comment}
        changed: dict[str, Any] = {}
        if head is None:
            conn.execute(
                responses.insert().values(
                    **key, **fields, seconds=sub.seconds, created_at=now, updated_at=now
                )
            )
            for name, value in fields.items():
                if value not in (None, False):
                    log("create", name, None, value)
        else:
            changed = {n: v for n, v in fields.items() if getattr(head, n) != v}
            for name, value in changed.items():
                log("update", name, getattr(head, name), value)

        existing = {
            row.criterion: row
            for row in conn.execute(
                sa.select(ratings).where(
                    (ratings.c.reader_id == sub.reader_id)
                    & (ratings.c.item_id == sub.item_id)
                    & (ratings.c.read_number == sub.read_number)
                )
            )
        }
        for answer in sub.answers:
            values = {
                "score": answer.score,
                "turing_answer": answer.turing_answer,
                "confidence": answer.confidence,
            }
            row = existing.get(answer.criterion)
            if row is None:
                new_ratings.append(
                    {**key, "criterion": answer.criterion, **values, "created_at": now, "updated_at": now}
                )
                log("create", answer.criterion, None, _describe(values))
            else:
                old = {n: getattr(row, n) for n in values}
                if old != values:
                    conn.execute(
                        ratings.update().where(ratings.c.id == row.id).values(**values, updated_at=now)
                    )
                    log("update", answer.criterion, _describe(old), _describe(values))
        if new_ratings:
            conn.execute(ratings.insert(), new_ratings)
        if sub.points is not None:
            self._replace_landmarks(conn, key, sub.points, now, log)
        if head is not None:
            # Every stored submit adds its time, also one that only changed a score (or nothing):
            # `seconds` is the reader's time on the item summed over visits.
            update: dict[str, Any] = dict(changed)
            if sub.seconds is not None:
                update["seconds"] = (head.seconds or 0.0) + sub.seconds
            if audit_rows:
                update["updated_at"] = now
                update["edits"] = int(head.edits) + 1
            if update:
                conn.execute(responses.update().where(where).values(**update))
        if audit_rows:
            conn.execute(audit_log.insert(), audit_rows)
        return SubmitResult(created=True, changes=len(audit_rows))

    @staticmethod
    def _replace_landmarks(
        conn: Connection,
        key: dict[str, Any],
        points: dict[str, tuple[float, float]],
        now: str,
        log: Any,
    ) -> None:
        where = (
            (landmarks.c.reader_id == key["reader_id"])
            & (landmarks.c.item_id == key["item_id"])
            & (landmarks.c.read_number == key["read_number"])
        )
        existing = {row.landmark: row for row in conn.execute(sa.select(landmarks).where(where))}
        added = []
        for name in sorted(points, key=sort_key):
            x, y = points[name]
            row = existing.get(name)
            if row is None:
                added.append({**key, "landmark": name, "x": x, "y": y, "created_at": now, "updated_at": now})
                log("create", f"landmark:{name}", None, _describe({"x": x, "y": y}))
            elif (row.x, row.y) != (x, y):
                conn.execute(
                    landmarks.update().where(landmarks.c.id == row.id).values(x=x, y=y, updated_at=now)
                )
                old = _describe({"x": row.x, "y": row.y})
                log("update", f"landmark:{name}", old, _describe({"x": x, "y": y}))
        gone = sorted((n for n in existing if n not in points), key=sort_key)
        if gone:
            conn.execute(landmarks.delete().where(where & landmarks.c.landmark.in_(gone)))
            for name in gone:
                row = existing[name]
                log("delete", f"landmark:{name}", _describe({"x": row.x, "y": row.y}), None)
        if added:
            conn.execute(landmarks.insert(), added)

    @staticmethod
    def _log(conn: Connection, **values: Any) -> None:
        conn.execute(audit_log.insert().values(**_audit_row(**values)))

    # --- admin ----------------------------------------------------------------------------------

    def table(self, table: sa.Table) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.select(table))]


def _audit_row(**values: Any) -> dict[str, Any]:
    """A full audit_log row (every column present, so that rows can be inserted as one batch)."""
    row = {c.name: None for c in audit_log.columns if c.name != "id"}
    row.update(values, at=utc_now())
    for name in ("old", "new"):
        if row[name] is not None:
            row[name] = str(row[name])
    return row


def _response(head: Any, rows: Sequence[Any]) -> Response:
    answers = {
        row.criterion: Answer(row.criterion, row.score, row.turing_answer, row.confidence) for row in rows
    }
    return Response(bool(head.flagged), head.flag_reason, head.comment, answers, int(head.edits))


def _describe(values: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items() if v is not None)
