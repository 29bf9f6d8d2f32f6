"""CLI-only admin actions: ``status``, ``export`` (the unblinding join) and ``reissue``.

Exports unblind, so they are written owner-only (0600, like ``key.parquet``). In the CSV files
every text cell a spreadsheet would run as a formula gets a leading apostrophe
(:func:`reader_study.text.spreadsheet_safe`); the Parquet files keep the exact values.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pandas as pd

from audit.atomic import atomic_path
from reader_study import placement, study, studydir, text
from reader_study.criteria import FLAG
from reader_study.store import Store, assignments, landmarks, new_token, ratings, readers, responses

_CROP_COLUMNS = ("crop_left", "crop_top", "crop_side")


def open_store(study_dir: str | Path) -> tuple[Path, study.StudyInfo, Store]:
    """The study and its database, brought to this version's schema (:meth:`Store.upgrade`)."""
    root, info = study.load(study_dir)
    store = Store(study.database_url(root, info))
    try:
        store.upgrade()
        store.check_schema()
    except BaseException:
        store.close()
        raise
    return root, info, store


@dataclasses.dataclass(frozen=True)
class ReaderStatus:
    reader: str
    done: int
    total: int
    rereads_waiting: int
    flagged: int
    median_seconds: float | None
    last_activity: str | None


def status(study_dir: str | Path) -> tuple[list[ReaderStatus], pd.DataFrame]:
    """Progress per reader and the flagged items (item ids only: status stays blinded)."""
    _, _, store = open_store(study_dir)
    try:
        rs = pd.DataFrame(store.table(readers))
        resp = pd.DataFrame(store.table(responses), columns=[c.name for c in responses.columns])
        out = []
        for reader in rs.itertuples():
            q = store.queue(int(reader.id))
            mine = resp[resp.reader_id == reader.id]
            secs = mine.seconds.dropna()
            out.append(
                ReaderStatus(
                    reader=reader.name,
                    done=sum(e.done for e in q),
                    total=len(q),
                    rereads_waiting=sum(e.available_after is not None for e in q),
                    flagged=int(mine.flagged.astype(bool).sum()),
                    median_seconds=float(secs.median()) if len(secs) else None,
                    last_activity=str(mine.updated_at.max()) if len(mine) else None,
                )
            )
        names = dict(zip(rs.id, rs.name))
        flags = resp[resp.flagged.astype(bool)] if len(resp) else resp
        flagged = pd.DataFrame(
            {
                "reader": [names[r] for r in flags.reader_id],
                "item": list(flags.item_id),
                "read_number": list(flags.read_number),
                "reason": list(flags.flag_reason),
                "at": list(flags.updated_at),
            }
        )
        return out, flagged
    finally:
        store.close()


@dataclasses.dataclass(frozen=True)
class _Tables:
    """The study's tables as frames, with the key: what every export joins."""

    key: pd.DataFrame
    key_path: Path
    readers: pd.DataFrame
    ratings: pd.DataFrame
    responses: pd.DataFrame
    assignments: pd.DataFrame


def _tables(study_dir: str | Path) -> _Tables:
    root, _, store = open_store(study_dir)
    try:
        key_path = root / studydir.KEY
        key = study.read_key(root, "the ratings cannot be unblinded")

        def frame(table: Any) -> pd.DataFrame:
            return pd.DataFrame(store.table(table), columns=[c.name for c in table.columns])

        return _Tables(
            key,
            key_path,
            frame(readers),
            frame(ratings),
            frame(responses),
            frame(assignments),
        )
    finally:
        store.close()


def _with_key(rows: pd.DataFrame, t: _Tables) -> pd.DataFrame:
    """``rows`` (by reader_id, item_id, read_number) with reader name, position and the key."""
    rows = rows.merge(
        t.assignments[["reader_id", "item_id", "read_number", "calibration", "position"]],
        on=["reader_id", "item_id", "read_number"],
        how="left",
        validate="many_to_one",
    )
    rows = rows.merge(
        t.readers[["id", "name"]].rename(columns={"id": "reader_id", "name": "reader"}), on="reader_id"
    )
    rows = rows.merge(
        t.key[["item", "model", "case_id", "sample"]].rename(columns={"item": "item_id"}),
        on="item_id",
        how="left",
        validate="many_to_one",
    )
    if rows.model.isna().any():
        bad = sorted(set(rows.item_id[rows.model.isna()]))[:5]
        raise study.StudyError(
            f"{t.key_path}: rated item(s) missing from the key, e.g. {bad}; is this the right key?"
        )
    out = rows.rename(columns={"item_id": "item"})
    for col in ("read_number", "sample", "position"):
        out[col] = out[col].astype("Int64")
    return out


