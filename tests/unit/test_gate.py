"""The gate's decisions, table-driven."""

from __future__ import annotations

import math

import pytest

from mlcd.domain.gate import judge
from mlcd.domain.spec import Gate

ACC = {"metric": "accuracy", "min": 0.97}

CASES = [
    # (gate, candidate metrics, serving metrics, passed, words in the reason)
    (ACC, {"accuracy": 0.98}, None, True, "no model serving yet"),
    (ACC, {"accuracy": 0.96}, None, False, "accuracy 0.96 < min 0.97"),
    (ACC, {"accuracy": 0.97}, None, True, ">= min 0.97"),
    (ACC, {"accuracy": math.nan}, None, False, "accuracy is NaN: never passes"),
    (ACC, {"accuracy": math.inf}, None, False, "accuracy is +inf: never passes"),
    (ACC, {"accuracy": -math.inf}, None, False, "accuracy is -inf: never passes"),
    (
        {"metric": "loss", "direction": "minimize", "max": 0.3},
        {"loss": -math.inf},
        None,
        False,
        "loss is -inf: never passes",
    ),
    (ACC, {"loss": 0.1}, None, False, "accuracy missing"),
    (ACC, {"accuracy": 0.98}, {"accuracy": 0.985}, False, "regression 0.005 > allowed 0"),
    (ACC, {"accuracy": 0.98}, {"accuracy": 0.975}, True, "regression 0 <= allowed 0"),
    (
        {**ACC, "baseline": {"maxRegression": 0.01}},
        {"accuracy": 0.98},
        {"accuracy": 0.985},
        True,
        "<= allowed 0.01",
    ),
    (
        {**ACC, "baseline": {"compareTo": "none"}},
        {"accuracy": 0.98},
        {"accuracy": 0.99},
        True,
        ">= min",
    ),
    (ACC, {"accuracy": 0.98}, {"loss": 0.2}, True, "has no accuracy"),
    (ACC, {"accuracy": 0.98}, {"accuracy": math.nan}, True, "has no accuracy"),
    (ACC, {"accuracy": 0.98}, {"accuracy": math.inf}, True, "has no accuracy"),
    (
        {"metric": "loss", "direction": "minimize", "max": 0.3},
        {"loss": 0.2},
        {"loss": 0.25},
        True,
        "loss 0.2 <= max 0.3",
    ),
    (
        {"metric": "loss", "direction": "minimize", "max": 0.3},
        {"loss": 0.28},
        {"loss": 0.25},
        False,
        "regression 0.03 > allowed 0",
    ),
    (
        {"metric": "loss", "direction": "minimize", "max": 0.3},
        {"loss": 0.35},
        None,
        False,
        "loss 0.35 > max 0.3",
    ),
    ({"metric": "accuracy"}, {"accuracy": 0.5}, None, True, "no model serving yet"),
]


@pytest.mark.parametrize(("gate", "metrics", "baseline", "passed", "words"), CASES)
def test_gate(gate, metrics, baseline, passed, words):
    verdict = judge(Gate.model_validate(gate), metrics, baseline, "3" if baseline else None)
    assert verdict.passed is passed
    assert words in verdict.reason
    assert verdict.metric == gate["metric"]


def test_the_verdict_keeps_every_number():
    verdict = judge(Gate.model_validate(ACC), {"accuracy": 0.975}, {"accuracy": 0.99}, "7")
    assert not verdict.passed
    assert verdict.value == 0.975
    assert verdict.baseline_value == 0.99
    assert verdict.baseline_version == "7"
    assert verdict.regression == pytest.approx(0.015)
    assert verdict.max_regression == 0.0
    assert verdict.min == 0.97
    assert [c.name for c in verdict.checks] == ["min", "baseline"]
    assert [c.passed for c in verdict.checks] == [True, False]
