"""Regenerate the golden outputs of the demo run in tests/golden/demo/ (see tests/test_golden_outputs.py).

Run this only when a change of numbers is intended, and explain it in the issue note (which files and
columns changed, and why); a refactor must leave the golden files untouched.

    python tests/golden/update.py                 # record what this checkout's code produces
    python tests/golden/update.py --source DIR    # record what another checkout produces, e.g. the
                                                  # commit before a change: git worktree add DIR HEAD
    python tests/golden/update.py --run-dir RUN   # record from an existing `xray-audit demo` run
                                                  # directory instead of running the demo (~60 s)

It runs ``xray-audit -q demo`` with a fresh XRAY_AUDIT_HOME (so the demo cohort is rendered too), then
``xray-audit report RUN --format csv,md,tex,html --out DIR``, normalises both (tests/golden/outputs.py)
and writes them with environment.json, the package versions, torch thread count and CPU kernels the
numbers are exact for. Then it lists which golden files changed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.golden import outputs


def _cli(source: Path, args: list[str], env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "audit.cli", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=source, env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=ROOT, help="checkout whose code runs (default: this one)")
    p.add_argument("--run-dir", type=Path, help="an existing demo run directory (default: run the demo)")
    p.add_argument("--golden-dir", type=Path, default=outputs.GOLDEN_DIR, help="where the files go")
    args = p.parse_args(argv)
    source = args.source.resolve()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")]))
    found = subprocess.run(
        [sys.executable, "-c", "import audit, reports; print(audit.__file__); print(reports.__file__)"],
        cwd=source,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if not all(Path(f).resolve().is_relative_to(source) for f in found):
        p.error(f"the code imported is not from {source}: {found}")

    with tempfile.TemporaryDirectory(prefix="xray-audit-golden-") as tmp:
        tmp = Path(tmp)
        if args.run_dir is None:
            run_env = dict(env, XRAY_AUDIT_HOME=str(tmp / "home"))
            _cli(source, ["-q", "demo", "--out", str(tmp / "demo")], run_env)
            run_dir = tmp / "demo" / "run"
        else:
            run_dir = args.run_dir.resolve()
        report_dir = tmp / "report"
        _cli(
            source,
            ["-q", "report", str(run_dir), "--format", outputs.REPORT_FORMATS, "--out", str(report_dir)],
            env,
        )

        values = outputs.collect(run_dir, report_dir)
        # The run's own report.html must show the same table cells as the report command's.
        own = outputs.report_tables(run_dir / "report.html")
        problems = outputs.compare("report_tables.csv", values["report_tables.csv"], own)
        if problems:
            print("warning: the run's report.html and `xray-audit report`'s differ:", *problems, sep="\n")

        import torch

        env_info = outputs.environment(run_dir, torch.get_num_threads())
        old = None
        if all((args.golden_dir / item.name).is_file() for item in outputs.ITEMS):
            old = outputs.read_golden(args.golden_dir)
        written = outputs.write_golden(values, args.golden_dir)
        outputs.write_environment(env_info, args.golden_dir)

    new = outputs.read_golden(args.golden_dir)
    for path in written:
        name = path.name
        if old is None:
            state = "written"
        else:
            changes = outputs.compare(name, old[name], new[name])
            state = "unchanged" if not changes else "CHANGED:\n" + "\n".join(changes)
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{shown} ({path.stat().st_size:,} B): {state}")
    total = sum(f.stat().st_size for f in args.golden_dir.iterdir() if f.is_file())
    print(f"golden folder: {total:,} B; environment: {env_info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
