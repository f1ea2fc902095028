"""The ModelPipeline's status: the only state the operator keeps, written to the resource."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlcd.domain.records import RunRecord, ServingRecord, Stage
from mlcd.domain.spec import Model

Phase = Literal["Pending", "Running", "Ready", "Failed", "Invalid", "Suspended"]
ConditionType = Literal["Ready", "Training", "Gated", "Degraded", "SpecValid"]


class Condition(Model):
    """Kubernetes' condition shape."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = None


class CurrentRun(Model):
    """The run in progress: enough to find it again after a restart."""

    id: str
    trigger: str
    stage: Stage = "validate"
    started_at: str
    attempt: int = Field(default=1, ge=1)
    engine: str = "local"


class ModelPipelineStatus(Model):
    phase: Phase = "Pending"
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    last_schedule_time: str | None = Field(
        default=None, description="The last time a scheduled run was due (CronJob's meaning)."
    )
    next_schedule_time: str | None = None
    active_runs: list[CurrentRun] = Field(
        default_factory=list, description="Runs in progress (more than one only with Allow)."
    )
    runs: list[RunRecord] = Field(default_factory=list, description="The last historyLimit runs.")
    serving: ServingRecord | None = None
    last_metric: str | None = Field(
        default=None, description="The gate metric of the last finished run, e.g. accuracy=0.977."
    )
    dataset_version: str | None = Field(
        default=None, description="Identity of the data the last run used (version, ETag, hash)."
    )
    handled_trigger: str | None = Field(
        default=None, description="The last on-demand trigger annotation value acted on."
    )
