"""The run directory: the contract between ``audit`` (writer) and reports, dashboards and the
reader study (readers). Torch-free on purpose, so readers can import it.

Layout of ``<output>/`` after ``xray-audit run STUDY.toml``::

    run.json            versions, config hash, timings, counts
    config.toml         the resolved study config (absolute paths)
    cases.parquet       the case manifest as loaded (image/mask paths made absolute)
    samples.parquet     one row per (model, case_id, sample):
                        model, case_id, sample, seed, path, sha256  (+ kind)
    per_sample.parquet  long format: model, case_id, sample, metric, value
    summary.csv         model, metric, value, ci_low, ci_high, n, higher_is_better (+ unit)
    failures.csv        model, case_id, sample, stage, error   (only when something failed)
    report.html         self-contained report
    samples/<model>/    images the suite generated itself (degrade baselines, later diffusers)
    parts/              resumable per-(model, chunk) shards; safe to delete after a finished run

Every file is written atomically (temp file + rename), so a reader never sees a half file.
"""

from __future__ import annotations

from pathlib import Path

RUN_JSON = "run.json"
CONFIG_TOML = "config.toml"
CASES = "cases.parquet"
SAMPLES = "samples.parquet"
PER_SAMPLE = "per_sample.parquet"
SUMMARY = "summary.csv"
FAILURES = "failures.csv"
REPORT_HTML = "report.html"
SAMPLES_DIR = "samples"
PARTS_DIR = "parts"

SAMPLES_COLUMNS = ("model", "case_id", "sample", "seed", "path", "sha256")
# After SAMPLES_COLUMNS and `kind` in samples.parquet: how a generated sample was made (null for
# models that do not generate). `weights` is a revision or a hash of the weights; `seconds` is the
# sample's share of its batch's wall time.
GENERATION_COLUMNS = (
    "steps",
    "guidance",
    "strength",
    "scheduler",
    "dtype",
    "weights",
    "prompt",
    "perturbation",
    "seconds",
)
PER_SAMPLE_COLUMNS = ("model", "case_id", "sample", "metric", "value")
SUMMARY_COLUMNS = ("model", "metric", "value", "ci_low", "ci_high", "n", "higher_is_better")
FAILURES_COLUMNS = ("model", "case_id", "sample", "stage", "error")


def require_run_dir(path: str | Path) -> Path:
    """Return ``path`` if it holds a finished run, else raise a clear error."""
    run = Path(path)
    missing = [name for name in (RUN_JSON, SUMMARY, SAMPLES, PER_SAMPLE) if not (run / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{run} is not a finished xray-audit run directory (missing {', '.join(missing)}); "
            f"run `xray-audit run STUDY.toml` first"
        )
    return run
