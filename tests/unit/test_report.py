"""The run report: it tells what happened to the run, serving included, and its charts read
as charts should (round ticks, log axes for logUniform parameters, the trainer's own steps)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from mlcd.report import charts
from mlcd.report.html import build

SVG = "{http://www.w3.org/2000/svg}"


def _labels(svg: str, axis: str) -> list[str]:
    """The tick labels of one axis: y labels are right-aligned, x labels centred under it."""
    root = ET.fromstring(svg)
    out = []
    for text in root.iter(f"{SVG}text"):
        size, anchor = text.get("font-size"), text.get("text-anchor")
        if size == "9" and (
            (axis == "y" and anchor == "end") or (axis == "x" and anchor == "middle")
        ):
            out.append(text.text or "")
    return out


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.8123, 0.9871, [0.85, 0.9, 0.95]),
        (-3.3, 12.1, [0.0, 5.0, 10.0]),
        (1.0, 10.0, [2.0, 4.0, 6.0, 8.0, 10.0]),
        (0.0012, 0.0049, [0.002, 0.003, 0.004]),
        (3.0, 3.0, [3.0]),
    ],
)
def test_ticks_are_round_numbers(low, high, expected):
    ticks = charts.nice_ticks(low, high)
    assert ticks[: len(expected)] == expected or all(t in ticks for t in expected)
    assert all(low - 1e-12 <= t <= high + 1e-12 for t in ticks)
    for t in ticks:  # a round number: at most two significant digits
        assert len(re.sub(r"[^0-9]", "", f"{abs(t):g}".lstrip("0.")).rstrip("0")) <= 2, t


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (1e-4, 0.5, [1e-4, 1e-3, 0.01, 0.1]),
        (0.002, 0.03, [0.002, 0.005, 0.01, 0.02]),
    ],
)
def test_log_ticks_are_decades_or_one_two_five(low, high, expected):
    assert charts.log_ticks(low, high) == expected


def _trials(values: list[float]) -> list[dict]:
    return [
        {"number": i, "params": {"lr": v}, "value": 0.5 + i / 100, "state": "succeeded"}
        for i, v in enumerate(values)
    ]


def test_a_log_uniform_parameter_is_on_a_log_axis_and_a_uniform_one_is_not():
    records = _trials([0.0003, 0.002, 0.04, 0.1])
    log = charts.trials(records, ["lr"], "accuracy", log_params={"lr"})
    linear = charts.trials(records, ["lr"], "accuracy")
    assert "lr (log scale)" in log and "log scale" not in linear
    assert _labels(log, "x") == ["0.001", "0.01", "0.1"]
    assert _labels(linear, "x") == ["0", "0.025", "0.05", "0.075", "0.1"]
    # On a log axis equal ratios are equal distances.
    xs = [float(c.get("cx")) for c in ET.fromstring(log).iter(f"{SVG}circle")]
    assert xs[2] - xs[1] == pytest.approx((xs[3] - xs[2]) * 1.3010 / 0.39794, rel=1e-3)


def test_the_learning_curve_is_drawn_against_the_trainers_epochs():
    series = {"epoch": [5, 10, 15, 20], "loss": [0.9, 0.5, 0.3, 0.2]}
    steps = {
        "loss": {"name": "epoch", "values": [5, 10, 15, 20]},
        "epoch": {"name": "epoch", "values": [5, 10, 15, 20]},
    }
    svg = charts.curves(series, steps)
    assert ">epoch</text>" in svg
    assert _labels(svg, "x") == ["5", "10", "15", "20"]
    without = charts.curves(series)
    assert ">report</text>" in without
    assert _labels(without, "x") == ["1", "2", "3", "4"]


def _stages() -> dict:
    return {
        "validate": {"status": "succeeded", "seconds": 0.4},
        "export": {
            "status": "succeeded",
            "model": {"version": "3", "uri": "file:///m/3", "sha256": "ab" * 32},
        },
    }


def _serve_row(page: str) -> str:
    match = re.search(r"<tr><td>serve</td><td>(.*?)</td>", page)
    assert match, page
    return match.group(1)


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({"result": "promoted", "stage": "done"}, ['class="ok">succeeded', "version 3 serving"]),
        (
            {"result": "failed", "stage": "serve", "reason": "serving: model server exited"},
            ['class="bad">failed', "model server exited"],
        ),
        ({"result": "running", "stage": "serve"}, ['class="muted">pending', "served next"]),
        ({"result": "exported", "stage": "serve"}, ['class="muted">pending', "served next"]),
        (
            {"result": "exported", "stage": "serve", "reason": "serving: store unreachable"},
            ['class="bad">failed', "store unreachable"],
        ),
        ({"result": "rejected", "stage": "gate"}, ["not run"]),
    ],
)
def test_the_serve_row_tells_what_the_record_says(record, words):
    result = {"id": "r", "model": {"version": "3", "uri": "u", "sha256": "s"}, **record}
    row = _serve_row(build(_stages(), "t", result))
    for word in words:
        assert word in row


def test_without_a_record_serving_is_not_claimed():
    assert "not run" in _serve_row(build(_stages(), "t"))
