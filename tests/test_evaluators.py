"""Evaluator interface: contracts, batching, sigmoid-once, target indices, verified loading.

Every network here is random-init (pretrained weights cannot be downloaded in tests and nothing
may download); download entry points are patched to fail and the xrv/torch caches are watched.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tfi
import torchxrayvision as xrv
from PIL import Image
from torch import nn
from torchxrayvision.baseline_models.chestx_det import PSPNet

from audit.atomic import sha256_file
from audit.evaluators.base import (
    ContractError,
    InputContract,
    UnsafePickleError,
    WeightsHashError,
    load_verified,
    resolve_device,
    resolve_dtype,
)
from audit.evaluators.classifier import XRV_CLASSIFIER_CONTRACT, PathologyClassifier
from audit.evaluators.inception import INCEPTION_CONTRACT, InceptionFeatures
from audit.evaluators.segmenter import (
    PSPNET_CONTRACT,
    STRUCTURE_TARGETS,
    AnatomySegmenter,
    build_pspnet,
    structure_indices,
)
from audit.evaluators.user import UserEvaluator, build_architecture

_CACHES = (Path.home() / ".torchxrayvision", Path.home() / ".cache" / "torch")


def _listing(path: Path) -> list[str] | None:
    return sorted(str(p) for p in path.rglob("*")) if path.exists() else None


def _refuse_download(*args, **kwargs):
    raise AssertionError(f"a test tried to download: {args} {kwargs}")


@pytest.fixture(autouse=True, scope="module")
def _no_downloads(tmp_path_factory):
    before = {p: _listing(p) for p in _CACHES}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
        mp.setattr(xrv.utils, "download", _refuse_download)
        mp.setattr(torch.hub, "load_state_dict_from_url", _refuse_download)
        mp.setattr(torch.hub, "download_url_to_file", _refuse_download)
        mp.setattr(tfi, "load_state_dict_from_url", _refuse_download)
        yield
    assert {p: _listing(p) for p in _CACHES} == before, "tests wrote into the xrv or torch caches"


def _images(seed: int, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for h, w in shapes:
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        img = 0.4 + 0.3 * np.sin(5 * x) * np.cos(3 * y) + rng.normal(0, 0.05, (h, w))
        out.append(np.clip(img, 0, 1).astype(np.float32))
    return out


def _tame_densenet(**kwargs) -> xrv.models.DenseNet:
    """Random-init xrv DenseNet whose logits are O(1) on [-1024, 1024] inputs (not saturated)."""
    model = xrv.models.DenseNet(weights=None, **kwargs)
    with torch.no_grad():
        model.features.conv0.weight.mul_(1 / 1024)
    return model.eval()


def _save_state(module: nn.Module, path: Path) -> tuple[Path, str]:
    torch.save(module.state_dict(), path)
    return path, sha256_file(path)


# --------------------------------------------------------------------------------------------- device


def test_device_auto_resolves_to_available_hardware():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float32")


# --------------------------------------------------------------------------------------------- contract


def test_prepare_center_crops_to_a_square():
    contract = InputContract("t", channels=1, size=4, value_range=(0.0, 1.0))
    wide = np.arange(24, dtype=np.float32).reshape(4, 6) / 23
    tall = np.arange(28, dtype=np.float32).reshape(7, 4) / 27
    batch = contract.prepare([wide, tall])
    assert batch.shape == (2, 1, 4, 4) and batch.dtype == torch.float32
    np.testing.assert_array_equal(batch[0, 0].numpy(), wide[:, 1:5])
    np.testing.assert_array_equal(batch[1, 0].numpy(), tall[1:5, :])


@pytest.mark.parametrize("shape, size", [((64, 48), 32), ((48, 48), 80)])
def test_prepare_resize_matches_pillow_bilinear(shape, size):
    contract = InputContract("t", channels=2, size=size, value_range=(0.0, 1.0))
    (img,) = _images(1, [shape])
    side = min(shape)
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    crop = img[top : top + side, left : left + side]
    expected = np.asarray(Image.fromarray(crop, mode="F").resize((size, size), Image.BILINEAR))
    batch = contract.prepare([img]).numpy()
    assert batch.shape == (1, 2, size, size)
    np.testing.assert_allclose(batch[0, 0], expected, atol=2e-5)
    np.testing.assert_array_equal(batch[0, 0], batch[0, 1])  # grey repeated


def test_xrv_contract_range_is_xrv_normalize():
    (img,) = _images(2, [(224, 224)])
    batch = XRV_CLASSIFIER_CONTRACT.prepare([img]).numpy()
    np.testing.assert_allclose(batch[0, 0], xrv.utils.normalize(img, 1), atol=1e-3)
    assert PSPNET_CONTRACT.shape == (1, 512, 512) and PSPNET_CONTRACT.value_range == (-1024, 1024)


def test_inception_contract_is_uint8_rgb_299():
    (img,) = _images(3, [(299, 299)])
    batch = INCEPTION_CONTRACT.prepare([img])
    assert batch.shape == (1, 3, 299, 299)
    for c in range(3):
        np.testing.assert_array_equal(batch[0, c].numpy(), np.rint(img.astype(np.float64) * 255))


def test_check_names_evaluator_and_expected_vs_got():
    contract = InputContract("my-net", channels=1, size=8, value_range=(-1024.0, 1024.0))
    good = torch.zeros(2, 1, 8, 8)
    contract.check(good)
    with pytest.raises(ContractError, match=r"my-net.*batch 3.*\(N>=1, 1, 8, 8\), got \(2, 3, 8, 8\)"):
        contract.check(torch.zeros(2, 3, 8, 8), batch_index=3)
    with pytest.raises(ContractError, match="float32 before casting, got torch.float64"):
        contract.check(good.double())
    with pytest.raises(ContractError, match=r"expected values in \[-1024, 1024\], got \[0, 2000\]"):
        contract.check(good.index_fill(2, torch.tensor([0]), 2000.0))
    with pytest.raises(ContractError, match="expected values"):
        contract.check(good.index_fill(2, torch.tensor([0]), float("nan")))


class _CountingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.mean(dim=(2, 3))


def test_range_is_checked_on_every_batch_not_only_the_first():
    contract = InputContract("counting", channels=1, size=8, value_range=(-1024.0, 1024.0))
    net = _CountingNet()
    evaluator = UserEvaluator(net, contract, name="counting", device="cpu")
    images = _images(4, [(8, 8)] * 5)
    assert evaluator.run(images, batch_size=2).outputs.shape == (5, 1)
    net.calls = 0
    images[3] = images[3] * 255  # an 8-bit image that skipped the [0, 1] conversion, in the 2nd batch
    with pytest.raises(ContractError, match=r"counting: input contract violated in batch 1"):
        evaluator.run(images, batch_size=2)
    assert net.calls == 1  # the first batch ran, the bad one never reached the network


# --------------------------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def densenet() -> xrv.models.DenseNet:
    return _tame_densenet()


def _check_batch_independence(evaluator: PathologyClassifier, n: int, batch_sizes: tuple[int, ...]) -> None:
    images = _images(5, [(240, 260), (224, 224), (300, 250), (230, 230)] * (n // 4) + [(226, 224)] * (n % 4))
    one = evaluator.run(images, batch_size=1)
    assert one.probabilities.shape == (n, 18) and one.features.shape == (n, 1024)
    assert 0.05 < one.probabilities.mean() < 0.95  # not saturated, so the comparison means something
    scale = max(float(np.abs(one.features).max()), 1.0)
    for batch_size in batch_sizes:
        other = evaluator.run(images, batch_size=batch_size)
        np.testing.assert_allclose(other.probabilities, one.probabilities, rtol=0, atol=1e-5)
        np.testing.assert_allclose(other.features, one.features, rtol=0, atol=1e-5 * scale)


def test_classifier_is_batch_size_independent(densenet):
    evaluator = PathologyClassifier(densenet, device="auto")
    assert evaluator.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert evaluator.pathologies == tuple(xrv.models.DenseNet.targets) and evaluator.calibration == "sigmoid"
    _check_batch_independence(evaluator, 6, (6, 4))  # 4: a ragged last batch


@pytest.mark.slow
def test_classifier_batch_1_vs_32_on_cpu(densenet):
    _check_batch_independence(PathologyClassifier(densenet, device="cpu"), 32, (32,))


def _manual_op_norm(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """xrv's op_norm, written out: the operating point t maps to 0.5; NaN t gives 0.5."""
    out = np.where(p < t, p / (2 * t), 1 - (1 - p) / (2 * (1 - t)))
    return np.where(np.isnan(t), 0.5, out)


