"""The ModelPipeline CRD: generated from the models, served by a real API server."""

from __future__ import annotations

import copy
import difflib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from croniter import croniter
from kubernetes import client

from mlcd.domain.checks import parse_pipeline
from mlcd.domain.records import DataReport, GateVerdict, ModelRef, RunRecord, ServingRecord
from mlcd.domain.spec import ModelPipelineSpec, Parameter, Tuning
from mlcd.domain.status import Condition, CurrentRun, ModelPipelineStatus, summarize
from mlcd.k8s.crd import CRON, FILE_NAME, NAME, NUMBER, custom_resource_definition, render
from testenv.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / FILE_NAME
EXAMPLE = REPO / "examples" / "mnist" / "modelpipeline.yaml"
MINIMAL: dict[str, Any] = {
    "apiVersion": "mlcd.io/v1alpha1",
    "kind": "ModelPipeline",
    "metadata": {"name": "minimal"},
    "spec": {
        "dataset": {"uri": "s3://datasets/digits.npz", "schema": {"featureShape": [64]}},
        "trainer": {"command": ["python", "-m", "digits"]},
        "gate": {"metric": "accuracy"},
        "serving": {"inferenceService": "digits"},
    },
}
MINIMAL["spec"]["dataset"]["schema"]["numClasses"] = 10


def eventually(check: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {what}")
        time.sleep(0.2)


def openapi() -> dict[str, Any]:
    return custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def schema_nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below ``node``, with a path such as spec.tuning.parameters[].name."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")


def words(text: str) -> str:
    return " ".join(text.split())


# -- the generated file ---------------------------------------------------------------------------


def test_the_checked_in_crd_is_what_the_models_generate() -> None:
    generated = render()
    checked_in = CRD_FILE.read_text()
    diff = "".join(
        difflib.unified_diff(
            checked_in.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            f"checked in: crds/{FILE_NAME}",
            "generated from the models",
            n=2,
        )
    )
    assert not diff, (
        "the CRD drifted from the models; regenerate it with\n"
        f"  python -m mlcd.k8s.crd --output crds/{FILE_NAME}\n{diff[:4000]}"
    )


def test_the_schema_is_structural() -> None:
    nodes = list(schema_nodes(openapi(), ""))
    forbidden = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "const", "title"}
    assert [(p, sorted(forbidden & n.keys())) for p, n in nodes if forbidden & n.keys()] == []
    assert not [p for p, n in nodes if n.get("additionalProperties") is False]
    untyped = [p for p, n in nodes if "type" not in n]
    assert untyped == [".status.runs[].params{}"], "only a trial's scalar of several types"
    tuning = openapi()["properties"]["spec"]["properties"]["tuning"]
    assert tuning["nullable"] is True
    fraction = tuning["properties"]["validationFraction"]
    assert fraction == fraction | {
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 1,
        "exclusiveMaximum": True,
    }


