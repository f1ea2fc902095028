"""HTTP to the servers mlcd starts on this machine (model servers, HAProxy, Prometheus).

One client for all of them: a new client sets up TLS each time (tens of milliseconds, for
plain HTTP on loopback), and the loop calls these servers on every pass. No connection is
kept open between calls: these servers come and go (a candidate at the end of a rollout, a
server restarted on its port), and a loopback connection costs a fraction of a millisecond.
"""

from __future__ import annotations

import threading

import httpx

_client: httpx.Client | None = None
_lock = threading.Lock()


def client() -> httpx.Client:
    global _client
    with _lock:
        if _client is None:
            _client = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
        return _client


def get(url: str, timeout: float) -> httpx.Response:
    return client().get(url, timeout=timeout)


def post(url: str, timeout: float) -> httpx.Response:
    return client().post(url, timeout=timeout)