def test_sigmoid_is_applied_exactly_once(densenet):
    images = _images(6, [(256, 224)])
    x = XRV_CLASSIFIER_CONTRACT.prepare(images)
    with torch.inference_mode():
        logits = densenet.classifier(densenet.features2(x)).numpy().astype(np.float64)
    sig = 1 / (1 + np.exp(-logits))
    thresholds = np.linspace(0.05, 0.9, 18)
    thresholds[-2:] = np.nan  # untrained outputs, as in xrv's nih weights

    for apply_sigmoid in (False, True):
        densenet.apply_sigmoid = apply_sigmoid
        densenet.op_threshs = None
        got = PathologyClassifier(densenet, device="cpu").run(images, batch_size=2)
        np.testing.assert_allclose(got.probabilities, sig, atol=1e-6)
        with torch.inference_mode():
            forward = densenet(x).numpy()
        # xrv's forward returns probabilities only when apply_sigmoid is set; we never re-squash them.
        np.testing.assert_allclose(
            got.probabilities, forward if apply_sigmoid else 1 / (1 + np.exp(-forward)), atol=1e-6
        )
        assert np.abs(got.probabilities - 1 / (1 + np.exp(-sig))).max() > 0.05  # what a double sigmoid gives

    densenet.apply_sigmoid = False
    densenet.op_threshs = torch.tensor(thresholds, dtype=torch.float32)
    try:
        calibrated = PathologyClassifier(densenet, device="cpu").run(images)
        plain = PathologyClassifier(densenet, device="cpu", use_op_norm=False).run(images)
        with torch.inference_mode():
            forward = densenet(x).numpy()
    finally:
        densenet.op_threshs = None
    assert calibrated.calibration == "sigmoid+op_norm" and plain.calibration == "sigmoid"
    np.testing.assert_allclose(calibrated.probabilities, _manual_op_norm(sig, thresholds), atol=1e-6)
    np.testing.assert_allclose(calibrated.probabilities, forward, atol=1e-6)  # xrv's own sigmoid+op_norm
    np.testing.assert_allclose(plain.probabilities, sig, atol=1e-6)


