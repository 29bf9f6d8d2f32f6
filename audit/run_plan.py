"""The plan every step of a run works from: its options, the error that stops it, and the parts.

A run's work is stored as parts under ``parts/``: per (model, chunk of cases) a samples shard and a
metrics shard, and per chunk a references shard. Each part directory is keyed by a hash of
everything that determines its content, so a rerun trusts exactly the parts that are still valid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from audit import rundir
from audit.atomic import atomic_path
from audit.config import StudyConfig
from audit.evaluation import Evaluation
from audit.hashing import stable_hash
from audit.models.base import ModelAdapter, safe_name

# Bump when the meaning of a shard changes, so stale shards are recomputed rather than trusted.
SAMPLES_FORMAT = 4
METRICS_FORMAT = 2

SAMPLE_SHARD_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("case_id", pa.string()),
        ("sample", pa.int64()),
        ("seed", pa.int64()),
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("kind", pa.string()),
        ("error", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("steps", pa.int64()),
        ("guidance", pa.float64()),
        ("strength", pa.float64()),
        ("scheduler", pa.string()),
        ("dtype", pa.string()),
        ("weights", pa.string()),
        ("prompt", pa.string()),
        ("perturbation", pa.string()),
        ("seconds", pa.float64()),
        ("source_case_id", pa.string()),
    ]
)
METRIC_SHARD_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("case_id", pa.string()),
        ("sample", pa.int64()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)
FAILURE_SCHEMA = pa.schema(
    [(c, pa.int64() if c == "sample" else pa.string()) for c in rundir.FAILURES_COLUMNS]
)


class RunError(RuntimeError):
    """The run cannot continue; the message says what failed and how to proceed."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
    keep_going: bool = False
    progress: bool = True
    chunk_size: int = 64
    # (i, n): this process does chunks ci with ci % n == i, then stops before aggregation;
    # `xray-audit merge` finishes the run once every shard is done.
    shard: tuple[int, int] | None = None
    # merge: every chunk of every model must already be done; nothing is generated or scored.
    require_complete: bool = False


@dataclasses.dataclass
class Plan:
    config: StudyConfig
    options: RunOptions
    out: Path
    cases_hash: str
    evaluation: Evaluation | None = None

    def samples_key(self, adapter: ModelAdapter) -> str:
        return stable_hash(
            {
                "format": SAMPLES_FORMAT,
                "spec": dataclasses.asdict(adapter.spec),
                "seed": self.config.study.seed,
                "samples_per_case": adapter.samples_per_case(),
                "cases": self.cases_hash,
                "chunk_size": self.options.chunk_size,
            }
        )[:16]

    def metrics_key(self, adapter: ModelAdapter) -> str:
        return stable_hash(
            {
                "format": METRICS_FORMAT,
                "samples": self.samples_key(adapter),
                "metrics": self.config.to_dict()["metrics"],
                "segmenter": self.evaluation.segmenter_key() if self.evaluation else None,
                "dice": bool(self.evaluation and self.evaluation.wants("dice")),
            }
        )[:16]

    def ref_shard(self, chunk: int) -> Path:
        key = stable_hash({"cases": self.cases_hash, "chunk_size": self.options.chunk_size})[:16]
        return self.out / rundir.PARTS_DIR / "references" / key / f"{chunk:05d}.parquet"

    def part_dir(self, stage: str, adapter: ModelAdapter) -> Path:
        key = self.samples_key(adapter) if stage == "samples" else self.metrics_key(adapter)
        return self.out / rundir.PARTS_DIR / stage / f"{safe_name(adapter.spec.name)}-{key}"

    def shard(self, stage: str, adapter: ModelAdapter, chunk: int) -> Path:
        return self.part_dir(stage, adapter) / f"{chunk:05d}.parquet"


def write_parquet(table: pa.Table, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp)
