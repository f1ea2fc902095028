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
#: Annotation whose new value asks for a run now (``mlcd trigger`` sets it).
TRIGGER_ANNOTATION = "mlcd.io/trigger"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PARAM_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"
METRIC_NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"
DURATION = r"^[0-9]+(ms|s|m|h)$"

# Bounds on lists and strings: they keep the API server's CEL cost estimates finite.
MAX_URI = 2048
MAX_METRIC_NAME = 128
MAX_ARGS = 256
MAX_ARG = 4096
MAX_DURATION = 32
MAX_CLASSES = 100_000
MAX_HISTORY = 100

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
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        defer_build=True,
    )


Duration = Annotated[
    str,
    Field(pattern=DURATION, max_length=MAX_DURATION, description="A duration: 30s, 5m, 2h, 500ms."),
]
Arg = Annotated[str, Field(max_length=MAX_ARG)]
MetricName = Annotated[str, Field(pattern=METRIC_NAME, max_length=MAX_METRIC_NAME)]


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
    """Where objects are stored: S3 (MinIO) or a file system."""

    uri: str = Field(
        min_length=1,
        max_length=MAX_URI,
        description="s3://bucket/key, file:///path or a path (relative to the spec file).",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=MAX_URI,
        description="S3 endpoint URL (MinIO); default from AWS_ENDPOINT_URL.",
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with the S3 keys; without it keys come from the environment.",
    )


class DatasetSchema(Model):
    """What every sample must look like; checked before any training."""

    feature_shape: list[Annotated[int, Field(ge=1)]] = Field(
        min_length=1, max_length=8, description="Shape of one sample's features, e.g. [1, 28, 28]."
    )
    num_classes: int = Field(
        ge=2, le=MAX_CLASSES, description="Labels must be integers in [0, numClasses)."
    )
    value_min: float | None = Field(
        allow_inf_nan=False, default=None, description="Smallest allowed feature value."
    )
    value_max: float | None = Field(
        allow_inf_nan=False, default=None, description="Largest allowed feature value."
    )
    min_samples: int = Field(default=100, ge=1, description="Fewest samples a run accepts.")
    min_samples_per_class: int = Field(
        default=10, ge=1, description="Fewest samples of every class a run accepts."
    )


class DriftCheck(Model):
    """Compare the new data's distribution with the data the serving model was trained on."""

    max_psi: float = Field(
        allow_inf_nan=False,
        default=0.2,
        gt=0,
        description="Largest population stability index (feature values, labels) accepted.",
    )


class Dataset(StorageLocation):
    """The training data: where it is, what it must look like, how far it may drift."""

    format: Literal["npz"] = Field(
        default="npz", description="npz with arrays x (features) and y (integer labels)."
    )
    schema_: DatasetSchema = Field(
        alias="schema", description="What every sample must look like; checked before training."
    )
    drift: DriftCheck = Field(
        default_factory=DriftCheck,
        description="How far the data may move from what the serving model was trained on.",
    )


class Resources(Model):
    """Compute for one worker (cluster engines)."""

    cpu: str | None = Field(
        default=None, max_length=64, description="CPU per worker, a quantity such as 2 or 500m."
    )
    memory: str | None = Field(
        default=None, max_length=64, description="Memory per worker, a quantity such as 4Gi."
    )
    gpu: int | None = Field(default=None, ge=0, description="GPUs per worker.")


class EnvVar(Model):
    """An environment variable set for the trainer in every stage."""

    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256, description="Variable name."
    )
    value: str = Field(max_length=32768, description="Variable value. Use no secrets here.")


class MetricsCollector(Model):
    """How mlcd reads a trainer's metrics (Katib's collector vocabulary)."""

    kind: Literal["StdOut", "File"] = Field(
        default="StdOut",
        description="StdOut: name=value lines; File: JSON object written to $MLCD_METRICS_FILE.",
    )
    metrics_format: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=16,
        description="Regexes with two groups (name, value) for StdOut; default name=value.",
    )


class Trainer(Model):
    """The user's code: run as trials, as the distributed job and as evaluation."""

    image: str | None = Field(
        default=None, max_length=1024, description="Container image (cluster engines)."
    )
    command: list[Arg] = Field(
        min_length=1, max_length=MAX_ARGS, description="Command run in every stage."
    )
    args: list[Arg] = Field(
        default_factory=list, max_length=MAX_ARGS, description="Arguments for every stage."
    )
    workers: int = Field(default=1, ge=1, le=64, description="World size of the training job.")
    backend: Literal["gloo", "nccl"] = Field(
        default="gloo", description="torch.distributed backend: gloo (CPU) or nccl (GPU)."
    )
    resources_per_worker: Resources | None = Field(
        default=None, description="CPU, memory and GPUs of each worker (cluster engines)."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=MAX_ARGS, description="Extra environment variables."
    )
    metrics_collector: MetricsCollector = Field(
        default_factory=MetricsCollector, description="How the trainer's metrics are read."
    )
    timeout: Duration = Field(default="1h", description="Longest a training job may run.")


