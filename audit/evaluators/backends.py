"""The networks behind evaluator plans: one :class:`~audit.evaluators.plan.Backend` class per built-in
evaluator, each built from ``(plan, LoadOptions)`` (the loaders of :data:`audit.evaluators.registry.EVALUATORS`).

Constructing one imports torch and the network's library and loads its verified weights; importing this
module imports neither, so resolving evaluators and a fully cached run stay torch-free. What a run needs
to know of a classifier before (or without) loading it, its classes, whether it gives pooled features and
its fixed-threshold policy, are class attributes of :class:`ClassifierBackend`
(:func:`audit.evaluators.suite.classifier_of`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from audit.config_base import UserClassifierSection
from audit.evaluators.plan import EvaluatorPlan, LoadOptions
from audit.metrics.functional.clinical import FIXED_THRESHOLD_POLICY


class _Network:
    """What every backend holds: its plan, its batch size, and (classifiers only) its classes."""

    def __init__(self, plan: EvaluatorPlan, options: LoadOptions):
        self.plan = plan
        self.batch_size = options.batch_size
        self.classes: tuple[str, ...] = ()
        self.calibration = ""


class ClassifierBackend(_Network, abc.ABC):
    """A classifier: per-class probabilities (and pooled features where :attr:`gives_features`)."""

    # Whether its outputs hold pooled ``features`` (fxd and precision/recall/density/coverage need them).
    gives_features: ClassVar[bool] = True
    # How pathology_f1 thresholds it when they are not fitted on the real images (run.json, report).
    threshold_policy: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def known_classes(cls, plan: EvaluatorPlan, options: LoadOptions) -> tuple[str, ...]:
        """The classes it scores, known without loading the network."""


class XrvClassifierBackend(ClassifierBackend):
    """torchxrayvision DenseNet-121: probabilities of its named classes and pooled features."""

    threshold_policy = FIXED_THRESHOLD_POLICY

    @classmethod
    def known_classes(cls, plan: EvaluatorPlan, options: LoadOptions) -> tuple[str, ...]:
        import torchxrayvision as xrv

        # xrv keeps output slots for classes a dataset lacks, named "": they are not predictions.
        return tuple(c for c in xrv.models.model_urls[str(plan.weights)]["labels"] if c)

    def __init__(self, plan: EvaluatorPlan, options: LoadOptions):
        from audit.evaluators.classifier import PathologyClassifier

        super().__init__(plan, options)
        assert plan.weights_path is not None
        # xrv publishes its DenseNets as pickled modules: from_file verifies the sha256, then rebuilds
        # the state dict through the allowlist unpickler (audit.evaluators.safe_pickle), never running
        # code from the file.
        self.net = PathologyClassifier.from_file(
            plan.weights_path,
            plan.key.weights_sha256,
            weights=str(plan.weights),
            device=options.device,
            dtype=options.dtype,
        )
        # xrv keeps output slots for classes a dataset lacks, named "": they are not predictions.
        self.keep = [i for i, c in enumerate(self.net.pathologies) if c]
        self.classes = tuple(self.net.pathologies[i] for i in self.keep)
        self.calibration = self.net.calibration

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = self.net.run(list(images), batch_size=self.batch_size)
        probs = out.probabilities[:, self.keep]
        return [{"probs": probs[i], "features": out.features[i]} for i in range(len(images))]


class PSPNetBackend(_Network):
    """torchxrayvision PSPNet: lungs/heart/aorta masks."""

    def __init__(self, plan: EvaluatorPlan, options: LoadOptions):
        from audit.evaluators.segmenter import AnatomySegmenter

        super().__init__(plan, options)
        assert plan.weights_path is not None
        self.net = AnatomySegmenter.from_file(
            plan.weights_path, plan.key.weights_sha256, device=options.device, dtype=options.dtype
        )

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = self.net.run(list(images), batch_size=self.batch_size)
        return [{"masks": out.masks[i]} for i in range(len(images))]


class InceptionBackend(_Network):
    """Inception-v3 (torch-fidelity's TF-FID port, always float32): pool3 features."""

    def __init__(self, plan: EvaluatorPlan, options: LoadOptions):
        from audit.evaluators.inception import InceptionFeatures

        super().__init__(plan, options)
        assert plan.weights_path is not None
        self.net = InceptionFeatures.from_file(
            plan.weights_path, plan.key.weights_sha256, device=options.device
        )

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = self.net.run(list(images), batch_size=self.batch_size)
        return [{"features": out.features[i]} for i in range(len(images))]


class HFBackend(_Network):
    """A Hugging Face backbone (RadDino, or any ``hf:ORG/NAME@REVISION``): its CLS features."""

    def __init__(self, plan: EvaluatorPlan, options: LoadOptions):
        from audit.evaluators.hf import HFFeatures

        super().__init__(plan, options)
        assert plan.weights_path is not None
        self.net = HFFeatures.from_dir(
            plan.weights_path, dict(plan.files), name=plan.name, device=options.device, dtype=options.dtype
        )

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = self.net.run(list(images), batch_size=self.batch_size).features
        return [{"features": out[i]} for i in range(len(images))]


class _DemoNetwork(_Network, abc.ABC):
    """A shipped demo network on the resolved device and dtype, run batch by batch by :meth:`compute`."""

    def __init__(self, plan: EvaluatorPlan, options: LoadOptions):
        import torch

        from audit.demo import evaluators as demo
        from audit.evaluators.base import resolve_device, resolve_dtype

        super().__init__(plan, options)
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype)
        self._torch = torch
        self._demo = demo
        self.net = self._load(demo).to(dtype=self.dtype)

    @abc.abstractmethod
    def _load(self, demo: Any) -> Any:
        """The network, from :mod:`audit.demo.evaluators`, on ``self.device``."""

    @abc.abstractmethod
    def _batch(self, batch: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """The output dicts of one batch (called under ``torch.inference_mode``)."""

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out: list[dict[str, np.ndarray]] = []
        with self._torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                out += self._batch(list(images[start : start + self.batch_size]))
        return out


class DemoClassifierBackend(_DemoNetwork, ClassifierBackend):
    """The demo Nodule classifier: sigmoid probabilities and pooled trunk features."""

    threshold_policy = "fixed 0.5 on the sigmoid (the demo classifier has no calibrated operating points)"

    def __init__(self, plan: EvaluatorPlan, options: LoadOptions):
        super().__init__(plan, options)
        self.classes = self._demo.NODULE_CLASSES
        self.calibration = "sigmoid"

    @classmethod
    def known_classes(cls, plan: EvaluatorPlan, options: LoadOptions) -> tuple[str, ...]:
        from audit.demo.spec import NODULE_CLASSES

        return NODULE_CLASSES

    def _load(self, demo: Any) -> Any:
        return demo.load_nodule_classifier(self.device)

    def _batch(self, batch: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        x = self._demo.prepare_classifier_input(batch).to(self.device, self.dtype)
        logits, feats = self.net.forward_with_features(x)
        probs = self._torch.sigmoid(logits.float()).cpu().numpy()
        feats = feats.float().cpu().numpy()
        return [{"probs": probs[i], "features": feats[i]} for i in range(len(batch))]


class DemoAnatomyBackend(_DemoNetwork):
    """The demo anatomy U-Net: masks, and the encoder features that stand in for Inception's."""

    def _load(self, demo: Any) -> Any:
        return demo.load_anatomy_segmenter(self.device)

    def _batch(self, batch: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        # Segmenter and FID stand-in share one cache key, so both outputs are stored.
        x = self._demo.prepare_segmenter_input(batch).to(self.device, self.dtype)
        logits, feats = self.net.forward_with_features(x)
        masks = (logits.float() > 0).cpu().numpy()
        feats = feats.float().cpu().numpy()
        return [{"masks": masks[i], "features": feats[i]} for i in range(len(batch))]


class UserBackend(ClassifierBackend):
    """The user's classifier as ``[evaluators.user_classifier]`` describes it: probabilities only."""

    gives_features = False
    threshold_policy = "fixed 0.5 on the user classifier's probabilities (no calibrated operating points)"

    @classmethod
    def known_classes(cls, plan: EvaluatorPlan, options: LoadOptions) -> tuple[str, ...]:
        return tuple(cls._user(plan, options).labels)

    @staticmethod
    def _user(plan: EvaluatorPlan, options: LoadOptions) -> UserClassifierSection:
        if options.user_classifier is None:
            raise ValueError(
                f"{plan.name}: a user classifier needs [evaluators.user_classifier] in its LoadOptions "
                "(audit.evaluators.suite.load_options)"
            )
        return options.user_classifier

    def __init__(self, plan: EvaluatorPlan, options: LoadOptions):
        from audit.evaluators.base import InputContract
        from audit.evaluators.user import UserEvaluator

        user = self._user(plan, options)
        assert plan.weights_path is not None
        super().__init__(plan, options)
        self.classes = tuple(user.labels)
        self.calibration = "sigmoid" if user.output == "logits" else "probabilities"
        self.output = user.output
        lo, hi = user.value_range
        contract = InputContract(
            evaluator=plan.name, channels=user.channels, size=user.size, value_range=(float(lo), float(hi))
        )
        common = {"name": plan.name, "labels": user.labels, "device": options.device, "dtype": options.dtype}
        if user.format == "torchscript":
            self.net = UserEvaluator.from_torchscript(
                plan.weights_path, plan.key.weights_sha256, contract, **common
            )
        else:
            self.net = UserEvaluator.from_state_dict(
                plan.weights_path,
                plan.key.weights_sha256,
                user.architecture,
                len(user.labels),
                contract,
                **common,
            )

    def compute(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        out = self.net.run(list(images), batch_size=self.batch_size).outputs.astype(np.float64)
        if self.output == "logits":
            probs = 1.0 / (1.0 + np.exp(-out))
        else:
            probs = out
            if not (np.all(probs >= 0.0) and np.all(probs <= 1.0)):
                raise ValueError(
                    f"{self.plan.name}: outputs span [{probs.min():g}, {probs.max():g}] but the config says "
                    'output = "probabilities"; set output = "logits" if the network ends without a sigmoid'
                )
        return [{"probs": probs[i].astype(np.float32)} for i in range(len(images))]
