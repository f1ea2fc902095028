from __future__ import annotations

import datetime as dt

import pytest

from mlcd.domain import search
from mlcd.domain.spec import Objective, Parameter
from mlcd.domain.versions import next_version, run_id


def _p(**kw) -> Parameter:
    return Parameter.model_validate(kw)


@pytest.mark.parametrize(
    ("param", "values"),
    [
        (_p(name="a", type="double", min=0.1, max=0.3, step=0.1), [0.1, 0.2, 0.3]),
        (_p(name="b", type="int", min=1, max=7, step=3), [1, 4, 7]),
        (_p(name="c", type="categorical", values=["x", "y"]), ["x", "y"]),
        (_p(name="d", type="discrete", values=["1", "2.5"]), [1.0, 2.5]),
    ],
)
def test_grid_values(param, values):
    assert (
        search.grid_values(param) == pytest.approx(values)
        if isinstance(values[0], float)
        else search.grid_values(param) == values
    )


def test_grid_size_and_args():
    params = [
        _p(name="a", type="int", min=1, max=3),
        _p(name="c", type="categorical", values=["x", "y"]),
    ]
    assert search.grid_size(params) == 6
    assert search.trainer_args({"lr": 0.05, "optimizer": "adam"}) == [
        "--lr=0.05",
        "--optimizer=adam",
    ]


@pytest.mark.parametrize(
    ("objective", "strategy", "better", "goal"),
    [
        ({"metric": "acc", "type": "maximize", "goal": 0.9}, "max", (0.8, 0.7), (0.95, True)),
        ({"metric": "loss", "type": "minimize", "goal": 0.1}, "min", (0.2, 0.3), (0.2, False)),
        ({"metric": "acc", "strategy": "latest"}, "latest", (0.8, None), (1.0, False)),
    ],
)
def test_objective(objective, strategy, better, goal):
    o = Objective.model_validate(objective)
    assert search.strategy(o) == strategy
    assert search.is_better(better[0], better[1], o)
    assert not search.is_better(float("nan"), better[1], o)
    assert search.goal_reached(goal[0], o) is goal[1]


def test_versions_are_integers_after_the_highest():
    assert next_version([]) == "1"
    assert next_version(["1", "2", "10", ".staging-x", "01"]) == "11"


def test_run_ids_are_deterministic():
    at = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)
    assert run_id("mnist", "schedule", at) == "mnist-s20261123030000"
    assert run_id("mnist", "schedule", at) == run_id("mnist", "schedule", at)
    assert run_id("mnist", "manual", at) != run_id("mnist", "new-data", at)
