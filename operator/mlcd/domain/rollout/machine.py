"""The rollout's state and :func:`advance`, the step the control loop calls: observation in,
the table's row applied, the next state and the intents out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from pydantic import Field

from mlcd.domain.rollout.analysis import (
    MAX_REASON,
    Analysis,
    AnalysisResult,
    PlannedQuery,
    QueryResult,
    Targets,
    Verdict,
    analyse,
    iso,
    parse_time,
    planned_queries,
)
from mlcd.domain.rollout.table import (
    ANALYSIS,
    HELD,
    LIVE,
    TERMINAL,
    Act,
    Phase,
    Seen,
    is_last_step,
    step_weight,
    transition,
)
from mlcd.domain.spec import Model, Rollout, duration_seconds

# -- the state (status.rollout) -----------------------------------------------------------------

MAX_ANALYSES_PER_STEP = 10
MAX_STEPS = 22  # shadow + 20 steps + one spare after a spec change
PhaseName = Literal[
    "Initializing",
    "Shadowing",
    "Progressing",
    "Paused",
    "Halted",
    "Promoted",
    "RolledBack",
    "Failed",
]


class StepRecord(Model):
    """One step of the rollout (the shadow phase is weight 0 with mirroring)."""

    step: int = Field(ge=0, le=100, description="1-based step; 0 is the shadow phase.")
    weight: int = Field(ge=0, le=100, description="Traffic percent to the candidate.")
    mirror: bool = Field(default=False, description="Whether live traffic was mirrored to it.")
    started_at: str = Field(max_length=64, description="When the step began (RFC 3339).")
    analyses: list[Analysis] = Field(
        default_factory=list,
        max_length=MAX_ANALYSES_PER_STEP,
        description=f"The step's last {MAX_ANALYSES_PER_STEP} analyses.",
    )


class RolloutState(Model):
    """A rollout's whole state, kept in status.rollout: enough to resume after a restart."""

    phase: PhaseName = Field(
        description="Initializing, Shadowing, Progressing, Paused, Halted, Promoted, "
        "RolledBack or Failed.",
    )
    candidate: str = Field(max_length=64, description="The version being rolled out.")
    run: str | None = Field(
        default=None, max_length=253, description="The run whose model is rolled out."
    )
    stable: str | None = Field(
        default=None, max_length=64, description="The version the stable server serves."
    )
    step: int = Field(default=0, ge=0, le=100, description="1-based step; 0 before the first.")
    canary_weight: int = Field(default=0, ge=0, le=100, description="Traffic percent to it.")
    mirror: bool = Field(default=False, description="Live traffic is mirrored to the candidate.")
    failed_checks: int = Field(default=0, ge=0, description="Failed analyses counted so far.")
    started_at: str = Field(max_length=64, description="When the rollout began (RFC 3339).")
    step_started_at: str | None = Field(
        default=None, max_length=64, description="When the current step began."
    )
    last_analysis_at: str | None = Field(
        default=None, max_length=64, description="When the last analysis ran."
    )
    holding_since: str | None = Field(
        default=None,
        max_length=64,
        description="Since when analyses have been inconclusive, without a break.",
    )
    resume_phase: PhaseName | None = Field(
        default=None, description="The live phase a Paused rollout resumes."
    )
    finished_at: str | None = Field(default=None, max_length=64, description="When it ended.")
    reason: str = Field(default="", max_length=MAX_REASON, description="The last decision.")
    last_analysis: list[AnalysisResult] = Field(
        default_factory=list, max_length=64, description="The last analysis, metric by metric."
    )
    steps: list[StepRecord] = Field(
        default_factory=list, max_length=MAX_STEPS, description="Every step with its analyses."
    )


# -- intents ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployCandidate:
    """Serve ``version`` on the candidate server (no traffic yet)."""

    version: str


@dataclass(frozen=True)
class SetWeights:
    """Send ``canary`` percent of traffic to the candidate, the rest to the stable server."""

    canary: int


