"""The ModelPipeline's status: the only state the operator keeps, written to the resource.

It stays small: the runs in progress, the model serving, and the last runs as summaries with
the numbers behind each decision. A run's full record (data report, every gate check,
timings, trials) lives beside the model in the repository, linked from its summary.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlcd.domain.bounds import MAX_BRIEF, Brief, Identity, Name, Short, Time, Uri, Value
from mlcd.domain.numbers import Metric
from mlcd.domain.records import (
    DataReport,
    FinalResult,
    GateVerdict,
    ModelRef,
    RunRecord,
    ServingRecord,
    Stage,
)
from mlcd.domain.rollout import DegradationWatch, RolloutState
from mlcd.domain.spec import MAX_HISTORY, Model

Phase = Literal["Pending", "Running", "Ready", "Failed", "Invalid", "Suspended", "Deleting"]
ConditionType = Literal["Ready", "Training", "Gated", "Degraded", "SpecValid", "Deleting"]
MAX_CONDITIONS = 16
MAX_ACTIVE_RUNS = 100

#: Longest reason kept in status; the full text is in the run's record.
MAX_REASON = MAX_BRIEF
#: Most parameters and metrics a summary keeps.
MAX_VALUES = 32
#: Most objects a run's summary names (a KFP run, an Experiment, a training job).
MAX_CHILDREN = 8


class Condition(Model):
    """Kubernetes' condition shape."""

    type: ConditionType = Field(
        description="Ready, Training, Gated, Degraded, SpecValid or Deleting."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        max_length=1024,
        description="Why, in one CamelCase word (e.g. GatePassed, InvalidSpec).",
    )
    message: str = Field(default="", max_length=32768, description="Why, for a person.")
    last_transition_time: Time | None = Field(
        default=None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The resource's generation this condition was computed for."
    )


class CurrentRun(Model):
    """The run in progress: enough to find it again after a restart."""

    id: Name = Field(description="The run's id, derived from its trigger.")
    trigger: Short = Field(description="What started it: schedule, new-data or manual.")
    stage: Stage = Field(default="validate", description="The stage it is at.")
    started_at: Time = Field(description="When it started (RFC 3339).")
    attempt: int = Field(default=1, ge=1, description="Attempt number of this run.")
    engine: Short = Field(default="local", description="The engine running it.")
    message: Brief | None = Field(
        default=None,
        description="What holds it up now, e.g. serving it is retried after a store outage.",
    )
    children: dict[str, Name] = Field(
        default_factory=dict,
        max_length=MAX_CHILDREN,
        description="Objects the engine created for it, by kind (e.g. kfpRun, experiment).",
    )


class GateSummary(Model):
    """The gate's decision with its numbers (every check is in the run's record)."""

    passed: bool = Field(description="Whether the model may replace the serving one.")
    metric: Short = Field(description="The gate's metric.")
    value: Metric | None = Field(default=None, description="The candidate's value of it.")
    min: Metric | None = Field(default=None, description="The gate's lower bound.")
    max: Metric | None = Field(default=None, description="The gate's upper bound.")
    baseline_value: Metric | None = Field(
        default=None, description="The serving model's value of the metric."
    )
    baseline_version: Short | None = Field(
        default=None, description="The version that was serving."
    )
    regression: Metric | None = Field(
        default=None, description="How much worse than the serving model the candidate is."
    )
    reason: Brief = Field(description="The decision in one line.")


class DataSummary(Model):
    """What the data check found, in short."""

    ok: bool = Field(description="Whether the data could be trained on.")
    samples: int = Field(default=0, description="Number of samples.")
    drift: dict[str, Metric] = Field(
        default_factory=dict,
        max_length=8,
        description="feature-psi and label-psi against the serving model.",
    )
    version: Identity | None = Field(default=None, description="The data's version or ETag.")


