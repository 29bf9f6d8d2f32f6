"""The privacy / memorisation stage of ``xray-audit run`` (turned on by ``[privacy]``).

Every sample of the run, and every held-out reference of the study (the calibration), is matched to
its nearest images of the generator's training set (``[privacy].training_cases``) twice: in an
embedding space (cosine distance, ``k`` neighbours kept) and in pixel space (L2 / √pixels on
``pixel_size``² centre crops in [0, 1]). The held-out references were never seen by the generator,
so their own nearest-training distances say how close an unseen patient of the same population
comes to the training set by chance. A sample strictly below either space's threshold is flagged as a
training copy; both thresholds sit at one quantile level of those distances
(:func:`~audit.metrics.functional.privacy.calibration_threshold`), chosen so that ``quantile`` of the
references is flagged by the union (:func:`union_thresholds`): the ``real`` row reads ≈ ``quantile``. Authenticity (Alaa et al. 2022) compares a sample's distance
with its training neighbour's own distance to the nearest other training image; ``privacy_auc`` is
the Mann-Whitney AUC of a model's distances against the references' (0.5: as far from the training
set as unseen patients; below: closer); ``alpha_precision`` and ``beta_recall`` (same paper) measure
the samples' fidelity and diversity against the references in the same embedding. An optional
re-identification network scores each (sample, training neighbour) pair.

Which embedding ``[privacy].features`` names (:data:`FEATURE_SOURCES`, resolved with
:func:`audit.evaluators.suite.resolve_evaluators`, so weights are verified exactly as for FID):

=============  ==========  ======================================================================
value          role        embedding
=============  ==========  ======================================================================
``auto``       raddino     RadDino's CLS embedding when its verified weights are present, else the
                           ``[evaluators].features`` evaluator below
``raddino``    raddino     RadDino (microsoft/rad-dino at the pinned commit), CLS embedding
``xrv``        classifier  the torchxrayvision DenseNet-121's pooled features (``classifier_weights``)
``inception``  features    Inception-v3 pool3 (the FID network)
``demo``       features    the demo anatomy U-Net's encoder features (demo cohort only)
``hf:…``       features    that Hugging Face backbone's pooler_output
``user``       classifier  the output vector of ``[evaluators.user_classifier]`` (only meaningful
                           when that network was trained as an embedding)
=============  ==========  ======================================================================

Features and pixel vectors are cached by image content in the shared feature cache (the same
entries as FID's where the network is the same), and file hashes in ``parts/privacy/``, so a rerun
recomputes the neighbours from cached vectors without loading a network or decoding an image.
Training and query sets are streamed in blocks from the cache: memory stays flat in both set sizes.
The stage writes ``privacy.parquet`` and ``privacy_training.parquet`` (see :mod:`audit.rundir`) and
returns the per-sample metric rows, the ``privacy_auc``, ``alpha_precision`` and ``beta_recall`` summary
rows and run.json's ``"privacy"``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from audit import images, rundir
from audit.atomic import sha256_file
from audit.cases import Manifest, ManifestError, load_manifest
from audit.config import PrivacySection, StudyConfig
from audit.evaluators import speed
from audit.evaluators.plan import EvaluatorPlan, Role, Unavailable
from audit.feature_cache import EvaluatorKey, FeatureCache, compute_with_cache, default_cache_root
from audit.privacy_reid import reid_pairs, verified_reid_sha
from audit.privacy_summary import ALPHA_BETA_METRICS, alpha_beta_rows, auc_rows, memorised_rows
from audit.run_plan import RunError, write_parquet

log = logging.getLogger(__name__)

# [privacy].features -> (role, the [evaluators] value that picks the network for that role, a
# [metrics] entry that needs the role: resolve_evaluators resolves roles for the entries it is given).
FEATURE_SOURCES: dict[str, tuple[Role, str, str]] = {
    "raddino": ("raddino", "rad-dino", "fd_raddino"),
    "xrv": ("classifier", "xrv", "fxd"),
    "user": ("classifier", "user", "fxd"),
    "inception": ("features", "inception", "fid"),
    "demo": ("features", "demo", "fid"),
}
FEATURE_METRIC = "cosine"
PIXEL_METRIC = "l2"
# Bump when pixel_vectors' output changes meaning: part of the pixel cache key.
PIXEL_VERSION = "privacy-pixels-v1"
# Float32 elements of one block of vectors (query or training) held at once: 2^26 = 256 MiB.
BLOCK_ELEMENTS = 1 << 26
PRIVACY_DIR = "privacy"  # under parts/: the file-hash journal
# RMS pixel difference (on [0, 1], at pixel_size) at or below which two images are the same picture
# saved twice: one 8-bit grey level, above lossless re-encoding and metadata edits, far below the distance
# between two patients' radiographs (the demo's nearest held-out patient: 0.03).
SAME_IMAGE = 1 / 255
PRIVACY_METRICS = (
    "nn_distance",
    "nn_distance_pixel",
    "memorised_fraction",
    "authenticity",
    "reid_score",
    "reid_score_max",
)
_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("case_id", pa.string()),
        ("sample", pa.int64()),
        ("train_case_id", pa.string()),
        ("nn_distance", pa.float64()),
        ("pixel_train_case_id", pa.string()),
        ("nn_distance_pixel", pa.float64()),
        ("pixel_mirrored", pa.bool_()),
        ("flagged", pa.bool_()),
        ("flagged_by", pa.string()),
        ("authentic", pa.bool_()),
        ("reid_score", pa.float64()),
        ("reid_score_max", pa.float64()),
    ]
)
assert tuple(_SCHEMA.names) == rundir.PRIVACY_COLUMNS


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """What the stage works from, checked before any generation: the resolved embedding, the training
    set with its hashes, the references' hashes, and the verified re-ID file's hash."""

    section: PrivacySection
    features: EvaluatorPlan
    vector: str  # the output of the features plan used as the embedding ("features" or "probs")
    training: pd.DataFrame  # case_id, image (absolute), sha256: privacy_training.parquet
    references: pd.DataFrame  # case_id, sha256 of the held-out references, in manifest order
    training_manifest_sha256: str
    reid_sha256: str | None


@dataclasses.dataclass(frozen=True)
class PrivacyResult:
    per_sample: pd.DataFrame  # model, case_id, sample, metric, value (audit.rundir.PER_SAMPLE_COLUMNS)
    summary_rows: list[dict[str, Any]]  # privacy_auc, α/β per model and group, as distribution rows
    info: dict[str, Any]  # run.json "privacy"
    evaluators: dict[str, str]  # metric -> what computed it (summary.csv's evaluator column)


# --------------------------------------------------------------------------------------------- prepare


def prepare_privacy(config: StudyConfig, manifest: Manifest, out: Path) -> PrivacyPlan | None:
    """Check ``[privacy]`` before any work: the training manifest, that no held-out reference is a
    training image, the embedding's weights and the re-ID file's hash. None without ``[privacy]``."""
    section = config.privacy
    if section is None:
        return None
    where = f"[privacy].training_cases ({section.training_cases})"
    try:
        training = load_manifest(section.training_cases, check_pixels=False)
    except FileNotFoundError:
        raise RunError(
            f"{where}: the training manifest was not found; point training_cases at the case manifest "
            "(case_id, image) of the images the generator was trained on"
        ) from None
    except ManifestError as exc:
        if any("no rows" in p.message for p in exc.problems):
            raise RunError(
                f"{where}: the training set is empty (the manifest has no rows). The privacy audit compares "
                "every sample with the generator's training images: list them (case_id, image), or remove "
                "[privacy]"
            ) from None
        raise RunError(f"{where}: {exc}\nFix the rows named above in the training manifest") from None
    if len(training) < 2:
        raise RunError(
            f"{where}: {len(training)} training image(s); the audit needs at least 2 (authenticity compares "
            "each training image with its nearest other training image)"
        )
    journal = out / rundir.PARTS_DIR / PRIVACY_DIR / "file_hashes.parquet"
    train_frame = training.frame
    ref_frame = manifest.frame
    shas = _hash_files([*train_frame["image"], *ref_frame["image"]], journal)
    train = pd.DataFrame(
        {
            "case_id": train_frame["case_id"].astype(str).to_numpy(),
            "image": train_frame["image"].astype(str).to_numpy(),
            "sha256": shas[: len(train_frame)],
        }
    )
    refs = pd.DataFrame(
        {"case_id": ref_frame["case_id"].astype(str).to_numpy(), "sha256": shas[len(train_frame) :]}
    )
    _check_overlap(train, refs, section, config)
    plan = resolve_features(section, config)
    if isinstance(plan, Unavailable):
        raise RunError(f"[privacy].features = {section.features!r} cannot be used: {plan.reason}")
    reid_sha = None
    if section.reid_model is not None:
        reid_sha = verified_reid_sha(section)
    vector = "probs" if plan.source == "user" else "features"
    return PrivacyPlan(section, plan, vector, train, refs, sha256_file(training.path), reid_sha)


def privacy_evaluators(plan: PrivacyPlan) -> dict[str, str]:
    """The network behind each privacy metric, for summary.csv's evaluator column (as for the scoring
    networks): the embedding, or the pinned re-ID file. nn_distance_pixel has none (pixels against
    pixels); memorised_fraction's only network is the embedding."""
    features = plan.features.name
    out = dict.fromkeys(
        ("nn_distance", "authenticity", "privacy_auc", "memorised_fraction", *ALPHA_BETA_METRICS), features
    )
    if plan.section.reid_model is not None:
        out |= dict.fromkeys(
            ("reid_score", "reid_score_max"), f"re-ID model {Path(plan.section.reid_model.path).name}"
        )
    return out


