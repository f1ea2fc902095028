"""The ModelPipeline resource as typed models: what a user writes and ``kubectl apply``s.

Field names are the resource's own (camelCase). Types, enums and ranges live on the fields;
rules that tie fields together live in :mod:`mlcd.domain.checks`, which names the field at fault.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "mlcd.io"
API_VERSION = "v1alpha1"
KIND = "ModelPipeline"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PARAM_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"
METRIC_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"
DURATION = r"^[0-9]+(ms|s|m|h)$"

#: Metrics the evaluate stage computes for every classifier, whatever the trainer prints.
EVALUATION_METRICS = (
    "accuracy",
    "loss",
    "precision-macro",
    "recall-macro",
    "f1-macro",
    "roc-auc",
)

ALGORITHMS = ("random", "grid", "tpe", "multivariate-tpe", "cmaes", "sobol", "bayesianoptimization")


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


Duration = Annotated[str, Field(pattern=DURATION, description="A duration: 30s, 5m, 2h, 500ms.")]


def duration_seconds(value: str) -> float:
    match = re.fullmatch(r"([0-9]+)(ms|s|m|h)", value)
    if not match:
        raise ValueError(f"not a duration: {value!r}")
    number, unit = int(match.group(1)), match.group(2)
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


class SecretRef(Model):
    """A Secret holding ``accessKey`` and ``secretKey``. Never put keys in the spec itself."""

    name: str = Field(pattern=DNS_LABEL, max_length=253, description="Name of the Secret.")


class StorageLocation(Model):
    uri: str = Field(
        min_length=1,
        description="s3://bucket/key, file:///path or a path (relative to the spec file).",
    )
    endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL (MinIO); default from AWS_ENDPOINT_URL.",
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with the S3 keys; without it keys come from the environment.",
    )


class DatasetSchema(Model):
    """What every sample must look like; checked before any training."""

    feature_shape: list[Annotated[int, Field(ge=1)]] = Field(
        min_length=1, description="Shape of one sample's features, e.g. [1, 28, 28]."
    )
    num_classes: int = Field(ge=2, description="Labels must be integers in [0, numClasses).")
    value_min: float | None = Field(default=None, description="Smallest allowed feature value.")
    value_max: float | None = Field(default=None, description="Largest allowed feature value.")
    min_samples: int = Field(default=100, ge=1, description="Fewest samples a run accepts.")
    min_samples_per_class: int = Field(
        default=10, ge=1, description="Fewest samples of every class a run accepts."
    )


class DriftCheck(Model):
    """Compare the new data's distribution with the data the serving model was trained on."""

    max_psi: float = Field(
        default=0.2,
        gt=0,
        description="Largest population stability index (feature values, labels) accepted.",
    )


class Dataset(StorageLocation):
    format: Literal["npz"] = Field(
        default="npz", description="npz with arrays x (features) and y (integer labels)."
    )
    schema_: DatasetSchema = Field(alias="schema")
    drift: DriftCheck = Field(default_factory=DriftCheck)


class Resources(Model):
    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = Field(default=None, ge=0)


class EnvVar(Model):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str


class MetricsCollector(Model):
    """How mlcd reads a trainer's metrics (Katib's collector vocabulary)."""

    kind: Literal["StdOut", "File"] = Field(
        default="StdOut",
        description="StdOut: name=value lines; File: JSON object written to $MLCD_METRICS_FILE.",
    )
    metrics_format: list[str] = Field(
        default_factory=list,
        description="Regexes with two groups (name, value) for StdOut; default name=value.",
    )


class Trainer(Model):
    """The user's code: run as trials, as the distributed job and as evaluation."""

    image: str | None = Field(default=None, description="Container image (cluster engines).")
    command: list[str] = Field(min_length=1, description="Command run in every stage.")
    args: list[str] = Field(default_factory=list, description="Arguments for every stage.")
    workers: int = Field(default=1, ge=1, le=64, description="World size of the training job.")
    backend: Literal["gloo", "nccl"] = Field(default="gloo")
    resources_per_worker: Resources | None = None
    env: list[EnvVar] = Field(default_factory=list)
    metrics_collector: MetricsCollector = Field(default_factory=MetricsCollector)
    timeout: Duration = Field(default="1h", description="Longest a training job may run.")


class Objective(Model):
    metric: str = Field(pattern=METRIC_NAME)
    type: Literal["maximize", "minimize"] = "maximize"
    goal: float | None = Field(default=None, description="Stop tuning once a trial reaches it.")
    strategy: Literal["latest", "max", "min"] | None = Field(
        default=None,
        description="Which of a trial's reported values counts; default max/min by type.",
    )


