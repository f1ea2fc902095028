"""Naming that must be deterministic: model versions and run ids."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

_INT = re.compile(r"^[1-9][0-9]*$")


def next_version(existing: Iterable[str]) -> str:
    """Versions are positive integers, as a Triton/KServe model repository expects."""
    numbers = [int(v) for v in existing if _INT.match(v)]
    return str(max(numbers, default=0) + 1)


def run_id(pipeline: str, trigger: str, at: datetime) -> str:
    """The same trigger at the same moment always names the same run."""
    kind = {"manual": "m", "schedule": "s", "new-data": "d", "degradation": "g"}.get(trigger, "x")
    return f"{pipeline}-{kind}{at:%Y%m%d%H%M%S}"
