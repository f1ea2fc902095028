"""The run lifecycle tables and what applying them does to a status."""

from __future__ import annotations

import datetime as dt

import pytest

from mlcd.domain import lifecycle
from mlcd.domain.lifecycle import (
    MAX_ATTEMPTS,
    RUN_TRANSITIONS,
    TRIGGER_OUTCOMES,
    Act,
    Effects,
    Seen,
)
from mlcd.domain.records import GateVerdict, ModelRef, RunRecord, ServingRecord
from mlcd.domain.status import CurrentRun, ModelPipelineStatus

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
MODEL = ModelRef(uri="file:///m/1", version="1", sha256="a" * 64)
RUN = CurrentRun(id="mnist-m1", trigger="manual", started_at="2026-11-23T11:00:00Z")


def record(result: str, stage: str = "train", model: ModelRef | None = None) -> RunRecord:
    gate = GateVerdict(
        passed=result != "rejected",
        metric="accuracy",
        value=0.98,
        reason="accuracy 0.98 >= min 0.97",
    )
    return RunRecord(
        id=RUN.id,
        trigger="manual",
        result=result,
        stage=stage,
        model=model,
        metrics={"accuracy": 0.98},
        gate=gate,
        reason=f"{result} reason",
    )


@pytest.mark.parametrize(
    ("run", "engine_view", "seen"),
    [
        (RUN, record("running", "train"), Seen.PROGRESS),
        (RUN, record("running", "serve", MODEL), Seen.EXPORTED),
        (RUN, record("rejected", "gate"), Seen.REJECTED),
        (RUN, record("failed", "train"), Seen.FAILED),
        (RUN, None, Seen.LOST),
        (RUN.model_copy(update={"attempt": MAX_ATTEMPTS}), None, Seen.LOST_AGAIN),
    ],
)
def test_classify(run, engine_view, seen):
    assert lifecycle.classify(run, engine_view) == seen


@pytest.mark.parametrize(
    ("state", "seen", "next_state", "acts"),
    [
        ("running", Seen.PROGRESS, "running", ()),
        ("running", Seen.EXPORTED, "promoting", (Act.PROMOTE,)),
        ("running", Seen.REJECTED, "rejected", (Act.FINISH, Act.WARN)),
        ("running", Seen.FAILED, "failed", (Act.FINISH, Act.WARN)),
        ("running", Seen.LOST, "running", (Act.RESUBMIT, Act.WARN)),
        ("running", Seen.LOST_AGAIN, "failed", (Act.FINISH, Act.WARN)),
        ("running", Seen.CANCELLED, "failed", (Act.CANCEL, Act.FINISH, Act.WARN)),
        ("promoting", Seen.EXPORTED, "promoting", (Act.PROMOTE,)),
        ("promoting", Seen.SERVED, "promoted", (Act.SERVE, Act.FINISH, Act.NOTE)),
        ("promoting", Seen.SERVE_FAILED, "failed", (Act.FINISH, Act.WARN)),
        ("promoting", Seen.SUPERSEDED, "rejected", (Act.FINISH, Act.WARN)),
    ],
)
def test_run_transitions(state, seen, next_state, acts):
    assert RUN_TRANSITIONS[(state, seen)] == (next_state, acts)


def test_no_transition_serves_without_a_promotion_step():
    # Serving is recorded only after SERVED, which only follows PROMOTE from an export.
    serving = [key for key, (_, acts) in RUN_TRANSITIONS.items() if Act.SERVE in acts]
    assert serving == [("promoting", Seen.SERVED)]


def _apply(status, run, seen, engine_view, **kw):
    effects = Effects()
    out = lifecycle.advance(status, run, seen, engine_view, NOW, 10, effects, **kw)
    return out, effects


def test_progress_updates_the_stage_only():
    status = ModelPipelineStatus(active_runs=[RUN])
    out, effects = _apply(status, RUN, Seen.PROGRESS, record("running", "tune"))
    assert out.active_runs[0].stage == "tune"
    assert out.runs == [] and effects.notices == []


def test_export_asks_for_promotion_and_served_records_it():
    status = ModelPipelineStatus(active_runs=[RUN])
    exported = record("running", "serve", MODEL)
    promoting, effects = _apply(status, RUN, Seen.EXPORTED, exported)
    assert effects.promote == [(RUN.id, MODEL)]
    assert promoting.active_runs[0].stage == "serve" and promoting.serving is None
    served = ServingRecord(
        model="mnist", version="1", uri=MODEL.uri, sha256=MODEL.sha256, url="http://x", run=RUN.id
    )
    done, effects = _apply(
        promoting, promoting.active_runs[0], Seen.SERVED, exported, serving=served
    )
    assert done.active_runs == []
    assert done.serving == served
    assert done.runs[-1].result == "promoted" and done.runs[-1].stage == "done"
    assert effects.notices[0].reason == "Promoted" and effects.notices[0].type == "Normal"
    assert effects.finished[0].result == "promoted"


def test_a_failed_promotion_keeps_the_old_serving():
    old = ServingRecord(model="mnist", version="0", uri="u", sha256="b" * 64, url="http://x")
    run = RUN.model_copy(update={"stage": "serve"})
    status = ModelPipelineStatus(active_runs=[run], serving=old)
    out, effects = _apply(
        status,
        run,
        Seen.SERVE_FAILED,
        record("running", "serve", MODEL),
        reason="model server refused it",
    )
    assert out.serving == old
    assert out.runs[-1].result == "failed"
    assert out.runs[-1].reason == "serving: model server refused it"
    assert effects.notices[0].type == "Warning"


