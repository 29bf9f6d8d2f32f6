"""The reader-study directory: the contract between ``reader-study create`` (writer), the app,
``status``, ``export`` (readers and writers of the database and the exports) and what reads the
exports (reports, dashboards, ``norberg evaluate``). Names and columns only, with no dependencies, so
that any of them can import it (:mod:`reader_study.study` reads and writes ``study.json``).

Layout of ``STUDY_DIR/``::

    study.json       what the app needs: title, criteria, options, database URL. No model names.
    key.parquet      item -> model, case_id, sample, source path and sha256, calibration, and
                     the source's size and the square cut from it (crop_left, crop_top, crop_side)
                     that maps landmarks back to the source. The unblinding key: read only by
                     ``export`` and the blinding check, never by the app; owner-only (0600).
    blinding.json    the images' byte sizes per model and view, measured by ``create`` and checked
                     before serving (reader_study.blinding); names the models, so owner-only too
    images/<item>.png  every image re-encoded alike (see reader_study.rendering); names are the
                     opaque random item ids
    ratings.sqlite   the database (unless ``--database`` named a PostgreSQL URL)
    ratings.csv      ``export``: one row per reader, item, criterion and read (EXPORT_COLUMNS, then
    ratings.parquet  EXTRA_COLUMNS); unblinded, owner-only
    comments.csv     ``export`` of a study with ``--comment``: one row per response with a comment
    comments.parquet (COMMENT_COLUMNS)
    landmarks.csv    ``export`` of a study with ``--landmarks``: the readers' points in the source
    landmarks.parquet images' pixels (LANDMARK_COLUMNS), an annotation file ``norberg evaluate`` reads

``export --out FILE`` writes one format of each instead, the companions named
``<FILE stem>-comments<suffix>`` and ``<FILE stem>-landmarks<suffix>``.
"""

from __future__ import annotations

STUDY_JSON = "study.json"
KEY = "key.parquet"
BLINDING_FILE = "blinding.json"
IMAGES_DIR = "images"
IMAGE_SUFFIX = ".png"
DB_FILE = "ratings.sqlite"
# The exports: one file per stem and suffix.
EXPORT_STEM = "ratings"
COMMENTS_STEM = "comments"
LANDMARKS_STEM = "landmarks"
EXPORT_SUFFIXES = (".csv", ".parquet")
RATINGS_PARQUET = f"{EXPORT_STEM}.parquet"  # the ratings export the dashboard reads

KEY_COLUMNS = (
    "item", "model", "case_id", "sample", "source_path", "source_sha256", "calibration",
    "source_width", "source_height", "crop_left", "crop_top", "crop_side",
)  # fmt: skip
EXPORT_COLUMNS = (
    "reader",
    "item",
    "model",
    "case_id",
    "sample",
    "criterion",
    "score",
    "turing_answer",
    "confidence",
    "created_at",
    "read_number",
)
# After EXPORT_COLUMNS: whether the item was a calibration (practice) item, the flag and its reason,
# the reader's seconds on the item (summed over edits), the time of the last change, the item's
# place in that reader's queue (0 = first shown: order and fatigue effects) and the number of
# submits that changed the item's answer after the first.
EXTRA_COLUMNS = ("calibration", "flagged", "flag_reason", "seconds", "updated_at", "position", "edits")
# Free-text comments, one row per response that has one (not repeated on every criterion row).
COMMENT_COLUMNS = (
    "reader", "item", "model", "case_id", "sample", "read_number", "position", "comment", "created_at", "updated_at",
)  # fmt: skip
# Readers' landmarks in the source image's pixels: the columns of an annotation file
# (case_id, landmark, x, y) plus who placed them on which item.
LANDMARK_COLUMNS = ("reader", "item", "model", "case_id", "sample", "read_number", "landmark", "x", "y")
