"""``xray-audit run``, ``merge`` and ``demo``: a study run (or the merge of its shards), then its report.

Running and reporting are separate steps (audit.runner writes no report); these commands compose
them, so ``--no-report`` belongs to the command line alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from audit.cli.exit_codes import EXIT_OK

if TYPE_CHECKING:
    from audit.runner import RunResult

log = logging.getLogger("audit")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the study described by a TOML config")
    run.add_argument("config", type=Path, metavar="STUDY.toml")
    run.add_argument(
        "--keep-going",
        action="store_true",
        help="record missing or bad samples in failures.csv instead of stopping",
    )
    run.add_argument("--no-report", action="store_true", help="skip writing report.html")
    run.add_argument(
        "--chunk-size",
        type=int,
        default=64,
        metavar="N",
        help="cases per resumable unit of work (default 64); smaller loses less work when interrupted",
    )

    run.add_argument(
        "--shard",
        metavar="I/N",
        help="do only shard I of N (0-based; chunk k goes to shard k %% N), then stop before aggregating; "
        "finish with `xray-audit merge RUN_DIR` once all N are done. `auto`: from RANK/WORLD_SIZE "
        "(accelerate launch, torchrun)",
    )
    run.add_argument(
        "--device",
        type=_device,
        metavar="DEVICE",
        help="where the evaluator networks run: auto, cpu, cuda or cuda:N (overrides [evaluators].device; "
        "recorded in run.json)",
    )

    merge = sub.add_parser("merge", help="finish a run whose work was split with --shard i/n")
    merge.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    merge.add_argument(
        "--out", type=Path, metavar="DIR", help="merged run directory (default: the first RUN_DIR)"
    )
    merge.add_argument("--no-report", action="store_true", help="skip writing report.html")
    merge.add_argument(
        "--chunk-size",
        type=int,
        metavar="N",
        help="the --chunk-size the shards ran with (default: read from their shard records, else 64)",
    )

    demo = sub.add_parser("demo", help="build the embedded demo cohort and audit it")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("xray-audit-demo"),
        metavar="DIR",
        help="where the study config and run go (default: ./xray-audit-demo)",
    )


def handle_run(args: argparse.Namespace, progress: bool) -> int:
    shard = _parse_shard(args.shard) if args.shard else None
    return _run(
        args.config,
        args.keep_going,
        not args.no_report,
        progress,
        args.chunk_size,
        shard,
        args.device,
    )


def handle_merge(args: argparse.Namespace, progress: bool) -> int:
    import json

    from audit.config import ConfigError
    from audit.run_plan import RunOptions
    from audit.runner import merge_runs

    run_dirs, chunk_size = args.run_dirs, args.chunk_size
    if chunk_size is None:
        sizes = {
            json.loads(p.read_text())["chunk_size"]
            for d in run_dirs
            for p in (d / "parts" / "shards").glob("shard-*.json")
        }
        if len(sizes) > 1:
            raise ConfigError(
                f"the shards ran with different --chunk-size values {sorted(sizes)}; rerun them alike"
            )
        chunk_size = sizes.pop() if sizes else 64
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {chunk_size}")
    result = merge_runs(run_dirs, RunOptions(progress=progress, chunk_size=chunk_size), args.out)
    return _finished(result, _write_report(result.path) if not args.no_report else None)


def handle_demo(args: argparse.Namespace, progress: bool) -> int:
    from audit.demo.cohort import build_cohort
    from audit.demo.study import write_demo_study
    from audit.demo.training import generator_training_cases

    manifest = build_cohort(progress=progress)
    log.info("demo cohort: %s", manifest)
    training = generator_training_cases(progress=progress)
    log.info("demo generators' training cases: %s", training)
    config_path = write_demo_study(manifest, args.out, training)
    log.info("demo study config: %s", config_path.resolve())
    return _run(config_path, keep_going=False, report=True, progress=progress)


def _parse_shard(text: str) -> tuple[int, int]:
    from audit.config import ConfigError

    if text == "auto":
        # Set by `accelerate launch` and torchrun: one process per GPU, each taking its own shard.
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            raise ConfigError(
                "--shard auto takes the shard from RANK and WORLD_SIZE, which `accelerate launch` and "
                "torchrun set; outside them give --shard I/N"
            )
        return int(rank), int(world)
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise ConfigError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(index), int(count)


def _device(text: str) -> str:
    """``--device``: what ``[evaluators].device`` accepts."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f'must be "auto", "cpu", "cuda" or "cuda:N", got {text!r}')
    return text


def _run(
    config_path: Path,
    keep_going: bool,
    report: bool,
    progress: bool,
    chunk_size: int = 64,
    shard: tuple[int, int] | None = None,
    device: str | None = None,
) -> int:
    from audit.config import ConfigError, load_config
    from audit.run_plan import RunOptions
    from audit.runner import run_study

    config = load_config(config_path)
    if config.reader_study is not None and config.reader_study.simulate_readers:
        from reader_study.simulate import refuse_real_ratings

        refuse_real_ratings(config.reader_study.ratings)  # before any work, not after it
    if device is not None:
        # run.json and config.toml then record the device the evaluators actually ran on.
        config = dataclasses.replace(config, evaluators=dataclasses.replace(config.evaluators, device=device))
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {chunk_size}")
    result = run_study(
        config,
        RunOptions(keep_going=keep_going, progress=progress, chunk_size=chunk_size, shard=shard),
    )
    if shard is not None:
        log.info(
            "shard %d/%d done (%d samples); when all %d shards are done: xray-audit merge %s%s",
            *shard,
            result.n_samples,
            shard[1],
            result.path.resolve(),
            "" if chunk_size == 64 else f" --chunk-size {chunk_size}",
        )
        return EXIT_OK
    if config.reader_study is not None and config.reader_study.simulate_readers:
        from reader_study.simulate import write_simulated_ratings

        target = write_simulated_ratings(
            result.path, config.reader_study.ratings, config.reader_study.simulate_readers, config.study.seed
        )
        log.warning(
            "[reader_study].simulate_readers: wrote %d SIMULATED readers' ratings to %s (demo only: not "
            "radiologists)",
            config.reader_study.simulate_readers,
            target,
        )
    return _finished(result, _write_report(result.path) if report else None)


def _write_report(run_dir: Path) -> Path:
    """report.html of a finished run; its time joins run.json's timings like the run's own steps."""
    from audit.runner import record_timing

    t = time.perf_counter()
    from reports.html import write_html_report

    path = write_html_report(run_dir)
    record_timing(run_dir, "report_s", time.perf_counter() - t)
    return path


def _finished(result: RunResult, report: Path | None) -> int:
    log.info("run directory: %s", result.path.resolve())
    if result.n_failures:
        log.warning(
            "%d failure(s) recorded in %s", result.n_failures, (result.path / "failures.csv").resolve()
        )
    if report:
        log.info("report: %s", report.resolve())
    return EXIT_OK
