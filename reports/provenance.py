"""Which evaluator produced a metric, and where the hash its weights were checked against came from.

One lookup shared by comparison.md / .tex / .csv, mean_std-*, paired_tests.csv and report.html, so
that every output names the same evaluator for the same column. Read from run.json (torch-free):

- ``"evaluation"``: ``evaluators`` (role -> {name, source, weights, weights_sha256, pin, pin_note,
  ...}) and ``metric_evaluators`` (metric -> evaluator name; per-class ``metric:Class`` by its base);
  summary.csv's ``evaluator`` column names it too and wins when given.
- ``"norberg"``: the landmark detector (``detector``, ``detector_sha256``) of the Norberg metrics.

Pixel metrics and reader scores have no evaluator: :func:`metric_mark` returns None for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

from audit.metrics import catalogue
from reports.run import READER_PREFIX

DEMO_TAG = "demo stand-in, not comparable to published values"
# Short words for a table header, per pin source (audit.weights.store.PinSource).
PIN_TAGS = {
    "release": "pinned",
    "release-one-source": "pinned (one public source)",
    "user-sha256": "hash given by you",
    "user-trust": "pinned by you on first download",
    "config": "hash from config",
    "model.json": "pinned by its model.json",  # the Norberg landmark detector
}
# The sentence when run.json has a pin but no pin_note (audit.weights.store.PIN_WORDS).
PIN_SENTENCES = {
    "release": "verified against the hash pinned by this release",
    "release-one-source": "verified against the hash pinned by this release (one public source only)",
    "config": "verified against the hash given in the study config",
    "user-sha256": "verified against the hash you recorded with --sha256",
    "user-trust": "pinned by you on first download (--trust); not independently verified",
    "demo": "demo stand-in trained on synthetic DRRs of the demo cohort; not comparable to published values",
}
NOT_RECORDED = "pin source not recorded (run written before xray-audit recorded it)"
# Metrics an evaluator network produces: marked even when the run does not say which one.
EVALUATOR_METRICS = frozenset(m.name for m in catalogue.CATALOGUE if m.evaluator)
NORBERG_PREFIX = "norberg_"


MARK_COLUMNS = ("evaluator", "weights_sha256", "pin")
SEP = "; "


@dataclasses.dataclass(frozen=True)
class EvaluatorMark:
    """Who scored a metric column. Several evaluators (rare: one per group) are joined with "; ", their
    sha256 and pins in the same order."""

    evaluator: str  # evaluator name(s), as summary.csv and run.json name them
    weights_sha256: str
    pin: str  # pin source(s): release, release-one-source, user-sha256, user-trust, config, demo; "" unknown
    tag: str  # short words for a table header, e.g. "xrv-densenet121-res224-all, pinned"
    note: str  # the whole sentence on where the pin came from
    weights: str = ""
    demo_names: tuple[str, ...] = ()  # the demo stand-ins among the evaluators

    @property
    def demo(self) -> bool:
        return bool(self.demo_names)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def is_demo(desc: Mapping[str, Any]) -> bool:
    return str(desc.get("source", "")) == "demo" or str(desc.get("pin", "")) == "demo"


def pin_sentence(desc: Mapping[str, Any]) -> str:
    """Where the hash an evaluator's weights were verified against came from, in words."""
    note = str(desc.get("pin_note") or "").strip()
    if note:
        return note
    pin = _pin_of(desc)
    return PIN_SENTENCES.get(pin, f"pin source {pin}" if pin else NOT_RECORDED)


def _pin_of(desc: Mapping[str, Any]) -> str:
    return "demo" if is_demo(desc) else str(desc.get("pin") or "")


def evaluator_tag(evaluator: str, pin: str) -> str:
    """The header words of a column from its CSV fields (``evaluator``, ``pin``; "; "-joined when
    several): "demo stand-in, not comparable to published values", or each name with its pin."""
    names, pins = evaluator.split(SEP), pin.split(SEP)
    pins += [""] * (len(names) - len(pins))
    tags = []
    for name, how in zip(names, pins, strict=False):
        if how == "demo":
            tags.append(DEMO_TAG)
        elif not name:
            tags.append("evaluator not recorded")
        else:
            tags.append(f"{name}, {PIN_TAGS.get(how, how or 'pin not recorded')}")
    return SEP.join(dict.fromkeys(tags))


