"""Every built-in metric, one :class:`MetricSpec` each, in report order: the one place a metric is
described.

The config's known names and entries (:func:`entries`), the registry's :func:`audit.registry.metric_info`
(hence summary.csv's ``higher_is_better`` and ``unit``), the report's labels, column order and results
tables, and the dashboard's metric families are all read from :data:`CATALOGUE`. The kernels that
compute the numbers live in :mod:`audit.metrics.functional`; this module is plain data (no torch, no
numpy), so the torch-free readers (reports, dashboards) import it freely.

Adding a metric: one :class:`MetricSpec` here and one kernel (for a pixel metric, an entry of
:data:`audit.metrics.pixel.PIXEL_KERNELS`). See the README's "Extending" section.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from audit.metrics.functional.clinical import ANATOMY_STRUCTURES
from audit.metrics.functional.norberg import NORMAL_THRESHOLD_DEG

__all__ = [
    "CATALOGUE",
    "METRICS",
    "TABLES",
    "Aggregation",
    "Family",
    "MetricSpec",
    "ResultTable",
    "entries",
    "names",
    "order_key",
    "spec",
]

Family = Literal["pixel", "clinical", "distribution", "norberg", "privacy"]
# "per_sample_mean" / "per_sample_median": one value per image, reported as the mean / median over
# cases (a case's samples averaged first, NaN values dropped with the reduced n shown);
# "distribution": a value over a set of cases only (CI by bootstrapping cases).
Aggregation = Literal["per_sample_mean", "per_sample_median", "distribution"]
# The evaluator whose outputs a metric needs ("" for none): its role (audit.evaluators.plan.Role).
Evaluator = Literal["", "classifier", "segmenter", "features", "raddino"]


@dataclasses.dataclass(frozen=True)
class ResultTable:
    """One table of the report's results (``id`` is also its HTML anchor suffix)."""

    id: str
    heading: str


# In the order the report shows them; a metric in none of them gets an "other" table.
TABLES: tuple[ResultTable, ...] = (
    ResultTable("paired", "Paired image quality"),
    ResultTable("clinical", "Clinical realism"),
    ResultTable("mask", "Adherence to the input anatomy mask"),
    ResultTable("distribution", "Distribution"),
    ResultTable("norberg", "Norberg-angle agreement"),
    ResultTable("privacy", "Privacy and memorisation"),
)


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """What a metric measures, how it is aggregated and where the report shows it.

    ``higher_is_better`` is None where neither direction is better (the Bland–Altman bias and limits,
    whose ideal is 0). ``unit`` may hold ``{range}``, filled by :meth:`unit_at` with ``pixel_range``
    (MSE on images scaled to [0, 255] is in "intensity² (range 255)"). ``entry`` is the config list
    item that turns the metric on (``"dice"`` turns on every Dice, ``"prdc"`` the four k-NN metrics;
    Norberg and privacy metrics have none: ``[norberg]`` and ``[privacy]`` turn them on). The order of :data:`CATALOGUE` is the
    report's column order.
    """

    name: str
    family: Family
    label: str
    higher_is_better: bool | None
    aggregation: Aggregation
    table: str
    description: str
    unit: str = ""
    entry: str = ""
    evaluator: Evaluator = ""

    def unit_at(self, pixel_range: float) -> str:
        return self.unit.format(range=f"{pixel_range:g}")


def _pixel(name: str, label: str, higher_is_better: bool, description: str, unit: str = "") -> MetricSpec:
    return MetricSpec(
        name, "pixel", label, higher_is_better, "per_sample_mean", "paired", description, unit, entry=name
    )


# The 11 px window at the coarsest of 5 scales (audit.metrics.functional.pixel.MS_SSIM_MIN_SIZE, which
# imports torch; a test keeps the two equal).
MS_SSIM_MIN_SIZE = 176
_OVERLAP = "foreground masks (pixel > overlap_threshold) of generated (G) and reference (R) image"
_PIXEL = (
    _pixel(
        "ms_ssim",
        "MS-SSIM",
        True,
        "Multi-scale SSIM (Wang et al. 2003): 5 scales, standard betas, same window as ssim, "
        f"relu-normalised (torchmetrics); needs images of at least {MS_SSIM_MIN_SIZE}×{MS_SSIM_MIN_SIZE} px.",
    ),
    _pixel(
        "ssim",
        "SSIM",
        True,
        "Structural similarity (Wang et al. 2004): gaussian window sigma 1.5 / 11 px, K1 0.01, "
        "K2 0.03, reflect-padded borders (torchmetrics); 1 for identical images.",
    ),
    _pixel(
        "psnr",
        "PSNR",
        True,
        "Peak signal-to-noise ratio, 10·log10(pixel_range² / MSE); +inf for identical images.",
        unit="dB",
    ),
    _pixel(
        "mse",
        "MSE",
        False,
        "Mean squared error between generated and reference image, on images scaled to [0, pixel_range].",
        unit="intensity² (range {range})",
    ),
    _pixel(
        "mae",
        "MAE",
        False,
        "Mean absolute error between generated and reference image, on images scaled to [0, pixel_range].",
        unit="intensity (range {range})",
    ),
    _pixel(
        "overlap_precision",
        "overlap precision",
        True,
        f"|G∩R| / |G| for {_OVERLAP}; NaN when G is empty.",
    ),
    _pixel(
        "overlap_recall",
        "overlap recall",
        True,
        f"|G∩R| / |R| for {_OVERLAP}; NaN when R is empty.",
    ),
    _pixel(
        "overlap_f1",
        "overlap F1",
        True,
        "2|G∩R| / (|G| + |R|) (Dice) for foreground masks (pixel > overlap_threshold); NaN when both are "
        "empty.",
    ),
)


