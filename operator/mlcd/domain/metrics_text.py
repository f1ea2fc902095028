"""Reading a trainer's metrics: ``name=value`` lines (Katib's StdOut format), user regexes or
a JSON object, and reducing each series to one number."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Literal

NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|NaN|Inf)"
DEFAULT_FORMAT = rf"([A-Za-z][\w.-]*)\s*=\s*({NUMBER})"

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
