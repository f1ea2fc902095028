"""How a promoted model reaches its users (mlcd.domain.delivery): served at once or rolled out,
and the replayed traffic a rollout's analyses need — decided from what runs now, so a process
that restarts mid-rollout starts it again."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from test_decide import MODEL, NOW, OLD, PROMOTING, seen, serving_record, spec, view
from test_rollout import TARGETS

from mlcd.domain import delivery
from mlcd.domain import rollout as ro
from mlcd.domain.intents import Promote, Replay
from mlcd.domain.observations import Observations, RolloutView

ROLLOUT = {"steps": [50, 100], "interval": "10s", "metrics": [{"name": "success-rate", "min": 1}]}


def observed(replaying: bool, traffic: bool = True, **router: Any) -> Observations:
    rollout = {**ROLLOUT, **({"traffic": {"rate": 20}} if traffic else {})}
    fields = {
        "canary_weight": 50,
        "mirror": False,
        "candidate_ready": True,
        "candidate_version": MODEL.version,
        "stable_version": OLD.version,
        **router,
    }
    return seen(
        pipeline=view(spec=spec(serving={"inferenceService": "digits", "rollout": rollout})),
        rollout=RolloutView(ro.RouterView(**fields), TARGETS, replaying=replaying),
    )


def state(phase: str, **changes: Any) -> ro.RolloutState:
    fields: dict[str, Any] = {
        "phase": phase,
        "candidate": MODEL.version,
        "stable": OLD.version,
        "run": PROMOTING.id,
        "step": 1,
        "canary_weight": 50,
        "started_at": ro.iso(NOW),
        "step_started_at": ro.iso(NOW),
        "last_analysis_at": ro.iso(NOW),
    }
    fields.update(changes)
    return ro.RolloutState(**fields)


def replays(intents: list[Any]) -> list[float | None]:
    return [i.rate for i in intents if isinstance(i, Replay)]


def test_the_first_model_is_served_at_once_and_a_later_one_rolled_out_with_traffic():
    first, intents = delivery.begin(observed(False), PROMOTING, MODEL, {}, None)
    assert first is None and [type(i) for i in intents] == [Promote]
    started, intents = delivery.begin(observed(False), PROMOTING, MODEL, {}, serving_record())
    assert started is not None and started.phase == "Initializing"
    assert replays(intents) == [20]


@pytest.mark.parametrize(
    ("phase", "replaying", "traffic", "wanted"),
    [
        # Live (or held for a person): traffic runs; started again where it does not.
        ("Progressing", False, True, [20]),
        ("Progressing", True, True, []),
        ("Paused", False, True, [20]),
        ("Halted", True, True, []),
        # Ended: stopped where it still runs.
        ("Promoted", True, True, [None]),
        ("RolledBack", True, True, [None]),
        ("RolledBack", False, True, []),
        # No traffic asked for: none started, a leftover stopped.
        ("Progressing", False, False, []),
        ("Progressing", True, False, [None]),
    ],
)
def test_replayed_traffic_follows_what_runs_now(
    phase: str, replaying: bool, traffic: bool, wanted: list[float | None]
):
    controls = {"pause": True} if phase == "Paused" else {}
    seen_ = observed(replaying, traffic)
    if controls:
        spec_ = seen_.pipeline.spec
        assert spec_ is not None
        rollout = spec_.serving.rollout.model_copy(update=controls)
        serving = spec_.serving.model_copy(update={"rollout": rollout})
        pipeline = dataclasses.replace(
            seen_.pipeline, spec=spec_.model_copy(update={"serving": serving})
        )
        seen_ = dataclasses.replace(seen_, pipeline=pipeline)
    resume = {"resume_phase": "Progressing"} if phase in ("Paused", "Halted") else {}
    ended = phase in ("Promoted", "RolledBack")
    routes = {"canary_weight": 0, "candidate_version": None} if ended else {}
    if ended:
        seen_ = dataclasses.replace(
            seen_,
            rollout=RolloutView(
                dataclasses.replace(seen_.rollout.router, **routes),  # type: ignore[union-attr]
                TARGETS,
                replaying=replaying,
            ),
        )
    current = state(phase, canary_weight=0 if ended else 50, **resume)
    new, intents = delivery.step(current, seen_)
    assert new.phase == phase, new.reason
    assert replays(intents) == wanted


def test_a_rollout_that_ends_stops_the_traffic_in_the_same_pass():
    # The last step's analysis passes: promoted, and the replay stops.
    last = state("Progressing", step=2, canary_weight=100, last_analysis_at=None)
    seen_ = observed(True, canary_weight=100)
    queries = ro.analysis_queries(last, seen_.pipeline.spec.serving.rollout, TARGETS)  # type: ignore[union-attr]
    results = {q.query: ro.QueryResult(1.0 if q.query == "s" else 100.0) for q in queries}
    seen_ = dataclasses.replace(
        seen_,
        rollout=dataclasses.replace(seen_.rollout, results=results),  # type: ignore[arg-type]
    )
    new, intents = delivery.step(last, seen_)
    assert new.phase == "Promoted", new.reason
    assert replays(intents) == [None]
