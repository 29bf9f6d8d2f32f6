"""``xray-audit reader-study create``: turn a run directory into a blinded reader study.

The whole study directory is built next to its destination and renamed into place at the end, so
an interrupted ``create`` leaves nothing half made (with a PostgreSQL database, the tables it had
written stay and the error says so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from audit import rundir
from audit.atomic import sha256_bytes, write_bytes
from audit.images import ImageReadError, read_image
from audit.norberg.evaluation import run_settings
from audit.norberg.geometry import PATIENT_LEFT_ON
from reader_study import assignment, blinding, placement, rendering, study, studydir
from reader_study.criteria import Criterion
from reader_study.store import Store, new_token, sqlite_url

log = logging.getLogger(__name__)

REAL = "real"
MAX_DEFAULT_PER_MODEL = 50
_WASHOUT = re.compile(r"^(\d+)d$")


class CreateError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class CreateOptions:
    readers: tuple[str, ...]
    criteria: tuple[Criterion, ...]
    models: tuple[str, ...] | None = None  # None: every generated model of the run
    per_model: int | None = None  # None: as many as keep cases disjoint, at most 50
    real: int | None = None  # None: same as per_model
    turing: bool = False
    comment: bool = False
    show_prompt: bool = False
    seed: int = 0
    size: int = 512
    calibration: int = 0
    reread_percent: float = 0.0
    washout: str | None = None  # "YYYY-MM-DD" (UTC) or "Nd" (days after the reader's first read)
    database: str | None = None  # None: ratings.sqlite in the study directory
    title: str = "Reader study"
    landmarks: str | None = None  # "norberg": readers also place the Norberg-angle landmarks
    # Where the images show the patient's left hip; None: the run config's [norberg] patient_left,
    # else "image-right" (the standard radiographic display).
    patient_left: str | None = None


@dataclasses.dataclass(frozen=True)
class CreatedStudy:
    path: Path
    tokens: dict[str, str]  # reader -> token: shown once, stored only hashed
    n_items: int
    case_reuse: int


def _check_options(o: CreateOptions) -> None:
    names = list(o.readers)
    if not names:
        raise CreateError("--readers needs at least one name, e.g. --readers alice,bob")
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9._@-]{1,100}", n)]
    if bad:
        raise CreateError(f"reader names may use letters, digits and ._@- only: {bad}")
    if len(set(names)) != len(names):
        raise CreateError(f"a reader is listed twice in --readers: {names}")
    if o.landmarks is not None and o.landmarks not in placement.TASKS:
        raise CreateError(
            f"--landmarks: unknown task {o.landmarks!r}; available: {', '.join(placement.TASKS)}"
        )
    if o.patient_left is not None and o.patient_left not in PATIENT_LEFT_ON:
        raise CreateError(
            f"--patient-left must be one of {', '.join(PATIENT_LEFT_ON)}, got {o.patient_left!r}"
        )
    if o.patient_left is not None and o.landmarks is None:
        raise CreateError("--patient-left only matters for --landmarks norberg: give both or neither")
    if not o.criteria and not o.turing and o.landmarks is None:
        raise CreateError("nothing to ask: give --criteria, --criteria-file, --turing or --landmarks")
    for flag, value in (("--per-model", o.per_model), ("--real", o.real)):
        if value is not None and value < 0:
            raise CreateError(f"{flag} must be >= 0, got {value}")
    if not 64 <= o.size <= 4096:
        raise CreateError(f"--size must be between 64 and 4096 pixels, got {o.size}")
    if o.calibration < 0:
        raise CreateError(f"--calibration must be >= 0, got {o.calibration}")
    if not 0 <= o.reread_percent <= 100:
        raise CreateError(f"--reread is a percentage 0-100, got {o.reread_percent}")
    if o.reread_percent > 0 and o.washout is None:
        raise CreateError(
            "--reread needs --washout: a date (2026-12-31, UTC) or days after the first read (14d)"
        )
    if o.washout is not None:
        _parse_washout(o.washout)


def _parse_washout(text: str) -> tuple[str | None, int | None]:
    if m := _WASHOUT.match(text):
        return None, int(m.group(1))
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise CreateError(
            f"--washout must be a date YYYY-MM-DD (UTC) or a number of days like 14d, got {text!r}"
        )
    return day.isoformat().replace("+00:00", "Z"), None


@dataclasses.dataclass(frozen=True)
class _Source:
    stratum: str  # "real" or a model name
    case_id: str
    sample: int | None
    path: str
    sha256: str | None  # recorded by the run, checked before use


def _sources(run: Path, models: Sequence[str] | None) -> tuple[dict[str, list[_Source]], pd.DataFrame]:
    cases = pd.read_parquet(run / rundir.CASES)
    samples = pd.read_parquet(run / rundir.SAMPLES)
    failed: set[tuple[str, str, int]] = set()
    if (run / rundir.FAILURES).exists():
        f = pd.read_csv(run / rundir.FAILURES, dtype={"case_id": str})
        failed = {(m, c, int(s)) for m, c, s in zip(f.model, f.case_id, f["sample"]) if pd.notna(s)}
    generated = [m for m in dict.fromkeys(samples.model) if m != REAL]
    kinds = dict(zip(samples.model, samples["kind"], strict=False)) if "kind" in samples.columns else {}
    # A training-copy baseline's samples are training images: not generated, and a reader study must not
    # show them unless the run's privacy audit says training images may be shown.
    copies = [m for m in generated if kinds.get(m) == rundir.TRAINING_COPY_KIND]
    if models is None:
        chosen = [m for m in generated if m not in copies]
    else:
        unknown = [m for m in models if m not in generated]
        if unknown:
            raise CreateError(
                f"--models: {unknown} not in {run / rundir.SAMPLES}; its models are: {', '.join(generated)}"
            )
        chosen = list(models)
        shown = [m for m in chosen if m in copies]
        if shown and not _training_images_may_be_shown(run):
            raise CreateError(
                f"--models: {', '.join(shown)} {'is a' if len(shown) == 1 else 'are'} training-copy "
                "baseline(s), whose samples are training images, and the run's [privacy].show_training_images "
                "is not true; leave them out (they are not generated images), or rerun with "
                "show_training_images = true if the training data may be shown to readers"
            )
    out: dict[str, list[_Source]] = {
        REAL: [_Source(REAL, str(c), None, str(p), None) for c, p in zip(cases.case_id, cases.image)]
    }
    for model in chosen:
        rows = samples[samples.model == model]
        out[model] = [
            _Source(model, str(r.case_id), int(r.sample), str(r.path), str(r.sha256))
            for r in rows.itertuples()
            if isinstance(r.path, str) and (model, str(r.case_id), int(r.sample)) not in failed
        ]
    return out, cases


def _training_images_may_be_shown(run: Path) -> bool:
    try:
        info = json.loads((run / rundir.RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return rundir.shows_training_images(info)


def _read_source(src: _Source) -> tuple[np.ndarray, str]:
    path = Path(src.path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CreateError(
            f"{path}: cannot read the {src.stratum} image of case {src.case_id} ({exc.strerror}); "
            "the run directory refers to it: restore the file or rerun `xray-audit run`"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if src.sha256 is not None and digest != src.sha256:
        raise CreateError(
            f"{path}: the file changed after the run recorded it (sha256 {digest[:12]}… != {src.sha256[:12]}…); "
            "rerun `xray-audit run` so that ratings refer to the images that were scored"
        )
    try:
        return read_image(path).pixels, digest
    except ImageReadError as exc:
        raise CreateError(str(exc)) from exc


def create_study(
    run_dir: str | Path, out: str | Path, options: CreateOptions, progress: bool = True
) -> CreatedStudy:
    _check_options(options)
    run = rundir.require_run_dir(run_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CreateError(
            f"{out} already exists and is not empty; a study is created once (its tokens and ratings "
            "would be lost): choose a new --out"
        )
    sources, cases = _sources(run, options.models)
    strata = list(sources)
    # Every draw mixes --seed with 128 secret bits: with the seed alone (it is in study.json, and
    # 0 by default) and the public counts, a reader's order, and so the stratum at each position of
    # their queue, could be replayed. What the draws chose is recorded in the key and the database.
    secret = [secrets.randbits(32) for _ in range(4)]
    rng = np.random.default_rng([options.seed, 0x5EED, *secret])

    by_case = {s: {} for s in strata}  # stratum -> case -> [sources]
    for s in strata:
        for src in sources[s]:
            by_case[s].setdefault(src.case_id, []).append(src)
    n_cases_min = min((len(v) for v in by_case.values()), default=0)
    per_model = options.per_model
    if per_model is None:
        # As many as keep cases disjoint: the calibration items and a fixed --real take cases too.
        spare = len(cases) - options.calibration - (options.real or 0)
        sharing = len(strata) - (options.real is not None)
        per_model = max(1, min(MAX_DEFAULT_PER_MODEL, spare // max(1, sharing)))
    n_real = per_model if options.real is None else options.real
    counts = {s: (n_real if s == REAL else per_model) for s in strata}
    # Practice items are shared out evenly; the leftovers go to strata drawn at random (always the
    # first strata, i.e. "real", would make a single practice item a real image for everyone).
    extra = set(rng.permutation(len(strata))[: options.calibration % len(strata)])
    calib = {s: options.calibration // len(strata) + (i in extra) for i, s in enumerate(strata)}
    wanted = {s: counts[s] + calib[s] for s in strata}
    short = {s: len(by_case[s]) for s in strata if wanted[s] > len(by_case[s])}
    if short:
        raise CreateError(
            "not enough usable images: "
            + "; ".join(f"{s} has {n} case(s), {wanted[s]} asked" for s, n in short.items())
            + f" (lower --per-model/--real/--calibration; the smallest stratum has {n_cases_min})"
        )
    chosen, reuse = assignment.select_cases({s: list(by_case[s]) for s in strata}, wanted, rng)
    if reuse > 1:
        log.warning(
            "%d cases cannot give every stratum its own cases: a case appears in up to %d strata, so a reader "
            "may see the real image and a sample of the same case (lower --per-model/--real to avoid it)",
            len(cases),
            reuse,
        )

    picks: list[tuple[_Source, bool]] = []
    for s in strata:
        for j, case in enumerate(chosen[s]):
            options_for_case = by_case[s][case]
            src = options_for_case[int(rng.integers(len(options_for_case)))]
            picks.append((src, j >= counts[s]))  # the last calib[s] cases are calibration items

    # Files are written and items inserted in a random order: otherwise inode numbers, file times
    # and the database's row order would group the items by model for anyone with the folder.
    picks = [picks[i] for i in rng.permutation(len(picks))]
    prompts = _prompts(cases) if options.show_prompt else {}
    final = out.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    store: Store | None = None
    try:
        (tmp / studydir.IMAGES_DIR).mkdir()
        key_rows, item_rows = [], []
        used_ids: set[str] = set()
        bar = tqdm(picks, desc="re-encoding images", unit="img", disable=not progress)
        for src, is_calibration in bar:
            pixels, digest = _read_source(src)
            png = rendering.encode(rendering.normalise(pixels, options.size))
            item = secrets.token_hex(8)
            while item in used_ids:
                item = secrets.token_hex(8)
            used_ids.add(item)
            write_bytes(study.image_path(tmp, item), png)
            top, left, side = rendering.square_box(*pixels.shape)
            key_rows.append(
                {"item": item, "model": src.stratum, "case_id": src.case_id, "sample": src.sample,
                     "source_path": src.path, "source_sha256": digest, "calibration": is_calibration,
                     "source_width": pixels.shape[1], "source_height": pixels.shape[0],
                     "crop_left": left, "crop_top": top, "crop_side": side}
            )  # fmt: skip
            item_rows.append(
                {"id": item, "image_sha256": sha256_bytes(png), "prompt": prompts.get(src.case_id)}
            )
        # In the pick order: the draws below then depend on the random generator only, not on the ids.
        key = pd.DataFrame(key_rows, columns=list(studydir.KEY_COLUMNS))
        key["sample"] = key["sample"].astype("Int64")

        if options.database is None:
            # Created owner-only before SQLite opens it: its -wal and -shm files take its mode.
            os.close(os.open(tmp / studydir.DB_FILE, os.O_CREAT | os.O_WRONLY, 0o600))
        url = options.database or sqlite_url(tmp / studydir.DB_FILE)
        store = Store(url)
        store.create_schema()
        store.add_items(item_rows)
        tokens = {}
        available_after, washout_days = _parse_washout(options.washout) if options.washout else (None, None)
        main = key[~key.calibration]
        main_strata = {s: list(g.item) for s, g in main.groupby("model", sort=True)}
        calib_strata = {s: list(g.item) for s, g in key[key.calibration].groupby("model", sort=True)}
        for name in options.readers:
            token = new_token()
            reader_id = store.add_reader(name, token)
            tokens[name] = token
            r_rng = np.random.default_rng(
                [options.seed, int(hashlib.sha256(name.encode()).hexdigest()[:15], 16), *secret]
            )
            # Every reader gets the practice items in an order of their own.
            calibration_order = assignment.balanced_order(calib_strata, r_rng)
            order = assignment.balanced_order(main_strata, r_rng)
            rows = [{"item_id": i, "read_number": 1, "calibration": True} for i in calibration_order]
            rows += [{"item_id": i, "read_number": 1, "calibration": False} for i in order]
            if options.reread_percent > 0:
                picked = assignment.pick_rereads(main_strata, options.reread_percent / 100.0, r_rng)
                groups = {s: [i for i in main_strata[s] if i in set(picked)] for s in main_strata}
                rows += [
                    {"item_id": i, "read_number": 2, "calibration": False, "available_after": available_after,
                         "washout_days": washout_days}
                    for i in assignment.balanced_order(groups, r_rng)
                ]  # fmt: skip
            store.add_assignments(
                [
                    {
                        "reader_id": reader_id,
                        "position": pos,
                        "available_after": None,
                        "washout_days": None,
                        **row,
                    }
                    for pos, row in enumerate(rows)
                ]
            )
        store.close()
        store = None
        key = key.sort_values("item", ignore_index=True)  # stored in id order: nothing to read from it
        key.to_parquet(tmp / studydir.KEY, index=False)
        os.chmod(tmp / studydir.KEY, 0o600)  # the unblinding key: owner-only
        info = study.StudyInfo(
            title=options.title,
            criteria=options.criteria,
            turing=options.turing,
            comment=options.comment,
            show_prompt=options.show_prompt,
            image_size=options.size,
            database=options.database or studydir.DB_FILE,
            created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            seed=options.seed,
            readers=options.readers,
            n_items=int((~key.calibration).sum()),
            n_calibration=int(key.calibration.sum()),
            case_reuse=reuse,
            landmarks=options.landmarks,
            # The annotations and the study must agree on sides: by default the run's convention.
            patient_left=options.patient_left or run_settings(run).patient_left,
        )
        measured = blinding.measure(tmp, info, key, progress=progress)
        bad = blinding.failures(measured)
        if bad:
            raise CreateError(
                "the study's images would tell models apart by their byte size: " + "; ".join(bad[:5])
            )
        blinding.save(tmp, measured)
        _same_times(tmp, sorted(key.item))  # last: measuring read the files
        study.save(tmp, info)
        if final.exists():
            final.rmdir()  # empty, checked above
        tmp.rename(final)
    except BaseException:
        if store is not None:
            store.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if options.database:
            log.error(
                "the study tables written to %s so far are incomplete: drop them before retrying",
                options.database,
            )
        raise
    return CreatedStudy(final, tokens, len(key), reuse)


def _same_times(study_dir: Path, items: list[str]) -> None:
    """Give every image file one access and modification time (the minute the study was made), so
    that file times cannot order them; set in item-id order, which is random, as the change times
    this leaves behind are."""
    stamp = int(datetime.now(UTC).replace(second=0, microsecond=0).timestamp()) * 1_000_000_000
    for item in items:
        os.utime(study.image_path(study_dir, item), ns=(stamp, stamp))


def _prompts(cases: pd.DataFrame) -> dict[str, str]:
    """What a reader is told about each case: its prompt, else its labels. Taken from the case, not
    from the sample, so a model's prompt variant (a sweep) cannot tell its images apart."""
    out = {}
    for col in ("prompt", "labels"):
        if col in cases.columns:
            for case, value in zip(cases.case_id, cases[col]):
                if str(case) not in out and isinstance(value, str) and value.strip():
                    out[str(case)] = value.strip()
    return out
