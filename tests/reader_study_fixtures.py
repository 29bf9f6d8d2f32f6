"""Small finished run directories and reader studies for the reader-study tests (no torch, ~0.2 s).

The run holds real PNGs of different sizes and bit depths per source (real: 16-bit 96x80,
generated: 8-bit 64x64 and 16-bit 48x48) with PNG text chunks, so that tests can check that the
study's re-encoding hides every one of these differences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from audit.fake_run import FakeModel, FakeRun, PngStyle, write_fake_run
from reader_study.create import CreatedStudy, CreateOptions, create_study
from reader_study.criteria import resolve

MODELS = ("model-alpha", "model-beta")
# Distinctive strings a leak check can look for in pages and bytes.
LEAKY_TEXT = "SECRET-MODEL-NAME"


def make_run(root: Path, n_cases: int = 12, models: tuple[str, ...] = MODELS, samples: int = 1) -> Path:
    """A finished run directory at ``root/run`` with ``n_cases`` real cases and the given models."""
    generated = tuple(
        FakeModel(
            model,
            shape=(64, 64) if j % 2 == 0 else (48, 48),
            png=PngStyle(8 if j % 2 == 0 else 16, f"{LEAKY_TEXT} {{model}}"),
        )
        for j, model in enumerate(models)
    )
    spec = FakeRun(
        models=(FakeModel("real", "real"), *generated),
        case_ids=tuple(f"case-{i:03d}" for i in range(n_cases)),
        name="fixture",
        seed=0,
        samples_per_case=samples,
        image_shape=(96, 80),
        png=PngStyle(16, f"{LEAKY_TEXT} real {{case_id}}"),
        columns={
            "prompt": [f"chest x-ray, finding {i % 3}" for i in range(n_cases)],
            "labels": ["Nodule"] * n_cases,
        },
    )
    return write_fake_run(root, spec)


def make_study(
    root: Path,
    readers: tuple[str, ...] = ("alice", "bob"),
    *,
    n_cases: int = 12,
    database: str | None = None,
    **options: object,
) -> CreatedStudy:
    """A run plus a study created from it at ``root/study``; ``options`` go to CreateOptions."""
    run = make_run(root, n_cases=n_cases)
    criteria = options.pop("criteria", None)
    opts = CreateOptions(
        readers=readers,
        criteria=resolve(criteria if isinstance(criteria, str) or criteria is None else None, None),  # type: ignore[arg-type]
        database=database,
        size=int(options.pop("size", 64)),  # type: ignore[call-overload]
        **options,  # type: ignore[arg-type]
    )
    return create_study(run, root / "study", opts, progress=False)


def rated_study(
    run: Path,
    out: Path,
    *,
    readers: tuple[str, ...],
    per_model: int,
    rng: np.random.Generator,
    said_real: tuple[float, float] = (0.8, 0.4),
    seconds: float = 2.0,
) -> Path:
    """A study of ``run`` at ``out`` with every item rated by every reader on the built-in criteria
    and the Turing question: score = model quality + reader severity + noise (so the mixed model has
    something to fit), "real" said with probability ``said_real`` (real items, generated items)."""
    import uuid

    from reader_study import admin, studydir
    from reader_study.criteria import TURING
    from reader_study.store import Answer
    from reader_study.store import readers as readers_table

    criteria = resolve(None, None)
    options = CreateOptions(readers=readers, criteria=criteria, per_model=per_model, size=64, turing=True)
    made = create_study(run, out, options, progress=False)
    key = pd.read_parquet(made.path / studydir.KEY).set_index("item")["model"]
    models = sorted(set(key))
    quality = dict(zip(models, rng.normal(3.0, 0.8, len(models)), strict=True))
    _, _, store = admin.open_store(made.path)
    try:
        for reader_id in (r["id"] for r in store.table(readers_table)):
            severity = rng.normal(0.0, 0.4)
            for entry in store.queue(reader_id):
                model = key[entry.item_id]
                raw = quality[model] + severity + rng.normal(0.0, 0.7, len(criteria))
                scores = np.clip(np.rint(raw), 1, 5).astype(int)
                answers = [Answer(c.name, score=int(v)) for c, v in zip(criteria, scores, strict=True)]
                real = rng.random() < said_real[0 if model == "real" else 1]
                answers.append(
                    Answer(
                        TURING,
                        turing_answer="real" if real else "synthetic",
                        confidence=int(rng.integers(1, 6)),
                    )
                )
                store.submit(
                    reader_id, entry.item_id, entry.read_number, str(uuid.uuid4()), answers, seconds=seconds,
                    shown=store.shown(reader_id, entry.item_id, entry.read_number),
                )  # fmt: skip
    finally:
        store.close()
    return made.path
