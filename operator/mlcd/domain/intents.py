"""What the decide step asks the executor to do, in order. Each intent is idempotent: carried
out twice (a crash, a retried pass) it does nothing more than once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mlcd.domain.records import ModelRef, ServingRecord
from mlcd.domain.rollout import (
    DeployCandidate,
    RecordAnalysis,
    RemoveCandidate,
    ServeStable,
    SetMirror,
    SetWeights,
)
from mlcd.domain.status import CurrentRun, RunSummary


@dataclass(frozen=True)
class Notice:
    """A Kubernetes Event to post (and a line in the log)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Post:
    notice: Notice


@dataclass(frozen=True)
class Submit:
    """Start the run in its engine (the same id and attempt twice starts nothing new)."""

    run: CurrentRun
    #: The model serving when it starts: the gate and the drift check compare with it.
    baseline: ServingRecord | None


@dataclass(frozen=True)
class Cancel:
    """Stop the run in its engine, every attempt of it."""

    run: CurrentRun
    reason: str


@dataclass(frozen=True)
class Promote:
    """Serve the run's exported model (verified by its sha256)."""

    run: CurrentRun
    model: ModelRef
    metrics: dict[str, float]


@dataclass(frozen=True)
class Finished:
    """The run is over: keep its record with the final result, count it."""

    run: CurrentRun
    summary: RunSummary


@dataclass(frozen=True)
class Started:
    """A run was submitted: count it."""

    run: CurrentRun


@dataclass(frozen=True)
class ForgetCredentials:
    """Remove the run's credential files."""

    run: str


@dataclass(frozen=True)
class StopServing:
    """The pipeline is deleted: stop what serves it (artifacts stay)."""


@dataclass(frozen=True)
class Replay:
    """Replay the holdout's samples against the serving endpoint while a rollout is analysed
    (``spec.serving.rollout.traffic``), or stop (``rate`` None)."""

    rate: float | None


#: The rollout's own intents (:mod:`mlcd.domain.rollout`) are carried out by the same executor.
RolloutIntent = DeployCandidate | SetWeights | SetMirror | ServeStable | RemoveCandidate
Intent = (
    Post
    | Submit
    | Cancel
    | Promote
    | Finished
    | Started
    | ForgetCredentials
    | StopServing
    | Replay
    | RolloutIntent
    | RecordAnalysis
)