def _evaluators(info: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    block = _mapping(_mapping(info.get("evaluation")).get("evaluators"))
    # The privacy embedding is described in run.json's "privacy" record (it may be a network the
    # scoring does not use).
    privacy = _mapping(_mapping(info.get("privacy")).get("features_plan"))
    out: dict[str, Mapping[str, Any]] = {}
    for desc in [*block.values(), privacy]:
        desc = _mapping(desc)
        if desc:
            out.setdefault(str(desc.get("name", "")), desc)
    return out


def _reid_mark(info: Mapping[str, Any], names: list[str]) -> EvaluatorMark:
    """Re-ID scores come from the [privacy.reid_model] file, checked against the config's sha256."""
    sha = str(_mapping(info.get("privacy")).get("reid_model") or "")
    name = names[0] if names else "re-ID model"
    return EvaluatorMark(name, sha, "config", evaluator_tag(name, "config"), PIN_SENTENCES["config"])


def _join(parts: Iterable[str]) -> str:
    return SEP.join(dict.fromkeys(p for p in parts if p))


def _detector_mark(info: Mapping[str, Any]) -> EvaluatorMark | None:
    norberg = _mapping(info.get("norberg"))
    detector = str(norberg.get("detector") or "")
    if not detector:
        return None
    path = PurePath(detector)
    short = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    name = f"landmark detector {short}"
    return EvaluatorMark(
        evaluator=name,
        weights_sha256=str(norberg.get("detector_sha256") or ""),
        pin="model.json",
        tag=evaluator_tag(name, "model.json"),
        note="verified against the sha256 its model.json pins",
        weights=detector,
    )


def metric_mark(info: Mapping[str, Any], metric: str, evaluator: str = "") -> EvaluatorMark | None:
    """The evaluator of ``metric`` (``metric:Class`` by its base) in a run whose run.json is ``info``;
    ``evaluator``: the name(s) summary.csv gives (comma-separated), preferred to run.json's
    ``metric_evaluators``. None for pixel metrics, reader scores and Norberg metrics of a run without
    a recorded detector."""
    base = metric.split(":", 1)[0]
    if metric.startswith(READER_PREFIX):
        return None
    if base.startswith(NORBERG_PREFIX):
        return _detector_mark(info)
    names = [n.strip() for n in evaluator.split(",") if n.strip()]
    if base in catalogue.METRICS and catalogue.spec(base).family == "privacy":
        if base == "nn_distance_pixel":
            return None  # pixels against pixels: no network
        if base.startswith("reid_score"):
            return _reid_mark(info, names)
        # The [privacy].features embedding, named in run.json when summary.csv does not name it.
        features = str(_mapping(info.get("privacy")).get("features") or "")
        names = names or ([features] if features else [])
    if not names:
        by_metric = _mapping(_mapping(info.get("evaluation")).get("metric_evaluators"))
        found = by_metric.get(metric) or by_metric.get(base)
        names = [str(found)] if found else []
    if not names:
        if base not in EVALUATOR_METRICS:
            return None  # a pixel metric, or one no evaluator produces
        return EvaluatorMark("", "", "", evaluator_tag("", ""), "run.json does not say which evaluator")
    names = list(dict.fromkeys(names))
    known = _evaluators(info)
    descs = [known.get(n, {}) for n in names]
    pin = SEP.join(_pin_of(d) for d in descs)  # aligned with the names, not deduplicated
    return EvaluatorMark(
        evaluator=SEP.join(names),
        weights_sha256=SEP.join(str(d.get("weights_sha256") or "") for d in descs),
        pin=pin,
        tag=evaluator_tag(SEP.join(names), pin),
        note=_join(
            pin_sentence(d) if d else f"{n} is not described in run.json"
            for n, d in zip(names, descs, strict=True)
        ),
        weights=_join(str(d.get("weights") or "") for d in descs),
        demo_names=tuple(n for n, d in zip(names, descs, strict=True) if is_demo(d)),
    )


def mark_fields(mark: EvaluatorMark | None) -> dict[str, str]:
    """The CSV columns of a mark (empty strings for pixel metrics and reader scores)."""
    if mark is None:
        return dict.fromkeys(MARK_COLUMNS, "")
    return {"evaluator": mark.evaluator, "weights_sha256": mark.weights_sha256, "pin": mark.pin}


def demo_evaluators(marks: Iterable[EvaluatorMark | None]) -> list[str]:
    """The demo stand-ins among ``marks``, by name, first appearance order."""
    return list(dict.fromkeys(n for m in marks if m is not None for n in m.demo_names))


__all__ = [
    "DEMO_TAG",
    "MARK_COLUMNS",
    "PIN_TAGS",
    "SEP",
    "EvaluatorMark",
    "demo_evaluators",
    "evaluator_tag",
    "is_demo",
    "mark_fields",
    "metric_mark",
    "pin_sentence",
]
