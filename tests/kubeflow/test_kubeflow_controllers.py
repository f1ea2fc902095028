"""The jobs the Kubeflow engine builds, reconciled by the real controllers (Trainer + JobSet,
training operator) on the real API server, with kwok's nodes running the pods."""

from __future__ import annotations

from typing import Any

import pytest
from kubeflow_helpers import KubeflowAPI, wait

from helpers import softmax_pipeline
from mlcd.domain.checks import parse_pipeline
from mlcd.pipeline.kubeflow import objects
from mlcd.pipeline.kubeflow.settings import ClusterSteps
from testenv.kubeflow import HOLD


def pipeline(namespace: str, workers: int) -> Any:
    resource = softmax_pipeline("s3://data/digits.npz")
    resource["metadata"]["namespace"] = namespace
    resource["spec"]["trainer"].update(image="registry.test/softmax:1", workers=workers)
    return parse_pipeline(resource)


def condition(obj: dict[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def test_trainjob_runs_as_a_jobset_and_completes(
    trainer: Any, nodes: list[str], namespace: str, cluster_api: KubeflowAPI
) -> None:
    spec = pipeline(namespace, workers=2)
    child = objects.Child("job-a", namespace, "run-1", "digits", {"MLCD_RUN_ID": "run-1"})
    body = objects.train_job(spec, ["--lr=0.25"], child, ClusterSteps())
    cluster_api.custom.create_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs", body
    )
    pods = cluster_api.running(namespace, "jobset.sigs.k8s.io/jobset-name=job-a", 2)
    env = {e.name: e.value for e in pods[0].spec.containers[0].env}
    assert env["PET_NNODES"] == "2" and env["MLCD_RUN_ID"] == "run-1"
    assert pods[0].spec.containers[0].args[-1] == "--lr=0.25"
    assert pods[0].metadata.annotations[HOLD] == "true"
    for pod in pods:
        cluster_api.release(pod)

    def complete() -> bool:
        job = cluster_api.custom.get_namespaced_custom_object(
            "trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs", "job-a"
        )
        return condition(job, "Complete")

    wait("TrainJob Complete", complete, timeout=60)


@pytest.mark.parametrize("fail", [False, True], ids=["succeeds", "worker-fails"])
def test_pytorchjob_master_and_workers(
    training_operator: Any, nodes: list[str], namespace: str, cluster_api: KubeflowAPI, fail: bool
) -> None:
    spec = pipeline(namespace, workers=3)
    child = objects.Child("job-b", namespace, "run-2", "digits")
    cluster = ClusterSteps(training="PyTorchJob", pod_annotations={HOLD: "true"})
    body = objects.pytorch_job(spec, ["--lr=0.5"], child, cluster)
    cluster_api.custom.create_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", body
    )
    pods = cluster_api.running(namespace, "training.kubeflow.org/job-name=job-b", 3)
    names = sorted(p.metadata.name for p in pods)
    assert names == ["job-b-master-0", "job-b-worker-0", "job-b-worker-1"]
    master = next(p for p in pods if p.metadata.name == "job-b-master-0")
    env = {e.name: e.value for e in master.spec.containers[0].env}
    assert env["WORLD_SIZE"] == "3" and env["RANK"] == "0" and env["MASTER_PORT"]
    for pod in pods:
        if fail and pod.metadata.name == "job-b-worker-1":
            cluster_api.release(pod, fail=True)  # kwok's chaos stage fails it
        elif not fail:
            cluster_api.release(pod)

    def done() -> dict[str, Any] | None:
        job = cluster_api.custom.get_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs", "job-b"
        )
        return job if condition(job, "Succeeded") or condition(job, "Failed") else None

    job = wait("PyTorchJob done", done, timeout=90)
    assert condition(job, "Failed" if fail else "Succeeded")
