"""What a run produced and decided: the records kept in status, state files and metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlcd.domain.bounds import Identity, Line, Name, Sha256, Short, Text, Time, Uri
from mlcd.domain.numbers import Metric
from mlcd.domain.spec import MAX_CLASSES, MAX_METRIC_NAME, Model

#: ``running`` while the engine works; then what the engine reports (``exported``: the model
#: passed its gate and is in the repository; ``rejected``, ``failed``, ``cancelled``), and what
#: the loop decides after an export (``promoted``: it serves; ``exported`` stays when serving it
#: failed for good).
RunResult = Literal["running", "exported", "promoted", "rejected", "failed", "cancelled"]
FinalResult = Literal["exported", "promoted", "rejected", "failed", "cancelled"]
Stage = Literal["validate", "tune", "train", "evaluate", "gate", "export", "serve", "done"]
STAGES: tuple[Stage, ...] = ("validate", "tune", "train", "evaluate", "gate", "export", "serve")


class GateCheck(Model):
    """One check of the gate, with its numbers."""

    name: Short = Field(description="min, max or baseline.")
    passed: bool = Field(description="Whether the check passed.")
    detail: Line = Field(description="The comparison, e.g. accuracy 0.981 >= min 0.97.")


class GateVerdict(Model):
    """The gate's decision and every number behind it."""

    passed: bool = Field(description="Whether the model may replace the serving one.")
    metric: str = Field(max_length=MAX_METRIC_NAME, description="The gate's metric.")
    value: Metric | None = Field(
        default=None, description="The candidate's value of it (null: not a finite number)."
    )
    direction: Literal["maximize", "minimize"] = Field(
        default="maximize", description="Whether larger (maximize) or smaller values are better."
    )
    min: float | None = Field(default=None, description="The gate's lower bound.")
    max: float | None = Field(default=None, description="The gate's upper bound.")
    baseline_value: Metric | None = Field(
        default=None, description="The serving model's value of the metric."
    )
    baseline_version: Short | None = Field(
        default=None, description="The version that was serving."
    )
    max_regression: float | None = Field(
        default=None, description="How much worse than the serving model was accepted."
    )
    regression: Metric | None = Field(
        default=None, description="How much worse than the serving model the candidate is."
    )
    reason: Text = Field(description="The decision in one line.")
    checks: list[GateCheck] = Field(
        default_factory=list, max_length=8, description="Every check made."
    )


class ModelRef(Model):
    """An exported model in the model repository."""

    uri: Uri = Field(description="Where the ONNX model is.")
    version: Short = Field(description="Its version.")
    sha256: Sha256 = Field(description="Its SHA-256 digest.")


class TrialRecord(Model):
    number: int
    params: dict[str, str | float | int]
    state: Literal["succeeded", "failed", "pruned"]
    value: Metric | None = None
    seconds: float = 0.0
    reason: str | None = None


class DataReport(Model):
    """The validate stage's findings: sanity of the new data and its drift."""

    ok: bool = Field(description="Whether the data may be trained on.")
    samples: int = Field(default=0, description="Number of samples.")
    class_counts: list[int] = Field(
        default_factory=list, max_length=MAX_CLASSES, description="Samples per class."
    )
    problems: list[Line] = Field(
        default_factory=list, max_length=32, description="What is wrong with it."
    )
    drift: dict[str, Metric] = Field(
        default_factory=dict,
        description="feature-psi and label-psi against the serving model's data.",
    )
    sha256: Sha256 | None = Field(default=None, description="SHA-256 digest of the data.")
    version: Identity | None = Field(default=None, description="The data's version or ETag.")


class RunRecord(Model):
    """One run: what started it, what it found and what was decided."""

    id: Name = Field(description="The run's id.")
    trigger: Short = Field(default="manual", description="schedule, new-data or manual.")
    result: RunResult = Field(
        default="running",
        description="running, exported (passed its gate, not served), promoted, rejected (bad "
        "data or the gate said no), failed or cancelled.",
    )
    stage: Stage = Field(default="validate", description="The last stage it reached.")
    reason: Text | None = Field(default=None, description="Why it failed or was rejected.")
    started_at: Time | None = Field(default=None, description="When it started (RFC 3339).")
    finished_at: Time | None = Field(default=None, description="When it ended (RFC 3339).")
    params: dict[str, str | float | int] = Field(
        default_factory=dict, description="The hyperparameters trained with."
    )
    metrics: dict[str, Metric] = Field(
        default_factory=dict,
        description="The evaluation's metrics (null: not a finite number, as NaN or inf).",
    )
    gate: GateVerdict | None = Field(default=None, description="The gate's verdict.")
    model: ModelRef | None = Field(default=None, description="The model it exported.")
    data: DataReport | None = Field(default=None, description="What the data check found.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")
    children: dict[str, str] = Field(
        default_factory=dict,
        description="What the run created in other systems, by kind: the KFP run id "
        "(kfpRun), the Katib Experiment (experiment), the TrainJob or PyTorchJob (trainJob, "
        "pyTorchJob). Empty for the local engine.",
    )


class ServingRecord(Model):
    """What is served now: a version that passed its gate, verified by its sha256."""

    model: Name = Field(description="The model's name.")
    version: Short = Field(description="The version serving.")
    uri: Uri = Field(description="Where the ONNX model is.")
    sha256: Sha256 = Field(description="Its SHA-256 digest, checked before serving.")
    url: Uri | None = Field(default=None, description="Where it answers predictions.")
    run: Name | None = Field(default=None, description="The run that produced it.")
    metrics: dict[str, Metric] = Field(
        default_factory=dict, description="Its evaluation's metrics (null: not a finite number)."
    )
