"""The progressive rollout as one transition table: every decision about a candidate model is a row.

A rollout takes a candidate model from nothing to all traffic, or back out:

    Initializing ─ready─▶ [Shadowing] ─pass─▶ Progressing, step 1 … n ─pass at 100 %─▶ Promoted
    Shadowing/Progressing ─pause─▶ Paused ─resume─▶ where it was
    Shadowing/Progressing ─failed, onFailure: rollback; abort; rollbackTo─▶ RolledBack
    Shadowing/Progressing ─failed, onFailure: pause─▶ Halted (waits for a person)
    Initializing ─never ready─▶ Failed; any live phase ─candidate lost─▶ Failed

:func:`advance` is the one function the control loop calls. It reads the rollout's state (kept in
status), the spec and one :class:`Observation` (what the executor saw: the router's weights, the
candidate's readiness, this interval's query results or "Prometheus unreachable", the manual
controls, the clock), classifies the observation into one :class:`Seen`, looks up the row
``TRANSITIONS[(phase, seen)]`` and returns the next state with an ordered list of typed intents
for the executor. Pairs that cannot occur are listed in ``IMPOSSIBLE``; any other pair raises.

When is an analysis due? The observer asks :func:`analysis_due`; when it says yes, the observer
runs the queries of :func:`analysis_queries` (already resolved) through the metric provider and
puts their results in the observation. Nothing else queries Prometheus, and an observation without
results is simply "nothing due" (``Seen.WAITING``).

Verdicts (:func:`verdict`): a value inside its bounds, from enough requests, is a pass; outside,
a fail; no data, too few requests, an error or an unreachable Prometheus are *inconclusive*,
never a pass. An inconclusive interval holds the step (or counts a failure with ``noData: fail``);
holding longer than ``progressDeadline`` ends the rollout as ``onFailure`` says.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal, TypeAlias

from pydantic import Field

from mlcd.domain.spec import (
    BUILTIN_METRICS,
    MAX_QUERY,
    TEMPLATE_VARIABLES,
    Degradation,
    Model,
    Rollout,
    RolloutMetric,
    duration_seconds,
)

# -- phases and observations -----------------------------------------------------------------------


class Phase(StrEnum):
    INITIALIZING = "Initializing"  # the candidate is deployed and not ready yet; no traffic
    SHADOWING = "Shadowing"  # the candidate answers a mirror of live traffic; answers discarded
    PROGRESSING = "Progressing"  # the candidate gets the current step's share of traffic
    PAUSED = "Paused"  # held by the user (spec pause); resumes where it was
    HALTED = "Halted"  # analyses failed with onFailure: pause; waits for a person
    PROMOTED = "Promoted"  # the candidate is the stable model now
    ROLLED_BACK = "RolledBack"  # analyses or a person refused the candidate; stable serves
    FAILED = "Failed"  # the rollout could not be carried out (candidate never ready, lost)


LIVE = (Phase.SHADOWING, Phase.PROGRESSING)
HELD = (Phase.PAUSED, Phase.HALTED)
TERMINAL = (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED)


class Seen(StrEnum):
    """One observation, classified (first match of :func:`classify`)."""

    WAITING = "waiting"  # nothing to do: no analysis due, routes as recorded
    NOT_READY = "not-ready"  # the candidate is not ready yet, within progressDeadline
    NEVER_READY = "never-ready"  # ... past progressDeadline
    READY = "ready"  # the candidate is ready; no shadow phase
    READY_SHADOW = "ready-shadow"  # the candidate is ready; a shadow phase first
    LOST = "lost"  # the candidate was ready and is not any more
    DRIFTED = "drifted"  # the router's routes differ from what the state says
    PASSED = "passed"  # the analysis passed; steps remain
    PASSED_LAST = "passed-last"  # the analysis passed at the last step
    FAILED = "failed"  # the analysis failed; below failureThreshold
    FAILED_OUT_ROLLBACK = "failed-out-rollback"  # failureThreshold reached, onFailure: rollback
    FAILED_OUT_PAUSE = "failed-out-pause"  # failureThreshold reached, onFailure: pause
    HOLD = "hold"  # inconclusive (no data, too few requests, Prometheus down) within the deadline
    EXPIRED_ROLLBACK = "expired-rollback"  # held past progressDeadline, onFailure: rollback
    EXPIRED_PAUSE = "expired-pause"  # held past progressDeadline, onFailure: pause
    PAUSE = "pause"  # spec pause became true
    RESUME = "resume"  # spec pause became false (while Paused)
    PROMOTE = "promote"  # spec promote: skip the remaining steps
    ABORT = "abort"  # spec abort: back to the stable model
    ROLLBACK_TO = "rollback-to"  # spec rollbackTo names a version that is not serving


class Act(StrEnum):
    ROUTE = "route"  # apply the (new) state's weights and mirroring
    NEXT_STEP = "next-step"  # on to the next step (from the shadow phase: the first)
    RECORD = "record"  # keep this analysis in status and in the step's history
    COUNT_FAILURE = "count-failure"
    RESET_FAILURES = "reset-failures"
    REMEMBER = "remember"  # remember the live phase to resume into
    RESTART_CLOCK = "restart-clock"  # the next analysis is one interval from now
    SWITCH = "switch"  # the candidate becomes stable: served by stable, then all traffic to it
    RETREAT = "retreat"  # all traffic to stable at once, mirror off, candidate removed
    SERVE_OLDER = "serve-older"  # the stable server serves spec rollbackTo
    NOTE = "note"  # a Normal Event
    WARN = "warn"  # a Warning Event


Transition = tuple[Phase, tuple[Act, ...]]

#: The rollout, whole: (phase, what was seen) -> (next phase, what to do, in order).
TRANSITIONS: dict[tuple[Phase, Seen], Transition] = {
    (Phase.INITIALIZING, Seen.NOT_READY): (Phase.INITIALIZING, ()),
    (Phase.INITIALIZING, Seen.NEVER_READY): (Phase.FAILED, (Act.RETREAT, Act.WARN)),
    (Phase.INITIALIZING, Seen.READY): (
        Phase.PROGRESSING,
        (Act.NEXT_STEP, Act.ROUTE, Act.NOTE),
    ),
    (Phase.INITIALIZING, Seen.READY_SHADOW): (
        Phase.SHADOWING,
        (Act.RESTART_CLOCK, Act.ROUTE, Act.NOTE),
    ),
    (Phase.INITIALIZING, Seen.ABORT): (Phase.ROLLED_BACK, (Act.RETREAT, Act.WARN)),
    (Phase.INITIALIZING, Seen.ROLLBACK_TO): (
        Phase.ROLLED_BACK,
        (Act.RETREAT, Act.SERVE_OLDER, Act.WARN),
    ),
}
for _live in LIVE:
    TRANSITIONS.update(
        {
            (_live, Seen.WAITING): (_live, ()),
            (_live, Seen.DRIFTED): (_live, (Act.ROUTE, Act.WARN)),
            (_live, Seen.LOST): (Phase.FAILED, (Act.RETREAT, Act.WARN)),
            (_live, Seen.PASSED): (
                Phase.PROGRESSING,
                (Act.RECORD, Act.RESET_FAILURES, Act.NEXT_STEP, Act.ROUTE, Act.NOTE),
            ),
            (_live, Seen.FAILED): (_live, (Act.RECORD, Act.COUNT_FAILURE, Act.WARN)),
            (_live, Seen.FAILED_OUT_ROLLBACK): (
                Phase.ROLLED_BACK,
                (Act.RECORD, Act.COUNT_FAILURE, Act.RETREAT, Act.WARN),
            ),
            (_live, Seen.FAILED_OUT_PAUSE): (
                Phase.HALTED,
                (Act.RECORD, Act.COUNT_FAILURE, Act.REMEMBER, Act.WARN),
            ),
            (_live, Seen.HOLD): (_live, (Act.RECORD,)),
            (_live, Seen.EXPIRED_ROLLBACK): (
                Phase.ROLLED_BACK,
                (Act.RECORD, Act.RETREAT, Act.WARN),
            ),
            (_live, Seen.EXPIRED_PAUSE): (Phase.HALTED, (Act.RECORD, Act.REMEMBER, Act.WARN)),
            (_live, Seen.PAUSE): (Phase.PAUSED, (Act.REMEMBER, Act.NOTE)),
            (_live, Seen.PROMOTE): (Phase.PROMOTED, (Act.SWITCH, Act.NOTE)),
            (_live, Seen.ABORT): (Phase.ROLLED_BACK, (Act.RETREAT, Act.WARN)),
            (_live, Seen.ROLLBACK_TO): (
                Phase.ROLLED_BACK,
                (Act.RETREAT, Act.SERVE_OLDER, Act.WARN),
            ),
        }
    )
# Passing at the last step promotes; the shadow phase is always followed by a step.
TRANSITIONS[Phase.PROGRESSING, Seen.PASSED_LAST] = (
    Phase.PROMOTED,
    (Act.RECORD, Act.SWITCH, Act.NOTE),
)
for _held in HELD:
    TRANSITIONS.update(
        {
            (_held, Seen.WAITING): (_held, ()),
            (_held, Seen.DRIFTED): (_held, (Act.ROUTE, Act.WARN)),
            (_held, Seen.LOST): (Phase.FAILED, (Act.RETREAT, Act.WARN)),
            (_held, Seen.PROMOTE): (Phase.PROMOTED, (Act.SWITCH, Act.NOTE)),
            (_held, Seen.ABORT): (Phase.ROLLED_BACK, (Act.RETREAT, Act.WARN)),
            (_held, Seen.ROLLBACK_TO): (
                Phase.ROLLED_BACK,
                (Act.RETREAT, Act.SERVE_OLDER, Act.WARN),
            ),
        }
    )
# Resuming goes back to the live phase remembered on the way in ("previous", see advance).
TRANSITIONS[Phase.PAUSED, Seen.RESUME] = (Phase.PAUSED, (Act.RESTART_CLOCK, Act.NOTE))
# A halted rollout is retried by pausing it, then resuming: its failures start from zero.
TRANSITIONS[Phase.HALTED, Seen.PAUSE] = (Phase.PAUSED, (Act.RESET_FAILURES, Act.NOTE))
for _end in TERMINAL:
    TRANSITIONS[_end, Seen.WAITING] = (_end, ())
    TRANSITIONS[_end, Seen.ROLLBACK_TO] = (Phase.ROLLED_BACK, (Act.SERVE_OLDER, Act.WARN))
TRANSITIONS[Phase.PROMOTED, Seen.DRIFTED] = (Phase.PROMOTED, (Act.SWITCH,))
TRANSITIONS[Phase.ROLLED_BACK, Seen.DRIFTED] = (Phase.ROLLED_BACK, (Act.RETREAT,))
TRANSITIONS[Phase.FAILED, Seen.DRIFTED] = (Phase.FAILED, (Act.RETREAT,))

_ANALYSIS = {
    Seen.PASSED,
    Seen.PASSED_LAST,
    Seen.FAILED,
    Seen.FAILED_OUT_ROLLBACK,
    Seen.FAILED_OUT_PAUSE,
    Seen.HOLD,
    Seen.EXPIRED_ROLLBACK,
    Seen.EXPIRED_PAUSE,
}
_READINESS = {Seen.NOT_READY, Seen.NEVER_READY, Seen.READY, Seen.READY_SHADOW}
#: Pairs :func:`classify` never produces, each group with the reason.
IMPOSSIBLE: dict[tuple[Phase, Seen], str] = {}
for _seen in Seen:
    for _phase in Phase:
        if (_phase, _seen) in TRANSITIONS:
            continue
        if _seen in _READINESS:
            IMPOSSIBLE[_phase, _seen] = "readiness decides only while Initializing"
        elif _phase is Phase.INITIALIZING:
            IMPOSSIBLE[_phase, _seen] = "before the candidate is ready only readiness, abort "
            "and rollbackTo count"
        elif _seen in _ANALYSIS:
            IMPOSSIBLE[_phase, _seen] = "analyses run only while Shadowing or Progressing"
        elif _seen is Seen.RESUME:
            IMPOSSIBLE[_phase, _seen] = "only a Paused rollout resumes"
        elif _seen is Seen.PAUSE:
            IMPOSSIBLE[_phase, _seen] = "pause acts only on a live or halted rollout"
        elif _phase in TERMINAL:
            IMPOSSIBLE[_phase, _seen] = "a finished rollout heeds only rollbackTo and drift"


def transition(phase: Phase, seen: Seen) -> Transition:
    """The table's row; a pair that is neither a row nor impossible is a bug and raises."""
    row = TRANSITIONS.get((phase, seen))
    if row is None:
        why = IMPOSSIBLE.get((phase, seen), "no row")
        raise LookupError(f"rollout: no transition for ({phase}, {seen}): {why}")
    return row


