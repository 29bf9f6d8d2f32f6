"""The ``xray-audit`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from audit import __version__

log = logging.getLogger("audit")

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xray-audit",
        description="Evaluation and clinical-realism auditing for generative X-ray models.",
    )
    p.add_argument("--version", action="version", version=f"xray-audit {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the study described by a TOML config")
    run.add_argument("config", type=Path, metavar="STUDY.toml")
    run.add_argument(
        "--keep-going",
        action="store_true",
        help="record missing or bad samples in failures.csv instead of stopping",
    )
    run.add_argument("--no-report", action="store_true", help="skip writing report.html")
    run.add_argument(
        "--chunk-size",
        type=int,
        default=64,
        metavar="N",
        help="cases per resumable unit of work (default 64); smaller loses less work when interrupted",
    )

    run.add_argument(
        "--shard",
        metavar="I/N",
        help="do only shard I of N (0-based; chunk k goes to shard k %% N), then stop before aggregating; "
        "finish with `xray-audit merge RUN_DIR` once all N are done. `auto`: from RANK/WORLD_SIZE "
        "(accelerate launch, torchrun)",
    )
    run.add_argument(
        "--device",
        type=_device,
        metavar="DEVICE",
        help="where the evaluator networks run: auto, cpu, cuda or cuda:N (overrides [evaluators].device; "
        "recorded in run.json)",
    )

    merge = sub.add_parser("merge", help="finish a run whose work was split with --shard i/n")
    merge.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    merge.add_argument(
        "--out", type=Path, metavar="DIR", help="merged run directory (default: the first RUN_DIR)"
    )
    merge.add_argument("--no-report", action="store_true", help="skip writing report.html")
    merge.add_argument(
        "--chunk-size",
        type=int,
        metavar="N",
        help="the --chunk-size the shards ran with (default: read from their shard records, else 64)",
    )

    demo = sub.add_parser("demo", help="build the embedded demo cohort and audit it")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("xray-audit-demo"),
        metavar="DIR",
        help="where the study config and run go (default: ./xray-audit-demo)",
    )

    weights = sub.add_parser("weights", help="manage pretrained evaluator weights (verified by sha256)")
    wsub = weights.add_subparsers(dest="weights_command", required=True, metavar="SUBCOMMAND")
    wsub.add_parser("list", help="every known weights entry with its local state and pin")
    fetch = wsub.add_parser("fetch", help="download and verify weights (needs internet)")
    fetch.add_argument("name", metavar="NAME", help="a name from `weights list`, or hf:ORG/NAME@REVISION")
    fetch_pin = fetch.add_mutually_exclusive_group()
    fetch_pin.add_argument(
        "--sha256", metavar="HEX", help="expected hash, for entries this release does not pin"
    )
    fetch_pin.add_argument(
        "--trust",
        action="store_true",
        help="pin whatever this first download delivers (recorded with date and source, and marked "
        "'pinned by you on first download' wherever its numbers appear)",
    )
    verify = wsub.add_parser(
        "verify", help="check local files against their pins (default: what the default evaluators need)"
    )
    verify.add_argument("names", nargs="*", metavar="NAME")
    imp = wsub.add_parser(
        "import",
        help="copy weights you already have, verifying each (default: search the torchxrayvision, "
        "torch hub and Hugging Face caches)",
    )
    imp.add_argument("source", type=Path, nargs="?", metavar="DIR")
    imp.add_argument(
        "--sha256",
        action="append",
        default=[],
        metavar="NAME=HEX",
        help="expected hash for an entry this release does not pin (repeatable)",
    )
    imp.add_argument("--trust", action="store_true", help="pin the unpinned files found (with date and path)")
    imp.add_argument(
        "--name",
        metavar="NAME",
        help="the entry DIR holds, e.g. hf:ORG/NAME@REVISION for a `huggingface-cli download --local-dir` folder",
    )
    path = wsub.add_parser("path", help="print the verified local path of NAME")
    path.add_argument("name", metavar="NAME")

    _reader_study_parser(sub)

    from audit.norberg import cli as norberg_cli
    from audit.norberg import landmarks_cli

    norberg_cli.add_parser(sub)
    landmarks_cli.add_parser(sub)

    report = sub.add_parser(
        "report",
        help="comparison tables (html, md, tex, csv) and paired tests from a finished run",
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    report.add_argument(
        "--reader-study", type=Path, metavar="STUDY_DIR", help="add reader scores (from its ratings export)"
    )
    report.add_argument(
        "--format",
        default="html,md,tex,csv",
        metavar="LIST",
        help="any of html, md, tex, csv (default: all)",
    )
    report.add_argument("--group-by", metavar="COLUMN", help="repeat the table per value of this case column")
    report.add_argument("--out", type=Path, metavar="DIR", help="where the files go (default: RUN_DIR)")

    dash = sub.add_parser("dashboard", help="review a run in the browser (Streamlit)")
    dash.add_argument(
        "run_dir",
        type=Path,
        nargs="?",
        default=Path("xray-audit-demo/run"),
        metavar="RUN_DIR",
        help="run directory (default: the demo run, ./xray-audit-demo/run)",
    )
    dash.add_argument("--reader-study", type=Path, metavar="STUDY_DIR", help="show its exported ratings")
    dash.add_argument("--compare", type=Path, metavar="RUN_DIR", help="a second run for the comparison page")
    dash.add_argument("--port", type=int, default=8501, metavar="P")
    dash.add_argument(
        "--address",
        default="localhost",
        metavar="HOST",
        help="interface to listen on (default: localhost only; 0.0.0.0 for the network)",
    )

    cases = sub.add_parser("cases", help="work with case manifests")
    cases_sub = cases.add_subparsers(dest="cases_command", required=True, metavar="SUBCOMMAND")
    validate = cases_sub.add_parser("validate", help="report every problem in a case manifest in one pass")
    validate.add_argument("manifest", type=Path, metavar="FILE")
    validate.add_argument(
        "--headers-only",
        action="store_true",
        help="check image sizes from headers without decoding pixels (faster)",
    )
    return p


def _reader_study_parser(sub: argparse._SubParsersAction) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    progress = not args.quiet
    try:
        if args.command == "run":
            shard = _parse_shard(args.shard) if args.shard else None
            return _run(
                args.config,
                args.keep_going,
                not args.no_report,
                progress,
                args.chunk_size,
                shard,
                args.device,
            )
        if args.command == "merge":
            return _merge(args.run_dirs, args.out, not args.no_report, progress, args.chunk_size)
        if args.command == "demo":
            return _demo(args.out, progress)
        if args.command == "cases":
            return _validate(args.manifest, not args.headers_only, progress)
        if args.command == "weights":
            return _weights(args, progress)
        if args.command == "reader-study":
            return _reader_study(args, progress)
        if args.command == "report":
            return _report(args)
        if args.command == "norberg":
            from audit.norberg import cli as norberg_cli

            return norberg_cli.run(args, progress)
        if args.command == "landmarks":
            from audit.norberg import landmarks_cli

            return landmarks_cli.run(args, progress)
        if args.command == "dashboard":
            from dashboards.serve import serve as serve_dashboard

            if args.run_dir == Path("xray-audit-demo/run") and not args.run_dir.exists():
                raise FileNotFoundError(
                    "no RUN_DIR given and no demo run at ./xray-audit-demo/run: run `xray-audit demo` "
                    "first, or give the run directory to review"
                )
            return serve_dashboard(args.run_dir, args.reader_study, args.port, args.address, args.compare)
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to resume where it stopped")
        return 130
    except Exception as exc:
        from audit.cases import ManifestError
        from audit.config import ConfigError
        from audit.runner import RunError
        from audit.weights import WeightsError
        from reader_study.errors import ERRORS as READER_STUDY_ERRORS

        # A refused pickle or a weights file that changed under a run is the user's to fix, not a bug;
        # looked up only where already imported, so an error path never imports torch.
        loaded = [
            getattr(sys.modules[m], n)
            for m, n in (
                ("audit.evaluators.safe_pickle", "UnsafePickleError"),
                ("audit.evaluators.base", "WeightsHashError"),
                ("audit.demo.cohort", "DemoDataMissing"),
            )
            if m in sys.modules
        ]
        if isinstance(
            exc,
            (
                ConfigError,
                ManifestError,
                RunError,
                WeightsError,
                FileNotFoundError,
                *READER_STUDY_ERRORS,
                *loaded,
            ),
        ):
            log.error("error: %s", exc)
            return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_PROBLEMS
        raise
    return EXIT_USAGE


def _parse_shard(text: str) -> tuple[int, int]:
    from audit.config import ConfigError

    if text == "auto":
        # Set by `accelerate launch` and torchrun: one process per GPU, each taking its own shard.
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            raise ConfigError(
                "--shard auto takes the shard from RANK and WORLD_SIZE, which `accelerate launch` and "
                "torchrun set; outside them give --shard I/N"
            )
        return int(rank), int(world)
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise ConfigError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(index), int(count)


def _device(text: str) -> str:
    """``--device``: what ``[evaluators].device`` accepts."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f'must be "auto", "cpu", "cuda" or "cuda:N", got {text!r}')
    return text