@dataclass(frozen=True)
class SetMirror:
    """Mirror live traffic to the candidate (its answers discarded), or stop."""

    on: bool


@dataclass(frozen=True)
class ServeStable:
    """The stable server serves ``version`` (swapped in without dropping a request); nothing
    when it already does."""

    version: str


@dataclass(frozen=True)
class RemoveCandidate:
    """Stop the candidate server and drop it from the routes (its weight is already 0)."""


@dataclass(frozen=True)
class RecordAnalysis:
    """An analysis to count in the operator's metrics (it is in the state already)."""

    phase: str
    step: int
    analysis: Analysis


@dataclass(frozen=True)
class PostEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Intent: TypeAlias = (
    DeployCandidate | SetWeights | SetMirror | ServeStable | RemoveCandidate | RecordAnalysis
) | PostEvent


# -- observations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterView:
    """What the router and the servers report now."""

    canary_weight: int | None  # None: the router has no routes for this pipeline
    mirror: bool
    candidate_ready: bool
    candidate_version: str | None  # what the candidate server serves; None: none runs
    stable_version: str | None


@dataclass(frozen=True)
class Controls:
    """The manual controls, as the spec (or the CLI through it) requests them now."""

    pause: bool = False
    promote: bool = False
    abort: bool = False
    rollback_to: str | None = None

    @classmethod
    def of(cls, rollout: Rollout) -> Controls:
        return cls(rollout.pause, rollout.promote, rollout.abort, rollout.rollback_to)


@dataclass(frozen=True)
class Observation:
    """One bundle of what the executor saw, for one :func:`advance`."""

    now: dt.datetime
    router: RouterView
    targets: Targets
    controls: Controls = field(default_factory=Controls)
    #: Results by resolved query text (see :func:`analysis_queries`); None: none ran.
    results: Mapping[str, QueryResult] | None = None
    #: False: Prometheus did not answer; the analysis holds.
    prometheus_online: bool = True


# -- the decision ----------------------------------------------------------------------------------


def analysis_queries(state: RolloutState, rollout: Rollout, targets: Targets) -> list[PlannedQuery]:
    """The resolved queries the next analysis needs (empty unless Shadowing or Progressing)."""
    phase = Phase(state.phase)
    if phase not in LIVE:
        return []
    return planned_queries(rollout, targets, shadowing=phase is Phase.SHADOWING)


def analysis_due(state: RolloutState, rollout: Rollout, now: dt.datetime) -> bool:
    """True when the observer should run :func:`analysis_queries` and report the results:
    Shadowing or Progressing, and one interval since the step began or the last analysis."""
    if Phase(state.phase) not in LIVE:
        return False
    since = state.last_analysis_at or state.step_started_at or state.started_at
    return now >= parse_time(since) + dt.timedelta(seconds=duration_seconds(rollout.interval))


def _routes_drifted(state: RolloutState, router: RouterView) -> bool:
    return router.canary_weight != state.canary_weight or router.mirror != state.mirror


def _settled_drifted(state: RolloutState, router: RouterView) -> bool:
    return (
        bool(router.canary_weight)
        or router.mirror
        or router.candidate_version is not None
        or (state.stable is not None and router.stable_version != state.stable)
    )


def _outcome(rollout: Rollout, rollback: Seen, pause: Seen) -> Seen:
    return rollback if rollout.on_failure == "rollback" else pause


