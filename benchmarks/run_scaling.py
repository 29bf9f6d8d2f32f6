"""Does `xray-audit run` keep memory flat as the cohort grows?

Builds synthetic cohorts of increasing size (256² 16-bit PNGs), runs the CLI on each in a fresh
subprocess with one `degrade` model and the five pixel metrics, and reports cases/s and the
child's peak RSS, as ratios against the smallest cohort measured in the same run.

    python benchmarks/run_scaling.py [--sizes 64,256,1024]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from audit.images import write_png


def build(root: Path, n: int, size: int = 256) -> Path:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        img = 0.4 + 0.2 * np.sin(8 * x + rng.uniform(0, 6)) * np.cos(5 * y) + rng.normal(0, 0.02, x.shape)
        write_png(root / "img" / f"c{i:05d}.png", np.clip(img, 0, 1), bit_depth=16)
        rows.append({"case_id": f"c{i:05d}", "image": f"img/c{i:05d}.png"})
    pd.DataFrame(rows).to_csv(root / "cases.csv", index=False)
    (root / "study.toml").write_text(
        '[study]\nname = "scaling"\ncases = "cases.csv"\noutput = "run"\n\n'
        '[[models]]\nname = "blur"\nkind = "degrade"\ndegradation = "blur"\nlevel = 2.0\n\n'
        '[metrics]\npixel = ["mse", "mae", "psnr", "ssim", "ms_ssim"]\n'
    )
    return root / "study.toml"


def measure(config: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one CLI run in its own process."""
    code = (
        "import resource, sys, time; from audit.cli import main; "
        "import audit.metrics.pixel; t = time.perf_counter(); rc = main(['-q', 'run', sys.argv[1], '--no-report']); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)], check=True, capture_output=True, text=True
    )
    seconds, rss = out.stdout.split()[-2:]
    return float(seconds), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,256,1024")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            config = build(Path(tmp) / f"n{n}", n)
            seconds, rss = measure(config)
            rows.append((n, n / seconds, rss))
    base_rate, base_rss = rows[0][1], rows[0][2]
    print("| cases | cases/s | peak RSS MiB | throughput vs smallest | peak RSS vs smallest |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n, rate, rss in rows:
        print(f"| {n} | {rate:.1f} | {rss:.0f} | {rate / base_rate:.2f}× | {rss / base_rss:.2f}× |")


if __name__ == "__main__":
    main()