class Objective(Model):
    """What tuning optimises: one metric the trainer prints."""

    metric: str = Field(
        pattern=METRIC_NAME,
        max_length=MAX_METRIC_NAME,
        description="Name of the metric the trainer reports for each trial.",
    )
    type: Literal["maximize", "minimize"] = Field(
        default="maximize", description="Whether larger (maximize) or smaller values are better."
    )
    goal: float | None = Field(
        allow_inf_nan=False, default=None, description="Stop tuning once a trial reaches it."
    )
    strategy: Literal["latest", "max", "min"] | None = Field(
        default=None,
        description="Which of a trial's reported values counts; default max/min by type.",
    )


class Parameter(Model):
    """One hyperparameter, passed to the trainer as --name=value."""

    name: str = Field(
        pattern=PARAM_NAME, max_length=63, description="Name; the trainer gets --name=value."
    )
    type: Literal["double", "int", "categorical", "discrete"] = Field(
        description="double and int take min and max; categorical and discrete take values."
    )
    min: float | None = Field(
        allow_inf_nan=False,
        default=None,
        description="Smallest value (double, int); > 0 for logUniform.",
    )
    max: float | None = Field(
        allow_inf_nan=False,
        default=None,
        description="Largest value (double, int); greater than min.",
    )
    step: float | None = Field(
        allow_inf_nan=False,
        default=None,
        gt=0,
        description="Spacing of the values tried (double, int); required for double with grid.",
    )
    values: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None,
        max_length=100,
        description="The values to choose from (categorical, discrete: numbers), no repeats.",
    )
    distribution: Literal["uniform", "logUniform"] = Field(
        default="uniform",
        description="How values between min and max are sampled (double, int).",
    )


class Tuning(Model):
    """Hyperparameter search, in Katib's vocabulary."""

    algorithm: Literal[
        "random", "grid", "tpe", "multivariate-tpe", "cmaes", "sobol", "bayesianoptimization"
    ] = Field(default="tpe", description="Search algorithm (Katib's names).")
    objective: Objective = Field(description="The metric tuning optimises.")
    max_trials: int = Field(default=12, ge=1, le=1000, description="Most trials run in total.")
    parallel_trials: int = Field(
        default=2, ge=1, le=64, description="Trials run at once; at most maxTrials."
    )
    max_failed_trials: int = Field(
        default=3, ge=0, description="Failed trials tolerated before tuning fails."
    )
    parameters: list[Parameter] = Field(
        min_length=1, max_length=50, description="The search space; names are unique."
    )
    trial_args: list[Arg] = Field(
        default_factory=list,
        max_length=MAX_ARGS,
        description="Extra arguments for trials only (e.g. fewer epochs).",
    )
    validation_fraction: float = Field(
        allow_inf_nan=False,
        default=0.2,
        gt=0,
        lt=1,
        description="Share of training data trials are scored on.",
    )
    trial_timeout: Duration = Field(default="30m", description="Longest one trial may run.")
    seed: int = Field(default=0, description="Seed of the search algorithm and data split.")


class Baseline(Model):
    """The comparison with the model now serving."""

    compare_to: Literal["serving", "none"] = Field(
        default="serving",
        description="serving: no regression against the serving model; none: bounds only.",
    )
    max_regression: float = Field(
        allow_inf_nan=False,
        default=0.0,
        ge=0,
        description="How much worse than the serving model is still accepted.",
    )


class Gate(Model):
    """TFX's blessing: an absolute bound AND no regression against the serving model."""

    metric: str = Field(
        pattern=METRIC_NAME,
        max_length=MAX_METRIC_NAME,
        description="An evaluation metric (accuracy, loss, ...) or one of evaluation.extraMetrics.",
    )
    direction: Literal["maximize", "minimize"] = Field(
        default="maximize", description="Whether larger (maximize) or smaller values are better."
    )
    min: float | None = Field(
        allow_inf_nan=False, default=None, description="The metric must be at least this."
    )
    max: float | None = Field(
        allow_inf_nan=False,
        default=None,
        description="The metric must be at most this; greater than min.",
    )
    baseline: Baseline = Field(
        default_factory=Baseline, description="The comparison with the model now serving."
    )


