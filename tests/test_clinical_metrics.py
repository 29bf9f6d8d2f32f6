"""Clinical metric kernels against independent references (scikit-learn, scipy) and hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
from PIL import Image
from scipy.spatial.distance import dice as scipy_dice_dissimilarity

from audit.cases import parse_labels
from audit.images import read_mask
from audit.metrics.functional import clinical as fc

CLASSES = ("Atelectasis", "Effusion", "Nodule", "Pneumothorax", "Cardiomegaly", "Mass")


def _cohort(rng: np.random.Generator, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that carry signal, rounded so that ties occur; Pneumothorax all negative, Mass all
    positive (both must be skipped for AUC, only Pneumothorax for F1)."""
    targets = rng.random((n, len(CLASSES))) < np.array([0.3, 0.5, 0.1, 0.0, 0.4, 1.0])
    logits = rng.normal(0, 1, targets.shape) + 1.5 * targets
    probs = np.round(1 / (1 + np.exp(-logits)), 2)
    return probs, targets


def _keep(skipped: dict[str, str]) -> list[int]:
    return [j for j, c in enumerate(CLASSES) if c not in skipped]


# ----------------------------------------------------------------------------------------------- labels


def test_labels_to_matrix_maps_names_and_no_finding():
    labels = [parse_labels("Nodule;Effusion"), parse_labels("No Finding"), ("Mass",)]
    m = fc.labels_to_matrix(labels, CLASSES)
    assert m.dtype == bool and m.shape == (3, len(CLASSES))
    expected = np.zeros((3, len(CLASSES)), dtype=bool)
    expected[0, [CLASSES.index("Nodule"), CLASSES.index("Effusion")]] = True
    expected[2, CLASSES.index("Mass")] = True
    np.testing.assert_array_equal(m, expected)
    assert fc.labels_to_matrix([], CLASSES).shape == (0, len(CLASSES))


def test_labels_to_matrix_lists_every_unknown_name_with_a_hint():
    labels = [("Nodule", "Pleural Thickening"), ("Hernia",), ("Hernia",)]
    with pytest.raises(ValueError) as err:
        fc.labels_to_matrix(labels, (*CLASSES, "Pleural_Thickening"))
    msg = str(err.value)
    assert "'Hernia' (case index 1, 2)" in msg
    assert "'Pleural Thickening'" in msg and "did you mean 'Pleural_Thickening'" in msg
    assert "Known classes: Atelectasis" in msg


@pytest.mark.parametrize(
    ("labels", "classes", "match"),
    [
        ([("Nodule",)], (*CLASSES, "No Finding"), "must not contain 'No Finding'"),
        ([("No Finding", "Nodule")], CLASSES, "together with other labels"),
        ([()], CLASSES, "no labels"),
        (["Nodule"], CLASSES, "pass a tuple"),
        ([("Nodule",)], ("Nodule", "Mass", "Nodule"), "duplicate class"),
        ([("Nodule",)], "Nodule", "not the string"),
    ],
)
def test_labels_to_matrix_rejects_bad_input(labels, classes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fc.labels_to_matrix(labels, classes)


# ---------------------------------------------------------------------------------------------- AUC


def test_auc_matches_sklearn_per_class_and_macro():
    probs, targets = _cohort(np.random.default_rng(0))
    res = fc.pathology_auc(probs, targets, CLASSES)
    keep = _keep(res.skipped)
    assert [CLASSES[j] for j in keep] == list(res.per_class)
    assert len(keep) == 4
    for j in keep:
        ref = skm.roc_auc_score(targets[:, j], probs[:, j])
        assert res.per_class[CLASSES[j]] == pytest.approx(ref, abs=1e-12)
    macro = skm.roc_auc_score(targets[:, keep], probs[:, keep], average="macro")
    assert res.macro == pytest.approx(macro, abs=1e-12)
    assert 0.6 < res.macro < 1.0  # the fixture carries signal: a broken rank sum would not land here


def test_auc_lists_single_valued_classes_as_skipped():
    probs, targets = _cohort(np.random.default_rng(1))
    res = fc.pathology_auc(probs, targets, CLASSES)
    assert set(res.skipped) == {"Pneumothorax", "Mass"}
    assert "all 80 cases negative" in res.skipped["Pneumothorax"]
    assert "all 80 cases positive" in res.skipped["Mass"]
    assert res.n_cases == 80 and res.n_positive["Mass"] == 80 and res.n_positive["Pneumothorax"] == 0
    assert res.thresholds == {} and "threshold-free" in res.threshold_policy
    values = res.values()
    assert values["pathology_auc"] == res.macro
    assert "pathology_auc:Nodule" in values and "pathology_auc:Mass" not in values


def test_auc_hand_cases():
    classes = ("A", "B", "C")
    probs = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.5], [0.2, 0.8, 0.5], [0.1, 0.9, 0.5]])
    targets = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0]])
    res = fc.pathology_auc(probs, targets, classes)
    # perfect ranking, reversed ranking, all tied (each pair counts one half)
    assert res.per_class == {"A": 1.0, "B": 0.0, "C": 0.5}
    assert res.macro == pytest.approx(0.5)


