"""Clinical metrics of generated X-rays: pure kernels, no evaluator networks.

Two families, fed later by evaluator networks (a pathology classifier, an anatomy segmenter):

* **Pathology agreement** (:func:`pathology_auc`, :func:`pathology_f1`): a classifier's probabilities for
  the generated images, (N, C), scored against the labels each case asked for, (N, C) binary (see
  :func:`labels_to_matrix`). These are *distribution-level* metrics: one number per class over all N
  cases, not a value per image, so they have no per-sample mean; their confidence intervals come from a
  bootstrap that resamples cases (done by the aggregation, not here).
* **Anatomical overlap** (:func:`dice`, :func:`dice_structures`, :func:`dice_mean`): Dice between the
  anatomy segmented on a generated image and on its reference (``dice_*``) or the anatomy mask the
  generation was conditioned on (``dice_mask_*``). One value per image, aggregated as a per-sample mean.

Everything here is numpy in, numpy out (float64), deterministic, and validates its inputs with errors
that say what to fix.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ANATOMY_STRUCTURES",
    "DEFAULT_THRESHOLD",
    "FIXED_THRESHOLD_POLICY",
    "NO_FINDING",
    "REAL_F1_THRESHOLD_POLICY",
    "ClassificationResult",
    "anatomy_structures",
    "class_metric_name",
    "dice",
    "dice_mean",
    "dice_metric_name",
    "dice_structures",
    "fit_f1_thresholds",
    "labels_to_matrix",
    "pathology_auc",
    "pathology_f1",
]

NO_FINDING = "No Finding"
# Channel order of a case's RGB anatomy_mask: R = lungs, G = heart, B = aorta.
ANATOMY_STRUCTURES: tuple[str, ...] = ("lungs", "heart", "aorta")

# torchxrayvision's op_norm rescales each output so that the class's calibrated operating point maps to
# exactly 0.5 (an output equal to the operating point becomes 0.5), so 0.5 is the model's own decision
# threshold, not an arbitrary one.
DEFAULT_THRESHOLD = 0.5
FIXED_THRESHOLD_POLICY = "fixed 0.5 (xrv op_norm)"
REAL_F1_THRESHOLD_POLICY = "per-class, F1-maximising on real images"


def class_metric_name(metric: str, class_name: str) -> str:
    """The name of one class's value of a distribution metric, e.g. ``pathology_auc:Nodule``."""
    return f"{metric}:{class_name}"


# ------------------------------------------------------------------------------------------------ labels


def labels_to_matrix(labels: Sequence[tuple[str, ...]], classes: Sequence[str]) -> np.ndarray:
    """Binary target matrix (N, C), bool, from each case's label names (:meth:`audit.cases.Case.labels`).

    ``classes`` are the classifier's output classes, in its column order. A case labelled "No Finding"
    (alone) is a row of zeros; "No Finding" must therefore not be one of ``classes``. Every other name
    must be in ``classes``: an unknown name is an error, never silently dropped, because a dropped
    pathology would turn a positive case into a negative one.
    """
    classes = _check_classes(classes)
    if NO_FINDING in classes:
        raise ValueError(
            f"classes must not contain {NO_FINDING!r}: it is the absence of every class and maps to a row of "
            "zeros. Remove it from the class list"
        )
    column = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), dtype=bool)
    unknown: dict[str, list[int]] = {}
    empty: list[int] = []
    mixed: list[int] = []
    for i, names in enumerate(labels):
        if isinstance(names, str):
            raise TypeError(
                f"labels[{i}] is the string {names!r}; pass a tuple of names per case "
                "(audit.cases.parse_labels splits 'A;B')"
            )
        names = tuple(names)
        if not names:
            empty.append(i)
            continue
        if NO_FINDING in names:
            if len(names) > 1:
                mixed.append(i)
            continue
        for name in names:
            j = column.get(name)
            if j is None:
                unknown.setdefault(name, []).append(i)
            else:
                out[i, j] = True
    problems = []
    if unknown:
        parts = []
        for name, rows in sorted(unknown.items()):
            hint = _close_name(name, classes)
            parts.append(f"{name!r} (case index {_first(rows)}{hint})")
        problems.append(
            f"label name(s) not among the classifier's classes: {'; '.join(parts)}. Known classes: "
            f"{', '.join(classes)}. Rename the labels in the manifest or drop the cases"
        )
    if mixed:
        problems.append(
            f"case index {_first(mixed)}: {NO_FINDING!r} together with other labels; a case is either "
            f"{NO_FINDING!r} or has findings"
        )
    if empty:
        problems.append(
            f"case index {_first(empty)}: no labels; pathology metrics need every case labelled "
            f"(write {NO_FINDING!r} for a normal case)"
        )
    if problems:
        raise ValueError("cannot build the target matrix: " + " | ".join(problems))
    return out


