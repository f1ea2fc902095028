"""Conditions and phase: a pure function of the status and what this pass observed."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from mlcd.domain.observations import ServingView
from mlcd.domain.spec import ModelPipelineSpec
from mlcd.domain.status import Condition, ConditionType, ModelPipelineStatus, Phase

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Blockers:
    """What keeps the pipeline from its normal course, for the conditions."""

    #: The spec is invalid (the field and the reason).
    problem: str | None = None
    #: The dataset's identity cannot be read.
    dataset: str | None = None
    #: A trigger waits for the operator's capacity.
    waiting: str | None = None
    #: The pipeline is being deleted and cleanup is not done (what it waits for).
    deleting: str | None = None


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def ready(
    status: ModelPipelineStatus, view: ServingView | None
) -> tuple[ConditionStatus, str, str]:
    """Ready comes from what the serving target reports now, not from what was recorded."""
    serving = status.serving
    if serving is None:
        return "False", "NoModel", "no model has passed its gate yet"
    if view is None or not view.ready:
        why = view.reason if view is not None and view.reason else "the model server is not up"
        return "False", "ServerNotReady", f"version {serving.version}: {why}"
    if view.ref is None or (view.ref.version, view.ref.sha256) != (
        serving.version,
        serving.sha256,
    ):
        reports = f"version {view.ref.version}" if view.ref else "no version"
        return (
            "False",
            "VersionMismatch",
            f"the server reports {reports}, expected version {serving.version} "
            f"({serving.sha256[:12]})",
        )
    return (
        "True",
        "Serving",
        f"version {serving.version} ({serving.sha256[:12]}) serves at {view.url or serving.url}",
    )


def conditions(
    status: ModelPipelineStatus,
    view: ServingView | None,
    blockers: Blockers,
    generation: int | None,
    now: dt.datetime,
) -> list[Condition]:
    """Ready, Training, Gated, Degraded, SpecValid (and Deleting while it is deleted)."""
    last = status.runs[-1] if status.runs else None
    gated = next((r for r in reversed(status.runs) if r.gate is not None), None)
    wanted: list[tuple[ConditionType, ConditionStatus, str, str]] = [
        ("Ready", *ready(status, view))
    ]
    if status.active_runs:
        run = status.active_runs[-1]
        text = f"run {run.id} at stage {run.stage}" + (f": {run.message}" if run.message else "")
        wanted.append(("Training", "True", "RunActive", text))
    elif blockers.waiting:
        wanted.append(("Training", "False", "WaitingForCapacity", blockers.waiting))
    else:
        wanted.append(("Training", "False", "Idle", "no run in progress"))
    if gated is not None and gated.gate is not None:
        wanted.append(
            (
                "Gated",
                "True" if gated.gate.passed else "False",
                "GatePassed" if gated.gate.passed else "GateFailed",
                f"run {gated.id}: {gated.gate.reason}",
            )
        )
    if blockers.dataset:
        wanted.append(("Degraded", "True", "DatasetUnavailable", blockers.dataset))
    elif last is not None and last.result == "failed":
        wanted.append(("Degraded", "True", "RunFailed", f"run {last.id}: {last.reason}"))
    else:
        wanted.append(("Degraded", "False", "AsExpected", ""))
    if blockers.problem:
        wanted.append(("SpecValid", "False", "InvalidSpec", blockers.problem))
    else:
        wanted.append(("SpecValid", "True", "Accepted", ""))
    if blockers.deleting:
        wanted.append(("Deleting", "True", "CleaningUp", blockers.deleting))
    previous = {c.type: c for c in status.conditions}
    out = []
    for ctype, cstatus, reason, text in wanted:
        old = previous.get(ctype)
        since = old.last_transition_time if old is not None and old.status == cstatus else None
        out.append(
            Condition(
                type=ctype,
                status=cstatus,
                reason=reason,
                message=text,
                last_transition_time=since or _iso(now),
                observed_generation=generation,
            )
        )
    return out


def phase(
    status: ModelPipelineStatus,
    spec: ModelPipelineSpec | None,
    problem: str | None,
    deleting: bool = False,
) -> Phase:
    if deleting:
        return "Deleting"
    if problem:
        return "Invalid"
    if status.active_runs:
        return "Running"
    if spec is not None and spec.suspend:
        return "Suspended"
    if status.serving is not None:
        return "Ready"
    if status.runs and status.runs[-1].result in ("failed", "rejected", "exported"):
        return "Failed"
    return "Pending"


def last_metric(status: ModelPipelineStatus, metric: str) -> str | None:
    for record in reversed(status.runs):
        if metric in record.metrics:
            return f"{metric}={record.metrics[metric]:.4f}"
    return status.last_metric