# -- step arithmetic -------------------------------------------------------------------------------


def step_weight(steps: Sequence[int], step: int) -> int:
    """Traffic percent of step ``step`` (1-based; 0 is before the first step). A step past the
    end (the spec lost steps mid-rollout) is the last one."""
    if step <= 0:
        return 0
    return steps[min(step, len(steps)) - 1]


def is_last_step(steps: Sequence[int], step: int) -> bool:
    return step >= len(steps)


def needs_rollout(rollout: Rollout) -> bool:
    """False when the spec asks for nothing but all traffic at once (the default): serve the
    new model directly, as if there were no rollout."""
    return rollout.shadow is not None or bool(rollout.metrics) or list(rollout.steps) != [100]


# -- templates -------------------------------------------------------------------------------------

#: What a degradation trigger's query may name: the serving model, not a candidate.
DEGRADATION_VARIABLES = ("stable", "namespace", "interval")

_TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class TemplateError(ValueError):
    pass


def template_names(template: str) -> list[str]:
    """The variables a query names, in order; ``{{ x }}`` with an unknown x included."""
    return _TEMPLATE.findall(template)


def unknown_variables(template: str, allowed: Sequence[str] = TEMPLATE_VARIABLES) -> list[str]:
    return [name for name in template_names(template) if name not in allowed]


