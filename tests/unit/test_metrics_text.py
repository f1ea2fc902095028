from __future__ import annotations

import math

import pytest

from mlcd.domain.metrics_text import latest, merge, parse_json, parse_lines, reduce


def test_katib_stdout_format():
    lines = [
        "epoch=1 loss=0.5 accuracy=0.9",
        "noise without metrics",
        "accuracy = 0.95",
        "lr=1e-3 f1-macro=.5 val.acc=-2",
    ]
    series = parse_lines(lines)
    assert series["accuracy"] == [0.9, 0.95]
    assert series["loss"] == [0.5]
    assert series["lr"] == [0.001]
    assert series["f1-macro"] == [0.5]
    assert series["val.acc"] == [-2.0]


def test_nan_is_kept_as_a_value():
    assert math.isnan(parse_lines(["accuracy=nan"])["accuracy"][0])


def test_user_regex():
    series = parse_lines(
        ["Validation-accuracy: 0.93 (best)", "accuracy=0.1"], [r"Validation-(\w+): ([\d.]+)"]
    )
    assert series == {"accuracy": [0.93]}


def test_json_file():
    assert parse_json('{"accuracy": 0.9, "curve": [1, 2], "note": "x", "flag": true}') == {
        "accuracy": [0.9],
        "curve": [1.0, 2.0],
    }
    with pytest.raises(ValueError):
        parse_json("[1, 2]")


@pytest.mark.parametrize(("strategy", "expected"), [("latest", 0.8), ("max", 0.9), ("min", 0.7)])
def test_reduce(strategy, expected):
    assert reduce([0.7, 0.9, 0.8], strategy) == expected


def test_reduce_ignores_nan_for_max_and_min():
    assert reduce([math.nan, 0.5], "max") == 0.5
    assert math.isnan(reduce([math.nan], "max"))
    assert math.isnan(reduce([0.5, math.nan], "latest"))


def test_merge_and_latest():
    merged = merge({"a": [1.0]}, {"a": [2.0], "b": [3.0]})
    assert merged == {"a": [1.0, 2.0], "b": [3.0]}
    assert latest(merged) == {"a": 2.0, "b": 3.0}