def test_classifier_refuses_a_head_that_already_squashes():
    model = xrv.models.DenseNet(weights=None, num_classes=3)
    model.classifier = nn.Sequential(nn.Linear(1024, 3), nn.Sigmoid())
    with pytest.raises(TypeError, match="sigmoid would have it applied twice"):
        PathologyClassifier(model, device="cpu")
    with pytest.raises(ValueError, match="3 pathology names for a head with 18 outputs"):
        PathologyClassifier(xrv.models.DenseNet(weights=None), pathologies=["a", "b", "c"], device="cpu")


def test_classifier_from_file_uses_the_named_weights_metadata(tmp_path, densenet):
    path, sha = _save_state(densenet, tmp_path / "nih.pt")
    evaluator = PathologyClassifier.from_file(path, sha, weights="densenet121-res224-nih", device="cpu")
    meta = xrv.models.model_urls["densenet121-res224-nih"]
    assert evaluator.pathologies == tuple(meta["labels"]) and evaluator.weights_sha256 == sha
    out = evaluator.run(_images(7, [(224, 224)]))
    assert out.calibration == "sigmoid+op_norm"
    untrained = [i for i, name in enumerate(out.pathologies) if name == ""]
    assert untrained and np.all(out.probabilities[:, untrained] == 0.5)
    # A whole pickled module (xrv's download format) loads through the allowlisted stand-ins, never by
    # running its classes (tests/test_safe_load.py); plain weights-only loading still refuses it.
    pickled = tmp_path / "module.pt"
    torch.save(densenet, pickled)
    with pytest.raises(UnsafePickleError, match="torchxrayvision.models.DenseNet"):
        load_verified(pickled, sha256_file(pickled))
    again = PathologyClassifier.from_file(
        pickled, sha256_file(pickled), weights="densenet121-res224-nih", device="cpu"
    )
    np.testing.assert_array_equal(again.run(_images(7, [(224, 224)])).probabilities, out.probabilities)
    with pytest.raises(ValueError, match="unknown xrv DenseNet weights"):
        PathologyClassifier.from_file(path, sha, weights="resnet50-res512-all")


# --------------------------------------------------------------------------------------------- hashes


def _fail_if_loaded(*args, **kwargs):
    raise AssertionError("torch.load saw a file whose hash did not match")