def resolve(template: str, values: Mapping[str, str]) -> str:
    """Fills ``{{ name }}`` in; an unknown name raises :class:`TemplateError`."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise TemplateError(f"unknown variable {{{{ {name} }}}} in {template!r}")
        return values[name]

    return _TEMPLATE.sub(fill, template)


@dataclass(frozen=True)
class Builtins:
    """Query templates of the router's own metrics, in the same variables as a user's query.

    ``requests`` counts the candidate's answers in the window (the samples of every verdict);
    ``success_rate`` is their share without a server error; ``latency_p99`` in seconds. The
    shadow ones measure mirrored requests: how many, the share whose predicted class differs
    from the stable model's, and the candidate's p99 latency on them."""

    requests: str
    success_rate: str
    latency_p99: str
    shadow_requests: str
    shadow_disagreement: str
    shadow_latency_p99: str


@dataclass(frozen=True)
class Targets:
    """What ``{{ canary }}`` and ``{{ stable }}`` stand for, as the router names them in its
    metrics, and the router's built-in queries."""

    namespace: str
    canary: str
    stable: str
    builtins: Builtins


QueryRole = Literal["value", "stable", "samples"]


@dataclass(frozen=True)
class PlannedQuery:
    """One query an analysis needs; the observer runs ``query`` and reports by that text."""

    metric: str
    role: QueryRole
    query: str


