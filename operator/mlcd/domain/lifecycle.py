"""The run lifecycle as tables: every decision the operator takes about a run comes from here.

Two tables, both plain data:

* ``RUN_TRANSITIONS``: (state of an active run, what was observed) -> (next state, actions);
* ``TRIGGER_OUTCOMES``: (trigger kind, a run is active, concurrency policy) -> outcome.

:func:`advance` applies the first to a status, :func:`trigger` the second; the reconciler only
gathers observations and carries out the actions they return.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from mlcd.domain.records import ModelRef, RunRecord, ServingRecord
from mlcd.domain.spec import ModelPipelineSpec
from mlcd.domain.status import Condition, ConditionType, CurrentRun, ModelPipelineStatus, Phase
from mlcd.domain.versions import run_id

MAX_ATTEMPTS = 2


class Seen(StrEnum):
    """What the reconciler observed about an active run."""

    PROGRESS = "progress"  # the engine runs it, at some stage
    EXPORTED = "exported"  # the pipeline published a model that passed its gate
    REJECTED = "rejected"  # bad data or the gate said no
    FAILED = "failed"  # a stage failed
    LOST = "lost"  # the engine has neither a live run nor a result
    LOST_AGAIN = "lost-again"  # lost, and the retry is used up
    SERVED = "served"  # serving now points at the run's model
    SERVE_FAILED = "serve-failed"  # switching serving failed; the old model still serves
    SUPERSEDED = "superseded"  # a better model started serving meanwhile
    CANCELLED = "cancelled"  # replaced by a newer run, or the pipeline is being deleted


class Act(StrEnum):
    PROMOTE = "promote"  # switch serving to the run's model
    RESUBMIT = "resubmit"  # submit the same run id again, next attempt
    CANCEL = "cancel"  # stop the run in the engine
    FINISH = "finish"  # move the run from active to history
    SERVE = "serve"  # record the run's model as serving
    WARN = "warn"  # post a Warning event
    NOTE = "note"  # post a Normal event


ConditionStatus = Literal["True", "False", "Unknown"]
RunState = Literal["running", "promoting", "promoted", "rejected", "failed"]
Transition = tuple[RunState, tuple[Act, ...]]

RUN_TRANSITIONS: dict[tuple[RunState, Seen], Transition] = {
    ("running", Seen.PROGRESS): ("running", ()),
    ("running", Seen.EXPORTED): ("promoting", (Act.PROMOTE,)),
    ("running", Seen.REJECTED): ("rejected", (Act.FINISH, Act.WARN)),
    ("running", Seen.FAILED): ("failed", (Act.FINISH, Act.WARN)),
    ("running", Seen.LOST): ("running", (Act.RESUBMIT, Act.WARN)),
    ("running", Seen.LOST_AGAIN): ("failed", (Act.FINISH, Act.WARN)),
    ("running", Seen.CANCELLED): ("failed", (Act.CANCEL, Act.FINISH, Act.WARN)),
    # After a restart the engine still reports the export: promoting again is idempotent.
    ("promoting", Seen.EXPORTED): ("promoting", (Act.PROMOTE,)),
    ("promoting", Seen.SERVED): ("promoted", (Act.SERVE, Act.FINISH, Act.NOTE)),
    ("promoting", Seen.SERVE_FAILED): ("failed", (Act.FINISH, Act.WARN)),
    ("promoting", Seen.SUPERSEDED): ("rejected", (Act.FINISH, Act.WARN)),
    ("promoting", Seen.LOST): ("failed", (Act.FINISH, Act.WARN)),
    ("promoting", Seen.LOST_AGAIN): ("failed", (Act.FINISH, Act.WARN)),
    ("promoting", Seen.CANCELLED): ("failed", (Act.FINISH, Act.WARN)),
}

TriggerKind = Literal["schedule", "new-data", "manual"]
Outcome = Literal["start", "skip", "defer", "replace"]
Policy = Literal["Allow", "Forbid", "Replace"]

TRIGGER_OUTCOMES: dict[tuple[TriggerKind, bool, Policy], Outcome] = {
    ("schedule", False, "Allow"): "start",
    ("schedule", False, "Forbid"): "start",
    ("schedule", False, "Replace"): "start",
    ("new-data", False, "Allow"): "start",
    ("new-data", False, "Forbid"): "start",
    ("new-data", False, "Replace"): "start",
    ("manual", False, "Allow"): "start",
    ("manual", False, "Forbid"): "start",
    ("manual", False, "Replace"): "start",
    ("schedule", True, "Allow"): "start",
    ("schedule", True, "Forbid"): "skip",  # CronJob: that scheduled time is gone
    ("schedule", True, "Replace"): "replace",
    ("new-data", True, "Allow"): "start",
    ("new-data", True, "Forbid"): "defer",  # new data is never dropped: it waits its turn
    ("new-data", True, "Replace"): "replace",
    ("manual", True, "Allow"): "start",
    ("manual", True, "Forbid"): "defer",
    ("manual", True, "Replace"): "replace",
}

EVENT_REASONS: dict[Seen, str] = {
    Seen.REJECTED: "RunRejected",
    Seen.FAILED: "RunFailed",
    Seen.LOST: "RunRetried",
    Seen.LOST_AGAIN: "RunLost",
    Seen.CANCELLED: "RunCancelled",
    Seen.SERVED: "Promoted",
    Seen.SERVE_FAILED: "PromotionFailed",
    Seen.SUPERSEDED: "Superseded",
}


def run_state(run: CurrentRun) -> RunState:
    return "promoting" if run.stage == "serve" else "running"


def classify(run: CurrentRun, record: RunRecord | None) -> Seen:
    """The engine's view of a run, as the table's vocabulary."""
    if record is None:
        return Seen.LOST if run.attempt < MAX_ATTEMPTS else Seen.LOST_AGAIN
    if record.result == "running":
        return Seen.EXPORTED if record.stage == "serve" and record.model else Seen.PROGRESS
    if record.result == "rejected":
        return Seen.REJECTED
    return Seen.FAILED


@dataclass(frozen=True)
class Notice:
    """A Kubernetes Event to post."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Effects:
    """What the reconciler must carry out, and what to report once the status is written."""

    promote: list[tuple[str, ModelRef]] = field(default_factory=list)
    resubmit: list[CurrentRun] = field(default_factory=list)
    submit: list[CurrentRun] = field(default_factory=list)
    cancel: list[CurrentRun] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    finished: list[RunRecord] = field(default_factory=list)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def advance(
    status: ModelPipelineStatus,
    run: CurrentRun,
    seen: Seen,
    record: RunRecord | None,
    now: dt.datetime,
    history_limit: int,
    effects: Effects,
    reason: str | None = None,
    serving: ServingRecord | None = None,
) -> ModelPipelineStatus:
    """Applies one observation about one active run; returns the new status.

    ``reason`` explains a failure the engine did not report (serving, cancel); ``serving`` is
    what now serves after a successful promotion."""
    state = run_state(run)
    key = (state, seen)
    if key not in RUN_TRANSITIONS:
        return status
    nxt, acts = RUN_TRANSITIONS[key]
    active = [r for r in status.active_runs if r.id != run.id]
    updated = run
    if record is not None and record.result == "running" and nxt == "running":
        updated = run.model_copy(update={"stage": record.stage})
    if nxt == "promoting":
        updated = run.model_copy(update={"stage": "serve"})
    if Act.RESUBMIT in acts:
        updated = run.model_copy(update={"attempt": run.attempt + 1, "stage": "validate"})
        effects.resubmit.append(updated)
    if Act.PROMOTE in acts and record is not None and record.model is not None:
        effects.promote.append((run.id, record.model))
    if Act.CANCEL in acts:
        effects.cancel.append(run)
    out = status
    if Act.FINISH in acts:
        final = _final_record(run, nxt, seen, record, now, reason)
        effects.finished.append(final)
        runs = [r for r in status.runs if r.id != final.id] + [final]
        out = out.model_copy(update={"runs": runs[-history_limit:], "active_runs": active})
        if Act.SERVE in acts and serving is not None:
            out = out.model_copy(update={"serving": serving})
    else:
        out = out.model_copy(update={"active_runs": [*active, updated]})
    if Act.WARN in acts or Act.NOTE in acts:
        message = _message(run, seen, record, reason)
        kind: Literal["Normal", "Warning"] = "Warning" if Act.WARN in acts else "Normal"
        effects.notices.append(Notice(kind, EVENT_REASONS[seen], message))
    return out


