"""Issue 17: weight files are unpickled without code execution, pinned or not.

torchxrayvision's DenseNet ``.pt`` files are whole pickled modules; they must load through inert
stand-ins into the module's exact ``state_dict()``, in both torch serialisation formats, while any
other global (``os.system``, an unlisted class) is refused before it can run. Every network here is
random-init and nothing is downloaded.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchxrayvision as xrv
from torch import nn
from torch.nn.backends import thnn

from audit.atomic import sha256_file
from audit.evaluators.base import (
    PICKLE_ALLOWLIST,
    UnsafePickleError,
    WeightsHashError,
    load_state_dict_verified,
    load_verified,
)
from audit.evaluators.classifier import XRV_CLASSIFIER_CONTRACT, PathologyClassifier
from audit.evaluators.safe_pickle import load_state_dict

FORMATS = pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
SYSTEM = f"{os.system.__module__}.system"  # posix.system here; what a pickle of os.system names


class _RunsCommand:
    """Unpickling this runs ``touch marker`` (the classic pickle payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Custom:
    """A class the allowlist does not name; its __setstate__ would leave a trace if it ever ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __setstate__(self, state):
        Path(state["marker"]).touch()


class _OldBackend:
    """Pickles like a module's ``_backend`` did under torch <= 1.2."""

    def __reduce__(self):
        return (thnn._get_thnn_function_backend, ())


def _densenet(num_classes: int = 18) -> xrv.models.DenseNet:
    torch.manual_seed(0)
    model = xrv.models.DenseNet(weights=None, num_classes=num_classes)
    with torch.no_grad():
        model.features.conv0.weight.mul_(1 / 1024)  # O(1) logits on [-1024, 1024] inputs
        for module in model.modules():  # non-trivial buffers, so they must come through too
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.9, 1.1)
                module.num_batches_tracked.fill_(7)
    return model.eval()


def _save(obj, path: Path, zipped: bool) -> tuple[Path, str]:
    torch.save(obj, path, _use_new_zipfile_serialization=zipped)
    return path, sha256_file(path)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 1, (64, 64)).astype(np.float32) for _ in range(2)]


def _assert_same_state(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert type(got[key]) is torch.Tensor and torch.equal(got[key], value), key


# --------------------------------------------------------------------------------------------- loads


@FORMATS
def test_pickled_densenet_loads_as_its_state_dict_and_classifies_identically(tmp_path, zipped):
    model = _densenet()
    # A non-persistent buffer is left out of state_dict(), so the flattening must leave it out too.
    model.features.register_buffer("scratch", torch.ones(3), persistent=False)
    expected = model.state_dict()
    path, sha = _save(model, tmp_path / "densenet.pt", zipped)
    _assert_same_state(load_state_dict_verified(path, sha), expected)
    # The stand-ins were allowed only for the load (torch itself may register more globals meanwhile).
    from audit.evaluators.safe_pickle import _STAND_INS

    left = [
        g
        for g in torch.serialization.get_safe_globals()
        if any(g is s or (isinstance(g, tuple) and g[0] is s) for s in _STAND_INS.values())
    ]
    assert not left

    evaluator = PathologyClassifier.from_file(
        path, sha, weights="densenet121-res224-nih", use_op_norm=False, device="cpu"
    )
    images = _images()
    with torch.inference_mode():
        reference = torch.sigmoid(model(XRV_CLASSIFIER_CONTRACT.prepare(images))).numpy()
    got = evaluator.run(images).probabilities
    assert 0.05 < got.mean() < 0.95  # not saturated, so equality means something
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-6)


def test_old_torch_module_pickle_loads(tmp_path):
    # What torch < 1.6 wrote: legacy format, no _non_persistent_buffers_set, and (torch <= 1.2) a
    # `_backend` rebuilt by calling torch.nn.backends.thnn._get_thnn_function_backend.
    model = _densenet(num_classes=3)
    expected = model.state_dict()
    for module in model.modules():
        del module.__dict__["_non_persistent_buffers_set"]
        module.__dict__["_backend"] = _OldBackend()
    path, sha = _save(model, tmp_path / "old.pt", zipped=False)
    _assert_same_state(load_state_dict_verified(path, sha), expected)


@FORMATS
def test_state_dicts_load_as_they_are(tmp_path, zipped):
    state = OrderedDict(w=torch.randn(2, 3), b=torch.arange(4))
    path, sha = _save(state, tmp_path / "state.pth", zipped)
    got = load_state_dict_verified(path, sha)
    _assert_same_state(got, state)
    path, sha = _save({"w": torch.ones(1), "epoch": 3}, tmp_path / "checkpoint.pth", zipped)
    with pytest.raises(ValueError, match="not a state dict"):
        load_state_dict_verified(path, sha)