def privacy_work(plan: PrivacyPlan, config: StudyConfig, queries: int) -> speed.NetworkWork:
    """What the privacy embedding may still evaluate, for the slow-CPU warning: the training images
    not in its feature cache (exact: their hashes are known before the run), plus ``queries``, an
    upper bound on the references and samples it embeds itself (0 when a scoring network is the same
    one and caches them)."""
    root = config.evaluators.cache_dir or default_cache_root(config.study.output)
    missing = FeatureCache(root, plan.features.key).missing(list(plan.training["sha256"]))
    return speed.NetworkWork(plan.features.name, len(missing) + queries, upper_bound=queries > 0)


def _check_overlap(
    train: pd.DataFrame, refs: pd.DataFrame, section: PrivacySection, config: StudyConfig
) -> None:
    """A held-out reference that is also a training image would calibrate the threshold on a copy."""
    by_sha = train.groupby("sha256")["case_id"].apply(list).to_dict()
    pairs = [(c, by_sha[s]) for c, s in zip(refs["case_id"], refs["sha256"], strict=True) if s in by_sha]
    if not pairs:
        return
    lines = [f"  - case {c} = training case(s) {', '.join(t)}" for c, t in pairs[:50]]
    more = f"\n  … and {len(pairs) - 50} more" if len(pairs) > 50 else ""
    fix = (
        "The references calibrate the memorisation threshold and must be patients the generator never saw: "
        "remove these cases from one of the two manifests (the study's cases or [privacy].training_cases)."
    )
    raise RunError(
        f"{len(pairs)} held-out reference(s) of {config.study.cases} are byte-identical to training images of "
        f"{section.training_cases}:\n" + "\n".join(lines) + f"{more}\n{fix}"
    )


