"""The Kubernetes API as mlcd uses it: ModelPipelines, their status, Secrets, the trigger."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from mlcd.artifacts.credentials import SecretResolver
from mlcd.domain.spec import API_GROUP, API_VERSION
from mlcd.domain.status import ModelPipelineStatus
from mlcd.errors import PermanentError, TemporaryError
from mlcd.reconcile import TRIGGER_ANNOTATION

PLURAL = "modelpipelines"


class Conflict(Exception):
    """The object changed since it was read: read it again and redo the work."""


def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """From a kubeconfig (``KUBECONFIG`` or ``~/.kube/config``) or, in a pod, the service
    account, as kubectl finds its credentials."""
    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, OSError, TypeError):
        config.load_incluster_config()
        return client.ApiClient()


def _temporary(exc: ApiException, what: str) -> Exception:
    if exc.status in (401, 403, 404, 422):
        return PermanentError(f"{what}: {exc.status} {exc.reason}")
    return TemporaryError(f"{what}: {exc.status} {exc.reason}", delay=5.0)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                raise PermanentError(f"modelpipeline {namespace}/{name} not found") from None
            raise _temporary(exc, f"reading {namespace}/{name}") from None
        return obj

    def items(self, namespace: str | None) -> list[dict[str, Any]]:
        if namespace:
            result = self.custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL
            )
        else:
            result = self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def write_status(self, body: Mapping[str, Any], status: ModelPipelineStatus) -> None:
        """Replaces the status, refusing to overwrite a newer object (optimistic locking)."""
        meta = body["metadata"]
        obj = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "ModelPipeline",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "resourceVersion": meta["resourceVersion"],
            },
            "status": status.model_dump(by_alias=True, exclude_none=True, mode="json"),
        }
        try:
            self.custom.replace_namespaced_custom_object_status(
                API_GROUP, API_VERSION, meta["namespace"], PLURAL, meta["name"], obj
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{meta['namespace']}/{meta['name']} changed") from None
            if exc.status == 404:
                return  # deleted meanwhile: nothing left to record
            raise _temporary(exc, f"writing the status of {meta['name']}") from None

    def trigger(self, namespace: str, name: str) -> str:
        """Asks the operator for a run now; returns the trigger's value."""
        value = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        patch = {"metadata": {"annotations": {TRIGGER_ANNOTATION: value}}}
        try:
            self.custom.patch_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, name, patch
            )
        except ApiException as exc:
            if exc.status == 404:
                raise PermanentError(f"modelpipeline {namespace}/{name} not found") from None
            raise _temporary(exc, f"triggering {namespace}/{name}") from None
        return value

    def events(self, namespace: str, name: str) -> list[Any]:
        selector = f"involvedObject.name={name},involvedObject.kind=ModelPipeline"
        items: list[Any] = self.core.list_namespaced_event(namespace, field_selector=selector).items
        return sorted(
            items, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp
        )

    def secrets(self, namespace: str) -> SecretResolver:
        def resolve(name: str) -> Mapping[str, str]:
            try:
                secret = self.core.read_namespaced_secret(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    raise PermanentError(f"secret {name!r} not found in {namespace}") from None
                raise _temporary(exc, f"reading secret {namespace}/{name}") from None
            data = secret.data or {}
            values = {k: base64.b64decode(v).decode() for k, v in data.items()}
            values.update(secret.string_data or {})
            return values

        return resolve
