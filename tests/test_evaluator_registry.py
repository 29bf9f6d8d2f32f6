"""The built-in evaluator table: every [evaluators] value picks exactly one entry, and every plan maps back."""

from __future__ import annotations

import pytest

from audit.evaluators.plan import ROLES, EvaluatorPlan
from audit.evaluators.registry import AUTO, DEMO, EVALUATORS, kind_of, pick
from audit.evaluators.suite import mask_frame
from audit.feature_cache import EvaluatorKey

# [evaluators].<role> values the config accepts (an hf: spec stands for any hf:ORG/NAME@REVISION).
CHOICES = {
    "classifier": ("xrv", DEMO, AUTO, "user"),
    "segmenter": ("xrv", DEMO, AUTO),
    "features": ("inception", DEMO, AUTO, "hf:org/name@" + "0" * 40),
    "raddino": ("rad-dino",),
}


def _plan(role, source) -> EvaluatorPlan:
    return EvaluatorPlan(role, source, EvaluatorKey("x", "0" * 64, "p"), "", None, None)


@pytest.mark.parametrize("role", ROLES)
def test_every_accepted_value_picks_exactly_one_evaluator(role):
    for choice in CHOICES[role]:
        picked = [k for k in EVALUATORS.values() if k.role == role and k.picked_by(choice)]
        assert len(picked) == 1, (role, choice, picked)
        assert pick(role, choice) is picked[0]


def test_auto_falls_back_to_a_demo_network_of_the_same_role():
    for role in ("classifier", "segmenter", "features"):
        assert pick(role, AUTO).source != "demo" and pick(role, DEMO).source == "demo"


def test_role_and_source_name_one_entry():
    for kind in EVALUATORS.values():
        assert kind_of(_plan(kind.role, kind.source)) is kind


def test_an_unknown_value_names_the_choices():
    with pytest.raises(
        ValueError, match="no segmenter evaluator is picked by 'inception'; choices: auto, demo, xrv"
    ):
        pick("segmenter", "inception")


def test_mask_frames_come_from_the_segmenters_contracts():
    assert mask_frame(_plan("segmenter", "xrv")) == 512
    assert mask_frame(_plan("segmenter", "demo")) == 128
    with pytest.raises(ValueError, match="no fixed input frame"):
        mask_frame(_plan("classifier", "user"))


def _config(**evaluators):
    from audit.config import parse_config

    raw = {
        "study": {"name": "t", "cases": "c.csv", "output": "o"},
        "models": [{"name": "real", "kind": "real"}],
        "evaluators": evaluators,
    }
    return parse_config(raw)


@pytest.mark.parametrize("role", ["classifier", "segmenter", "features"])
def test_the_config_offers_exactly_the_tables_choices(role):
    from audit.config import ConfigError
    from audit.evaluators.registry import choices

    offered = {c for k in EVALUATORS.values() if k.role == role for c in k.choices if not c.endswith(":")}
    assert set(choices(role)) == offered
    for choice in offered - {"user"}:
        assert getattr(_config(**{role: choice}).evaluators, role) == choice
    with pytest.raises(ConfigError, match=rf"\[evaluators\]\.{role} must be one of .*got 'nope'") as err:
        _config(**{role: "nope"})
    assert all(repr(c) in str(err.value) for c in offered)


def test_a_new_table_entry_is_a_valid_config_choice(monkeypatch):
    import dataclasses

    from audit.config import ConfigError

    with pytest.raises(ConfigError):
        _config(segmenter="lab-unet")
    entry = dataclasses.replace(EVALUATORS["xrv-pspnet"], name="lab-unet", choices=("lab-unet",))
    monkeypatch.setitem(EVALUATORS, "lab-unet", entry)
    assert _config(segmenter="lab-unet").evaluators.segmenter == "lab-unet"


def test_hub_features_need_a_full_commit():
    from audit.config import ConfigError

    spec = "hf:org/model@" + "a" * 40
    assert _config(features=spec).evaluators.features == spec
    with pytest.raises(ConfigError, match="full 40-hex commit"):
        _config(features="hf:org/model@main")