@pytest.mark.parametrize(
    "kind", ["load", "classifier", "segmenter", "inception", "state_dict", "torchscript"]
)
def test_hash_mismatch_refuses_before_torch_load(tmp_path, monkeypatch, kind):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    actual = sha256_file(path)
    wrong = "0" * 64
    monkeypatch.setattr(torch, "load", _fail_if_loaded)
    monkeypatch.setattr(torch.jit, "load", _fail_if_loaded)
    contract = InputContract("u", channels=1, size=8, value_range=(0.0, 1.0))
    loaders = {
        "load": lambda: load_verified(path, wrong),
        "classifier": lambda: PathologyClassifier.from_file(path, wrong),
        "segmenter": lambda: AnatomySegmenter.from_file(path, wrong),
        "inception": lambda: InceptionFeatures.from_file(path, wrong),
        "state_dict": lambda: UserEvaluator.from_state_dict(
            path, wrong, "torchvision-resnet18", 2, contract, name="u"
        ),
        "torchscript": lambda: UserEvaluator.from_torchscript(path, wrong, contract, name="u"),
    }
    with pytest.raises(WeightsHashError) as err:
        loaders[kind]()
    message = str(err.value)
    assert str(path) in message and wrong in message and actual in message
    with pytest.raises(ValueError, match="64 hex digits"):
        load_verified(path, "abc")


# --------------------------------------------------------------------------------------------- segmenter


def test_structure_targets_map_to_fixed_pspnet_indices():
    for names in STRUCTURE_TARGETS.values():
        assert set(names) <= set(PSPNet.targets)
    assert structure_indices() == {"lungs": (4, 5), "heart": (8,), "aorta": (9,)}
    assert [PSPNet.targets[i] for i in (4, 5, 8, 9)] == ["Left Lung", "Right Lung", "Heart", "Aorta"]
    with pytest.raises(ValueError, match="lack"):
        structure_indices(("Left Lung", "Heart"))


