"""Gate: the candidate passes only on the absolute bound AND without regressing against the
model serving now."""

from __future__ import annotations

import json

from mlcd.domain.gate import judge
from mlcd.pipeline.context import RunContext


def run(ctx: RunContext, metrics_json: str) -> bool:
    gate = ctx.pipeline.spec.gate
    with ctx.stage("gate") as outcome:
        # float() reads the protobuf JSON names ("NaN", "Infinity") the evaluate stage writes.
        metrics = {k: float(v) for k, v in json.loads(metrics_json).items()}
        baseline = ctx.baseline
        verdict = judge(
            gate,
            metrics,
            baseline.metrics if baseline else None,
            baseline.version if baseline else None,
        )
        outcome["verdict"] = verdict.model_dump(by_alias=True)
        ctx.events.emit("gate", passed=verdict.passed, reason=verdict.reason)
        if not verdict.passed:
            outcome["status"] = "rejected"
            outcome["reason"] = f"gate: {verdict.reason}"
        return verdict.passed
