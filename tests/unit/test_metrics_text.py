from __future__ import annotations

import math

import pytest

from mlcd.domain.metrics_text import (
    MAX_NAMES,
    MAX_POINTS,
    SeriesReader,
    latest,
    merge,
    parse_json,
    parse_lines,
    reduce,
)


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


def test_the_reader_keeps_each_value_with_the_step_printed_on_its_line():
    reader = SeriesReader()
    for line in ["epoch=1 loss=0.5", "noise", "epoch=2 loss=0.4 accuracy=0.9", "epoch=3 loss=0.3"]:
        reader.feed(line)
    assert reader.series() == {"epoch": [1.0, 2.0, 3.0], "loss": [0.5, 0.4, 0.3], "accuracy": [0.9]}
    assert reader.steps()["loss"] == {"name": "epoch", "values": [1.0, 2.0, 3.0]}
    assert reader.latest() == {"epoch": 3.0, "loss": 0.3, "accuracy": 0.9}


def test_a_curve_printed_without_its_step_on_some_line_has_none():
    reader = SeriesReader()
    for line in ["step=10 loss=0.5", "loss=0.4", "step=20 loss=0.3", "epoch=1 acc=0.1", "acc=0.2"]:
        reader.feed(line)
    assert "loss" not in reader.steps() and "acc" not in reader.steps()
    reader = SeriesReader()
    for line in ["epoch=1 step=100 loss=0.5", "epoch=1 step=200 loss=0.4"]:
        reader.feed(line)
    assert reader.steps()["loss"] == {"name": "step", "values": [100.0, 200.0]}


def test_a_chatty_trainer_is_kept_in_bounded_memory_with_exact_reductions():
    reader = SeriesReader()
    n = 10 * MAX_POINTS + 7
    for i in range(n):
        reader.feed(f"step={i} loss={1.0 / (i + 1)} accuracy={i % 1000 / 1000}")
    curve = reader.curves["loss"]
    assert len(curve.values) <= MAX_POINTS and len(curve.steps) == len(curve.values)
    assert curve.count == n
    assert curve.values[0] == 1.0 and curve.steps[0] == 0.0
    # Evenly thinned: the kept points are every stride-th value, each with its own step.
    assert all(curve.values[k] == 1.0 / (curve.steps[k] + 1) for k in range(len(curve.values)))
    assert {b - a for a, b in zip(curve.steps, curve.steps[1:], strict=False)} == {curve.stride}
    assert reader.curves["accuracy"].reduce("max") == 0.999
    assert reader.curves["loss"].reduce("min") == 1.0 / n
    assert reader.curves["loss"].reduce("latest") == 1.0 / n
    for i in range(3 * MAX_NAMES):
        reader.feed(f"m{i}=1")
    assert len(reader.curves) == MAX_NAMES


def test_the_reader_reduces_as_reduce_does():
    reader = SeriesReader()
    for value in ("nan", "0.5", "0.7", "nan"):
        reader.feed(f"accuracy={value}")
    curve = reader.curves["accuracy"]
    assert curve.reduce("max") == 0.7 and curve.reduce("min") == 0.5
    assert math.isnan(curve.reduce("latest"))
    reader.feed("other=inf")
    assert reader.curves["other"].reduce("max") == math.inf


def test_values_from_a_metrics_file_join_without_a_step():
    reader = SeriesReader()
    reader.feed("epoch=1 loss=0.5")
    reader.add_series({"loss": [0.4], "samples": [100.0]})
    assert reader.series()["loss"] == [0.5, 0.4]
    assert "loss" not in reader.steps()
    assert reader.latest()["samples"] == 100.0