def _dice(prefix: str, label: str, table: str, against: str) -> tuple[MetricSpec, ...]:
    def one(suffix: str, description: str) -> MetricSpec:
        return MetricSpec(
            f"{prefix}_{suffix}",
            "clinical",
            f"{label} {suffix}",
            True,
            "per_sample_mean",
            table,
            description,
            entry="dice",
            evaluator="segmenter",
        )

    per_structure = tuple(
        one(
            s,
            f"Dice 2|A∩B|/(|A|+|B|) of the {s} segmented on the generated image (A) and {against} (B); NaN "
            "when the structure is absent from both.",
        )
        for s in ANATOMY_STRUCTURES
    )
    mean = one(
        "mean",
        f"Per image, the mean of {', '.join(f'{prefix}_{s}' for s in ANATOMY_STRUCTURES)} over the "
        "structures where Dice is defined; NaN when none is.",
    )
    return (*per_structure, mean)


_CLINICAL = (
    MetricSpec(
        "pathology_auc",
        "clinical",
        "AUC",
        True,
        "distribution",
        "clinical",
        "ROC AUC of the classifier's probabilities on the generated images against the cases' intended "
        "labels; macro = unweighted mean over classes with both label values present. Per class as "
        "pathology_auc:<class>.",
        entry="pathology_auc",
        evaluator="classifier",
    ),
    MetricSpec(
        "pathology_f1",
        "clinical",
        "F1",
        True,
        "distribution",
        "clinical",
        "F1 of the classifier's thresholded predictions (probability >= threshold) on the generated images "
        "against the cases' intended labels; macro = unweighted mean over classes with at least one "
        "positive case. Per class as pathology_f1:<class>; the threshold policy is recorded with the "
        "result.",
        entry="pathology_f1",
        evaluator="classifier",
    ),
    *_dice("dice", "Dice", "clinical", "on the reference image"),
    *_dice("dice_mask", "mask Dice", "mask", "in the input anatomy mask"),
)


def _distribution(
    name: str, label: str, higher_is_better: bool, evaluator: Evaluator, description: str, entry: str = ""
) -> MetricSpec:
    return MetricSpec(
        name,
        "distribution",
        label,
        higher_is_better,
        "distribution",
        "distribution",
        description,
        entry=entry or name,
        evaluator=evaluator,
    )


_NAEEM = "(Naeem et al. 2020)"
_PRDC = (
    ("precision", "Fraction of generated samples inside the k-NN ball of some real sample"),
    ("recall", "Fraction of real samples inside the k-NN ball of some generated sample"),
    (
        "density",
        (
            "Mean count of real k-NN balls holding each generated sample, over k; about 1 for matching "
            "distributions, above 1 when samples crowd dense real regions"
        ),
    ),
    ("coverage", "Fraction of real samples whose k-NN ball holds some generated sample"),
)

_DISTRIBUTION = (
    _distribution(
        "fid",
        "FID",
        False,
        "features",
        "Fréchet distance between Gaussians fitted to Inception-v3 pool features of the real references and "
        "the generated samples (Heusel et al. 2017); biased upwards when N <= feature dimension.",
    ),
    _distribution(
        "fxd",
        "FXD",
        False,
        "classifier",
        "Fréchet distance on the X-ray classifier's pooled features: an X-ray-specific FID.",
    ),
    _distribution(
        "kid",
        "KID",
        False,
        "features",
        "Kernel Inception Distance (Bińkowski et al. 2018): unbiased polynomial-kernel MMD², mean over "
        "random subsets of size min(kid_subset_size, N).",
    ),
    *(_distribution(n, n, True, "classifier", f"{d} {_NAEEM}.", entry="prdc") for n, d in _PRDC),
    # CheXGenBench's fidelity metrics on RadDino CLS embeddings.
    _distribution(
        "fd_raddino",
        "FD RadDino",
        False,
        "raddino",
        "Fréchet distance on RadDino CLS embeddings (microsoft/rad-dino, its own processor at 518 px): the "
        "fidelity ranking of CheXGenBench.",
    ),
    _distribution(
        "kid_raddino",
        "KID RadDino",
        False,
        "raddino",
        "Kernel distance (unbiased polynomial-kernel MMD², as kid) on RadDino CLS embeddings.",
    ),
    *(
        _distribution(
            f"{n}_raddino",
            f"{n} RadDino",
            True,
            "raddino",
            f"{n.capitalize()} (as {n}) on RadDino CLS embeddings.",
            entry="prdc_raddino",
        )
        for n, _ in _PRDC
    ),
)

