"""The privacy stage's optional re-identification network (``[privacy.reid_model]``): its file checked
against the pinned sha256 before the run and loaded only from those exact bytes
(:func:`load_reid_model`), and the mean and max of its same-patient score over each image's k nearest
training images (:func:`reid_pairs`, after Packhäuser et al.)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.atomic import sha256_bytes, sha256_file
from audit.config import PrivacySection
from audit.run_plan import RunError

# Float32 elements of one block of image pairs held at once: 2^26 = 256 MiB (as audit.privacy's blocks).
BLOCK_ELEMENTS = 1 << 26


def verified_reid_sha(section: PrivacySection) -> str:
    reid = section.reid_model
    assert reid is not None
    path = Path(reid.path)
    if not path.is_file():
        raise RunError(
            f"[privacy.reid_model].path: {path} not found; fix the path or remove [privacy.reid_model]"
        )
    found = sha256_file(path)
    if found != reid.sha256.lower():
        raise RunError(
            f"[privacy.reid_model]: {path} has sha256 {found} but the config pins {reid.sha256.lower()}; it "
            "was not loaded. Restore the pinned file, or update [privacy.reid_model].sha256 if the change is "
            "intended"
        )
    return found


def reid_pairs(
    section: PrivacySection,
    pixels: Callable[[Sequence[str]], np.ndarray],
    queries: Sequence[str],
    f_idx: np.ndarray,
    train: Sequence[str],
    device: str,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the mean and max re-ID score over its k nearest training images (feature space,
    ``f_idx``); ``pixels`` gives the pixel vectors of images by sha256 (the pixel space's cache)."""
    import torch

    from audit.metrics.functional.privacy import reid_scores

    reid = section.reid_model
    assert reid is not None
    model = load_reid_model(Path(reid.path), reid.sha256, device)
    size = section.pixel_size
    n, k = f_idx.shape
    pairwise = np.empty((n, k), dtype=np.float64)
    rows = max(1, BLOCK_ELEMENTS // (size * size * (k + 1)))
    for start in range(0, n, rows):
        q = pixels(queries[start : start + rows]).reshape(-1, 1, size, size)
        nb = f_idx[start : start + rows]
        t = pixels([train[i] for i in nb.reshape(-1)]).reshape(-1, 1, size, size)
        a = np.repeat(q, k, axis=0)  # pair (query i, its j-th neighbour) at row i * k + j
        scores = []
        with torch.no_grad():
            for b in range(0, len(a), batch_size):
                xa = torch.from_numpy(a[b : b + batch_size]).to(device)
                xb = torch.from_numpy(t[b : b + batch_size]).to(device)
                scores.append(
                    np.asarray(model(xa, xb).detach().float().cpu().numpy(), dtype=np.float64).reshape(-1)
                )
        s = np.concatenate(scores)
        if s.shape != (len(a),) or not np.all((s >= 0) & (s <= 1)):
            span = f" spanning [{np.nanmin(s):g}, {np.nanmax(s):g}]" if s.size else ""
            raise RunError(
                f"[privacy.reid_model] {reid.path}: expected one score in [0, 1] per image pair, got "
                f"{s.size} value(s) for {len(a)} pair(s){span}; the network must map two (N, 1, S, S) "
                "batches in [0, 1] to (N,) same-patient probabilities"
            )
        pairwise[start : start + len(nb)] = s.reshape(len(nb), k)
    mean, worst = reid_scores(pairwise)
    return np.asarray(mean, dtype=np.float64), np.asarray(worst, dtype=np.float64)


def load_reid_model(path: Path, sha256: str, device: str) -> Any:
    """The TorchScript re-ID network, loaded from exactly the bytes whose hash matches the pin (a file
    swapped after the run's first check is refused, never loaded)."""
    import torch

    data = Path(path).read_bytes()
    found = sha256_bytes(data)
    if found != sha256.lower():
        raise RunError(
            f"[privacy.reid_model]: {path} has sha256 {found} but the config pins {sha256.lower()}; it was "
            "not loaded. Restore the pinned file, or update [privacy.reid_model].sha256 if the change is intended"
        )
    model = torch.jit.load(io.BytesIO(data), map_location=device)
    model.eval()
    return model
