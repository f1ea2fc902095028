"""The gate: an absolute bound AND no regression against the model now serving."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mlcd.domain.numbers import name as number_name
from mlcd.domain.records import GateCheck, GateVerdict
from mlcd.domain.spec import Gate


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def judge(
    gate: Gate,
    metrics: Mapping[str, float],
    baseline: Mapping[str, float] | None = None,
    baseline_version: str | None = None,
) -> GateVerdict:
    """Decides whether a candidate may replace the serving model.

    ``baseline`` is the serving model's metrics (None when nothing serves yet). A missing or
    non-finite candidate metric never passes.
    """
    name = gate.metric

    def verdict(passed: bool, reason: str, **numbers: Any) -> GateVerdict:
        return GateVerdict(
            passed=passed,
            reason=reason,
            metric=name,
            direction=gate.direction,
            min=gate.min,
            max=gate.max,
            baseline_version=baseline_version,
            **numbers,
        )

    value = metrics.get(name)
    if value is None:
        reason = f"{name} missing from the evaluation's metrics"
        return verdict(False, reason)
    if not math.isfinite(value):
        reason = f"{name} is {number_name(value)}: never passes"
        return verdict(False, reason, value=value)

    checks: list[GateCheck] = []
    if gate.min is not None:
        ok = value >= gate.min
        checks.append(
            GateCheck(
                name="min",
                passed=ok,
                detail=f"{name} {_fmt(value)} {'>=' if ok else '<'} min {_fmt(gate.min)}",
            )
        )
    if gate.max is not None:
        ok = value <= gate.max
        checks.append(
            GateCheck(
                name="max",
                passed=ok,
                detail=f"{name} {_fmt(value)} {'<=' if ok else '>'} max {_fmt(gate.max)}",
            )
        )

    baseline_value: float | None = None
    regression: float | None = None
    allowed = gate.baseline.max_regression
    if gate.baseline.compare_to == "serving":
        if baseline is None:
            checks.append(
                GateCheck(
                    name="baseline",
                    passed=True,
                    detail="no model serving yet: judged on the bound alone",
                )
            )
        elif baseline.get(name) is None or not math.isfinite(baseline[name]):
            checks.append(
                GateCheck(
                    name="baseline",
                    passed=True,
                    detail=f"serving model {baseline_version} has no {name}: "
                    "judged on the bound alone",
                )
            )
        else:
            baseline_value = baseline[name]
            worse = (
                baseline_value - value if gate.direction == "maximize" else value - baseline_value
            )
            regression = worse
            ok = worse <= allowed
            checks.append(
                GateCheck(
                    name="baseline",
                    passed=ok,
                    detail=(
                        f"{name} {_fmt(value)} vs {_fmt(baseline_value)} of serving version "
                        f"{baseline_version}: regression {_fmt(max(worse, 0.0))} "
                        f"{'<=' if ok else '>'} allowed {_fmt(allowed)}"
                    ),
                )
            )

    passed = all(c.passed for c in checks)
    failed = [c.detail for c in checks if not c.passed]
    reason = "; ".join(failed) if failed else "; ".join(c.detail for c in checks) or "no bounds"
    return verdict(
        passed,
        reason,
        value=value,
        baseline_value=baseline_value,
        max_regression=allowed if gate.baseline.compare_to == "serving" else None,
        regression=regression,
        checks=checks,
    )
