"""The rollout's transition table, and whole rollouts driven through it.

A rollout here is driven the way the control loop drives it: observe (the router's state, which
the intents of the last step changed; query results when an analysis is due), advance, carry out
the intents. The router is plain data the intents edit; the state goes through JSON between
steps, as it does through status.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest

from mlcd.domain.rollout import (
    IMPOSSIBLE,
    TRANSITIONS,
    Builtins,
    Controls,
    DeployCandidate,
    Observation,
    Phase,
    PostEvent,
    QueryResult,
    RecordAnalysis,
    RemoveCandidate,
    RolloutState,
    RouterView,
    Seen,
    ServeStable,
    SetMirror,
    SetWeights,
    Targets,
    advance,
    analysis_due,
    analysis_queries,
    start,
    transition,
)
from mlcd.domain.spec import Rollout

T0 = dt.datetime(2026, 1, 1, 3, 0, tzinfo=dt.UTC)
BUILTINS = Builtins(
    requests='requests{s="{{ canary }}"}[{{ interval }}]',
    success_rate='success{s="{{ canary }}"}[{{ interval }}]',
    latency_p99='p99{s="{{ canary }}"}[{{ interval }}]',
    shadow_requests='shadow_requests{s="{{ canary }}"}[{{ interval }}]',
    shadow_disagreement='disagreement{s="{{ canary }}"}[{{ interval }}]',
    shadow_latency_p99='shadow_p99{s="{{ canary }}"}[{{ interval }}]',
)
TARGETS = Targets(namespace="team-a", canary="cand", stable="stab", builtins=BUILTINS)


def test_every_pair_is_a_row_or_impossible():
    for phase in Phase:
        for seen in Seen:
            pair = (phase, seen)
            assert (pair in TRANSITIONS) != (pair in IMPOSSIBLE), pair


def test_an_impossible_pair_raises_with_its_reason():
    with pytest.raises(LookupError, match="analyses run only while"):
        transition(Phase.PROMOTED, Seen.PASSED)
    with pytest.raises(LookupError, match="no transition"):
        transition("Unknown", Seen.WAITING)  # type: ignore[arg-type]


def test_every_row_leads_somewhere_the_table_knows():
    for (_, _), (target, _) in TRANSITIONS.items():
        assert target in Phase


@dataclass
class World:
    """The router and servers as the intents leave them, and what Prometheus will answer."""

    stable: str | None = "1"
    candidate: str | None = None
    weight: int | None = 0
    mirror: bool = False
    ready: bool = True
    metrics: dict[str, float | None] = field(default_factory=dict)
    prometheus: bool = True
    controls: Controls = field(default_factory=Controls)
    log: list[Any] = field(default_factory=list)

    def view(self) -> RouterView:
        return RouterView(
            canary_weight=self.weight,
            mirror=self.mirror,
            candidate_ready=self.ready and self.candidate is not None,
            candidate_version=self.candidate,
            stable_version=self.stable,
        )

    def carry_out(self, intents: list[Any]) -> None:
        for intent in intents:
            self.log.append(intent)
            if isinstance(intent, DeployCandidate):
                self.candidate = intent.version
            elif isinstance(intent, SetWeights):
                self.weight = intent.canary
            elif isinstance(intent, SetMirror):
                self.mirror = intent.on
            elif isinstance(intent, ServeStable):
                self.stable = intent.version
            elif isinstance(intent, RemoveCandidate):
                assert not self.weight, "a candidate is removed only once it has no traffic"
                self.candidate = None

    def answer(self, query: str) -> QueryResult:
        name = query.split("{", 1)[0]
        if name not in self.metrics:
            return QueryResult(error=f"unexpected query {query}")
        return QueryResult(value=self.metrics[name])


@dataclass
class Driver:
    rollout: Rollout
    world: World = field(default_factory=World)
    now: dt.datetime = T0
    state: RolloutState | None = None
    seen_phases: list[str] = field(default_factory=list)

    def begin(self, version: str = "2") -> None:
        self.state, intents = start(version, self.world.stable, self.now)
        self.world.carry_out(intents)
        self.seen_phases = [self.state.phase]

    def tick(self, seconds: float = 1.0) -> RolloutState:
        """One pass of the loop, ``seconds`` after the last."""
        assert self.state is not None
        self.now += dt.timedelta(seconds=seconds)
        state = RolloutState.model_validate_json(self.state.model_dump_json())  # via status
        results = None
        online = True
        if analysis_due(state, self.rollout, self.now):
            online = self.world.prometheus
            if online:
                queries = analysis_queries(state, self.rollout, TARGETS)
                results = {q.query: self.world.answer(q.query) for q in queries}
        observation = Observation(
            now=self.now,
            router=self.world.view(),
            targets=TARGETS,
            controls=self.world.controls,
            results=results,
            prometheus_online=online,
        )
        self.state, intents = advance(state, self.rollout, observation)
        self.world.carry_out(intents)
        if not self.seen_phases or self.seen_phases[-1] != self.state.phase:
            self.seen_phases.append(self.state.phase)
        return self.state

    def run(self, seconds: float, every: float = 1.0) -> RolloutState:
        for _ in range(int(seconds / every)):
            self.tick(every)
        assert self.state is not None
        return self.state

    def events(self) -> list[str]:
        return [i.reason for i in self.world.log if isinstance(i, PostEvent)]


HEALTHY = {
    "requests": 500.0,
    "success": 1.0,
    "p99": 0.05,
    "shadow_requests": 400.0,
    "disagreement": 0.0,
    "shadow_p99": 0.05,
}


def spec(**fields: Any) -> Rollout:
    base: dict[str, Any] = {"steps": [20, 50, 100], "interval": "10s", "minSamples": 10}
    base["metrics"] = [{"name": "success-rate", "min": 0.99}, {"name": "latency-p99", "max": 0.25}]
    return Rollout.model_validate({**base, **fields})


def test_a_healthy_candidate_is_shadowed_stepped_and_promoted():
    d = Driver(spec(shadow={"maxDisagreement": 0.02, "minRequests": 100, "maxLatencyP99": "250ms"}))
    d.world.metrics = dict(HEALTHY)
    d.begin()
    assert d.world.candidate == "2" and d.world.weight == 0
    state = d.run(60)
    assert d.seen_phases == ["Initializing", "Shadowing", "Progressing", "Promoted"]
    assert state.stable == "2" and d.world.stable == "2"
    assert d.world.candidate is None and d.world.weight == 0 and not d.world.mirror
    # Every step with its analysis and the numbers behind it.
    assert [(s.step, s.weight, s.mirror) for s in state.steps] == [
        (0, 0, True),
        (1, 20, False),
        (2, 50, False),
        (3, 100, False),
    ]
    assert all(len(s.analyses) == 1 and s.analyses[0].verdict == "pass" for s in state.steps)
    shadow = {r.metric: r for r in state.steps[0].analyses[0].results}
    assert set(shadow) == {"requests", "disagreement", "latency-p99"}
    assert shadow["disagreement"].samples == 400 and shadow["disagreement"].value == 0.0
    assert shadow["disagreement"].query == 'disagreement{s="cand"}[10s]'
    last = {r.metric: r for r in state.last_analysis}
    assert last["success-rate"].value == 1.0 and last["success-rate"].samples == 500
    assert d.events() == [
        "RolloutStarted",
        "RolloutShadowing",
        "StepPassed",
        "StepPassed",
        "StepPassed",
        "RolloutPromoted",
    ]
    # The weights went up one step per interval, mirroring only while shadowing.
    weights = [i.canary for i in d.world.log if isinstance(i, SetWeights)]
    assert weights == [0, 0, 20, 50, 100, 0]


def test_the_switch_serves_the_candidate_from_stable_before_taking_its_traffic():
    d = Driver(spec(steps=[100]))
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.run(12)
    tail = [type(i).__name__ for i in d.world.log if not isinstance(i, PostEvent | RecordAnalysis)]
    assert tail[-4:] == ["SetMirror", "ServeStable", "SetWeights", "RemoveCandidate"]


def test_analyses_are_due_once_per_interval():
    d = Driver(spec())
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.tick(1)  # ready: step 1
    assert d.state is not None and d.state.step == 1
    d.run(9)
    assert d.state.step == 1 and not d.state.steps[-1].analyses
    d.tick(1)
    assert d.state.step == 2


def test_errors_roll_back_after_failure_threshold_consecutive_failures():
    d = Driver(spec(failureThreshold=2))
    d.world.metrics = {**HEALTHY, "success": 0.95}
    d.begin()
    d.tick()
    assert d.world.weight == 20
    d.run(10)
    assert d.state is not None and d.state.phase == "Progressing" and d.state.failed_checks == 1
    assert d.world.weight == 20
    d.run(10)
    assert d.state.phase == "RolledBack" and d.state.failed_checks == 2
    assert d.world.weight == 0 and d.world.candidate is None and d.world.stable == "1"
    assert "success-rate: 0.95 < min 0.99" in d.state.reason
    assert d.events()[-2:] == ["AnalysisFailed", "RolledBack"]


def test_consecutive_counting_forgives_a_pass_total_counting_does_not():
    for counting, phase in (("consecutive", "Progressing"), ("total", "RolledBack")):
        d = Driver(spec(steps=[10, 20, 50, 100], failureThreshold=2, failureCounting=counting))
        d.world.metrics = {**HEALTHY, "success": 0.9}
        d.begin()
        d.tick()
        d.run(10)  # fail
        d.world.metrics["success"] = 1.0
        d.run(10)  # pass: step 2
        d.world.metrics["success"] = 0.9
        d.run(10)  # fail
        assert d.state is not None and d.state.phase == phase, counting


def test_on_failure_pause_halts_with_the_weights_kept_until_a_person_decides():
    d = Driver(spec(failureThreshold=1, onFailure="pause"))
    d.world.metrics = {**HEALTHY, "p99": 0.4}
    d.begin()
    d.tick()
    d.run(10)
    assert d.state is not None and d.state.phase == "Halted"
    assert d.world.weight == 20 and d.world.candidate == "2"
    d.run(60)
    assert d.state.phase == "Halted" and d.world.weight == 20  # no analysis while halted
    # Retry: pause, then resume; the failures start from zero.
    d.world.controls = Controls(pause=True)
    d.tick()
    assert d.state.phase == "Paused" and d.state.failed_checks == 0
    d.world.metrics["p99"] = 0.1
    d.world.controls = Controls()
    d.tick()
    assert d.state.phase == "Progressing"
    d.run(40)
    assert d.state.phase == "Promoted"


def test_no_data_holds_without_counting_failures_until_the_deadline():
    d = Driver(spec(progressDeadline="30s", failureThreshold=1))
    d.world.metrics = {**HEALTHY, "requests": 0.0}
    d.begin()
    d.tick()
    d.run(25)
    assert d.state is not None and d.state.phase == "Progressing"
    assert d.state.failed_checks == 0 and d.state.holding_since is not None
    assert d.state.last_analysis[0].verdict == "inconclusive"
    assert "fewer than the 10" in d.state.last_analysis[1].reason
    d.run(20)
    assert d.state.phase == "RolledBack"
    assert d.events()[-1] == "ProgressDeadlineExceeded"


def test_no_data_with_no_data_fail_counts_a_failure():
    d = Driver(spec(noData="fail", failureThreshold=1))
    d.world.metrics = {**HEALTHY, "success": None}
    d.begin()
    d.tick()
    d.run(10)
    assert d.state is not None and d.state.phase == "RolledBack"


def test_traffic_returning_within_the_deadline_resumes_the_rollout():
    d = Driver(spec(progressDeadline="1m"))
    d.world.metrics = {**HEALTHY, "requests": None}
    d.begin()
    d.tick()
    d.run(30)
    assert d.state is not None and d.state.holding_since is not None
    d.world.metrics["requests"] = 300.0
    d.run(10)
    assert d.state.step == 2 and d.state.holding_since is None


def test_prometheus_down_holds_and_says_so_even_with_no_data_fail():
    d = Driver(spec(noData="fail", failureThreshold=1, progressDeadline="2m"))
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.tick()
    d.world.prometheus = False
    d.run(60)
    assert d.state is not None and d.state.phase == "Progressing" and d.state.step == 1
    assert {r.reason for r in d.state.last_analysis} == {"Prometheus unreachable"}
    assert d.state.failed_checks == 0
    d.world.prometheus = True
    d.run(10)
    assert d.state.step == 2


def test_a_query_error_is_never_a_pass():
    d = Driver(spec(progressDeadline="20s"))
    d.world.metrics = dict(HEALTHY)
    del d.world.metrics["success"]  # the query errors
    d.begin()
    d.tick()
    d.run(30)
    assert d.state is not None and d.state.phase == "RolledBack"
    assert all(s.step <= 1 for s in d.state.steps)


def test_dry_run_metrics_are_recorded_but_do_not_act():
    d = Driver(spec(metrics=[{"name": "latency-p99", "max": 0.01, "dryRun": True}]))
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.run(45)
    assert d.state is not None and d.state.phase == "Promoted"
    p99 = [r for r in d.state.steps[1].analyses[0].results if r.metric == "latency-p99"]
    assert p99[0].verdict == "fail" and p99[0].dry_run


def test_relative_to_stable_queries_both_over_the_same_window():
    rollout = spec(metrics=[{"name": "latency-p99", "relativeTo": "stable", "maxIncrease": 0.05}])
    state, _ = start("2", "1", T0)
    state = state.model_copy(update={"phase": "Progressing", "step": 1})
    queries = {(q.metric, q.role): q.query for q in analysis_queries(state, rollout, TARGETS)}
    assert queries["latency-p99", "value"] == 'p99{s="cand"}[10s]'
    assert queries["latency-p99", "stable"] == 'p99{s="stab"}[10s]'
    assert queries["requests", "value"] == 'requests{s="cand"}[10s]'


def test_pause_holds_and_resume_continues_one_interval_later():
    d = Driver(spec())
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.tick()
    d.world.controls = Controls(pause=True)
    d.tick()
    assert d.state is not None and d.state.phase == "Paused"
    d.run(60)
    assert d.state.phase == "Paused" and d.state.step == 1 and d.world.weight == 20
    d.world.controls = Controls()
    d.tick()
    assert d.state.phase == "Progressing"
    d.run(9)
    assert d.state.step == 1
    d.run(2)
    assert d.state.step == 2


@pytest.mark.parametrize("phase_after", [0, 1, 15])
def test_manual_promote_skips_the_remaining_steps(phase_after):
    d = Driver(spec(shadow={"minRequests": 10}))
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.run(phase_after + 1)
    d.world.controls = Controls(promote=True)
    d.tick()
    assert d.state is not None and d.state.phase == "Promoted"
    assert d.world.stable == "2" and d.world.candidate is None and d.world.weight == 0


def test_abort_goes_back_to_stable_at_once():
    d = Driver(spec())
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.run(12)
    assert d.world.weight == 50
    d.world.controls = Controls(abort=True)
    d.tick()
    assert d.state is not None and d.state.phase == "RolledBack"
    assert d.world.weight == 0 and d.world.candidate is None and d.world.stable == "1"
    first = next(i for i in d.world.log[::-1] if isinstance(i, SetWeights))
    assert first.canary == 0
    d.run(30)  # abort still set: nothing more happens
    assert d.events()[-1] == "Aborted"


def test_rollback_to_an_older_version_from_a_rollout_or_after_it():
    d = Driver(spec())
    d.world.stable = "3"
    d.world.metrics = dict(HEALTHY)
    d.begin("4")
    d.tick()
    d.world.controls = Controls(rollback_to="2")
    d.tick()
    assert d.state is not None and d.state.phase == "RolledBack"
    assert d.world.stable == "2" and d.world.candidate is None and d.state.stable == "2"
    d.run(5)
    assert d.events().count("RolledBackTo") == 1
    # After a promotion too: version 2 is served again, once.
    d = Driver(spec(steps=[100]))
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.run(12)
    assert d.state is not None and d.state.phase == "Promoted" and d.world.stable == "2"
    d.world.controls = Controls(rollback_to="1")
    d.run(5)
    assert d.state.phase == "RolledBack" and d.world.stable == "1"
    assert d.events().count("RolledBackTo") == 1


def test_weights_lost_by_the_router_are_restored():
    d = Driver(spec())
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.tick()
    d.world.weight = None  # the proxy restarted without our routes
    d.tick()
    assert d.world.weight == 20 and d.events()[-1] == "RoutesRestored"


def test_a_finished_rollout_puts_the_router_back_as_it_should_be():
    d = Driver(spec(steps=[100]))
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.run(12)
    assert d.state is not None and d.state.phase == "Promoted"
    d.world.candidate, d.world.weight, d.world.stable = "2", 100, "1"  # crashed mid-switch
    d.tick()
    assert (d.world.stable, d.world.weight, d.world.candidate) == ("2", 0, None)
    assert d.state.phase == "Promoted"


def test_a_candidate_never_ready_fails_the_rollout_at_the_deadline():
    d = Driver(spec(progressDeadline="30s"))
    d.world.ready = False
    d.begin()
    d.run(20)
    assert d.state is not None and d.state.phase == "Initializing" and d.world.weight == 0
    d.run(15)
    assert d.state.phase == "Failed" and d.world.candidate is None


def test_a_candidate_lost_mid_rollout_fails_it_back_to_stable():
    d = Driver(spec())
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.run(12)
    d.world.ready = False
    d.tick()
    assert d.state is not None and d.state.phase == "Failed" and d.world.weight == 0


def test_a_candidate_not_yet_serving_the_new_version_is_not_ready():
    d = Driver(spec())
    d.begin()
    d.world.candidate = "1"  # the old candidate still answers
    d.run(5)
    assert d.state is not None and d.state.phase == "Initializing"


def test_the_state_survives_a_restart_at_every_tick():
    """Each tick starts from the state read back from JSON (as from status): the rollout after
    a restart continues at the same step with the same weights."""
    d = Driver(spec())
    d.world.metrics = dict(HEALTHY)
    d.begin()
    d.run(12)
    assert d.state is not None
    saved = d.state.model_dump(mode="json", by_alias=True)
    assert saved["canaryWeight"] == 50 and saved["step"] == 2
    again = RolloutState.model_validate(saved)
    assert again == d.state


def test_the_table_in_the_docs_is_the_table():
    import pathlib

    lines = ["| phase | seen | next phase | acts |", "|---|---|---|---|"]
    for phase in Phase:
        for seen in Seen:
            row = TRANSITIONS.get((phase, seen))
            if row is None:
                continue
            target = "(the phase it paused)" if seen is Seen.RESUME else row[0].value
            acts = ", ".join(a.value for a in row[1]) or "—"
            lines.append(f"| {phase.value} | {seen.value} | {target} | {acts} |")
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "rollout.md").read_text()
    begin = doc.index("<!-- table:")
    table = doc[doc.index("\n", begin) + 1 : doc.index("<!-- end of table -->")].strip()
    assert table == "\n".join(lines)
