"""``xray-audit report``: comparison tables, paired tests and report.html from a finished run."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.cli.exit_codes import EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
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


def handle_report(args: argparse.Namespace, progress: bool) -> int:
    from audit import rundir
    from audit.config import ConfigError

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = sorted(set(formats) - {"html", "md", "tex", "csv"})
    if unknown or not formats:
        raise ConfigError(f"--format takes html, md, tex and/or csv, got {args.format!r}")
    run_dir = rundir.require_run_dir(args.run_dir)
    out = args.out or run_dir
    from reports.run import load_run
    from reports.statistics import run_paired_tests

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
