"""``xray-audit cases``: check a case manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from audit.cli.exit_codes import EXIT_OK, EXIT_PROBLEMS


def add_parser(sub: argparse._SubParsersAction) -> None:
    cases = sub.add_parser("cases", help="work with case manifests")
    cases_sub = cases.add_subparsers(dest="cases_command", required=True, metavar="SUBCOMMAND")
    validate = cases_sub.add_parser("validate", help="report every problem in a case manifest in one pass")
    validate.add_argument("manifest", type=Path, metavar="FILE")
    validate.add_argument(
        "--headers-only",
        action="store_true",
        help="check image sizes from headers without decoding pixels (faster)",
    )


def handle_cases(args: argparse.Namespace, progress: bool) -> int:
    return _validate(args.manifest, not args.headers_only, progress)


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
