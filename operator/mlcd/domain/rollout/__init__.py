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

Modules: :mod:`.table` (phases, what is seen, the table, step arithmetic), :mod:`.analysis`
(query templates, checks, verdicts), :mod:`.machine` (the state, intents, observations,
:func:`advance`), :mod:`.degradation` (the degradation trigger's debounce).
"""

from __future__ import annotations

from mlcd.domain.rollout.analysis import (
    DEGRADATION_VARIABLES,
    Analysis,
    AnalysisResult,
    Builtins,
    Judgement,
    PlannedQuery,
    QueryResult,
    Targets,
    TemplateError,
    Verdict,
    analyse,
    iso,
    overall,
    parse_time,
    planned_queries,
    resolve,
    template_names,
    unknown_variables,
    verdict,
)
from mlcd.domain.rollout.degradation import (
    DegradationWatch,
    degradation_query,
    watch_degradation,
)
from mlcd.domain.rollout.machine import (
    Controls,
    DeployCandidate,
    Intent,
    Observation,
    PostEvent,
    RecordAnalysis,
    RemoveCandidate,
    RolloutState,
    RouterView,
    ServeStable,
    SetMirror,
    SetWeights,
    StepRecord,
    advance,
    analysis_due,
    analysis_queries,
    classify,
    start,
)
from mlcd.domain.rollout.table import (
    HELD,
    IMPOSSIBLE,
    LIVE,
    TERMINAL,
    TRANSITIONS,
    Act,
    Phase,
    Seen,
    Transition,
    is_last_step,
    needs_rollout,
    step_weight,
    transition,
)

__all__ = [
    "DEGRADATION_VARIABLES",
    "HELD",
    "IMPOSSIBLE",
    "LIVE",
    "TERMINAL",
    "TRANSITIONS",
    "Act",
    "Analysis",
    "AnalysisResult",
    "Builtins",
    "Controls",
    "DegradationWatch",
    "DeployCandidate",
    "Intent",
    "Judgement",
    "Observation",
    "Phase",
    "PlannedQuery",
    "PostEvent",
    "QueryResult",
    "RecordAnalysis",
    "RemoveCandidate",
    "RolloutState",
    "RouterView",
    "Seen",
    "ServeStable",
    "SetMirror",
    "SetWeights",
    "StepRecord",
    "Targets",
    "TemplateError",
    "Transition",
    "Verdict",
    "advance",
    "analyse",
    "analysis_due",
    "analysis_queries",
    "classify",
    "degradation_query",
    "is_last_step",
    "iso",
    "needs_rollout",
    "overall",
    "parse_time",
    "planned_queries",
    "resolve",
    "start",
    "step_weight",
    "template_names",
    "transition",
    "unknown_variables",
    "verdict",
    "watch_degradation",
]
