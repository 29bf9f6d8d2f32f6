"""How long the evaluator networks of a run take on CPU, and the warning ``xray-audit run`` logs first
when that would be over 30 minutes.

Pure: no torch, no files. The runner counts the images each network still has to evaluate
(:class:`NetworkWork`); :func:`slow_cpu_warning` divides them by the measured CPU throughput below and
returns the warning text, or ``None`` when the run is short or will not run on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

# CPU images/s of each evaluator network, keyed by a prefix of its evaluator name (the longest
# matching prefix wins): 2-core development machine (torch 2.14, 2 threads, float32), batch size 16,
# preprocessing included, decoding excluded; the pretrained architectures with random-init weights
# (speed does not depend on weight values). Measured 2026-12-05 on a quiet machine (1-min load 0.4)
# with
#   python benchmarks/evaluators.py --only evaluators
# Under load from other processes the big networks ran up to 1.5-2x slower (PSPNet 0.18, RadDino
# 0.25 images/s), so a warning's estimate is a lower bound of a shared machine's time.
CPU_IMAGES_PER_S: dict[str, float] = {
    "demo-nodule-classifier": 194.5,  # 256 px
    "demo-anatomy-segmenter": 72.5,  # 128 px U-Net; one pass gives the masks and the demo features
    "xrv-densenet121": 14.8,  # every xrv-densenet121-res224-* classifier, 224 px
    "inception-v3": 10.2,  # torch-fidelity Inception-v3, 299 px
    "xrv-pspnet": 0.26,  # xrv PSPNet (ChestX-Det), 512 px
    "rad-dino": 0.48,  # DINOv2 ViT-B/14 at 518 px (HFFeatures + its BitImageProcessor)
    "hf:microsoft/rad-dino": 0.48,  # the same network named by its Hugging Face id
}
MEASURED_CORES = 2
SLOW_CPU_SECONDS = 30 * 60
FIX = 'pass `--device cuda` (or set [evaluators].device = "cuda") on a machine with a GPU'


@dataclasses.dataclass(frozen=True)
class NetworkWork:
    """Images one evaluator network still has to evaluate in this run (``upper_bound``: at most)."""

    evaluator: str
    images: int
    upper_bound: bool = True


def cpu_images_per_s(evaluator: str) -> float | None:
    """Measured CPU images/s of ``evaluator`` (an evaluator name), or None when never measured."""
    prefixes = [p for p in CPU_IMAGES_PER_S if evaluator.startswith(p)]
    return CPU_IMAGES_PER_S[max(prefixes, key=len)] if prefixes else None


def cpu_seconds(work: Sequence[NetworkWork]) -> float:
    """Estimated CPU seconds of ``work``, counting only the networks whose speed was measured."""
    total = 0.0
    for w in work:
        rate = cpu_images_per_s(w.evaluator)
        if rate and w.images > 0:
            total += w.images / rate
    return total


def format_duration(seconds: float) -> str:
    """``4 h 27 min``, ``35 min``, ``under a minute`` (rounded to the minute)."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def slow_cpu_warning(
    work: Sequence[NetworkWork],
    device: str,
    cuda_available: Callable[[], bool],
    *,
    threshold_s: float = SLOW_CPU_SECONDS,
) -> str | None:
    """The warning for a run whose evaluators would take over ``threshold_s`` on CPU, else None.

    ``device`` is ``[evaluators].device``: ``cuda``/``cuda:N`` never warn, ``auto`` only when
    ``cuda_available()`` is false (called only for a slow run, so a short one never imports torch).
    """
    if device != "cpu" and device != "auto":
        return None
    seconds = cpu_seconds(work)
    if seconds <= threshold_s or (device == "auto" and cuda_available()):
        return None
    known = [(w, rate) for w in work if w.images > 0 and (rate := cpu_images_per_s(w.evaluator))]
    known.sort(key=lambda wr: -wr[0].images / wr[1])
    unknown = sorted({w.evaluator for w in work if w.images > 0 and not cpu_images_per_s(w.evaluator)})
    if len(known) == 1:
        w, rate = known[0]
        text = (
            f"evaluating {_images(w)} with {w.evaluator} on CPU will take about {format_duration(seconds)} "
            f"({rate:.3g} images/s measured on {MEASURED_CORES} cores)"
        )
    else:
        parts = [
            f"{_images(w)} with {w.evaluator} ({format_duration(w.images / rate)} at {rate:.3g} images/s)"
            for w, rate in known
        ]
        text = (
            f"evaluating on CPU will take about {format_duration(seconds)}: {', '.join(parts)} "
            f"(measured on {MEASURED_CORES} cores)"
        )
    if unknown:
        text += f", not counting {', '.join(unknown)} (speed not measured)"
    return f"{text}; {FIX}"


def _images(w: NetworkWork) -> str:
    return f"{'up to ' if w.upper_bound else ''}{w.images:,} image{'s' if w.images != 1 else ''}"
