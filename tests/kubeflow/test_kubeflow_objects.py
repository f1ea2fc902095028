"""The Kubeflow objects a run creates, built from the SDKs' models: what each spec field
becomes (no cluster needed)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from helpers import SOFTMAX_TRAINER, softmax_pipeline
from mlcd.domain.checks import parse_pipeline
from mlcd.domain.spec import ModelPipeline
from mlcd.engines.kubeflow.settings import KubeflowSettings, SecretKeyRef
from mlcd.errors import PermanentError, SpecError
from mlcd.pipeline.kubeflow import objects
from mlcd.pipeline.kubeflow.names import child_name, kfp_run_name
from mlcd.pipeline.kubeflow.settings import ClusterSteps

CHILD = objects.Child("r-1-tune", "team-a", "run-1", "digits", {"MLCD_RUN_ID": "run-1"})


def pipeline(**spec: Any) -> ModelPipeline:
    body = softmax_pipeline("s3://data/digits.npz")
    body["metadata"]["namespace"] = "team-a"
    body["spec"]["trainer"]["image"] = "registry.test/softmax:1"
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body["spec"].get(key), dict):
            body["spec"][key] = {**body["spec"][key], **value}
        else:
            body["spec"][key] = value
    return parse_pipeline(body)


def experiment(**spec: Any) -> dict[str, Any]:
    p = pipeline(**spec)
    assert p.spec.tuning is not None
    return objects.experiment(p, p.spec.tuning, CHILD, ClusterSteps())


@pytest.mark.parametrize(
    ("collector", "expected"),
    [
        ({}, {"collector": {"kind": "StdOut"}}),
        (
            {"metricsFormat": [r"acc: (\w+)=([0-9.]+)"]},
            {
                "collector": {"kind": "StdOut"},
                "source": {"filter": {"metricsFormat": [r"acc: (\w+)=([0-9.]+)"]}},
            },
        ),
        (
            {"kind": "File"},
            {
                "collector": {"kind": "File"},
                "source": {
                    "fileSystemPath": {
                        "path": objects.METRICS_FILE,
                        "kind": "File",
                        "format": "JSON",
                    }
                },
            },
        ),
    ],
    ids=["stdout", "custom-filter", "file"],
)
def test_metrics_collector(collector: dict[str, Any], expected: dict[str, Any]) -> None:
    body = experiment(trainer={"metricsCollector": collector})
    assert body["spec"]["metricsCollectorSpec"] == expected


@pytest.mark.parametrize(
    ("algorithm", "seeded"),
    [
        ("random", True),
        ("tpe", True),
        ("multivariate-tpe", True),
        ("cmaes", True),
        ("bayesianoptimization", True),
        ("sobol", False),
        ("grid", False),
    ],
)
def test_algorithm_names_are_katibs(algorithm: str, seeded: bool) -> None:
    parameters = [{"name": "lr", "type": "double", "min": 0.1, "max": 0.5, "step": 0.1}]
    body = experiment(tuning={"algorithm": algorithm, "seed": 7, "parameters": parameters})
    spec = body["spec"]["algorithm"]
    assert spec["algorithmName"] == algorithm
    assert spec.get("algorithmSettings") == (
        [{"name": "random_state", "value": "7"}] if seeded else None
    )


def test_objective_budget_and_search_space() -> None:
    body = experiment(
        tuning={
            "algorithm": "grid",
            "objective": {"metric": "accuracy", "type": "maximize", "goal": 0.95},
            "maxTrials": 50,
            "parallelTrials": 4,
            "maxFailedTrials": 2,
            "parameters": [
                {"name": "epochs", "type": "int", "min": 1, "max": 3},
                {"name": "optimizer", "type": "categorical", "values": ["sgd", "adam"]},
            ],
        },
        evaluation={"extraMetrics": ["eval-extra"]},
    )
    spec = body["spec"]
    assert spec["objective"] == {
        "type": "maximize",
        "objectiveMetricName": "accuracy",
        "goal": 0.95,
        "additionalMetricNames": ["eval-extra"],
    }
    # grid: at most the grid's size; Katib fails at maxFailedTrialCount, mlcd after more than.
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (
        6,
        4,
        3,
    )
    assert spec["parameters"] == [
        {
            "name": "epochs",
            "parameterType": "int",
            "feasibleSpace": {"min": "1", "max": "3", "distribution": "uniform"},
        },
        {
            "name": "optimizer",
            "parameterType": "categorical",
            "feasibleSpace": {"list": ["sgd", "adam"]},
        },
    ]


def test_secrets_reach_pods_by_reference_only() -> None:
    p = pipeline(
        artifacts={
            "uri": "s3://models/digits",
            "endpoint": "http://minio.test:9000",
            "credentialsSecretRef": {"name": "minio-creds"},
        },
        trainer={"env": [{"name": "MODE", "value": "fast"}]},
    )
    body = objects.train_job(p, ["--lr=0.1"], CHILD, ClusterSteps())
    env = body["spec"]["trainer"]["env"]
    assert {"name": "MODE", "value": "fast"} in env
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio.test:9000"} in env
    assert {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "minio-creds", "key": "secretKey"}},
    } in env


def test_resources_and_runtime_of_a_trainjob() -> None:
    p = pipeline(trainer={"workers": 4, "resourcesPerWorker": {"cpu": "2", "memory": "4Gi"}})
    body = objects.train_job(p, ["--lr=0.1"], CHILD, ClusterSteps(runtime="torch-small"))
    assert body["spec"]["runtimeRef"] == {
        "name": "torch-small",
        "kind": "ClusterTrainingRuntime",
        "apiGroup": "trainer.kubeflow.org",
    }
    trainer = body["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["args"][-1] == "--lr=0.1"
    # The runtime sets torchrun's PET_* variables: torchrun starts one rank per pod.
    assert trainer["command"] == ["torchrun", "--no-python", "python", str(SOFTMAX_TRAINER)]
    assert trainer["numProcPerNode"] == 1
    amounts = {"cpu": "2", "memory": "4Gi"}
    assert trainer["resourcesPerNode"] == {"requests": amounts, "limits": amounts}


def test_a_pytorchjob_has_a_master_and_workers() -> None:
    p = pipeline(trainer={"workers": 3})
    body = objects.pytorch_job(p, ["--lr=0.1"], CHILD, ClusterSteps(training="PyTorchJob"))
    replicas = body["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 2)
    assert replicas["Master"]["template"]["spec"]["containers"][0]["name"] == "pytorch"
    one = objects.pytorch_job(pipeline(), [], CHILD, ClusterSteps(training="PyTorchJob"))
    assert list(one["spec"]["pytorchReplicaSpecs"]) == ["Master"]


TEMPLATE = {
    "metadata": {"labels": {"team": "a", "mlcd.io/run": "theirs"}, "annotations": {"a": "1"}},
    "spec": {
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "pool", "operator": "Exists", "effect": "NoSchedule"}],
        "restartPolicy": "Always",
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "containers": [
            {
                "name": "ignored",
                "image": "ignored:1",
                "imagePullPolicy": "Never",
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                "env": [
                    {"name": "HF_HOME", "value": "/cache"},
                    {"name": "MLCD_STAGE", "value": "x"},
                ],
            }
        ],
    },
}


def test_the_pod_template_reaches_trial_and_pytorchjob_pods_under_mlcds_fields() -> None:
    p = pipeline()
    assert p.spec.tuning is not None
    cluster = ClusterSteps(training="PyTorchJob", pod_template=TEMPLATE, pod_annotations={"b": "2"})
    trial = objects.experiment(p, p.spec.tuning, CHILD, cluster)["spec"]["trialTemplate"]
    job = objects.pytorch_job(p, [], CHILD, cluster)["spec"]["pytorchReplicaSpecs"]["Master"]
    for template in (trial["trialSpec"]["spec"]["template"], job["template"]):
        assert template["metadata"]["labels"] == {"team": "a", "mlcd.io/run": "run-1"}
        assert template["metadata"]["annotations"] == {"a": "1", "b": "2"}
        spec = template["spec"]
        assert spec["nodeSelector"] == {"pool": "cpu"} and spec["tolerations"][0]["key"] == "pool"
        assert spec["volumes"] == [{"name": "cache", "emptyDir": {}}]
        assert spec["restartPolicy"] == "Never"  # mlcd's
        (container,) = spec["containers"]
        assert container["name"] in ("trainer", "pytorch")
        assert container["image"] == "registry.test/softmax:1"
        assert container["imagePullPolicy"] == "Never"
        assert container["volumeMounts"] == [{"name": "cache", "mountPath": "/cache"}]
        env = [(e["name"], e.get("value")) for e in container["env"]]
        assert env[0] == ("HF_HOME", "/cache")
        assert [v for n, v in env if n == "MLCD_STAGE"] in (["trial"], ["train"])  # mlcd's
    # A TrainJob's pods take theirs from the runtime.
    body = objects.train_job(p, [], CHILD, ClusterSteps(pod_template=TEMPLATE))
    assert "nodeSelector" not in str(body)


def test_a_pod_template_of_the_wrong_shape_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLCD_KUBEFLOW_POD_TEMPLATE", json.dumps(TEMPLATE))
    assert KubeflowSettings(endpoint="http://kfp").pod_template == TEMPLATE
    two = {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "kind": "Pod"}
    monkeypatch.setenv("MLCD_KUBEFLOW_POD_TEMPLATE", yaml.safe_dump(two))
    with pytest.raises(SpecError) as refused:
        KubeflowSettings(endpoint="http://kfp")
    assert str(refused.value) == (
        "MLCD_KUBEFLOW_POD_TEMPLATE: kind: not a field of a pod template; "
        "MLCD_KUBEFLOW_POD_TEMPLATE: spec.containers: at most one, merged into the trainer's "
        "container"
    )
    monkeypatch.setenv("MLCD_KUBEFLOW_POD_TEMPLATE", "{spec: [")
    with pytest.raises(SpecError, match=r"MLCD_KUBEFLOW_POD_TEMPLATE: not JSON or YAML"):
        KubeflowSettings(endpoint="http://kfp")


def test_a_field_the_sdk_model_does_not_know_fails() -> None:
    from kubeflow_trainer_api import models

    with pytest.raises(ValueError, match=r"unknown field \.spec\.trainer\.numWorkers"):
        objects._checked(
            models.TrainerV1alpha1TrainJob,
            {"spec": {"runtimeRef": {"name": "x"}, "trainer": {"numWorkers": 2}}},
        )


def test_a_trainer_without_an_image_is_refused() -> None:
    body = softmax_pipeline("s3://data/digits.npz")
    with pytest.raises(PermanentError, match=r"spec\.trainer\.image: required"):
        objects.train_job(parse_pipeline(body), [], CHILD, ClusterSteps())


def test_names_are_dns_labels_apart_per_tenant() -> None:
    long = "digits-" + "x" * 80
    names = {
        child_name(ns, "digits", run, "train", attempt)
        for ns in ("team-a", "team-b")
        for run in ("digits-20260101-030000", long)
        for attempt in (1, 2)
    }
    assert len(names) == 8
    assert all(re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", n) for n in names)
    assert child_name("team-a", "digits", "r1", "tune") == child_name(
        "team-a", "digits", "r1", "tune"
    )
    assert kfp_run_name("team-a", "digits", "r1", 2) == "mlcd.team-a.digits.r1.attempt-2"


def test_settings_name_the_setting_that_is_wrong() -> None:
    with pytest.raises(SpecError, match="MLCD_KFP_TOKEN_SECRET: 'kfp-token' is not"):
        SecretKeyRef.parse("kfp-token", "MLCD_KFP_TOKEN_SECRET")
    assert SecretKeyRef.parse("kubeflow/kfp#bearer", "X") == SecretKeyRef(
        "kubeflow", "kfp", "bearer"
    )
    with pytest.raises(SpecError, match="MLCD_KUBEFLOW_TRAINING: must be TrainJob or PyTorchJob"):
        KubeflowSettings(endpoint="http://kfp", training="MPIJob")  # type: ignore[arg-type]
