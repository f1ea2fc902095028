"""HAProxy is real: weights change through its runtime API while it keeps serving."""

from __future__ import annotations

import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testenv.haproxy import HAProxy


def serve(text: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def versions() -> Iterator[dict[str, str]]:
    servers = {name: serve(name) for name in ("stable", "canary")}
    yield {name: f"127.0.0.1:{s.server_address[1]}" for name, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def split(url: str, requests: int = 40) -> Counter[str]:
    return Counter(get(url) for _ in range(requests))


def test_weights_change_through_the_runtime_api_while_serving(
    haproxy: HAProxy, versions: dict[str, str]
) -> None:
    runtime = haproxy.runtime()
    backend = haproxy.backend
    runtime.add_server(backend, "stable", versions["stable"], weight=100)
    runtime.add_server(backend, "canary", versions["canary"], weight=0)

    # Traffic keeps flowing in the background while the weights move.
    answers: Counter[str] = Counter()
    errors: list[BaseException] = []
    stop = threading.Event()
    counting = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            try:
                answer = get(haproxy.url)
                with counting:
                    answers[answer] += 1
            except Exception as exc:
                errors.append(exc)

    background = threading.Thread(target=client, daemon=True)
    background.start()
    try:
        assert split(haproxy.url) == Counter({"stable": 40})

        runtime.set_weight(backend, "canary", 100)
        assert runtime.weight(backend, "canary") == 100
        # Round robin with equal weights alternates over every request HAProxy gets: counted
        # over both clients, as the two interleave (one alone may see mostly one server).
        with counting:
            before = answers.copy()
        half = split(haproxy.url)
        with counting:
            half += answers - before
        total = sum(half.values())
        assert min(half["stable"], half["canary"]) >= 0.4 * total, half

        runtime.set_weight(backend, "stable", 0)
        assert split(haproxy.url) == Counter({"canary": 40})
        assert runtime.servers(backend)["canary"]["weight"] == "100"
        assert runtime.servers(backend)["stable"]["weight"] == "0"
    finally:
        stop.set()
        background.join(timeout=10)
        runtime.remove_server(backend, "stable")
        runtime.remove_server(backend, "canary")
    assert not errors, errors[:3]
    assert answers["stable"] > 0 and answers["canary"] > 0
