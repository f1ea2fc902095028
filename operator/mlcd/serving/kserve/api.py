"""The few Kubernetes API calls serving on KServe makes, over the operator's httpx client
(base URL, credentials and TLS from its login; no Kubernetes client library).

Objects are written by server-side apply under one field manager, so applying the same
object twice changes nothing, and a field we stop setting (a canary entry, a backend) is
removed while fields others own (KServe's defaults) stay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from mlcd.errors import MlcdError, PermanentError, TemporaryError

FIELD_MANAGER = "mlcd"
APPLY = {"Content-Type": "application/apply-patch+yaml"}
MERGE = {"Content-Type": "application/merge-patch+json"}


class NotInstalled(MlcdError):
    """The cluster does not serve an API we need (KServe, or the Gateway API)."""


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    return str(body.get("message") or response.reason_phrase) if isinstance(body, dict) else ""


def _error(response: httpx.Response, what: str) -> MlcdError:
    message = f"{what}: {response.status_code} {_message(response)}"
    if response.status_code == 403:
        return PermanentError(f"{message} (the operator's ServiceAccount lacks this permission)")
    if response.status_code in (400, 401, 404, 409, 422):
        return PermanentError(message)
    return TemporaryError(message, delay=5.0)


def path(
    group_version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """``/api/v1/...`` for the core group, ``/apis/<group>/<version>/...`` for the others."""
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    parts = [base]
    if namespace:
        parts += ["namespaces", namespace]
    parts.append(plural)
    if name:
        parts.append(name)
    return "/".join(parts)


class KubeAPI:
    """Reads, server-side applies, patches and deletes objects; tells a missing API apart."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self._served: dict[str, set[str]] = {}

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise TemporaryError(f"{what}: the API server did not answer ({exc})") from exc

    def serves(self, group_version: str, plural: str) -> bool:
        """Whether the cluster serves ``plural`` in ``group_version`` (its CRD is installed).
        A positive answer is remembered; a negative one is asked again next time."""
        if plural in self._served.get(group_version, set()):
            return True
        url = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        response = self._request("GET", url, f"discovering {group_version}")
        if response.status_code == 404:
            return False
        if response.is_error:
            raise _error(response, f"discovering {group_version}")
        names = {str(r.get("name")) for r in response.json().get("resources", [])}
        self._served[group_version] = names
        return plural in names

    def require(self, group_version: str, plural: str, product: str) -> None:
        if not self.serves(group_version, plural):
            raise NotInstalled(
                f"the cluster does not serve {plural}.{group_version.split('/')[0]} "
                f"({group_version}): install {product}"
            )

    def get(self, url: str, what: str) -> dict[str, Any] | None:
        response = self._request("GET", url, what)
        if response.status_code == 404:
            return None
        if response.is_error:
            raise _error(response, what)
        obj: dict[str, Any] = response.json()
        return obj

    def apply(self, url: str, obj: Mapping[str, Any], what: str) -> dict[str, Any]:
        """Server-side apply of ``obj`` at ``url`` (the object's own path)."""
        response = self._request(
            "PATCH",
            url,
            what,
            content=json.dumps(obj),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            headers=APPLY,
        )
        if response.is_error:
            raise _error(response, what)
        result: dict[str, Any] = response.json()
        return result

    def merge_patch(self, url: str, patch: Mapping[str, Any], what: str) -> dict[str, Any] | None:
        response = self._request("PATCH", url, what, content=json.dumps(patch), headers=MERGE)
        if response.status_code == 404:
            return None
        if response.is_error:
            raise _error(response, what)
        result: dict[str, Any] = response.json()
        return result

    def delete(self, url: str, what: str) -> bool:
        """Deletes (owned objects go with it, in the background); False if it was not there."""
        response = self._request("DELETE", url, what, params={"propagationPolicy": "Background"})
        if response.status_code == 404:
            return False
        if response.is_error:
            raise _error(response, what)
        return True