def _first(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" … {len(rows) - limit} more" if len(rows) > limit else "")


def _normalised(name: str) -> str:
    return name.casefold().replace("_", " ").replace("-", " ").strip()


def _close_name(name: str, classes: Sequence[str]) -> str:
    # Datasets spell the same finding differently (xrv: "Pleural_Thickening", CheXpert: "Pleural Other").
    same = [c for c in classes if _normalised(c) == _normalised(name)]
    close = same or difflib.get_close_matches(name, classes, n=1, cutoff=0.8)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(classes, str):
        raise TypeError(f"classes must be a sequence of class names, not the string {classes!r}")
    classes = tuple(classes)
    dupes = sorted(c for c, k in Counter(classes).items() if k > 1)
    if dupes:
        raise ValueError(f"duplicate class name(s) {', '.join(map(repr, dupes))}; class names must be unique")
    bad = [c for c in classes if not isinstance(c, str) or not c or ":" in c]
    if bad:
        raise ValueError(
            f"invalid class name(s) {bad!r}: names must be non-empty strings without ':' "
            "(':' separates metric and class in names like pathology_auc:Nodule)"
        )
    return classes


# ---------------------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class ClassificationResult:
    """A distribution-level pathology metric over a set of cases.

    ``per_class`` holds the classes that could be scored; ``skipped`` maps every other class to the reason
    (e.g. no positive case), so that a report can list them rather than let them vanish. ``macro`` is the
    unweighted mean of ``per_class`` (NaN when every class was skipped). ``thresholds`` are the decision
    thresholds used (empty for AUC, which is threshold-free) and ``threshold_policy`` says how they were
    chosen. ``n_positive`` counts positive cases per class. The CI of these values comes from a bootstrap
    over cases, done by the aggregation.
    """

    metric: str
    macro: float
    per_class: dict[str, float]
    skipped: dict[str, str]
    threshold_policy: str
    thresholds: dict[str, float] = field(default_factory=dict)
    n_cases: int = 0
    n_positive: dict[str, int] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        """``{metric: macro, metric:<class>: value, ...}`` for the scored classes (skipped ones omitted)."""
        out = {self.metric: self.macro}
        out.update({class_metric_name(self.metric, c): v for c, v in self.per_class.items()})
        return out


