# ruff: noqa: S102  (running the README's own examples is what these tests are for)
"""The README's "Extending" examples, applied exactly as printed and run: a metric, an evaluator, a model
kind and a report section each join their table from at most two files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import make_cohort

REPO = Path(__file__).resolve().parents[1]


def _examples() -> dict[str, str]:
    """The README's Extending code blocks by their first line (``# path, where``), that line removed."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    out = {}
    for block in blocks:
        head, _, body = block.partition("\n")
        assert head.startswith("# "), f"an Extending example must start with '# <file>': {head!r}"
        out[head[2:]] = body
    return out


EXAMPLES = _examples()


def _block(prefix: str) -> str:
    found = [body for head, body in EXAMPLES.items() if head.startswith(prefix)]
    assert len(found) == 1, f"README Extending: expected one example headed {prefix!r}, found {len(found)}"
    return found[0]


def _insert(path: Path, anchor: str, text: str, after: bool) -> None:
    source = path.read_text(encoding="utf-8")
    assert source.count(anchor) == 1, f"{path.name}: the README's example is placed at {anchor!r}"
    path.write_text(source.replace(anchor, anchor + text if after else text + anchor), encoding="utf-8")


def _write_config(root: Path, manifest: Path, pixel: Sequence[str], models: str) -> Path:
    config = root / "study.toml"
    config.write_text(
        f'[study]\nname = "ext"\ncases = "{manifest}"\noutput = "{root / "run"}"\nseed = 3\n'
        f"[metrics]\npixel = {json.dumps(list(pixel))}\nbootstrap_resamples = 200\n" + models,
        encoding="utf-8",
    )
    return config


