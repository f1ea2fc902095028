"""HAProxy as the local traffic splitter, driven through its runtime API socket."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from testenv.binaries import binary
from testenv.component import Component, http_ok
from testenv.proc import free_port

BACKEND = "model"


class HAProxy(Component):
    """A frontend forwarding to backend ``model`` that starts with no servers.

    Servers and their weights come and go at run time through the admin socket, as a canary
    rollout does. A second frontend serves HAProxy's Prometheus metrics.
    """

    name = "haproxy"
    start_timeout = 20.0

    def start(self) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "admin.sock"
        self.backend = BACKEND
        config = self.dir / "haproxy.cfg"
        config.write_text(
            "\n".join(
                [
                    "global",
                    f"    stats socket {self.socket} mode 600 level admin",
                    "    stats timeout 30s",
                    "    maxconn 2000",
                    "defaults",
                    "    mode http",
                    "    timeout connect 2s",
                    "    timeout client 30s",
                    "    timeout server 30s",
                    "frontend main",
                    f"    bind 127.0.0.1:{self.port}",
                    f"    default_backend {BACKEND}",
                    "frontend metrics",
                    f"    bind 127.0.0.1:{self.metrics_port}",
                    "    http-request use-service prometheus-exporter if { path /metrics }",
                    f"backend {BACKEND}",
                    "    balance roundrobin",
                    "",
                ]
            )
        )
        # -db: stay in the foreground so the process group is ours to stop.
        self.spawn([str(binary("haproxy")), "-db", "-f", str(config)])

    def probe(self) -> bool:
        if not self.socket.exists() or not http_ok(self.metrics_url):
            return False
        try:
            return "Name: HAProxy" in HAProxyRuntime(self.socket).command("show info")
        except OSError:
            return False

    def runtime(self) -> HAProxyRuntime:
        return HAProxyRuntime(self.socket)

    def exports(self) -> dict[str, str]:
        return {
            "HAPROXY_URL": self.url,
            "HAPROXY_SOCKET": str(self.socket),
            "HAPROXY_BACKEND": self.backend,
            "HAPROXY_METRICS_URL": self.metrics_url,
        }

    def state(self) -> dict[str, Any]:
        return {"url": self.url, "socket": str(self.socket), "backend": self.backend}


class HAProxyRuntime:
    """HAProxy's runtime API (the admin socket): one command per connection."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def command(self, line: str, timeout: float = 5.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def _checked(self, line: str) -> str:
        answer = self.command(line).strip()
        lowered = answer.lower()
        if any(word in lowered for word in ("unknown", "error", "not found", "failed", "require")):
            raise RuntimeError(f"haproxy refused {line!r}: {answer}")
        return answer

    def add_server(self, backend: str, server: str, address: str, weight: int = 1) -> None:
        """Add server ``address`` (host:port) to ``backend`` and put it in service."""
        self._checked(f"add server {backend}/{server} {address} weight {weight}")
        self._checked(f"enable server {backend}/{server}")

    def remove_server(self, backend: str, server: str) -> None:
        self._checked(f"disable server {backend}/{server}")
        self._checked(f"del server {backend}/{server}")

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        self._checked(f"set weight {backend}/{server} {weight}")

    def weight(self, backend: str, server: str) -> int:
        """The current weight (``get weight`` answers "<current> (initial <initial>)")."""
        return int(self._checked(f"get weight {backend}/{server}").split()[0])

    def servers(self, backend: str) -> dict[str, dict[str, str]]:
        """``show stat`` rows of ``backend``'s servers, by server name."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows: dict[str, dict[str, str]] = {}
        for line in lines[1:]:
            values = dict(zip(header, line.split(","), strict=False))
            if values.get("pxname") == backend and values.get("svname") not in (
                "FRONTEND",
                "BACKEND",
                None,
            ):
                rows[values["svname"]] = values
        return rows
