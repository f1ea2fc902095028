"""The Kubernetes API as mlcd uses it: ModelPipelines, their status, Secrets, the trigger.

A few REST calls over httpx with the credentials kopf reads (the kubeconfig's current context,
or the pod's ServiceAccount), so the operator does not load the Kubernetes client library
(about 80 MiB of the operator's memory).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
import kopf

from mlcd.artifacts.credentials import SecretResolver
from mlcd.domain.intents import Notice
from mlcd.domain.spec import API_GROUP, API_VERSION, TRIGGER_ANNOTATION
from mlcd.domain.status import ModelPipelineStatus
from mlcd.errors import PermanentError, TemporaryError

PLURAL = "modelpipelines"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class Conflict(Exception):
    """The object changed since it was read: read it again and redo the work."""


@contextlib.contextmanager
def _kubeconfig(path: str | None) -> Iterator[None]:
    previous = os.environ.get("KUBECONFIG")
    if path:
        os.environ["KUBECONFIG"] = path
    try:
        yield
    finally:
        if path and previous is None:
            del os.environ["KUBECONFIG"]
        elif path and previous is not None:
            os.environ["KUBECONFIG"] = previous


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """As kubectl: ``KUBECONFIG``, else the pod's ServiceAccount, else ``~/.kube/config``."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def connection(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    with _kubeconfig(kubeconfig):
        info = login(settings=kopf.OperatorSettings())
    if info is None or not info.server:
        raise PermanentError(
            "no cluster to talk to: set KUBECONFIG, write ~/.kube/config, "
            "or run in a pod with a ServiceAccount"
        )
    return info


def _temporary(response: httpx.Response, what: str) -> Exception:
    reason = (
        response.json().get("message", response.reason_phrase)
        if response.headers.get("content-type", "").startswith("application/json")
        else response.reason_phrase
    )
    if response.status_code in (400, 403, 404, 422):
        return PermanentError(f"{what}: {response.status_code} {reason}")
    return TemporaryError(f"{what}: {response.status_code} {reason}", delay=5.0)


