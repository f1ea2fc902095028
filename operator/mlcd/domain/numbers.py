"""Numbers JSON cannot hold: NaN, +inf and -inf.

A trainer may print them, and a metric computed on odd data may be one. JSON has no token for
them (Python's ``NaN`` is not JSON, and protobuf's ``Struct`` refuses them), so every place a
number leaves the process says what it does with one:

* the records kept in status and state files (:data:`Metric`) write ``null``, which the API
  server stores as it is, and read ``null`` back as NaN; the reason of a decision names the
  exact value;
* stage records, events and model metadata (:func:`json_safe`) write protobuf's JSON names,
  ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, which read back as the same float.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

#: protobuf's JSON mapping of the doubles JSON has no number for.
_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def name(value: float) -> str:
    """How a verdict says a number: ``NaN``, ``+inf``, ``-inf`` or the number itself."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:.6g}"


def json_number(value: float) -> float | str:
    """A float as JSON can hold it: itself, or ``"NaN"``, ``"Infinity"``, ``"-Infinity"``."""
    return value if math.isfinite(value) else _NAMES[repr(float(value))]


def json_safe(data: Any) -> Any:
    """``data`` with every non-finite float replaced by its protobuf JSON name."""
    if isinstance(data, float):
        return json_number(data)
    if isinstance(data, Mapping):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data


def number(value: Any) -> float | None:
    """A number read back from JSON (``"NaN"`` and friends included); None if it is none."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _read(value: Any) -> Any:
    return math.nan if value is None else value


def _write(value: float) -> float | None:
    return value if math.isfinite(value) else None


#: A metric in a record: any float in memory; ``null`` in JSON when not finite (JSON and the
#: API server hold no NaN), read back as NaN.
Metric = Annotated[
    float,
    BeforeValidator(_read),
    PlainSerializer(_write, return_type=float | None, when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "null"}]}, mode="validation"),
]
