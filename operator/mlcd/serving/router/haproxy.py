"""HAProxy as the local traffic router: one process per pipeline, driven by its runtime API.

Weights change live through the admin socket (``set weight``), so no request is dropped and no
process restarts. HAProxy has no mirroring of its own; a short Lua action (HAProxy's embedded
Lua, in Debian's build) copies every POST to the candidate from a background task, after the
request was buffered, and discards the answer. The mirror is switched on and off, and its
share set, through the weight of the candidate in a second backend, ``mirror``, which the Lua
action reads: everything is one runtime API.

Metrics: HAProxy's own Prometheus exporter on a second port (requests and errors per server);
the model servers' ``/metrics`` (latency histograms, shadow comparisons). With ``targets_dir``
the router writes Prometheus file-discovery targets for all three, labelled by pipeline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

from mlcd import loopback
from mlcd.domain.rollout import Builtins, Targets
from mlcd.errors import PermanentError, TemporaryError
from mlcd.ports import PipelineKey, Routes
from mlcd.processes import alive, free_port, kill_group

SPLIT, MIRROR = "split", "mirror"
MAX_SOCKET_PATH = 97
#: Where nothing listens: the candidate server's address while there is no candidate.
NOWHERE = ("127.0.0.1", 9)

_RESPONSES = 'haproxy_server_http_responses_total{proxy="split",server="{{ canary }}"'
_PREDICT = 'request_predict_seconds_bucket{mlcd_server="{{ canary }}"}[{{ interval }}]'
_SHADOW = 'mlcd_shadow_predictions_total{mlcd_server="{{ canary }}"}[{{ interval }}]'
_DISAGREE = 'mlcd_shadow_disagreements_total{mlcd_server="{{ canary }}"}[{{ interval }}]'
#: The router's built-in queries: HAProxy's counters for requests and errors (what clients
#: got), the model server's histogram for latency, the shadow comparison's counters.
BUILTINS = Builtins(
    requests=f"sum(increase({_RESPONSES}}}[{{{{ interval }}}}]))",
    success_rate=(
        f'sum(increase({_RESPONSES},code!="5xx"}}[{{{{ interval }}}}]))'
        f" / sum(increase({_RESPONSES}}}[{{{{ interval }}}}]))"
    ),
    latency_p99=f"histogram_quantile(0.99, sum by (le) (rate({_PREDICT})))",
    shadow_requests=f"sum(increase({_SHADOW}))",
    shadow_disagreement=f"sum(increase({_DISAGREE})) / sum(increase({_SHADOW}))",
    shadow_latency_p99=f"histogram_quantile(0.99, sum by (le) (rate({_PREDICT})))",
)

# Copies a buffered POST to the candidate from a task of its own; the client's request goes on
# at once. The candidate in backend "mirror" says where, and its weight how often (percent).
MIRROR_LUA = """\
core.register_action("mlcd_mirror", {"http-req"}, function(txn)
  local backend = core.backends["mirror"]
  if backend == nil then return end
  local server = nil
  for _, s in pairs(backend.servers) do server = s end
  if server == nil then return end
  local share = server:get_weight()
  if share <= 0 or txn.sf:method() ~= "POST" then return end
  if share < 100 and math.random(100) > share then return end
  local body = txn.sf:req_body() or ""
  local length = tonumber(txn.sf:req_hdr("content-length") or "")
  if length ~= nil and length ~= #body then return end -- larger than the buffer: no half copy
  local url = "http://" .. server:get_addr() .. txn.sf:pathq()
  local headers = {["content-length"] = {tostring(#body)}, ["x-mlcd-mirror"] = {"1"}}
  local kind = txn.sf:req_hdr("content-type")
  if kind ~= nil and kind ~= "" then headers["content-type"] = {kind} end
  core.register_task(function()
    core.httpclient():post{url = url, headers = headers, body = body, timeout = 30000}
  end)
end)
"""


def haproxy_binary() -> str:
    """``MLCD_HAPROXY``, else haproxy on PATH or in /usr/sbin (Debian's package)."""
    configured = os.environ.get("MLCD_HAPROXY")
    if configured:
        named = shutil.which(configured)
        if named is None:
            raise PermanentError(f"MLCD_HAPROXY: {configured} is not an executable")
        return named
    found = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if not found:
        raise PermanentError(
            "haproxy is not installed: run hack/bootstrap --only debian (apt-get install haproxy)"
            " or set MLCD_HAPROXY"
        )
    return found


def _address(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    if not parsed.hostname or not parsed.port:
        raise PermanentError(f"an upstream needs host and port: {url!r}")
    return parsed.hostname, parsed.port


class Runtime:
    """HAProxy's runtime API on its admin socket: one command per connection."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def command(self, line: str, timeout: float = 5.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def checked(self, line: str) -> str:
        answer = self.command(line).strip()
        if any(w in answer.lower() for w in ("unknown", "error", "not found", "failed", "require")):
            raise TemporaryError(f"haproxy refused {line!r}: {answer}", delay=1.0)
        return answer

    def weight(self, backend: str, server: str) -> int:
        return int(self.checked(f"get weight {backend}/{server}").split()[0])

    def server_state(self, backend: str, server: str) -> dict[str, str]:
        """The server's row of ``show servers state``: srv_op_state (2: up, its health checks
        pass), srv_admin_state (bit 0x01: maintenance), srv_addr, ..."""
        lines = self.command(f"show servers state {backend}").splitlines()
        header = next((line for line in lines if line.startswith("# be_id")), "")
        names = header.lstrip("# ").split()
        for line in lines[2:]:
            values = dict(zip(names, line.split(), strict=False))
            if values.get("srv_name") == server:
                return values
        raise TemporaryError(f"haproxy has no server {backend}/{server}", delay=1.0)


@dataclass(frozen=True)
class Proxy:
    """A running HAProxy of one pipeline, as recorded in its folder."""

    pid: int
    url: str
    metrics: str
    stable: str
    candidate: str | None


class LocalRouter:
    """Implements the TrafficRouter port with one HAProxy per pipeline on loopback."""

    def __init__(
        self,
        home: pathlib.Path,
        port: int = 0,
        host: str = "127.0.0.1",
        targets_dir: pathlib.Path | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.home, self.port, self.host = home, port, host
        self.targets_dir, self.start_timeout = targets_dir, start_timeout

    # -- where things are ------------------------------------------------------------------------
    @staticmethod
    def slug(key: PipelineKey) -> str:
        """``namespace.name`` (``namespace.name-uid`` in a cluster): DNS labels, so the dot
        cannot be ambiguous. It names the router's folder and its servers in metrics."""
        return f"{key.namespace}.{key.folder}"

    def _dir(self, key: PipelineKey) -> pathlib.Path:
        path = self.home / "router" / self.slug(key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _socket(self, key: PipelineKey) -> pathlib.Path:
        """The admin socket: in the router's folder, or, when that path is too long for a
        socket (HAProxy takes 97 bytes), in a private folder of this user under /tmp."""
        path = self._dir(key) / "admin.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        private = pathlib.Path(tempfile.gettempdir()) / f"mlcd-{os.getuid()}"
        private.mkdir(mode=0o700, exist_ok=True)
        if private.stat().st_uid != os.getuid() or private.stat().st_mode & 0o077:
            raise PermanentError(f"{private} is not private to this user")
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:20]
        return private / f"{digest}.sock"

    def runtime(self, key: PipelineKey) -> Runtime:
        return Runtime(self._socket(key))

    @staticmethod
    def _names(key: PipelineKey) -> tuple[str, str]:
        slug = LocalRouter.slug(key)
        return f"{slug}.stable", f"{slug}.candidate"

    def _record(self, key: PipelineKey) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self._dir(key) / "router.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def _save(self, key: PipelineKey, data: dict[str, Any]) -> None:
        path = self._dir(key) / "router.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)

    def running(self, key: PipelineKey) -> Proxy | None:
        data = self._record(key)
        if not data or not alive(int(data["pid"])):
            return None
        try:
            self.runtime(key).command("show info", timeout=2.0)
        except OSError:
            return None
        return Proxy(
            int(data["pid"]), data["url"], data["metrics"], data["stable"], data.get("candidate")
        )

    # -- the port --------------------------------------------------------------------------------
    def reconcile(self, key: PipelineKey, stable: str, candidate: str | None) -> str:
        proxy = self.running(key)
        if proxy is None:
            proxy = self._start(key, stable, candidate)
        else:
            runtime = self.runtime(key)
            stable_name, _ = self._names(key)
            if proxy.stable != stable:
                host, port = _address(stable)
                runtime.checked(f"set server {SPLIT}/{stable_name} addr {host} port {port}")
            if proxy.candidate != candidate:
                self._attach(runtime, key, candidate)
            data = self._record(key)
            data.update(stable=stable, candidate=candidate)
            self._save(key, data)
        self._write_targets(key, stable, candidate)
        return proxy.url

    def _attach(self, runtime: Runtime, key: PipelineKey, candidate: str | None) -> None:
        """The old candidate leaves, or a new one arrives, with no traffic and no mirror."""
        stable_name, name = self._names(key)
        runtime.checked(f"set weight {SPLIT}/{stable_name} 100")
        for backend in (SPLIT, MIRROR):
            runtime.checked(f"set weight {backend}/{name} 0")
        host, port = _address(candidate) if candidate else NOWHERE
        for backend in (SPLIT, MIRROR):
            runtime.checked(f"set server {backend}/{name} addr {host} port {port}")
            state = "ready" if candidate else "maint"
            runtime.checked(f"set server {backend}/{name} state {state}")

    def set_weights(self, key: PipelineKey, canary: int) -> None:
        if not 0 <= canary <= 100:
            raise ValueError(f"canary weight must be in [0, 100] (got {canary})")
        proxy = self._require(key)
        if canary and proxy.candidate is None:
            raise PermanentError(f"{key}: no candidate to send {canary}% of traffic to")
        runtime = self.runtime(key)
        stable_name, candidate_name = self._names(key)
        # In an order that never leaves both at 0.
        first, second = (candidate_name, canary), (stable_name, 100 - canary)
        if canary < runtime.weight(SPLIT, candidate_name):
            first, second = second, first
        for name, weight in (first, second):
            runtime.checked(f"set weight {SPLIT}/{name} {weight}")

    def set_mirror(self, key: PipelineKey, on: bool) -> None:
        proxy = self._require(key)
        if on and proxy.candidate is None:
            raise PermanentError(f"{key}: no candidate to mirror traffic to")
        _, name = self._names(key)
        self.runtime(key).checked(f"set weight {MIRROR}/{name} {100 if on else 0}")

    def routes(self, key: PipelineKey) -> Routes | None:
        proxy = self.running(key)
        if proxy is None:
            return None
        runtime = self.runtime(key)
        _, name = self._names(key)
        admin = int(runtime.server_state(SPLIT, name)["srv_admin_state"])
        attached = proxy.candidate is not None and not admin & 1
        return Routes(
            canary_weight=runtime.weight(SPLIT, name) if attached else 0,
            mirror=attached and runtime.weight(MIRROR, name) > 0,
            candidate=attached,
        )

    def candidate_ready(self, key: PipelineKey) -> bool:
        """Attached, up for HAProxy (its health checks pass, so a weight sends it traffic at
        once) and ready for KServe."""
        proxy = self.running(key)
        if proxy is None or proxy.candidate is None:
            return False
        _, name = self._names(key)
        if self.runtime(key).server_state(SPLIT, name).get("srv_op_state") != "2":
            return False
        try:
            response = loopback.get(f"{proxy.candidate}/v2/health/ready", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def targets(self, key: PipelineKey) -> Targets:
        stable_name, candidate_name = self._names(key)
        return Targets(
            namespace=key.namespace, canary=candidate_name, stable=stable_name, builtins=BUILTINS
        )

    def finalize(self, key: PipelineKey) -> None:
        data = self._record(key)
        if data and alive(int(data["pid"])):
            kill_group(int(data["pid"]), grace=5.0)
        if self.targets_dir is not None:
            (self.targets_dir / f"{self.slug(key)}.json").unlink(missing_ok=True)
        socket_path = self._socket(key)
        socket_path.unlink(missing_ok=True)
        if socket_path.parent != self._dir(key):
            with contextlib.suppress(OSError):  # the private folder, once empty
                socket_path.parent.rmdir()
        shutil.rmtree(self._dir(key), ignore_errors=True)

    def stats(self, key: PipelineKey) -> dict[str, dict[str, str]]:
        """HAProxy's counters of the split backend (``show stat``) by role: stable, candidate
        and BACKEND (what the backend answered, its own errors included)."""
        rows = self.runtime(key).command("show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        found: dict[str, dict[str, str]] = {}
        for row in rows[1:]:
            values = dict(zip(header, row.split(","), strict=False))
            if values.get("pxname") == SPLIT and values.get("svname"):
                found[values["svname"].rsplit(".", 1)[-1]] = values
        return found

    def url(self, key: PipelineKey) -> str | None:
        proxy = self.running(key)
        return proxy.url if proxy else None

    def pipelines(self) -> list[PipelineKey]:
        """The pipelines whose router was started here (one machine: no uid). A namespace is a
        DNS label, so the first dot of a folder's name ends it."""
        root = self.home / "router"
        if not root.is_dir():
            return []
        return [
            PipelineKey(*folder.name.split(".", 1))
            for folder in sorted(root.iterdir())
            if (folder / "router.json").is_file() and "." in folder.name
        ]

    # -- the process -----------------------------------------------------------------------------
    def _require(self, key: PipelineKey) -> Proxy:
        proxy = self.running(key)
        if proxy is None:
            raise TemporaryError(f"{key}: the router is not running", delay=1.0)
        return proxy

    def _config(self, key: PipelineKey, port: int, metrics: int, stable: str) -> str:
        folder = self._dir(key)
        stable_name, candidate_name = self._names(key)
        host, stable_port = _address(stable)
        nowhere = f"{NOWHERE[0]}:{NOWHERE[1]}"
        return "\n".join(
            [
                "global",
                f"    stats socket {self._socket(key)} mode 600 level admin",
                "    stats timeout 30s",
                f"    lua-load {folder / 'mirror.lua'}",
                "    maxconn 1000",
                # Inference requests are buffered whole, so a mirror gets the whole body.
                "    tune.bufsize 262144",
                "defaults",
                "    mode http",
                "    timeout connect 2s",
                "    timeout client 60s",
                "    timeout server 60s",
                # A connection refused by one server is retried on the other; an answer never.
                "    option redispatch",
                "    retries 2",
                "frontend main",
                f"    bind {self.host}:{port}",
                "    option http-buffer-request",
                "    http-request lua.mlcd_mirror",
                f"    default_backend {SPLIT}",
                "frontend metrics",
                f"    bind {self.host}:{metrics}",
                "    http-request use-service prometheus-exporter if { path /metrics }",
                f"backend {SPLIT}",
                "    balance roundrobin",
                "    option httpchk GET /v2/health/live",
                f"    server {stable_name} {host}:{stable_port} weight 100 check inter 1s",
                f"    server {candidate_name} {nowhere} weight 0 check inter 1s disabled",
                f"backend {MIRROR}",
                f"    server {candidate_name} {nowhere} weight 0 disabled",
                "",
            ]
        )

    def _start(self, key: PipelineKey, stable: str, candidate: str | None) -> Proxy:
        folder = self._dir(key)
        old = self._record(key)
        if old.get("pid") and alive(int(old["pid"])):
            kill_group(int(old["pid"]), grace=5.0)  # recorded but not answering
        port = self.port or int(old.get("port") or 0) or free_port(self.host)
        metrics = int(old.get("metrics_port") or 0) or free_port(self.host)
        (folder / "mirror.lua").write_text(MIRROR_LUA)
        (folder / "haproxy.cfg").write_text(self._config(key, port, metrics, stable))
        self._socket(key).unlink(missing_ok=True)
        with (folder / "haproxy.log").open("ab") as out:
            process = subprocess.Popen(
                [haproxy_binary(), "-db", "-f", str(folder / "haproxy.cfg")],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        url = f"http://{self.host}:{port}"
        record = {
            "pid": process.pid,
            "port": port,
            "metrics_port": metrics,
            "url": url,
            "metrics": f"http://{self.host}:{metrics}/metrics",
            "stable": stable,
            "candidate": None,
        }
        self._save(key, record)
        deadline = time.monotonic() + self.start_timeout
        while self.running(key) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                kill_group(process.pid, grace=2.0)
                log = (folder / "haproxy.log").read_text(errors="replace")[-2000:]
                raise TemporaryError(f"haproxy for {key} did not start:\n{log}", delay=5.0)
            time.sleep(0.05)
        if candidate is not None:
            self._attach(self.runtime(key), key, candidate)
            record["candidate"] = candidate
            self._save(key, record)
        return Proxy(process.pid, url, str(record["metrics"]), stable, candidate)

    def _write_targets(self, key: PipelineKey, stable: str, candidate: str | None) -> None:
        if self.targets_dir is None:
            return
        labels = {"mlcd_namespace": key.namespace, "mlcd_pipeline": key.name}
        record = self._record(key)
        stable_name, candidate_name = self._names(key)
        groups = [
            {
                "targets": [urllib.parse.urlsplit(record["metrics"]).netloc],
                "labels": {"job": "mlcd-router", **labels},
            },
            {
                "targets": ["{}:{}".format(*_address(stable))],
                "labels": {"job": "mlcd-model-server", "mlcd_server": stable_name, **labels},
            },
        ]
        if candidate is not None:
            groups.append(
                {
                    "targets": ["{}:{}".format(*_address(candidate))],
                    "labels": {
                        "job": "mlcd-model-server",
                        "mlcd_server": candidate_name,
                        **labels,
                    },
                }
            )
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        path = self.targets_dir / f"{self.slug(key)}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups, indent=2))
        with contextlib.suppress(FileNotFoundError):
            tmp.replace(path)
