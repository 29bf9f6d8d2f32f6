"""``xray-audit reader-study``: create, serve, follow and export a blinded radiologist reader study."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from audit.cli.exit_codes import EXIT_OK

log = logging.getLogger("audit")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from audit.norberg.cli import STANDARD_DISPLAY, add_patient_left

    rs = sub.add_parser(
        "reader-study", help="blinded radiologist reader study: create, serve, status, export"
    )
    rsub = rs.add_subparsers(dest="reader_study_command", required=True, metavar="SUBCOMMAND")
    create = rsub.add_parser(
        "create",
        help="turn a run into a blinded reader study (prints each reader's token once)",
        description="Select items stratified by model with real images mixed in, re-encode every image "
        "alike, write the key, build each reader's balanced order and issue one token per reader.",
    )
    create.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    create.add_argument("--out", type=Path, required=True, metavar="STUDY_DIR")
    create.add_argument("--readers", required=True, metavar="A,B", help="reader names, comma-separated")
    create.add_argument("--models", metavar="A,B", help="models to include (default: every generated model)")
    create.add_argument(
        "--per-model",
        type=int,
        metavar="N",
        help="items per model (default: as many as keep cases disjoint, <= 50)",
    )
    create.add_argument("--real", type=int, metavar="N", help="real reference images (default: --per-model)")
    create.add_argument(
        "--criteria",
        metavar="A,B",
        help="built-in 1-5 criteria: anatomy, pathology, quality (default: all three)",
    )
    create.add_argument(
        "--criteria-file", type=Path, metavar="FILE.toml", help="extra criteria with their own anchors"
    )
    create.add_argument(
        "--turing", action="store_true", help="also ask 'real or synthetic?' with a 1-5 confidence"
    )
    create.add_argument("--comment", action="store_true", help="add a free-text comment box")
    create.add_argument(
        "--show-prompt", action="store_true", help="show each case's prompt or intended finding"
    )
    create.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="mixed into the selection and orders with 128 secret bits, so the seed cannot replay them (0)",
    )
    create.add_argument("--size", type=int, default=512, metavar="PX", help="common image size (default 512)")
    create.add_argument(
        "--calibration", type=int, default=0, metavar="N", help="practice items shown first to every reader"
    )
    create.add_argument(
        "--reread", type=float, default=0.0, metavar="PCT", help="percent of items shown again (intra-reader)"
    )
    create.add_argument(
        "--washout",
        metavar="DATE|Nd",
        help="re-reads open on this UTC date (2026-12-31) or N days after the reader's first read (14d)",
    )
    create.add_argument(
        "--database",
        metavar="URL",
        help="SQLAlchemy URL, e.g. postgresql://host/db (default: ratings.sqlite in STUDY_DIR)",
    )
    create.add_argument("--title", default="Reader study", help="page title readers see")
    create.add_argument(
        "--landmarks",
        choices=["norberg"],
        help="readers also click landmarks on each image; norberg: femoral-head outline and rim per hip",
    )
    add_patient_left(
        create,
        default_text=f"the run config's [norberg] patient_left, else {STANDARD_DISPLAY}; only with --landmarks norberg",
    )

    serve = rsub.add_parser("serve", help="start the rating app (Streamlit)")
    serve.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    serve.add_argument("--port", type=int, default=8501, metavar="P")
    serve.add_argument(
        "--address",
        default="localhost",
        metavar="HOST",
        help="interface to listen on (default: localhost only; 0.0.0.0 for the network, behind HTTPS)",
    )
    st_ = rsub.add_parser("status", help="progress per reader, time per item, flagged items")
    st_.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    export = rsub.add_parser("export", help="the unblinded long table of every answer (CSV and Parquet)")
    export.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    export.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help=".csv or .parquet (default: STUDY_DIR/ratings.csv and .parquet)",
    )
    reissue = rsub.add_parser("reissue", help="issue a new token for a reader (the old one stops working)")
    reissue.add_argument("study_dir", type=Path, metavar="STUDY_DIR")
    reissue.add_argument("--reader", required=True, metavar="NAME")


def handle_reader_study(args: argparse.Namespace, progress: bool) -> int:
    return _SUBCOMMANDS[args.reader_study_command](args, progress)


def _create(args: argparse.Namespace, progress: bool) -> int:
    from reader_study import criteria
    from reader_study.create import CreateOptions, create_study

    def names(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip())

    options = CreateOptions(
        readers=names(args.readers) or (),
        criteria=criteria.resolve(args.criteria, args.criteria_file),
        models=names(args.models),
        per_model=args.per_model,
        real=args.real,
        turing=args.turing,
        comment=args.comment,
        show_prompt=args.show_prompt,
        seed=args.seed,
        size=args.size,
        calibration=args.calibration,
        reread_percent=args.reread,
        washout=args.washout,
        database=args.database,
        title=args.title,
        landmarks=args.landmarks,
        patient_left=args.patient_left,
    )
    created = create_study(args.run_dir, args.out, options, progress=progress)
    log.info(
        "reader study: %s (%d items, largest case reuse %d)",
        created.path,
        created.n_items,
        created.case_reuse,
    )
    print("Reader tokens (shown only now; the study stores their hashes):")
    for reader, token in created.tokens.items():
        print(f"  {reader}: {token}")
    print(f"Serve with: xray-audit reader-study serve {created.path}")
    return EXIT_OK


def _serve(args: argparse.Namespace, progress: bool) -> int:
    from reader_study.serve import serve

    return serve(args.study_dir, args.port, args.address, progress=progress)


def _status(args: argparse.Namespace, progress: bool) -> int:
    from reader_study.admin import status
    from reader_study.text import printable  # readers typed the flag reasons: no escape sequences

    readers, flagged = status(args.study_dir)
    print(
        f"{'reader':<20} {'done':>6} {'total':>6} {'waiting':>8} {'flagged':>8} {'median s/item':>14}  last activity"
    )
    for r in readers:
        med = f"{r.median_seconds:.1f}" if r.median_seconds is not None else "-"
        print(
            f"{printable(r.reader):<20} {r.done:>6} {r.total:>6} {r.rereads_waiting:>8} {r.flagged:>8} "
            f"{med:>14}  {r.last_activity or '-'}"
        )
    if len(flagged):
        print(f"\nflagged items ({len(flagged)}):")
        for f in flagged.itertuples():
            print(
                f"  {printable(f.item)} (read {f.read_number}) by {printable(f.reader)} at {f.at}: "
                f"{printable(f.reason)}"
            )
    return EXIT_OK


def _export(args: argparse.Namespace, progress: bool) -> int:
    from reader_study.admin import export

    for path in export(args.study_dir, args.out):
        print(path)
    return EXIT_OK


def _reissue(args: argparse.Namespace, progress: bool) -> int:
    from reader_study.admin import reissue

    token = reissue(args.study_dir, args.reader)
    print(f"New token for {args.reader} (shown only now; the old one no longer works):\n  {token}")
    return EXIT_OK


_SUBCOMMANDS: dict[str, Callable[[argparse.Namespace, bool], int]] = {
    "create": _create,
    "serve": _serve,
    "status": _status,
    "export": _export,
    "reissue": _reissue,
}
