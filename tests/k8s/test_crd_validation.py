"""Invalid specs on the real API server: which layer refuses each, and that it names the field.

The cases of tests/spec_cases.py (what the operator's parser refuses) are classified
here, one by one: refused by the API server's schema, by a CEL rule, by a list type, by the
request itself, or left to the operator, which reports them in a condition. Cases only the
API server meets (bounds, rules between list items) follow, each also refused by the parser.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from mlcd.domain.checks import parse_pipeline
from mlcd.errors import SpecError
from spec_cases import CASES, DELETE, with_change
from testenv.cluster import Cluster

SCHEMA, CEL, LIST_TYPE, REQUEST, OPERATOR = "schema", "CEL", "list type", "request", "operator"


@dataclass(frozen=True)
class Layer:
    """Who refuses a spec, and what the API server answers.

    ``path`` is the field the API server names when it differs from the operator's (a list
    rather than its item, or the other way round); ``says`` is text its message must contain
    (for CEL, by default the operator's own reason: both sides word a rule alike).
    """

    by: str
    path: str | None = None
    says: str | None = None
    status: int = 422
    strict_only: bool = False  # refused only with fieldValidation=Strict (kubectl's default)


def key(path: str, value: object) -> str:
    return f"{path}={'<deleted>' if value is DELETE else json.dumps(value)}"


#: Every case of the operator's table, by the layer that refuses it.
LAYERS: dict[str, Layer] = {
    key("spec.tuning.parameters.0.max", 0.0001): Layer(CEL),
    key("spec.tuning.maxTrials", 0): Layer(SCHEMA),
    key("spec.tuning.parallelTrials", 10): Layer(CEL),
    key("spec.tuning.algorithm", "hyperband"): Layer(SCHEMA, says="Unsupported value"),
    key("spec.tuning.objective.type", "up"): Layer(SCHEMA, says="Unsupported value"),
    key("spec.tuning.parameters.1.values", []): Layer(CEL),
    key("spec.tuning.parameters.1.values", ["a", "a"]): Layer(
        LIST_TYPE, path="spec.tuning.parameters[1].values[1]", says="Duplicate value"
    ),
    key("spec.tuning.parameters.0.min", -1): Layer(CEL),
    key("spec.tuning.parameters.0.type", "float"): Layer(SCHEMA, says="Unsupported value"),
    key("spec.tuning.parameters.0.name", "1lr"): Layer(SCHEMA, says="should match"),
    key("spec.tuning.parameters", []): Layer(SCHEMA, says="at least 1 items"),
    key("spec.tuning.parameters.1.name", "lr"): Layer(
        LIST_TYPE, path="spec.tuning.parameters[1]", says="Duplicate value"
    ),
    key("spec.tuning.objective", DELETE): Layer(SCHEMA, says="Required value"),
    key("spec.tuning.maxFailedTrials", -1): Layer(SCHEMA),
    key("spec.tuning.trialTimeout", "10 minutes"): Layer(SCHEMA, says="should match"),
    key("spec.trainer.workers", 0): Layer(SCHEMA),
    key("spec.trainer.workers", "two"): Layer(SCHEMA, says="must be of type integer"),
    key("spec.trainer.backend", "mpi"): Layer(SCHEMA, says="Unsupported value"),
    key("spec.trainer.command", []): Layer(SCHEMA),
    key("spec.trainer.command", DELETE): Layer(SCHEMA, says="Required value"),
    key("spec.trainer.metricsCollector", {"metricsFormat": ["(\\w+)"]}): Layer(OPERATOR),
    key("spec.trainer.metricsCollector", {"metricsFormat": ["(("]}): Layer(OPERATOR),
    key("spec.trainer.timeout", "1d"): Layer(SCHEMA),
    key("spec.gate.metric", "acc"): Layer(CEL),
    key("spec.gate.max", 0.5): Layer(CEL),
    key("spec.gate.baseline", {"maxRegression": -0.1}): Layer(SCHEMA),
    key("spec.gate.baseline", {"compareTo": "best"}): Layer(SCHEMA),
    key("spec.dataset.uri", "gs://bucket/x.npz"): Layer(CEL),
    key("spec.dataset.uri", "s3:///x.npz"): Layer(CEL),
    key("spec.dataset.schema.numClasses", 1): Layer(SCHEMA),
    key("spec.dataset.schema.featureShape", []): Layer(SCHEMA),
    key("spec.dataset.schema.valueMax", -1): Layer(CEL),
    key("spec.dataset.format", "csv"): Layer(SCHEMA),
    key("spec.dataset.credentialsSecretRef", {"name": "Bad_Name"}): Layer(SCHEMA),
    key("spec.dataset.drift", {"maxPsi": 0}): Layer(SCHEMA, says="should be greater than 0"),
    key("spec.schedule", "every night"): Layer(CEL),
    key("spec.timeZone", "Mars/Olympus"): Layer(OPERATOR),
    key("spec.concurrencyPolicy", "Skip"): Layer(SCHEMA),
    key("spec.serving.inferenceService", "MNIST"): Layer(SCHEMA),
    key("spec.serving.rollout", {"steps": [50, 10, 100]}): Layer(
        CEL, path="spec.serving.rollout.steps"
    ),
    key("spec.serving.rollout", {"steps": [10, 50]}): Layer(CEL, path="spec.serving.rollout.steps"),
    key("spec.serving.rollout", {"metrics": [{"name": "x", "query": "up", "min": 2, "max": 1}]}): (
        Layer(CEL)
    ),
    key("spec.serving.rollout", {"metrics": [{"name": "error-rate", "max": 0.1}]}): Layer(CEL),
    key(
        "spec.serving.rollout",
        {"metrics": [{"name": "x", "query": "rate(x{pod='{{ canry }}'}[1m])", "max": 1}]},
    ): Layer(CEL, says="unknown variable"),
    key("spec.serving.rollout", {"metrics": [{"name": "latency-p99", "relativeTo": "stable"}]}): (
        Layer(CEL)
    ),
    key(
        "spec.serving.rollout", {"metrics": [{"name": "latency-p99", "max": 1, "maxIncrease": 0.1}]}
    ): Layer(CEL),
    key(
        "spec.serving.rollout",
        {"metrics": [{"name": "x", "query": "up", "relativeTo": "stable", "maxIncrease": 1}]},
    ): Layer(CEL),
    key(
        "spec.serving.rollout",
        {"metrics": [{"name": "success-rate", "min": 0.9}, {"name": "success-rate", "min": 1}]},
    ): Layer(LIST_TYPE, path="spec.serving.rollout.metrics[1]", says="Duplicate value"),
    key(
        "spec.serving.rollout",
        {"metrics": [{"name": "latency-p99", "relativeTo": "canary", "maxIncrease": 1}]},
    ): Layer(SCHEMA, says="Unsupported value"),
    key("spec.serving.rollout", {"failureCounting": "sometimes"}): Layer(SCHEMA),
    key("spec.serving.rollout", {"onFailure": "retry"}): Layer(SCHEMA),
    # A default deadline shorter than a long interval is stretched, so only the operator can tell.
    key("spec.serving.rollout", {"interval": "1m", "progressDeadline": "30s"}): Layer(OPERATOR),
    key("spec.serving.rollout", {"promote": True, "abort": True}): Layer(CEL),
    key("spec.serving.rollout", {"rollbackTo": "../3"}): Layer(SCHEMA, says="should match"),
    key("spec.serving.rollout", {"shadow": {"maxDisagreement": 1.5}}): Layer(SCHEMA),
    key("spec.serving.rollout", {"shadow": {"minRequests": 0}}): Layer(SCHEMA),
    key("spec.serving.rollout", {"shadow": {"maxLatencyP99": "fast"}}): Layer(SCHEMA),
    key("spec.serving.rollout", {"traffic": {"rate": 0}}): Layer(SCHEMA),
    key("spec.serving.rollout", {"minSamples": -1}): Layer(SCHEMA),
    key("spec.triggers", {"onDegradation": {"query": "x{v='{{ canary }}'} > 1"}}): Layer(
        CEL, says="unknown variable"
    ),
    key("spec.triggers", {"onDegradation": {"query": "up == 0", "for": "soon"}}): Layer(SCHEMA),
    key("spec.serving.rollout", {"steps": [10, 150]}): Layer(SCHEMA),
    key("spec.serving.rollout", {"metrics": [{"name": "x", "query": "up"}]}): Layer(CEL),
    key("spec.serving.rollout", {"noData": "ignore"}): Layer(SCHEMA),
    key("spec.historyLimit", 0): Layer(SCHEMA),
    key("spec.evaluation", {"holdoutFraction": 1.5}): Layer(SCHEMA, says="should be less than 1"),
    key("spec.engine", "airflow"): Layer(SCHEMA),
    key("spec.unknownField", 1): Layer(
        REQUEST, says='unknown field "spec.unknownField"', status=400, strict_only=True
    ),
    key("metadata.name", "MNIST"): Layer(SCHEMA, says="should match"),
    key("kind", "Pipeline"): Layer(REQUEST, says="must be ModelPipeline"),
    key("apiVersion", "mlcd.io/v1"): Layer(
        REQUEST, says='version "v1" cannot be handled as a ModelPipeline', status=400
    ),
}

_PARAMETERS = "spec.tuning.parameters"
_LONG_ARGS = [f"--a{i}" for i in range(257)]


def _parameter(**fields: Any) -> dict[str, Any]:
    return {"name": "batch", **fields}


#: Specs only the API server's view adds: (path, value, field named, layer). The operator's
#: parser refuses each too, naming the same field, its list or one of its items.
APISERVER_CASES: list[tuple[str, object, str, str]] = [
    (
        f"{_PARAMETERS}.1",
        _parameter(type="discrete", values=["32", "big"]),
        f"{_PARAMETERS}[1].values",
        CEL,
    ),
    (f"{_PARAMETERS}.1", _parameter(type="int", min=0.5, max=4), f"{_PARAMETERS}[1].min", CEL),
    (f"{_PARAMETERS}.1", _parameter(type="int", max=4), f"{_PARAMETERS}[1].min", CEL),
    (f"{_PARAMETERS}.0.max", DELETE, f"{_PARAMETERS}[0].max", CEL),
    (f"{_PARAMETERS}.0.values", ["0.1"], f"{_PARAMETERS}[0].values", CEL),
    (f"{_PARAMETERS}.1.min", 1, f"{_PARAMETERS}[1].min", CEL),
    (f"{_PARAMETERS}.1.max", 1, f"{_PARAMETERS}[1].max", CEL),
    (f"{_PARAMETERS}.1.step", 1, f"{_PARAMETERS}[1].step", CEL),
    (f"{_PARAMETERS}.0.step", 0, f"{_PARAMETERS}[0].step", SCHEMA),
    (f"{_PARAMETERS}.0.distribution", "normal", f"{_PARAMETERS}[0].distribution", SCHEMA),
    (f"{_PARAMETERS}.1.values", ["x" * 65], f"{_PARAMETERS}[1].values[0]", SCHEMA),
    (
        _PARAMETERS,
        [_parameter(name=f"p{i}", type="categorical", values=["a"]) for i in range(51)],
        _PARAMETERS,
        SCHEMA,
    ),
    ("spec.tuning.algorithm", "grid", _PARAMETERS, CEL),
    (  # maxTrials left to its default, 12
        "spec.tuning",
        {
            "objective": {"metric": "accuracy"},
            "parallelTrials": 20,
            "parameters": [{"name": "lr", "type": "double", "min": 0.1, "max": 1}],
        },
        "spec.tuning.parallelTrials",
        CEL,
    ),
    ("spec.tuning.maxTrials", 1001, "spec.tuning.maxTrials", SCHEMA),
    ("spec.tuning.validationFraction", 0, "spec.tuning.validationFraction", SCHEMA),
    ("spec.tuning.objective.strategy", "mean", "spec.tuning.objective.strategy", SCHEMA),
    ("spec.tuning.objective.metric", "9acc", "spec.tuning.objective.metric", SCHEMA),
    ("metadata.name", "mnist.v2", "metadata.name", SCHEMA),
    ("metadata.name", "m" * 54, "metadata.name", SCHEMA),
    ("spec.artifacts", {"uri": "s3://"}, "spec.artifacts.uri", CEL),
    ("spec.artifacts", {"uri": "http://models/mnist"}, "spec.artifacts.uri", CEL),
    ("spec.dataset.uri", "", "spec.dataset.uri", SCHEMA),
    ("spec.dataset.uri", "s3://b/" + "k" * 2048, "spec.dataset.uri", SCHEMA),
    ("spec.dataset", DELETE, "spec.dataset", SCHEMA),
    ("spec.dataset.schema.featureShape", [0], "spec.dataset.schema.featureShape[0]", SCHEMA),
    ("spec.serving.rollout", {"steps": [10, 10]}, "spec.serving.rollout.steps[1]", LIST_TYPE),
    ("spec.serving.rollout", {"steps": []}, "spec.serving.rollout.steps", SCHEMA),
    ("spec.serving.rollout", {"steps": list(range(1, 22))}, "spec.serving.rollout.steps", SCHEMA),
    ("spec.serving.rollout", {"interval": "1d"}, "spec.serving.rollout.interval", SCHEMA),
    (
        "spec.serving.rollout",
        {"failureThreshold": 0},
        "spec.serving.rollout.failureThreshold",
        SCHEMA,
    ),
    (
        "spec.serving.rollout",
        {"metrics": [{"name": "x", "query": "", "min": 1}]},
        "spec.serving.rollout.metrics[0].query",
        SCHEMA,
    ),
    ("spec.serving.inferenceService", "m" * 46, "spec.serving.inferenceService", SCHEMA),
    ("spec.serving.modelName", "Digits", "spec.serving.modelName", SCHEMA),
    ("spec.gate.direction", "up", "spec.gate.direction", SCHEMA),
    ("spec.gate.metric", "my-score", "spec.gate.metric", CEL),
    ("spec.evaluation", {"parityTolerance": 0}, "spec.evaluation.parityTolerance", SCHEMA),
    ("spec.evaluation", {"extraMetrics": ["my score"]}, "spec.evaluation.extraMetrics[0]", SCHEMA),
    ("spec.trainer.workers", 65, "spec.trainer.workers", SCHEMA),
    ("spec.trainer.args", _LONG_ARGS, "spec.trainer.args", SCHEMA),
    ("spec.trainer.env", [{"name": "1X", "value": "y"}], "spec.trainer.env[0].name", SCHEMA),
    ("spec.trainer.resourcesPerWorker", {"gpu": -1}, "spec.trainer.resourcesPerWorker.gpu", SCHEMA),
    ("spec.triggers", {"pollInterval": "5 minutes"}, "spec.triggers.pollInterval", SCHEMA),
    ("spec.startingDeadlineSeconds", 0, "spec.startingDeadlineSeconds", SCHEMA),
    ("spec.schedule", "0 3 * *", "spec.schedule", CEL),
]

#: Specs both sides accept: the rules refuse no more than they should.
ACCEPTED: list[tuple[str, object]] = [
    (f"{_PARAMETERS}.1", _parameter(type="discrete", values=["16", "3.5e1", "1_024", " 8 "])),
    (f"{_PARAMETERS}.1", _parameter(type="int", min=1, max=8.0, step=1)),
    (f"{_PARAMETERS}.1", _parameter(type="double", min=-1, max=1, values=None, step=None)),
    ("spec.tuning", None),
    ("spec.gate.min", None),
    ("spec.gate", {"metric": "loss", "direction": "minimize", "max": 0.5}),
    ("spec.evaluation", {"extraMetrics": ["my-score"]}),
    ("spec.schedule", "@daily"),
    ("spec.schedule", "*/15 6-18 * JAN-MAR mon-fri"),
    ("spec.schedule", None),
    ("spec.artifacts", {"uri": "file:///var/models"}),
    ("spec.artifacts", {"uri": "models/mnist"}),
    (
        "spec.serving.rollout",
        {"steps": [5, 25, 100], "metrics": [{"name": "x", "query": "up", "max": 1}]},
    ),
    (
        "spec.serving.rollout",
        {
            "shadow": {"maxDisagreement": 0.05, "minRequests": 50, "maxLatencyP99": "250ms"},
            "steps": [20, 50, 100],
            "interval": "10s",
            "failureCounting": "total",
            "metrics": [
                {"name": "success-rate", "min": 0.99},
                {"name": "latency-p99", "relativeTo": "stable", "maxIncrease": 0.05},
                {
                    "name": "errors",
                    "query": "sum(rate(x{server='{{ canary }}',ns='{{ namespace }}'}"
                    "[{{ interval }}]))",
                    "max": 1,
                    "dryRun": True,
                },
            ],
            "onFailure": "pause",
            "traffic": {"rate": 20},
        },
    ),
    ("spec.triggers", {"onDegradation": {"query": "x{v='{{ stable }}'} < 0.9", "for": "2m"}}),
]


def _accepted_ids() -> list[str]:
    return [key(p, v)[:70] for p, v in ACCEPTED]


def _refused(
    pipelines: Any, body: dict[str, Any], field_validation: str = "Strict"
) -> ApiException:
    with pytest.raises(ApiException) as caught:
        pipelines.create(body, field_validation=field_validation)
    return caught.value


def _named(error: ApiException, path: str) -> bool:
    """One of the causes in the API server's answer is the field at ``path``."""
    causes = (json.loads(error.body).get("details") or {}).get("causes", [])
    return path in [c.get("field") for c in causes] and f"{path}: " in _message(error)


def _message(error: ApiException) -> str:
    return str(json.loads(error.body).get("message", ""))


_CEL_ANSWER = re.compile(r'(Invalid value: "(object|string|array)": |Required value: |Forbidden: )')


def _layers(error: ApiException, path: str) -> set[str]:
    """Which layers the API server's causes for ``path`` come from, told by their shape.

    A CEL rule's cause shows the value's type, not the value, and never says "in body"; the
    schema's shows the value; a list type's is a duplicate.
    """
    causes = (json.loads(error.body).get("details") or {}).get("causes", [])
    found = set()
    for cause in causes:
        if cause.get("field") != path:
            continue
        message = cause.get("message", "")
        if cause.get("reason") == "FieldValueDuplicate":
            found.add(LIST_TYPE)
        elif _CEL_ANSWER.match(message) and " in body " not in message:
            found.add(CEL)
        else:
            found.add(SCHEMA)
    return found


def _same_field(a: str, b: str) -> bool:
    """The same field, or a list/object and one of its items."""
    short, long = sorted((a, b), key=len)
    return long == short or long.startswith((f"{short}.", f"{short}["))


_counter = iter(range(10_000))  # one name per object in the module's namespace


def _named_body(path: str, value: object) -> dict[str, Any]:
    body = with_change(path, value)
    if path != "metadata.name":
        body["metadata"]["name"] = f"case-{next(_counter)}"
    return body


def test_every_case_of_the_operators_table_has_a_layer() -> None:
    keys = [key(path, value) for path, value, _, _ in CASES]
    assert sorted(keys) == sorted(LAYERS), "classify the new case in LAYERS"


def test_at_least_forty_invalid_specs_are_refused_by_the_api_server() -> None:
    refused = [k for k, layer in LAYERS.items() if layer.by != OPERATOR and not layer.strict_only]
    assert len(refused) + len(APISERVER_CASES) >= 40


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"), CASES, ids=[key(c[0], c[1])[:70] for c in CASES]
)
def test_the_operators_cases_on_the_api_server(
    crd_pipelines: Any, path: str, value: object, field: str, reason: str
) -> None:
    layer = LAYERS[key(path, value)]
    body = _named_body(path, value)
    if layer.by == OPERATOR:
        stored = crd_pipelines.create(body)
        with pytest.raises(SpecError) as caught:
            parse_pipeline(stored)
        assert field in {p.path for p in caught.value.problems}
        return
    error = _refused(crd_pipelines, body)
    assert error.status == layer.status, _message(error)
    expected_path = layer.path or field
    assert _same_field(expected_path, field)
    if layer.status == 422:
        assert _named(error, expected_path), _message(error)
    if layer.by != REQUEST:
        assert layer.by in _layers(error, expected_path), _message(error)
    says = layer.says or (reason if layer.by == CEL else None)
    if says:
        assert says in _message(error)
    if layer.strict_only:
        # Without strict validation the unknown field is pruned, as the schema says.
        stored = crd_pipelines.create(_named_body(path, value), field_validation="Ignore")
        assert "unknownField" not in stored["spec"]
        parse_pipeline(stored)


