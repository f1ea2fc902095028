"""Simulated nodes: the scheduler places pods on a kwok node and they go through their phases."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from testenv.cluster import Cluster

pytestmark = pytest.mark.nodes

FAIL_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"


def wait_for(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout} s; last state:\n{value}")
        time.sleep(0.2)


def container(name: str = "main") -> dict[str, Any]:
    return {"name": name, "image": "registry.invalid/never-pulled:1"}


def test_the_simulated_node_is_ready(nodes: list[str], api: client.ApiClient) -> None:
    node = client.CoreV1Api(api).read_node(nodes[0])
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    assert not [t for t in node.spec.taints or [] if t.effect == "NoSchedule"]


def test_deployment_pods_become_ready_on_the_node(
    nodes: list[str], api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container()]}},
            },
        },
    )
    deployment = wait_for(
        lambda: apps.read_namespaced_deployment_status("web", namespace),
        lambda d: (d.status.ready_replicas or 0) == 2 and (d.status.available_replicas or 0) == 2,
    )
    assert deployment.status.ready_replicas == 2
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.node_name == nodes[0]
        assert pod.status.phase == "Running"
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
        assert pod.status.pod_ip


def job(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels or {}},
                "spec": {"restartPolicy": "Never", "containers": [container()]},
            },
        },
    }


def conditions(job: Any) -> dict[str, str]:
    return {c.type: c.status for c in job.status.conditions or []}


def test_job_completes(nodes: list[str], api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, job("train"))
    finished = wait_for(
        lambda: batch.read_namespaced_job_status("train", namespace),
        lambda j: conditions(j).get("Complete") == "True" or conditions(j).get("Failed") == "True",
    )
    assert conditions(finished).get("Complete") == "True"
    assert finished.status.succeeded == 1


def test_job_fails_by_the_chaos_stage(
    nodes: list[str], api: client.ApiClient, namespace: str
) -> None:
    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, job("doomed", {FAIL_LABEL: "true"}))
    finished = wait_for(
        lambda: batch.read_namespaced_job_status("doomed", namespace),
        lambda j: conditions(j).get("Complete") == "True" or conditions(j).get("Failed") == "True",
    )
    assert conditions(finished).get("Failed") == "True"
    assert finished.status.failed == 1


def test_a_pod_no_job_owns_runs_to_completion(
    nodes: list[str], api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "once"},
            "spec": {"restartPolicy": "Never", "containers": [container()]},
        },
    )
    phases: list[str] = []

    def record(pod: Any) -> bool:
        if not phases or phases[-1] != pod.status.phase:
            phases.append(pod.status.phase)
        return pod.status.phase in ("Succeeded", "Failed")

    wait_for(lambda: core.read_namespaced_pod_status("once", namespace), record)
    assert phases[-1] == "Succeeded"
    assert "Running" in phases


def test_helm_installs_a_chart_and_waits_for_it(
    nodes: list[str], apiserver: Cluster, namespace: str, tmp_path: Path
) -> None:
    version = apiserver.helm("version", "--short").stdout
    assert version.startswith("v3.22.0")
    apiserver.helm("create", str(tmp_path / "demo"))
    apiserver.helm(
        "install", "demo", str(tmp_path / "demo"), "-n", namespace, "--wait", "--timeout", "60s"
    )
    listed = apiserver.helm("list", "-n", namespace, "-o", "json").stdout
    assert '"status":"deployed"' in listed