def _final_record(
    run: CurrentRun,
    state: RunState,
    seen: Seen,
    record: RunRecord | None,
    now: dt.datetime,
    reason: str | None,
) -> RunRecord:
    base = record or RunRecord(id=run.id, trigger=run.trigger, started_at=run.started_at)
    result: Literal["promoted", "rejected", "failed"] = (
        "promoted" if state == "promoted" else "rejected" if state == "rejected" else "failed"
    )
    why = {
        Seen.LOST_AGAIN: "the run was lost twice (its process ended without a result)",
        Seen.CANCELLED: reason or "cancelled",
        Seen.SERVE_FAILED: f"serving: {reason}",
        Seen.SUPERSEDED: reason or "a better model is serving now",
    }.get(seen, base.reason)
    if seen == Seen.SERVED:
        why = base.gate.reason if base.gate else base.reason
    return base.model_copy(
        update={
            "id": run.id,
            "trigger": run.trigger,
            "result": result,
            "stage": "done" if result == "promoted" else base.stage,
            "reason": why,
            "started_at": base.started_at or run.started_at,
            "finished_at": base.finished_at
            if result != "promoted" and base.finished_at
            else _iso(now),
        }
    )


def _message(run: CurrentRun, seen: Seen, record: RunRecord | None, reason: str | None) -> str:
    if seen == Seen.SERVED and record is not None and record.model is not None:
        gate = record.gate.reason if record.gate else ""
        return f"run {run.id}: version {record.model.version} now serving; {gate}".strip("; ")
    if seen == Seen.LOST:
        return f"run {run.id} lost its process; retrying it (attempt {run.attempt + 1})"
    text = reason or (record.reason if record else None) or seen.value
    return f"run {run.id}: {text}"


