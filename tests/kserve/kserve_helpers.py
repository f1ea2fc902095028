"""Plain helpers of the KServe tests (fixtures are in conftest.py)."""

from __future__ import annotations

import pathlib
from typing import Any

from kubernetes import client

from helpers import softmax_pipeline, wait_for
from mlcd.domain.records import ModelRef
from mlcd.domain.spec import SecretRef, StorageLocation
from mlcd.serving.kserve.serving import PipelineServing
from testenv.cluster import Cluster
from testenv.minio import MinIO

#: The InferenceService of the pipelines the operator serves in these tests.
ISVC = "mnist"


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def get_isvc(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = custom(api).get_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", name
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return obj


def conditions(obj: dict[str, Any] | None) -> dict[str, str]:
    status = (obj or {}).get("status") or {}
    return {c["type"]: c["status"] for c in status.get("conditions") or []}


REPOSITORY = StorageLocation(
    uri="s3://models/team/",
    endpoint="http://minio.storage:9000",
    credentials_secret_ref=SecretRef(name="minio-creds"),
)
KEYS = {"accessKey": "AKIA-test-only", "secretKey": "s3cr3t-test-only"}


def secrets(name: str) -> dict[str, str]:
    """The Secret the pipeline references, as the operator resolves it."""
    assert name == "minio-creds"
    return KEYS


def ref(version: str) -> ModelRef:
    """Version ``version`` of the model ``mnist`` in the repository (never downloaded here)."""
    return ModelRef(uri=f"s3://models/team/mnist/{version}/", version=version, sha256=version * 64)


def predictors(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    """The namespace's Deployments (KServe's predictors) by name."""
    items = client.AppsV1Api(api).list_namespaced_deployment(namespace).items
    return {d.metadata.name: d for d in items}


def settled(serving: PipelineServing, api: client.ApiClient, only: str, what: str) -> None:
    """Until KServe serves one version again, and ``only`` is the one predictor left."""
    serving.wait(lambda o: o.readiness.ready and o.candidate is None, what)
    namespace = serving.pipeline.namespace
    wait_for(f"{only} alone", lambda: set(predictors(api, namespace)) == {only}, timeout=30)


def kserve_pipeline(
    namespace: str, digits: pathlib.Path, minio: MinIO, rollout: dict[str, Any]
) -> dict[str, Any]:
    """The numpy test trainer (no tuning: one short training), models in MinIO, served as
    InferenceService ``mnist``; started by the trigger annotation."""
    body = softmax_pipeline(str(digits))
    body["metadata"]["annotations"] = {"mlcd.io/trigger": "1"}
    spec = body["spec"]
    del spec["tuning"]
    spec["trainer"]["args"] = ["--epochs=10"]
    spec["triggers"] = {"newData": False}
    spec["artifacts"] = {
        "uri": f"s3://{minio.bucket}/{namespace}/",
        "endpoint": minio.endpoint,
        "credentialsSecretRef": {"name": "minio-creds"},
    }
    spec["serving"] = {"inferenceService": ISVC, "rollout": rollout}
    return body


def minio_secret(api: client.ApiClient, namespace: str, minio: MinIO) -> None:
    body = {
        "metadata": {"name": "minio-creds"},
        "stringData": {"accessKey": minio.access_key, "secretKey": minio.secret_key},
    }
    client.CoreV1Api(api).create_namespaced_secret(namespace, body)


def kubectl_wait_ready(cluster: Cluster, namespace: str, timeout: int) -> None:
    """``kubectl wait --for=condition=Ready modelpipeline/digits``, as a user waits."""
    waited = cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        "modelpipeline/digits",
        "-n",
        namespace,
        f"--timeout={timeout}s",
        timeout=timeout + 10,
    )
    assert waited.returncode == 0, waited.stderr
