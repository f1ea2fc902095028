"""The metric provider against the test stack's real Prometheus: numbers, no data, errors."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlcd.metrics.prometheus import PrometheusProvider, PrometheusUnavailable, QueryError
from mlcd.processes import free_port
from testenv.prometheus import PrometheusAPI

SERIES = (
    "# TYPE mlcd_probe_value gauge\n"
    'mlcd_probe_value{model="a"} 0.25\n'
    'mlcd_probe_value{model="b"} 0.75\n'
    "# TYPE mlcd_probe_nan gauge\n"
    "mlcd_probe_nan NaN\n"
)


class _Server:
    """A loopback HTTP server running ``handler`` in a thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = SERIES.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def job(prometheus: PrometheusAPI) -> Iterator[str]:
    server = _Server(_Metrics)
    name = f"provider-{uuid.uuid4().hex[:6]}"
    prometheus.add_target(name, server.address)
    try:
        prometheus.wait_for(f'mlcd_probe_value{{job="{name}"}}')
        yield name
    finally:
        prometheus.remove_target(name)
        server.stop()


@pytest.fixture
def provider(prometheus: PrometheusAPI) -> Iterator[PrometheusProvider]:
    with PrometheusProvider(prometheus.url, timeout=2.0, retries=2, backoff=0.05) as p:
        yield p


def test_one_series_is_its_value(provider: PrometheusProvider, job: str) -> None:
    assert provider.is_online()
    assert provider.query(f'mlcd_probe_value{{job="{job}",model="a"}}') == 0.25
    assert provider.query(f'sum(mlcd_probe_value{{job="{job}"}})') == 1.0
    assert provider.query("scalar(vector(3))") == 3.0


def test_an_empty_result_or_nan_is_no_data(provider: PrometheusProvider, job: str) -> None:
    assert provider.query(f'mlcd_probe_value{{job="{job}",model="nobody"}}') is None
    assert provider.query(f'mlcd_probe_nan{{job="{job}"}}') is None
    assert provider.query("0/0") is None  # a scalar NaN


def test_several_series_are_an_error_naming_the_query(
    provider: PrometheusProvider, job: str
) -> None:
    query = f'mlcd_probe_value{{job="{job}"}}'
    with pytest.raises(QueryError) as caught:
        provider.query(query)
    assert query in str(caught.value) and "2 series" in str(caught.value)
    assert 'model="a"' in str(caught.value)


def test_a_bad_query_or_a_range_is_an_error(provider: PrometheusProvider, job: str) -> None:
    with pytest.raises(QueryError, match="refused: bad_data"):
        provider.query("sum(rate(")
    with pytest.raises(QueryError, match="matrix"):
        provider.query(f'mlcd_probe_value{{job="{job}",model="a"}}[1m]')


def test_nobody_listening_is_offline_and_unavailable_after_retries() -> None:
    slept: list[float] = []
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    with PrometheusProvider(url, timeout=0.5, retries=3, backoff=0.1, sleep=slept.append) as p:
        assert not p.is_online()
        with pytest.raises(PrometheusUnavailable, match="after 4 attempts"):
            p.query("up")
    assert slept == [0.1, 0.2, 0.4]


def _flaky_front(prometheus_url: str, failures: int, fault: str) -> _Server:
    """A front for the real Prometheus whose first ``failures`` answers fail (503, or too late)."""
    seen = {"n": 0}

    class Front(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["n"] += 1
            if seen["n"] <= failures:
                if fault == "slow":
                    time.sleep(1.5)
                else:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            with urllib.request.urlopen(prometheus_url + self.path, timeout=5) as upstream:
                body = upstream.read()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except BrokenPipeError:  # the client gave up on a slow answer
                pass

        def log_message(self, *args: object) -> None:
            pass

    return _Server(Front)


@pytest.mark.parametrize("fault", ["503", "slow"])
def test_server_errors_and_timeouts_are_retried(
    prometheus: PrometheusAPI, job: str, fault: str
) -> None:
    front = _flaky_front(prometheus.url, failures=2, fault=fault)
    try:
        with PrometheusProvider(f"http://{front.address}", timeout=0.5, backoff=0.05) as p:
            assert p.query(f'mlcd_probe_value{{job="{job}",model="b"}}') == 0.75
    finally:
        front.stop()


def test_retries_used_up_are_unavailable_never_a_value(prometheus: PrometheusAPI, job: str) -> None:
    front = _flaky_front(prometheus.url, failures=10, fault="503")
    try:
        with (
            PrometheusProvider(f"http://{front.address}", retries=2, backoff=0.01) as p,
            pytest.raises(PrometheusUnavailable, match="HTTP 503"),
        ):
            p.query(f'mlcd_probe_value{{job="{job}",model="b"}}')
    finally:
        front.stop()
