"""The rollout's phases, what an observation can be, and the one transition table between them;
step arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from mlcd.domain.spec import Rollout

# -- phases and what is seen -----------------------------------------------------------------------


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

ANALYSIS = {
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
        elif _seen in ANALYSIS:
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