def test_a_lost_run_is_retried_once_with_the_same_id():
    status = ModelPipelineStatus(active_runs=[RUN])
    out, effects = _apply(status, RUN, Seen.LOST, None)
    assert [r.id for r in effects.resubmit] == [RUN.id]
    assert out.active_runs[0].attempt == 2
    again, effects = _apply(out, out.active_runs[0], Seen.LOST_AGAIN, None)
    assert again.active_runs == [] and effects.resubmit == []
    assert again.runs[-1].result == "failed" and "lost twice" in again.runs[-1].reason


def test_history_is_bounded():
    runs = [RunRecord(id=f"r{i}", result="failed") for i in range(10)]
    status = ModelPipelineStatus(active_runs=[RUN], runs=runs)
    out, _ = _apply(status, RUN, Seen.FAILED, record("failed"))
    assert len(out.runs) == 10 and out.runs[-1].id == RUN.id and out.runs[0].id == "r1"


@pytest.mark.parametrize(
    ("kind", "active", "policy", "outcome"),
    [
        ("schedule", False, "Forbid", "start"),
        ("schedule", True, "Forbid", "skip"),
        ("schedule", True, "Replace", "replace"),
        ("schedule", True, "Allow", "start"),
        ("new-data", True, "Forbid", "defer"),
        ("new-data", True, "Replace", "replace"),
        ("manual", True, "Forbid", "defer"),
        ("manual", False, "Replace", "start"),
    ],
)
def test_trigger_outcomes(kind, active, policy, outcome):
    assert lifecycle.trigger(kind, active, policy) == outcome


def test_every_trigger_combination_has_an_outcome():
    for kind in ("schedule", "new-data", "manual"):
        for active in (True, False):
            for policy in ("Allow", "Forbid", "Replace"):
                assert (kind, active, policy) in TRIGGER_OUTCOMES


def test_run_ids_are_deterministic_per_trigger():
    at = dt.datetime(2026, 11, 23, 3, tzinfo=dt.UTC)
    assert lifecycle.trigger_run_id("m", "schedule", at) == "m-s20261123030000"
    assert lifecycle.trigger_run_id("m", "new-data", "version:abc") == (
        lifecycle.trigger_run_id("m", "new-data", "version:abc")
    )
    assert lifecycle.trigger_run_id("m", "new-data", "v1") != (
        lifecycle.trigger_run_id("m", "new-data", "v2")
    )
    assert lifecycle.trigger_run_id("m", "manual", "x").startswith("m-m")


@pytest.mark.parametrize(
    ("status", "suspend", "problem", "phase"),
    [
        (ModelPipelineStatus(), False, None, "Pending"),
        (ModelPipelineStatus(active_runs=[RUN]), False, None, "Running"),
        (ModelPipelineStatus(), True, None, "Suspended"),
        (ModelPipelineStatus(runs=[RunRecord(id="r", result="failed")]), False, None, "Failed"),
        (
            ModelPipelineStatus(serving=ServingRecord(model="m", version="1", uri="u", sha256="c")),
            False,
            None,
            "Ready",
        ),
        (ModelPipelineStatus(active_runs=[RUN]), False, "spec.x: bad", "Invalid"),
    ],
)
def test_phase(status, suspend, problem, phase):
    from mlcd.domain.spec import ModelPipelineSpec

    spec = ModelPipelineSpec.model_validate(
        {
            "suspend": suspend,
            "dataset": {"uri": "/d.npz", "schema": {"featureShape": [1], "numClasses": 2}},
            "trainer": {"command": ["t"]},
            "gate": {"metric": "accuracy"},
            "serving": {"inferenceService": "m"},
        }
    )
    assert lifecycle.phase(status, spec, problem) == phase


def test_conditions_keep_their_transition_time_until_they_change():
    serving = ServingRecord(model="m", version="1", uri="u", sha256="c" * 64, url="http://x")
    status = ModelPipelineStatus(serving=serving)
    first = lifecycle.conditions(status, None, 3, NOW)
    ready = next(c for c in first if c.type == "Ready")
    assert ready.status == "True" and ready.observed_generation == 3
    later = NOW + dt.timedelta(hours=1)
    again = lifecycle.conditions(status.model_copy(update={"conditions": first}), None, 3, later)
    assert next(c for c in again if c.type == "Ready").last_transition_time == (
        ready.last_transition_time
    )
    invalid = lifecycle.conditions(
        status.model_copy(update={"conditions": first}), "spec.gate.metric: bad", 4, later
    )
    spec_valid = next(c for c in invalid if c.type == "SpecValid")
    assert spec_valid.status == "False" and spec_valid.message == "spec.gate.metric: bad"
    assert spec_valid.last_transition_time != ready.last_transition_time


def test_waiting_and_blocked_show_in_the_conditions():
    status = ModelPipelineStatus()
    waiting = lifecycle.conditions(status, None, 1, NOW, waiting="manual run m-1 waits")
    training = next(c for c in waiting if c.type == "Training")
    assert (training.status, training.reason) == ("False", "WaitingForCapacity")
    blocked = lifecycle.conditions(status, None, 1, NOW, blocked="spec.dataset.uri: gone")
    degraded = next(c for c in blocked if c.type == "Degraded")
    assert (degraded.status, degraded.reason, degraded.message) == (
        "True",
        "DatasetUnavailable",
        "spec.dataset.uri: gone",
    )
