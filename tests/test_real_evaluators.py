"""The real, pinned checkpoints (slow): run them where they are in the store, skip where they are not.

Get them with ``xray-audit weights fetch densenet121-res224-all`` (and ``inception-v3-fid``,
``rad-dino``) or ``xray-audit weights import``, then ``pytest -m slow tests/test_real_evaluators.py``.
The two image folders are the demo cohort's real CT projections, split in two halves.

* FID and FD-RadDino from the suite's evaluators equal torchmetrics' ``FrechetInceptionDistance``
  fed the same features (its own covariance and matrix square root).
* The safe loader reads xrv's real DenseNet pickle (only the allowlisted classes, no code), and the
  probabilities match torchxrayvision's own model built from the same file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit import weights

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _users_store(monkeypatch):
    """Look for the weights in the user's own store, not the suite's throw-away home."""
    import platformdirs

    from tests.conftest import USER_HOME

    monkeypatch.setenv("XRAY_AUDIT_HOME", USER_HOME or platformdirs.user_cache_dir("xray-audit"))


def _need(name: str):
    st = weights.status(name)
    if st.state != "ok":
        pytest.skip(f"{name} is {st.state} in {weights.weights_dir()}: `xray-audit weights fetch {name}`")
    return st


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from audit import images
    from audit.demo.cohort import build_cohort

    manifest = build_cohort(n_cases=24, size=256, seed=11, root=tmp_path_factory.mktemp("c"), progress=False)
    import pandas as pd

    paths = [manifest.parent / p for p in pd.read_csv(manifest)["image"]]
    pix = [images.read_image(p).pixels for p in paths]
    return pix[:12], pix[12:]


class _Fixed(torch.nn.Module):
    """Hands torchmetrics precomputed features, one row per 'image' index."""

    def __init__(self, features: np.ndarray):
        super().__init__()
        self.features = torch.from_numpy(features.astype(np.float64))
        self.num_features = features.shape[1]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.features[index.flatten().long()]


def _torchmetrics_fd(real: np.ndarray, gen: np.ndarray) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    both = np.concatenate([real, gen])
    metric = FrechetInceptionDistance(feature=_Fixed(both), reset_real_features=True).double()
    metric.update(torch.arange(len(real)), real=True)
    metric.update(torch.arange(len(real), len(both)), real=False)
    return float(metric.compute())


def _suite_fd(real: np.ndarray, gen: np.ndarray) -> float:
    from audit.metrics.functional import distribution as fd

    return fd.frechet_distance(fd.FeatureStats.from_features(real), fd.FeatureStats.from_features(gen)).value


@pytest.fixture
def inception():
    return _need("inception-v3-fid")


@pytest.fixture
def raddino():
    return _need("rad-dino")


@pytest.fixture
def densenet():
    return _need("densenet121-res224-all")


# The weights fixtures come first in each signature, so a missing file skips before the cohort is built.
def test_fid_matches_torchmetrics_on_the_same_inception_features(inception, folders):
    from audit.evaluators.inception import InceptionFeatures

    st = inception
    net = InceptionFeatures.from_file(st.path, st.weights_sha256, device="auto")
    a, b = (net.run(f).features.astype(np.float64) for f in folders)
    assert _suite_fd(a, b) == pytest.approx(_torchmetrics_fd(a, b), rel=1e-4)


def test_fd_raddino_matches_torchmetrics_on_the_same_raddino_features(raddino, folders):
    from audit.evaluators.hf import HFFeatures

    st = raddino
    files = {f: p.sha256 for f, p in weights.pins_of(weights.entry("rad-dino")).items()}
    net = HFFeatures.from_dir(st.path, files, name="rad-dino", device="auto")
    assert net.contract.size == 518  # its own processor's resolution, not 299
    a, b = (net.run(f).features.astype(np.float64) for f in folders)
    assert a.shape[1] == 768
    assert _suite_fd(a, b) == pytest.approx(_torchmetrics_fd(a, b), rel=1e-4)


def test_real_densenet_pickle_loads_safely_and_matches_torchxrayvision(densenet, folders, tmp_path):
    import shutil

    import torchxrayvision as xrv

    from audit.evaluators.classifier import PathologyClassifier

    st = densenet
    ours = PathologyClassifier.from_file(st.path, st.weights_sha256, device="cpu")
    # torchxrayvision's own loader (it unpickles with weights_only=False) on a copy of the same bytes.
    cache = tmp_path / "xrv"
    cache.mkdir()
    shutil.copyfile(st.path, cache / st.path.name)
    theirs = xrv.models.DenseNet(weights="densenet121-res224-all", cache_dir=str(cache)).eval()
    images = folders[0][:4]
    from audit.evaluators.classifier import XRV_CLASSIFIER_CONTRACT

    x = XRV_CLASSIFIER_CONTRACT.prepare(images)
    with torch.inference_mode():
        expected = theirs(x).numpy()  # sigmoid + op_norm, as xrv applies them for named weights
    got = ours.run(images).probabilities
    keep = [i for i, c in enumerate(ours.pathologies) if c]
    np.testing.assert_allclose(got[:, keep], expected[:, keep], atol=1e-5)
