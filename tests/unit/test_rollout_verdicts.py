"""Verdicts, step arithmetic and query templates of the rollout: pure functions, by table."""

from __future__ import annotations

import math

import pytest

from mlcd.domain.rollout import (
    AnalysisResult,
    TemplateError,
    Verdict,
    is_last_step,
    needs_rollout,
    overall,
    resolve,
    step_weight,
    template_names,
    unknown_variables,
    verdict,
)
from mlcd.domain.spec import Rollout

P, F, N = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE  # N: no verdict yet

VERDICTS = [
    # (value, keyword arguments, verdict, text in the reason)
    (0.995, {"min": 0.99}, P, "0.995 >= 0.99"),
    (0.98, {"min": 0.99}, F, "0.98 < min 0.99"),
    (0.3, {"max": 0.25}, F, "0.3 > max 0.25"),
    (0.25, {"max": 0.25}, P, "<= 0.25"),
    (0.0, {"max": 0.0}, P, "<= 0"),
    (0.5, {"min": 0.1, "max": 1}, P, ">= 0.1 and <= 1"),
    (None, {"min": 0.99}, N, "no data"),
    (math.nan, {"min": 0.99}, N, "no data"),
    (math.inf, {"max": 1}, F, "inf > max 1"),
    (1.0, {"min": 0.9, "error": "2 series"}, N, "query failed: 2 series"),
    (0.999, {"min": 0.99, "samples": 3, "min_samples": 20}, N, "3 requests, fewer than the 20"),
    (0.999, {"min": 0.99, "samples": None, "min_samples": 20}, N, "no requests"),
    (0.999, {"min": 0.99, "samples": math.nan, "min_samples": 1}, N, "no requests"),
    (0.999, {"min": 0.99, "samples": 20, "min_samples": 20}, P, ""),
    (0.0, {"min": 0.99, "samples": 0, "min_samples": 0}, F, "< min"),
    # relative to the stable model, over the same window
    (0.30, {"relative": True, "stable": 0.2, "max_increase": 0.05}, F, "exceeds stable 0.2"),
    (0.22, {"relative": True, "stable": 0.2, "max_increase": 0.05}, P, "vs stable 0.2"),
    (0.22, {"relative": True, "stable": None, "max_increase": 0.05}, N, "no data for the stable"),
    (0.22, {"relative": True, "stable": math.nan, "max_increase": 0.05}, N, "stable"),
    (0.9, {"relative": True, "stable": 0.2, "max_increase": 1, "max": 0.5}, F, "> max 0.5"),
]


@pytest.mark.parametrize(("value", "kwargs", "expected", "text"), VERDICTS)
def test_verdict(value, kwargs, expected, text):
    judged = verdict(value, **kwargs)
    assert judged.verdict is expected
    assert text in judged.reason


def test_no_data_and_errors_are_never_a_pass():
    for value in (None, math.nan):
        for bounds in ({}, {"min": 0}, {"max": 1}, {"min": -math.inf, "max": math.inf}):
            assert verdict(value, **bounds).verdict is N
    assert verdict(1.0, min=0, error="timeout").verdict is N


def _result(verdict: str, dry_run: bool = False) -> AnalysisResult:
    return AnalysisResult(metric="m", verdict=verdict, dry_run=dry_run)  # type: ignore[arg-type]


OVERALL = [
    (["pass", "pass"], P),
    (["pass", "fail"], F),
    (["inconclusive", "fail"], F),
    (["pass", "inconclusive"], N),
    ([], N),
]


@pytest.mark.parametrize(("verdicts", "expected"), OVERALL)
def test_overall(verdicts, expected):
    assert overall([_result(v) for v in verdicts]) is expected


def test_dry_runs_are_recorded_not_acted_on():
    assert overall([_result("pass"), _result("fail", dry_run=True)]) is P
    assert overall([_result("pass"), _result("inconclusive", dry_run=True)]) is P
    assert overall([_result("fail", dry_run=True)]) is N  # nothing acting: not a pass


