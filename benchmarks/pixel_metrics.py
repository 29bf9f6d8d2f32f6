"""Throughput and peak memory of the pixel metrics: the suite's batched scorer vs a naive per-pair loop.

    python benchmarks/pixel_metrics.py [--pairs N] [--sizes 256,1024] [--threads T]

Scores mse, mae, psnr, ssim and ms_ssim on synthetic structured image pairs, (a) with
``audit.metrics.pixel.score_pixels`` on batches (32 pairs at 256², 8 at 1024²) and (b) with what a
hand-rolled script does: a Python loop over pairs calling each torchmetrics functional metric on a
batch of one. Each configuration runs in its own fresh subprocess, so that its peak resident memory
(``ru_maxrss``) is its own; memory is reported as the peak above the child's baseline after imports
and data generation (the working set of the scoring itself) and as the child's total peak.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

METRICS = ("mse", "mae", "psnr", "ssim", "ms_ssim")
_REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Result:
    mode: str
    size: int
    batch: int
    pairs: int
    seconds: float
    cpu_seconds: float
    baseline_mb: float
    peak_mb: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds

    @property
    def pairs_per_cpu_s(self) -> float:
        return self.pairs / self.cpu_seconds

    @property
    def working_mb(self) -> float:
        return self.peak_mb - self.baseline_mb


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _synthetic_pairs(n: int, size: int, seed: int):  # -> tuple[Tensor, Tensor]
    """Smooth random 'anatomy' plus edges as reference; a blurred, noisy copy as generated image."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, size // 16, size // 16, generator=g)
    ref = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    ref = ref + 0.1 * (torch.rand(n, 1, size, size, generator=g) > 0.5)
    ref = (ref - ref.amin((2, 3), keepdim=True)) / (
        ref.amax((2, 3), keepdim=True) - ref.amin((2, 3), keepdim=True)
    )
    gen = F.avg_pool2d(ref, 3, stride=1, padding=1) + 0.03 * torch.randn(n, 1, size, size, generator=g)
    return gen.clamp_(0, 1).contiguous(), ref.contiguous()


def _child(mode: str, size: int, pairs: int, batch: int, threads: int) -> Result:
    import torch
    from torchmetrics.functional import mean_absolute_error, mean_squared_error
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure,
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    from audit.metrics.pixel import score_pixels

    torch.set_num_threads(threads)
    # A pool of one batch, reused cyclically, keeps data memory the same for both modes.
    gen, ref = _synthetic_pairs(batch, size, seed=size)

    def suite(_: int) -> None:
        score_pixels(gen, ref, METRICS)

    def naive(k: int) -> None:
        i = k % batch
        p, t = gen[i : i + 1], ref[i : i + 1]
        with torch.inference_mode():
            mean_squared_error(p, t).item()
            mean_absolute_error(p, t).item()
            peak_signal_noise_ratio(p, t, data_range=1.0).item()
            structural_similarity_index_measure(p, t, data_range=1.0).item()
            multiscale_structural_similarity_index_measure(p, t, data_range=1.0).item()

    step, per_step = (suite, batch) if mode == "suite" else (naive, 1)
    baseline = _maxrss_mb()
    step(0)  # warm-up (allocator, oneDNN primitive creation); counts towards peak memory
    steps = max(1, pairs // per_step)
    start, cpu_start = time.perf_counter(), time.process_time()
    for k in range(steps):
        step(k)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return Result(mode, size, batch, steps * per_step, seconds, cpu_seconds, baseline, _maxrss_mb())


def _run_child(mode: str, size: int, pairs: int, batch: int, threads: int) -> Result:
    cmd = [sys.executable, __file__, "--child", mode, str(size), str(pairs), str(batch), str(threads)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {mode} {size}² failed:\n{proc.stderr}")
    return Result(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _table(results: list[Result], threads: int, load: tuple[float, float]) -> str:
    lines = [
        (
            f"Pixel metrics {', '.join(METRICS)}; CPU ({os.cpu_count()} cores, 1-min load average "
            f"{load[0]:.1f} before / {load[1]:.1f} after), {threads} torch thread(s), float32. Throughput is "
            "pairs per wall-clock second (per process CPU-second in brackets: less sensitive to other load). "
            "Memory is peak RSS above the process baseline after imports and data (total peak in brackets)."
        ),
        "",
        (
            "| image | suite batch | pairs | suite pairs/s | naive pairs/s | throughput suite/naive "
            "| suite MB | naive MB | memory suite/naive |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r.mode, r.size): r for r in results}
    for size in sorted({r.size for r in results}):
        s, n = by[("suite", size)], by[("naive", size)]
        lines.append(
            f"| {size}² | {s.batch} | {s.pairs} | {s.pairs_per_s:.1f} ({s.pairs_per_cpu_s:.1f}) "
            f"| {n.pairs_per_s:.1f} ({n.pairs_per_cpu_s:.1f}) "
            f"| {s.pairs_per_s / n.pairs_per_s:.1f}× ({s.pairs_per_cpu_s / n.pairs_per_cpu_s:.1f}×) "
            f"| {s.working_mb:.0f} ({s.peak_mb:.0f}) | {n.working_mb:.0f} ({n.peak_mb:.0f}) "
            f"| {s.working_mb / max(n.working_mb, 1.0):.1f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=None, help="pairs per configuration (default: by size)")
    parser.add_argument("--sizes", default="256,1024", help="comma-separated square image sides")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, size, pairs, batch, threads = args.child[0], *map(int, args.child[1:])
        print(json.dumps(_child(mode, size, pairs, batch, threads).__dict__))
        return 0
    results = []
    load_before = os.getloadavg()[0]
    for size in (int(s) for s in args.sizes.split(",")):
        batch = max(1, min(32, 2**23 // (size * size)))
        pairs = args.pairs or max(2 * batch, 2**23 // (size * size))
        for mode in ("suite", "naive"):
            results.append(_run_child(mode, size, pairs, batch, args.threads))
    print(_table(results, args.threads, (load_before, os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