def _check_pixel_overlap(plan: PrivacyPlan, found: _Found, ref_rows: np.ndarray) -> None:
    """A held-out reference within :data:`SAME_IMAGE` of a training image in pixel space is that image
    saved again (re-encoded, metadata changed, or mirrored): the file hashes of :func:`_check_overlap`
    differ, but the calibration would still rest on a training image, and every threshold would drop."""
    dist = found.p_dist[ref_rows, 0]
    hits = np.flatnonzero(dist <= SAME_IMAGE)
    if not hits.size:
        return
    train_ids = plan.training["case_id"].to_numpy(str)
    ref_ids = plan.references["case_id"].to_numpy(str)
    lines = []
    for i in hits[:50]:
        how = ", mirrored" if found.p_mirrored[ref_rows[i]] else ""
        lines.append(
            f"  - case {ref_ids[i]} ≈ training case {train_ids[found.p_idx[ref_rows[i], 0]]} "
            f"(RMS pixel difference {dist[i]:.5f}{how})"
        )
    more = f"\n  … and {hits.size - 50} more" if hits.size > 50 else ""
    raise RunError(
        f"{hits.size} held-out reference(s) have the same pixels as a training image of "
        f"{plan.section.training_cases} (RMS difference at most {SAME_IMAGE:.4f} on [0, 1] at "
        f"{plan.section.pixel_size} px, though the files differ):\n" + "\n".join(lines) + f"{more}\n"
        "The references calibrate the memorisation threshold and must be patients the generator never saw: "
        "remove these cases from one of the two manifests (the study's cases or [privacy].training_cases)."
    )


