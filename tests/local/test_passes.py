"""What each pass of ``mlcd run`` costs: a status that did not change is not written again,
a pass that acted is followed at once, and the servers on this machine are reached by one
client, which follows them when they stop and when they start again on their port."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from mlcd import loopback
from mlcd.control.local import StatusFile, acted
from mlcd.domain.decide import Decision
from mlcd.domain.intents import Notice, Post, Promote
from mlcd.domain.records import ModelRef
from mlcd.domain.status import CurrentRun, ModelPipelineStatus


def test_a_status_that_did_not_change_is_not_written_again(tmp_path) -> None:
    files = StatusFile(tmp_path)
    files.save("team-a", "digits", ModelPipelineStatus(phase="Running"))
    path = files.folder("team-a", "digits") / "status.json"
    first = path.stat()
    files.save("team-a", "digits", ModelPipelineStatus(phase="Running"))
    again = path.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    files.save("team-a", "digits", ModelPipelineStatus(phase="Ready"))
    assert files.load("team-a", "digits").phase == "Ready"
    assert path.stat().st_ino != first.st_ino  # written whole, then renamed over the old one


NOTICE = Post(Notice("Normal", "RunStarted", "run r1 started"))
RUN = CurrentRun(id="r1", trigger="manual", started_at="2026-12-03T00:00:00Z")
PROMOTE = Promote(
    run=RUN, model=ModelRef(uri="file:///m/1", version="1", sha256="0" * 64), metrics={}
)


@pytest.mark.parametrize(
    ("intents", "expected"),
    [
        ([], False),
        ([NOTICE], False),
        ([NOTICE, NOTICE], False),
        ([PROMOTE], True),
        ([NOTICE, PROMOTE], True),
    ],
)
def test_a_pass_acted_when_it_did_more_than_post_events(intents, expected) -> None:
    assert acted(Decision(status=ModelPipelineStatus(), intents=intents)) is expected


@pytest.fixture
def serve(tmp_path) -> Iterator:
    """Starts a server answering ``/v2/health/live`` (a file), on ``port`` or any."""
    (tmp_path / "v2" / "health").mkdir(parents=True)
    (tmp_path / "v2" / "health" / "live").write_text("ok")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(port: int = 0) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_one_client_follows_a_server_that_stops_and_starts_again_on_its_port(serve) -> None:
    assert loopback.client() is loopback.client()
    first = serve()
    port = first.server_address[1]
    url = f"http://127.0.0.1:{port}/v2/health/live"
    assert loopback.get(url, timeout=2.0).status_code == 200
    first.shutdown()
    first.server_close()
    # Stopped: an error the callers take for "not running", not an answer from the old one.
    with pytest.raises(httpx.ConnectError):
        loopback.get(url, timeout=2.0)
    serve(port)  # started again on the same port, as after a restart
    for _ in range(3):
        assert loopback.get(url, timeout=2.0).status_code == 200