def test_auc_all_skipped_gives_nan_macro():
    res = fc.pathology_auc(np.full((3, 2), 0.4), np.zeros((3, 2), dtype=int), ("A", "B"))
    assert math.isnan(res.macro) and res.per_class == {} and set(res.skipped) == {"A", "B"}
    empty = fc.pathology_auc(np.empty((0, 2)), np.empty((0, 2), dtype=bool), ("A", "B"))
    assert math.isnan(empty.macro) and empty.skipped == {"A": "no cases", "B": "no cases"}


# ----------------------------------------------------------------------------------------------- F1


def test_f1_fixed_threshold_matches_sklearn():
    probs, targets = _cohort(np.random.default_rng(2))
    res = fc.pathology_f1(probs, targets, CLASSES)
    assert set(res.skipped) == {"Pneumothorax"}  # Mass (all positive) has an F1, unlike its AUC
    assert "no positive case among 80" in res.skipped["Pneumothorax"]
    keep = _keep(res.skipped)
    pred = probs >= 0.5
    ref = skm.f1_score(targets[:, keep], pred[:, keep], average=None, zero_division=0)
    np.testing.assert_allclose([res.per_class[CLASSES[j]] for j in keep], ref, rtol=0, atol=1e-12)
    macro = skm.f1_score(targets[:, keep], pred[:, keep], average="macro", zero_division=0)
    assert res.macro == pytest.approx(macro, abs=1e-12)
    assert res.threshold_policy == fc.FIXED_THRESHOLD_POLICY == "fixed 0.5 (xrv op_norm)"
    assert res.thresholds == dict.fromkeys(CLASSES, 0.5)
    assert res.values()["pathology_f1:Mass"] == res.per_class["Mass"]


def test_f1_threshold_is_inclusive_like_op_norm():
    # A probability exactly at the threshold is positive: op_norm maps an output equal to the operating
    # point to 0.5 and treats it as above it.
    probs = np.array([[0.5], [0.49], [0.2]])
    targets = np.array([[1], [1], [0]])
    res = fc.pathology_f1(probs, targets, ("A",))
    assert res.per_class["A"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))


def test_f1_custom_and_per_class_thresholds():
    probs, targets = _cohort(np.random.default_rng(3))
    res = fc.pathology_f1(probs, targets, CLASSES, thresholds=0.3)
    assert res.threshold_policy == "fixed 0.3"
    keep = _keep(res.skipped)
    ref = skm.f1_score(targets[:, keep], probs[:, keep] >= 0.3, average=None, zero_division=0)
    np.testing.assert_allclose([res.per_class[CLASSES[j]] for j in keep], ref, atol=1e-12)

    given = {"Atelectasis": 0.2, "Effusion": 0.7, "Nodule": 0.5, "Pneumothorax": 0.5, "Mass": 0.9}
    res = fc.pathology_f1(probs, targets, CLASSES, thresholds=given, policy_name="mine")
    assert res.threshold_policy == "mine" and res.thresholds == given
    assert "no threshold" in res.skipped["Cardiomegaly"]  # missing from the mapping: skipped, listed
    for c, t in given.items():
        if c in res.per_class:
            j = CLASSES.index(c)
            assert res.per_class[c] == pytest.approx(skm.f1_score(targets[:, j], probs[:, j] >= t), abs=1e-12)


