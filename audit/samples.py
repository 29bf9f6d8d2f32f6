"""Producing the samples of a run: the chunk's references, each model's samples shard (resumed from
the generation journal or an earlier shard when its files are unchanged), and the preflight check
that every sample can be produced before any work starts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from audit import images, rundir
from audit.atomic import sha256_file
from audit.cases import Case
from audit.models.base import (
    ModelAdapter,
    ModelLoadError,
    SampleFailure,
    SampleRequest,
    derive_seed,
    safe_name,
)
from audit.run_plan import SAMPLE_SHARD_SCHEMA, Plan, RunError, write_parquet
from audit.shards import Journal


class References:
    """Decodes each reference of the current chunk at most once and shares it across models."""

    def __init__(self, shas: dict[str, str] | None = None) -> None:
        self._cache: dict[str, images.XrayImage] = {}
        self.shas = shas or {}

    def __call__(self, case: Case) -> images.XrayImage:
        if case.case_id not in self._cache:
            self._cache[case.case_id] = images.read_image(case.image)
        return self._cache[case.case_id]

    def item(self, case: Case) -> tuple[str, Callable[[], np.ndarray]]:
        """(content sha256, pixel loader) of the reference, for the feature cache."""
        return self.shas[case.case_id], lambda: self(case).pixels


def ensure_references(plan: Plan, ci: int, chunk: Sequence[Case]) -> dict[str, str]:
    """sha256 of each reference file of the chunk, hashed once and kept in a shard for resumes."""
    shard = plan.ref_shard(ci)
    if shard.exists():
        frame = pq.read_table(shard).to_pandas()
        return dict(zip(frame["case_id"], frame["sha256"], strict=True))
    shas = {c.case_id: sha256_file(c.image) for c in chunk}
    frame = pd.DataFrame({"case_id": list(shas), "sha256": list(shas.values())})
    write_parquet(pa.Table.from_pandas(frame, preserve_index=False), shard)
    return shas


def preflight(adapters: Sequence[ModelAdapter], cases: Sequence[Case]) -> None:
    """Stop before any work when a sample cannot be produced, listing every such sample at once."""
    missing: list[str] = []
    hints: list[str] = []
    broken: list[str] = []
    for adapter in adapters:
        try:
            found = adapter.preflight(cases)
        except ModelLoadError as exc:
            broken.append(f"  - model {adapter.spec.name}: {exc}")
            continue
        missing += [
            f"{adapter.spec.name} / {case.case_id} / sample {sample}: {reason}"
            for case, sample, reason in found
        ]
        if found and adapter.spec.kind == "folder" and len(found) == len(cases) * adapter.samples_per_case():
            hints.append(f"none of model {adapter.spec.name}'s samples exist: check its path template")
    if broken:
        raise RunError(
            f"{len(broken)} model(s) cannot run:\n" + "\n".join(broken) + "\nFix the model config, or rerun "
            "with --keep-going to record their samples as failed and score the other models."
        )
    if missing:
        head = "\n".join(f"  - {m}" for m in missing[:200])
        more = f"\n  … and {len(missing) - 200} more" if len(missing) > 200 else ""
        raise RunError(
            f"{len(missing)} sample(s) cannot be produced:\n{head}{more}\n"
            + "".join(f"Hint: {h}.\n" for h in hints)
            + "Fix the paths in the study config or the case manifest, or rerun with --keep-going to record them in failures.csv "
            "and score the rest."
        )


def ensure_samples(
    plan: Plan, adapter: ModelAdapter, ci: int, chunk: Sequence[Case], refs: References
) -> pd.DataFrame:
    """The chunk's samples shard of one model: reused while its files are unchanged, else produced
    (resuming from the generation journal)."""
    shard = plan.shard("samples", adapter, ci)
    if shard.exists():
        frame = pq.read_table(shard).to_pandas()
        if _samples_unchanged(frame, keep_failures=adapter.generates):
            return frame
        if plan.options.require_complete:
            raise RunError(
                f"model {adapter.spec.name}, chunk {ci}: sample files changed or vanished since they were "
                f"recorded in {shard}; merge scores nothing anew. Rerun that shard, then merge again."
            )
        # Images were replaced, deleted or (with --keep-going) have appeared since: redo the chunk.
        metrics = plan.shard("metrics", adapter, ci)
        metrics.unlink(missing_ok=True)
        metrics.with_suffix(".failures.parquet").unlink(missing_ok=True)
    spec = adapter.spec
    sample_dir = plan.out / rundir.SAMPLES_DIR / safe_name(spec.name)
    requests = [
        SampleRequest(
            case=case,
            sample=s,
            seed=derive_seed(plan.config.study.seed, adapter.seed_name(), case.case_id, s),
            dest=sample_dir / f"{safe_name(case.case_id)}_s{s}.png",
        )
        for case in chunk
        for s in range(adapter.samples_per_case())
    ]
    journal = Journal(shard.with_suffix(".journal")) if adapter.generates else None
    rows: dict[tuple[str, int], dict] = {}
    pending = []
    for req in requests:
        done = journal.get(req) if journal is not None else None
        if done is not None:
            rows[(req.case.case_id, req.sample)] = done
        else:
            pending.append(req)
    step = max(1, adapter.batch_size())
    for start in range(0, len(pending), step):
        batch = pending[start : start + step]
        t = time.perf_counter()
        try:
            results = adapter.produce(batch, refs)
        except (images.ImageReadError, ModelLoadError) as exc:
            if not plan.options.keep_going:
                raise RunError(f"model {spec.name}: {exc}") from None
            results = [SampleFailure(str(exc))] * len(batch)
        seconds = (time.perf_counter() - t) / len(batch)
        for req, res in zip(batch, results, strict=True):
            row = _sample_row(spec, req, res)
            if not isinstance(res, SampleFailure):
                # Any kind may say how it made a sample (training-copy: the case it copied); only
                # network runs are timed.
                row.update(adapter.sample_info(req))
                if adapter.loads_model:
                    row["seconds"] = seconds
            rows[(req.case.case_id, req.sample)] = row
            if journal is not None:
                journal.put(req, row)
    frame = pd.DataFrame(
        [rows[(r.case.case_id, r.sample)] for r in requests], columns=SAMPLE_SHARD_SCHEMA.names
    )
    write_parquet(pa.Table.from_pandas(frame, schema=SAMPLE_SHARD_SCHEMA, preserve_index=False), shard)
    if journal is not None:
        journal.clear()
    return frame


def _sample_row(spec, req: SampleRequest, res: Path | SampleFailure) -> dict:  # type: ignore[no-untyped-def]
    row = dict.fromkeys(SAMPLE_SHARD_SCHEMA.names)
    row.update(model=spec.name, case_id=req.case.case_id, sample=req.sample, seed=req.seed, kind=spec.kind)
    if isinstance(res, SampleFailure):
        row["error"] = res.reason
    else:
        path = Path(res).resolve()
        st = path.stat()
        row.update(path=str(path), sha256=sha256_file(path), size=st.st_size, mtime_ns=st.st_mtime_ns)
    return row


def _samples_unchanged(frame: pd.DataFrame, keep_failures: bool = False) -> bool:
    """True when every recorded sample file is still the one that was recorded.

    A stat per file; the content is re-hashed only when size or mtime moved, so a rerun over a
    large folder stays cheap while a regenerated image is never scored with stale metrics. Failed
    samples make the chunk stale (a missing file may have appeared since) unless ``keep_failures``:
    a generator's failure is a deterministic function of its seed, so it is kept, not regenerated.
    """
    failed = frame["error"].notna()
    if failed.any() and not keep_failures:
        return False
    ok = frame[~failed]
    for path, sha, size, mtime in zip(ok["path"], ok["sha256"], ok["size"], ok["mtime_ns"], strict=True):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        if (st.st_size, st.st_mtime_ns) != (size, mtime) and sha256_file(path) != sha:
            return False
    return True