@pytest.mark.parametrize(
    ("path", "value", "field", "by"),
    APISERVER_CASES,
    ids=[key(c[0], c[1])[:70] for c in APISERVER_CASES],
)
def test_the_api_server_names_the_field(
    crd_pipelines: Any, path: str, value: object, field: str, by: str
) -> None:
    error = _refused(crd_pipelines, _named_body(path, value))
    assert error.status == 422, _message(error)
    assert _named(error, field), _message(error)
    assert by in _layers(error, field), _message(error)
    # The operator's parser refuses it too, at the same field.
    with pytest.raises(SpecError) as caught:
        parse_pipeline(with_change(path, value))
    paths = [p.path for p in caught.value.problems]
    assert any(_same_field(field, p) for p in paths), paths


@pytest.mark.parametrize(("path", "value"), ACCEPTED, ids=_accepted_ids())
def test_valid_variations_are_accepted_by_both(
    crd_pipelines: Any, path: str, value: object
) -> None:
    body = _named_body(path, value)
    parse_pipeline(body)
    stored = crd_pipelines.create(body)
    assert parse_pipeline(stored).spec == parse_pipeline(body).spec


def test_kubectl_apply_refuses_an_unknown_field_and_validate_false_prunes_it(
    apiserver: Cluster, crd_namespace: str
) -> None:
    body = with_change("spec.trainer.wrokers", 2)
    body["metadata"]["name"] = "typo"
    manifest = yaml.safe_dump(body)
    refused = apiserver.kubectl(
        "apply", "-n", crd_namespace, "-f", "-", input=manifest, check=False
    )
    assert refused.returncode != 0
    assert 'unknown field "spec.trainer.wrokers"' in refused.stderr
    apiserver.kubectl("apply", "-n", crd_namespace, "--validate=false", "-f", "-", input=manifest)
    stored = json.loads(
        apiserver.kubectl("get", "mp", "typo", "-n", crd_namespace, "-o", "json").stdout
    )
    assert "wrokers" not in stored["spec"]["trainer"]


def test_kubectl_apply_shows_every_problem_with_its_field(
    apiserver: Cluster, crd_namespace: str
) -> None:
    body = with_change("spec.tuning.parameters.0.max", 0.0001)
    body["spec"]["gate"]["metric"] = "acc"
    body["spec"]["serving"]["rollout"] = {"steps": [50, 10]}
    body["metadata"]["name"] = "three-problems"
    refused = apiserver.kubectl(
        "apply", "-n", crd_namespace, "-f", "-", input=yaml.safe_dump(body), check=False
    )
    assert refused.returncode != 0
    for line in (
        "spec.tuning.parameters[0].max: Invalid value",
        "spec.gate.metric: Invalid value",
        "spec.serving.rollout.steps: Invalid value",
    ):
        assert line in refused.stderr, refused.stderr


def test_the_gate_may_use_a_metric_the_trainer_prints(crd_pipelines: Any) -> None:
    body = _named_body("spec.evaluation", {"extraMetrics": ["top5-accuracy"]})
    body["spec"]["gate"]["metric"] = "top5-accuracy"
    stored = crd_pipelines.create(body)
    assert parse_pipeline(stored).spec.gate.metric == "top5-accuracy"