@pytest.mark.parametrize(
    ("thresholds", "match"), [({"Nodul": 0.5}, "unknown class"), (1.5, r"\[0, 1\]"), (math.nan, r"\[0, 1\]")]
)
def test_f1_rejects_bad_thresholds(thresholds, match):
    probs, targets = _cohort(np.random.default_rng(4), n=10)
    with pytest.raises(ValueError, match=match):
        fc.pathology_f1(probs, targets, CLASSES, thresholds=thresholds)


# --------------------------------------------------------------------------------- threshold fitting


def test_fitted_thresholds_maximise_f1_on_real_images():
    rng = np.random.default_rng(5)
    probs, targets = _cohort(rng, n=60)
    fitted = fc.fit_f1_thresholds(probs, targets, CLASSES)
    assert set(fitted) == set(CLASSES) - {"Pneumothorax"}  # nothing to fit without a positive
    for c, threshold in fitted.items():
        j = CLASSES.index(c)
        candidates = np.unique(probs[:, j])
        f1 = np.array([skm.f1_score(targets[:, j], probs[:, j] >= u, zero_division=0) for u in candidates])
        best = candidates[f1 >= f1.max() - 1e-12]
        assert threshold == best.min(), c  # the maximum, and the lowest threshold among ties
    assert fitted["Mass"] == probs[:, CLASSES.index("Mass")].min()  # all positive: predict all


def test_fitted_threshold_tie_breaks_to_the_lowest():
    # F1 at 0.8: 2·1/(2+1) = 2/3; at 0.6: 1/2; at 0.4: 2/5; at 0.2: 2·2/(2+4) = 2/3.
    probs = np.array([[0.2], [0.4], [0.6], [0.8]])
    targets = np.array([[1], [0], [0], [1]])
    assert fc.fit_f1_thresholds(probs, targets, ("A",)) == {"A": 0.2}


def test_fitted_thresholds_applied_to_generated_images():
    rng = np.random.default_rng(6)
    real, targets = _cohort(rng, n=50)
    generated = np.clip(real + rng.normal(0, 0.1, real.shape), 0, 1)
    fitted = fc.fit_f1_thresholds(real, targets, CLASSES)
    res = fc.pathology_f1(generated, targets, CLASSES, fitted, policy_name=fc.REAL_F1_THRESHOLD_POLICY)
    assert res.threshold_policy == fc.REAL_F1_THRESHOLD_POLICY and res.thresholds == fitted
    for c, t in fitted.items():
        j = CLASSES.index(c)
        ref = skm.f1_score(targets[:, j], generated[:, j] >= t, zero_division=0)
        assert res.per_class[c] == pytest.approx(ref, abs=1e-12)


def test_class_without_real_positives_is_skipped_on_generated():
    real_targets = np.array([[0], [0], [0]])
    fitted = fc.fit_f1_thresholds(np.array([[0.1], [0.5], [0.9]]), real_targets, ("A",))
    assert fitted == {}
    res = fc.pathology_f1(np.array([[0.1], [0.9]]), np.array([[1], [0]]), ("A",), fitted)
    assert math.isnan(res.macro) and "none could be fitted" in res.skipped["A"]


# -------------------------------------------------------------------------------------- validation


def _bad(probs: np.ndarray, targets: np.ndarray, where: tuple[int, int], value: float, of: str):
    probs, targets = probs.copy(), targets.astype(float)
    (probs if of == "probs" else targets)[where] = value
    return probs, targets


