"""The durable state of a run's parts: the generation journal, the shard records, the completeness
check, merging shards from several run directories, and pruning what no longer belongs to the run.

Shards of one study either share one run directory (one process per GPU, or a job array on shared
storage) or each wrote its own (nodes without shared storage). Gathering them checks that every run
directory holds the same study and copies the parts of the others into the destination (rewriting
sample paths); the run then aggregates with ``require_complete``, so a missing piece is an error
that names the model, the chunk and the shard that should have produced it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from audit import rundir
from audit.atomic import TMP_PREFIX, atomic_path, sha256_file, write_text
from audit.cases import PATH_COLUMNS, Case, Manifest
from audit.config import StudyConfig, load_config
from audit.models.base import ModelAdapter, SampleRequest, safe_name
from audit.run_plan import Plan, RunError

# Parts copied between run directories (journals of unfinished chunks and shard records are not).
_PART_STAGES = ("samples", "metrics", "references")


class Journal:
    """Finished samples of a chunk that is still being generated, one small JSON file per sample.

    Generation is the expensive step, so a killed run must not redo finished samples: each is
    recorded as soon as its batch is done (atomic write) and reused on resume when its file still
    has the recorded sha256 (a half-written image never gets a record, as PNGs are renamed into
    place). The chunk's samples shard replaces the journal once the chunk is complete.
    """

    def __init__(self, dir: Path) -> None:
        self.dir = dir

    def _file(self, req: SampleRequest) -> Path:
        return self.dir / f"{safe_name(req.case.case_id)}_s{req.sample}.json"

    def get(self, req: SampleRequest) -> dict | None:
        try:
            row = json.loads(self._file(req).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if row.get("case_id") != req.case.case_id or row.get("seed") != req.seed:
            return None
        if row.get("error") is None:
            try:
                if sha256_file(row["path"]) != row["sha256"]:
                    return None
            except (OSError, KeyError, TypeError):
                return None
            st = os.stat(row["path"])
            row.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        return row

    def put(self, req: SampleRequest, row: dict) -> None:
        write_text(self._file(req), json.dumps(row, default=_json_default))

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot record {value!r} in the generation journal")


def fingerprint_files(manifest: Manifest) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every file the manifest names: a replaced reference invalidates all work."""
    out = []
    for column in PATH_COLUMNS:
        if column in manifest.frame.columns:
            for value in manifest.frame[column]:
                if isinstance(value, str):
                    st = os.stat(value)
                    out.append((value, st.st_size, st.st_mtime_ns))
    return out


def check_complete(plan: Plan, adapters: Sequence[ModelAdapter], cases: Sequence[Case]) -> None:
    """Every (model, chunk) has its samples and metrics shards, each holding exactly the chunk's
    samples once; otherwise a RunError lists what is missing and which shard should have made it."""
    size = plan.options.chunk_size
    problems: list[str] = []
    for ci in range((len(cases) + size - 1) // size):
        chunk = cases[ci * size : (ci + 1) * size]
        for adapter in adapters:
            expected = sorted((c.case_id, s) for c in chunk for s in range(adapter.samples_per_case()))
            where = f"model {adapter.spec.name}, chunk {ci} (cases {chunk[0].case_id} .. {chunk[-1].case_id})"
            samples = plan.shard("samples", adapter, ci)
            if not samples.exists() or not plan.shard("metrics", adapter, ci).exists():
                problems.append(f"{where}: not done")
                continue
            frame = pq.read_table(samples, columns=["case_id", "sample"]).to_pandas()
            got = sorted(zip(frame["case_id"], frame["sample"].astype(int), strict=True))
            if got != expected:
                dupes = len(got) - len(set(got))
                missing = len(set(expected) - set(got))
                problems.append(
                    f"{where}: {missing} sample(s) missing, {dupes} duplicated, "
                    f"{len(set(got) - set(expected))} not in the manifest"
                )
    if problems:
        head = "\n".join(f"  - {p}" for p in problems[:100])
        more = f"\n  … and {len(problems) - 100} more" if len(problems) > 100 else ""
        raise RunError(
            f"{plan.out}: {len(problems)} part(s) of the run are not done:\n{head}{more}\n"
            f"With --shard i/n, chunk k belongs to shard k % n (chunk size {size}). Run the missing "
            "shards (same config, same --chunk-size), then merge again."
        )


def record_shard(
    plan: Plan, adapters: Sequence[ModelAdapter], cases: Sequence[Case], timings: dict[str, float]
) -> tuple[int, int]:
    """Write this process's shard record under parts/shards/; returns its (samples, failures)."""
    index, count = plan.options.shard  # type: ignore[misc]
    size = plan.options.chunk_size
    chunks = [ci for ci in range((len(cases) + size - 1) // size) if ci % count == index]
    n_samples = n_failures = 0
    for adapter in adapters:
        for ci in chunks:
            frame = pq.read_table(plan.shard("samples", adapter, ci), columns=["error"]).to_pandas()
            n_failures += int(frame["error"].notna().sum())
            n_samples += int(frame["error"].isna().sum())
    record = {
        "shard": [index, count],
        "chunk_size": size,
        "chunks": chunks,
        "config_hash": plan.config.hash(),
        "cases_hash": plan.cases_hash,
        "samples": n_samples,
        "failures": n_failures,
        "finished": dt.datetime.now(dt.UTC).isoformat(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "generation": {a.spec.name: a.stats() for a in adapters if a.loads_model},
    }
    write_text(
        plan.out / rundir.PARTS_DIR / "shards" / f"shard-{index}-of-{count}.json",
        json.dumps(record, indent=2),
    )
    return n_samples, n_failures


def prune_stale_parts(plan: Plan, adapters: Sequence[ModelAdapter]) -> None:
    """Drop shards of earlier configs so parts/ reflects exactly this run."""
    keep = {plan.part_dir(stage, a) for a in adapters for stage in ("samples", "metrics")}
    keep.add(plan.ref_shard(0).parent)
    for stage in ("samples", "metrics", "references"):
        root = plan.out / rundir.PARTS_DIR / stage
        if root.is_dir():
            for d in root.iterdir():
                if d not in keep:
                    shutil.rmtree(d, ignore_errors=True)


def remove_orphan_temps(out: Path, started: dt.datetime) -> None:
    """Delete temp files a killed earlier run left behind (never ones younger than this run)."""
    cutoff = started.timestamp()
    for tmp in out.rglob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def gather_shards(run_dirs: Sequence[Path], out: Path | None = None) -> StudyConfig:
    """Copy the parts of every run directory into ``out`` (default: the first one), after checking
    they hold one study; returns that study's config with its output set to ``out``."""
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
    return dataclasses.replace(base, study=dataclasses.replace(base.study, output=dest))


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
    # Every section, including ones only the merging process uses ([privacy], [norberg]): shards of
    # one study share one config file, so any difference means they came from two studies.
    return [
        "[[models]]" if k == "models" else f"[{k}]"
        for k in dict.fromkeys([*da, *db])
        if da.get(k) != db.get(k)
    ]


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