_PER_SIDE = " Per side as <metric>:left / <metric>:right; the bare name pools both sides' pairs."


def _norberg(name: str, label: str, higher_is_better: bool | None, unit: str, description: str) -> MetricSpec:
    # Labels carry "Norberg" because the results and comparison tables hold other metrics too: a bare
    # "MAE" or "bias" there would read as a pixel metric.
    return MetricSpec(
        name, "norberg", label, higher_is_better, "distribution", "norberg", description + _PER_SIDE, unit
    )


_NORBERG = (
    _norberg(
        "norberg_r",
        "Norberg r",
        True,
        "",
        "Pearson correlation of generated against real Norberg angles of the same cases; NaN with fewer "
        "than 3 pairs or a constant angle set.",
    ),
    _norberg(
        "norberg_r2",
        "Norberg R²",
        True,
        "",
        "R² as the canine-hip paper reports it: the square of Pearson r (the coefficient of determination "
        "of a least-squares line fitted to generated vs real angles), not agreement with the identity line; "
        "a biased or rescaled generator can score 1.",
    ),
    _norberg(
        "norberg_mae",
        "Norberg MAE",
        False,
        "degrees",
        "Mean absolute difference |generated − real| of the Norberg angles.",
    ),
    _norberg(
        "norberg_ba_bias",
        "Norberg BA bias",
        None,
        "degrees",
        "Bland–Altman bias: mean of generated − real Norberg angle; ideal 0.",
    ),
    _norberg(
        "norberg_ba_loa_low",
        "Norberg BA LoA low",
        None,
        "degrees",
        "Bland–Altman lower 95% limit of agreement: bias − 1.96 SD of generated − real (ddof=1).",
    ),
    _norberg(
        "norberg_ba_loa_high",
        "Norberg BA LoA high",
        None,
        "degrees",
        "Bland–Altman upper 95% limit of agreement: bias + 1.96 SD of generated − real (ddof=1).",
    ),
    _norberg(
        "norberg_icc",
        "Norberg ICC(2,1)",
        True,
        "",
        "ICC(2,1), two-way random effects, absolute agreement, single rater (Shrout & Fleiss 1979), real "
        "and generated as the two raters: penalises bias as well as scatter.",
    ),
    _norberg(
        "norberg_kappa",
        f"Norberg κ ({NORMAL_THRESHOLD_DEG:g}°)",
        True,
        "",
        f"Cohen's κ between the normal (angle >= {NORMAL_THRESHOLD_DEG:g}°, ties normal) / dysplastic calls "
        "on real and generated angles; NaN when both sets hold a single, identical class.",
    ),
)


def _privacy(
    name: str,
    label: str,
    higher_is_better: bool | None,
    aggregation: Aggregation,
    description: str,
    unit: str = "",
) -> MetricSpec:
    return MetricSpec(name, "privacy", label, higher_is_better, aggregation, "privacy", description, unit)