def _run(
    config_path: Path,
    keep_going: bool,
    report: bool,
    progress: bool,
    chunk_size: int = 64,
    shard: tuple[int, int] | None = None,
    device: str | None = None,
) -> int:
    from audit.config import ConfigError, load_config
    from audit.runner import RunOptions, run_study

    config = load_config(config_path)
    if device is not None:
        # run.json and config.toml then record the device the evaluators actually ran on.
        config = dataclasses.replace(config, evaluators=dataclasses.replace(config.evaluators, device=device))
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {chunk_size}")
    result = run_study(
        config,
        RunOptions(
            keep_going=keep_going, progress=progress, report=report, chunk_size=chunk_size, shard=shard
        ),
    )
    if shard is not None:
        log.info(
            "shard %d/%d done (%d samples); when all %d shards are done: xray-audit merge %s%s",
            *shard,
            result.n_samples,
            shard[1],
            result.path.resolve(),
            "" if chunk_size == 64 else f" --chunk-size {chunk_size}",
        )
        return EXIT_OK
    return _finished(result)


def _merge(
    run_dirs: list[Path], out: Path | None, report: bool, progress: bool, chunk_size: int | None
) -> int:
    import json

    from audit.config import ConfigError
    from audit.merge import merge_runs
    from audit.runner import RunOptions

    if chunk_size is None:
        sizes = {
            json.loads(p.read_text())["chunk_size"]
            for d in run_dirs
            for p in (d / "parts" / "shards").glob("shard-*.json")
        }
        if len(sizes) > 1:
            raise ConfigError(
                f"the shards ran with different --chunk-size values {sorted(sizes)}; rerun them alike"
            )
        chunk_size = sizes.pop() if sizes else 64
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {chunk_size}")
    result = merge_runs(run_dirs, RunOptions(progress=progress, report=report, chunk_size=chunk_size), out)
    return _finished(result)


