"""Hyperparameter search helpers that do not depend on any particular search library."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np

from mlcd.domain.spec import Objective, Parameter

ParamValue = str | float | int


def strategy(objective: Objective) -> Literal["latest", "max", "min"]:
    """Katib's default: the best value a trial reported, by the objective's direction."""
    if objective.strategy is not None:
        return objective.strategy
    return "max" if objective.type == "maximize" else "min"


def is_better(candidate: float, incumbent: float | None, objective: Objective) -> bool:
    if math.isnan(candidate):
        return False
    if incumbent is None or math.isnan(incumbent):
        return True
    return candidate > incumbent if objective.type == "maximize" else candidate < incumbent


def goal_reached(value: float, objective: Objective) -> bool:
    if objective.goal is None or math.isnan(value):
        return False
    return value >= objective.goal if objective.type == "maximize" else value <= objective.goal


def grid_values(param: Parameter) -> list[ParamValue]:
    """Every value a grid search visits for one parameter."""
    if param.type in ("categorical", "discrete"):
        return [typed(param, v) for v in param.values or []]
    assert param.min is not None and param.max is not None
    if param.type == "int":
        step = int(param.step or 1)
        return list(range(int(param.min), int(param.max) + 1, step))
    assert param.step is not None
    count = math.floor((param.max - param.min) / param.step + 1e-9) + 1
    return [
        float(round(v, 12))
        for v in np.linspace(param.min, param.min + param.step * (count - 1), count)
    ]


def grid_size(params: list[Parameter]) -> int:
    return math.prod(len(grid_values(p)) for p in params)


def typed(param: Parameter, value: object) -> ParamValue:
    if param.type == "int":
        return int(float(str(value)))
    if param.type in ("double", "discrete"):
        return float(str(value))
    return str(value)


def trainer_args(params: Mapping[str, ParamValue]) -> list[str]:
    """Katib's style: ``--lr=0.05 --optimizer=adam``."""
    return [f"--{name}={value}" for name, value in params.items()]
