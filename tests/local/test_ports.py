"""Ports: one bound by us and handed over can not be taken in between; one a program binds
itself later is picked again when another process took it first."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from helpers import run_python_trainer, softmax_model
from mlcd.errors import StageFailed
from mlcd.pipeline import trainer as trainer_module
from mlcd.processes import free_port
from mlcd.serving.local import LocalServing

BINDS_MASTER_PORT = """
import os, socket
sock = socket.socket()
sock.bind(("127.0.0.1", int(os.environ["MASTER_PORT"])))  # as a rendezvous store does
print("accuracy=0.9")
"""


def test_free_port_does_not_hand_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_trainer_whose_port_was_taken_starts_again_on_another(tmp_path, monkeypatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        handed: list[int] = []
        real = trainer_module.free_port

        def racing_free_port(host: str = "127.0.0.1") -> int:
            # The first port picked is taken by another process before the trainer binds it.
            port = taken if not handed else real(host)
            handed.append(port)
            return port

        monkeypatch.setattr(trainer_module, "free_port", racing_free_port)
        result, log = run_python_trainer(tmp_path, BINDS_MASTER_PORT)
    assert result.ok, result.failure()
    assert result.metrics.latest() == {"accuracy": 0.9}
    assert handed[0] == taken and len(handed) == 2
    assert "its port was taken by another process" in log.read_text()


def test_a_trainer_failing_for_another_reason_is_not_started_again(tmp_path) -> None:
    result, log = run_python_trainer(tmp_path, "raise SystemExit('model diverged')")
    assert not result.ok and "model diverged" in result.failure()
    assert log.read_text().count("$ ") == 1


def test_the_model_server_serves_on_the_socket_handed_to_it(tmp_path) -> None:
    folder = tmp_path / "model"
    ref = softmax_model(folder)
    serving = LocalServing(tmp_path / "home", port=0)
    try:
        url = serving.serve("m", ref, folder)
        port = int(url.rsplit(":", 1)[1])
        info = json.loads((tmp_path / "home" / "serving" / "m" / "server.json").read_text())
        assert info["port"] == port
        assert httpx.get(f"{url}/v2/models/m/ready", timeout=5).status_code == 200
        # The port is held by the server itself: nothing else can bind it.
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
    finally:
        serving.stop("m")


def test_a_fixed_port_in_use_is_a_clear_error_before_any_server_starts(tmp_path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        serving = LocalServing(tmp_path / "home", port=port)
        with pytest.raises(StageFailed, match=f"cannot serve on 127.0.0.1:{port}"):
            serving.prepare("m")
    assert not (tmp_path / "home" / "serving" / "m" / "server.json").exists()
