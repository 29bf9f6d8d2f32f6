"""Clinical and distribution metrics inside a run: evaluator outputs via the feature cache, per-sample
Dice rows, and the distribution-level metrics computed when the run aggregates.

Per-sample metrics (``dice_*``, ``dice_mask_*``) are computed chunk by chunk with the pixel metrics and
land in ``per_sample.parquet``. Distribution metrics (``pathology_auc``/``pathology_f1`` with their
per-class values, ``fid``, ``fxd``, ``kid``, ``precision``/``recall``/``density``/``coverage``) exist
only over a set of images, so they are computed once all samples exist, from the cached evaluator
outputs, for all cases and for every group of ``[metrics].group_by``. Their CIs are percentile
bootstraps over cases: pathology metrics reweight each case's samples, and the feature metrics are
recomputed on each resample of the stored features (each drawn case's real and generated rows weighted
by its count).

Which evaluator produced each number, the threshold policy, skipped classes, N and the rank warning of
Fréchet distances, and the metrics that could not be computed are recorded in ``run.json`` under
``"evaluation"`` for the report.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit import images
from audit.cases import Case
from audit.config import StudyConfig
from audit.evaluators.plan import Backend, EvaluatorPlan, Role, Unavailable
from audit.evaluators.registry import kind_of
from audit.evaluators.suite import (
    ENTRY_ROLE,
    classifier_of,
    load_backend,
    load_options,
    mask_frame,
    mask_to_frame,
    resolve_evaluators,
)
from audit.feature_cache import EvaluatorKey, FeatureCache, compute_with_cache, default_cache_root
from audit.metrics import catalogue
from audit.metrics.functional import clinical as fc
from audit.metrics.functional import distribution as fd
from audit.metrics.functional import distribution_bootstrap as fb

log = logging.getLogger(__name__)

ALL_CASES = ""  # the ``group`` of summary rows over every case
MISSING_GROUP = "(missing)"
# What the distribution stage reads of each role's cached outputs (not the masks).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "classifier": ("probs", "features"),
    "features": ("features",),
    "raddino": ("features",),
}
# Config entry -> (kernel, suffix of its metric names): the RadDino entries run the same kernels on
# RadDino's features, named as CheXGenBench names them (fd_raddino, kid_raddino, precision_raddino...).
FEATURE_ENTRIES: dict[str, tuple[str, str]] = {
    "fid": ("fd", ""),
    "fxd": ("fd", ""),
    "kid": ("kid", ""),
    "prdc": ("prdc", ""),
    "fd_raddino": ("fd", ""),
    "kid_raddino": ("kid", ""),
    "prdc_raddino": ("prdc", "_raddino"),
}


class EvaluationError(RuntimeError):
    """A clinical metric cannot be computed as configured; the message says why and how to fix it."""


def entry_metrics(entry: str) -> tuple[str, ...]:
    """The metric names a ``[metrics].clinical``/``.distribution`` entry produces (before per-class
    names), in catalogue order."""
    return tuple(m.name for m in catalogue.CATALOGUE if m.entry == entry and m.family != "pixel")


@dataclasses.dataclass
class Evaluation:
    """The evaluators of one run: resolved plans, lazily loaded networks, their caches."""

    config: StudyConfig
    plans: dict[Role, EvaluatorPlan]
    unavailable: dict[str, str]  # config entry -> reason
    cache_root: Path
    classes: tuple[str, ...] = ()
    targets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # case_id -> (C,) bool
    _backends: dict[Role, Backend] = dataclasses.field(default_factory=dict)
    _caches: dict[Role, FeatureCache] = dataclasses.field(default_factory=dict)
    _masks: dict[tuple[str, str, int], np.ndarray] = dataclasses.field(default_factory=dict)
    _mask_caches: dict[EvaluatorKey, FeatureCache] = dataclasses.field(default_factory=dict)
    _chunk_outputs: dict[tuple[Role, str], dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    progress: Callable[[int], None] | None = None

    @classmethod
    def prepare(
        cls, config: StudyConfig, cases: Sequence[Case], manifest_columns: Sequence[str]
    ) -> Evaluation:
        """Resolve evaluators and check that the cases support every requested metric.

        Problems that make a metric impossible (missing weights, no labels column, label names the
        classifier does not know, too few cases) are collected per config entry in ``unavailable``;
        the runner stops on them unless ``--keep-going``.
        """
        m = config.metrics
        unavailable: dict[str, str] = {}
        plans: dict[Role, EvaluatorPlan] = {}
        for role, resolved in resolve_evaluators(m, config.evaluators).items():
            if isinstance(resolved, Unavailable):
                for entry in (*m.clinical, *m.distribution):
                    if ENTRY_ROLE[entry] == role:
                        unavailable[entry] = resolved.reason
            else:
                plans[role] = resolved
        if "classifier" in plans and not classifier_of(plans["classifier"]).gives_features:
            for entry in ("fxd", "prdc"):
                if entry in m.distribution:
                    unavailable[entry] = (
                        f"the {kind_of(plans['classifier']).name} classifier gives probabilities but no "
                        "pooled features, which fxd and precision/recall/density/coverage need; fid and kid "
                        "(Inception features) still apply"
                    )
        missing_groups = [c for c in m.group_by if c not in manifest_columns]
        if missing_groups:
            raise EvaluationError(
                f"[metrics].group_by names column(s) {', '.join(missing_groups)} that the case manifest "
                f"lacks; its columns are {', '.join(manifest_columns)}"
            )
        if m.distribution and len(cases) < 2:
            for entry in m.distribution:
                unavailable.setdefault(
                    entry,
                    f"needs at least 2 cases (a covariance / neighbourhood); the manifest has {len(cases)}",
                )
        classes: tuple[str, ...] = ()
        targets: dict[str, np.ndarray] = {}
        pathology = [e for e in m.clinical if e.startswith("pathology_") and e not in unavailable]
        if pathology and "classifier" in plans:
            classes = plan_classes(plans["classifier"], config)
            if "labels" not in manifest_columns:
                for e in pathology:
                    unavailable[e] = (
                        "the case manifest has no labels column; add one (names joined by ';', "
                        "'No Finding' for normal cases) or drop pathology metrics from [metrics].clinical"
                    )
            else:
                try:
                    matrix = fc.labels_to_matrix([c.labels() for c in cases], classes)
                except ValueError as exc:
                    # Name manifest rows, not positions: that is what the user can open and fix.
                    reason = (
                        f"{exc} (case index i is manifest row i + 1) [classifier {plans['classifier'].name}]"
                    )
                    for e in pathology:
                        unavailable[e] = reason
                else:
                    targets = {c.case_id: matrix[i] for i, c in enumerate(cases)}
        cache_root = config.evaluators.cache_dir or default_cache_root(config.study.output)
        used = {ENTRY_ROLE[e] for e in (*m.clinical, *m.distribution) if e not in unavailable}
        return cls(
            config=config,
            plans={r: p for r, p in plans.items() if r in used},
            unavailable=unavailable,
            cache_root=Path(cache_root),
            classes=classes,
            targets=targets,
        )

    def wants(self, entry: str) -> bool:
        m = self.config.metrics
        return entry in (*m.clinical, *m.distribution) and entry not in self.unavailable

    def segmenter_key(self) -> dict[str, Any] | None:
        plan = self.plans.get("segmenter")
        return None if plan is None else plan.describe()

    def cache(self, role: Role) -> FeatureCache:
        if role not in self._caches:
            key = self.plans[role].key
            # Roles served by one network share its cache (and its entries).
            shared = [c for c in self._caches.values() if c.key == key]
            self._caches[role] = shared[0] if shared else FeatureCache(self.cache_root, key)
        return self._caches[role]

    def mask_in_frame(self, case_id: str, path: Path, frame: int) -> np.ndarray:
        """A case's input anatomy mask in the segmenter's frame: once per chunk, and cached by content
        like evaluator outputs, so a warm run never resizes (nor imports torch for) a mask."""
        key = (case_id, str(path), frame)
        if key not in self._masks:
            from audit.atomic import sha256_file
            from audit.evaluators.plan import PIPELINE_VERSION

            mask_key = EvaluatorKey(
                "anatomy-mask-frame", "none", f"{PIPELINE_VERSION};rgb-mask;{frame}px;>0.5;v1"
            )
            if mask_key not in self._mask_caches:
                self._mask_caches[mask_key] = FeatureCache(self.cache_root, mask_key)
            cache = self._mask_caches[mask_key]
            sha = sha256_file(path)
            stored = cache.get(sha)
            if stored is None:
                stored = {"masks": _mask_in_frame(case_id, path, frame)}
                cache.put(sha, stored)
            self._masks[key] = stored["masks"]
        return self._masks[key]

    def new_chunk(self) -> None:
        self._masks.clear()
        self._chunk_outputs.clear()

    def backend(self, role: Role) -> Backend:
        if role not in self._backends:
            ev = self.config.evaluators
            for other, backend in self._backends.items():
                if self.plans[other].key == self.plans[role].key:
                    self._backends[role] = backend  # one network, two roles (demo segmenter + features)
                    return backend
            log.debug("loading evaluator %s", self.plans[role].name)
            self._backends[role] = load_backend(self.plans[role], load_options(ev))
        return self._backends[role]

    def chunk_outputs(
        self, role: Role, items: Sequence[tuple[str, Callable[[], np.ndarray]]]
    ) -> list[dict[str, np.ndarray]]:
        """:meth:`outputs`, remembered until the next chunk: references are shared by every model."""
        todo = [(sha, load) for sha, load in items if (role, sha) not in self._chunk_outputs]
        if todo:
            for (sha, _), out in zip(todo, self.outputs(role, todo), strict=True):
                self._chunk_outputs[(role, sha)] = out
        return [self._chunk_outputs[(role, sha)] for sha, _ in items]

    def outputs(
        self,
        role: Role,
        items: Sequence[tuple[str, Callable[[], np.ndarray]]],
        names: Sequence[str] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Outputs of ``role`` for ``(sha256, load_pixels)`` items; only cache misses are decoded and run."""

        def compute(loaders: list[Callable[[], np.ndarray]]) -> list[dict[str, np.ndarray]]:
            out = self.backend(role).compute([load() for load in loaders])
            if self.progress is not None:
                self.progress(len(loaders))
            return out

        return compute_with_cache(
            self.cache(role), items, compute, self.config.evaluators.batch_size, names=names
        )

    def ensure(self, role: Role, items: Sequence[tuple[str, Callable[[], np.ndarray]]]) -> None:
        """Compute and cache the outputs of images the cache lacks, without reading the ones it has."""
        cache = self.cache(role)
        missing = set(cache.missing([sha for sha, _ in items]))
        if missing:
            self.outputs(role, [(sha, load) for sha, load in items if sha in missing])

    def frame(self) -> int:
        """Side of the segmenter's square mask frame (loads nothing)."""
        return mask_frame(self.plans["segmenter"])

    def describe(self) -> dict[str, Any]:
        return {role: plan.describe() for role, plan in self.plans.items()}


