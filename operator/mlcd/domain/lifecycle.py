"""A run's life as one table: (state of an active run, what was seen) -> (next state, acts).

``classify`` turns the observations about one run into the table's vocabulary; ``RUN_TABLE``
says what follows. Every pair is a row or explicitly impossible (``IMPOSSIBLE``); a pair that
is neither raises, so a gap in the table is a bug found, never a silent no-op.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Literal

from mlcd.domain.gate import judge
from mlcd.domain.observations import Done, Observations, RunView
from mlcd.domain.records import FinalResult, RunRecord, ServingRecord
from mlcd.domain.rollout import RolloutState
from mlcd.domain.spec import Baseline, Gate
from mlcd.domain.status import CurrentRun

#: A run lost this many times (its process ended without a result) is failed.
MAX_ATTEMPTS = 2


class Seen(StrEnum):
    """What a pass observed about one active run."""

    PROGRESS = "progress"  # the engine runs it, at some stage
    EXPORTED = "exported"  # it published a model that passed its gate, and the gate still holds
    SUPERSEDED = "superseded"  # exported, but judged again against a model serving since: no
    REJECTED = "rejected"  # bad data or the gate said no
    FAILED = "failed"  # a stage failed
    ENGINE_CANCELLED = "engine-cancelled"  # the engine reports it cancelled (not by us)
    UNREACHABLE = "unreachable"  # the engine did not answer: nothing is known, nothing changes
    LOST = "lost"  # the engine has neither a live run nor a result
    LOST_AGAIN = "lost-again"  # lost, and the retry is used up
    SUBMIT_RETRY = "submit-retry"  # submitting it failed for now (engine unreachable)
    SUBMIT_FAILED = "submit-failed"  # the engine refused it for good
    ROLLING = "rolling"  # its model is being rolled out step by step
    ROLLED_OUT = "rolled-out"  # the rollout promoted it: it serves all traffic
    ROLLED_BACK = "rolled-back"  # the rollout's analyses (or a person) refused it
    ROLLOUT_FAILED = "rollout-failed"  # the rollout could not be carried out
    SERVED = "served"  # the serving target reports the run's model
    SERVE_RETRY = "serve-retry"  # serving it failed for now (store or server unreachable)
    SERVE_FAILED = "serve-failed"  # serving it failed for good; the old model still serves
    CANCELLED = "cancelled"  # replaced, interrupted, or the pipeline is being deleted


class Act(StrEnum):
    PROMOTE = "promote"  # serve the run's model (at once, or start its rollout)
    ROLL = "roll"  # one step of its rollout
    SUBMIT = "submit"  # submit the same attempt again (it never reached the engine)
    RESUBMIT = "resubmit"  # submit the same run id again, as its next attempt
    CANCEL = "cancel"  # stop it in the engine
    FINISH = "finish"  # move it from active to history with its final result
    SERVE = "serve"  # record its model as serving
    WARN = "warn"  # post a Warning Event
    NOTE = "note"  # post a Normal Event
    HOLD = "hold"  # keep it, note what holds it up (an Event only when that changes)


ActiveState = Literal["running", "promoting"]
Next = Literal["running", "promoting", "promoted", "exported", "rejected", "failed", "cancelled"]
Row = tuple[Next, tuple[Act, ...]]

RUN_TABLE: dict[tuple[ActiveState, Seen], Row] = {
    ("running", Seen.PROGRESS): ("running", ()),
    ("running", Seen.EXPORTED): ("promoting", (Act.PROMOTE,)),
    ("running", Seen.SUPERSEDED): ("rejected", (Act.FINISH, Act.WARN)),
    ("running", Seen.REJECTED): ("rejected", (Act.FINISH, Act.WARN)),
    ("running", Seen.FAILED): ("failed", (Act.FINISH, Act.WARN)),
    ("running", Seen.ENGINE_CANCELLED): ("cancelled", (Act.FINISH, Act.WARN)),
    ("running", Seen.UNREACHABLE): ("running", (Act.HOLD,)),
    ("running", Seen.LOST): ("running", (Act.RESUBMIT, Act.WARN)),
    ("running", Seen.LOST_AGAIN): ("failed", (Act.FINISH, Act.WARN)),
    ("running", Seen.SUBMIT_RETRY): ("running", (Act.SUBMIT, Act.HOLD)),
    ("running", Seen.SUBMIT_FAILED): ("failed", (Act.FINISH, Act.WARN)),
    # Serving switched, then the operator stopped before it recorded "promoting".
    ("running", Seen.SERVED): ("promoted", (Act.SERVE, Act.FINISH, Act.NOTE)),
    ("running", Seen.CANCELLED): ("cancelled", (Act.CANCEL, Act.FINISH, Act.WARN)),
    # After a restart the engine still reports the export: promoting again is idempotent.
    ("promoting", Seen.EXPORTED): ("promoting", (Act.PROMOTE,)),
    ("promoting", Seen.SUPERSEDED): ("rejected", (Act.FINISH, Act.WARN)),
    ("promoting", Seen.UNREACHABLE): ("promoting", (Act.HOLD,)),
    ("promoting", Seen.LOST): ("failed", (Act.FINISH, Act.WARN)),
    ("promoting", Seen.LOST_AGAIN): ("failed", (Act.FINISH, Act.WARN)),
    ("promoting", Seen.SERVED): ("promoted", (Act.SERVE, Act.FINISH, Act.NOTE)),
    ("promoting", Seen.ROLLING): ("promoting", (Act.ROLL,)),
    ("promoting", Seen.ROLLED_OUT): ("promoted", (Act.SERVE, Act.FINISH, Act.NOTE)),
    ("promoting", Seen.ROLLED_BACK): ("rejected", (Act.FINISH, Act.WARN)),
    ("promoting", Seen.ROLLOUT_FAILED): ("failed", (Act.FINISH, Act.WARN)),
    # A store or server outage is not the model's fault: serving it is tried again.
    ("promoting", Seen.SERVE_RETRY): ("promoting", (Act.PROMOTE, Act.HOLD)),
    ("promoting", Seen.SERVE_FAILED): ("exported", (Act.FINISH, Act.WARN)),
    ("promoting", Seen.CANCELLED): ("cancelled", (Act.CANCEL, Act.FINISH, Act.WARN)),
}

#: Pairs that cannot occur, with the reason: the completeness test accepts them, and
#: ``classify`` never produces them.
IMPOSSIBLE: dict[tuple[ActiveState, Seen], str] = {
    ("running", Seen.SERVE_RETRY): "serving is only tried for a promoting run",
    ("running", Seen.SERVE_FAILED): "serving is only tried for a promoting run",
    ("promoting", Seen.PROGRESS): "an exported run's record is final",
    ("promoting", Seen.REJECTED): "an exported run's record is final",
    ("promoting", Seen.FAILED): "an exported run's record is final",
    ("promoting", Seen.ENGINE_CANCELLED): "an exported run's record is final",
    ("promoting", Seen.SUBMIT_RETRY): "a promoting run was submitted long ago",
    ("promoting", Seen.SUBMIT_FAILED): "a promoting run was submitted long ago",
    ("running", Seen.ROLLING): "a rollout starts with the run promoting, in one status write",
    ("running", Seen.ROLLED_OUT): "a rollout starts with the run promoting",
    ("running", Seen.ROLLED_BACK): "a rollout starts with the run promoting",
    ("running", Seen.ROLLOUT_FAILED): "a rollout starts with the run promoting",
}

EVENT_REASONS: dict[Seen, str] = {
    Seen.SUPERSEDED: "Superseded",
    Seen.REJECTED: "RunRejected",
    Seen.FAILED: "RunFailed",
    Seen.ENGINE_CANCELLED: "RunCancelled",
    Seen.UNREACHABLE: "EngineUnreachable",
    Seen.LOST: "RunRetried",
    Seen.LOST_AGAIN: "RunLost",
    Seen.SUBMIT_RETRY: "SubmitRetrying",
    Seen.SUBMIT_FAILED: "RunFailed",
    Seen.SERVED: "Promoted",
    Seen.ROLLING: "RolloutProgressing",
    Seen.ROLLED_OUT: "Promoted",
    Seen.ROLLED_BACK: "RunRejected",
    Seen.ROLLOUT_FAILED: "RunFailed",
    Seen.SERVE_RETRY: "PromotionRetrying",
    Seen.SERVE_FAILED: "PromotionFailed",
    Seen.CANCELLED: "RunCancelled",
}


#: How a rollout's end phase ends its run.
ROLLOUT_ENDS: dict[str, Seen] = {
    "Promoted": Seen.ROLLED_OUT,
    "RolledBack": Seen.ROLLED_BACK,
    "Failed": Seen.ROLLOUT_FAILED,
}


class TableGap(Exception):
    """A (state, observation) pair the run table lacks: a bug, never ignored."""


def state_of(run: CurrentRun) -> ActiveState:
    return "promoting" if run.stage == "serve" else "running"


def row(state: ActiveState, seen: Seen) -> Row:
    if (state, seen) in RUN_TABLE:
        return RUN_TABLE[(state, seen)]
    why = IMPOSSIBLE.get((state, seen), "no row")
    raise TableGap(f"run table: ({state}, {seen}) - {why}")


def _outcome(seen: Observations, kind: Done, run: str) -> tuple[bool, str] | None:
    """(temporary, message) of the last failed intent of ``kind`` for ``run``, if any."""
    for outcome in reversed(seen.outcomes):
        if outcome.kind == kind and outcome.run == run:
            return None if outcome.ok else (outcome.temporary, outcome.message)
    return None


def rejudge(view: RunView, serving: ServingRecord | None) -> str | None:
    """Why an exported model no longer passes, judged against a model that started serving
    after its gate was judged; None when it still passes or nothing changed."""
    record = view.record
    if record is None or record.gate is None or serving is None:
        return None
    if record.gate.baseline_version == serving.version:
        return None
    verdict = record.gate
    gate = view.gate or Gate(
        metric=verdict.metric,
        direction=verdict.direction,
        min=verdict.min,
        max=verdict.max,
        baseline=Baseline(
            compare_to="serving" if verdict.max_regression is not None else "none",
            max_regression=verdict.max_regression or 0.0,
        ),
    )
    again = judge(gate, record.metrics, serving.metrics, serving.version)
    return None if again.passed else again.reason


def classify(
    run: CurrentRun,
    view: RunView | None,
    seen: Observations,
    serving: ServingRecord | None,
    cancel: str | None,
    rollout: RolloutState | None = None,
) -> tuple[Seen, str | None]:
    """The observations about one active run as the table's vocabulary, with a reason where
    the engine's record does not carry one. ``cancel`` says why the run must stop, if so."""
    if cancel is not None:
        return Seen.CANCELLED, cancel
    if view is not None and not view.reachable:
        return Seen.UNREACHABLE, view.problem or "the engine did not answer"
    failed_submit = _outcome(seen, Done.SUBMIT, run.id)
    record = view.record if view is not None else None
    if record is None:
        if failed_submit is not None:
            temporary, message = failed_submit
            return (Seen.SUBMIT_RETRY if temporary else Seen.SUBMIT_FAILED), message
        if run.attempt < MAX_ATTEMPTS:
            return Seen.LOST, None
        return Seen.LOST_AGAIN, "the run was lost twice (its process ended without a result)"
    model = record.model
    served = seen.serving.ref if seen.serving is not None else None
    if rollout is not None and rollout.run == run.id and record.result == "exported":
        ending = ROLLOUT_ENDS.get(rollout.phase)
        reports = (
            served is not None
            and model is not None
            and ((served.version, served.sha256) == (model.version, model.sha256))
        )
        if ending is Seen.ROLLED_OUT and not reports:
            return Seen.ROLLING, None  # promoted, and not yet served by the stable server
        return (ending, rollout.reason) if ending is not None else (Seen.ROLLING, None)
    if (
        record.result in ("exported", "promoted")
        and model is not None
        and served is not None
        and (served.version, served.sha256) == (model.version, model.sha256)
    ):
        return Seen.SERVED, None
    if record.result == "running":
        return Seen.PROGRESS, None
    if record.result == "rejected":
        return Seen.REJECTED, None
    if record.result == "failed":
        return Seen.FAILED, None
    if record.result == "cancelled":
        return Seen.ENGINE_CANCELLED, record.reason or "cancelled in the engine"
    if model is None:
        return Seen.FAILED, "the run ended without a model"
    failed_serve = _outcome(seen, Done.PROMOTE, run.id) if state_of(run) == "promoting" else None
    if failed_serve is not None:
        temporary, message = failed_serve
        return (Seen.SERVE_RETRY if temporary else Seen.SERVE_FAILED), message
    assert view is not None
    superseded = rejudge(view, serving)
    if superseded is not None:
        return Seen.SUPERSEDED, f"superseded: {superseded}"
    return Seen.EXPORTED, None


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def final_record(
    run: CurrentRun,
    result: FinalResult,
    seen: Seen,
    record: RunRecord | None,
    now: dt.datetime,
    reason: str | None,
) -> RunRecord:
    """The run's record as it ends: the engine's, with the loop's decision on top."""
    base = record or RunRecord(id=run.id, trigger=run.trigger, started_at=run.started_at)
    why = base.reason
    if seen in (Seen.SERVED, Seen.ROLLED_OUT):
        why = base.gate.reason if base.gate else base.reason
        if seen == Seen.ROLLED_OUT and reason:
            why = f"{why}; rollout: {reason}" if why else f"rollout: {reason}"
    elif seen in (Seen.ROLLED_BACK, Seen.ROLLOUT_FAILED):
        why = f"rollout: {reason}"
    elif seen == Seen.SERVE_FAILED:
        why = f"serving: {reason}"
    elif reason is not None:
        why = reason
    stage = "done" if result == "promoted" else base.stage
    if seen in (Seen.SERVE_FAILED, Seen.CANCELLED) and run.stage == "serve":
        stage = "serve"
    return base.model_copy(
        update={
            "id": run.id,
            "trigger": run.trigger,
            "result": result,
            "stage": stage,
            "reason": why,
            "started_at": base.started_at or run.started_at,
            "finished_at": base.finished_at
            if base.finished_at and seen != Seen.SERVED
            # The loop's own decision ends it now.
            else iso(now),
            "children": {**run.children, **base.children},
        }
    )


def message(run: CurrentRun, seen: Seen, record: RunRecord | None, reason: str | None) -> str:
    if seen in (Seen.SERVED, Seen.ROLLED_OUT) and record is not None and record.model is not None:
        gate = record.gate.reason if record.gate else ""
        return f"run {run.id}: version {record.model.version} now serving; {gate}".strip("; ")
    if seen == Seen.LOST:
        return f"run {run.id} lost its process; retrying it (attempt {run.attempt + 1})"
    text = reason or (record.reason if record else None) or seen.value
    return f"run {run.id}: {text}"