def _finished(result) -> int:  # type: ignore[no-untyped-def]
    log.info("run directory: %s", result.path.resolve())
    if result.n_failures:
        log.warning(
            "%d failure(s) recorded in %s", result.n_failures, (result.path / "failures.csv").resolve()
        )
    if result.report:
        log.info("report: %s", result.report.resolve())
    return EXIT_OK


def _demo(out: Path, progress: bool) -> int:
    from audit.demo.cohort import build_cohort
    from audit.demo.study import write_demo_study

    manifest = build_cohort(progress=progress)
    log.info("demo cohort: %s", manifest)
    config_path = write_demo_study(manifest, out)
    log.info("demo study config: %s", config_path.resolve())
    return _run(config_path, keep_going=False, report=True, progress=progress)


def _weights(args: argparse.Namespace, progress: bool) -> int:
    from audit import weights

    cmd = args.weights_command
    if cmd == "list":
        print(f"weights dir: {weights.weights_dir()}")
        for st in weights.statuses():
            e = weights.entry(st.name)
            default = " (default)" if e.default else ""
            print(f"  {st.name + default:<36} {st.state:<9} {_pin_label(st):<43} {e.description}")
        return EXIT_OK
    if cmd == "fetch":
        path = weights.fetch(args.name, sha256=args.sha256, trust=args.trust, progress=progress)
        st = weights.status(args.name)
        for f in weights.entry(args.name).files:
            file = path / f.filename if path.is_dir() else path
            print(f"{file}  {file.stat().st_size:,} bytes  sha256 {_sha_of(weights, args.name, f.filename)}")
        print(f"{args.name}: {st.state}; {st.pin_note}")
        return EXIT_OK if st.state == "ok" else EXIT_PROBLEMS
    if cmd == "verify":
        names = args.names or weights.default_entries()
        fixes = []
        for name in names:
            st = weights.status(name)
            state = {"corrupt": "mismatch"}.get(st.state, st.state)
            print(
                f"{state:<9} {name:<34} "
                + (st.detail or str(st.path))
                + (f"  [{_pin_label(st)}]" if st.pin else "")
            )
            if st.state != "ok":
                fixes.append(_fix_command(weights, name, st))
        for fix in fixes:
            print(fix, file=sys.stderr)
        return EXIT_PROBLEMS if fixes else EXIT_OK
    if cmd == "import":
        pins = {}
        for item in args.sha256:
            name, sep, hexdigest = item.partition("=")
            if not sep:
                raise weights.WeightsError(f"--sha256 takes NAME=HEX, got {item!r}")
            pins[name] = hexdigest
        report = weights.import_dir(args.source, pins, trust=args.trust, name=args.name)
        if args.source is None:
            print("searched: " + ", ".join(str(d) for d in report.searched))
        for name, dest in report.imported:
            print(f"imported {name}: {dest}  [{_pin_label(weights.status(name))}]")
        for reason in report.skipped:
            print(f"skipped {reason}")
        for reason in report.mismatched:
            print(f"mismatch {reason}", file=sys.stderr)
        if not (report.imported or report.skipped or report.mismatched):
            print("found no known weights files")
        return (
            EXIT_PROBLEMS
            if report.mismatched or (args.source is not None and not report.imported)
            else EXIT_OK
        )
    print(weights.weights_path(args.name))
    return EXIT_OK


