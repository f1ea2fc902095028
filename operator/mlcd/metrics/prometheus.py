"""Prometheus as the rollout's metric provider (Flagger's shape: one number per query).

``query(q)`` answers a number, or ``None`` when there is no data (an empty result, or NaN);
several series, a range vector or a refused query raise :class:`QueryError` naming the query;
timeouts, refused connections and 5xx answers are retried with backoff, then raise
:class:`PrometheusUnavailable`. Nothing is ever turned into a passing value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from mlcd.errors import MlcdError, TemporaryError


class QueryError(MlcdError):
    """The query cannot be answered with one number (the query's fault, not Prometheus')."""


class PrometheusUnavailable(TemporaryError):
    """Prometheus did not answer, or answered with a server error, after every retry."""


class PrometheusProvider:
    """Instant queries against one Prometheus; implements the MetricProvider port."""

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries, self.backoff, self._sleep = retries, backoff, sleep
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def is_online(self) -> bool:
        try:
            response = self._client.get(f"{self.url}/-/ready")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def query(self, promql: str) -> float | None:
        data = self._get("/api/v1/query", {"query": promql}, promql)
        kind, result = data.get("resultType"), data.get("result") or []
        if kind == "scalar":
            return _number(result[1], promql)
        if kind != "vector":
            raise QueryError(f"query {promql!r} returned a {kind}, not one number")
        if not result:
            return None
        if len(result) > 1:
            labels = ", ".join(_labels(series.get("metric", {})) for series in result[:3])
            raise QueryError(
                f"query {promql!r} returned {len(result)} series, not one ({labels}"
                f"{', ...' if len(result) > 3 else ''}); aggregate it, e.g. with sum()"
            )
        return _number(result[0]["value"][1], promql)

    def _get(self, path: str, params: dict[str, str], promql: str) -> dict[str, Any]:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._client.get(f"{self.url}{path}", params=params)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            try:
                body = response.json()
            except ValueError:
                raise QueryError(
                    f"query {promql!r}: HTTP {response.status_code}, not JSON: "
                    f"{response.text[:200]}"
                ) from None
            if body.get("status") != "success":
                why = f"{body.get('errorType', '')} {body.get('error', '')}".strip()
                raise QueryError(f"query {promql!r} refused: {why}")
            data: dict[str, Any] = body["data"]
            return data
        raise PrometheusUnavailable(
            f"Prometheus at {self.url} did not answer {promql!r} after {self.retries + 1} "
            f"attempts: {last}"
        )


def _labels(metric: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


def _number(text: Any, promql: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise QueryError(f"query {promql!r} returned {text!r}, not a number") from None
    return None if math.isnan(value) else value
