"""How a model that passed its gate reaches its users: served at once, or rolled out step by
step (:mod:`mlcd.domain.rollout`'s table) — and what the rollout's outcome does to serving.

The decide step calls :func:`begin` when a run's model is to be promoted, :func:`step` while
its rollout runs, and :func:`settle` at every pass for what is left when no run is rolling out:
a finished rollout whose routes drifted, or a ``rollbackTo`` to an earlier version.
"""

from __future__ import annotations

from mlcd.domain import rollout as ro
from mlcd.domain.intents import Intent, Notice, Post, Promote, Replay
from mlcd.domain.observations import Observations
from mlcd.domain.records import ModelRef, ServingRecord
from mlcd.domain.spec import Rollout
from mlcd.domain.status import CurrentRun, ModelPipelineStatus


def rolls_out(seen: Observations, serving: ServingRecord | None) -> bool:
    """A new model is rolled out when the spec asks for more than all traffic at once and a
    model serves to compare with; the first model of a pipeline is served at once."""
    spec = seen.pipeline.spec
    return spec is not None and serving is not None and ro.needs_rollout(spec.serving.rollout)


def _intents(produced: list[ro.Intent]) -> list[Intent]:
    out: list[Intent] = []
    for intent in produced:
        if isinstance(intent, ro.PostEvent):
            out.append(Post(Notice(intent.type, intent.reason, intent.message)))
        else:
            out.append(intent)
    return out


def _replay(spec: Rollout, state: ro.RolloutState, seen: Observations) -> list[Intent]:
    """Replayed traffic runs while the rollout is live and stops when it ends. Decided from
    what runs now, not from the change of phase: a process that restarts mid-rollout (an
    operator killed, ``mlcd promote`` driving what ``mlcd run`` left) starts it again."""
    replaying = seen.rollout is not None and seen.rollout.replaying
    live = {p.value for p in (*ro.LIVE, *ro.HELD, ro.Phase.INITIALIZING)}
    wanted = spec.traffic is not None and state.phase in live
    if wanted and not replaying:
        assert spec.traffic is not None
        return [Replay(spec.traffic.rate)]
    if replaying and not wanted:
        return [Replay(None)]
    return []


def begin(
    seen: Observations,
    run: CurrentRun,
    model: ModelRef,
    metrics: dict[str, float],
    serving: ServingRecord | None,
) -> tuple[ro.RolloutState | None, list[Intent]]:
    """The model of ``run`` is to be promoted: its rollout starts, or it is served at once."""
    spec = seen.pipeline.spec
    if spec is None or serving is None or not rolls_out(seen, serving):
        return None, [Promote(run, model, metrics)]
    state, produced = ro.start(model.version, serving.version, seen.now, run=run.id)
    return state, [*_intents(produced), *_replay(spec.serving.rollout, state, seen)]


def _observation(seen: Observations, rollout: Rollout) -> ro.Observation | None:
    view = seen.rollout
    if view is None:
        return None
    return ro.Observation(
        now=seen.now,
        router=view.router,
        targets=view.targets,
        controls=ro.Controls.of(rollout),
        results=view.results,
        prometheus_online=view.prometheus_online,
    )


def step(
    state: ro.RolloutState, seen: Observations, abort: bool = False
) -> tuple[ro.RolloutState, list[Intent]]:
    """One step of a rollout in progress (``abort``: its run was cancelled: back to stable)."""
    spec = seen.pipeline.spec
    if spec is None:
        return state, []
    rollout = spec.serving.rollout
    if abort:
        rollout = rollout.model_copy(update={"abort": True})
    observation = _observation(seen, rollout)
    if observation is None:
        return state, []  # nothing observed this pass: nothing decided
    new, produced = ro.advance(state, rollout, observation)
    return new, [*_intents(produced), *_replay(rollout, new, seen)]


def settle(
    status: ModelPipelineStatus, seen: Observations
) -> tuple[ModelPipelineStatus, list[Intent]]:
    """With no rollout in progress: a finished rollout whose routes drifted is put right, and
    ``rollbackTo`` serves the version it names (from the repository, no analysis). The status
    says a version serves once its server reports it."""
    spec = seen.pipeline.spec
    serving = status.serving
    if spec is None or serving is None or seen.rollout is None:
        return status, []
    state = status.rollout
    older = seen.older
    reported = seen.serving.ref if seen.serving is not None else None
    if (
        state is not None
        and state.stable not in (None, serving.version)
        and older is not None
        and older.version == state.stable
        and reported is not None
        and (reported.version, reported.sha256) == (older.version, older.sha256)
    ):
        serving = older.model_copy(update={"url": seen.serving.url if seen.serving else None})
        status = status.model_copy(update={"serving": serving})
    wanted = spec.serving.rollout.rollback_to
    if state is None:
        if wanted is None or wanted == serving.version:
            return status, []
        # Models served at once before: the rollback is a finished rollout's step all the same.
        state = ro.RolloutState(
            phase=ro.Phase.PROMOTED.value,
            candidate=serving.version,
            stable=serving.version,
            started_at=ro.iso(seen.now),
        )
    if state.phase not in {p.value for p in ro.TERMINAL}:
        return status, []
    if wanted is not None and wanted != state.stable and (older is None or older.version != wanted):
        return status, []  # the older model's record is not known yet: look again next pass
    new, produced = step(state, seen)
    if new != status.rollout and (status.rollout is not None or produced):
        status = status.model_copy(update={"rollout": new})
    return status, produced