@dataclass(frozen=True)
class _Check:
    """One thing an analysis judges, before its queries are resolved."""

    metric: str
    template: str
    min: float | None = None
    max: float | None = None
    relative: bool = False
    max_increase: float | None = None
    dry_run: bool = False
    samples_template: str = ""
    min_samples: int = 0


SAMPLES = "requests"


def _checks(phase: Phase, rollout: Rollout, builtins: Builtins) -> list[_Check]:
    if phase is Phase.SHADOWING:
        shadow = rollout.shadow
        if shadow is None:  # the spec lost its shadow mid-phase: judge requests only
            return [_requests(builtins.shadow_requests, 1)]
        samples = builtins.shadow_requests
        checks = [
            _requests(samples, shadow.min_requests),
            _Check(
                "disagreement",
                builtins.shadow_disagreement,
                max=shadow.max_disagreement,
                samples_template=samples,
                min_samples=shadow.min_requests,
            ),
        ]
        if shadow.max_latency_p99 is not None:
            checks.append(
                _Check(
                    "latency-p99",
                    builtins.shadow_latency_p99,
                    max=duration_seconds(shadow.max_latency_p99),
                    samples_template=samples,
                    min_samples=shadow.min_requests,
                )
            )
        return checks
    samples = builtins.requests
    checks = [_requests(samples, rollout.min_samples)]
    for metric in rollout.metrics:
        checks.append(
            _Check(
                metric.name,
                _template_of(metric, builtins),
                min=metric.min,
                max=metric.max,
                relative=metric.relative_to == "stable",
                max_increase=metric.max_increase,
                dry_run=metric.dry_run,
                samples_template=samples,
                min_samples=rollout.min_samples,
            )
        )
    return checks


