"""``xray-audit dashboard``: review a run in the browser (Streamlit)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
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


def handle_dashboard(args: argparse.Namespace, progress: bool) -> int:
    from dashboards.serve import serve as serve_dashboard

    if args.run_dir == Path("xray-audit-demo/run") and not args.run_dir.exists():
        raise FileNotFoundError(
            "no RUN_DIR given and no demo run at ./xray-audit-demo/run: run `xray-audit demo` "
            "first, or give the run directory to review"
        )
    return serve_dashboard(args.run_dir, args.reader_study, args.port, args.address, args.compare)