class Evaluation(Model):
    """Scoring the trained model on data it never saw, as PyTorch and as ONNX."""

    holdout_fraction: float = Field(
        allow_inf_nan=False,
        default=0.2,
        gt=0,
        lt=1,
        description="Share of the dataset the trainer never sees.",
    )
    parity_tolerance: float = Field(
        allow_inf_nan=False,
        default=1e-3,
        gt=0,
        description="Largest |onnx - trained| output difference accepted.",
    )
    extra_metrics: list[MetricName] = Field(
        default_factory=list,
        max_length=50,
        description="Metrics the trainer prints when evaluating, usable by the gate.",
    )
    seed: int = Field(default=0, description="Seed of the holdout split.")


#: Rollout metrics the router measures itself: a metric of one of these names needs no query.
BUILTIN_METRICS = ("success-rate", "latency-p99")
#: What a rollout query may name: ``{{ canary }}`` and so on, filled in at every analysis.
TEMPLATE_VARIABLES = ("canary", "stable", "namespace", "interval")
MAX_QUERY = 4096
MAX_DURATION = 32
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class RolloutMetric(Model):
    """A Prometheus check of the candidate at every analysis: within [min, max], and/or no
    worse than the stable model by more than maxIncrease over the same window."""

    name: str = Field(
        pattern=METRIC_NAME,
        max_length=MAX_METRIC_NAME,
        description="Name shown in status; success-rate and latency-p99 are built in "
        "(measured by the router, no query needed).",
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_QUERY,
        description="PromQL returning one number; {{ canary }} {{ stable }} {{ namespace }} "
        "{{ interval }} are filled in. Required unless the name is a built-in.",
    )
    min: float | None = Field(default=None, description="Lowest passing value.")
    max: float | None = Field(default=None, description="Highest passing value; at least min.")
    relative_to: Literal["stable"] | None = Field(
        default=None,
        description="stable: also evaluate the query for the stable model (its {{ canary }} "
        "replaced by the stable one) and compare the two over the same window.",
    )
    max_increase: float | None = Field(
        default=None,
        ge=0,
        description="With relativeTo: the candidate's value may exceed the stable model's by "
        "at most this much (in the metric's unit).",
    )
    dry_run: bool = Field(
        default=False, description="Record this metric's verdicts without acting on them."
    )


class Shadow(Model):
    """Before any traffic: the candidate answers a mirror of live requests and its answers
    are discarded; it passes on its disagreement with the stable model and its latency."""

    max_disagreement: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Largest share of mirrored requests whose predicted class differs from "
        "the stable model's.",
    )
    min_requests: int = Field(
        default=100,
        ge=1,
        le=1_000_000_000,
        description="Mirrored requests an analysis must see before its verdict counts.",
    )
    max_latency_p99: Duration | None = Field(
        default=None,
        max_length=MAX_DURATION,
        description="Highest p99 latency of the candidate on mirrored requests, e.g. 250ms.",
    )


class Traffic(Model):
    """Replayed requests (Flagger's load tester idea), for demos and tests: the holdout's
    samples are sent to the serving endpoint at a steady rate while a rollout is analysed."""

    rate: float = Field(gt=0, le=1000, description="Requests per second.")
    source: Literal["holdout"] = Field(
        default="holdout", description="holdout: the samples evaluation held out of training."
    )


class Rollout(Model):
    """Progressive delivery: shadow, then traffic steps to the new model, each judged by
    metrics; promoted at the end, rolled back or paused on failure."""

    shadow: Shadow | None = Field(
        default=None, description="A shadow phase before the first step; none without it."
    )
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [100],
        min_length=1,
        max_length=20,
        description="Traffic percentages to the new model, ascending, ending at 100.",
    )
    interval: Duration = Field(
        default="1m", max_length=MAX_DURATION, description="Time between analyses."
    )
    failure_threshold: int = Field(
        default=2, ge=1, le=100, description="Failed analyses that end the rollout (onFailure)."
    )
    failure_counting: Literal["consecutive", "total"] = Field(
        default="consecutive",
        description="consecutive: a passing analysis resets the count; total: it does not.",
    )
    min_samples: int = Field(
        default=20,
        ge=0,
        le=1_000_000_000,
        description="Requests the candidate must answer in an interval before its verdict counts.",
    )
    no_data: Literal["hold", "fail"] = Field(
        default="hold",
        description="An interval without data (or too few requests): hold (neither advance nor "
        "count a failure, until progressDeadline) or count a failure.",
    )
    progress_deadline: Duration = Field(
        default="10m",
        max_length=MAX_DURATION,
        description="Longest a rollout may hold (no data, candidate not ready) before onFailure.",
    )
    metrics: list[RolloutMetric] = Field(
        default_factory=list,
        max_length=20,
        description="Checks run at every analysis; names unique.",
    )
    on_failure: Literal["rollback", "pause"] = Field(
        default="rollback",
        description="When analyses fail: rollback (all traffic back to the stable model) or "
        "pause (keep the weights, wait for promote, abort or rollbackTo).",
    )
    pause: bool = Field(
        default=False, description="Hold the rollout in progress where it is while true."
    )
    promote: bool = Field(
        default=False,
        description="While true, a rollout in progress skips its remaining steps and is promoted.",
    )
    abort: bool = Field(
        default=False,
        description="While true, a rollout in progress goes back to the stable model.",
    )
    rollback_to: str | None = Field(
        default=None,
        pattern=VERSION,
        max_length=64,
        description="Serve this earlier version at once (no analysis); clear it to let new "
        "models roll out again.",
    )
    traffic: Traffic | None = Field(
        default=None,
        description="Replay the holdout's samples during analysis (demos and tests).",
    )