def resolve_features(section: PrivacySection, config: StudyConfig) -> EvaluatorPlan | Unavailable:
    """The evaluator plan of ``[privacy].features`` (see the table in the module docstring)."""
    evaluators = config.evaluators
    choice = section.features
    if choice == "auto":
        raddino = _resolve("raddino", "rad-dino", "fd_raddino", config)
        if isinstance(raddino, EvaluatorPlan):
            return dataclasses.replace(raddino, note="privacy auto: verified RadDino weights present")
        fallback = _resolve("features", evaluators.features, "fid", config)
        if isinstance(fallback, EvaluatorPlan):
            note = f"privacy auto: RadDino unavailable, so [evaluators].features ({fallback.name}) was used"
            return dataclasses.replace(fallback, note="; ".join(n for n in (fallback.note, note) if n))
        return Unavailable(
            fallback.role,
            f"auto tries RadDino, then [evaluators].features. RadDino: {raddino.reason}; "
            f"[evaluators].features = {evaluators.features!r}: {fallback.reason}",
        )
    if choice.startswith("hf:"):
        return _resolve("features", choice, "fid", config)
    role, value, entry = FEATURE_SOURCES[choice]
    return _resolve(role, value, entry, config)


def _resolve(role: Role, value: str, entry: str, config: StudyConfig) -> EvaluatorPlan | Unavailable:
    from audit.config import MetricsSection
    from audit.evaluators.suite import resolve_evaluators

    ev = config.evaluators
    if role == "features":
        # [evaluators].hf_sha256 pins the backbone [evaluators].features names, not another one.
        pins = ev.hf_sha256 if value == ev.features else {}
        ev = dataclasses.replace(ev, features=value, hf_sha256=pins)
    elif role == "classifier":
        ev = dataclasses.replace(ev, classifier=value)
    return resolve_evaluators(MetricsSection(pixel=(), distribution=(entry,)), ev)[role]


def _hash_files(paths: Sequence[str], journal: Path) -> list[str]:
    """sha256 of every file, reusing the journal's hash of a file whose size and mtime are unchanged
    (a rerun over 100k training images then only stats them)."""
    known: dict[str, tuple[int, int, str]] = {}
    if journal.is_file():
        try:
            old = pq.read_table(journal).to_pandas()
            known = {
                p: (int(s), int(m), h)
                for p, s, m, h in zip(old["path"], old["size"], old["mtime_ns"], old["sha256"], strict=True)
            }
        except (OSError, pa.ArrowException, KeyError):
            known = {}  # a damaged journal only costs the hashing
    out: list[str] = []
    rows: dict[str, tuple[int, int, str]] = {}
    for p in paths:
        st = Path(p).stat()
        hit = known.get(p)
        sha = hit[2] if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns) else sha256_file(p)
        rows[p] = (st.st_size, st.st_mtime_ns, sha)
        out.append(sha)
    if rows != {p: known.get(p) for p in rows}:
        frame = pd.DataFrame(
            [(p, s, m, h) for p, (s, m, h) in rows.items()], columns=["path", "size", "mtime_ns", "sha256"]
        )
        write_parquet(pa.Table.from_pandas(frame, preserve_index=False), journal)
    return out


# --------------------------------------------------------------------------------------------- vectors