def plan_classes(plan: EvaluatorPlan, config: StudyConfig) -> tuple[str, ...]:
    """The classifier's scored classes, known without loading the network."""
    return classifier_of(plan).known_classes(plan, load_options(config.evaluators))


# --------------------------------------------------------------------------------------------- per sample


def dice_rows(
    evaluation: Evaluation,
    rows: Sequence[Mapping[str, Any]],
    gen_items: Sequence[tuple[str, Callable[[], np.ndarray]]],
    ref_items: Sequence[tuple[str, Callable[[], np.ndarray]]],
    anatomy_masks: Sequence[Path | None],
    *,
    against_reference: bool,
) -> list[pd.DataFrame]:
    """Per-sample ``dice_*`` (generated vs its reference's segmentation, unless ``against_reference`` is
    False) and ``dice_mask_*`` (vs the case's input anatomy mask, where there is one) rows."""
    if not rows:
        return []
    gen = evaluation.outputs("segmenter", gen_items)
    pred = np.stack([g["masks"] for g in gen])
    ids = pd.DataFrame([{"model": r["model"], "case_id": r["case_id"], "sample": r["sample"]} for r in rows])
    frames = []
    if against_reference:
        ref = evaluation.chunk_outputs("segmenter", ref_items)
        target = np.stack([r["masks"] for r in ref])
        values = fc.dice_structures(pred, target)
        values["dice_mean"] = fc.dice_mean(values)
        frames += [ids.assign(metric=k, value=v) for k, v in values.items()]
    with_mask = [i for i, p in enumerate(anatomy_masks) if p is not None]
    if with_mask:
        frame = evaluation.frame()
        target = np.stack(
            [evaluation.mask_in_frame(rows[i]["case_id"], anatomy_masks[i], frame) for i in with_mask]
        )
        values = fc.dice_structures(pred[with_mask], target, against_mask=True)
        values["dice_mask_mean"] = fc.dice_mean(values)
        sub = ids.iloc[with_mask].reset_index(drop=True)
        frames += [sub.assign(metric=k, value=v) for k, v in values.items()]
    return frames