def test_load_verified_stays_weights_only(tmp_path):
    path, sha = _save(_densenet(num_classes=3), tmp_path / "densenet.pt", zipped=True)
    with pytest.raises(UnsafePickleError, match="`torchxrayvision.models.DenseNet`"):
        load_verified(path, sha)
    path, sha = _save({"w": torch.ones(2)}, tmp_path / "state.pt", zipped=True)
    assert torch.equal(load_verified(path, sha)["w"], torch.ones(2))


def test_allowlist_names_exactly_the_densenet_classes():
    model = xrv.models.DenseNet(weights=None)
    classes = {f"{type(m).__module__}.{type(m).__qualname__}" for m in model.modules()}
    assert classes == set(PICKLE_ALLOWLIST) - {"torch.nn.backends.thnn._get_thnn_function_backend"}


# --------------------------------------------------------------------------------------------- refusals


def _refused(path: Path, sha: str, name: str, marker: Path) -> UnsafePickleError:
    with pytest.raises(UnsafePickleError) as err:
        load_state_dict_verified(path, sha)
    message = str(err.value)
    assert str(path) in message and f"`{name}`" in message and err.value.refused == name
    assert "Nothing from the file was executed" in message and "xray-audit weights fetch" in message
    assert not marker.exists()
    return err.value


@FORMATS
def test_a_pickled_command_is_refused_and_never_runs(tmp_path, zipped):
    marker = tmp_path / "pwned"
    path, sha = _save(_RunsCommand(marker), tmp_path / "evil.pt", zipped)
    _refused(path, sha, SYSTEM, marker)
    with pytest.raises(UnsafePickleError):
        PathologyClassifier.from_file(path, sha, device="cpu")
    assert not marker.exists()


@FORMATS
def test_a_command_hidden_inside_a_densenet_is_refused(tmp_path, zipped):
    marker = tmp_path / "pwned"
    model = _densenet(num_classes=3)
    model.features.denseblock1.denselayer1.payload = _RunsCommand(marker)
    path, sha = _save(model, tmp_path / "evil.pt", zipped)
    _refused(path, sha, SYSTEM, marker)


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_a_plain_pickle_with_a_command_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_RunsCommand(marker), protocol=protocol))
    with pytest.raises(UnsafePickleError, match="Nothing from the file was executed") as err:
        load_state_dict_verified(path, sha256_file(path))
    if protocol == 2:  # torch's own protocol; later ones stop at their first opcode torch never writes
        assert err.value.refused == SYSTEM
    assert not marker.exists()


@FORMATS
def test_a_class_off_the_allowlist_is_refused(tmp_path, zipped):
    marker = tmp_path / "ran"
    model = _densenet(num_classes=3)
    model.features.add_module("extra", nn.Conv3d(1, 1, 1))
    path, sha = _save(model, tmp_path / "conv3d.pt", zipped)
    _refused(path, sha, "torch.nn.modules.conv.Conv3d", marker)

    model = _densenet(num_classes=3)
    model.extra = _Custom(marker)
    path, sha = _save(model, tmp_path / "custom.pt", zipped)
    _refused(path, sha, f"{__name__}._Custom", marker)


def test_setting_state_on_a_class_is_refused(tmp_path):
    # GLOBAL torch.Tensor; (None, {"evil": 1}); BUILD: plain pickle would setattr(torch.Tensor, "evil", 1).
    path = tmp_path / "patch.pt"
    path.write_bytes(b"\x80\x02ctorch\nTensor\nN}X\x04\x00\x00\x00evilK\x01s\x86b.")
    with pytest.raises(UnsafePickleError, match="set the state of") as err:
        load_state_dict_verified(path, sha256_file(path))
    assert not err.value.is_global and not hasattr(torch.Tensor, "evil")


@FORMATS
def test_a_wrong_hash_refuses_before_anything_is_unpickled(tmp_path, monkeypatch, zipped):
    marker = tmp_path / "pwned"
    path, actual = _save(_RunsCommand(marker), tmp_path / "evil.pt", zipped)

    def never(*args, **kwargs):
        raise AssertionError("unpickled a file whose hash did not match")

    monkeypatch.setattr(torch, "load", never)
    for load in (load_state_dict_verified, load_verified):
        with pytest.raises(WeightsHashError, match=actual):
            load(path, "0" * 64)
    with pytest.raises(WeightsHashError):
        PathologyClassifier.from_file(path, "0" * 64, device="cpu")
    assert not marker.exists()


