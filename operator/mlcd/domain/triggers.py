"""What starts a run, as tables: the schedule's deadline, the trigger under the concurrency
policy, and the operator's capacity."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from mlcd.domain import schedule
from mlcd.domain.observations import Observations
from mlcd.domain.rollout import DegradationWatch, watch_degradation
from mlcd.domain.status import ModelPipelineStatus
from mlcd.domain.versions import run_id

TriggerKind = Literal["schedule", "new-data", "manual", "degradation"]
Policy = Literal["Allow", "Forbid", "Replace"]
Outcome = Literal["start", "skip", "defer", "replace"]
Final = Literal["start", "skip", "defer", "replace", "wait"]
Deadline = Literal["nothing-due", "due", "missed"]

#: (a scheduled time is due, it is past startingDeadlineSeconds) -> what happens to it.
SCHEDULE_TABLE: dict[tuple[bool, bool], Deadline] = {
    (False, False): "nothing-due",
    (False, True): "nothing-due",  # nothing due is never late
    (True, False): "due",
    (True, True): "missed",  # recorded as handled, an Event says so, nothing starts
}

#: (trigger, a run of this pipeline is active, concurrencyPolicy) -> outcome, as CronJob.
TRIGGER_TABLE: dict[tuple[TriggerKind, bool, Policy], Outcome] = {
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
    # The serving model degraded: one run at a time, whatever the policy (the trigger does not
    # fire while a run is active; were it due then, it is not kept).
    ("degradation", False, "Allow"): "start",
    ("degradation", False, "Forbid"): "start",
    ("degradation", False, "Replace"): "start",
    ("degradation", True, "Allow"): "skip",
    ("degradation", True, "Forbid"): "skip",
    ("degradation", True, "Replace"): "skip",
}

#: (outcome, the operator has room for it) -> what is done. Replacing frees the slots of the
#: runs it cancels; a trigger that finds no room waits (it is not consumed) and starts when a
#: slot frees.
CAPACITY_TABLE: dict[tuple[Outcome, bool], Final] = {
    ("start", True): "start",
    ("start", False): "wait",
    ("replace", True): "replace",
    ("replace", False): "wait",
    ("skip", True): "skip",
    ("skip", False): "skip",
    ("defer", True): "defer",
    ("defer", False): "defer",
}


@dataclass(frozen=True)
class Wanted:
    """A trigger that asks for a run, and the status fields that record it as handled."""

    kind: TriggerKind
    run: str
    consumed: dict[str, Any] = field(default_factory=dict)


def trigger_run_id(name: str, kind: TriggerKind, key: str | dt.datetime) -> str:
    """Deterministic: the same trigger always names the same run, so a retried pass after a
    crash submits nothing twice."""
    if isinstance(key, dt.datetime):
        return run_id(name, kind, key)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{name}-{'d' if kind == 'new-data' else 'm'}{digest}"


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Triggers:
    wanted: list[Wanted]
    #: A scheduled time past its deadline: consumed, announced, nothing starts.
    missed: dt.datetime | None = None
    #: What the degradation trigger remembers after this look (None: not looked at, or it
    #: fired: then it is recorded with the run, in that Wanted's ``consumed``).
    degradation: DegradationWatch | None = None


def wanted(status: ModelPipelineStatus, seen: Observations) -> Triggers:
    """The triggers that ask for a run now, in the order they are served: on demand, new
    data, schedule."""
    pipeline = seen.pipeline
    spec = pipeline.spec
    assert spec is not None
    out: list[Wanted] = []
    missed = None
    if pipeline.trigger and pipeline.trigger != status.handled_trigger:
        run = trigger_run_id(pipeline.name, "manual", pipeline.trigger)
        out.append(Wanted("manual", run, {"handled_trigger": pipeline.trigger}))
    clocked = pipeline.scheduling and not spec.suspend
    version = seen.dataset.version if seen.dataset is not None else None
    if clocked and spec.triggers.new_data and version and version != status.dataset_version:
        run = trigger_run_id(pipeline.name, "new-data", version)
        out.append(Wanted("new-data", run, {"dataset_version": version}))
    if clocked and spec.schedule:
        last = parse_time(status.last_schedule_time) or pipeline.created
        due = schedule.due(
            spec.schedule, seen.now, last, spec.time_zone, spec.starting_deadline_seconds
        )
        what = SCHEDULE_TABLE[(due.time is not None, due.too_late)]
        if what == "missed":
            assert due.time is not None
            missed = due.time
        elif what == "due":
            assert due.time is not None
            run = trigger_run_id(pipeline.name, "schedule", due.time)
            out.append(Wanted("schedule", run, {"last_schedule_time": iso(due.time)}))
    watch = None
    trigger = spec.triggers.on_degradation
    if clocked and trigger is not None and seen.degradation is not None:
        watch, fire = watch_degradation(
            status.degradation or DegradationWatch(),
            trigger,
            seen.degradation.holds,
            bool(status.active_runs),
            seen.now,
        )
        if fire:
            # Recorded as fired with the run it starts: a run that waits for capacity keeps
            # the trigger due, instead of starting the cooldown with no run.
            run = trigger_run_id(pipeline.name, "degradation", seen.now)
            out.append(Wanted("degradation", run, {"degradation": watch}))
            watch = None
    return Triggers(out, missed, watch)


def outcome(kind: TriggerKind, active: bool, policy: Policy, room: bool) -> Final:
    return CAPACITY_TABLE[(TRIGGER_TABLE[(kind, active, policy)], room)]


def next_schedule(status: ModelPipelineStatus, seen: Observations) -> str | None:
    spec = seen.pipeline.spec
    if spec is None or not spec.schedule or spec.suspend or not seen.pipeline.scheduling:
        return None
    return iso(schedule.next_after(spec.schedule, seen.now, spec.time_zone))
