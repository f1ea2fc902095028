"""Prometheus is real: it scrapes a target added through file discovery and answers PromQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testenv.prometheus import PrometheusAPI


class Exporter:
    """A tiny /metrics endpoint whose value the test changes."""

    def __init__(self) -> None:
        self.value = 7.0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (
                    "# TYPE mlcd_stack_probe gauge\n"
                    f'mlcd_stack_probe{{kind="test"}} {exporter.value}\n'
                ).encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    served = Exporter()
    yield served
    served.server.shutdown()
    served.server.server_close()


def test_scrapes_an_added_target_and_answers_promql(
    prometheus: PrometheusAPI, exporter: Exporter
) -> None:
    job = f"probe-{uuid.uuid4().hex[:6]}"
    prometheus.add_target(job, exporter.address, labels={"team": "stack"})
    try:
        up = prometheus.wait_for(f'up{{job="{job}"}} == 1')
        assert up[0]["metric"]["instance"] == exporter.address
        assert up[0]["metric"]["team"] == "stack"
        value = prometheus.wait_for(f'mlcd_stack_probe{{job="{job}",kind="test"}}')
        assert float(value[0]["value"][1]) == 7.0

        exporter.value = 9.5
        changed = prometheus.wait_for(f'max_over_time(mlcd_stack_probe{{job="{job}"}}[1m]) > 9')
        assert float(changed[0]["value"][1]) == 9.5
    finally:
        prometheus.remove_target(job)