@pytest.mark.parametrize(
    ("of", "value", "match"),
    [
        ("probs", math.nan, "NaN"),
        ("probs", 1.2, "outside"),
        ("probs", -0.1, "outside"),
        ("probs", math.inf, "outside"),
        ("targets", -1.0, "uncertain"),
        ("targets", math.nan, "only 0 and 1"),
    ],
)
@pytest.mark.parametrize("fn", ["auc", "f1", "fit"])
def test_bad_values_raise(fn, of, value, match):
    probs, targets = _bad(*_cohort(np.random.default_rng(7), n=12), (3, 2), value, of)
    call = {
        "auc": fc.pathology_auc,
        "f1": fc.pathology_f1,
        "fit": fc.fit_f1_thresholds,
    }[fn]
    with pytest.raises(ValueError, match=match):
        call(probs, targets, CLASSES)


def test_bad_shapes_and_dtypes_raise():
    probs, targets = _cohort(np.random.default_rng(8), n=12)
    with pytest.raises(ValueError, match="C = 5 classes"):
        fc.pathology_auc(probs, targets, CLASSES[:5])
    with pytest.raises(ValueError, match="probabilities' shape"):
        fc.pathology_f1(probs, targets[:10], CLASSES)
    with pytest.raises(ValueError, match="float probabilities"):
        fc.pathology_auc((probs > 0.5).astype(int), targets, CLASSES)
    with pytest.raises(ValueError, match="without ':'"):
        fc.pathology_auc(probs[:, :1], targets[:, :1], ("a:b",))


# --------------------------------------------------------------------------------------------- Dice


def _square(top: int, left: int, size: int = 4, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def test_dice_hand_computed():
    a = _square(2, 2)
    pred = np.stack([a, a, a, a, a, np.zeros_like(a), np.zeros_like(a)])
    target = np.stack(
        [_square(2, 3), _square(3, 3), a, _square(0, 6, 2), np.zeros_like(a), a, np.zeros_like(a)]
    )
    out = fc.dice(pred, target)
    assert out.dtype == np.float64 and out.shape == (7,)
    # 16 px each: one-pixel shift overlaps 3×4 = 12 → 24/32; diagonal shift 3×3 = 9 → 18/32;
    # identical → 1; disjoint (4 px) → 0; one empty → 0; both empty → NaN (documented choice).
    np.testing.assert_array_equal(out[:6], [0.75, 0.5625, 1.0, 0.0, 0.0, 0.0])
    assert math.isnan(out[6])


def _random_masks(rng: np.random.Generator, n: int = 10, shape=(16, 12)) -> tuple[np.ndarray, np.ndarray]:
    density = rng.uniform(0.05, 0.6, (n, 1, 1))
    pred = rng.random((n, *shape)) < density
    target = pred ^ (rng.random((n, *shape)) < 0.15)
    pred[-1] = target[-1] = False
    pred[-2] = False  # one empty
    return pred, target


def test_dice_matches_scipy_and_sklearn():
    pred, target = _random_masks(np.random.default_rng(9))
    out = fc.dice(pred, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's 0/0 for the both-empty pair
        scipy_ref = [1.0 - scipy_dice_dissimilarity(p.ravel(), t.ravel()) for p, t in zip(pred, target)]
    sklearn_ref = [skm.f1_score(t.ravel(), p.ravel(), zero_division=np.nan) for p, t in zip(pred, target)]
    np.testing.assert_allclose(out, scipy_ref, rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(out, sklearn_ref, rtol=0, atol=1e-12, equal_nan=True)
    assert math.isnan(out[-1]) and out[-2] == 0.0 and np.isfinite(out[:-1]).all()


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.zeros((2, 8, 8), bool), np.zeros((2, 8, 9), bool), "same shape"),
        (np.zeros((2, 8, 8), bool), np.zeros((3, 8, 8), bool), "same shape"),
        (np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), bool), "bool mask"),
        (np.zeros((8, 8), bool), np.zeros((8, 8), bool), r"\(N, H, W\)"),
    ],
)
def test_dice_rejects_bad_input(pred, target, match):
    with pytest.raises(ValueError, match=match):
        fc.dice(pred, target)


