"""CLI-only admin actions: ``status``, ``export`` (the unblinding join) and ``reissue``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from audit.atomic import atomic_path
from reader_study import study
from reader_study.criteria import FLAG
from reader_study.store import Store, assignments, new_token, ratings, readers, responses

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


def export(study_dir: str | Path, out: Path | None = None) -> list[Path]:
    """Write the export to ``out`` (.csv or .parquet), or to ``STUDY_DIR/ratings.csv`` and ``.parquet``."""
    frame = export_frame(study_dir)
    root = Path(study_dir)
    targets = [out] if out else [root / f"{study.EXPORT_STEM}.csv", root / f"{study.EXPORT_STEM}.parquet"]
    for target in targets:
        if target.suffix not in (".csv", ".parquet"):
            raise study.StudyError(f"--out must end in .csv or .parquet, got {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            if target.suffix == ".csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
    return targets


def reissue(study_dir: str | Path, reader: str) -> str:
    """A new token for ``reader``; the old one stops working at once."""
    _, _, store = open_store(study_dir)
    try:
        token = new_token()
        store.reissue_token(reader, token)
        return token
    finally:
        store.close()
