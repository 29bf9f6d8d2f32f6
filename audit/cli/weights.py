"""``xray-audit weights``: list, fetch, verify and import the evaluators' pretrained weights."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from audit.cli.exit_codes import EXIT_OK, EXIT_PROBLEMS


def add_parser(sub: argparse._SubParsersAction) -> None:
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


def handle_weights(args: argparse.Namespace, progress: bool) -> int:
    return _SUBCOMMANDS[args.weights_command](args, progress)


def _list(args: argparse.Namespace, progress: bool) -> int:
    from audit import weights

    print(f"weights dir: {weights.weights_dir()}")
    for st in weights.statuses():
        e = weights.entry(st.name)
        default = " (default)" if e.default else ""
        print(f"  {st.name + default:<36} {st.state:<9} {_pin_label(st):<43} {e.description}")
    return EXIT_OK


def _fetch(args: argparse.Namespace, progress: bool) -> int:
    from audit import weights

    path = weights.fetch(args.name, sha256=args.sha256, trust=args.trust, progress=progress)
    st = weights.status(args.name)
    for f in weights.entry(args.name).files:
        file = path / f.filename if path.is_dir() else path
        print(f"{file}  {file.stat().st_size:,} bytes  sha256 {_sha_of(weights, args.name, f.filename)}")
    print(f"{args.name}: {st.state}; {st.pin_note}")
    return EXIT_OK if st.state == "ok" else EXIT_PROBLEMS


def _verify(args: argparse.Namespace, progress: bool) -> int:
    from audit import weights

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


def _import(args: argparse.Namespace, progress: bool) -> int:
    from audit import weights

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
        EXIT_PROBLEMS if report.mismatched or (args.source is not None and not report.imported) else EXIT_OK
    )


def _path(args: argparse.Namespace, progress: bool) -> int:
    from audit import weights

    print(weights.weights_path(args.name))
    return EXIT_OK


_SUBCOMMANDS: dict[str, Callable[[argparse.Namespace, bool], int]] = {
    "list": _list,
    "fetch": _fetch,
    "verify": _verify,
    "import": _import,
    "path": _path,
}


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