def _pin_label(st) -> str:
    return {
        "release": "pinned by this release",
        "release-one-source": "pinned by this release (one public source)",
        "config": "hash from the study config",
        "user-sha256": "pinned by you (--sha256)",
        "user-trust": "pinned by you on first download",
    }.get(st.pin, "not pinned")


def _sha_of(weights, name: str, filename: str) -> str:
    pin = weights.pins_of(weights.entry(name))[filename]
    return pin.sha256 if pin else "?"


def _fix_command(weights, name: str, st) -> str:
    e = weights.entry(name)
    if st.state == "unpinned":
        named = f" --name {name}" if e.hub else ""
        return f"{name}: pin it with `xray-audit weights import {weights.entry_dir(e)}{named} --trust`"
    pinned = all(p is not None for p in weights.pins_of(e).values())
    trust = ("" if pinned else " --trust") if not e.hub or pinned else f" --name {name} --trust"
    prefix = f"{name}: delete {st.path} and run" if st.state in ("mismatch", "corrupt") else f"{name}: run"
    return (
        f"{prefix} `xray-audit weights fetch {name}{trust}` (needs internet), or bring the files from another "
        f"machine and run `xray-audit weights import DIR{trust}`"
    )


def _report(args: argparse.Namespace) -> int:
    from audit import rundir
    from audit.config import ConfigError

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = sorted(set(formats) - {"html", "md", "tex", "csv"})
    if unknown or not formats:
        raise ConfigError(f"--format takes html, md, tex and/or csv, got {args.format!r}")
    run_dir = rundir.require_run_dir(args.run_dir)
    out = args.out or run_dir
    from reports.comparison import run_paired_tests
    from reports.run import load_run

    # Read once: every statistic below uses the run's settings (rundir.RunSettings: [metrics].confidence,
    # [metrics].bootstrap_resamples, [study].seed).
    run = load_run(run_dir)
    reader_scores = ratings = stats = None
    if args.reader_study is not None:
        from reader_study.admin import export_frame
        from reports.reader_stats import run_reader_statistics

        ratings = export_frame(args.reader_study)
        if ratings.empty:
            raise ConfigError(f"{args.reader_study}: no ratings yet (see `xray-audit reader-study status`)")
        stats = run_reader_statistics(ratings, run.settings)
        reader_scores = stats.scores
    written = []
    tables = [f for f in formats if f != "html"]
    # The model-vs-model tests, computed once for paired_tests.csv and the page (metrics with non-finite
    # values, e.g. an identical image's +inf PSNR, left out and named in both and in comparison.md).
    paired = run_paired_tests(run) if "csv" in tables or "html" in formats else None
    if tables:
        from reports.comparison import write_exports

        written += write_exports(run, out, tables, args.group_by, reader_scores, paired=paired)
    if "html" in formats:
        from reports.html import write_html_report

        written.append(
            write_html_report(
                run,
                Path(out) / rundir.REPORT_HTML,
                reader_ratings=ratings,
                reader_stats=stats,
                reader_source=str(args.reader_study or ""),
                paired=paired,
            )
        )
    for path in written:
        print(path)
    return EXIT_OK


def _reader_study(args: argparse.Namespace, progress: bool) -> int:
    cmd = args.reader_study_command
    if cmd == "create":
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
    if cmd == "serve":
        from reader_study.serve import serve

        return serve(args.study_dir, args.port, args.address, progress=progress)
    if cmd == "status":
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
    if cmd == "export":
        from reader_study.admin import export

        for path in export(args.study_dir, args.out):
            print(path)
        return EXIT_OK
    from reader_study.admin import reissue

    token = reissue(args.study_dir, args.reader)
    print(f"New token for {args.reader} (shown only now; the old one no longer works):\n  {token}")
    return EXIT_OK


def _validate(manifest: Path, check_pixels: bool, progress: bool) -> int:
    from audit.cases import validate

    frame, problems = validate(manifest, check_pixels=check_pixels, progress=progress)
    if problems:
        print(f"{manifest}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return EXIT_PROBLEMS
    print(f"{manifest}: OK, {len(frame)} case(s)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