class _Space:
    """Vectors of one space (an embedding or pixels) by image sha256, from the content-keyed cache;
    only misses are decoded and computed, in ``batch_size`` batches, and stored as they are made."""

    def __init__(
        self,
        cache: FeatureCache,
        name: str,
        metric: str,
        compute: Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]],
        paths: Mapping[str, str],
        batch_size: int,
    ) -> None:
        self.cache, self.name, self.metric = cache, name, metric
        self._compute, self.paths, self.batch_size = compute, paths, batch_size

    def vectors(self, shas: Sequence[str]) -> np.ndarray:
        items = [(s, self.paths[s]) for s in shas]

        def compute(paths: list[str]) -> list[dict[str, np.ndarray]]:
            return self._compute([images.read_image(p).pixels for p in paths])

        outs = compute_with_cache(self.cache, items, compute, self.batch_size, names=(self.name,))
        out = np.stack([np.asarray(o[self.name], dtype=np.float32).reshape(-1) for o in outs])
        bad = ~np.isfinite(out).all(axis=1)
        if self.metric == "cosine":
            bad |= ~(np.abs(out) > 0).any(axis=1)  # no direction: no cosine distance
        if bad.any():
            files = [self.paths[shas[i]] for i in np.flatnonzero(bad)]
            what = "NaN/inf or all zero" if self.metric == "cosine" else "NaN/inf"
            raise RunError(
                f"[privacy]: the {self.name} vectors of {len(files)} image(s) are {what}, so their distance to "
                f"the training set is undefined: {', '.join(files[:10])}{' …' if len(files) > 10 else ''}. "
                "Check that these files are readable, non-blank radiographs; replace or remove them from "
                "their manifest (a blank image usually means a failed export)"
            )
        return out

    def ensure(self, shas: Sequence[str]) -> int:
        """Compute and cache what is missing without reading what is there; returns the dimension."""
        missing = self.cache.missing(list(shas))
        step = self.batch_size * 16
        for start in range(0, len(missing), step):
            self.vectors(missing[start : start + step])
        return int(self.vectors(list(shas[:1])).shape[1])

    def blocks(self, shas: Sequence[str], rows: int) -> Iterator[np.ndarray]:
        for start in range(0, len(shas), rows):
            yield self.vectors(shas[start : start + rows])


