"""Training time and held-out accuracy of the Norberg landmark detector on the pelvis phantom.

    python benchmarks/landmark_training.py [--cases N] [--seed S] [--out results.json]

Writes a phantom cohort (``audit.norberg.phantom.write_phantom_cohort``, 256 px, default
:data:`CASES` cases: a drawing, not anatomy), then trains on it in fresh subprocesses, so that each
run's peak resident memory (``ru_maxrss``) is its own:

* ``default``: ``xray-audit landmarks train`` with the default :class:`~audit.norberg.train.TrainConfig`;
* ``1 epoch``: the same model trained for one epoch (the baseline: what training buys).

Both hold out the same cases (20 %, chosen by case_id hash) and are scored on them: mean landmark
error in image px and Norberg-angle MAE in degrees per side and pooled, computed with
``geometry.case_angles`` on predicted vs exact landmarks. Training seconds exclude data loading and
scoring; wall seconds are the whole child, imports included. The CPU may be shared: the 1-minute
load average before and after each run is printed next to its timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = 200
SEED = 0


def _child(cohort: Path, out: Path, epochs: int | None) -> dict[str, Any]:
    start = time.perf_counter()
    from audit.norberg.train import TrainConfig, train_detector

    config = TrainConfig() if epochs is None else TrainConfig(epochs=epochs)
    result = train_detector(cohort / "cases.csv", cohort / "landmarks.csv", out, config)
    held = result.held_out
    return {
        "epochs": config.epochs,
        "size": config.size,
        "parameters": result.parameters,
        "train_s": result.seconds,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "held_out_cases": held["n_cases"],
        "px_mean": held["px"]["mean"],
        "mae_deg": held["angle_mae_deg"],
        "bias_deg": held["angle_bias_deg"],
        "threads": result.spec.record["training"]["threads"],
    }


def _run_child(cohort: Path, out: Path, epochs: int | None) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--child", str(cohort), str(out), str(epochs or 0)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_before"] = round(load_before, 2)
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=CASES, help="phantom cases (default %(default)s)")
    parser.add_argument("--seed", type=int, default=SEED, help="phantom seed (default %(default)s)")
    parser.add_argument("--out", type=Path, help="write all figures to this JSON file")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        cohort, out, epochs = args.child
        print(json.dumps(_child(Path(cohort), Path(out), int(epochs) or None)))
        return 0

    from audit.norberg.phantom import write_phantom_cohort

    with tempfile.TemporaryDirectory(prefix="xray-audit-landmarks-") as tmp:
        t0 = time.perf_counter()
        cohort = write_phantom_cohort(Path(tmp) / "phantom", n=args.cases, seed=args.seed, size=256)
        setup_s = time.perf_counter() - t0
        runs = {
            "default": _run_child(cohort, Path(tmp) / "default", None),
            "1 epoch": _run_child(cohort, Path(tmp) / "one-epoch", 1),
        }
    print(
        f"pelvis phantom (not anatomy): {args.cases} cases at 256 px, seed {args.seed}, "
        f"written in {setup_s:.1f} s"
    )
    print()
    print(
        "| run | epochs | input px | params | train s | wall s | load before/after | peak RSS MB "
        "| held-out px | MAE left ° | MAE right ° | MAE pooled ° |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for name, r in runs.items():
        m = r["mae_deg"]
        print(
            f"| {name} | {r['epochs']} | {r['size']} | {r['parameters']} | {r['train_s']:.1f} "
            f"| {r['wall_s']:.1f} "
            f"| {r['load_before']:.1f}/{r['load_after']:.1f} | {r['peak_rss_mb']:.0f} | {r['px_mean']:.2f} "
            f"| {m['left']:.2f} | {m['right']:.2f} | {m['pooled']:.2f} |"
        )
    base, full = runs["1 epoch"], runs["default"]
    print()
    print(
        f"default vs 1 epoch: pooled MAE {full['mae_deg']['pooled']:.2f}° "
        f"vs {base['mae_deg']['pooled']:.2f}° "
        f"({base['mae_deg']['pooled'] / max(full['mae_deg']['pooled'], 1e-9):.1f}x lower), "
        f"training {full['train_s'] / max(base['train_s'], 1e-9):.1f}x longer; "
        f"{full['held_out_cases']} held-out cases, "
        f"{full['threads']} torch threads"
    )
    if args.out:
        from audit.atomic import write_text

        figures = {"cases": args.cases, "seed": args.seed, "runs": runs}
        write_text(args.out, json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
