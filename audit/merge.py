"""`xray-audit merge RUN_DIR...`: finish a run whose work was split with ``--shard i/n``.

Shards of one study either share one run directory (one process per GPU, or a job array on shared
storage) or each wrote its own (nodes without shared storage). Merging checks that every run
directory holds the same study, copies the parts of the others into the destination (rewriting
sample paths), checks that the union covers every case of the manifest exactly once, and then runs
the aggregation stage: samples.parquet, per_sample.parquet, distribution metrics, summary.csv,
run.json and the report. Nothing is generated or scored again; a missing piece is an error that
names the model, the chunk and the shard that should have produced it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from audit import rundir
from audit.atomic import atomic_path, sha256_file
from audit.config import StudyConfig, load_config
from audit.runner import RunError, RunOptions, RunResult, run_study

# Parts copied between run directories (journals of unfinished chunks and shard records are not).
_PART_STAGES = ("samples", "metrics", "references")


def merge_runs(run_dirs: Sequence[Path], options: RunOptions, out: Path | None = None) -> RunResult:
    if not run_dirs:
        raise RunError("merge needs at least one run directory")
    dirs = [Path(d).resolve() for d in run_dirs]
    configs = [_config_of(d) for d in dirs]
    base = configs[0]
    for d, cfg in zip(dirs[1:], configs[1:], strict=True):
        diff = _differences(base, cfg)
        if diff:
            raise RunError(
                f"{d} is not a shard of the same study as {dirs[0]}: its config differs in {', '.join(diff)}. "
                "Only run directories made from one study config can be merged."
            )
    dest = (out or dirs[0]).resolve()
    for src in dirs:
        if src != dest:
            _copy_parts(src, dest)
    config = dataclasses.replace(base, study=dataclasses.replace(base.study, output=dest))
    return run_study(config, dataclasses.replace(options, shard=None, require_complete=True))


def _config_of(run_dir: Path) -> StudyConfig:
    path = run_dir / rundir.CONFIG_TOML
    if not path.is_file():
        raise RunError(
            f"{run_dir} is not a run directory (no {rundir.CONFIG_TOML}); give the directories that "
            "`xray-audit run --shard i/n` wrote"
        )
    return load_config(path)


def _differences(a: StudyConfig, b: StudyConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d["study"].pop("output", None)
        # Where a shard ran (`--device cuda:1`) does not change its numbers; the dtype does.
        d["evaluators"].pop("device", None)
    out = [f"[{k}]" for k in ("study", "metrics", "evaluators") if da[k] != db[k]]
    if da["models"] != db["models"]:
        out.append("[[models]]")
    return out


def _copy_parts(src: Path, dest: Path) -> None:
    for stage in _PART_STAGES:
        root = src / rundir.PARTS_DIR / stage
        if not root.is_dir():
            continue
        for file in sorted(root.rglob("*.parquet")):
            if any(p.endswith(".journal") for p in file.relative_to(root).parts):
                continue
            target = dest / file.relative_to(src)
            if stage == "samples" and not file.name.endswith(".failures.parquet"):
                _copy_samples_shard(file, target, src, dest)
            else:
                _copy_file(file, target)
    for tree in (rundir.SAMPLES_DIR, "cache"):
        root = src / tree
        if root.is_dir():
            for file in sorted(p for p in root.rglob("*") if p.is_file()):
                target = dest / file.relative_to(src)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(target) as tmp:
                        shutil.copy2(file, tmp)


def _copy_file(file: Path, target: Path) -> None:
    if target.exists():
        if sha256_file(target) != sha256_file(file):
            raise RunError(
                f"{file} and {target} are the same part of the run with different content (was a chunk "
                "run by two shards with different inputs?); delete the wrong one and merge again"
            )
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copy2(file, tmp)


def _copy_samples_shard(file: Path, target: Path, src: Path, dest: Path) -> None:
    """Copy a samples shard, pointing paths under ``src`` at their copies under ``dest``."""
    table = pq.read_table(file)
    prefix = str(src) + os.sep
    paths = [
        None if p is None else (str(dest / p[len(prefix) :]) if p.startswith(prefix) else p)
        for p in table.column("path").to_pylist()
    ]
    table = table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths, pa.string()))
    if target.exists():
        existing = pq.read_table(target)
        if not existing.drop_columns(["path", "mtime_ns"]).equals(table.drop_columns(["path", "mtime_ns"])):
            raise RunError(
                f"{file} and {target} hold the same chunk with different samples; two shards did the same "
                "chunk with different inputs. Delete the wrong one and merge again"
            )
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