def test_a_metric_from_the_catalogue_and_a_kernel(tmp_path):
    """Two edits to a copy of the package: the config accepts nmse, summary.csv and the report carry
    it, and the kernel agrees with scikit-image."""
    copy = tmp_path / "src"
    for package in ("audit", "reports"):
        shutil.copytree(REPO / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    _insert(
        copy / "audit/metrics/catalogue.py", "_PIXEL = (\n", _block("audit/metrics/catalogue.py"), after=True
    )
    _insert(
        copy / "audit/metrics/pixel.py",
        "# Every pixel metric of audit.metrics.catalogue",
        _block("audit/metrics/pixel.py, beside") + "\n\n",
        after=False,
    )
    _insert(
        copy / "audit/metrics/pixel.py",
        "PIXEL_KERNELS: dict[str, Kernel] = {\n",
        _block("audit/metrics/pixel.py, in PIXEL_KERNELS"),
        after=True,
    )
    manifest = make_cohort(tmp_path / "cohort", n=4)
    models = '[[models]]\nname = "real"\nkind = "real"\n[[models]]\nname = "noisy"\nkind = "degrade"\n'
    models += 'degradation = "noise"\nlevel = 0.05\n'
    config = _write_config(tmp_path, manifest, ["nmse", "psnr"], models)
    check = textwrap.dedent(
        f"""
        import numpy as np, pandas as pd, skimage.metrics as skm
        import audit.metrics.pixel
        assert audit.metrics.pixel.__file__.startswith({str(copy)!r}), audit.metrics.pixel.__file__
        from audit.cli import main
        assert main(["-q", "run", {str(config)!r}]) == 0
        run = {str(tmp_path / "run")!r}
        summary = pd.read_csv(run + "/summary.csv", keep_default_na=False)
        row = summary[(summary.metric == "nmse") & (summary.model == "noisy")].iloc[0]
        assert str(row.higher_is_better) in ("False", "false"), row
        assert "NMSE" in open(run + "/report.html", encoding="utf-8").read()
        rng = np.random.default_rng(0)
        ref = rng.uniform(0.1, 1, (3, 40, 40)).astype(np.float32)
        gen = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1).astype(np.float32)
        got = audit.metrics.pixel.score_pixels(gen, ref, ["nmse"])["nmse"]
        want = [skm.normalized_root_mse(r, g) ** 2 for r, g in zip(ref, gen)]
        np.testing.assert_allclose(got, want, rtol=1e-5)
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", check], check=False, cwd=copy, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_an_evaluator_from_its_entry_and_backend(monkeypatch):
    """The entry makes ``features = "xrv"`` a valid choice, resolved to the new backend's plan (here
    without weights, so unavailable with the fix named; a run with the DenseNet present uses it)."""
    from audit.config import parse_config
    from audit.evaluators import backends, registry
    from audit.evaluators.suite import resolve_evaluators

    namespace = {**vars(backends), "Sequence": Sequence, "np": np}
    exec(_block("audit/evaluators/backends.py"), namespace)
    entry = _block("audit/evaluators/registry.py").strip().rstrip(",")
    kind = eval(entry, {**vars(registry), "XrvFeaturesBackend": namespace["XrvFeaturesBackend"]})
    monkeypatch.setitem(registry.EVALUATORS, kind.name, kind)

    raw = {
        "study": {"name": "t", "cases": "c.csv", "output": "o"},
        "models": [{"name": "real", "kind": "real"}],
        "metrics": {"distribution": ["kid"]},
        "evaluators": {"features": "xrv"},
    }
    config = parse_config(raw)
    assert registry.pick("features", "xrv") is kind
    resolved = resolve_evaluators(config.metrics, config.evaluators)["features"]
    assert type(resolved).__name__ == "Unavailable"
    assert "densenet121-res224-all" in resolved.reason and "xray-audit weights" in resolved.reason
    # The backend keeps the DenseNet's features only (the loaded network is stood in for here).
    monkeypatch.setattr(
        backends.XrvClassifierBackend,
        "compute",
        lambda self, images: [{"probs": np.zeros(2), "features": np.ones(4)} for _ in images],
    )
    backend = object.__new__(kind.loader)
    assert [sorted(out) for out in backend.compute([np.zeros((8, 8))] * 2)] == [["features"], ["features"]]


def test_a_model_kind_from_its_module_and_entry(tmp_path, monkeypatch):
    from audit.run_plan import RunOptions

    from audit import registry
    from audit.config import load_config
    from audit.runner import run_study

    module = types.ModuleType("audit.models.mirror")
    exec(_block("audit/models/mirror.py"), vars(module))
    entry = _block("audit/registry.py").strip().rstrip(",")
    kind = eval(entry, {**vars(registry), **vars(module)})
    monkeypatch.setitem(registry.MODEL_KINDS, kind.name, kind)

    manifest = make_cohort(tmp_path / "cohort", n=3)
    models = '[[models]]\nname = "real"\nkind = "real"\n[[models]]\nname = "mirrored"\nkind = "mirror"\n'
    config = load_config(_write_config(tmp_path, manifest, ["mse", "psnr"], models))
    run_study(config, RunOptions(progress=False))

    from audit.images import read_image

    samples = pd.read_parquet(tmp_path / "run" / "samples.parquet")
    mirrored = samples[samples.model == "mirrored"].iloc[0]
    real = samples[(samples.model == "real") & (samples.case_id == mirrored.case_id)].iloc[0]
    got, ref = read_image(mirrored.path).pixels, read_image(real.path).pixels
    np.testing.assert_allclose(got, ref[:, ::-1], atol=1 / 65535)
    per_sample = pd.read_parquet(tmp_path / "run" / "per_sample.parquet")
    assert (per_sample[per_sample.model == "mirrored"].metric == "psnr").sum() == 3


def test_a_report_section_from_its_module_and_place(tmp_path, monkeypatch):
    from audit.fake_run import FakeModel, FakeRun, write_fake_run
    from reports import html

    module = types.ModuleType("reports.sections.samples")
    exec(_block("reports/sections/samples.py"), vars(module))
    assert _block("reports/html.py").strip() == "samples.SECTION,"
    monkeypatch.setattr(html, "SECTIONS", (*html.SECTIONS, module.SECTION))

    models = (FakeModel("real", "real"), FakeModel("gen", "folder", {"template": "/x/{case_id}.png"}))
    spec = FakeRun(models=models, case_ids=("c0", "c1", "c2"), metrics={"psnr": True})
    run = write_fake_run(tmp_path / "run", spec)
    page = html.render_html_report(run)
    assert '<a href="#samples">Samples</a>' in page
    section = page.split('<section id="samples">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Samples per model</h2>" in section
    assert "<tr><td>gen</td><td>3</td></tr>" in section and "<tr><td>real</td><td>3</td></tr>" in section