def test_a_trusted_but_malicious_weights_file_stops_the_run_and_never_runs(tmp_path, monkeypatch, caplog):
    """`weights import --trust` pins whatever it finds; pinning must not make a pickle executable."""
    from audit.cli import main
    from audit.weights import MANIFEST
    from tests.conftest import make_cohort

    monkeypatch.setenv("XRAY_AUDIT_HOME", str(tmp_path / "home"))
    marker = tmp_path / "pwned"
    src = tmp_path / "usb"
    src.mkdir()
    name = MANIFEST["densenet121-res224-nih"].filename
    torch.save(_RunsCommand(marker), src / name)
    assert main(["-q", "weights", "import", str(src), "--trust"]) == 0
    cases = make_cohort(tmp_path / "cohort", n=4, size=64)
    cfg = tmp_path / "study.toml"
    cfg.write_text(
        f'[study]\nname = "t"\ncases = "{cases}"\noutput = "{tmp_path / "run"}"\n\n'
        '[[models]]\nname = "real"\nkind = "real"\n\n'
        '[metrics]\npixel = ["psnr"]\nclinical = ["pathology_auc"]\n\n'
        '[evaluators]\nclassifier = "xrv"\nclassifier_weights = "densenet121-res224-nih"\ndevice = "cpu"\n'
    )
    assert main(["-q", "run", str(cfg), "--no-report"]) == 1
    assert not marker.exists()
    assert "refused to load weights file" in caplog.text and "posix.system" in caplog.text


# Hand-assembled legacy (non-zip) files: what an attacker, not torch.save, would write.
MARK, TUPLE, REDUCE, STOP, BUILD, NEWOBJ = b"(", b"t", b"R", b".", b"b", b"\x81"
EMPTY_DICT, SETITEM, SETITEMS, EMPTY_TUPLE, EMPTY_LIST = b"}", b"s", b"u", b")", b"]"


def _legacy(main: bytes) -> bytes:
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    info = {
        "protocol_version": PROTOCOL_VERSION,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, info))
    return head + b"\x80\x02" + main + STOP + pickle.dumps([], protocol=2)


def _g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _u(text: str) -> bytes:
    return b"X" + len(text.encode()).to_bytes(4, "little") + text.encode()


def _i(n: int) -> bytes:
    return b"J" + n.to_bytes(4, "little", signed=True)


def _tensor(kind: str, rows: list[list[int]] | list[float]) -> bytes:
    """``torch.<kind>(rows)`` through REDUCE on an allowlisted tensor type."""
    import struct

    def item(v):
        return _i(v) if isinstance(v, int) else b"G" + struct.pack(">d", v)

    def seq(values):
        return EMPTY_LIST + MARK + b"".join(seq(v) if isinstance(v, list) else item(v) for v in values) + b"e"

    return _g("torch", kind) + MARK + seq(rows) + TUPLE + REDUCE


def test_a_sparse_tensor_with_out_of_bounds_indices_is_refused():
    """torch's legacy reader skips the sparse bounds check weights_only applies: dense CPU tensors only."""
    indices = _tensor("LongTensor", [[10_000_000], [0]])  # row 10M of a 2 x 2 tensor
    size = _g("torch", "Size") + MARK + MARK + _i(2) + _i(2) + TUPLE + TUPLE + REDUCE
    layout = _g("torch.serialization", "_get_layout") + MARK + _u("torch.sparse_coo") + TUPLE + REDUCE
    args = MARK + indices + _tensor("FloatTensor", [1.0]) + size + TUPLE
    sparse = _g("torch._utils", "_rebuild_sparse_tensor") + MARK + layout + args + TUPLE + REDUCE
    with pytest.raises(ValueError, match="not a state dict"):
        load_state_dict(_legacy(EMPTY_DICT + _u("weight") + sparse + SETITEM), "sparse.pt")


def test_shared_or_deep_module_trees_are_refused_quickly():
    import time

    seq = _g("torch.nn.modules.container", "Sequential")

    def module(children: bytes) -> bytes:
        state = (
            MARK + _u("_parameters") + EMPTY_DICT + _u("_buffers") + EMPTY_DICT + _u("_modules") + children
        )
        return seq + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + state + SETITEMS + BUILD

    def memo(op: bytes, i: int) -> bytes:
        return op + i.to_bytes(4, "little")

    body = module(EMPTY_DICT) + memo(b"r", 0)
    for i in range(1, 25):  # every level holds the previous one twice: 2**24 paths if walked naively
        twice = EMPTY_DICT + MARK + _u("a") + memo(b"j", i - 1) + _u("b") + memo(b"j", i - 1) + SETITEMS
        body += module(twice) + memo(b"r", i)
    t = time.perf_counter()
    with pytest.raises(ValueError, match="appears twice"):
        load_state_dict(_legacy(body), "dag.pt")
    assert time.perf_counter() - t < 5
    chain = module(EMPTY_DICT) + memo(b"r", 0)
    for i in range(1, 40):
        chain += module(EMPTY_DICT + _u("a") + memo(b"j", i - 1) + SETITEM) + memo(b"r", i)
    with pytest.raises(ValueError, match="deeper than 32 levels"):
        load_state_dict(_legacy(chain), "deep.pt")