def _mask_in_frame(case_id: str, path: Path | None, frame: int) -> np.ndarray:
    assert path is not None
    mask = images.read_mask(path)
    if mask.ndim != 3 or mask.shape[-1] != len(fc.ANATOMY_STRUCTURES):
        raise EvaluationError(
            f"case {case_id}: anatomy_mask {path} has {mask.shape[-1] if mask.ndim == 3 else 1} "
            "channel(s); dice_mask_* needs an RGB mask with R = lungs, G = heart, B = aorta. Fix the mask, "
            "or drop the anatomy_mask value of cases whose mask is not of that form"
        )
    return mask_to_frame(mask, frame)


# --------------------------------------------------------------------------------------------- distribution


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """The images of one side of a comparison: case of each row, and how to get outputs."""

    case_ids: np.ndarray  # (R,) str
    items: list[tuple[str, Callable[[], np.ndarray]]]


def _loader(path: str) -> Callable[[], np.ndarray]:
    return lambda: images.read_image(path).pixels


def groups_of(cases: pd.DataFrame, group_by: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """``[(group label, case_ids), ...]``: all cases first (label ""), then ``column=value`` groups."""
    out: list[tuple[str, np.ndarray]] = [(ALL_CASES, cases["case_id"].astype(str).to_numpy())]
    for column in group_by:
        values = cases[column].map(lambda v: MISSING_GROUP if _missing(v) else str(v))
        for value in sorted(values.unique()):
            out.append((f"{column}={value}", cases.loc[values == value, "case_id"].astype(str).to_numpy()))
    return out


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def distribution_metrics(
    evaluation: Evaluation,
    cases: pd.DataFrame,
    ref_shas: Mapping[str, str],
    samples: pd.DataFrame,
    models: Sequence[tuple[str, bool]],
    seed_for: Callable[[str, str], int],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Summary rows and details for every distribution metric, model and group.

    ``models`` lists (name, is_real); the real row gets the pathology metrics (the upper bound) but no
    feature distances, which would compare the reference set with itself.
    """
    cfg = evaluation.config.metrics
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    groups = groups_of(cases, cfg.group_by)
    path_of = dict(zip(cases["case_id"].astype(str), cases["image"], strict=True))
    case_order = cases["case_id"].astype(str).to_numpy()
    real = ImageSet(case_order, [(ref_shas[c], _loader(path_of[c])) for c in case_order])
    real_out: dict[Role, list[dict[str, np.ndarray]]] = {}

    def real_outputs(role: Role) -> list[dict[str, np.ndarray]]:
        if role not in real_out:
            real_out[role] = evaluation.outputs(role, real.items, names=STAGE_OUTPUTS[role])
        return real_out[role]

    thresholds, policy = _thresholds(evaluation, real, real_outputs)
    if policy:
        details["pathology"] = {
            "classes": list(evaluation.classes),
            "threshold_policy": policy,
            "thresholds": thresholds,
            "skipped": {},
        }
    for model, is_real in models:
        sel = samples[samples["model"] == model]
        if is_real:
            gen = real
        else:
            gen = ImageSet(
                sel["case_id"].astype(str).to_numpy(),
                [(s, _loader(p)) for s, p in zip(sel["sha256"], sel["path"], strict=True)],
            )
        if len(gen.items) == 0:
            continue
        outputs: dict[Role, list[dict[str, np.ndarray]]] = {}

        def gen_outputs(role: Role, gen: ImageSet = gen, outputs: dict = outputs, is_real: bool = is_real):
            if is_real:
                return real_outputs(role)
            if role not in outputs:
                outputs[role] = evaluation.outputs(role, gen.items, names=STAGE_OUTPUTS[role])
            return outputs[role]

        for group, group_cases in groups:
            in_gen = np.isin(gen.case_ids, group_cases)
            in_real = np.isin(real.case_ids, group_cases)
            for entry in ("pathology_auc", "pathology_f1"):
                if evaluation.wants(entry) and policy:
                    rows += _pathology(
                        evaluation,
                        entry,
                        model,
                        group,
                        gen,
                        in_gen,
                        gen_outputs,
                        thresholds,
                        policy,
                        seed_for,
                        details,
                    )
            if is_real:
                continue
            for entry in FEATURE_ENTRIES:
                if not evaluation.wants(entry):
                    continue
                role: Role = ENTRY_ROLE[entry]
                rf = _features(real_outputs(role), in_real)
                gf = _features(gen_outputs(role), in_gen)
                cases_of = (real.case_ids[in_real], gen.case_ids[in_gen])
                rows += _feature_metric(evaluation, entry, model, group, rf, gf, cases_of, seed_for, details)
    return rows, details


def _features(outputs: list[dict[str, np.ndarray]], mask: np.ndarray) -> np.ndarray:
    picked = [o["features"] for o, keep in zip(outputs, mask, strict=True) if keep]
    # An empty group keeps its width, so the kernels report "too few samples", not a shape error.
    return np.stack(picked) if picked else np.zeros((0, outputs[0]["features"].shape[0]), np.float32)


def _thresholds(
    evaluation: Evaluation, real: ImageSet, real_outputs: Callable[[Role], list[dict[str, np.ndarray]]]
) -> tuple[dict[str, float], str]:
    if not (evaluation.wants("pathology_auc") or evaluation.wants("pathology_f1")):
        return {}, ""
    classes = evaluation.classes
    plan = evaluation.plans["classifier"]
    if evaluation.config.metrics.pathology_threshold == "fit_on_real":
        probs = np.stack([o["probs"] for o in real_outputs("classifier")])
        targets = np.stack([evaluation.targets[c] for c in real.case_ids])
        return fc.fit_f1_thresholds(probs, targets, classes), fc.REAL_F1_THRESHOLD_POLICY
    return {c: fc.DEFAULT_THRESHOLD for c in classes}, classifier_of(plan).threshold_policy


def _pathology(
    evaluation: Evaluation,
    entry: str,
    model: str,
    group: str,
    gen: ImageSet,
    in_gen: np.ndarray,
    gen_outputs: Callable[[Role], list[dict[str, np.ndarray]]],
    thresholds: dict[str, float],
    policy: str,
    seed_for: Callable[[str, str], int],
    details: dict[str, Any],
) -> list[dict[str, Any]]:
    from audit.stats import case_resample_weights, percentile_ci, weighted_auc, weighted_f1

    cfg = evaluation.config.metrics
    classes = evaluation.classes
    outputs = gen_outputs("classifier")
    probs = np.stack([o["probs"] for o, keep in zip(outputs, in_gen, strict=True) if keep]).astype(np.float64)
    case_ids = gen.case_ids[in_gen]
    targets = np.stack([evaluation.targets[c] for c in case_ids])
    if entry == "pathology_auc":
        result = fc.pathology_auc(probs, targets, classes)
    else:
        result = fc.pathology_f1(probs, targets, classes, thresholds=thresholds, policy_name=policy)
    unique_cases, row_case = np.unique(case_ids, return_inverse=True)
    rng = np.random.default_rng(seed_for(model, f"bootstrap:{entry}:{group}"))
    counts = case_resample_weights(rng, len(unique_cases), cfg.bootstrap_resamples)
    weights = counts[:, row_case]
    if entry == "pathology_auc":
        boot = weighted_auc(probs, targets, weights)
    else:
        thr = np.array([thresholds.get(c, np.nan) for c in classes])
        boot = weighted_f1(probs, targets, thr, weights)
    scored = [j for j, c in enumerate(classes) if c in result.per_class]
    with warnings.catch_warnings():
        # A resample in which every scored class lost its positives has no macro value: NaN, dropped.
        warnings.simplefilter("ignore", RuntimeWarning)
        macro_boot = np.nanmean(boot[:, scored], axis=1) if scored else np.full(boot.shape[0], np.nan)
    plan = evaluation.plans["classifier"]
    rows = []
    for name, value in result.values().items():
        replicates = macro_boot if name == entry else boot[:, classes.index(name.split(":", 1)[1])]
        lo, hi = percentile_ci(replicates, cfg.confidence)
        rows.append(_row(model, name, value, lo, hi, len(unique_cases), group, plan.name))
    skipped = details["pathology"]["skipped"]
    if result.skipped:
        skipped.setdefault(model, {}).setdefault(group or "all cases", {})[entry] = result.skipped
    return rows


def _feature_metric(
    evaluation: Evaluation,
    entry: str,
    model: str,
    group: str,
    real: np.ndarray,
    gen: np.ndarray,
    cases_of: tuple[np.ndarray, np.ndarray],
    seed_for: Callable[[str, str], int],
    details: dict[str, Any],
) -> list[dict[str, Any]]:
    cfg = evaluation.config.metrics
    plan = evaluation.plans[ENTRY_ROLE[entry]]
    record = (
        details.setdefault("feature_metrics", {}).setdefault(model, {}).setdefault(group or "all cases", {})
    )
    names = entry_metrics(entry)
    kernel = FEATURE_ENTRIES[entry][0]
    try:
        if kernel == "fd":
            res = fd.frechet_distance(fd.FeatureStats.from_features(real), fd.FeatureStats.from_features(gen))
            record[entry] = {
                "n_real": res.n_real,
                "n_gen": res.n_gen,
                "dim": res.dim,
                "rank_deficient": res.rank_deficient,
            }
            values = {entry: res.value}
        elif kernel == "kid":
            rng = np.random.default_rng(seed_for(model, f"kid:{group}"))
            kid = fd.kernel_inception_distance(real, gen, rng, cfg.kid_subsets, cfg.kid_subset_size)
            record[entry] = {
                "n_real": kid.n_real,
                "n_gen": kid.n_gen,
                "std": kid.std,
                "subset_size": kid.subset_size,
                "subsets": kid.subsets,
                "clamped": kid.clamped,
                "requested_subset_size": kid.requested_subset_size,
            }
            values = {entry: kid.mean}
        else:
            res = fd.prdc(real, gen, k=cfg.prdc_k)
            record[entry] = {"n_real": res.n_real, "n_gen": res.n_gen, "k": res.k}
            values = {name: res.as_dict()[name.removesuffix("_raddino")] for name in names}
    except ValueError as exc:
        # A too-small group has no covariance or k-NN ball: say so rather than fail the whole run.
        record[entry] = {"error": str(exc), "n_real": int(real.shape[0]), "n_gen": int(gen.shape[0])}
        values = dict.fromkeys(names, float("nan"))
        cis = dict.fromkeys(names, (float("nan"), float("nan")))
    else:
        cis = _feature_cis(evaluation, entry, model, group, real, gen, cases_of, seed_for, record[entry])
    return [
        _row(model, name, values[name], *cis[name], int(gen.shape[0]), group, plan.name) for name in names
    ]


# Why a replicate has no value, per config entry: the CI record names it when too many are missing.
_DEGENERATE_REPLICATE = {
    "fd": "fewer than 2 draws in a set, so no covariance",
    "kid": "fewer than 2 draws in a set, so no unbiased MMD²",
    "prdc": "k or fewer distinct cases in a set, so no k-NN ball",
}


def _feature_cis(
    evaluation: Evaluation,
    entry: str,
    model: str,
    group: str,
    real: np.ndarray,
    gen: np.ndarray,
    cases_of: tuple[np.ndarray, np.ndarray],
    seed_for: Callable[[str, str], int],
    record: dict[str, Any],
) -> dict[str, tuple[float, float]]:
    """Percentile CIs of a distribution metric over cases: every replicate draws the group's cases with
    replacement and weights each case's real and generated feature rows by its count."""
    from audit.stats import case_resample_weights, percentile_ci

    cfg = evaluation.config.metrics
    real_cases, gen_cases = cases_of
    cases = np.unique(np.concatenate([real_cases, gen_cases]))
    rng = np.random.default_rng(seed_for(model, f"bootstrap:{entry}:{group}"))
    counts = case_resample_weights(rng, len(cases), cfg.bootstrap_resamples)
    real_w = counts[:, np.searchsorted(cases, real_cases)]
    gen_w = counts[:, np.searchsorted(cases, gen_cases)]
    record["ci"] = f"percentile bootstrap over cases, {cfg.bootstrap_resamples} replicates"
    kernel, suffix = FEATURE_ENTRIES[entry]
    try:
        if kernel == "fd":
            replicates = {entry: fb.frechet_distance_bootstrap(real, gen, real_w, gen_w)}
        elif kernel == "kid":
            replicates = {entry: fb.kid_bootstrap(real, gen, real_w, gen_w)}
        else:
            prdc = fb.prdc_bootstrap(real, gen, real_w, gen_w, k=cfg.prdc_k)
            replicates = {name + suffix: values for name, values in prdc.items()}
    except ValueError as exc:
        record["ci_error"] = str(exc)
        return {name: (float("nan"), float("nan")) for name in entry_metrics(entry)}
    # Every metric of an entry is undefined in the same replicates.
    defined = int(np.count_nonzero(~np.isnan(next(iter(replicates.values())))))
    record["ci_replicates"] = defined
    cis = {name: percentile_ci(values, cfg.confidence) for name, values in replicates.items()}
    if kernel == "fd" and defined:
        # A resample holds ~63 % distinct cases, and the Frechet distance's small-sample upward bias
        # lifts every replicate: the plain percentile interval can lie wholly above the value. Shift
        # it by the bootstrap's own bias estimate (mean replicate minus the full-set value).
        full = float(
            fb.frechet_distance_bootstrap(real, gen, np.ones((1, real.shape[0])), np.ones((1, gen.shape[0])))[
                0
            ]
        )
        values = replicates[entry]
        bias = float(np.nanmean(values)) - full
        lo, hi = cis[entry]
        cis[entry] = (max(lo - bias, 0.0), max(hi - bias, 0.0))
        record["ci"] = (
            f"bias-corrected percentile bootstrap over cases, {cfg.bootstrap_resamples} replicates "
            f"(interval shifted by the bootstrap bias {bias:.6g})"
        )
    if any(np.isnan(lo) for lo, _ in cis.values()):
        record["ci_error"] = (
            f"only {defined} of {cfg.bootstrap_resamples} bootstrap replicates are defined (the others "
            f"drew {_DEGENERATE_REPLICATE[kernel]}); a CI needs at least half"
        )
    return cis


def _row(
    model: str, metric: str, value: float, lo: float, hi: float, n: int, group: str, evaluator: str
) -> dict[str, Any]:
    return {
        "model": model,
        "metric": metric,
        "value": float(value),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n": int(n),
        "group": group,
        "evaluator": evaluator,
    }