def export_frame(study_dir: str | Path) -> pd.DataFrame:
    """One row per (reader, item, criterion, read): the answers joined with the key.

    A flagged item without answers gets one row with ``criterion = "flag"`` so that it is counted.
    Comments are not here but in :func:`comments_frame`, once per response.
    """
    return _ratings_frame(_tables(study_dir))


def read_ratings(path: str | Path) -> pd.DataFrame:
    """Ratings from a study directory (:func:`export_frame`) or from an export file written by
    ``reader-study export`` (``ratings.csv`` / ``.parquet``), checked for the export's columns."""
    path = Path(path)
    if path.is_dir():
        return export_frame(path)
    if path.suffix not in studydir.EXPORT_SUFFIXES or not path.is_file():
        raise study.StudyError(
            f"{path}: not a reader-study directory or a ratings export (.csv/.parquet written by "
            "`xray-audit reader-study export`)"
        )
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"case_id": str})
    missing = [c for c in studydir.EXPORT_COLUMNS if c not in frame.columns]
    if missing:
        raise study.StudyError(
            f"{path}: missing column(s) {', '.join(missing)}; give the ratings file that "
            "`xray-audit reader-study export` writes"
        )
    for col in ("score", "confidence", "read_number", "sample"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    if "calibration" in frame:
        frame["calibration"] = frame["calibration"].astype(str).str.lower().isin(("true", "1"))
    else:
        frame["calibration"] = False
    frame["case_id"] = frame["case_id"].astype(str)
    return frame


def _ratings_frame(t: _Tables) -> pd.DataFrame:
    heads = t.responses.drop(columns=["comment"]).rename(
        columns={"created_at": "response_created_at", "updated_at": "response_updated_at"}
    )
    rows = t.ratings.merge(
        heads, on=["reader_id", "item_id", "read_number"], how="left", validate="many_to_one"
    )
    bare = heads[heads.flagged.astype(bool)].merge(
        t.ratings[["reader_id", "item_id", "read_number"]].drop_duplicates(),
        on=["reader_id", "item_id", "read_number"],
        how="left",
        indicator=True,
    )
    bare = bare[bare._merge == "left_only"].drop(columns="_merge")
    bare = bare.assign(
        criterion=FLAG,
        score=pd.NA,
        turing_answer=None,
        confidence=pd.NA,
        created_at=bare.response_created_at,
        updated_at=bare.response_updated_at,
    )
    rows = pd.concat([rows, bare], ignore_index=True) if len(bare) else rows
    out = _with_key(rows, t)
    out["flagged"] = out.flagged.astype(bool)
    out["calibration"] = out.calibration.astype(bool)
    for col in ("score", "confidence", "edits"):
        out[col] = out[col].astype("Int64")
    out = out[[*studydir.EXPORT_COLUMNS, *studydir.EXTRA_COLUMNS]]
    return out.sort_values(["reader", "read_number", "item", "criterion"], kind="stable").reset_index(
        drop=True
    )


def comments_frame(study_dir: str | Path) -> pd.DataFrame:
    """One row per response with a comment: who wrote it on which item, and when."""
    return _comments_frame(_tables(study_dir))


def _comments_frame(t: _Tables) -> pd.DataFrame:
    notes = t.responses[t.responses.comment.notna()]
    out = _with_key(notes, t)
    return (
        out[list(studydir.COMMENT_COLUMNS)]
        .sort_values(["reader", "read_number", "item"], kind="stable")
        .reset_index(drop=True)
    )


def landmarks_frame(study_dir: str | Path) -> pd.DataFrame:
    """One row per placed point, in the source image's pixels (x column, y row, origin top-left,
    pixel centres at integers), with the key's model, case and sample.

    Each reader's rows of one model (and read) are an annotation file for ``xray-audit norberg
    angles``: filter on ``reader``, ``model`` and ``read_number`` first, since a case may be read
    twice (``--reread``) and the real image and samples of one case share the ``case_id``.
    """
    root, info, store = open_store(study_dir)
    try:
        if info.landmarks is None:
            raise study.StudyError(
                f"{root}: this study asks for no landmarks (it was created without --landmarks)"
            )
        key_path = root / studydir.KEY
        key = study.read_key(root, "the landmarks cannot be unblinded")
        rs = pd.DataFrame(store.table(readers))
        pts = pd.DataFrame(store.table(landmarks), columns=[c.name for c in landmarks.columns])
    finally:
        store.close()
    missing = [c for c in _CROP_COLUMNS if c not in key.columns]
    if missing:
        raise study.StudyError(
            f"{key_path}: no {', '.join(missing)} column(s), so landmarks cannot be mapped to the source "
            "images; is this the key written with the study?"
        )
    rows = pts.merge(rs[["id", "name"]].rename(columns={"id": "reader_id", "name": "reader"}), on="reader_id")
    rows = rows.merge(
        key[["item", "model", "case_id", "sample", *_CROP_COLUMNS]].rename(columns={"item": "item_id"}),
        on="item_id",
        how="left",
        validate="many_to_one",
    )
    if rows.model.isna().any():
        bad = sorted(set(rows.item_id[rows.model.isna()]))[:5]
        raise study.StudyError(f"{key_path}: item(s) with landmarks missing from the key, e.g. {bad}")
    x, y = placement.stored_to_original(
        rows.x, rows.y, info.image_size, rows.crop_left, rows.crop_top, rows.crop_side
    )
    out = rows.rename(columns={"item_id": "item"}).assign(x=x, y=y)
    out["read_number"] = out.read_number.astype("Int64")
    out["sample"] = out["sample"].astype("Int64")
    out = out.assign(_order=out.landmark.map(placement.sort_key))
    out = out.sort_values(["reader", "read_number", "model", "case_id", "item", "_order"], kind="stable")
    return out[list(studydir.LANDMARK_COLUMNS)].reset_index(drop=True)


def write_export(frame: pd.DataFrame, target: Path, neutralise: bool) -> None:
    """``frame`` to ``target`` (.csv/.parquet), owner-only; ``neutralise``: CSV formulas defused."""
    if target.suffix not in studydir.EXPORT_SUFFIXES:
        raise study.StudyError(f"--out must end in .csv or .parquet, got {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:  # a mkstemp file: owner-only (0600), kept by the rename
        if target.suffix == ".csv" and neutralise:
            safe = frame.copy()
            for col in safe.columns:
                if safe[col].dtype == object or pd.api.types.is_string_dtype(safe[col].dtype):
                    safe[col] = safe[col].map(text.spreadsheet_safe)
            safe.to_csv(tmp, index=False)
        elif target.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    os.chmod(target, 0o600)


def _beside(out: Path | None, root: Path, stem: str) -> list[Path]:
    """Where a companion export goes: ``<out stem>-<stem><suffix>``, or ``STUDY_DIR/<stem>.csv/.parquet``."""
    if out is not None:
        return [out.with_name(f"{out.stem}-{stem}{out.suffix}")]
    return [root / f"{stem}{suffix}" for suffix in studydir.EXPORT_SUFFIXES]


def export(study_dir: str | Path, out: Path | None = None) -> list[Path]:
    """Write the export to ``out`` (.csv or .parquet), or to ``STUDY_DIR/ratings.csv`` and ``.parquet``.

    A study with comments also gets ``comments.csv`` and ``.parquet`` beside them, one with
    landmarks ``landmarks.csv`` and ``.parquet`` (with ``out``: ``<out stem>-comments<suffix>``,
    ``<out stem>-landmarks<suffix>``).
    """
    root = Path(study_dir)
    _, info = study.load(root)
    if out is not None and out.suffix not in studydir.EXPORT_SUFFIXES:
        raise study.StudyError(f"--out must end in .csv or .parquet, got {out}")
    written = []
    # Ratings and comments hold what readers typed: defused for spreadsheets. Landmarks hold none,
    # and their CSV is an annotation file other commands read back: written as is.
    tables = _tables(study_dir)  # read once for the ratings and the comments
    parts = [(_ratings_frame(tables), [out] if out else _beside(None, root, studydir.EXPORT_STEM), True)]
    if info.comment:
        parts.append((_comments_frame(tables), _beside(out, root, studydir.COMMENTS_STEM), True))
    if info.landmarks is not None:
        parts.append((landmarks_frame(study_dir), _beside(out, root, studydir.LANDMARKS_STEM), False))
    for frame, targets, neutralise in parts:
        for target in targets:
            write_export(frame, target, neutralise)
            written.append(target)
    return written


def reissue(study_dir: str | Path, reader: str) -> str:
    """A new token for ``reader``; the old one stops working at once."""
    _, _, store = open_store(study_dir)
    try:
        token = new_token()
        store.reissue_token(reader, token)
        return token
    finally:
        store.close()
