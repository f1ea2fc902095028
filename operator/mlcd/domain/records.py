"""What a run produced and decided: the records kept in status, state files and metadata."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlcd.domain.spec import Model

RunResult = Literal["running", "promoted", "rejected", "failed"]
Stage = Literal["validate", "tune", "train", "evaluate", "gate", "export", "serve", "done"]
STAGES: tuple[Stage, ...] = ("validate", "tune", "train", "evaluate", "gate", "export", "serve")


class GateCheck(Model):
    name: str
    passed: bool
    detail: str


class GateVerdict(Model):
    """The gate's decision and every number behind it."""

    passed: bool
    metric: str
    value: float | None = None
    direction: Literal["maximize", "minimize"] = "maximize"
    min: float | None = None
    max: float | None = None
    baseline_value: float | None = None
    baseline_version: str | None = None
    max_regression: float | None = None
    regression: float | None = None
    reason: str
    checks: list[GateCheck] = Field(default_factory=list)


class ModelRef(Model):
    uri: str
    version: str
    sha256: str


class TrialRecord(Model):
    number: int
    params: dict[str, str | float | int]
    state: Literal["succeeded", "failed", "pruned"]
    value: float | None = None
    seconds: float = 0.0
    reason: str | None = None


class DataReport(Model):
    """The validate stage's findings: sanity of the new data and its drift."""

    ok: bool
    samples: int = 0
    class_counts: list[int] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    drift: dict[str, float] = Field(default_factory=dict)
    sha256: str | None = None
    version: str | None = None


class RunRecord(Model):
    id: str
    trigger: str = "manual"
    result: RunResult = "running"
    stage: Stage = "validate"
    reason: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    params: dict[str, str | float | int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    gate: GateVerdict | None = None
    model: ModelRef | None = None
    data: DataReport | None = None
    timings: dict[str, float] = Field(default_factory=dict)


class ServingRecord(Model):
    """What is served now: a version that passed its gate, verified by its sha256."""

    model: str
    version: str
    uri: str
    sha256: str
    url: str | None = None
    run: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
