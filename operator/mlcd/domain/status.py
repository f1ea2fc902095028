"""The ModelPipeline's status: the only state the operator keeps, written to the resource."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlcd.domain.bounds import Identity, Name, Short, Time, Value
from mlcd.domain.records import RunRecord, ServingRecord, Stage
from mlcd.domain.spec import MAX_HISTORY, Model

Phase = Literal["Pending", "Running", "Ready", "Failed", "Invalid", "Suspended"]
ConditionType = Literal["Ready", "Training", "Gated", "Degraded", "SpecValid"]
MAX_CONDITIONS = 16
MAX_ACTIVE_RUNS = 100


class Condition(Model):
    """Kubernetes' condition shape."""

    type: ConditionType = Field(description="Ready, Training, Gated, Degraded or SpecValid.")
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


class ModelPipelineStatus(Model):
    """What the operator observed and decided; written only by it."""

    phase: Phase = Field(
        default="Pending",
        description="Pending, Running, Ready (a model serves), Failed (the last run failed or "
        "was rejected, nothing serves), Invalid (see SpecValid) or Suspended.",
    )
    observed_generation: int | None = Field(
        default=None, description="The generation of the spec the operator last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        description="Ready, Training, Gated, Degraded and SpecValid.",
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
    runs: list[RunRecord] = Field(
        default_factory=list, max_length=MAX_HISTORY, description="The last historyLimit runs."
    )
    serving: ServingRecord | None = Field(default=None, description="The model now serving.")
    last_metric: Identity | None = Field(
        default=None, description="The gate metric of the last finished run, e.g. accuracy=0.977."
    )
    dataset_version: Identity | None = Field(
        default=None, description="Identity of the data the last run used (version, ETag, hash)."
    )
    handled_trigger: Value | None = Field(
        default=None, description="The last on-demand trigger annotation value acted on."
    )