class RunSummary(Model):
    """A finished run: what started it, what was decided and the numbers behind it."""

    id: Name = Field(description="The run's id.")
    trigger: Short = Field(default="manual", description="schedule, new-data or manual.")
    result: FinalResult = Field(
        description="promoted, exported (passed its gate, not served), rejected, failed or "
        "cancelled."
    )
    stage: Stage = Field(default="validate", description="The last stage it reached.")
    reason: Brief | None = Field(default=None, description="Why it ended so, in short.")
    started_at: Time | None = Field(default=None, description="When it started (RFC 3339).")
    finished_at: Time | None = Field(default=None, description="When it ended (RFC 3339).")
    attempt: int = Field(default=1, ge=1, description="Attempts it took.")
    params: dict[str, str | float | int] = Field(
        default_factory=dict, max_length=MAX_VALUES, description="The hyperparameters trained with."
    )
    metrics: dict[str, Metric] = Field(
        default_factory=dict, max_length=MAX_VALUES, description="The evaluation's metrics."
    )
    gate: GateSummary | None = Field(default=None, description="The gate's verdict.")
    model: ModelRef | None = Field(default=None, description="The model it exported.")
    data: DataSummary | None = Field(default=None, description="What the data check found.")
    record: Uri | None = Field(
        default=None, description="Where the run's full record is (data report, checks, timings)."
    )
    children: dict[str, Name] = Field(
        default_factory=dict,
        max_length=MAX_CHILDREN,
        description="What the run created in other systems, by kind (kfpRun, experiment, "
        "trainJob, pyTorchJob); empty for the local engine.",
    )


def _short(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_REASON:
        return text
    return text[: MAX_REASON - 20] + " … (see the record)"


def _gate(verdict: GateVerdict | None) -> GateSummary | None:
    if verdict is None:
        return None
    return GateSummary(
        passed=verdict.passed,
        metric=verdict.metric,
        value=verdict.value,
        min=verdict.min,
        max=verdict.max,
        baseline_value=verdict.baseline_value,
        baseline_version=verdict.baseline_version,
        regression=verdict.regression,
        reason=_short(verdict.reason) or "",
    )


def _data(report: DataReport | None) -> DataSummary | None:
    if report is None:
        return None
    return DataSummary(
        ok=report.ok, samples=report.samples, drift=report.drift, version=report.version
    )


def summarize(
    record: RunRecord, result: FinalResult, attempt: int = 1, link: str | None = None
) -> RunSummary:
    """The status's short form of a full run record."""
    return RunSummary(
        id=record.id,
        trigger=record.trigger,
        result=result,
        stage=record.stage,
        reason=_short(record.reason),
        started_at=record.started_at,
        finished_at=record.finished_at,
        attempt=attempt,
        params=dict(list(record.params.items())[:MAX_VALUES]),
        metrics=dict(list(record.metrics.items())[:MAX_VALUES]),
        gate=_gate(record.gate),
        model=record.model,
        data=_data(record.data),
        record=link,
        children=dict(list(record.children.items())[:MAX_CHILDREN]),
    )


class ModelPipelineStatus(Model):
    """What the operator observed and decided; written only by it."""

    phase: Phase = Field(
        default="Pending",
        description="Pending, Running, Ready (a model serves), Failed (the last run failed or "
        "was rejected, nothing serves), Invalid (see SpecValid), Suspended or Deleting.",
    )
    observed_generation: int | None = Field(
        default=None, description="The generation of the spec the operator last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        description="Ready, Training, Gated, Degraded, SpecValid and, while it is deleted, "
        "Deleting.",
    )
    last_schedule_time: Time | None = Field(
        default=None, description="The last time a scheduled run was due (CronJob's meaning)."
    )
    next_schedule_time: Time | None = Field(
        default=None, description="When the schedule next starts a run (RFC 3339, UTC)."
    )
    active_runs: list[CurrentRun] = Field(
        default_factory=list,
        max_length=MAX_ACTIVE_RUNS,
        description="Runs in progress (more than one only with Allow).",
    )
    runs: list[RunSummary] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description="The last historyLimit runs, oldest first.",
    )
    serving: ServingRecord | None = Field(default=None, description="The model now serving.")
    rollout: RolloutState | None = Field(
        default=None,
        description="The last progressive rollout: its phase, step, weights, every analysis.",
    )
    degradation: DegradationWatch | None = Field(
        default=None, description="What the degradation trigger remembers between looks."
    )
    last_metric: Identity | None = Field(
        default=None, description="The gate metric of the last finished run, e.g. accuracy=0.977."
    )
    dataset_version: Identity | None = Field(
        default=None, description="Identity of the data the last run used (version, ETag, hash)."
    )
    handled_trigger: Value | None = Field(
        default=None, description="The last on-demand trigger annotation value acted on."
    )