def classify(
    state: RolloutState, rollout: Rollout, observation: Observation, analysis: Analysis | None
) -> Seen:
    """The observation as one :class:`Seen`; the first rule that matches wins."""
    phase = Phase(state.phase)
    router, controls, now = observation.router, observation.controls, observation.now
    deadline = _deadline(rollout)
    wants_older = controls.rollback_to is not None and controls.rollback_to != (
        router.stable_version if phase in TERMINAL else state.stable
    )
    if phase in TERMINAL:
        if wants_older:
            return Seen.ROLLBACK_TO
        return Seen.DRIFTED if _settled_drifted(state, router) else Seen.WAITING
    if controls.abort:
        return Seen.ABORT
    if wants_older:
        return Seen.ROLLBACK_TO
    ready = router.candidate_ready and router.candidate_version == state.candidate
    if phase is Phase.INITIALIZING:
        if ready:
            return Seen.READY_SHADOW if rollout.shadow is not None else Seen.READY
        return (
            Seen.NEVER_READY if now - parse_time(state.started_at) >= deadline else Seen.NOT_READY
        )
    if not ready:
        return Seen.LOST
    if controls.promote:
        return Seen.PROMOTE
    if phase is Phase.PAUSED and not controls.pause:
        return Seen.RESUME
    if controls.pause and phase is not Phase.PAUSED:
        return Seen.PAUSE
    if _routes_drifted(state, router):
        return Seen.DRIFTED
    if phase in HELD or analysis is None:
        return Seen.WAITING
    result = Verdict(analysis.verdict)
    if result is Verdict.PASS:
        return Seen.PASSED_LAST if _is_last(state, rollout) else Seen.PASSED
    inconclusive = result is Verdict.INCONCLUSIVE
    if inconclusive and (rollout.no_data == "hold" or not observation.prometheus_online):
        since = parse_time(state.holding_since) if state.holding_since else now
        if now - since >= deadline:
            return _outcome(rollout, Seen.EXPIRED_ROLLBACK, Seen.EXPIRED_PAUSE)
        return Seen.HOLD
    # A failure, or no data with noData: fail.
    if state.failed_checks + 1 >= rollout.failure_threshold:
        return _outcome(rollout, Seen.FAILED_OUT_ROLLBACK, Seen.FAILED_OUT_PAUSE)
    return Seen.FAILED


def _deadline(rollout: Rollout) -> dt.timedelta:
    """progressDeadline, at least one interval (a default deadline shorter than a long
    interval would end every rollout before its first analysis)."""
    seconds = max(duration_seconds(rollout.progress_deadline), duration_seconds(rollout.interval))
    return dt.timedelta(seconds=seconds)


def _is_last(state: RolloutState, rollout: Rollout) -> bool:
    return Phase(state.phase) is Phase.PROGRESSING and is_last_step(rollout.steps, state.step)


def start(
    candidate: str, stable: str | None, now: dt.datetime, run: str | None = None
) -> tuple[RolloutState, list[Intent]]:
    """A new rollout of ``candidate`` (the model of ``run``) next to ``stable``: the candidate
    is deployed with no traffic, and the rollout waits for it to be ready."""
    state = RolloutState(
        phase=Phase.INITIALIZING.value,
        candidate=candidate,
        run=run,
        stable=stable,
        started_at=iso(now),
        reason=f"deploying version {candidate}",
    )
    intents: list[Intent] = [
        SetMirror(False),
        SetWeights(0),
        DeployCandidate(candidate),
        PostEvent("Normal", "RolloutStarted", f"rolling out version {candidate}"),
    ]
    return state, intents


def advance(
    state: RolloutState, rollout: Rollout, observation: Observation
) -> tuple[RolloutState, list[Intent]]:
    """One step of the rollout: the row for (phase, what was seen), applied."""
    now = observation.now
    phase = Phase(state.phase)
    analysis: Analysis | None = None
    if phase in LIVE and (observation.results is not None or not observation.prometheus_online):
        analysis = analyse(
            rollout,
            observation.targets,
            observation.results,
            now,
            observation.prometheus_online,
            shadowing=phase is Phase.SHADOWING,
        )
    seen = classify(state, rollout, observation, analysis)
    next_phase, acts = transition(phase, seen)
    if seen is Seen.RESUME:
        next_phase = Phase(state.resume_phase or Phase.PROGRESSING.value)
    new = state
    intents: list[Intent] = []
    for act in acts:
        new, produced = _apply(act, new, rollout, observation, analysis, seen)
        intents.extend(produced)
    if analysis is not None and seen is not Seen.HOLD and seen in ANALYSIS:
        new = replace_state(new, holding_since=None)
    changes: dict[str, object] = {"phase": next_phase.value}
    if next_phase in TERMINAL and phase not in TERMINAL:
        changes["finished_at"] = iso(now)
    new = replace_state(new, **changes)
    if acts:
        new = replace_state(new, reason=_reason(seen, new, analysis))
    # Events say what the state now says.
    intents = [
        replace(i, message=new.reason) if isinstance(i, PostEvent) and not i.message else i
        for i in intents
    ]
    return new, intents


