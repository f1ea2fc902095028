"""The operator's ServiceAccount may do what it needs and nothing more; two replicas never
both act."""

from __future__ import annotations

import time

import pytest

from helpers import softmax_pipeline, wait_for

SA = "system:serviceaccount:mlcd-system:mlcd-operator"

ALLOWED = [
    ("get", "modelpipelines.mlcd.io"),
    ("list", "modelpipelines.mlcd.io"),
    ("watch", "modelpipelines.mlcd.io"),
    ("patch", "modelpipelines.mlcd.io"),
    ("update", "modelpipelines.mlcd.io/status"),
    ("create", "events"),
    ("get", "secrets"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("patch", "clusterkopfpeerings.kopf.dev"),
]
DENIED = [
    ("create", "modelpipelines.mlcd.io"),
    ("delete", "modelpipelines.mlcd.io"),
    ("update", "modelpipelines.mlcd.io"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "secrets"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "deployments.apps"),
    ("delete", "events"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "namespaces"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("*", "*"),
]


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [(v, r, True) for v, r in ALLOWED] + [(v, r, False) for v, r in DENIED],
)
def test_least_privilege(mlcd_cluster, verb, resource, allowed):
    resource, _, sub = resource.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    result = mlcd_cluster.kubectl(
        "auth", "can-i", verb, resource, *extra, f"--as={SA}", "-A", check=False
    )
    assert result.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, result)


def test_two_replicas_never_both_act(start_operator, pipelines, digits_file, tmp_path):
    first = start_operator("--peering=mlcd", "--priority=100", state=tmp_path / "a")
    time.sleep(3)
    second = start_operator("--peering=mlcd", "--priority=50", state=tmp_path / "b")
    time.sleep(5)  # both have announced themselves in the peering object
    for name in ("one", "two"):
        resource = softmax_pipeline(str(digits_file), triggers={"newData": True})
        resource["metadata"]["name"] = name
        pipelines.create(resource)
    for name in ("one", "two"):
        [run] = pipelines.wait_runs(name, 1)
        assert run["result"] == "promoted"
        assert pipelines.reasons(name).count("RunStarted") == 1
    assert sorted(p.name for p in (tmp_path / "a" / "runs" / pipelines.namespace).glob("*/*"))
    assert not (tmp_path / "b" / "runs").exists()

    # The acting replica leaves: the other takes over.
    first.stop()
    wait_for(
        "the second replica to resume", lambda: "Resuming operations" in second.tail(50), timeout=60
    )
    resource = softmax_pipeline(str(digits_file), triggers={"newData": True})
    resource["metadata"]["name"] = "three"
    pipelines.create(resource)
    [run] = pipelines.wait_runs("three", 1, timeout=180)
    assert run["result"] == "promoted"
    assert (tmp_path / "b" / "runs" / pipelines.namespace).is_dir()