def _check_probs(probs: np.ndarray, classes: tuple[str, ...], name: str) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(
            f"{name} must be shaped (N, C) with C = {len(classes)} classes ({', '.join(classes)}); "
            f"got {p.shape}"
        )
    if not np.issubdtype(p.dtype, np.floating):
        raise ValueError(f"{name} must be float probabilities in [0, 1]; got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    nan = np.isnan(p)
    if nan.any():
        rows, cols = np.nonzero(nan)
        raise ValueError(
            f"{name} contains NaN (case index {_first(sorted(set(rows.tolist())))}; class(es) "
            f"{', '.join(sorted({classes[j] for j in cols}))}). A classifier gives NaN for classes it was "
            "not trained on: drop those classes"
        )
    outside = (p < 0.0) | (p > 1.0)
    if outside.any():
        rows, cols = np.nonzero(outside)
        raise ValueError(
            f"{name} has values in [{p.min():g}, {p.max():g}], outside [0, 1] (case index "
            f"{_first(sorted(set(rows.tolist())))}): pass probabilities (apply the sigmoid), not logits"
        )
    return p


def _check_targets(targets: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    t = np.asarray(targets)
    if t.shape != shape:
        raise ValueError(
            f"{name} must have the probabilities' shape {shape} (cases × classes); got {t.shape}"
        )
    if t.dtype == bool:
        return t
    if not (np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating)):
        raise ValueError(f"{name} must be binary (bool or 0/1); got dtype {t.dtype}")
    bad = ~((t == 0) | (t == 1))
    if bad.any():
        values = np.unique(t[bad])[:5].tolist()
        raise ValueError(
            f"{name} must hold only 0 and 1; found {values}. Resolve uncertain (-1) or missing (NaN) "
            "labels before scoring"
        )
    return t == 1


def _mean(values: Mapping[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else math.nan


def pathology_auc(
    probs: np.ndarray, targets: np.ndarray, classes: Sequence[str], *, metric: str = "pathology_auc"
) -> ClassificationResult:
    """ROC AUC per class of ``probs`` (N, C) against binary ``targets`` (N, C), plus their macro mean.

    AUC is the Mann-Whitney statistic: the probability that a random positive case scores higher than a
    random negative one, ties counting one half (computed from average ranks; identical to the area
    under the ROC curve with ties as diagonal steps). A class whose targets hold a single value (all
    positive or all negative, or no cases) has no AUC and is listed in ``skipped``.
    """
    classes = _check_classes(classes)
    p = _check_probs(probs, classes, "probs")
    t = _check_targets(targets, p.shape, "targets")

    n = p.shape[0]
    n_pos = t.sum(axis=0)
    n_neg = n - n_pos
    ranks = _average_ranks(p) if n else p
    rank_sum_pos = np.where(t, ranks, 0.0).sum(axis=0)
    per_class: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for j, c in enumerate(classes):
        if n == 0:
            skipped[c] = "no cases"
        elif n_neg[j] == 0:
            skipped[c] = f"all {n} cases positive (AUC needs negatives too)"
        elif n_pos[j] == 0:
            skipped[c] = f"all {n} cases negative (AUC needs positives too)"
        else:
            u = rank_sum_pos[j] - n_pos[j] * (n_pos[j] + 1) / 2.0
            per_class[c] = float(u / (float(n_pos[j]) * float(n_neg[j])))
    return ClassificationResult(
        metric=metric,
        macro=_mean(per_class),
        per_class=per_class,
        skipped=skipped,
        threshold_policy="threshold-free (ranking)",
        thresholds={},
        n_cases=n,
        n_positive={c: int(n_pos[j]) for j, c in enumerate(classes)},
    )


def _average_ranks(p: np.ndarray) -> np.ndarray:
    """1-based ranks per column, ties sharing their average rank (scipy.stats.rankdata "average";
    numpy here because importing scipy.stats costs a warm run more than all its metrics)."""
    ranks = np.empty_like(p, dtype=np.float64)
    for j in range(p.shape[1]):
        order = np.argsort(p[:, j], kind="stable")
        sp = p[order, j]
        starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
        ends = np.r_[starts[1:], sp.size]  # exclusive
        average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
        ranks[order, j] = np.repeat(average, ends - starts)
    return ranks


def _resolve_thresholds(
    thresholds: float | Mapping[str, float], classes: tuple[str, ...]
) -> tuple[dict[str, float], str]:
    """Per-class thresholds and the default policy name; classes absent from a mapping are left out."""
    if isinstance(thresholds, Mapping):
        extra = sorted(set(thresholds) - set(classes))
        if extra:
            raise ValueError(
                f"thresholds given for unknown class(es) {', '.join(map(repr, extra))}; "
                f"classes are {', '.join(classes)}"
            )
        resolved = {c: float(thresholds[c]) for c in classes if c in thresholds}
        policy = "per-class thresholds (supplied)"
    else:
        resolved = {c: float(thresholds) for c in classes}
        policy = FIXED_THRESHOLD_POLICY if float(thresholds) == DEFAULT_THRESHOLD else f"fixed {thresholds:g}"
    bad = {c: v for c, v in resolved.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"thresholds must be in [0, 1] (probabilities); got {bad}")
    return resolved, policy


def pathology_f1(
    probs: np.ndarray,
    targets: np.ndarray,
    classes: Sequence[str],
    thresholds: float | Mapping[str, float] = DEFAULT_THRESHOLD,
    policy_name: str | None = None,
    *,
    metric: str = "pathology_f1",
) -> ClassificationResult:
    """F1 per class of thresholded ``probs`` (N, C) against binary ``targets`` (N, C), plus the macro mean.

    A case is predicted positive when its probability is ``>= threshold`` (the same side as xrv's
    op_norm, which maps an output equal to the operating point to exactly 0.5). ``thresholds`` is one
    value for every class (default 0.5, xrv's calibrated operating point after op_norm) or a mapping
    class -> threshold, e.g. from :func:`fit_f1_thresholds` on the real images; a class missing from
    the mapping is skipped and listed. ``policy_name`` is recorded in the result (default: derived from
    ``thresholds``, "fixed 0.5 (xrv op_norm)" for the default).

    F1 = 2TP / (2TP + FP + FN). A class with no positive case is skipped (its F1 would be 0 or
    undefined whatever the classifier does) and listed in ``skipped``; with at least one positive the
    denominator is never zero.
    """
    classes = _check_classes(classes)
    p = _check_probs(probs, classes, "probs")
    t = _check_targets(targets, p.shape, "targets")
    resolved, default_policy = _resolve_thresholds(thresholds, classes)
    n = p.shape[0]
    n_pos = t.sum(axis=0)
    per_class: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for j, c in enumerate(classes):
        if n_pos[j] == 0:
            skipped[c] = "no cases" if n == 0 else f"no positive case among {n} (F1 undefined)"
            continue
        if c not in resolved:
            skipped[c] = "no threshold for this class (none could be fitted: no positive real image)"
            continue
        pred = p[:, j] >= resolved[c]
        tp = int(np.count_nonzero(pred & t[:, j]))
        n_pred = int(np.count_nonzero(pred))
        # 2TP / (2TP + FP + FN) with FP + FN = n_pred + n_pos - 2TP
        per_class[c] = 2.0 * tp / (n_pred + int(n_pos[j]))
    return ClassificationResult(
        metric=metric,
        macro=_mean(per_class),
        per_class=per_class,
        skipped=skipped,
        threshold_policy=policy_name if policy_name is not None else default_policy,
        thresholds=resolved,
        n_cases=n,
        n_positive={c: int(n_pos[j]) for j, c in enumerate(classes)},
    )


def fit_f1_thresholds(
    real_probs: np.ndarray, real_targets: np.ndarray, classes: Sequence[str]
) -> dict[str, float]:
    """Per-class thresholds that maximise F1 on the real images, to be applied to generated images.

    Chosen over Youden's J because the reported metric is F1: the threshold is the real images' best
    case for the very number being compared, so a generated-vs-real gap cannot come from a threshold
    tuned for a different criterion. The candidates are the unique real probabilities (with the
    ``>= threshold`` rule, every achievable prediction set is one of them); among equal F1 values the
    lowest threshold wins. F1 = 2TP / (n_pos + n_predicted) is one division of exact integers, so equal
    F1 values compare exactly equal. A class with no positive real image has no F1-maximising threshold
    and is left out of the result (:func:`pathology_f1` then skips and lists it).
    """
    classes = _check_classes(classes)
    p = _check_probs(real_probs, classes, "real_probs")
    t = _check_targets(real_targets, p.shape, "real_targets")
    out: dict[str, float] = {}
    for j, c in enumerate(classes):
        n_pos = int(t[:, j].sum())
        if n_pos == 0:
            continue
        order = np.argsort(-p[:, j], kind="stable")
        scores = p[order, j]
        tp = np.cumsum(t[order, j])
        # Thresholding at scores[k] predicts every case scoring >= scores[k]: the last of a run of ties.
        last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
        f1 = 2.0 * tp[last] / (n_pos + last + 1)
        best = np.flatnonzero(f1 == f1.max())
        # scores descend along ``last``, so the lowest threshold among the best is the last index.
        out[c] = float(scores[last[best[-1]]])
    return out


# ------------------------------------------------------------------------------------------------- Dice


def _as_masks(x: np.ndarray, name: str, ndim: int, layout: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != bool:
        raise ValueError(f"{name} must be a bool mask; got dtype {a.dtype} (binarise first, e.g. mask > 0)")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be shaped {layout}; got {a.shape}")
    return a


def _dice_counts(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    both = np.count_nonzero(pred & target, axis=axes)
    total = np.count_nonzero(pred, axis=axes) + np.count_nonzero(target, axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        # 0/0 (structure absent from both) becomes NaN, the documented result.
        return 2.0 * both.astype(np.float64) / total.astype(np.float64)


def dice(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dice 2|A∩B| / (|A| + |B|) per image of bool masks ``pred`` (N, H, W) and ``target`` (N, H, W).

    Returns float64 (N,). When both masks are empty Dice is 0/0 and the result is NaN, not 1: "absent
    from both" is a segmentation that found nothing twice, which for lungs, heart or aorta on a chest
    X-ray is a failure to report, not a perfect match (same rule as the pixel metric overlap_f1 and
    scipy's dice dissimilarity). Aggregation drops NaN values and reports the reduced n. One empty mask
    against a non-empty one gives 0.
    """
    p = _as_masks(pred, "pred", 3, "(N, H, W)")
    t = _as_masks(target, "target", 3, "(N, H, W)")
    if p.shape != t.shape:
        raise ValueError(
            f"pred and target masks must have the same shape; got {p.shape} and {t.shape}. "
            "Resize the segmentation to the reference image size first"
        )
    return _dice_counts(p, t)


def dice_metric_name(structure: str, *, against_mask: bool = False) -> str:
    """``dice_<structure>`` against the reference image's segmentation, ``dice_mask_<structure>`` against
    the input anatomy mask; ``structure="mean"`` names the per-image mean."""
    return f"{'dice_mask' if against_mask else 'dice'}_{structure}"


def dice_structures(
    pred: np.ndarray,
    target: np.ndarray,
    names: Sequence[str] = ANATOMY_STRUCTURES,
    *,
    against_mask: bool = False,
) -> dict[str, np.ndarray]:
    """Dice per image and structure of bool masks ``pred`` and ``target``, both (N, S, H, W).

    ``names`` gives the S structures in channel order. Returns ``{dice_metric_name(name): (N,) float64}``
    in that order (``dice_mask_*`` with ``against_mask``); see :func:`dice` for the empty-mask rule.
    """
    p = _as_masks(pred, "pred", 4, "(N, S, H, W)")
    t = _as_masks(target, "target", 4, "(N, S, H, W)")
    names = tuple(names)
    if p.shape != t.shape:
        raise ValueError(
            f"pred and target masks must have the same shape; got {p.shape} and {t.shape}. "
            "Resize the segmentation to the reference image size first"
        )
    if p.shape[1] != len(names):
        raise ValueError(f"masks have {p.shape[1]} structure channels but {len(names)} names: {names}")
    if len(set(names)) != len(names) or "mean" in names:
        raise ValueError(f"structure names must be unique and not 'mean'; got {names}")
    values = _dice_counts(p, t)
    return {dice_metric_name(s, against_mask=against_mask): values[:, k].copy() for k, s in enumerate(names)}


def dice_mean(per_structure: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per image, the mean Dice over the structures where it is defined (not NaN); NaN when none is.

    Structures absent from both masks are left out of the mean rather than counted as 0 or 1, so one
    missing structure does not discard the image's other structures.
    """
    if not per_structure:
        raise ValueError("dice_mean needs at least one structure")
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in per_structure.items()}
    shapes = {k: a.shape for k, a in arrays.items()}
    if len(set(shapes.values())) != 1 or any(len(s) != 1 for s in shapes.values()):
        raise ValueError(f"each structure's Dice must be a 1-D array (N,) of the same N; got shapes {shapes}")
    stacked = np.stack(list(arrays.values()), axis=1)
    defined = ~np.isnan(stacked)
    count = defined.sum(axis=1)
    total = np.where(defined, stacked, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def anatomy_structures(mask: np.ndarray) -> np.ndarray:
    """An RGB anatomy mask (H, W, 3) or a batch (N, H, W, 3) as (S, H, W) / (N, S, H, W) bool, in the
    channel order of :data:`ANATOMY_STRUCTURES` (R = lungs, G = heart, B = aorta)."""
    m = np.asarray(mask)
    if m.ndim not in (3, 4) or m.shape[-1] != len(ANATOMY_STRUCTURES):
        raise ValueError(
            f"an anatomy mask must be RGB, shaped (H, W, 3) or (N, H, W, 3) with R = lungs, G = heart, "
            f"B = aorta; got {m.shape}. A greyscale mask cannot tell the structures apart"
        )
    return np.moveaxis(m != 0 if m.dtype != bool else m, -1, -3)