def _requests(template: str, least: int) -> _Check:
    # Too few requests is no verdict yet (inconclusive), never a failure of the candidate.
    return _Check(SAMPLES, template, samples_template=template, min_samples=least)


def _template_of(metric: RolloutMetric, builtins: Builtins) -> str:
    if metric.query is not None:
        return metric.query
    if metric.name == "success-rate":
        return builtins.success_rate
    if metric.name == "latency-p99":
        return builtins.latency_p99
    raise TemplateError(f"metric {metric.name!r} has no query and is not one of {BUILTIN_METRICS}")


def _values(targets: Targets, interval: str, *, for_stable: bool = False) -> dict[str, str]:
    return {
        "canary": targets.stable if for_stable else targets.canary,
        "stable": targets.stable,
        "namespace": targets.namespace,
        "interval": interval,
    }


def analysis_queries(state: RolloutState, rollout: Rollout, targets: Targets) -> list[PlannedQuery]:
    """The resolved queries the next analysis needs (empty unless Shadowing or Progressing)."""
    phase = Phase(state.phase)
    if phase not in LIVE:
        return []
    planned: list[PlannedQuery] = []
    values = _values(targets, rollout.interval)
    for check in _checks(phase, rollout, targets.builtins):
        planned.append(PlannedQuery(check.metric, "value", resolve(check.template, values)))
        if check.relative:
            stable = resolve(check.template, _values(targets, rollout.interval, for_stable=True))
            planned.append(PlannedQuery(check.metric, "stable", stable))
        if check.samples_template:
            samples = resolve(check.samples_template, values)
            planned.append(PlannedQuery(check.metric, "samples", samples))
    unique: dict[str, PlannedQuery] = {}
    for query in planned:
        unique.setdefault(query.query, query)
    return list(unique.values())


# -- verdicts --------------------------------------------------------------------------------------


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def verdict(
    value: float | None,
    *,
    min: float | None = None,
    max: float | None = None,
    samples: float | None = None,
    min_samples: int = 0,
    stable: float | None = None,
    max_increase: float | None = None,
    relative: bool = False,
    error: str | None = None,
) -> Judgement:
    """Pass, fail or inconclusive, with the reason. No data, too few requests and an error are
    inconclusive: none of them is ever a pass. A NaN is no data."""
    if error is not None:
        return Judgement(Verdict.INCONCLUSIVE, f"query failed: {error}")
    if min_samples > 0:
        count = _number(samples)
        if count is None:
            return Judgement(Verdict.INCONCLUSIVE, "no requests in the interval")
        if count < min_samples:
            return Judgement(
                Verdict.INCONCLUSIVE,
                f"{_fmt(count)} requests, fewer than the {min_samples} a verdict needs",
            )
    number = _number(value)
    if number is None:
        return Judgement(Verdict.INCONCLUSIVE, "no data")
    if min is not None and number < min:
        return Judgement(Verdict.FAIL, f"{_fmt(number)} < min {_fmt(min)}")
    if max is not None and number > max:
        return Judgement(Verdict.FAIL, f"{_fmt(number)} > max {_fmt(max)}")
    if relative:
        base = _number(stable)
        if base is None:
            return Judgement(Verdict.INCONCLUSIVE, "no data for the stable model")
        increase = number - base
        allowed = max_increase or 0.0
        if increase > allowed:
            return Judgement(
                Verdict.FAIL,
                f"{_fmt(number)} exceeds stable {_fmt(base)} by {_fmt(increase)} "
                f"> maxIncrease {_fmt(allowed)}",
            )
        return Judgement(
            Verdict.PASS, f"{_fmt(number)} vs stable {_fmt(base)} (+{_fmt(increase)} allowed)"
        )
    bounds = [f">= {_fmt(min)}"] if min is not None else []
    bounds += [f"<= {_fmt(max)}"] if max is not None else []
    return Judgement(Verdict.PASS, " ".join([_fmt(number), " and ".join(bounds)]).strip())


