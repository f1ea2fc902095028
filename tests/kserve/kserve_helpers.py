"""Plain helpers of the KServe tests (fixtures are in conftest.py)."""

from __future__ import annotations

import uuid
from typing import Any

from kubernetes import client

from mlcd.domain.spec import SecretRef, StorageLocation


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


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


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