# The privacy stage (audit.privacy, turned on by [privacy]) compares every sample with the training set
# of the generator; the `real` row is the held-out references, which calibrate the thresholds.
_NN = "nearest training image (exact search over the whole [privacy].training_cases set)"
_PRIVACY = (
    _privacy(
        "nn_distance",
        "NN distance (features)",
        True,
        "per_sample_median",
        f"Cosine distance 1 − cos(g, t) between the sample's and its {_NN}'s embeddings from the "
        "[privacy].features evaluator; lower = closer to the training data (0 = same embedding). "
        "Summarised as the median over cases, with a bootstrap CI of the median.",
    ),
    _privacy(
        "nn_distance_pixel",
        "NN distance (pixels)",
        True,
        "per_sample_median",
        f"L2 distance / √pixels between the sample and its {_NN}, both centre-square cropped, resized "
        "to pixel_size² and in [0, 1] (an RMS intensity difference); lower = closer to the training data. "
        "Summarised as the median over cases, with a bootstrap CI of the median.",
    ),
    _privacy(
        "memorised_fraction",
        "memorised",
        False,
        "per_sample_mean",
        "Fraction of samples flagged as training copies: nearest-training distance strictly below the "
        "threshold in feature OR pixel space. Both thresholds sit at one common quantile level of the "
        "held-out real images' own nearest-training distances in their space, the level chosen so that "
        "either space together flags [privacy].quantile of those images (so the real row is ≈ quantile "
        "by construction; run.json's privacy.level records the level).",
    ),
    _privacy(
        "authenticity",
        "authenticity",
        True,
        "per_sample_mean",
        "Fraction of authentic samples (Alaa et al. 2022): a sample is not authentic when it is closer "
        "(feature space) to its nearest training image than that image is to its own nearest other "
        "distinct training image (duplicated training images count once). As in the paper, only the "
        "embedding is used: a copy only the pixel search finds (e.g. a mirrored one) may still count as "
        "authentic; memorised_fraction flags it.",
    ),
    _privacy(
        "reid_score",
        "re-ID score",
        False,
        "per_sample_mean",
        "Mean over the k nearest training images (feature space) of the [privacy.reid_model] "
        "re-identification network's same-patient score in [0, 1] for the (sample, training image) pair.",
    ),
    _privacy(
        "reid_score_max",
        "re-ID score max",
        False,
        "per_sample_mean",
        "Maximum over the k nearest training images of the re-identification network's same-patient "
        "score; the per-sample worst case behind reid_score.",
    ),
    _privacy(
        "privacy_auc",
        "privacy AUC",
        None,  # 0.5 is ideal: neither end is better, so no model is marked best on it
        "distribution",
        "Mann–Whitney AUC P(d_gen > d_real) + ½ P(d_gen = d_real) of the samples' against the held-out "
        "real images' nearest-training feature distances. 0.5: samples are as far from the training set "
        "as unseen patients are (ideal); below 0.5: closer, i.e. memorisation; above 0.5 is no privacy "
        "risk but a sign the samples are off the training distribution. CI: bootstrap over cases.",
    ),
    _privacy(
        "alpha_precision",
        "α-precision",
        True,
        "distribution",
        "Alaa et al. (ICML 2022) fidelity, in the [privacy].features embedding (unit vectors): the share "
        "of samples inside the α-support of the held-out real images (the ball about their mean holding "
        "α of them), for α on a 30-step grid, summarised as 1 − 2∫|share − α|dα, in [−1/29, 1]. The "
        "authors' reference formula, without its learned one-class embedding. It depends on the number "
        "of references and the embedding's dimension as much as on the samples: the real row is the "
        "calibration, training images (other real patients) in place of samples. CI: delete-d jackknife "
        "over half-samples of the cases.",
    ),
    _privacy(
        "beta_recall",
        "β-recall",
        True,
        "distribution",
        "Alaa et al. (ICML 2022) diversity, in the same embedding: the share of held-out real images "
        "whose nearest sample is closer than their nearest other real image and lies in the β-support "
        "of those nearest samples, summarised as 1 − 2∫|share − β|dβ, in [−1/29, 1]; near 0 for mode "
        "collapse. The real row is the calibration, as for α-precision. CI: delete-d jackknife over "
        "half-samples of the cases.",
    ),
)

CATALOGUE: tuple[MetricSpec, ...] = (*_PIXEL, *_CLINICAL, *_DISTRIBUTION, *_NORBERG, *_PRIVACY)
METRICS: dict[str, MetricSpec] = {m.name: m for m in CATALOGUE}
_RANK = {m.name: i for i, m in enumerate(CATALOGUE)}


def spec(name: str) -> MetricSpec:
    """The spec of ``name``; a per-class or per-side name (``pathology_auc:Nodule``,
    ``norberg_r:left``) gets its metric's. Raises KeyError naming the known metrics."""
    base = name.split(":", 1)[0]
    if base not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known are {', '.join(METRICS)}")
    return METRICS[base]


def names(
    family: Family | None = None, table: str | None = None, evaluator: Evaluator | None = None
) -> tuple[str, ...]:
    """The metric names matching every given filter, in report order."""
    return tuple(
        m.name
        for m in CATALOGUE
        if (family is None or m.family == family)
        and (table is None or m.table == table)
        and (evaluator is None or m.evaluator == evaluator)
    )


def entries(family: Family) -> tuple[str, ...]:
    """The config list items of a family (``[metrics].pixel``, ``.clinical``, ``.distribution``), in
    report order of their first metric."""
    return tuple(dict.fromkeys(m.entry for m in CATALOGUE if m.family == family and m.entry))


def order_key(name: str) -> tuple[int, str]:
    """Sort key putting built-in metrics in report order (a per-class name right after its metric) and
    anything else after them, alphabetically."""
    base, _, rest = name.partition(":")
    return (_RANK.get(base, len(_RANK)), name if base not in _RANK else rest)
