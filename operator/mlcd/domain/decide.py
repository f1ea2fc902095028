"""The decide step: status + one bundle of observations -> the next status and what to do.

Pure: no I/O, no clock of its own, no memory between calls. The operator's handlers and
``mlcd run`` call it alike, once per pass; a thin executor carries out the intents, and their
outcomes come back as the next pass's observations. Every decision is a row of a table:
:data:`mlcd.domain.lifecycle.RUN_TABLE` (a run's life), the tables of
:mod:`mlcd.domain.triggers` (schedule deadline, concurrency policy, capacity), and
:data:`DELETION_TABLE` below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mlcd.domain import conditions, delivery, triggers
from mlcd.domain.intents import (
    Cancel,
    Finished,
    ForgetCredentials,
    Intent,
    Notice,
    Post,
    Started,
    StopServing,
    Submit,
)
from mlcd.domain.lifecycle import (
    EVENT_REASONS,
    Act,
    Seen,
    classify,
    final_record,
    message,
    row,
    state_of,
)
from mlcd.domain.observations import Observations
from mlcd.domain.records import FinalResult, ServingRecord
from mlcd.domain.rollout import TERMINAL, RolloutState
from mlcd.domain.status import (
    Condition,
    ConditionType,
    CurrentRun,
    ModelPipelineStatus,
    summarize,
)

Cleanup = Literal["cancel-leftovers", "stop-serving"]

finals: dict[str, FinalResult] = {
    "promoted": "promoted",
    "exported": "exported",
    "rejected": "rejected",
    "failed": "failed",
    "cancelled": "cancelled",
}

#: While a pipeline is deleted: (the engine still runs some of its runs, something still
#: serves it) -> (what to do, whether cleanup is done and the finalizer may go).
DELETION_TABLE: dict[tuple[bool, bool], tuple[tuple[Cleanup, ...], bool]] = {
    (False, False): ((), True),
    (True, False): (("cancel-leftovers",), False),
    (False, True): (("stop-serving",), False),
    (True, True): (("cancel-leftovers", "stop-serving"), False),
}


@dataclass
class Decision:
    status: ModelPipelineStatus
    intents: list[Intent] = field(default_factory=list)
    #: Deletion only: everything is stopped, the finalizer may be released.
    cleaned_up: bool = False

    @property
    def notices(self) -> list[Notice]:
        return [i.notice for i in self.intents if isinstance(i, Post)]


def record_link(seen: Observations, run: str) -> str | None:
    """Where the run writes its full record: beside the model, in the repository."""
    spec = seen.pipeline.spec
    root = spec.artifacts.uri if spec is not None and spec.artifacts else None
    root = root or seen.pipeline.default_artifacts
    if not root or spec is None:
        return None
    p = seen.pipeline
    path = record_path(p.namespace, p.name, p.uid, run)
    return f"{root.rstrip('/')}/{spec.serving.name}/runs/{path}.json"


def record_path(namespace: str, name: str, uid: str, run: str) -> str:
    """``<namespace>/<name>[-<uid>]/<run>``: a recreated pipeline never overwrites the records
    of the one it replaced."""
    folder = f"{name}-{uid}" if uid else name
    return f"{namespace}/{folder}/{run}"


def _runs(
    status: ModelPipelineStatus, seen: Observations, out: list[Intent]
) -> ModelPipelineStatus:
    """Applies the run table to every active run."""
    p = seen.pipeline
    limit = p.spec.history_limit if p.spec else max(len(status.runs), 10)
    cancel = (
        "the pipeline was deleted" if p.deleting else "interrupted" if seen.interrupted else None
    )
    active: list[CurrentRun] = []
    history = list(status.runs)
    serving = status.serving
    rollout = status.rollout
    for run in status.active_runs:
        view = seen.runs.get(run.id)
        what, reason = classify(run, view, seen, serving, cancel, rollout)
        nxt, acts = row(state_of(run), what)
        record = view.record if view is not None else None
        updated = run.model_copy(
            update={
                "children": {**run.children, **(record.children if record else {})},
                # What holds it up, kept while it does; an Event only when it changes.
                "message": reason if Act.HOLD in acts else None,
            }
        )
        if nxt == "running" and record is not None and record.result == "running":
            updated = updated.model_copy(update={"stage": record.stage})
        if nxt == "promoting":
            updated = updated.model_copy(update={"stage": "serve"})
        if Act.RESUBMIT in acts:
            updated = updated.model_copy(update={"attempt": run.attempt + 1, "stage": "validate"})
            out.append(Submit(updated, serving))
        if Act.SUBMIT in acts:
            out.append(Submit(updated, serving))
        if Act.PROMOTE in acts and record is not None and record.model is not None:
            started, produced = delivery.begin(
                seen, updated, record.model, dict(record.metrics), serving
            )
            rollout = started or rollout
            out.extend(produced)
        if Act.ROLL in acts and rollout is not None:
            rollout, produced = delivery.step(rollout, seen)
            out.extend(produced)
        if Act.CANCEL in acts:
            out.append(Cancel(run, reason or "cancelled"))
            if rollout is not None and rollout.run == run.id and not _ended(rollout):
                rollout, produced = delivery.step(rollout, seen, abort=True)
                out.extend(produced)
        if Act.HOLD in acts and reason != run.message:
            out.append(Post(Notice("Warning", EVENT_REASONS[what], f"run {run.id}: {reason}")))
        if Act.WARN in acts or Act.NOTE in acts:
            kind: Literal["Normal", "Warning"] = "Warning" if Act.WARN in acts else "Normal"
            out.append(Post(Notice(kind, EVENT_REASONS[what], message(run, what, record, reason))))
        if Act.FINISH in acts:
            result = finals[nxt]
            final = final_record(run, result, what, record, seen.now, reason)
            summary = summarize(final, result, run.attempt, record_link(seen, run.id))
            history = [r for r in history if r.id != run.id] + [summary]
            out.append(Finished(run, summary))
            if Act.SERVE in acts and final.model is not None:
                view_url = seen.serving.url if seen.serving is not None else None
                serving = ServingRecord(
                    model=p.spec.serving.name if p.spec else (serving.model if serving else ""),
                    version=final.model.version,
                    uri=final.model.uri,
                    sha256=final.model.sha256,
                    url=view_url,
                    run=run.id,
                    metrics=dict(final.metrics),
                )
        else:
            active.append(updated)
    return status.model_copy(
        update={
            "active_runs": active,
            "runs": history[-limit:],
            "serving": serving,
            "rollout": rollout,
        }
    )


def _ended(rollout: RolloutState) -> bool:
    return rollout.phase in {p.value for p in TERMINAL}


def _rolling(status: ModelPipelineStatus) -> bool:
    """A run of this pipeline is being rolled out now."""
    rollout = status.rollout
    return (
        rollout is not None
        and not _ended(rollout)
        and any(r.id == rollout.run and r.stage == "serve" for r in status.active_runs)
    )


@dataclass
class _Starts:
    status: ModelPipelineStatus
    waiting: str | None = None


def _triggers(status: ModelPipelineStatus, seen: Observations, out: list[Intent]) -> _Starts:
    """Starts what is due, as the trigger, schedule and capacity tables say."""
    p = seen.pipeline
    spec = p.spec
    assert spec is not None
    due = triggers.wanted(status, seen)
    if due.degradation is not None and due.degradation != status.degradation:
        status = status.model_copy(update={"degradation": due.degradation})
    waiting = None
    if due.missed is not None:
        status = status.model_copy(update={"last_schedule_time": triggers.iso(due.missed)})
        out.append(
            Post(
                Notice(
                    "Warning",
                    "MissedSchedule",
                    f"run due at {triggers.iso(due.missed)} missed its starting deadline of "
                    f"{spec.starting_deadline_seconds}s",
                )
            )
        )
    # Slots left by the other pipelines; this pipeline's own active runs use some of them.
    free = seen.free_slots
    for want in due.wanted:
        known = {r.id for r in status.active_runs} | {r.id for r in status.runs}
        if want.run in known:
            status = status.model_copy(update=want.consumed)  # started before a crash
            continue
        policy = spec.concurrency_policy
        mine = len(status.active_runs)
        kind = triggers.TRIGGER_TABLE[(want.kind, bool(mine), policy)]
        # Replacing frees the slots of the runs it cancels.
        room = free - mine > 0 if kind == "start" else free > 0
        final = triggers.outcome(want.kind, bool(mine), policy, room)
        if final == "wait":
            most = f"{seen.max_active_runs} runs" if seen.max_active_runs else "no more runs"
            waiting = f"{want.kind} run {want.run} waits: this operator runs {most} at most"
            continue
        if final == "defer":
            continue
        if final == "skip":
            status = status.model_copy(update=want.consumed)
            out.append(
                Post(
                    Notice(
                        "Normal",
                        "RunSkipped",
                        f"{want.kind} run {want.run} skipped: a run is active "
                        "(concurrencyPolicy Forbid)",
                    )
                )
            )
            continue
        if final == "replace":
            for run in status.active_runs:
                out.append(Cancel(run, f"replaced by run {want.run}"))
            status = _cancel_all(status, seen, out, f"replaced by run {want.run}")
        new = CurrentRun(
            id=want.run,
            trigger=want.kind,
            started_at=triggers.iso(seen.now),
            engine=p.engine,
        )
        out.append(Submit(new, status.serving))
        out.append(Started(new))
        out.append(Post(Notice("Normal", "RunStarted", f"{want.kind} run {want.run} started")))
        status = status.model_copy(
            update={**want.consumed, "active_runs": [*status.active_runs, new]}
        )
    return _Starts(status, waiting)


def _cancel_all(
    status: ModelPipelineStatus, seen: Observations, out: list[Intent], reason: str
) -> ModelPipelineStatus:
    """Moves every active run to history as cancelled (their Cancel intents are emitted by the
    caller, once)."""
    p = seen.pipeline
    limit = p.spec.history_limit if p.spec else max(len(status.runs), 10)
    history = list(status.runs)
    for run in status.active_runs:
        view = seen.runs.get(run.id)
        record = view.record if view is not None else None
        final = final_record(run, "cancelled", Seen.CANCELLED, record, seen.now, reason)
        summary = summarize(final, "cancelled", run.attempt, record_link(seen, run.id))
        history = [r for r in history if r.id != run.id] + [summary]
        out.append(Finished(run, summary))
        out.append(Post(Notice("Warning", "RunCancelled", f"run {run.id}: {reason}")))
    return status.model_copy(update={"active_runs": [], "runs": history[-limit:]})


def _deletion(
    status: ModelPipelineStatus, seen: Observations, out: list[Intent]
) -> tuple[bool, str | None]:
    acts, done = DELETION_TABLE[(bool(seen.live_runs), seen.serving_running)]
    waiting = []
    if "cancel-leftovers" in acts:
        for run in seen.live_runs:
            stub = CurrentRun(id=run, trigger="manual", started_at=triggers.iso(seen.now))
            out.append(Cancel(stub, "the pipeline was deleted"))
        waiting.append(f"runs {', '.join(seen.live_runs)} to stop")
    if "stop-serving" in acts:
        out.append(StopServing())
        waiting.append("its model server to stop")
    failures = [o.message for o in seen.outcomes if not o.ok]
    text = "waiting for " + " and ".join(waiting) if waiting else None
    if text and failures:
        text += "; last attempt: " + "; ".join(failures)
    return done, text


def decide(status: ModelPipelineStatus, seen: Observations) -> Decision:
    p = seen.pipeline
    previous = {c.type: c for c in status.conditions}
    out: list[Intent] = []
    before = status.rollout
    status = _runs(status, seen, out)
    blockers = conditions.Blockers(
        problem=p.problem,
        dataset=seen.dataset.error if seen.dataset is not None else None,
    )
    cleaned_up = False
    if p.deleting:
        cleaned_up, waiting_for = _deletion(status, seen, out)
        blockers = conditions.Blockers(problem=p.problem, deleting=waiting_for)
    elif p.spec is not None and p.problem is None and not seen.interrupted:
        starts = _triggers(status, seen, out)
        status = starts.status
        blockers = conditions.Blockers(
            problem=p.problem, dataset=blockers.dataset, waiting=starts.waiting
        )
    # What was observed is from before this pass's rollout step: a rollout that changed now
    # is settled from the next pass's observations.
    if not _rolling(status) and status.rollout == before and not p.deleting:
        status, produced = delivery.settle(status, seen)
        out.extend(produced)
    # Credential files live only as long as their run.
    active = {r.id for r in status.active_runs}
    for run in seen.credentials:
        if run not in active:
            out.append(ForgetCredentials(run))
    spec = p.spec
    status = status.model_copy(
        update={
            "phase": conditions.phase(status, spec, p.problem, p.deleting),
            "observed_generation": p.generation,
            "conditions": conditions.conditions(
                status, seen.serving, blockers, p.generation, seen.now
            ),
            "next_schedule_time": triggers.next_schedule(status, seen),
            "last_metric": conditions.last_metric(status, spec.gate.metric) if spec else None,
        }
    )
    out.extend(_problems(previous, status, blockers))
    return Decision(status, out, cleaned_up)


def _problems(
    previous: Mapping[ConditionType, Condition],
    status: ModelPipelineStatus,
    blockers: conditions.Blockers,
) -> list[Intent]:
    """A problem is reported once, when it appears or changes, not at every look."""
    now = {c.type: c for c in status.conditions}

    def changed(kind: ConditionType) -> bool:
        old = previous.get(kind)
        return old is None or old.message != now[kind].message

    out: list[Intent] = []
    if blockers.problem and changed("SpecValid"):
        out.append(Post(Notice("Warning", "InvalidSpec", blockers.problem)))
    if blockers.dataset and changed("Degraded"):
        out.append(Post(Notice("Warning", "DatasetUnavailable", blockers.dataset)))
    if blockers.waiting and changed("Training"):
        out.append(Post(Notice("Normal", "WaitingForCapacity", blockers.waiting)))
    ready = now["Ready"]
    old_ready = previous.get("Ready")
    if (
        ready.status == "False"
        and ready.reason in ("ServerNotReady", "VersionMismatch")
        and (old_ready is None or old_ready.reason != ready.reason)
    ):
        out.append(Post(Notice("Warning", ready.reason, ready.message)))
    return out
