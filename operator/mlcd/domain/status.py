"""The ModelPipeline's status: the only state the operator keeps, written to the resource.

It stays small: the runs in progress, the model serving, and the last runs as summaries with
the numbers behind each decision. A run's full record (data report, every gate check,
timings, trials) lives beside the model in the repository, linked from its summary.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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
from mlcd.domain.spec import Model

Phase = Literal["Pending", "Running", "Ready", "Failed", "Invalid", "Suspended", "Deleting"]
ConditionType = Literal["Ready", "Training", "Gated", "Degraded", "SpecValid", "Deleting"]

#: Longest reason kept in status; the full text is in the run's record.
MAX_REASON = 512
#: Most parameters and metrics a summary keeps.
MAX_VALUES = 32


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
    last_transition_time: str | None = Field(
        default=None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="The resource's generation this condition was computed for."
    )


class CurrentRun(Model):
    """The run in progress: enough to find it again after a restart."""

    id: str = Field(description="The run's id, derived from its trigger.")
    trigger: str = Field(description="What started it: schedule, new-data or manual.")
    stage: Stage = Field(default="validate", description="The stage it is at.")
    started_at: str = Field(description="When it started (RFC 3339).")
    attempt: int = Field(default=1, ge=1, description="Attempt number of this run.")
    engine: str = Field(default="local", description="The engine running it.")
    message: str | None = Field(
        default=None,
        max_length=MAX_REASON,
        description="What holds it up now, e.g. serving it is retried after a store outage.",
    )
    children: dict[str, str] = Field(
        default_factory=dict,
        description="Objects the engine created for it, by kind (e.g. kfpRun, experiment).",
    )


class GateSummary(Model):
    """The gate's decision with its numbers (every check is in the run's record)."""

    passed: bool = Field(description="Whether the model may replace the serving one.")
    metric: str = Field(description="The gate's metric.")
    value: float | None = Field(default=None, description="The candidate's value of it.")
    min: float | None = Field(default=None, description="The gate's lower bound.")
    max: float | None = Field(default=None, description="The gate's upper bound.")
    baseline_value: float | None = Field(
        default=None, description="The serving model's value of the metric."
    )
    baseline_version: str | None = Field(default=None, description="The version that was serving.")
    regression: float | None = Field(
        default=None, description="How much worse than the serving model the candidate is."
    )
    reason: str = Field(description="The decision in one line.")


class DataSummary(Model):
    """What the data check found, in short."""

    ok: bool = Field(description="Whether the data could be trained on.")
    samples: int = Field(default=0, description="Number of samples.")
    drift: dict[str, float] = Field(
        default_factory=dict, description="feature-psi and label-psi against the serving model."
    )
    version: str | None = Field(default=None, description="The data's version or ETag.")


class RunSummary(Model):
    """A finished run: what started it, what was decided and the numbers behind it."""

    id: str = Field(description="The run's id.")
    trigger: str = Field(default="manual", description="schedule, new-data or manual.")
    result: FinalResult = Field(
        description="promoted, exported (passed its gate, not served), rejected, failed or "
        "cancelled."
    )
    stage: Stage = Field(default="validate", description="The last stage it reached.")
    reason: str | None = Field(
        default=None, max_length=MAX_REASON, description="Why it ended so, in short."
    )
    started_at: str | None = Field(default=None, description="When it started (RFC 3339).")
    finished_at: str | None = Field(default=None, description="When it ended (RFC 3339).")
    attempt: int = Field(default=1, ge=1, description="Attempts it took.")
    params: dict[str, str | float | int] = Field(
        default_factory=dict, description="The hyperparameters trained with."
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="The evaluation's metrics.")
    gate: GateSummary | None = Field(default=None, description="The gate's verdict.")
    model: ModelRef | None = Field(default=None, description="The model it exported.")
    data: DataSummary | None = Field(default=None, description="What the data check found.")
    record: str | None = Field(
        default=None, description="Where the run's full record is (data report, checks, timings)."
    )
    children: dict[str, str] = Field(
        default_factory=dict,
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
        children=dict(list(record.children.items())[:MAX_VALUES]),
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
        description="Ready, Training, Gated, Degraded, SpecValid and, while it is deleted, "
        "Deleting.",
    )
    last_schedule_time: str | None = Field(
        default=None, description="The last time a scheduled run was due (CronJob's meaning)."
    )
    next_schedule_time: str | None = Field(
        default=None, description="When the schedule next starts a run (RFC 3339, UTC)."
    )
    active_runs: list[CurrentRun] = Field(
        default_factory=list, description="Runs in progress (more than one only with Allow)."
    )
    runs: list[RunSummary] = Field(
        default_factory=list, description="The last historyLimit runs, oldest first."
    )
    serving: ServingRecord | None = Field(default=None, description="The model now serving.")
    rollout: RolloutState | None = Field(
        default=None,
        description="The last progressive rollout: its phase, step, weights, every analysis.",
    )
    degradation: DegradationWatch | None = Field(
        default=None, description="What the degradation trigger remembers between looks."
    )
    last_metric: str | None = Field(
        default=None, description="The gate metric of the last finished run, e.g. accuracy=0.977."
    )
    dataset_version: str | None = Field(
        default=None, description="Identity of the data the last run used (version, ETag, hash)."
    )
    handled_trigger: str | None = Field(
        default=None, description="The last on-demand trigger annotation value acted on."
    )
