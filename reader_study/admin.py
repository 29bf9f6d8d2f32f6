"""CLI-only admin actions: ``status``, ``export`` (the unblinding join) and ``reissue``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from audit.atomic import atomic_path
from reader_study import placement, study
from reader_study.criteria import FLAG
from reader_study.store import Store, assignments, landmarks, new_token, ratings, readers, responses

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
    "comment",
    "created_at",
    "read_number",
)
# After EXPORT_COLUMNS: whether the item was a calibration (practice) item, the flag and its reason,
# the reader's seconds on the item (summed over edits) and the time of the last change.
EXTRA_COLUMNS = ("calibration", "flagged", "flag_reason", "seconds", "updated_at")
# Readers' landmarks in the source image's pixels: the columns of an annotation file
# (case_id, landmark, x, y) plus who placed them on which item.
LANDMARK_COLUMNS = ("reader", "item", "model", "case_id", "sample", "read_number", "landmark", "x", "y")
_CROP_COLUMNS = ("crop_left", "crop_top", "crop_side")


def open_store(study_dir: str | Path) -> tuple[Path, study.StudyInfo, Store]:
    root, info = study.load(study_dir)
    store = Store(study.database_url(root, info))
    store.check_schema()
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


def export_frame(study_dir: str | Path) -> pd.DataFrame:
    """One row per (reader, item, criterion, read): the answers joined with the key.

    A flagged item without answers gets one row with ``criterion = "flag"`` so that it is counted.
    """
    root, _, store = open_store(study_dir)
    try:
        key_path = root / study.KEY
        if not key_path.is_file():
            raise study.StudyError(f"{key_path} is missing: without the key the ratings cannot be unblinded")
        key = pd.read_parquet(key_path)
        rs = pd.DataFrame(store.table(readers))
        rat = pd.DataFrame(store.table(ratings), columns=[c.name for c in ratings.columns])
        resp = pd.DataFrame(store.table(responses), columns=[c.name for c in responses.columns])
        asg = pd.DataFrame(store.table(assignments), columns=[c.name for c in assignments.columns])
    finally:
        store.close()
    heads = resp.rename(columns={"created_at": "response_created_at", "updated_at": "response_updated_at"})
    rows = rat.merge(heads, on=["reader_id", "item_id", "read_number"], how="left", validate="many_to_one")
    bare = heads[heads.flagged.astype(bool)].merge(
        rat[["reader_id", "item_id", "read_number"]].drop_duplicates(),
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
    rows = rows.merge(
        asg[["reader_id", "item_id", "read_number", "calibration"]],
        on=["reader_id", "item_id", "read_number"],
        how="left",
        validate="many_to_one",
    )
    rows = rows.merge(
        rs[["id", "name"]].rename(columns={"id": "reader_id", "name": "reader"}), on="reader_id"
    )
    rows = rows.merge(
        key[["item", "model", "case_id", "sample"]].rename(columns={"item": "item_id"}),
        on="item_id",
        how="left",
        validate="many_to_one",
    )
    if rows.model.isna().any():
        bad = sorted(set(rows.item_id[rows.model.isna()]))[:5]
        raise study.StudyError(
            f"{key_path}: rated item(s) missing from the key, e.g. {bad}; is this the right key?"
        )
    out = rows.rename(columns={"item_id": "item"})
    out["flagged"] = out.flagged.astype(bool)
    out["calibration"] = out.calibration.astype(bool)
    for col in ("score", "confidence", "read_number", "sample"):
        out[col] = out[col].astype("Int64")
    out = out[[*EXPORT_COLUMNS, *EXTRA_COLUMNS]]
    return out.sort_values(["reader", "read_number", "item", "criterion"], kind="stable").reset_index(
        drop=True
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
        key_path = root / study.KEY
        if not key_path.is_file():
            raise study.StudyError(
                f"{key_path} is missing: without the key the landmarks cannot be unblinded"
            )
        key = pd.read_parquet(key_path)
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
    return out[list(LANDMARK_COLUMNS)].reset_index(drop=True)


def _write(frame: pd.DataFrame, target: Path) -> None:
    if target.suffix not in (".csv", ".parquet"):
        raise study.StudyError(f"--out must end in .csv or .parquet, got {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        if target.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)


def export(study_dir: str | Path, out: Path | None = None) -> list[Path]:
    """Write the export to ``out`` (.csv or .parquet), or to ``STUDY_DIR/ratings.csv`` and ``.parquet``.

    A study with landmarks also gets ``landmarks.csv`` and ``.parquet`` beside them (with ``out``:
    ``<out stem>-landmarks<suffix>``).
    """
    root = Path(study_dir)
    _, info = study.load(root)
    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise study.StudyError(f"--out must end in .csv or .parquet, got {out}")
    frame = export_frame(study_dir)
    targets = [out] if out else [root / f"{study.EXPORT_STEM}.csv", root / f"{study.EXPORT_STEM}.parquet"]
    for target in targets:
        _write(frame, target)
    if info.landmarks is None:
        return targets
    points = landmarks_frame(study_dir)
    extra = (
        [out.with_name(f"{out.stem}-{study.LANDMARKS_STEM}{out.suffix}")]
        if out
        else [root / f"{study.LANDMARKS_STEM}.csv", root / f"{study.LANDMARKS_STEM}.parquet"]
    )
    for target in extra:
        _write(points, target)
    return targets + extra


def reissue(study_dir: str | Path, reader: str) -> str:
    """A new token for ``reader``; the old one stops working at once."""
    _, _, store = open_store(study_dir)
    try:
        token = new_token()
        store.reissue_token(reader, token)
        return token
    finally:
        store.close()