def trigger(kind: TriggerKind, active: bool, policy: Policy) -> Outcome:
    return TRIGGER_OUTCOMES[(kind, active, policy)]


def trigger_run_id(name: str, kind: TriggerKind, key: str | dt.datetime) -> str:
    """Deterministic: the same trigger always names the same run, so a retried reconcile
    after a crash submits nothing twice."""
    if isinstance(key, dt.datetime):
        return run_id(name, kind, key)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{name}-{'d' if kind == 'new-data' else 'm'}{digest}"


def conditions(
    status: ModelPipelineStatus,
    spec_problem: str | None,
    generation: int | None,
    now: dt.datetime,
    blocked: str | None = None,
    waiting: str | None = None,
) -> list[Condition]:
    """Ready, Training, Gated, Degraded and SpecValid, from the status and what keeps new
    runs from starting (``blocked``: the dataset cannot be checked; ``waiting``: a run waits
    for the operator's capacity)."""
    last = status.runs[-1] if status.runs else None
    gated = next((r for r in reversed(status.runs) if r.gate is not None), None)
    wanted: list[tuple[ConditionType, ConditionStatus, str, str]] = []
    if status.serving is not None:
        wanted.append(
            (
                "Ready",
                "True",
                "Serving",
                f"version {status.serving.version} ({status.serving.sha256[:12]}) "
                f"serves at {status.serving.url}",
            )
        )
    else:
        wanted.append(("Ready", "False", "NoModel", "no model has passed its gate yet"))
    if status.active_runs:
        run = status.active_runs[-1]
        wanted.append(("Training", "True", "RunActive", f"run {run.id} at stage {run.stage}"))
    else:
        if waiting:
            wanted.append(("Training", "False", "WaitingForCapacity", waiting))
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
    if blocked:
        wanted.append(("Degraded", "True", "DatasetUnavailable", blocked))
    elif last is not None and last.result == "failed":
        wanted.append(("Degraded", "True", "RunFailed", f"run {last.id}: {last.reason}"))
    else:
        wanted.append(("Degraded", "False", "AsExpected", ""))
    if spec_problem:
        wanted.append(("SpecValid", "False", "InvalidSpec", spec_problem))
    else:
        wanted.append(("SpecValid", "True", "Accepted", ""))
    previous = {c.type: c for c in status.conditions}
    out = []
    for ctype, cstatus, reason, message in wanted:
        old = previous.get(ctype)
        since = old.last_transition_time if old is not None and old.status == cstatus else None
        out.append(
            Condition(
                type=ctype,
                status=cstatus,
                reason=reason,
                message=message,
                last_transition_time=since or _iso(now),
                observed_generation=generation,
            )
        )
    return out


def phase(
    status: ModelPipelineStatus, spec: ModelPipelineSpec | None, spec_problem: str | None
) -> Phase:
    if spec_problem:
        return "Invalid"
    if status.active_runs:
        return "Running"
    if spec is not None and spec.suspend:
        return "Suspended"
    if status.serving is not None:
        return "Ready"
    if status.runs and status.runs[-1].result in ("failed", "rejected"):
        return "Failed"
    return "Pending"


def last_metric(status: ModelPipelineStatus, metric: str) -> str | None:
    for record in reversed(status.runs):
        if metric in record.metrics:
            return f"{metric}={record.metrics[metric]:.4f}"
    return status.last_metric
