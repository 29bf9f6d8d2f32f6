"""The ``xray-audit`` command line: the parser, assembled from one module per command group, and
:func:`main`, which runs the chosen command through :data:`COMMANDS` and turns the errors a user can
fix into a one-line message and an exit code.

This package is where running a study meets the reports, the reader study and the dashboards:
nothing else in ``audit`` imports them. Command modules import their work when a command runs, so
``xray-audit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable

from audit import __version__
from audit.cli import cases, dashboard, init, reader_study, report, run, weights
from audit.cli.exit_codes import EXIT_PROBLEMS, EXIT_USAGE
from audit.norberg import cli as norberg_cli
from audit.norberg import landmarks_cli

log = logging.getLogger("audit")

Handler = Callable[[argparse.Namespace, bool], int]  # (parsed arguments, progress bars) -> exit code

COMMANDS: dict[str, Handler] = {
    "run": run.handle_run,
    "merge": run.handle_merge,
    "demo": run.handle_demo,
    "weights": weights.handle_weights,
    "reader-study": reader_study.handle_reader_study,
    "norberg": norberg_cli.run,
    "landmarks": landmarks_cli.run,
    "report": report.handle_report,
    "dashboard": dashboard.handle_dashboard,
    "cases": cases.handle_cases,
    "init": init.handle_init,
}

# In the order `xray-audit --help` lists the commands.
_PARSERS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    init.add_parser,
    run.add_parsers,
    weights.add_parser,
    reader_study.add_parser,
    norberg_cli.add_parser,
    landmarks_cli.add_parser,
    report.add_parser,
    dashboard.add_parser,
    cases.add_parser,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xray-audit",
        description="Evaluation and clinical-realism auditing for generative X-ray models.",
    )
    p.add_argument("--version", action="version", version=f"xray-audit {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _PARSERS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    progress = not args.quiet
    try:
        return COMMANDS[args.command](args, progress)
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to resume where it stopped")
        return 130
    except Exception as exc:
        from audit.cases import ManifestError
        from audit.config import ConfigError
        from audit.run_plan import RunError
        from audit.weights import WeightsError
        from reader_study.errors import ERRORS as READER_STUDY_ERRORS

        # A refused pickle or a weights file that changed under a run is the user's to fix, not a bug;
        # looked up only where already imported, so an error path never imports torch.
        loaded = [
            getattr(sys.modules[m], n)
            for m, n in (
                ("audit.evaluators.safe_pickle", "UnsafePickleError"),
                ("audit.evaluators.base", "WeightsHashError"),
                ("audit.demo.chest_ct", "DemoDataMissing"),
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