def replace_state(state: RolloutState, **changes: object) -> RolloutState:
    return state.model_copy(update=changes)


def _apply(
    act: Act,
    state: RolloutState,
    rollout: Rollout,
    observation: Observation,
    analysis: Analysis | None,
    seen: Seen,
) -> tuple[RolloutState, list[Intent]]:
    now = iso(observation.now)
    if act is Act.ROUTE:
        phase = _phase_after(state, seen)
        weight = step_weight(rollout.steps, state.step) if phase is Phase.PROGRESSING else 0
        mirror = phase is Phase.SHADOWING
        if phase in HELD:
            weight, mirror = state.canary_weight, state.mirror
        new = replace_state(state, canary_weight=weight, mirror=mirror)
        return new, [SetMirror(mirror), SetWeights(weight)]
    if act is Act.NEXT_STEP:
        step = state.step + 1
        record = StepRecord(step=step, weight=step_weight(rollout.steps, step), started_at=now)
        steps = [*state.steps, record][-MAX_STEPS:]
        return replace_state(
            state,
            step=step,
            step_started_at=now,
            last_analysis_at=None,
            holding_since=None,
            steps=steps,
        ), []
    if act is Act.RESTART_CLOCK:
        changes: dict[str, object] = {"last_analysis_at": now, "holding_since": None}
        if Phase(state.phase) is Phase.INITIALIZING:  # into the shadow phase: its record
            record = StepRecord(step=0, weight=0, mirror=True, started_at=now)
            changes.update(step_started_at=now, steps=[*state.steps, record][-MAX_STEPS:])
        return replace_state(state, **changes), []
    if act is Act.RECORD:
        assert analysis is not None
        steps = list(state.steps)
        if steps:
            last = steps[-1]
            kept = [*last.analyses, analysis][-MAX_ANALYSES_PER_STEP:]
            steps[-1] = last.model_copy(update={"analyses": kept})
        holding = state.holding_since
        if analysis.verdict == "inconclusive":
            holding = holding or now
        new = replace_state(
            state,
            last_analysis=analysis.results,
            last_analysis_at=now,
            holding_since=holding,
            steps=steps,
        )
        return new, [RecordAnalysis(state.phase, state.step, analysis)]
    if act is Act.COUNT_FAILURE:
        return replace_state(state, failed_checks=state.failed_checks + 1), []
    if act is Act.RESET_FAILURES:
        if rollout.failure_counting == "consecutive" or seen is Seen.PAUSE:
            return replace_state(state, failed_checks=0), []
        return state, []
    if act is Act.REMEMBER:
        return replace_state(state, resume_phase=state.phase), []
    if act is Act.SWITCH:
        new = replace_state(state, stable=state.candidate, canary_weight=0, mirror=False)
        return new, [
            SetMirror(False),
            ServeStable(state.candidate),
            SetWeights(0),
            RemoveCandidate(),
        ]
    if act is Act.RETREAT:
        new = replace_state(state, canary_weight=0, mirror=False)
        intents: list[Intent] = [SetWeights(0), SetMirror(False)]
        if state.stable is not None:
            intents.append(ServeStable(state.stable))
        return new, [*intents, RemoveCandidate()]
    if act is Act.SERVE_OLDER:
        older = observation.controls.rollback_to
        assert older is not None
        return replace_state(state, stable=older), [ServeStable(older)]
    if act in (Act.NOTE, Act.WARN):
        kind: Literal["Normal", "Warning"] = "Normal" if act is Act.NOTE else "Warning"
        return state, [PostEvent(kind, _EVENT_REASONS[seen], "")]
    raise AssertionError(f"unhandled act {act}")