class Kube:
    def __init__(
        self,
        info: kopf.ConnectionInfo,
        connections: int = 32,
        relogin: Callable[[], kopf.ConnectionInfo] | None = None,
    ) -> None:
        self.connections = connections
        self.relogin = relogin
        self._lock = threading.Lock()
        self.http = self._client(info)
        self.default_namespace = info.default_namespace

    def _client(self, info: kopf.ConnectionInfo) -> httpx.Client:
        return httpx.Client(
            base_url=str(info.server),
            verify=info.as_ssl_context(),
            headers={"Accept": "application/json", **info.as_http_headers()},
            timeout=httpx.Timeout(60.0, connect=10.0),
            limits=httpx.Limits(
                max_connections=self.connections, max_keepalive_connections=self.connections
            ),
        )

    @classmethod
    def connect(cls, kubeconfig: str | None = None, connections: int = 32) -> Kube:
        return cls(connection(kubeconfig), connections, relogin=lambda: connection(kubeconfig))

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        http = self.http
        try:
            response = http.request(method, path, **kwargs)
            if response.status_code == 401 and self.relogin is not None:
                # A rotated token (a projected ServiceAccount token, a renewed kubeconfig):
                # log in again as at start, and try once more.
                with self._lock:
                    # The same client (others hold it too), with the new credentials.
                    http.headers.update(self.relogin().as_http_headers())
                response = http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise TemporaryError(f"{what}: the API server did not answer ({exc})") from exc
        return response

    @staticmethod
    def _path(namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{API_GROUP}/{API_VERSION}"
        path = f"{base}/namespaces/{namespace}/{PLURAL}" if namespace else f"{base}/{PLURAL}"
        return "/".join(p for p in (path, name, sub) if p)

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        what = f"reading modelpipeline {namespace}/{name}"
        response = self._request("GET", self._path(namespace, name), what)
        if response.status_code == 404:
            raise PermanentError(f"modelpipeline {namespace}/{name} not found")
        if response.is_error:
            raise _temporary(response, what)
        obj: dict[str, Any] = response.json()
        return obj

    def items(self, namespace: str | None) -> list[dict[str, Any]]:
        what = f"listing modelpipelines in {namespace or 'all namespaces'}"
        response = self._request("GET", self._path(namespace), what)
        if response.is_error:
            raise _temporary(response, what)
        items: list[dict[str, Any]] = response.json().get("items", [])
        return items

    def write_status(self, body: Mapping[str, Any], status: ModelPipelineStatus) -> str | None:
        """Replaces the status, refusing to overwrite a newer object (optimistic locking);
        returns the object's new resourceVersion."""
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
        what = f"writing the status of {meta['namespace']}/{meta['name']}"
        response = self._request(
            "PUT", self._path(meta["namespace"], meta["name"], "status"), what, json=obj
        )
        if response.status_code == 409:
            raise Conflict(f"{meta['namespace']}/{meta['name']} changed")
        if response.status_code == 404:
            return None  # deleted meanwhile: nothing left to record
        if response.is_error:
            raise _temporary(response, what)
        return str(response.json()["metadata"]["resourceVersion"])

    def patch_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        """A merge patch of the spec, as ``kubectl patch --type merge`` does it."""
        what = f"patching {namespace}/{name}"
        response = self._request(
            "PATCH",
            self._path(namespace, name),
            what,
            json={"spec": spec},
            headers=MERGE_PATCH,
        )
        if response.status_code == 404:
            raise PermanentError(f"modelpipeline {namespace}/{name} not found")
        if response.is_error:
            raise _temporary(response, what)

    def trigger(self, namespace: str, name: str) -> str:
        """Asks the operator for a run now; returns the trigger's value."""
        value = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        patch = {"metadata": {"annotations": {TRIGGER_ANNOTATION: value}}}
        what = f"triggering {namespace}/{name}"
        response = self._request(
            "PATCH", self._path(namespace, name), what, json=patch, headers=MERGE_PATCH
        )
        if response.status_code == 404:
            raise PermanentError(f"modelpipeline {namespace}/{name} not found")
        if response.is_error:
            raise _temporary(response, what)
        return value

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        selector = f"involvedObject.name={name},involvedObject.kind=ModelPipeline"
        what = f"listing the events of {namespace}/{name}"
        response = self._request(
            "GET",
            f"/api/v1/namespaces/{namespace}/events",
            what,
            params={"fieldSelector": selector},
        )
        if response.is_error:
            raise _temporary(response, what)
        items: list[dict[str, Any]] = response.json().get("items", [])
        return sorted(
            items,
            key=lambda e: (
                e.get("lastTimestamp") or e.get("eventTime") or e["metadata"]["creationTimestamp"]
            ),
        )

    def post_event(self, body: Mapping[str, Any], notice: Notice) -> None:
        """A core/v1 Event about the pipeline, posted before the status that records the
        decision: a crash in between repeats an Event, it never loses one."""
        meta = body["metadata"]
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": "ModelPipeline",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": notice.type,
            "reason": notice.reason,
            "message": notice.message[:1024],
            "source": {"component": "mlcd"},
            "reportingComponent": "mlcd",
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        what = f"posting an event about {meta['namespace']}/{meta['name']}"
        response = self._request(
            "POST", f"/api/v1/namespaces/{meta['namespace']}/events", what, json=event
        )
        if response.is_error and response.status_code != 404:
            raise _temporary(response, what)

    def secrets(self, namespace: str) -> SecretResolver:
        def resolve(name: str) -> Mapping[str, str]:
            what = f"reading secret {namespace}/{name}"
            response = self._request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", what)
            if response.status_code == 404:
                raise PermanentError(f"secret {name!r} not found in {namespace}")
            if response.is_error:
                raise _temporary(response, what)
            secret = response.json()
            values = {
                k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()
            }
            values.update(secret.get("stringData") or {})
            return values

        return resolve
