"""Images/s and peak memory of each generating kind, against a plain diffusers loop in the same run.

    python benchmarks/generation.py [--out results.json] [--cases N] [--model-dir DIR --controlnet-dir DIR
                                    --inpaint-dir DIR] [--device auto] [--dtype fp32] [--steps S]
                                    [--size PX] [--batch-size B]

For each kind (``diffusers-text2img``, ``-controlnet``, ``-img2img``, ``-inpaint``) two
configurations run, each in its own fresh subprocess so that its peak memory is its own:

* ``baseline``: the pipeline called directly in a loop over the same prompts/conditions at the same
  batch size, steps and size (what a hand-written script does), outputs converted to numpy and
  discarded;
* ``suite``: ``xray-audit run`` on the same cases with that model (loading, per-sample generators,
  output checks, PNG writing, journaling; no metrics).

Reported: steady-state images/s (the first batch is warm-up and excluded; loading is measured
separately), peak RSS and, on CUDA, peak GPU memory, and the suite/baseline ratios. Without
``--model-dir`` the models are the tiny random-init pipelines of ``tests/tiny_pipelines.py`` (32 px):
those figures measure the suite's per-image overhead, not a real model's speed. With a GPU and
real checkpoints (e.g. an SD 1.5 fine-tune, a ControlNet and an inpainting model) they are the
throughput a user will see; record those with the device name.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
KINDS = ("diffusers-text2img", "diffusers-controlnet", "diffusers-img2img", "diffusers-inpaint")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _setup(work: Path, args: dict[str, Any]) -> dict[str, Any]:
    """Cases (the conftest phantom cohort with RGB structure masks and pathology masks) and models."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(_REPO))
    from audit.images import write_png
    from tests.conftest import make_cohort

    manifest = make_cohort(work / "cohort", n=args["cases"], size=max(64, args["size"]))
    frame = pd.read_csv(manifest, dtype=str)
    size = max(64, args["size"])
    controls, pmasks = [], []
    for i, cid in enumerate(frame.case_id):
        m = np.zeros((size, size, 3), dtype=bool)
        m[size // 6 : size * 5 // 6, size // 12 : size * 5 // 12, 0] = True
        m[size // 6 : size * 5 // 6, size * 7 // 12 : size * 11 // 12, 0] = True
        m[size // 2 : size * 5 // 6, size * 5 // 12 : size * 7 // 12, 1] = True
        write_png(work / "cohort" / "mask" / f"{cid}-rgb.png", m.astype(np.uint8) * 255)
        p = np.zeros((size, size), dtype=bool)
        p[size // 3 + i % 5 : size // 2 + i % 5, size // 4 : size // 3] = True
        write_png(work / "cohort" / "mask" / f"{cid}-path.png", p)
        controls.append(f"mask/{cid}-rgb.png")
        pmasks.append(f"mask/{cid}-path.png")
    frame["control"], frame["pathology_mask"] = controls, pmasks
    frame.to_csv(manifest, index=False)
    if args["model_dir"]:
        models = {"sd": args["model_dir"], "cn": args["controlnet_dir"], "inpaint": args["inpaint_dir"]}
    else:
        from tests.tiny_pipelines import save_controlnet, save_sd

        models = {
            "sd": str(save_sd(work / "sd")),
            "cn": str(save_controlnet(work / "cn")),
            "inpaint": str(save_sd(work / "inpaint", inpaint=True)),
        }
    return {"manifest": str(manifest), "models": models}


def _model_toml(kind: str, setup: dict[str, Any], args: dict[str, Any]) -> list[str]:
    m = setup["models"]
    lines = [
        "[[models]]",
        'name = "bench"',
        f'kind = "{kind}"',
        f"path = {json.dumps(m['inpaint'] if kind == 'diffusers-inpaint' else m['sd'])}",
        f"steps = {args['steps']}",
        f"height = {args['size']}",
        f"width = {args['size']}",
        f"batch_size = {args['batch_size']}",
        f'dtype = "{args["dtype"]}"',
        f'device = "{args["device"]}"',
    ]
    if kind == "diffusers-controlnet":
        lines += [f"controlnet = {json.dumps(m['cn'])}", 'condition = "control"', 'encoding = "structures"']
    if kind == "diffusers-img2img":
        lines += ['condition = "control"', 'encoding = "structures"']
    return lines


def _suite_child(kind: str, setup: dict[str, Any], args: dict[str, Any], work: Path) -> dict[str, Any]:
    from audit.config import load_config
    from audit.run_plan import RunOptions
    from audit.runner import run_study

    toml = work / f"{kind}.toml"
    text = [
        "[study]",
        'name = "generation-benchmark"',
        f"cases = {json.dumps(setup['manifest'])}",
        f"output = {json.dumps(str(work / ('run-' + kind)))}",
        "seed = 0",
        "",
        *_model_toml(kind, setup, args),
        "",
        "[metrics]",
        "pixel = []",
        "",
    ]
    toml.write_text("\n".join(text))
    run_study(load_config(toml), RunOptions(progress=False))
    info = json.loads((work / f"run-{kind}" / "run.json").read_text())["generation"]["bench"]
    proc = info["this_process"]
    import pandas as pd

    # Per-sample seconds are each batch's wall time shared out; the first batch is warm-up.
    seconds = pd.read_parquet(work / f"run-{kind}" / "samples.parquet")["seconds"].to_numpy()
    steady = seconds[args["batch_size"] :]
    return {
        "mode": "suite",
        "kind": kind,
        "images": info["samples"],
        "failed": info["failed"],
        "seconds": float(steady.sum()),
        "first_batch_seconds": float(seconds[: args["batch_size"]].sum()),
        "load_seconds": proc["load_seconds"],
        "images_per_s": len(steady) / float(steady.sum()),
        "peak_rss_mb": _maxrss_mb(),
        "peak_gpu_mb": proc.get("peak_gpu_memory_mb"),
        "device": proc.get("gpu") or proc["device"],
    }


def _baseline_child(kind: str, setup: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """The plain loop a user would write: same pipeline, prompts, conditions, batch size, steps."""
    import numpy as np
    import pandas as pd
    import torch
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
        ControlNetModel,
    )
    from PIL import Image

    from audit.models.generation import TORCH_DTYPES

    dtype = getattr(torch, TORCH_DTYPES[args["dtype"]])
    device = torch.device(
        "cuda"
        if args["device"] == "auto" and torch.cuda.is_available()
        else ("cpu" if args["device"] == "auto" else args["device"])
    )
    m = setup["models"]
    t = time.perf_counter()
    if kind == "diffusers-controlnet":
        net = ControlNetModel.from_pretrained(m["cn"], torch_dtype=dtype)
        pipe = AutoPipelineForText2Image.from_pretrained(m["sd"], controlnet=net, torch_dtype=dtype)
    elif kind == "diffusers-img2img":
        pipe = AutoPipelineForImage2Image.from_pretrained(m["sd"], torch_dtype=dtype)
    elif kind == "diffusers-inpaint":
        pipe = AutoPipelineForInpainting.from_pretrained(m["inpaint"], torch_dtype=dtype)
    else:
        pipe = AutoPipelineForText2Image.from_pretrained(m["sd"], torch_dtype=dtype)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    manifest = Path(setup["manifest"])
    frame = pd.read_csv(manifest, dtype=str)
    size = (args["size"], args["size"])

    def rgb(path: str, mode: str = "RGB") -> Image.Image:
        return Image.open(manifest.parent / path).convert(mode).resize(size)

    n = len(frame)
    bs = args["batch_size"]
    batch_seconds = []
    for i in range(0, n, bs):
        start = time.perf_counter()
        rows = frame.iloc[i : i + bs]
        kw: dict[str, Any] = {}
        if kind == "diffusers-controlnet":
            kw = {"image": [rgb(p) for p in rows.control], "height": size[0], "width": size[1]}
        elif kind == "diffusers-img2img":
            kw = {"image": [rgb(p) for p in rows.control], "strength": 0.6}
        elif kind == "diffusers-inpaint":
            kw = {
                "image": [rgb(p) for p in rows.image],
                "mask_image": [rgb(p, "L") for p in rows.pathology_mask],
                "height": size[0],
                "width": size[1],
            }
        else:
            kw = {"height": size[0], "width": size[1]}
        prompts = list(rows.prompt) if kind != "diffusers-inpaint" else list(rows.labels)
        gens = [torch.Generator("cpu").manual_seed(i + j) for j in range(len(rows))]
        with torch.inference_mode():
            out = pipe(
                prompts, num_inference_steps=args["steps"], generator=gens, output_type="np", **kw
            ).images
        np.asarray(out).mean()
        batch_seconds.append(time.perf_counter() - start)
    seconds = sum(batch_seconds[1:])  # the first batch is warm-up (lazy init, kernel selection)
    return {
        "mode": "baseline",
        "kind": kind,
        "images": n,
        "seconds": seconds,
        "first_batch_seconds": batch_seconds[0],
        "load_seconds": load,
        "images_per_s": (n - min(bs, n)) / seconds,
        "peak_rss_mb": _maxrss_mb(),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if device.type == "cuda"
        else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def _run_child(*args: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"benchmark child {' '.join(args[:2])} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--cases", type=int, default=32, help="at least two batches (the first is warm-up)")
    parser.add_argument(
        "--model-dir", help="a real text-to-image pipeline directory (default: tiny test models)"
    )
    parser.add_argument("--controlnet-dir", help="a real ControlNet directory (with --model-dir)")
    parser.add_argument("--inpaint-dir", help="a real inpainting pipeline directory (with --model-dir)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument(
        "--steps", type=int, default=None, help="default: 50 with real models, 4 with tiny ones"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="default: 512 with real models, 32 with tiny ones"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind_of_run, kind, setup_file, args_file, work = args.child
        setup, opts = json.loads(Path(setup_file).read_text()), json.loads(Path(args_file).read_text())
        if kind_of_run == "setup":
            print(json.dumps(_setup(Path(work), opts)))
            return 0
        result = (
            _suite_child(kind, setup, opts, Path(work))
            if kind_of_run == "suite"
            else _baseline_child(kind, setup, opts)
        )
        print(json.dumps(result))
        return 0

    real = bool(args.model_dir)
    opts = {
        "cases": args.cases,
        "model_dir": args.model_dir,
        "controlnet_dir": args.controlnet_dir,
        "inpaint_dir": args.inpaint_dir,
        "device": args.device,
        "dtype": args.dtype,
        "steps": args.steps or (50 if real else 4),
        "size": args.size or (512 if real else 32),
        "batch_size": args.batch_size,
    }
    kinds = [k for k in args.kinds.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="xray-audit-genbench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("XRAY_AUDIT_HOME", str(work / "home"))
        (work / "args.json").write_text(json.dumps(opts))
        (work / "empty.json").write_text("{}")
        setup = _run_child("setup", "-", str(work / "empty.json"), str(work / "args.json"), str(work))
        (work / "setup.json").write_text(json.dumps(setup))
        results = []
        for kind in kinds:
            for mode in ("baseline", "suite"):
                results.append(
                    _run_child(mode, kind, str(work / "setup.json"), str(work / "args.json"), str(work))
                )
    device = results[0]["device"] if results else "?"
    print(
        f"{device}; {opts['cases']} cases, {opts['size']} px, {opts['steps']} steps, batch {opts['batch_size']}, "
        f"{opts['dtype']}; models: {'given' if real else 'tiny random-init test pipelines (overhead only)'}\n"
    )
    print(
        "| kind | baseline img/s | suite img/s | suite/baseline | load s (suite) | peak RSS MB baseline / suite | peak GPU MB baseline / suite |"
    )
    print("|---|---|---|---|---|---|---|")
    by = {(r["kind"], r["mode"]): r for r in results}
    for kind in kinds:
        b, s = by[(kind, "baseline")], by[(kind, "suite")]
        gpu = "n/a" if b["peak_gpu_mb"] is None else f"{b['peak_gpu_mb']:.0f} / {s['peak_gpu_mb']:.0f}"
        print(
            f"| {kind} | {b['images_per_s']:.2f} | {s['images_per_s']:.2f} | {s['images_per_s'] / b['images_per_s']:.2f}× "
            f"| {s['load_seconds']:.1f} | {b['peak_rss_mb']:.0f} / {s['peak_rss_mb']:.0f} ({s['peak_rss_mb'] / b['peak_rss_mb']:.2f}×) | {gpu} |"
        )
    if args.out:
        from audit.atomic import write_text

        write_text(args.out, json.dumps({"options": opts, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