def _phase_after(state: RolloutState, seen: Seen) -> Phase:
    """The phase the routes are for: where the row leads (resume: the remembered phase)."""
    if seen is Seen.RESUME:
        return Phase(state.resume_phase or Phase.PROGRESSING.value)
    return transition(Phase(state.phase), seen)[0]


_EVENT_REASONS: dict[Seen, str] = {
    Seen.NEVER_READY: "CandidateNeverReady",
    Seen.READY: "RolloutProgressing",
    Seen.READY_SHADOW: "RolloutShadowing",
    Seen.LOST: "CandidateLost",
    Seen.DRIFTED: "RoutesRestored",
    Seen.PASSED: "StepPassed",
    Seen.PASSED_LAST: "RolloutPromoted",
    Seen.FAILED: "AnalysisFailed",
    Seen.FAILED_OUT_ROLLBACK: "RolledBack",
    Seen.FAILED_OUT_PAUSE: "RolloutHalted",
    Seen.EXPIRED_ROLLBACK: "ProgressDeadlineExceeded",
    Seen.EXPIRED_PAUSE: "ProgressDeadlineExceeded",
    Seen.PAUSE: "RolloutPaused",
    Seen.RESUME: "RolloutResumed",
    Seen.PROMOTE: "PromotedManually",
    Seen.ABORT: "Aborted",
    Seen.ROLLBACK_TO: "RolledBackTo",
}


def _failing(analysis: Analysis | None) -> str:
    if analysis is None:
        return ""
    bad = [r for r in analysis.results if r.verdict != "pass" and not r.dry_run]
    return "; ".join(f"{r.metric}: {r.reason}" for r in bad)


def _reason(seen: Seen, state: RolloutState, analysis: Analysis | None) -> str:
    weight = state.canary_weight
    version = state.candidate
    text = {
        Seen.NEVER_READY: f"version {version} was not ready within progressDeadline",
        Seen.READY: f"version {version} ready; step {state.step} at {weight}%",
        Seen.READY_SHADOW: f"version {version} ready; shadowing (mirrored traffic)",
        Seen.LOST: f"the candidate server of version {version} stopped answering",
        Seen.DRIFTED: f"routes restored to {weight}% (mirror {'on' if state.mirror else 'off'})",
        Seen.PASSED: f"analysis passed; step {state.step} at {weight}%",
        Seen.PASSED_LAST: f"analysis passed at the last step; version {version} promoted",
        Seen.FAILED: f"analysis failed ({state.failed_checks} counted): {_failing(analysis)}",
        Seen.FAILED_OUT_ROLLBACK: f"{state.failed_checks} failed analyses; rolled back: "
        f"{_failing(analysis)}",
        Seen.FAILED_OUT_PAUSE: f"{state.failed_checks} failed analyses; halted at {weight}%: "
        f"{_failing(analysis)}",
        Seen.HOLD: f"holding at {weight}%: {_failing(analysis)}",
        Seen.EXPIRED_ROLLBACK: f"no conclusive analysis within progressDeadline; rolled back: "
        f"{_failing(analysis)}",
        Seen.EXPIRED_PAUSE: f"no conclusive analysis within progressDeadline; halted at "
        f"{weight}%: {_failing(analysis)}",
        Seen.PAUSE: f"paused at {weight}%",
        Seen.RESUME: f"resumed at {weight}%",
        Seen.PROMOTE: f"promoted by request; version {version} serves",
        Seen.ABORT: "aborted by request; the stable model serves",
        Seen.ROLLBACK_TO: f"rolled back to version {state.stable} by request",
    }.get(seen, state.reason)
    return text[:MAX_REASON]