class Parameter(Model):
    name: str = Field(pattern=PARAM_NAME, max_length=63)
    type: Literal["double", "int", "categorical", "discrete"]
    min: float | None = None
    max: float | None = None
    step: float | None = Field(default=None, gt=0)
    values: list[str] | None = None
    distribution: Literal["uniform", "logUniform"] = "uniform"


class Tuning(Model):
    """Hyperparameter search, in Katib's vocabulary."""

    algorithm: Literal[
        "random", "grid", "tpe", "multivariate-tpe", "cmaes", "sobol", "bayesianoptimization"
    ] = "tpe"
    objective: Objective
    max_trials: int = Field(default=12, ge=1, le=1000)
    parallel_trials: int = Field(default=2, ge=1, le=64)
    max_failed_trials: int = Field(default=3, ge=0)
    parameters: list[Parameter] = Field(min_length=1)
    trial_args: list[str] = Field(
        default_factory=list, description="Extra arguments for trials only (e.g. fewer epochs)."
    )
    validation_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Share of training data trials are scored on."
    )
    trial_timeout: Duration = "30m"
    seed: int = 0


class Baseline(Model):
    compare_to: Literal["serving", "none"] = "serving"
    max_regression: float = Field(
        default=0.0, ge=0, description="How much worse than the serving model is still accepted."
    )


class Gate(Model):
    """TFX's blessing: an absolute bound AND no regression against the serving model."""

    metric: str = Field(pattern=METRIC_NAME)
    direction: Literal["maximize", "minimize"] = "maximize"
    min: float | None = None
    max: float | None = None
    baseline: Baseline = Field(default_factory=Baseline)


class Evaluation(Model):
    holdout_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="Share of the dataset the trainer never sees."
    )
    parity_tolerance: float = Field(
        default=1e-3, gt=0, description="Largest |onnx - trained| output difference accepted."
    )
    extra_metrics: list[Annotated[str, Field(pattern=METRIC_NAME)]] = Field(
        default_factory=list,
        description="Metrics the trainer prints when evaluating, usable by the gate.",
    )
    seed: int = 0


class RolloutMetric(Model):
    name: str = Field(pattern=METRIC_NAME)
    query: str = Field(min_length=1, description="PromQL; {{ canary }} {{ stable }} filled in.")
    min: float | None = None
    max: float | None = None


class Rollout(Model):
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=lambda: [100])
    interval: Duration = "1m"
    failure_threshold: int = Field(default=2, ge=1)
    no_data: Literal["hold", "fail"] = "hold"
    metrics: list[RolloutMetric] = Field(default_factory=list)


class Serving(Model):
    inference_service: str = Field(pattern=DNS_LABEL, max_length=45)
    model_name: str | None = Field(
        default=None, pattern=DNS_LABEL, description="Model name; default inferenceService."
    )
    rollout: Rollout = Field(default_factory=Rollout)

    @property
    def name(self) -> str:
        return self.model_name or self.inference_service


class Triggers(Model):
    new_data: bool = Field(default=False, description="Retrain when the dataset changes.")
    poll_interval: Duration = Field(default="5m", description="How often the dataset is checked.")


class ModelPipelineSpec(Model):
    engine: Literal["local", "kubeflow"] | None = Field(
        default=None, description="Where the pipeline runs; default the operator's setting."
    )
    schedule: str | None = Field(default=None, description="Cron expression for retraining.")
    time_zone: str | None = None
    suspend: bool = False
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Forbid"
    starting_deadline_seconds: int | None = Field(default=None, ge=1)
    triggers: Triggers = Field(default_factory=Triggers)
    dataset: Dataset
    trainer: Trainer
    tuning: Tuning | None = None
    evaluation: Evaluation = Field(default_factory=Evaluation)
    gate: Gate
    serving: Serving
    artifacts: StorageLocation | None = Field(
        default=None, description="Model repository root; default the local state directory."
    )
    history_limit: int = Field(default=10, ge=1, le=100)


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=DNS_LABEL, max_length=53)
    namespace: str = Field(default="default", pattern=DNS_LABEL, max_length=63)


class ModelPipeline(Model):
    api_version: Literal["mlcd.io/v1alpha1"]
    kind: Literal["ModelPipeline"]
    metadata: ObjectMeta
    spec: ModelPipelineSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace
