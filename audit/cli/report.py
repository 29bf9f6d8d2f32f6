"""``xray-audit report``: comparison tables, paired tests and report.html from a finished run."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    report.add_argument(
        "--layout",
        metavar="NAME",
        help="also write a paper's table layout, table-NAME.md/.tex/.csv (a recipe: `xray-audit init --list`)",
    )


def handle_report(args: argparse.Namespace, progress: bool) -> int:
    from audit import rundir
    from audit.config import ConfigError

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = sorted(set(formats) - {"html", "md", "tex", "csv"})
    if unknown or not formats:
        raise ConfigError(f"--format takes html, md, tex and/or csv, got {args.format!r}")
    run_dir = rundir.require_run_dir(args.run_dir)
    out = args.out or run_dir
    recipe = None
    if args.layout is not None:
        from audit.recipes.registry import RECIPES

        if args.layout not in RECIPES:
            raise ConfigError(f"--layout {args.layout!r}: unknown; the recipes are {', '.join(RECIPES)}")
        recipe = RECIPES[args.layout]
    from reports.run import load_run
    from reports.statistics import run_paired_tests

    # Read once: every statistic below uses the run's settings (rundir.RunSettings: [metrics].confidence,
    # [metrics].bootstrap_resamples, [study].seed).
    run = load_run(run_dir)
    reader_scores = ratings = stats = None
    source = args.reader_study or _configured_ratings(run.config)
    simulated = False
    if source is not None:
        from reader_study.admin import read_ratings
        from reader_study.simulate import is_simulated
        from reports.reader_stats import run_reader_statistics

        ratings = read_ratings(source)
        if ratings.empty and args.reader_study is not None:
            raise ConfigError(f"{source}: no ratings yet (see `xray-audit reader-study status`)")
        if ratings.empty:  # the config's source, before the readers started: the rest still gets written
            logging.getLogger("audit").warning(
                "[reader_study].ratings %s has no ratings yet: the tables have no reader scores", source
            )
            ratings = None
        else:
            simulated = is_simulated(ratings)
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
    if recipe is not None:
        from reports.layouts import write_layout

        layout_formats = [f for f in formats if f in ("md", "tex", "csv")] or ["md", "tex", "csv"]
        written += write_layout(recipe, run, Path(out), layout_formats, reader_scores, simulated)
    if "html" in formats:
        from reports.html import write_html_report

        written.append(
            write_html_report(
                run,
                Path(out) / rundir.REPORT_HTML,
                reader_ratings=ratings,
                reader_stats=stats,
                reader_source=str(source or "") + (" (SIMULATED readers)" if simulated else ""),
                paired=paired,
            )
        )
    for path in written:
        print(path)
    return EXIT_OK


def _configured_ratings(config: Mapping[str, Any]) -> Path | None:
    """The study config's [reader_study].ratings (as recorded in the run's config.toml), if it exists."""
    table = config.get("reader_study")
    if not isinstance(table, Mapping) or not table.get("ratings"):
        return None
    path = Path(str(table["ratings"]))
    if not path.exists():
        logging.getLogger("audit").warning(
            "[reader_study].ratings %s does not exist (yet): the tables have no reader scores", path
        )
        return None
    return path
