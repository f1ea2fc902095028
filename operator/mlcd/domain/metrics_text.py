"""Reading a trainer's metrics: ``name=value`` lines (Katib's StdOut format), user regexes or
a JSON object, and reducing each series to one number."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|NaN|Inf)"
# A name starts where no name character precedes it and is taken whole (possessive): the
# search stays linear in the line's length, where a plain ``[\w.-]*`` backtracks from every
# position of a long word (seconds for a few thousand characters without ``=``).
DEFAULT_FORMAT = rf"(?<![\w.-])([A-Za-z][\w.-]*+)\s*+=\s*+({NUMBER})"

Series = dict[str, list[float]]


def parse_lines(lines: Iterable[str], formats: Iterable[str] = ()) -> Series:
    """Every ``(name, value)`` the formats find, in the order printed."""
    patterns = [re.compile(f) for f in formats] or [re.compile(DEFAULT_FORMAT)]
    series: Series = {}
    for line in lines:
        for pattern in patterns:
            for name, value in pattern.findall(line):
                try:
                    series.setdefault(name, []).append(float(value))
                except ValueError:
                    continue
    return series


def parse_json(text: str) -> Series:
    """A JSON object of name -> number (or list of numbers)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("metrics file must hold a JSON object")
    series: Series = {}
    for name, value in data.items():
        values = value if isinstance(value, list) else [value]
        numbers = [
            float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if numbers:
            series[str(name)] = numbers
    return series


def merge(*many: Mapping[str, list[float]]) -> Series:
    out: Series = {}
    for series in many:
        for name, values in series.items():
            out.setdefault(name, []).extend(values)
    return out


def reduce(values: list[float], strategy: Literal["latest", "max", "min"]) -> float:
    """One value per series; NaN is kept by ``latest`` and ignored by ``max``/``min``."""
    if not values:
        raise ValueError("no values")
    if strategy == "latest":
        return values[-1]
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    return max(finite) if strategy == "max" else min(finite)


def latest(series: Mapping[str, list[float]]) -> dict[str, float]:
    return {name: values[-1] for name, values in series.items() if values}


#: Points kept per series for its curve; beyond, every other point is dropped (evenly).
MAX_POINTS = 2048
#: Distinct metric names kept; a trainer printing ever new names cannot grow memory.
MAX_NAMES = 256
#: Metrics that are the x axis of the others when printed on the same line, in this order.
STEP_NAMES = ("step", "epoch")


class Curve:
    """One metric as printed: its exact latest, largest and smallest value, and at most
    :data:`MAX_POINTS` evenly thinned points, each with the step printed on its line."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.steps: list[float | None] = []
        self.count = 0
        self.stride = 1
        self.latest = math.nan
        self.largest = math.nan
        self.smallest = math.nan

    def add(self, value: float, step: float | None = None) -> None:
        if self.count % self.stride == 0:
            self.values.append(value)
            self.steps.append(step)
            if len(self.values) > MAX_POINTS:
                del self.values[1::2], self.steps[1::2]
                self.stride *= 2
        self.count += 1
        self.latest = value
        if not math.isnan(value):
            self.largest = value if math.isnan(self.largest) else max(self.largest, value)
            self.smallest = value if math.isnan(self.smallest) else min(self.smallest, value)

    def reduce(self, strategy: Literal["latest", "max", "min"]) -> float:
        """As :func:`reduce` over every value printed, kept or thinned."""
        if not self.count:
            raise ValueError("no values")
        return {"latest": self.latest, "max": self.largest, "min": self.smallest}[strategy]


class SeriesReader:
    """Reads a trainer's output one line at a time, in bounded memory: each metric's
    :class:`Curve`, and the step (or epoch) it was printed with."""

    def __init__(self, formats: Iterable[str] = ()) -> None:
        self.patterns = [re.compile(f) for f in formats] or [re.compile(DEFAULT_FORMAT)]
        self.curves: dict[str, Curve] = {}
        self.step_of: dict[str, str | None] = {}
        self.ignored: set[str] = set()

    def _curve(self, name: str) -> Curve | None:
        curve = self.curves.get(name)
        if curve is None:
            if len(self.curves) >= MAX_NAMES:
                if len(self.ignored) < MAX_NAMES:
                    self.ignored.add(name)
                return None
            curve = self.curves[name] = Curve()
        return curve

    def feed(self, line: str) -> None:
        found: list[tuple[str, float]] = []
        for pattern in self.patterns:
            for name, text in pattern.findall(line):
                try:
                    found.append((name, float(text)))
                except ValueError:
                    continue
        if not found:
            return
        on_line = dict(found)
        step_name = next((s for s in STEP_NAMES if s in on_line), None)
        step = on_line[step_name] if step_name else None
        for name, value in found:
            curve = self._curve(name)
            if curve is None:
                continue
            if name not in STEP_NAMES:
                # A curve follows one step name; printed without it (or with another), none.
                same = curve.count == 0 or self.step_of.get(name) == step_name
                self.step_of[name] = step_name if same else None
            curve.add(value, step)

    def add_series(self, series: Mapping[str, list[float]]) -> None:
        """Values from elsewhere (a metrics file): no step."""
        for name, values in series.items():
            for value in values:
                curve = self._curve(name)
                if curve is None:
                    break
                self.step_of[name] = None
                curve.add(value)

    def series(self) -> Series:
        """Each metric's kept points."""
        return {name: list(curve.values) for name, curve in self.curves.items() if curve.count}

    def steps(self) -> dict[str, dict[str, Any]]:
        """For each metric printed with a step on every line: ``{"name", "values"}``, the
        step's name and its value at each kept point."""
        out: dict[str, dict[str, Any]] = {}
        for name, curve in self.curves.items():
            step_name = self.step_of.get(name)
            if step_name and all(s is not None for s in curve.steps):
                out[name] = {"name": step_name, "values": list(curve.steps)}
        return out

    def latest(self) -> dict[str, float]:
        return {name: curve.latest for name, curve in self.curves.items() if curve.count}