STEPS = [
    ([10, 50, 100], 0, 0, False),
    ([10, 50, 100], 1, 10, False),
    ([10, 50, 100], 2, 50, False),
    ([10, 50, 100], 3, 100, True),
    ([10, 50, 100], 5, 100, True),  # the spec lost steps mid-rollout: the last one
    ([100], 1, 100, True),
]


@pytest.mark.parametrize(("steps", "step", "weight", "last"), STEPS)
def test_step_arithmetic(steps, step, weight, last):
    assert step_weight(steps, step) == weight
    assert is_last_step(steps, step) is last


def test_a_rollout_of_one_step_and_nothing_to_judge_is_none():
    assert not needs_rollout(Rollout())
    assert needs_rollout(Rollout(steps=[50, 100]))
    assert needs_rollout(Rollout.model_validate({"shadow": {}}))
    assert needs_rollout(Rollout.model_validate({"metrics": [{"name": "success-rate", "min": 1}]}))


VALUES = {"canary": "ns-a/mnist/candidate", "stable": "ns-a/mnist/stable", "interval": "30s"}
VALUES["namespace"] = "ns-a"
TEMPLATES = [
    ('x{s="{{ canary }}"}', 'x{s="ns-a/mnist/candidate"}'),
    ('x{s="{{canary}}"}[{{ interval }}]', 'x{s="ns-a/mnist/candidate"}[30s]'),
    ("{{ stable }} {{  namespace  }}", "ns-a/mnist/stable ns-a"),
    ("no variables", "no variables"),
    ("{ not } a {{ variable", "{ not } a {{ variable"),
]


@pytest.mark.parametrize(("template", "resolved"), TEMPLATES)
def test_templates(template, resolved):
    assert resolve(template, VALUES) == resolved


def test_unknown_template_variables():
    assert template_names("{{ canary }} {{ pod }} {{stable}}") == ["canary", "pod", "stable"]
    assert unknown_variables("{{ canary }} {{ pod }}") == ["pod"]
    with pytest.raises(TemplateError, match="pod"):
        resolve("{{ pod }}", VALUES)


def _watch_run(events, **trigger):
    """Feeds (seconds, holds, run_active) evaluations; returns the seconds at which runs start."""
    import datetime as dt

    from mlcd.domain.rollout import DegradationWatch, watch_degradation
    from mlcd.domain.spec import Degradation

    spec = Degradation.model_validate(
        {"query": "up == 0", "for": "60s", "cooldown": "10m", **trigger}
    )
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    watch, fired = DegradationWatch(), []
    for seconds, holds, active in events:
        watch, fire = watch_degradation(
            watch, spec, holds, active, t0 + dt.timedelta(seconds=seconds)
        )
        if fire:
            fired.append(seconds)
    return fired


DEGRADATION = [
    # a sustained bad metric starts exactly one run ...
    ([(s, True, False) for s in range(0, 300, 10)], [60]),
    # ... and another only after the cooldown, once it has held for `for` again
    ([(s, True, False) for s in range(0, 800, 10)], [60, 660]),
    # a condition that stops holding starts its `for` again
    ([(0, True, False), (50, False, False), (60, True, False), (110, True, False)], []),
    ([(0, True, False), (50, False, False), (60, True, False), (120, True, False)], [120]),
    # no data is no evidence: it neither fires nor breaks the hold
    ([(0, True, False), (30, None, False), (60, True, False)], [60]),
    ([(0, None, False), (100, None, False)], []),
    # at most one run in flight
    ([(0, True, True), (60, True, True), (70, True, False)], [70]),
]


@pytest.mark.parametrize(("events", "fired"), DEGRADATION)
def test_the_degradation_trigger_debounces(events, fired):
    assert _watch_run(events) == fired


def test_the_degradation_query_names_the_serving_model():
    from mlcd.domain.rollout import Builtins, Targets, degradation_query
    from mlcd.domain.spec import Degradation

    trigger = Degradation.model_validate(
        {"query": 'err{s="{{ stable }}",ns="{{ namespace }}"}[{{ interval }}]', "interval": "2m"}
    )
    targets = Targets("team-a", "a.m.candidate", "a.m.stable", Builtins(*[""] * 6))
    assert degradation_query(trigger, targets) == 'err{s="a.m.stable",ns="team-a"}[2m]'