def test_dice_structures_and_mean():
    rng = np.random.default_rng(10)
    pred = rng.random((5, 3, 16, 16)) < 0.4
    target = pred ^ (rng.random(pred.shape) < 0.2)
    pred[0, 2] = target[0, 2] = False  # aorta absent from both in image 0
    per = fc.dice_structures(pred, target)
    assert list(per) == ["dice_lungs", "dice_heart", "dice_aorta"]
    for k, name in enumerate(fc.ANATOMY_STRUCTURES):
        np.testing.assert_array_equal(per[f"dice_{name}"], fc.dice(pred[:, k], target[:, k]))
    mean = fc.dice_mean(per)
    assert mean[0] == pytest.approx((per["dice_lungs"][0] + per["dice_heart"][0]) / 2)
    np.testing.assert_allclose(mean[1:], np.stack(list(per.values()), 1)[1:].mean(1), atol=1e-15)
    masked = fc.dice_structures(pred, target, against_mask=True)
    assert list(masked) == ["dice_mask_lungs", "dice_mask_heart", "dice_mask_aorta"]
    assert fc.dice_metric_name("mean", against_mask=True) == "dice_mask_mean"
    with pytest.raises(ValueError, match="3 structure channels but 2 names"):
        fc.dice_structures(pred, target, ("lungs", "heart"))
    with pytest.raises(ValueError, match="same shape"):
        fc.dice_structures(pred, target[:, :, :8])


def test_dice_mean_hand_values_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fc.dice_mean(
            {
                "dice_lungs": np.array([0.5, np.nan]),
                "dice_heart": np.array([np.nan, np.nan]),
                "dice_aorta": [1.0, np.nan],
            }
        )
    assert out[0] == 0.75 and math.isnan(out[1])
    with pytest.raises(ValueError, match="same N"):
        fc.dice_mean({"a": np.zeros(2), "b": np.zeros(3)})


def test_anatomy_mask_channels_are_lungs_heart_aorta(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:4, :, 0] = 255  # R: lungs, top half
    rgb[4:, :2, 1] = 255  # G: heart
    rgb[0, 0, 2] = 255  # B: aorta, one pixel
    path = tmp_path / "anatomy.png"
    Image.fromarray(rgb, "RGB").save(path)
    structures = fc.anatomy_structures(read_mask(path))
    assert structures.shape == (3, 8, 8)
    assert [int(s.sum()) for s in structures] == [32, 8, 1]
    assert fc.anatomy_structures(np.stack([rgb, rgb])).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="must be RGB"):
        fc.anatomy_structures(np.zeros((8, 8, 1), dtype=bool))


# ----------------------------------------------------------------------------------------- metadata


def test_catalogue_lists_every_clinical_metric_the_kernels_name():
    from audit.metrics import catalogue

    clinical = {n: catalogue.spec(n) for n in catalogue.names(family="clinical")}
    assert all(m.higher_is_better for m in clinical.values())
    assert {n for n, m in clinical.items() if m.aggregation == "distribution"} == {
        "pathology_auc",
        "pathology_f1",
    }
    expected_dice = {
        fc.dice_metric_name(s, against_mask=a)
        for s in (*fc.ANATOMY_STRUCTURES, "mean")
        for a in (False, True)
    }
    assert {n for n, m in clinical.items() if m.aggregation == "per_sample_mean"} == expected_dice
    assert catalogue.spec(fc.class_metric_name("pathology_auc", "Nodule")) is clinical["pathology_auc"]
    with pytest.raises(KeyError, match="unknown metric 'dice_liver'"):
        catalogue.spec("dice_liver")


def test_average_ranks_match_scipy_rankdata():
    from scipy.stats import rankdata

    from audit.metrics.functional.clinical import _average_ranks

    rng = np.random.default_rng(4)
    p = np.round(rng.uniform(size=(200, 4)), 1)  # heavy ties
    np.testing.assert_array_equal(_average_ranks(p), rankdata(p, axis=0, method="average"))