class Serving(Model):
    """Where the model is served: a KServe InferenceService (or the local servers)."""

    inference_service: str = Field(
        pattern=DNS_LABEL, max_length=45, description="Name of the InferenceService."
    )
    model_name: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Model name; default inferenceService.",
    )
    rollout: Rollout = Field(default_factory=Rollout, description="How a new model is rolled out.")

    @property
    def name(self) -> str:
        return self.model_name or self.inference_service


class Degradation(Model):
    """A PromQL condition on the serving model that starts a run (trigger kind degradation)."""

    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY,
        description="PromQL that returns a sample while the model is degraded (an alert's "
        "expression); {{ stable }} {{ namespace }} {{ interval }} are filled in.",
    )
    for_: Duration = Field(
        default="5m",
        alias="for",
        max_length=MAX_DURATION,
        description="How long the condition must hold before a run starts.",
    )
    cooldown: Duration = Field(
        default="1h",
        max_length=MAX_DURATION,
        description="No new degradation run this soon after the last one started.",
    )
    interval: Duration = Field(
        default="1m",
        max_length=MAX_DURATION,
        description="How often the condition is evaluated; also {{ interval }}.",
    )


class Triggers(Model):
    """What starts a run besides the schedule."""

    new_data: bool = Field(default=False, description="Retrain when the dataset changes.")
    poll_interval: Duration = Field(default="5m", description="How often the dataset is checked.")
    on_degradation: Degradation | None = Field(
        default=None,
        description="Retrain when a PromQL condition on the serving model holds for a while.",
    )


class ModelPipelineSpec(Model):
    """What to train, how to judge it and where to serve it."""

    engine: Literal["local", "kubeflow"] | None = Field(
        default=None, description="Where the pipeline runs; default the operator's setting."
    )
    schedule: str | None = Field(
        default=None,
        max_length=128,
        description="Cron expression for retraining: five fields or @hourly, @daily, ...",
    )
    time_zone: str | None = Field(
        default=None,
        max_length=64,
        description="IANA time zone of the schedule, e.g. Europe/Berlin; default UTC.",
    )
    suspend: bool = Field(default=False, description="Start no new runs (as a CronJob's).")
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = Field(
        default="Forbid",
        description="A run is due while one is in progress: start both (Allow), skip the new "
        "one (Forbid) or cancel the old one (Replace).",
    )
    starting_deadline_seconds: int | None = Field(
        default=None, ge=1, description="A scheduled run this late is skipped."
    )
    triggers: Triggers = Field(
        default_factory=Triggers, description="What starts a run besides the schedule."
    )
    dataset: Dataset = Field(description="The training data.")
    trainer: Trainer = Field(description="The user's training code.")
    tuning: Tuning | None = Field(
        default=None, description="Hyperparameter search; without it the trainer's defaults."
    )
    evaluation: Evaluation = Field(
        default_factory=Evaluation, description="How the trained model is scored."
    )
    gate: Gate = Field(description="The bar a new model must clear before it is served.")
    serving: Serving = Field(description="Where the model is served and how it is rolled out.")
    artifacts: StorageLocation | None = Field(
        default=None, description="Model repository root; default the local state directory."
    )
    history_limit: int = Field(
        default=10, ge=1, le=MAX_HISTORY, description="Finished runs kept in status."
    )


class ObjectMeta(BaseModel):
    """The resource's name and namespace."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=DNS_LABEL, max_length=53)
    namespace: str = Field(default="default", pattern=DNS_LABEL, max_length=63)


class ModelPipeline(Model):
    """One model's continuous training and delivery: retrain, judge, export, roll out."""

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