class _StubSegmenter(nn.Module):
    """Logits designed by hand: each target positive on a known region."""

    targets = PSPNet.targets

    def forward(self, x):
        n, _, h, w = x.shape
        logits = torch.full((n, 14, h, w), 3.0)  # unrelated targets on everywhere: they must be ignored
        logits[:, 4] = -3.0
        logits[:, 4, :, : w // 2] = 3.0  # left lung: left half
        logits[:, 5] = -3.0
        logits[:, 5, : h // 2, w // 2 :] = 3.0  # right lung: top-right quadrant
        logits[:, 8] = -3.0
        logits[:, 8, :100] = 3.0  # heart: top 100 rows
        logits[:, 9] = -3.0  # aorta: nowhere
        return logits


def test_segmenter_masks_union_lungs_and_ignore_other_targets():
    evaluator = AnatomySegmenter(_StubSegmenter(), device="cpu")
    out = evaluator.run(_images(8, [(512, 600), (520, 512)]), batch_size=1)
    assert out.structures == ("lungs", "heart", "aorta") and out.masks.dtype == bool
    expected = np.zeros((3, 512, 512), dtype=bool)
    expected[0, :, :256] = True
    expected[0, :256, 256:] = True
    expected[1, :100] = True
    for masks in out.masks:
        np.testing.assert_array_equal(masks, expected)


@pytest.fixture(scope="module")
def pspnet_file(tmp_path_factory) -> tuple[Path, str, dict[str, torch.Tensor]]:
    model = build_pspnet()
    path = tmp_path_factory.mktemp("pspnet") / "pspnet.pth"
    path, sha = _save_state(nn.DataParallel(model.model), path)  # xrv's file has DataParallel "module." keys
    return path, sha, model.model.state_dict()


def test_pspnet_builds_without_download_and_loads_a_verified_file(pspnet_file):
    path, sha, state = pspnet_file
    evaluator = AnatomySegmenter.from_file(path, sha, device="cpu")
    assert isinstance(evaluator.model, PSPNet) and evaluator.weights_sha256 == sha
    loaded = evaluator.model.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert evaluator.model.model.classification.out_channels == len(PSPNet.targets)


@pytest.mark.slow
def test_pspnet_forward_gives_thresholded_masks(pspnet_file):
    path, sha, _ = pspnet_file
    evaluator = AnatomySegmenter.from_file(path, sha, device="cpu")
    captured = []
    evaluator.model.register_forward_hook(lambda mod, inp, out: captured.append(out))
    out = evaluator.run(_images(9, [(512, 540)]))
    (logits,) = captured
    assert logits.shape == (1, 14, 512, 512)
    probs = torch.sigmoid(logits).numpy()[0] > 0.5
    np.testing.assert_array_equal(out.masks[0], np.stack([probs[4] | probs[5], probs[8], probs[9]]))


# --------------------------------------------------------------------------------------------- inception


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> tuple[Path, str]:
    """A random-init torch-fidelity Inception state dict (the constructor insists on loading weights)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        extractor = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    return _save_state(extractor, tmp_path_factory.mktemp("inception") / "inception.pth")


def test_inception_features_from_verified_file(inception_file):
    path, sha = inception_file
    evaluator = InceptionFeatures.from_file(path, sha, device="cpu")
    images = _images(10, [(299, 320), (200, 180)])
    out = evaluator.run(images, batch_size=1)
    assert out.features.shape == (2, 2048) and out.feature == "2048"
    # Independent preprocessing: crop, Pillow resize, rint(255 x), grey repeated.
    manual = []
    for img in images:
        side = min(img.shape)
        top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        crop = img[top : top + side, left : left + side]
        if side != 299:
            crop = np.asarray(Image.fromarray(crop, mode="F").resize((299, 299), Image.BILINEAR))
        manual.append(np.repeat(np.rint(crop * 255)[None], 3, axis=0))
    x = torch.from_numpy(np.stack(manual).astype(np.uint8))
    with torch.inference_mode():
        (expected,) = evaluator.model(x)
    np.testing.assert_allclose(out.features, expected.numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="float32 only"):
        InceptionFeatures(evaluator.model, dtype="fp16")


# --------------------------------------------------------------------------------------------- user


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_torchscript_round_trip(tmp_path):
    net = _TinyNet().eval()
    path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(net), str(path))
    contract = InputContract("knee-net", channels=1, size=16, value_range=(-1.0, 1.0))
    evaluator = UserEvaluator.from_torchscript(
        path, sha256_file(path), contract, name="knee-net", labels=["ok", "fracture"], device="cpu"
    )
    images = _images(11, [(20, 16), (16, 16), (30, 40)])
    out = evaluator.run(images, batch_size=2)
    with torch.inference_mode():
        expected = net(contract.prepare(images)).numpy()
    assert out.labels == ("ok", "fracture") and evaluator.weights_sha256 == sha256_file(path)
    np.testing.assert_allclose(out.outputs, expected, atol=1e-6)


def test_state_dict_plus_architecture_round_trip(tmp_path):
    net = build_architecture("torchvision-resnet18", 3).eval()
    path, sha = _save_state(net, tmp_path / "resnet.pt")
    contract = InputContract("hip-net", channels=1, size=32, value_range=(0.0, 1.0))
    evaluator = UserEvaluator.from_state_dict(
        path, sha, "torchvision-resnet18", 3, contract, name="hip-net", device="cpu"
    )
    images = _images(12, [(32, 32), (40, 36)])
    with torch.inference_mode():
        expected = net(contract.prepare(images)).numpy()
    np.testing.assert_allclose(evaluator.run(images).outputs, expected, atol=1e-5)
    with pytest.raises(ValueError, match="does not fit architecture 'torchvision-densenet121'"):
        UserEvaluator.from_state_dict(path, sha, "torchvision-densenet121", 3, contract, name="hip-net")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_architecture("vit-h14", 3)
    assert os.fspath(path)  # the file stays where the test put it


def test_saturated_images_pass_the_range_check_after_resizing():
    """Antialiased resizing rounds a saturated 1.0 to 1.0000001; that must not fail the contract."""
    for contract in (
        XRV_CLASSIFIER_CONTRACT,
        InputContract("x", channels=1, size=224, value_range=(0.0, 1.0)),
    ):
        for img in (np.ones((256, 256), np.float32), np.zeros((300, 256), np.float32)):
            batch = contract.prepare([img])
            contract.check(batch)
            lo, hi = contract.value_range
            assert float(batch.max()) in (lo, hi) and float(batch.min()) in (lo, hi)
    # An image outside [0, 1] still fails after the same resize.
    with pytest.raises(ContractError, match="expected values"):
        XRV_CLASSIFIER_CONTRACT.check(XRV_CLASSIFIER_CONTRACT.prepare([np.full((256, 256), 1.5, np.float32)]))