@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_field_has_a_description(part: str) -> None:
    undocumented = [
        path
        for path, node in schema_nodes(openapi()["properties"][part], part)
        if not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert undocumented == []


def test_every_list_and_string_checked_by_cel_is_bounded() -> None:
    # The API server estimates a rule's cost from these bounds and refuses unbounded ones.
    spec = openapi()["properties"]["spec"]
    for path, node in schema_nodes(spec, "spec"):
        if node.get("type") == "array":
            assert "maxItems" in node, path


@pytest.mark.parametrize(
    "text",
    ["1", "-2", "+3.5", "1e-3", "1E5", ".5", "5.", "1_000", " 7 ", "inf", "-Infinity", "nan"],
)
def test_discrete_values_python_reads_as_numbers_match(text: str) -> None:
    float(text)
    assert re.fullmatch(NUMBER, text)


@pytest.mark.parametrize("text", ["", "big", "1..2", "1e", "_1", "1__0", "0x10", "1,5", "--1"])
def test_discrete_values_python_refuses_do_not_match(text: str) -> None:
    with pytest.raises(ValueError):
        float(text)
    assert not re.fullmatch(NUMBER, text)


@pytest.mark.parametrize(
    "expression",
    [
        *("0 3 * * *", "*/5 * * * *", "0 3 * * MON-FRI", "0 0 1,15 * *", "0 0 L * *"),
        *("0 3 * JAN sun", "0 0 ? * *", "0 0 * * 1#2", "@daily", "@hourly", "@weekly"),
        *("@monthly", "@yearly", "@annually", "@midnight", "@DAILY"),
    ],
)
def test_cron_shapes_the_operator_reads_match(expression: str) -> None:
    assert croniter.is_valid(expression)
    assert re.fullmatch(CRON, expression)


@pytest.mark.parametrize(
    "expression", ["every night", "", "@reboot", "@every 5m", "0 3 * *", "0 3 * * * * * *", "0 3"]
)
def test_cron_shapes_the_operator_refuses_do_not_match(expression: str) -> None:
    assert not croniter.is_valid(expression)
    assert not re.fullmatch(CRON, expression)


def test_six_fields_are_refused_though_croniter_reads_them_as_seconds() -> None:
    # CronJob's five fields only; the operator's parser (croniter) is more lenient.
    assert croniter.is_valid("0 0 3 * * *")
    assert not re.fullmatch(CRON, "0 0 3 * * *")


# -- on the API server ----------------------------------------------------------------------------


def test_the_crd_is_established_with_its_names(apiserver: Cluster, crd_installed: str) -> None:
    assert crd_installed == NAME
    with apiserver.api_client() as api:
        crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(NAME)
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert "NonStructuralSchema" not in conditions
    assert crd.status.accepted_names.short_names == ["mp"]
    assert crd.status.accepted_names.categories == ["mlcd", "all"]


def test_kubectl_apply_of_the_example_stores_what_the_operator_parses(
    apiserver: Cluster, crd_namespace: str
) -> None:
    apply = apiserver.kubectl("apply", "-n", crd_namespace, "-f", str(EXAMPLE))
    assert "modelpipeline.mlcd.io/mnist created" in apply.stdout
    stored = json.loads(
        apiserver.kubectl("get", "mp", "mnist", "-n", crd_namespace, "-o", "json").stdout
    )

    # The API server applied the models' defaults...
    spec = stored["spec"]
    rollout = spec["serving"]["rollout"]
    assert (rollout["steps"], rollout["interval"], rollout["traffic"]) == (
        [20, 50, 100],
        "10s",
        {"rate": 20, "source": "holdout"},
    )
    assert {k: rollout[k] for k in ("failureThreshold", "failureCounting", "noData")} == {
        "failureThreshold": 2,
        "failureCounting": "consecutive",
        "noData": "hold",
    }
    assert (rollout["onFailure"], rollout["pause"], rollout["promote"], rollout["abort"]) == (
        "rollback",
        False,
        False,
        False,
    )
    assert spec["tuning"]["trialTimeout"] == "30m"
    assert spec["tuning"]["parameters"][1]["distribution"] == "uniform"
    assert spec["trainer"]["metricsCollector"] == {"kind": "StdOut"}
    # ... and the operator reads the stored object as it reads the file.
    assert parse_pipeline(stored).spec == parse_pipeline(yaml.safe_load(EXAMPLE.read_text())).spec


def test_a_minimal_spec_gets_every_default_the_models_have(crd_pipelines: Any) -> None:
    stored = crd_pipelines.create(copy.deepcopy(MINIMAL))
    assert {"triggers", "evaluation", "suspend", "concurrencyPolicy", "historyLimit"} <= set(
        stored["spec"]
    )
    from_file = ModelPipelineSpec.model_validate(MINIMAL["spec"])
    assert parse_pipeline(stored).spec == from_file
    # Nothing but defaults was added: the stored spec is the model's, minus empty lists.
    dumped = from_file.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert stored["spec"] == prune_empty(dumped)


def prune_empty(value: Any) -> Any:
    if isinstance(value, dict):
        kept = {k: prune_empty(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in ([], {})}
    return value


def a_status() -> ModelPipelineStatus:
    verdict = GateVerdict(
        passed=True,
        metric="accuracy",
        value=0.981,
        min=0.97,
        baseline_value=0.975,
        baseline_version="v2",
        max_regression=0.005,
        regression=-0.006,
        reason="accuracy 0.981 >= min 0.97",
    )
    run = RunRecord(
        id="mnist-s-0001",
        trigger="schedule",
        result="promoted",
        stage="done",
        started_at="2026-01-01T03:00:00Z",
        finished_at="2026-01-01T03:20:00Z",
        params={"lr": 0.0042, "optimizer": "adam", "epochs": 3},
        metrics={"accuracy": 0.981, "loss": 0.07},
        gate=verdict,
        model=ModelRef(uri="s3://models/mnist/v3/model.onnx", version="v3", sha256="ab" * 32),
        timings={"train": 812.5},
        data=DataReport(ok=True, samples=4000, drift={"feature-psi": 0.01}, version="v1"),
    )
    # Every field set: a field the generated schema lacked would be pruned (kopf #574) and
    # this round trip would fail.
    summary = summarize(run, "promoted", attempt=2, link="s3://models/mnist/runs/a/b/r.json")
    active = CurrentRun(
        id="mnist-m1",
        trigger="manual",
        stage="serve",
        started_at="2026-01-02T03:00:00Z",
        attempt=1,
        engine="local",
        message="serving it is retried: object store unreachable",
        children={"kfpRun": "run-1"},
    )
    return ModelPipelineStatus(
        phase="Ready",
        observed_generation=1,
        conditions=[
            Condition(
                type="Ready",
                status="True",
                reason="Serving",
                message="v3 serves 100%",
                last_transition_time="2026-01-01T03:20:00Z",
            )
        ],
        next_schedule_time="2030-01-02T03:00:00Z",
        last_schedule_time="2030-01-01T03:00:00Z",
        active_runs=[active],
        runs=[summary],
        dataset_version="version:1",
        handled_trigger="2026-01-02T03:00:00.000001",
        serving=ServingRecord(
            model="mnist",
            version="v3",
            uri="s3://models/mnist/v3/model.onnx",
            sha256="ab" * 32,
            metrics={"accuracy": 0.981},
        ),
        last_metric="accuracy=0.981",
    )


@pytest.fixture(scope="module")
def with_status(crd_pipelines: Any) -> dict[str, Any]:
    """A ModelPipeline whose status the operator's model wrote through /status."""
    body = copy.deepcopy(MINIMAL)
    body["metadata"]["name"] = "with-status"
    body["status"] = {"phase": "Smuggled"}
    created = crd_pipelines.create(body)
    assert "status" not in created, "status is not written through the main resource"
    status = a_status().model_dump(by_alias=True, mode="json", exclude_none=True)
    return crd_pipelines.replace_status({**created, "status": status})


def test_the_status_the_operator_writes_is_stored_as_is(with_status: dict[str, Any]) -> None:
    assert ModelPipelineStatus.model_validate(with_status["status"]) == a_status()


def test_a_spec_update_does_not_touch_status(
    crd_pipelines: Any, with_status: dict[str, Any]
) -> None:
    body = crd_pipelines.get("with-status")
    before = copy.deepcopy(body["status"])
    body["spec"]["historyLimit"] = 3
    body["status"]["phase"] = "Failed"
    updated = crd_pipelines.replace(body)
    assert updated["spec"]["historyLimit"] == 3
    assert updated["metadata"]["generation"] == with_status["metadata"]["generation"] + 1
    assert updated["status"] == before


def test_kubectl_get_prints_the_columns(
    apiserver: Cluster, crd_namespace: str, with_status: dict[str, Any]
) -> None:
    for what in ("mp", "mlcd"):  # the short name, the category
        out = apiserver.kubectl("get", what, "with-status", "-n", crd_namespace).stdout
        header, row = out.splitlines()
        assert re.split(r"\s{2,}", header) == [
            "NAME",
            "PHASE",
            "SERVING",
            "METRIC",
            "NEXT RUN",
            "AGE",
        ]
        assert row.split()[:5] == [
            "with-status",
            "Ready",
            "v3",
            "accuracy=0.981",
            "2030-01-02T03:00:00Z",
        ]


@pytest.mark.parametrize(
    ("resource", "model"),
    [("modelpipeline.spec.tuning", Tuning), ("modelpipeline.spec.tuning.parameters", Parameter)],
)
def test_kubectl_explain_documents_every_field(
    apiserver: Cluster, crd_installed: str, resource: str, model: type
) -> None:
    def explained() -> bool:
        return apiserver.kubectl("explain", resource, check=False).returncode == 0

    eventually(explained, what=f"kubectl explain {resource} (the OpenAPI document is published)")
    out = words(apiserver.kubectl("explain", resource).stdout)
    for name, field in model.model_fields.items():
        alias = field.alias or name
        assert re.search(rf"\b{alias}\b", out), alias
        assert field.description and words(field.description) in out, alias


# -- Kubernetes API conventions (what kube-api-linter checks on the Kubeflow Trainer's API) -----


def convention_problems(schema: dict[str, Any]) -> list[str]:
    """Every string without maxLength or enum, every array without maxItems or a list type,
    and conditions that are not a map keyed by type; each named by its field path."""
    problems = []
    for part in ("spec", "status"):
        for path, node in schema_nodes(schema["properties"][part], part):
            kind = node.get("type")
            if kind == "string" and "maxLength" not in node and "enum" not in node:
                problems.append(f"{path}: a string needs maxLength or enum")
            if kind == "array":
                if "maxItems" not in node:
                    problems.append(f"{path}: an array needs maxItems")
                if "x-kubernetes-list-type" not in node:
                    problems.append(f"{path}: an array needs x-kubernetes-list-type")
                elif node["x-kubernetes-list-type"] == "map":
                    keys = node.get("x-kubernetes-list-map-keys") or []
                    required = set(node.get("items", {}).get("required", []))
                    if not keys or not set(keys) <= required:
                        problems.append(f"{path}: map list keys {keys} must be required fields")
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    if conditions.get("x-kubernetes-list-type") != "map" or conditions.get(
        "x-kubernetes-list-map-keys"
    ) != ["type"]:
        problems.append("status.conditions: must be listType map keyed by type")
    return problems


def test_the_schema_follows_the_kubernetes_api_conventions() -> None:
    problems = convention_problems(openapi())
    assert problems == [], "\n".join(problems)


def test_the_convention_check_names_the_field_at_fault() -> None:
    schema = copy.deepcopy(openapi())
    status = schema["properties"]["status"]["properties"]
    status["note"] = {"type": "string"}
    status["notes"] = {"type": "array", "items": {"type": "string", "maxLength": 8}}
    del status["conditions"]["x-kubernetes-list-map-keys"]
    assert convention_problems(schema) == [
        "status.conditions: map list keys [] must be required fields",
        "status.note: a string needs maxLength or enum",
        "status.notes: an array needs maxItems",
        "status.notes: an array needs x-kubernetes-list-type",
        "status.conditions: must be listType map keyed by type",
    ]


def test_non_finite_metrics_and_long_texts_reach_the_status_and_back(crd_pipelines: Any) -> None:
    import math

    body = copy.deepcopy(MINIMAL)
    body["metadata"]["name"] = "odd-numbers"
    created = crd_pipelines.create(body)
    run = (
        a_status()
        .runs[0]
        .model_copy(
            update={
                "metrics": {"accuracy": 0.5, "custom": math.nan, "loss": math.inf},
                "reason": "gate: custom is NaN: never passes; " + "x" * 10_000,
            }
        )
    )
    status = a_status().model_copy(update={"runs": [run]})
    sent = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    stored = crd_pipelines.replace_status({**created, "status": sent})
    assert stored["status"]["runs"][0]["metrics"] == {"accuracy": 0.5, "custom": None, "loss": None}
    back = ModelPipelineStatus.model_validate(stored["status"])
    assert math.isnan(back.runs[0].metrics["custom"]) and back.runs[0].metrics["accuracy"] == 0.5
    reason = back.runs[0].reason or ""
    # A summary's reason is cut to its bound; the whole text is in the run's record.
    assert reason.startswith("gate: custom is NaN: never passes") and len(reason) == 512