# -- status ----------------------------------------------------------------------------------------

MAX_ANALYSES_PER_STEP = 10
MAX_STEPS = 22  # shadow + 20 steps + one spare after a spec change
MAX_REASON = 1024

VerdictName = Literal["pass", "fail", "inconclusive"]
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


class AnalysisResult(Model):
    """One metric of one analysis, with the numbers behind its verdict."""

    metric: str = Field(max_length=128, description="The metric (requests: the sample count).")
    query: str = Field(default="", max_length=MAX_QUERY, description="The query, resolved.")
    value: float | None = Field(default=None, description="Its value; none: no data.")
    stable_value: float | None = Field(
        default=None, description="The stable model's value (relativeTo: stable)."
    )
    samples: float | None = Field(
        default=None, description="Requests the candidate answered in the interval."
    )
    verdict: VerdictName = Field(description="pass, fail or inconclusive.")
    reason: str = Field(default="", max_length=MAX_REASON, description="Why, with the numbers.")
    dry_run: bool = Field(default=False, description="Recorded only; not acted on.")


class Analysis(Model):
    """One interval's analysis: the verdict of every metric and the outcome."""

    at: str = Field(max_length=64, description="When (RFC 3339).")
    verdict: VerdictName = Field(description="pass, fail or inconclusive, over every metric.")
    results: list[AnalysisResult] = Field(
        default_factory=list, max_length=64, description="Every metric's verdict."
    )


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
class QueryResult:
    """One query's answer: a number, no data (None), or an error (never a pass)."""

    value: float | None = None
    error: str | None = None


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


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def analysis_due(state: RolloutState, rollout: Rollout, now: dt.datetime) -> bool:
    """True when the observer should run :func:`analysis_queries` and report the results:
    Shadowing or Progressing, and one interval since the step began or the last analysis."""
    if Phase(state.phase) not in LIVE:
        return False
    since = state.last_analysis_at or state.step_started_at or state.started_at
    return now >= _time(since) + dt.timedelta(seconds=duration_seconds(rollout.interval))


def analyse(
    state: RolloutState,
    rollout: Rollout,
    targets: Targets,
    results: Mapping[str, QueryResult] | None,
    now: dt.datetime,
    prometheus_online: bool = True,
) -> Analysis:
    """Every check of the current phase judged from the query results."""
    phase = Phase(state.phase)
    values = _values(targets, rollout.interval)
    out: list[AnalysisResult] = []
    for check in _checks(phase, rollout, targets.builtins):
        query = resolve(check.template, values)
        if not prometheus_online or results is None:
            out.append(
                AnalysisResult(
                    metric=check.metric,
                    query=query,
                    verdict="inconclusive",
                    reason="Prometheus unreachable",
                    dry_run=check.dry_run,
                )
            )
            continue
        got = results.get(query, QueryResult(error="not queried"))
        stable = QueryResult()
        if check.relative:
            stable_query = resolve(
                check.template, _values(targets, rollout.interval, for_stable=True)
            )
            stable = results.get(stable_query, QueryResult(error="not queried"))
        samples = QueryResult()
        if check.samples_template:
            samples = results.get(
                resolve(check.samples_template, values), QueryResult(error="not queried")
            )
        error = got.error or stable.error or samples.error
        judged = verdict(
            got.value,
            min=check.min,
            max=check.max,
            samples=samples.value,
            min_samples=check.min_samples,
            stable=stable.value,
            max_increase=check.max_increase,
            relative=check.relative,
            error=error,
        )
        out.append(
            AnalysisResult(
                metric=check.metric,
                query=query,
                value=_number(got.value),
                stable_value=_number(stable.value) if check.relative else None,
                samples=_number(samples.value if check.samples_template else got.value),
                verdict=judged.verdict.value,
                reason=judged.reason[:MAX_REASON],
                dry_run=check.dry_run,
            )
        )
    return Analysis(at=_iso(now), verdict=overall(out).value, results=out)


