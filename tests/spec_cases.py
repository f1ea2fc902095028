"""The table of invalid specs, shared by the parser's tests and the API server's."""

from __future__ import annotations

import copy
import pathlib

import yaml

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "mnist" / "modelpipeline.yaml"
BASE = yaml.safe_load(EXAMPLE.read_text())


def with_change(path: str, value: object) -> dict:
    """The example with one field (a dotted path, list indices as numbers) set or deleted."""
    resource = copy.deepcopy(BASE)
    node = resource
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    last = keys[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return resource


DELETE = object()

CASES = [
    (
        "spec.tuning.parameters.0.max",
        0.0001,
        "spec.tuning.parameters[0].max",
        "must be greater than min",
    ),
    ("spec.tuning.maxTrials", 0, "spec.tuning.maxTrials", "must be >= 1 (got 0)"),
    ("spec.tuning.parallelTrials", 10, "spec.tuning.parallelTrials", "must not exceed maxTrials"),
    ("spec.tuning.algorithm", "hyperband", "spec.tuning.algorithm", "must be 'random', 'grid'"),
    ("spec.tuning.objective.type", "up", "spec.tuning.objective.type", "'maximize' or 'minimize'"),
    ("spec.tuning.parameters.1.values", [], "spec.tuning.parameters[1].values", "required"),
    (
        "spec.tuning.parameters.1.values",
        ["a", "a"],
        "spec.tuning.parameters[1].values",
        "must not repeat",
    ),
    ("spec.tuning.parameters.0.min", -1, "spec.tuning.parameters[0].min", "logUniform"),
    (
        "spec.tuning.parameters.0.type",
        "float",
        "spec.tuning.parameters[0].type",
        "must be 'double'",
    ),
    ("spec.tuning.parameters.0.name", "1lr", "spec.tuning.parameters[0].name", "must match"),
    ("spec.tuning.parameters", [], "spec.tuning.parameters", "at least 1 item"),
    ("spec.tuning.parameters.1.name", "lr", "spec.tuning.parameters[1].name", "duplicate"),
    ("spec.tuning.objective", DELETE, "spec.tuning.objective", "required"),
    ("spec.tuning.maxFailedTrials", -1, "spec.tuning.maxFailedTrials", "must be >= 0"),
    ("spec.tuning.trialTimeout", "10 minutes", "spec.tuning.trialTimeout", "a duration"),
    ("spec.trainer.workers", 0, "spec.trainer.workers", "must be >= 1"),
    ("spec.trainer.workers", "two", "spec.trainer.workers", "must be an integer (got 'two')"),
    ("spec.trainer.backend", "mpi", "spec.trainer.backend", "must be 'gloo' or 'nccl'"),
    ("spec.trainer.command", [], "spec.trainer.command", "at least 1 item"),
    ("spec.trainer.command", DELETE, "spec.trainer.command", "required"),
    (
        "spec.trainer.metricsCollector",
        {"metricsFormat": ["(\\w+)"]},
        "spec.trainer.metricsCollector.metricsFormat[0]",
        "must have two groups",
    ),
    (
        "spec.trainer.metricsCollector",
        {"metricsFormat": ["(("]},
        "spec.trainer.metricsCollector.metricsFormat[0]",
        "not a valid regular expression",
    ),
    ("spec.trainer.timeout", "1d", "spec.trainer.timeout", "a duration"),
    ("spec.gate.metric", "acc", "spec.gate.metric", "not produced by evaluation"),
    ("spec.gate.max", 0.5, "spec.gate.max", "must be greater than min"),
    (
        "spec.gate.baseline",
        {"maxRegression": -0.1},
        "spec.gate.baseline.maxRegression",
        "must be >= 0",
    ),
    (
        "spec.gate.baseline",
        {"compareTo": "best"},
        "spec.gate.baseline.compareTo",
        "'serving' or 'none'",
    ),
    (
        "spec.dataset.uri",
        "gs://bucket/x.npz",
        "spec.dataset.uri",
        "scheme must be s3:// or file://",
    ),
    ("spec.dataset.uri", "s3:///x.npz", "spec.dataset.uri", "needs a bucket"),
    ("spec.dataset.schema.numClasses", 1, "spec.dataset.schema.numClasses", "must be >= 2"),
    ("spec.dataset.schema.featureShape", [], "spec.dataset.schema.featureShape", "at least 1"),
    ("spec.dataset.schema.valueMax", -1, "spec.dataset.schema.valueMax", "greater than valueMin"),
    ("spec.dataset.format", "csv", "spec.dataset.format", "must be 'npz'"),
    (
        "spec.dataset.credentialsSecretRef",
        {"name": "Bad_Name"},
        "spec.dataset.credentialsSecretRef.name",
        "DNS label",
    ),
    ("spec.dataset.drift", {"maxPsi": 0}, "spec.dataset.drift.maxPsi", "must be > 0"),
    ("spec.schedule", "every night", "spec.schedule", "not a valid cron expression"),
    ("spec.timeZone", "Mars/Olympus", "spec.timeZone", "unknown time zone"),
    ("spec.concurrencyPolicy", "Skip", "spec.concurrencyPolicy", "'Allow', 'Forbid' or 'Replace'"),
    ("spec.serving.inferenceService", "MNIST", "spec.serving.inferenceService", "DNS label"),
    (
        "spec.serving.rollout",
        {"steps": [50, 10, 100]},
        "spec.serving.rollout.steps[1]",
        "steps must ascend",
    ),
    (
        "spec.serving.rollout",
        {"steps": [10, 150]},
        "spec.serving.rollout.steps[1]",
        "must be <= 100",
    ),
    (
        "spec.serving.rollout",
        {"metrics": [{"name": "x", "query": "up"}]},
        "spec.serving.rollout.metrics[0]",
        "needs min or max",
    ),
    (
        "spec.serving.rollout",
        {"steps": [10, 50]},
        "spec.serving.rollout.steps[1]",
        "the last step must be 100",
    ),
    (
        "spec.serving.rollout",
        {"metrics": [{"name": "x", "query": "up", "min": 2, "max": 1}]},
        "spec.serving.rollout.metrics[0].max",
        "must be at least min",
    ),
    (
        "spec.serving.rollout",
        {"metrics": [{"name": "error-rate", "max": 0.1}]},
        "spec.serving.rollout.metrics[0].query",
        "required: 'error-rate' is not built in",
    ),
    (
        "spec.serving.rollout",
        {"metrics": [{"name": "x", "query": "rate(x{pod='{{ canry }}'}[1m])", "max": 1}]},
        "spec.serving.rollout.metrics[0].query",
        "unknown variable {{ canry }}",
    ),
    (
        "spec.serving.rollout",
        {"metrics": [{"name": "latency-p99", "relativeTo": "stable"}]},
        "spec.serving.rollout.metrics[0].maxIncrease",
        "required with relativeTo",
    ),
    (
        "spec.serving.rollout",
        {"metrics": [{"name": "latency-p99", "max": 1, "maxIncrease": 0.1}]},
        "spec.serving.rollout.metrics[0].maxIncrease",
        "only with relativeTo",
    ),
    (
        "spec.serving.rollout",
        {"metrics": [{"name": "x", "query": "up", "relativeTo": "stable", "maxIncrease": 1}]},
        "spec.serving.rollout.metrics[0].query",
        "must name {{ canary }}",
    ),
    (
        "spec.serving.rollout",
        {"metrics": [{"name": "success-rate", "min": 0.9}, {"name": "success-rate", "min": 1}]},
        "spec.serving.rollout.metrics[1].name",
        "duplicate metric name",
    ),
    (
        "spec.serving.rollout",
        {"metrics": [{"name": "latency-p99", "relativeTo": "canary", "maxIncrease": 1}]},
        "spec.serving.rollout.metrics[0].relativeTo",
        "must be 'stable'",
    ),
    (
        "spec.serving.rollout",
        {"failureCounting": "sometimes"},
        "spec.serving.rollout.failureCounting",
        "'consecutive' or 'total'",
    ),
    (
        "spec.serving.rollout",
        {"onFailure": "retry"},
        "spec.serving.rollout.onFailure",
        "'rollback'",
    ),
    (
        "spec.serving.rollout",
        {"interval": "1m", "progressDeadline": "30s"},
        "spec.serving.rollout.progressDeadline",
        "must be at least interval",
    ),
    (
        "spec.serving.rollout",
        {"promote": True, "abort": True},
        "spec.serving.rollout.abort",
        "cannot both be set",
    ),
    (
        "spec.serving.rollout",
        {"rollbackTo": "../3"},
        "spec.serving.rollout.rollbackTo",
        "must match",
    ),
    (
        "spec.serving.rollout",
        {"shadow": {"maxDisagreement": 1.5}},
        "spec.serving.rollout.shadow.maxDisagreement",
        "must be <= 1",
    ),
    (
        "spec.serving.rollout",
        {"shadow": {"minRequests": 0}},
        "spec.serving.rollout.shadow.minRequests",
        "must be >= 1",
    ),
    (
        "spec.serving.rollout",
        {"shadow": {"maxLatencyP99": "fast"}},
        "spec.serving.rollout.shadow.maxLatencyP99",
        "a duration",
    ),
    ("spec.serving.rollout", {"traffic": {"rate": 0}}, "spec.serving.rollout.traffic.rate", "> 0"),
    (
        "spec.serving.rollout",
        {"minSamples": -1},
        "spec.serving.rollout.minSamples",
        "must be >= 0",
    ),
    (
        "spec.triggers",
        {"onDegradation": {"query": "x{v='{{ canary }}'} > 1"}},
        "spec.triggers.onDegradation.query",
        "unknown variable {{ canary }}",
    ),
    (
        "spec.triggers",
        {"onDegradation": {"query": "up == 0", "for": "soon"}},
        "spec.triggers.onDegradation.for",
        "a duration",
    ),
    (
        "spec.serving.rollout",
        {"noData": "ignore"},
        "spec.serving.rollout.noData",
        "'hold' or 'fail'",
    ),
    ("spec.historyLimit", 0, "spec.historyLimit", "must be >= 1"),
    ("spec.evaluation", {"holdoutFraction": 1.5}, "spec.evaluation.holdoutFraction", "< 1"),
    ("spec.engine", "airflow", "spec.engine", "'local' or 'kubeflow'"),
    ("spec.unknownField", 1, "spec.unknownField", "unknown field"),
    ("metadata.name", "MNIST", "metadata.name", "DNS label"),
    ("kind", "Pipeline", "kind", "must be 'ModelPipeline'"),
    ("apiVersion", "mlcd.io/v1", "apiVersion", "must be 'mlcd.io/v1alpha1'"),
]
