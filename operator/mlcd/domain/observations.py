"""What one pass of the loop observed: the only input of the decide step besides the status.

The observer gathers one bundle per pass from the ports (the engine, the serving target, the
dataset, the operator's capacity, the clock) and from the outcomes of the previous pass's
intents. Nothing here performs I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from mlcd.domain.records import ModelRef, RunRecord, ServingRecord
from mlcd.domain.rollout import QueryResult, RouterView, Targets
from mlcd.domain.spec import Gate, ModelPipelineSpec


@dataclass(frozen=True)
class PipelineView:
    """The resource as the decide step needs it."""

    namespace: str
    name: str
    #: The resource's uid: a deleted and recreated pipeline of the same name is another one.
    uid: str
    created: dt.datetime
    #: The valid spec, or None when ``problem`` says why it is not.
    spec: ModelPipelineSpec | None
    problem: str | None = None
    generation: int | None = None
    #: The engine runs of this pipeline use (``spec.engine`` or the operator's default).
    engine: str = "local"
    deleting: bool = False
    #: The value of the on-demand trigger (the ``mlcd.io/trigger`` annotation, or ``mlcd run``).
    trigger: str | None = None
    #: False on one machine (``mlcd run``): only the on-demand trigger starts runs.
    scheduling: bool = True
    #: Where the model repository is when ``spec.artifacts`` is not set.
    default_artifacts: str = ""


@dataclass(frozen=True)
class RunView:
    """The engine's view of one active run."""

    #: The engine's record; None when it has neither a live run nor a result (lost).
    record: RunRecord | None
    #: The gate the run was judged with (its own spec), for judging it again.
    gate: Gate | None = None
    #: False when the engine did not answer: the run's state is unknown, not lost.
    reachable: bool = True
    #: Why the engine did not answer.
    problem: str = ""


@dataclass(frozen=True)
class ServingView:
    """What the serving target itself reports, asked at every pass."""

    #: The server answers and is ready.
    ready: bool
    #: The version it reports serving (version and sha256 as the server says).
    ref: ModelRef | None = None
    url: str | None = None
    #: Why it is not ready, for the Ready condition.
    reason: str = ""


@dataclass(frozen=True)
class DatasetView:
    """The dataset's identity, when it was polled this pass."""

    version: str | None = None
    #: Why its identity could not be read (store unreachable, object missing).
    error: str | None = None


@dataclass(frozen=True)
class RolloutView:
    """What the router, the model servers and Prometheus report for the rollout this pass."""

    router: RouterView
    targets: Targets
    #: This interval's query results, when an analysis was due; None: none ran.
    results: Mapping[str, QueryResult] | None = None
    #: False: Prometheus did not answer when an analysis was due.
    prometheus_online: bool = True
    #: Replayed traffic (``rollout.traffic``) runs for the pipeline in this process now.
    replaying: bool = False


@dataclass(frozen=True)
class DegradationSample:
    """The degradation trigger's condition, evaluated this pass: it holds, it does not, or it
    could not be evaluated (None: no evidence either way)."""

    holds: bool | None


class Done(StrEnum):
    """Kinds of intents whose outcome the next pass needs to know."""

    SUBMIT = "submit"
    PROMOTE = "promote"
    CANCEL = "cancel"
    STOP_SERVING = "stop-serving"
    OTHER = "other"  # forgetting credentials, keeping a record: nothing waits on them


@dataclass(frozen=True)
class Outcome:
    """How an intent of the previous pass went, as the executor saw it."""

    kind: Done
    run: str | None
    ok: bool
    #: A backend was unreachable: the same intent may succeed later.
    temporary: bool = False
    message: str = ""


@dataclass(frozen=True)
class Observations:
    now: dt.datetime
    pipeline: PipelineView
    #: The engine's view of each run of ``status.activeRuns``, by run id.
    runs: Mapping[str, RunView] = field(default_factory=dict)
    #: What the serving target reports; None when nothing is served for this pipeline.
    serving: ServingView | None = None
    #: The dataset's identity when it was polled this pass, else None.
    dataset: DatasetView | None = None
    #: Runs this operator may still start now (across all pipelines).
    free_slots: int = 1_000_000
    #: The operator's limit of runs at once (for messages); None: no limit.
    max_active_runs: int | None = None
    outcomes: tuple[Outcome, ...] = ()
    #: Run ids the engine still runs for this pipeline, active in status or not.
    live_runs: tuple[str, ...] = ()
    #: Run ids whose credential files exist.
    credentials: tuple[str, ...] = ()
    #: The serving target still runs something for this pipeline (deletion waits for it).
    serving_running: bool = False
    #: Ctrl-C on one machine: stop what runs.
    interrupted: bool = False
    #: The router's and Prometheus' view, when a rollout is recorded (or rollbackTo is set).
    rollout: RolloutView | None = None
    #: The model of ``spec.serving.rollout.rollbackTo``, from the repository, when it is set.
    older: ServingRecord | None = None
    #: The degradation trigger's condition, when it was evaluated this pass.
    degradation: DegradationSample | None = None