def overall(results: Sequence[AnalysisResult]) -> Verdict:
    """Any failure fails; else anything inconclusive holds; dry runs count for nothing. An
    analysis with nothing to judge is inconclusive: nothing is never a pass."""
    acting = [r for r in results if not r.dry_run]
    if any(r.verdict == "fail" for r in acting):
        return Verdict.FAIL
    if not acting or any(r.verdict == "inconclusive" for r in acting):
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


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
        return Seen.NEVER_READY if now - _time(state.started_at) >= deadline else Seen.NOT_READY
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
        since = _time(state.holding_since) if state.holding_since else now
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
    candidate: str, stable: str | None, now: dt.datetime
) -> tuple[RolloutState, list[Intent]]:
    """A new rollout of ``candidate`` next to ``stable``: the candidate is deployed with no
    traffic, and the rollout waits for it to be ready."""
    state = RolloutState(
        phase=Phase.INITIALIZING.value,
        candidate=candidate,
        stable=stable,
        started_at=_iso(now),
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
            state,
            rollout,
            observation.targets,
            observation.results,
            now,
            observation.prometheus_online,
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
    if analysis is not None and seen is not Seen.HOLD and seen in _ANALYSIS:
        new = replace_state(new, holding_since=None)
    changes: dict[str, object] = {"phase": next_phase.value}
    if next_phase in TERMINAL and phase not in TERMINAL:
        changes["finished_at"] = _iso(now)
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
    now = _iso(observation.now)
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


# -- the degradation trigger -----------------------------------------------------------------------


class DegradationWatch(Model):
    """What the degradation trigger remembers between evaluations (kept in status)."""

    since: str | None = Field(
        default=None, max_length=64, description="Since when the condition has held."
    )
    last_fired: str | None = Field(
        default=None, max_length=64, description="When it last started a run."
    )


def degradation_query(trigger: Degradation, targets: Targets) -> str:
    """The trigger's query with the serving model's names filled in."""
    values = {"stable": targets.stable, "namespace": targets.namespace}
    values["interval"] = trigger.interval
    return resolve(trigger.query, values)


def watch_degradation(
    watch: DegradationWatch,
    trigger: Degradation,
    holds: bool | None,
    run_active: bool,
    now: dt.datetime,
) -> tuple[DegradationWatch, bool]:
    """One evaluation of ``triggers.onDegradation``: the new memory, and whether to start a run.

    ``holds`` is whether the query returned a sample (an alert's expression holds), or None when
    it could not be evaluated (Prometheus down, a query error): that is no evidence either way,
    so nothing changes and nothing fires. A run starts when the condition has held for ``for``,
    no run is in flight, and the last one started at least ``cooldown`` ago; after it, the
    condition must hold for ``for`` again."""
    if holds is None:
        return watch, False
    if not holds:
        return watch.model_copy(update={"since": None}), False
    since = _time(watch.since) if watch.since else now
    held = now - since >= dt.timedelta(seconds=duration_seconds(trigger.for_))
    cooled = watch.last_fired is None or now - _time(watch.last_fired) >= dt.timedelta(
        seconds=duration_seconds(trigger.cooldown)
    )
    if held and cooled and not run_active:
        return DegradationWatch(since=None, last_fired=_iso(now)), True
    return watch.model_copy(update={"since": _iso(since)}), False
