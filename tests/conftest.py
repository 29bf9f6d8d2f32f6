"""Shared fixtures: small synthetic cohorts built in tmp dirs (nothing downloads)."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# The run directory contract, spelled out independently of audit.rundir on purpose.
RUN_DIR_FILES = (
    "run.json",
    "config.toml",
    "cases.parquet",
    "samples.parquet",
    "per_sample.parquet",
    "summary.csv",
    "report.html",
)


# The user's own XRAY_AUDIT_HOME (None: the platform cache dir), for the slow tests of real weights.
USER_HOME = os.environ.get("XRAY_AUDIT_HOME")


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """Caches go to a throw-away dir unless CI already points XRAY_AUDIT_HOME somewhere."""
    if "XRAY_AUDIT_HOME" not in os.environ:
        os.environ["XRAY_AUDIT_HOME"] = str(tmp_path_factory.mktemp("xray-audit-home"))
    yield


@dataclasses.dataclass(frozen=True)
class DemoRun:
    out: Path  # what `xray-audit demo --out` wrote: demo.toml and run/
    exit_code: int
    log: str  # the INFO and higher log lines of the run

    @property
    def run(self) -> Path:
        return self.out / "run"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, _isolated_home) -> DemoRun:
    """The quick start's own ``xray-audit demo``, run once per session (about 80 s) and shared by
    every test that needs a real run: treat it as read-only."""
    from audit.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    root = logging.getLogger()
    handler, level = _Lines(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        code = main(["-q", "demo", "--out", str(out)])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return DemoRun(out, code, "\n".join(handler.lines))


def phantom(rng: np.random.Generator, size: int = 192) -> np.ndarray:
    """A structured float image in [0,1]: smooth background, blobs and an edge, so SSIM is informative."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.3 + 0.2 * x + 0.1 * np.sin(6 * y)
    for _ in range(6):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.04, 0.15)
        img += 0.25 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r**2))
    img[:, size // 2 :] += 0.05
    img += rng.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def make_cohort(root: Path, n: int = 6, size: int = 192, seed: int = 0, bit_depth: int = 16) -> Path:
    """Write n reference PNGs plus masks and a manifest; returns the manifest path."""
    from audit.images import write_png

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        cid = f"case-{i:03d}"
        img = phantom(rng, size)
        write_png(root / "img" / f"{cid}.png", img, bit_depth=bit_depth)
        write_png(root / "mask" / f"{cid}.png", img > 0.5, bit_depth=8)
        rows.append(
            {
                "case_id": cid,
                "image": f"img/{cid}.png",
                "anatomy_mask": f"mask/{cid}.png",
                "labels": "Nodule" if i % 2 else "No Finding",
                "prompt": f"chest x-ray {i}",
                "group": "a" if i % 2 else "b",
                "site": f"site{i % 3}",
            }
        )
    manifest = root / "cases.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture
def cohort(tmp_path) -> Path:
    return make_cohort(tmp_path / "cohort")
