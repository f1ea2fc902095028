"""Every invalid spec gets one message naming the field and the reason."""

from __future__ import annotations

import pytest

from mlcd.domain.checks import parse_pipeline
from mlcd.errors import SpecError
from spec_cases import BASE, CASES, with_change


def test_the_example_is_valid():
    pipeline = parse_pipeline(BASE)
    assert pipeline.name == "mnist"
    assert pipeline.spec.tuning is not None and pipeline.spec.tuning.max_trials == 6


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"), CASES, ids=[f"{c[0]}={c[1]!r}"[:60] for c in CASES]
)
def test_invalid_spec_names_field_and_reason(path, value, field, reason):
    with pytest.raises(SpecError) as caught:
        parse_pipeline(with_change(path, value))
    problems = {p.path: p.reason for p in caught.value.problems}
    assert field in problems, problems
    assert reason in problems[field], problems


def test_every_problem_is_reported_at_once():
    resource = with_change("spec.tuning.maxTrials", 0)
    resource["spec"]["trainer"]["workers"] = 0
    resource["spec"]["extra"] = True
    with pytest.raises(SpecError) as caught:
        parse_pipeline(resource)
    assert {p.path for p in caught.value.problems} == {
        "spec.tuning.maxTrials",
        "spec.trainer.workers",
        "spec.extra",
    }


def test_not_an_object():
    with pytest.raises(SpecError) as caught:
        parse_pipeline(["a list"])
    assert str(caught.value) == "(root): must be a ModelPipeline object"


def test_grid_needs_a_step_for_doubles():
    resource = with_change("spec.tuning.algorithm", "grid")
    with pytest.raises(SpecError) as caught:
        parse_pipeline(resource)
    assert [str(p) for p in caught.value.problems] == [
        "spec.tuning.parameters[0].step: required for a double parameter with grid"
    ]
