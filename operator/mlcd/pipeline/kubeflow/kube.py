"""The few Kubernetes calls the cluster steps make, through the official client."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from mlcd.errors import PermanentError, TemporaryError


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str


EXPERIMENT = Kind("kubeflow.org", "v1beta1", "experiments", "Experiment")
TRAINJOB = Kind("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
PYTORCHJOB = Kind("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")


class Kube:
    def __init__(self, kubeconfig: str | None = None) -> None:
        from kubernetes import client, config

        if kubeconfig:
            api = config.new_client_from_config(config_file=kubeconfig)
        else:
            try:
                api = config.new_client_from_config()
            except config.ConfigException:
                config.load_incluster_config()
                api = client.ApiClient()
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status in (400, 403, 404, 422):
                raise PermanentError(f"{what}: {exc.status} {_message(exc)}") from exc
            raise TemporaryError(f"{what}: {exc.status} {_message(exc)}") from exc

    def ensure(self, kind: Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Creates ``body`` unless an object of that name exists; returns the live object."""
        from kubernetes.client.exceptions import ApiException

        name = body["metadata"]["name"]
        try:
            created: dict[str, Any] = self.custom.create_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, body
            )
            return created
        except ApiException as exc:
            if exc.status != 409:
                what = f"creating {kind.kind} {namespace}/{name}"
                if exc.status in (400, 403, 404, 422):
                    raise PermanentError(f"{what}: {exc.status} {_message(exc)}") from exc
                raise TemporaryError(f"{what}: {exc.status} {_message(exc)}") from exc
        return self.get(kind, namespace, name) or body

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name
            )
            return found
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise TemporaryError(f"reading {kind.kind} {namespace}/{name}: {exc.status}") from exc

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            self.custom.delete_namespaced_custom_object(
                kind.group,
                kind.version,
                namespace,
                kind.plural,
                name,
                propagation_policy="Background",
            )

    def pods(self, namespace: str, selector: str) -> list[Any]:
        listed = self._call(
            f"listing pods {selector}",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=selector,
        )
        return list(listed.items)

    def events(self, namespace: str, kind: Kind, name: str) -> list[Any]:
        """The Events about one object (what its controller said of it)."""
        listed = self._call(
            f"listing Events of {kind.kind} {namespace}/{name}",
            self.core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.kind={kind.kind},involvedObject.name={name}",
        )
        return list(listed.items)

    def close(self) -> None:
        self.api.close()


def _message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)