def _spaces(
    plan: PrivacyPlan, config: StudyConfig, paths: Mapping[str, str], progress: Callable[[int], object]
) -> tuple[_Space, _Space]:
    from audit.evaluators.suite import load_backend, load_options
    from audit.metrics.functional.privacy import pixel_vectors

    ev = config.evaluators
    root = ev.cache_dir or default_cache_root(config.study.output)
    backend: list[Any] = []

    def embed(batch: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        if not backend:  # loaded only when an image is missing from the cache
            log.debug("privacy: loading evaluator %s", plan.features.name)
            backend.append(load_backend(plan.features, load_options(ev)))
        out = backend[0].compute(batch)
        progress(len(batch))
        return out

    size = plan.section.pixel_size
    pixel_key = EvaluatorKey("privacy-pixels", "none", f"{PIXEL_VERSION};center-square;{size}px;[0,1]float32")

    def pixels(batch: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = [{"pixels": v} for v in pixel_vectors(batch, size)]
        progress(len(batch))
        return out

    return (
        _Space(
            FeatureCache(root, plan.features.key), plan.vector, FEATURE_METRIC, embed, paths, ev.batch_size
        ),
        _Space(FeatureCache(root, pixel_key), "pixels", PIXEL_METRIC, pixels, paths, ev.batch_size),
    )


def _as_given(vectors: np.ndarray) -> np.ndarray:
    return vectors


def _search(
    space: _Space,
    queries: Sequence[str],
    train: Sequence[str],
    k: int,
    device: str,
    views: Callable[[np.ndarray], np.ndarray] = _as_given,
    n_views: int = 1,
    reference_view: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distances, indices, view) (n, k) of each query's k nearest training images, exact; queries and
    the training set are both streamed in blocks of at most :data:`BLOCK_ELEMENTS` floats.

    ``views`` turns a block of n query vectors into the ``n_views`` versions searched, stacked view after
    view ((n_views·n, d'): e.g. shifted and mirrored windows, :func:`~audit.metrics.functional.privacy.
    pixel_views`), compared with ``reference_view`` of each training block (e.g. its centred
    window; the vectors themselves when None). All versions of a query block go through one pass over
    the training set; a neighbour's ``view`` is the position of the version that found it (on equal
    distance, the first)."""
    from audit.metrics.functional.privacy import Neighbours, nearest_neighbours, nearest_of_both

    dim = space.ensure(train)
    train_rows = max(1, BLOCK_ELEMENTS // dim)
    rows = max(1, BLOCK_ELEMENTS // (dim * n_views))
    window = reference_view if reference_view is not None else _as_given
    # A training set within one block is read (and windowed) once for every query block; a larger one
    # streams from the cache each time, so memory stays flat in its size.
    held = window(space.vectors(train)) if len(train) <= train_rows else None
    dist, idx, view = [], [], []
    for q in space.blocks(queries, rows):
        stacked = views(q)
        if stacked.shape[0] != n_views * len(q):
            raise AssertionError(f"views made {stacked.shape[0]} rows for {len(q)} queries × {n_views} views")
        reference = held if held is not None else (window(b) for b in space.blocks(train, train_rows))
        try:
            found = nearest_neighbours(stacked, reference, metric=space.metric, k=k, device=device)
        except ValueError as exc:
            raise RunError(f"[privacy]: nearest training images in the {space.name} space: {exc}") from None
        n = len(q)
        nn = Neighbours(found.distances[:n], found.indices[:n])
        which = np.zeros(nn.indices.shape, np.int64)
        for v in range(1, n_views):
            part = Neighbours(found.distances[v * n : (v + 1) * n], found.indices[v * n : (v + 1) * n])
            nn, source = nearest_of_both(nn, part)
            which = np.where(source >= k, v, np.take_along_axis(which, np.minimum(source, k - 1), axis=1))
        dist.append(nn.distances)
        idx.append(nn.indices)
        view.append(which)
    return np.concatenate(dist), np.concatenate(idx), np.concatenate(view)


def _nearest_other(space: _Space, train: Sequence[str], device: str) -> np.ndarray:
    """Each training row's distance to its nearest OTHER distinct training image (authenticity's radius).

    Images are compared as embeddings, and one at distance 0 is the same image (itself, a duplicated
    file, or the same pixels saved again): were it counted, the radius would be 0 and an exact copy of a
    duplicated training image would pass as authentic. So the radius is the smallest distance above 0,
    sought among the 2, 4, 8, … nearest distinct images until one is found; 0 only when every training
    image has the same embedding."""
    distinct = list(dict.fromkeys(train))
    radius = np.zeros(len(distinct), dtype=np.float64)
    todo = np.arange(len(distinct))
    k = 2
    while todo.size:
        k = min(k, len(distinct))
        dist, _, _ = _search(space, [distinct[i] for i in todo], distinct, k, device)
        positive = dist > 0
        found = positive.any(axis=1)
        first = positive.argmax(axis=1)
        radius[todo[found]] = dist[found, first[found]]
        todo = todo[~found]
        if k == len(distinct):
            break
        k *= 2
    at = {s: i for i, s in enumerate(distinct)}
    return radius[[at[s] for s in train]]


# --------------------------------------------------------------------------------------------- the stage


def union_thresholds(
    real_features: np.ndarray, real_pixels: np.ndarray, quantile: float
) -> tuple[dict[str, float], float]:
    """Both spaces' thresholds at one common quantile level of the held-out references' distances, and
    that level: the largest level <= ``quantile`` at which at most ``quantile`` of the references is
    flagged by either space (:func:`audit.metrics.functional.privacy.union_thresholds`).

    A sample is flagged when any space flags it, so thresholds calibrated at ``quantile`` in each space
    alone would flag up to twice ``quantile`` of unseen patients; calibrating the union keeps the
    false-positive rate on held-out patients at ``quantile``, so the ``real`` row reads ≈ ``quantile``.
    """
    from audit.metrics.functional import privacy as fp

    tf, tp, level = fp.union_thresholds(real_features[None, :], real_pixels[None, :], quantile)
    return {"features": float(tf[0]), "pixels": float(tp[0])}, float(level[0])


def run_privacy(
    plan: PrivacyPlan,
    config: StudyConfig,
    samples: pd.DataFrame,
    self_reference: Sequence[str],
    cases: pd.DataFrame,
    *,
    progress: bool = False,
) -> PrivacyResult:
    """The stage: ``samples`` are samples.parquet's rows (model, case_id, sample, path, sha256),
    ``self_reference`` the models whose samples are the references themselves (no privacy_auc),
    ``cases`` the study's manifest frame (for ``[metrics].group_by``)."""
    from audit.metrics.functional import privacy as fp

    section = plan.section
    out = config.study.output
    samples = samples.assign(case_id=samples["case_id"].astype(str)).reset_index(drop=True)
    from audit.evaluators.base import resolve_device

    device = str(resolve_device(config.evaluators.device))
    found = _find(plan, config, samples, cases, device, progress)
    f_dist, f_idx, p_dist, p_idx = found.f_dist, found.f_idx, found.p_dist, found.p_idx
    row = {s: i for i, s in enumerate(found.queries)}
    ref_rows = np.array([row[s] for s in plan.references["sha256"]])
    _check_pixel_overlap(plan, found, ref_rows)
    thresholds, level = union_thresholds(f_dist[ref_rows, 0], p_dist[ref_rows, 0], section.quantile)
    if len(ref_rows) * section.quantile < 1:
        log.warning(
            "privacy: %d held-out reference(s) at quantile %g: the thresholds are interpolated below the "
            "closest reference; at least %d references resolve that quantile",
            len(ref_rows),
            section.quantile,
            int(np.ceil(1 / section.quantile)),
        )
    by_f = fp.flag_memorised(f_dist[:, 0], thresholds["features"])
    by_p = fp.flag_memorised(p_dist[:, 0], thresholds["pixels"])
    authentic = fp.authenticity(f_dist[:, 0], found.radius[f_idx[:, 0]])
    reid_mean, reid_max = found.reid

    at = np.array([row[s] for s in samples["sha256"]], dtype=np.int64)
    train_ids = plan.training["case_id"].to_numpy(str)
    flagged_by = np.select([by_f & by_p, by_f, by_p], ["both", "features", "pixels"], "")
    frame = pd.DataFrame(
        {
            "model": samples["model"].astype(str),
            "case_id": samples["case_id"],
            "sample": samples["sample"].astype(np.int64),
            "train_case_id": train_ids[f_idx[at, 0]],
            "nn_distance": f_dist[at, 0].astype(np.float64),
            "pixel_train_case_id": train_ids[p_idx[at, 0]],
            "nn_distance_pixel": p_dist[at, 0].astype(np.float64),
            "pixel_mirrored": found.p_mirrored[at],
            "flagged": (by_f | by_p)[at],
            "flagged_by": flagged_by[at],
            "authentic": np.asarray(authentic, dtype=bool)[at],
            "reid_score": reid_mean[at],
            "reid_score_max": reid_max[at],
        }
    )
    # Both files after the search, together: a rerun that fails before here (an overlap found by the
    # pixel search) leaves the previous pair as it was, never a new manifest beside old neighbours.
    write_parquet(
        pa.Table.from_pandas(plan.training[list(rundir.PRIVACY_TRAINING_COLUMNS)], preserve_index=False),
        out / rundir.PRIVACY_TRAINING,
    )
    write_parquet(pa.Table.from_pandas(frame, schema=_SCHEMA, preserve_index=False), out / rundir.PRIVACY)

    values = {
        "nn_distance": frame["nn_distance"],
        "nn_distance_pixel": frame["nn_distance_pixel"],
        "memorised_fraction": frame["flagged"].astype(np.float64),
        "authenticity": frame["authentic"].astype(np.float64),
    }
    if section.reid_model is not None:
        values |= {"reid_score": frame["reid_score"], "reid_score_max": frame["reid_score_max"]}
    ids = frame[["model", "case_id", "sample"]]
    per_sample = pd.concat(
        [ids.assign(metric=m, value=v.to_numpy(np.float64)) for m, v in values.items()], ignore_index=True
    )[list(rundir.PER_SAMPLE_COLUMNS)]
    reference_nn = f_dist[ref_rows, 0].astype(np.float64)
    feature_name = plan.features.name
    evaluators = privacy_evaluators(plan)
    summary_rows = [
        {**row, "evaluator": evaluators["privacy_auc"]}
        for row in auc_rows(
            config, frame, plan.references["case_id"].to_numpy(str), reference_nn, self_reference, cases
        )
    ]
    summary_rows += [
        {**row, "evaluator": evaluators["memorised_fraction"]}
        for row in memorised_rows(
            config,
            frame,
            plan.references["case_id"].to_numpy(str),
            f_dist[ref_rows, 0].astype(np.float64),
            p_dist[ref_rows, 0].astype(np.float64),
            section.quantile,
            cases,
        )
    ]
    summary_rows += [
        {**row, "evaluator": evaluators["alpha_precision"]}
        for row in alpha_beta_rows(
            config,
            plan.references,
            list(plan.training["sha256"]),
            found.embedding.vectors,
            samples,
            self_reference,
            cases,
            device,
        )
    ]
    info = {
        "features": feature_name,
        "metric": FEATURE_METRIC,
        "pixel_size": section.pixel_size,
        "max_shift": section.max_shift,
        "quantile": section.quantile,
        "k": section.k,
        "thresholds": {k_: float(v) for k_, v in thresholds.items()},
        # The per-space quantile at which the two thresholds sit (see union_thresholds).
        "level": level,
        "n_training": len(plan.training),
        "show_training_images": section.show_training_images,
        "reid_model": plan.reid_sha256,
        # Beyond the contract's keys: provenance for the report.
        "features_plan": plan.features.describe(),
        "pixel_metric": PIXEL_METRIC,
        "n_references": len(ref_rows),
        "training_cases": str(section.training_cases),
        "training_manifest_sha256": plan.training_manifest_sha256,
    }
    return PrivacyResult(per_sample, summary_rows, info, evaluators)


@dataclasses.dataclass(frozen=True)
class _Found:
    """The neighbours of every distinct query image (references first, then samples)."""

    queries: list[str]  # sha256 of each distinct image searched
    f_dist: np.ndarray  # (n, k) feature-space distances to the k nearest training images, ascending
    f_idx: np.ndarray  # (n, k) their training rows
    p_dist: np.ndarray  # (n, 1) pixel-space distance to the nearest training image
    p_idx: np.ndarray  # (n, 1) its training row
    p_mirrored: np.ndarray  # (n,) bool: the query's left-right mirror image was the nearer one
    radius: np.ndarray  # (n_train,) each training image's distance to its nearest other training image
    reid: tuple[np.ndarray, np.ndarray]  # (n,) mean and max re-ID score over the k neighbours (NaN: none)
    embedding: _Space  # the feature space, for the α-precision / β-recall rows


def _find(
    plan: PrivacyPlan,
    config: StudyConfig,
    samples: pd.DataFrame,
    cases: pd.DataFrame,
    device: str,
    progress: bool,
) -> _Found:
    from tqdm.auto import tqdm

    from audit.metrics.functional.privacy import pixel_shifts, pixel_views, pixel_window

    ref_paths = dict(zip(cases["case_id"].astype(str), cases["image"].astype(str), strict=True))
    paths = dict(zip(plan.training["sha256"], plan.training["image"], strict=True))
    paths.update(
        {s: ref_paths[c] for c, s in zip(plan.references["case_id"], plan.references["sha256"], strict=True)}
    )
    paths.update(dict(zip(samples["sha256"], samples["path"].astype(str), strict=True)))
    train = list(plan.training["sha256"])
    # Each distinct image is searched once: the real rows' samples are the references themselves.
    queries = list(dict.fromkeys([*plan.references["sha256"], *samples["sha256"]]))
    k = min(plan.section.k, len(train))
    log.info("privacy: %d image(s) against %d training image(s)", len(queries), len(train))
    # Normally only the training images move this bar: samples and references are mostly cached.
    with tqdm(desc="privacy (cache misses)", unit="image", disable=not progress, leave=False) as bar:
        features, pixels = _spaces(plan, config, paths, bar.update)
        f_dist, f_idx, _ = _search(features, queries, train, k, device)
        size, shift = plan.section.pixel_size, plan.section.max_shift
        shifts = len(pixel_shifts(shift))
        p_dist, p_idx, p_view = _search(
            pixels,
            queries,
            train,
            1,
            device,
            views=lambda q: pixel_views(q, size, shift),
            n_views=2 * shifts,
            reference_view=lambda t: pixel_window(t, size, shift),
        )
        radius = _nearest_other(features, train, device)
        reid = (np.full(len(queries), np.nan), np.full(len(queries), np.nan))
        if plan.section.reid_model is not None:
            reid = reid_pairs(
                plan.section, pixels.vectors, queries, f_idx, train, device, config.evaluators.batch_size
            )
    return _Found(queries, f_dist, f_idx, p_dist, p_idx, p_view[:, 0] >= shifts, radius, reid, features)
