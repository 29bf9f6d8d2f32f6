"""The reader study's database schema (SQLAlchemy Core): every table, its constraints and the
append-only triggers of the audit log. What the constraints guarantee, and how the store uses them,
is described in :mod:`reader_study.store`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import event

from reader_study import text

SCHEMA_VERSION = 2
SCORE_MIN, SCORE_MAX = 1, 5
TURING_ANSWERS = ("real", "synthetic")

metadata = sa.MetaData()

meta_table = sa.Table(
    "study_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

readers = sa.Table(
    "readers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("token_issued_at", sa.String(32), nullable=False),
    sa.Column("token_generation", sa.Integer, nullable=False, server_default="1"),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("image_sha256", sa.String(64), nullable=False),
    # What the reader is told about the case (its prompt or intended finding), identical for the
    # real image and every model's sample of that case; NULL when the study does not show it.
    sa.Column("prompt", sa.Text),
)

assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("reader_id", sa.Integer, sa.ForeignKey("readers.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.String(32), sa.ForeignKey("items.id"), nullable=False),
    sa.Column("read_number", sa.Integer, nullable=False),
    sa.Column("calibration", sa.Boolean, nullable=False),
    # Re-reads: shown from this UTC time on, or this many days after the reader's first read.
    sa.Column("available_after", sa.String(32)),
    sa.Column("washout_days", sa.Integer),
    sa.UniqueConstraint("reader_id", "item_id", "read_number", name="uq_assignment"),
    sa.CheckConstraint("read_number >= 1", name="ck_assignment_read_number"),
)

_assignment_fk = sa.ForeignKeyConstraint(
    ["reader_id", "item_id", "read_number"],
    ["assignments.reader_id", "assignments.item_id", "assignments.read_number"],
)

responses = sa.Table(
    "responses",
    metadata,
    sa.Column("reader_id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.String(32), primary_key=True),
    sa.Column("read_number", sa.Integer, primary_key=True),
    sa.Column("flagged", sa.Boolean, nullable=False),
    sa.Column("flag_reason", sa.Text),
    sa.Column("comment", sa.Text),
    sa.Column("seconds", sa.Float),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    # Submits that changed a stored answer after the first: the response's revision is 1 + edits.
    sa.Column("edits", sa.Integer, nullable=False, server_default="0"),
    sa.CheckConstraint(f"length(comment) <= {text.MAX_TEXT}", name="ck_response_comment_length"),
    sa.CheckConstraint(f"length(flag_reason) <= {text.MAX_TEXT}", name="ck_response_flag_reason_length"),
    _assignment_fk,
)

ratings = sa.Table(
    "ratings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("reader_id", sa.Integer, nullable=False),
    sa.Column("item_id", sa.String(32), nullable=False),
    sa.Column("criterion", sa.String(64), nullable=False),
    sa.Column("read_number", sa.Integer, nullable=False),
    sa.Column("score", sa.Integer),
    sa.Column("turing_answer", sa.String(16)),
    sa.Column("confidence", sa.Integer),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.UniqueConstraint("reader_id", "item_id", "criterion", "read_number", name="uq_rating"),
    sa.CheckConstraint(f"score BETWEEN {SCORE_MIN} AND {SCORE_MAX}", name="ck_rating_score"),
    sa.CheckConstraint(f"confidence BETWEEN {SCORE_MIN} AND {SCORE_MAX}", name="ck_rating_confidence"),
    sa.CheckConstraint(
        "turing_answer IS NULL OR turing_answer IN ('real', 'synthetic')", name="ck_rating_turing"
    ),
    sa.CheckConstraint("score IS NOT NULL OR turing_answer IS NOT NULL", name="ck_rating_has_answer"),
    sa.ForeignKeyConstraint(
        ["reader_id", "item_id", "read_number"],
        ["assignments.reader_id", "assignments.item_id", "assignments.read_number"],
    ),
)

landmarks = sa.Table(
    "landmarks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("reader_id", sa.Integer, nullable=False),
    sa.Column("item_id", sa.String(32), nullable=False),
    sa.Column("read_number", sa.Integer, nullable=False),
    sa.Column("landmark", sa.String(64), nullable=False),
    # The stored study image's pixels (x column, y row, pixel centres at integers). Not the source
    # image's: the app never learns a source's size, which could tell models apart.
    sa.Column("x", sa.Float, nullable=False),
    sa.Column("y", sa.Float, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.UniqueConstraint("reader_id", "item_id", "read_number", "landmark", name="uq_landmark"),
    sa.ForeignKeyConstraint(
        ["reader_id", "item_id", "read_number"],
        ["assignments.reader_id", "assignments.item_id", "assignments.read_number"],
    ),
)

submissions = sa.Table(
    "submissions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("reader_id", sa.Integer, nullable=False),
    sa.Column("item_id", sa.String(32), nullable=False),
    sa.Column("read_number", sa.Integer, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.ForeignKeyConstraint(
        ["reader_id", "item_id", "read_number"],
        ["assignments.reader_id", "assignments.item_id", "assignments.read_number"],
    ),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("reader_id", sa.Integer),
    sa.Column("item_id", sa.String(32)),
    sa.Column("read_number", sa.Integer),
    sa.Column("field", sa.String(64)),
    sa.Column("old", sa.Text),
    sa.Column("new", sa.Text),
    sa.Column("submission_id", sa.String(36)),
    # The reader's token generation that made the write (readers.token_generation); NULL for admin.
    sa.Column("token_generation", sa.Integer),
)

_APPEND_ONLY_SQLITE = [
    sa.DDL(
        f"CREATE TRIGGER audit_log_no_{op.lower()} BEFORE {op} ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
    ).execute_if(dialect="sqlite")
    for op in ("UPDATE", "DELETE")
]
_APPEND_ONLY_POSTGRES = [
    sa.DDL(
        "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
    ).execute_if(dialect="postgresql"),
    sa.DDL(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
    ).execute_if(dialect="postgresql"),
]
for _ddl in (*_APPEND_ONLY_SQLITE, *_APPEND_ONLY_POSTGRES):
    event.listen(audit_log, "after_create", _ddl)
