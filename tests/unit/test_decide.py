"""The decide step: its tables are complete, and each row does what it says — no processes,
no I/O, only status + observations in and status + intents out."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any, get_args

import pytest

from mlcd.domain import triggers
from mlcd.domain.decide import DELETION_TABLE, decide
from mlcd.domain.intents import (
    Cancel,
    Finished,
    ForgetCredentials,
    Post,
    Promote,
    Started,
    StopServing,
    Submit,
)
from mlcd.domain.lifecycle import (
    IMPOSSIBLE,
    MAX_ATTEMPTS,
    RUN_TABLE,
    ActiveState,
    Seen,
    TableGap,
    classify,
    row,
)
from mlcd.domain.observations import (
    DatasetView,
    Done,
    Observations,
    Outcome,
    PipelineView,
    RunView,
    ServingView,
)
from mlcd.domain.records import (
    DataReport,
    GateCheck,
    GateVerdict,
    ModelRef,
    RunRecord,
    ServingRecord,
)
from mlcd.domain.spec import ModelPipelineSpec
from mlcd.domain.status import CurrentRun, ModelPipelineStatus, RunSummary

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
CREATED = NOW - dt.timedelta(days=1)
MODEL = ModelRef(uri="file:///m/digits/2", version="2", sha256="a" * 64)
OLD = ModelRef(uri="file:///m/digits/1", version="1", sha256="b" * 64)
RUN = CurrentRun(id="digits-m1", trigger="manual", started_at="2026-11-23T11:00:00Z")
PROMOTING = RUN.model_copy(update={"stage": "serve"})


def spec(**changes: Any) -> ModelPipelineSpec:
    base: dict[str, Any] = {
        "dataset": {"uri": "/d.npz", "schema": {"featureShape": [1], "numClasses": 2}},
        "trainer": {"command": ["t"]},
        "gate": {"metric": "accuracy", "min": 0.9},
        "serving": {"inferenceService": "digits"},
    }
    base.update(changes)
    return ModelPipelineSpec.model_validate(base)


def view(**changes: Any) -> PipelineView:
    fields: dict[str, Any] = {
        "namespace": "team-a",
        "name": "digits",
        "uid": "u-1",
        "created": CREATED,
        "spec": spec(),
        "generation": 3,
        "default_artifacts": "/state/models/team-a",
    }
    fields.update(changes)
    return PipelineView(**fields)


def seen(**changes: Any) -> Observations:
    fields: dict[str, Any] = {"now": NOW, "pipeline": view()}
    fields.update(changes)
    return Observations(**fields)


def record(
    result: str, stage: str = "train", model: ModelRef | None = None, **kw: Any
) -> RunRecord:
    gate = GateVerdict(
        passed=result not in ("rejected",),
        metric="accuracy",
        value=0.95,
        min=0.9,
        baseline_version=kw.pop("baseline_version", None),
        max_regression=0.0,
        reason="accuracy 0.95 >= min 0.9",
    )
    return RunRecord(
        id=RUN.id,
        trigger="manual",
        result=result,
        stage=stage,
        model=model,
        metrics=kw.pop("metrics", {"accuracy": 0.95}),
        gate=gate,
        reason=kw.pop("reason", f"{result} reason"),
        **kw,
    )


def serving_record(ref: ModelRef = OLD, accuracy: float = 0.93) -> ServingRecord:
    return ServingRecord(
        model="digits",
        version=ref.version,
        uri=ref.uri,
        sha256=ref.sha256,
        metrics={"accuracy": accuracy},
    )


def kinds(intents: list) -> list[type]:
    return [type(i) for i in intents]


def reasons(intents: list) -> list[str]:
    return [i.notice.reason for i in intents if isinstance(i, Post)]


# -- the run table -------------------------------------------------------------------------


def test_every_state_and_observation_is_a_row_or_explicitly_impossible():
    states: tuple[ActiveState, ...] = get_args(ActiveState)
    for state, what in itertools.product(states, Seen):
        in_table, impossible = (state, what) in RUN_TABLE, (state, what) in IMPOSSIBLE
        assert in_table != impossible, f"({state}, {what}): a row xor impossible"
        if impossible:
            with pytest.raises(TableGap, match=IMPOSSIBLE[(state, what)]):
                row(state, what)


def test_nothing_serves_without_the_server_reporting_it():
    serving = [key for key, (_, acts) in RUN_TABLE.items() if "serve" in acts]
    assert {what for _, what in serving} == {Seen.SERVED, Seen.ROLLED_OUT}


CLASSIFY = [
    # (run, engine view, other observations, expected)
    (RUN, RunView(record("running", "tune")), {}, Seen.PROGRESS),
    (RUN, RunView(record("exported", "serve", MODEL)), {}, Seen.EXPORTED),
    (RUN, RunView(record("rejected", "gate")), {}, Seen.REJECTED),
    (RUN, RunView(record("failed")), {}, Seen.FAILED),
    (RUN, RunView(record("cancelled")), {}, Seen.ENGINE_CANCELLED),
    (RUN, RunView(None), {}, Seen.LOST),
    (RUN.model_copy(update={"attempt": MAX_ATTEMPTS}), RunView(None), {}, Seen.LOST_AGAIN),
    (RUN, RunView(None, reachable=False, problem="engine down"), {}, Seen.UNREACHABLE),
    (
        RUN,
        RunView(None),
        {"outcomes": (Outcome(Done.SUBMIT, RUN.id, False, True, "KFP down"),)},
        Seen.SUBMIT_RETRY,
    ),
    (
        RUN,
        RunView(None),
        {"outcomes": (Outcome(Done.SUBMIT, RUN.id, False, False, "refused"),)},
        Seen.SUBMIT_FAILED,
    ),
    (
        PROMOTING,
        RunView(record("exported", "serve", MODEL)),
        {"serving": ServingView(True, MODEL, "http://s")},
        Seen.SERVED,
    ),
    (
        PROMOTING,
        RunView(record("exported", "serve", MODEL)),
        {"outcomes": (Outcome(Done.PROMOTE, RUN.id, False, True, "store down"),)},
        Seen.SERVE_RETRY,
    ),
    (
        PROMOTING,
        RunView(record("exported", "serve", MODEL)),
        {"outcomes": (Outcome(Done.PROMOTE, RUN.id, False, False, "sha256 mismatch"),)},
        Seen.SERVE_FAILED,
    ),
    (
        # A later outcome of the same intent wins: the retry succeeded.
        PROMOTING,
        RunView(record("exported", "serve", MODEL)),
        {
            "outcomes": (
                Outcome(Done.PROMOTE, RUN.id, False, True, "store down"),
                Outcome(Done.PROMOTE, RUN.id, True),
            )
        },
        Seen.EXPORTED,
    ),
]


@pytest.mark.parametrize(("run", "engine", "extra", "expected"), CLASSIFY)
def test_classify(run, engine, extra, expected):
    what, _ = classify(run, engine, seen(**extra), None, None)
    assert what == expected


def test_a_stop_outranks_whatever_the_engine_says():
    what, reason = classify(
        RUN, RunView(record("running")), seen(), None, "the pipeline was deleted"
    )
    assert (what, reason) == (Seen.CANCELLED, "the pipeline was deleted")


def test_an_export_is_judged_again_against_a_model_that_started_serving_since():
    exported = RunView(record("exported", "serve", MODEL, baseline_version=None))
    better = serving_record(OLD, accuracy=0.99)
    what, reason = classify(RUN, exported, seen(), better, None)
    assert what == Seen.SUPERSEDED and "regression" in reason
    worse = serving_record(OLD, accuracy=0.5)
    assert classify(RUN, exported, seen(), worse, None)[0] == Seen.EXPORTED
    judged = RunView(record("exported", "serve", MODEL, baseline_version="1"))
    assert classify(RUN, judged, seen(), better, None)[0] == Seen.EXPORTED


# -- passes of the decide step ----------------------------------------------------------------


def test_progress_updates_the_stage_only():
    status = ModelPipelineStatus(active_runs=[RUN])
    decision = decide(status, seen(runs={RUN.id: RunView(record("running", "tune"))}))
    assert decision.status.active_runs[0].stage == "tune"
    assert decision.status.runs == [] and decision.intents == []


def test_an_export_asks_for_promotion_and_the_server_reporting_it_records_it():
    status = ModelPipelineStatus(active_runs=[RUN])
    exported = RunView(record("exported", "serve", MODEL))
    first = decide(status, seen(runs={RUN.id: exported}))
    assert kinds(first.intents) == [Promote]
    assert first.status.active_runs[0].stage == "serve" and first.status.serving is None
    second = decide(
        first.status,
        seen(
            runs={RUN.id: exported},
            serving=ServingView(True, MODEL, "http://127.0.0.1:8080"),
            outcomes=(Outcome(Done.PROMOTE, RUN.id, True),),
        ),
    )
    done = second.status
    assert done.active_runs == []
    assert done.serving is not None and done.serving.version == "2"
    assert done.serving.url == "http://127.0.0.1:8080" and done.serving.run == RUN.id
    assert done.runs[-1].result == "promoted" and done.runs[-1].stage == "done"
    assert (
        done.runs[-1].record == "/state/models/team-a/digits/runs/team-a/digits-u-1/digits-m1.json"
    )
    assert reasons(second.intents) == ["Promoted"]
    assert ForgetCredentials not in kinds(second.intents)  # no credential folder observed
    assert done.phase == "Ready"
    ready = next(c for c in done.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("True", "Serving")


def test_a_store_outage_during_promotion_is_retried_never_a_failed_run():
    status = ModelPipelineStatus(active_runs=[PROMOTING], serving=serving_record())
    exported = RunView(record("exported", "serve", MODEL, baseline_version="1"))
    outage = (Outcome(Done.PROMOTE, RUN.id, False, True, "object store unreachable"),)
    up = ServingView(True, OLD, "http://s")
    first = decide(status, seen(runs={RUN.id: exported}, outcomes=outage, serving=up))
    assert first.status.active_runs[0].message == "object store unreachable"
    assert kinds(first.intents) == [Promote, Post]
    assert reasons(first.intents) == ["PromotionRetrying"]
    again = decide(first.status, seen(runs={RUN.id: exported}, outcomes=outage, serving=up))
    assert reasons(again.intents) == []  # the same problem is announced once
    assert again.status.serving == status.serving and again.status.runs == []


def test_a_promotion_refused_for_good_keeps_the_old_model_and_records_exported():
    old = serving_record()
    status = ModelPipelineStatus(active_runs=[PROMOTING], serving=old)
    exported = RunView(record("exported", "serve", MODEL, baseline_version="1"))
    refused = (Outcome(Done.PROMOTE, RUN.id, False, False, "sha256 mismatch"),)
    up = ServingView(True, OLD, "http://s")
    decision = decide(status, seen(runs={RUN.id: exported}, outcomes=refused, serving=up))
    assert decision.status.serving == old
    last = decision.status.runs[-1]
    assert (last.result, last.reason) == ("exported", "serving: sha256 mismatch")
    assert reasons(decision.intents) == ["PromotionFailed"]


def test_a_lost_run_is_retried_once_with_the_same_id_then_failed():
    status = ModelPipelineStatus(active_runs=[RUN])
    first = decide(status, seen(runs={RUN.id: RunView(None)}))
    [submit] = [i for i in first.intents if isinstance(i, Submit)]
    assert submit.run.id == RUN.id and submit.run.attempt == 2
    assert first.status.active_runs[0].attempt == 2
    again = decide(first.status, seen(runs={RUN.id: RunView(None)}))
    assert again.status.active_runs == [] and Submit not in kinds(again.intents)
    assert again.status.runs[-1].result == "failed"
    assert "lost twice" in again.status.runs[-1].reason
    assert again.status.runs[-1].attempt == 2


def test_an_engine_that_does_not_answer_changes_nothing_but_says_so():
    status = ModelPipelineStatus(active_runs=[RUN])
    decision = decide(status, seen(runs={RUN.id: RunView(None, reachable=False, problem="down")}))
    assert decision.status.active_runs[0].attempt == 1
    assert decision.status.active_runs[0].message == "down"
    assert kinds(decision.intents) == [Post]


def test_deleting_cancels_runs_then_waits_for_the_engine_and_the_server():
    status = ModelPipelineStatus(active_runs=[RUN], serving=serving_record())
    deleting = view(deleting=True)
    first = decide(
        status,
        seen(
            pipeline=deleting,
            runs={RUN.id: RunView(record("running"))},
            live_runs=(RUN.id,),
            serving_running=True,
            credentials=(RUN.id,),
        ),
    )
    assert first.status.runs[-1].result == "cancelled"
    assert first.status.runs[-1].reason == "the pipeline was deleted"
    assert Cancel in kinds(first.intents) and StopServing in kinds(first.intents)
    assert ForgetCredentials in kinds(first.intents)
    assert not first.cleaned_up and first.status.phase == "Deleting"
    deleting_condition = next(c for c in first.status.conditions if c.type == "Deleting")
    assert (
        "digits-m1" in deleting_condition.message and "model server" in deleting_condition.message
    )
    done = decide(first.status, seen(pipeline=deleting))
    assert done.cleaned_up and kinds(done.intents) == []


def test_deletion_table_is_complete_and_only_done_when_nothing_runs():
    assert set(DELETION_TABLE) == set(itertools.product((False, True), repeat=2))
    assert [k for k, (_, done) in DELETION_TABLE.items() if done] == [(False, False)]


def test_an_interrupt_cancels_the_run_and_starts_nothing():
    status = ModelPipelineStatus(active_runs=[RUN])
    decision = decide(
        status,
        seen(
            pipeline=view(trigger="again"),
            runs={RUN.id: RunView(record("running"))},
            interrupted=True,
        ),
    )
    assert decision.status.active_runs == []
    assert decision.status.runs[-1].result == "cancelled"
    assert Submit not in kinds(decision.intents)


def test_credentials_of_runs_no_longer_active_are_forgotten():
    status = ModelPipelineStatus(active_runs=[RUN])
    decision = decide(
        status,
        seen(runs={RUN.id: RunView(record("running"))}, credentials=(RUN.id, "digits-old")),
    )
    assert [i.run for i in decision.intents if isinstance(i, ForgetCredentials)] == ["digits-old"]


def test_history_is_bounded_by_history_limit():
    runs = [RunSummary(id=f"r{i}", result="failed") for i in range(10)]
    status = ModelPipelineStatus(active_runs=[RUN], runs=runs)
    decision = decide(status, seen(runs={RUN.id: RunView(record("failed"))}))
    assert len(decision.status.runs) == 10
    assert decision.status.runs[-1].id == RUN.id and decision.status.runs[0].id == "r1"


def test_the_status_stays_small_with_the_largest_records():
    """historyLimit (at most 100) full of the largest records a run can produce stays far
    below the API server's 1.5 MiB object limit: the record's bulk stays in the repository."""
    huge = record(
        "failed",
        reason="Traceback\n" + "x" * 200_000,
        params={f"p{i}": "v" * 60 for i in range(100)},
        metrics={f"m{i}": 0.5 for i in range(100)},
        data=DataReport(
            ok=False,
            samples=10**9,
            class_counts=list(range(10_000)),
            problems=["bad " * 250] * 32,
            drift={"feature-psi": 1.0, "label-psi": 1.0},
        ),
        timings={s: 1.0 for s in ("validate", "tune", "train")},
    )
    huge = huge.model_copy(
        update={
            "gate": huge.gate.model_copy(
                update={"checks": [GateCheck(name="min", passed=False, detail="y" * 1024)] * 8}
            )
        }
    )
    status = ModelPipelineStatus()
    limit_spec = spec(historyLimit=100)
    for n in range(100):
        run = RUN.model_copy(update={"id": f"digits-m{n}"})
        status = status.model_copy(update={"active_runs": [run]})
        status = decide(
            status,
            seen(
                pipeline=view(spec=limit_spec),
                runs={run.id: RunView(huge.model_copy(update={"id": run.id}))},
            ),
        ).status
    assert len(status.runs) == 100
    size = len(json.dumps(status.model_dump(by_alias=True, mode="json")))
    assert size < 512 * 1024, size


# -- triggers, policies, capacity -----------------------------------------------------------------


def test_trigger_and_capacity_tables_are_complete():
    kinds_ = get_args(triggers.TriggerKind)
    policies = get_args(triggers.Policy)
    assert set(triggers.TRIGGER_TABLE) == set(itertools.product(kinds_, (False, True), policies))
    outcomes = set(triggers.TRIGGER_TABLE.values())
    assert set(triggers.CAPACITY_TABLE) == set(itertools.product(outcomes, (False, True)))
    assert set(triggers.SCHEDULE_TABLE) == set(itertools.product((False, True), repeat=2))


def test_an_on_demand_trigger_starts_one_run_with_a_deterministic_id():
    decision = decide(ModelPipelineStatus(), seen(pipeline=view(trigger="2026-11-23T12:00")))
    [run] = decision.status.active_runs
    assert run.id == triggers.trigger_run_id("digits", "manual", "2026-11-23T12:00")
    assert kinds(decision.intents) == [Submit, Started, Post]
    assert decision.status.handled_trigger == "2026-11-23T12:00"
    again = decide(
        decision.status,
        seen(pipeline=view(trigger="2026-11-23T12:00"), runs={run.id: RunView(record("running"))}),
    )
    assert Submit not in kinds(again.intents)


def test_a_trigger_already_started_before_a_crash_is_only_consumed():
    run_id = triggers.trigger_run_id("digits", "manual", "t1")
    status = ModelPipelineStatus(runs=[RunSummary(id=run_id, result="promoted")])
    decision = decide(status, seen(pipeline=view(trigger="t1")))
    assert decision.status.handled_trigger == "t1" and decision.status.active_runs == []
    assert Submit not in kinds(decision.intents)


@pytest.mark.parametrize(
    ("policy", "active_after", "intents"),
    [
        ("Forbid", ["digits-m1"], []),  # waits its turn: not consumed
        ("Allow", ["digits-m1", "new"], [Submit, Started, Post]),
        ("Replace", ["new"], [Cancel, Finished, Post, Submit, Started, Post]),
    ],
)
def test_a_trigger_while_a_run_is_active(policy, active_after, intents):
    status = ModelPipelineStatus(active_runs=[RUN])
    decision = decide(
        status,
        seen(
            pipeline=view(spec=spec(concurrencyPolicy=policy), trigger="t2"),
            runs={RUN.id: RunView(record("running"))},
        ),
    )
    new = triggers.trigger_run_id("digits", "manual", "t2")
    assert [r.id for r in decision.status.active_runs] == [
        new if r == "new" else r for r in active_after
    ]
    assert kinds(decision.intents) == intents
    if policy == "Forbid":
        assert decision.status.handled_trigger is None
    if policy == "Replace":
        assert decision.status.runs[-1].result == "cancelled"
        assert decision.status.runs[-1].reason == f"replaced by run {new}"


def test_a_schedule_under_forbid_skips_that_time():
    hourly = spec(schedule="0 * * * *", concurrencyPolicy="Forbid")
    status = ModelPipelineStatus(active_runs=[RUN], last_schedule_time="2026-11-23T11:00:00Z")
    decision = decide(
        status, seen(pipeline=view(spec=hourly), runs={RUN.id: RunView(record("running"))})
    )
    assert decision.status.last_schedule_time == "2026-11-23T12:00:00Z"
    assert reasons(decision.intents) == ["RunSkipped"]
    assert decision.status.next_schedule_time == "2026-11-23T13:00:00Z"


def test_a_scheduled_time_past_its_deadline_is_missed_and_announced():
    late = spec(schedule="0 * * * *", startingDeadlineSeconds=60)
    status = ModelPipelineStatus(last_schedule_time="2026-11-23T11:00:00Z")
    decision = decide(status, seen(now=NOW + dt.timedelta(minutes=5), pipeline=view(spec=late)))
    assert decision.status.active_runs == []
    assert decision.status.last_schedule_time == "2026-11-23T12:00:00Z"
    assert reasons(decision.intents) == ["MissedSchedule"]


def test_new_data_starts_a_run_and_records_the_version():
    watched = spec(triggers={"newData": True})
    decision = decide(
        ModelPipelineStatus(dataset_version="v1"),
        seen(pipeline=view(spec=watched), dataset=DatasetView(version="v2")),
    )
    [run] = decision.status.active_runs
    assert run.trigger == "new-data" and decision.status.dataset_version == "v2"
    same = decide(
        ModelPipelineStatus(dataset_version="v2"),
        seen(pipeline=view(spec=watched), dataset=DatasetView(version="v2")),
    )
    assert same.status.active_runs == []


def test_an_unreadable_dataset_degrades_once():
    watched = spec(triggers={"newData": True})
    first = decide(
        ModelPipelineStatus(),
        seen(pipeline=view(spec=watched), dataset=DatasetView(error="spec.dataset.uri: gone")),
    )
    degraded = next(c for c in first.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "DatasetUnavailable")
    assert reasons(first.intents) == ["DatasetUnavailable"]
    again = decide(
        first.status,
        seen(pipeline=view(spec=watched), dataset=DatasetView(error="spec.dataset.uri: gone")),
    )
    assert reasons(again.intents) == []


def test_without_capacity_a_trigger_waits_and_starts_when_a_slot_frees():
    full = decide(
        ModelPipelineStatus(),
        seen(pipeline=view(trigger="t"), free_slots=0, max_active_runs=2),
    )
    assert full.status.active_runs == [] and full.status.handled_trigger is None
    training = next(c for c in full.status.conditions if c.type == "Training")
    assert (training.status, training.reason) == ("False", "WaitingForCapacity")
    assert "2 runs at most" in training.message
    assert reasons(full.intents) == ["WaitingForCapacity"]
    freed = decide(full.status, seen(pipeline=view(trigger="t"), free_slots=1))
    assert len(freed.status.active_runs) == 1


def test_a_replace_counts_the_slot_of_the_run_it_cancels():
    status = ModelPipelineStatus(active_runs=[RUN])
    decision = decide(
        status,
        seen(
            pipeline=view(spec=spec(concurrencyPolicy="Replace"), trigger="t"),
            runs={RUN.id: RunView(record("running"))},
            free_slots=1,  # this pipeline's own run holds it
        ),
    )
    assert [r.trigger for r in decision.status.active_runs] == ["manual"]
    assert decision.status.active_runs[0].id != RUN.id


def test_an_invalid_spec_starts_nothing_and_is_reported_once():
    first = decide(
        ModelPipelineStatus(), seen(pipeline=view(spec=None, problem="spec.x: bad", trigger="t"))
    )
    assert first.status.phase == "Invalid" and first.status.active_runs == []
    assert reasons(first.intents) == ["InvalidSpec"]
    again = decide(first.status, seen(pipeline=view(spec=None, problem="spec.x: bad", trigger="t")))
    assert reasons(again.intents) == []


# -- conditions from what the server reports -----------------------------------------------------


@pytest.mark.parametrize(
    ("report", "status_", "reason"),
    [
        (ServingView(True, OLD, "http://s"), "True", "Serving"),
        (ServingView(False, reason="the model server is not running"), "False", "ServerNotReady"),
        (ServingView(True, MODEL, "http://s"), "False", "VersionMismatch"),
    ],
)
def test_ready_comes_from_what_the_server_reports(report, status_, reason):
    status = ModelPipelineStatus(serving=serving_record())
    decision = decide(status, seen(serving=report))
    ready = next(c for c in decision.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == (status_, reason)
    if status_ == "False":
        assert reasons(decision.intents) == [reason]
        again = decide(decision.status, seen(serving=report))
        assert reasons(again.intents) == []


def test_conditions_keep_their_transition_time_until_they_change():
    status = ModelPipelineStatus(serving=serving_record())
    up = ServingView(True, OLD, "http://s")
    first = decide(status, seen(serving=up)).status
    later = decide(first, seen(now=NOW + dt.timedelta(hours=1), serving=up)).status
    ready = [next(c for c in s.conditions if c.type == "Ready") for s in (first, later)]
    assert ready[0].last_transition_time == ready[1].last_transition_time
    down = decide(later, seen(now=NOW + dt.timedelta(hours=2), serving=ServingView(False))).status
    assert next(c for c in down.conditions if c.type == "Ready").last_transition_time != (
        ready[0].last_transition_time
    )
