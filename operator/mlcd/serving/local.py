"""Serving on this machine: one KServe ModelServer process per pipeline, kept running after
the command that started it returns, switched to a new version in place.

Servers are keyed by the pipeline (namespace, name and uid), never by the model name alone,
so two tenants with a model of the same name each get their own server. A server is alive
only if its pid and start time match what was recorded when it started."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from mlcd import loopback
from mlcd.artifacts.hashing import sha256_file
from mlcd.domain.observations import ServingView
from mlcd.domain.records import ModelRef
from mlcd.errors import PermanentError, StageFailed
from mlcd.ports import PipelineKey
from mlcd.processes import alive, kill_group, listening_socket, start_time


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    port: int
    url: str


def _alive(info: dict[str, Any] | None) -> bool:
    if not info or "pid" not in info:
        return False
    return alive(int(info["pid"]), info.get("started"))


def _write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def _tail(path: pathlib.Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


Role = Literal["stable", "candidate"]


class LocalServing:
    """Implements the serving port with KServe's ModelServer on loopback.

    A pipeline has a stable server and, during a rollout, a candidate server (``role``); the
    candidate's answers to mirrored traffic are compared with the stable model's (shadow), and
    ``candidate_env`` adds variables to candidate servers only (``MLCD_SERVING_FAULTS``: a test
    and demo device)."""

    def __init__(
        self,
        home: pathlib.Path,
        port: int = 8080,
        host: str = "127.0.0.1",
        ready_timeout: float = 90.0,
        candidate_env: dict[str, str] | None = None,
    ) -> None:
        self.home, self.port, self.host, self.ready_timeout = home, port, host, ready_timeout
        self.candidate_env = dict(candidate_env or {})
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def _dir(self, key: PipelineKey, role: Role = "stable") -> pathlib.Path:
        path = self.home / "serving" / key.namespace / key.folder
        if role == "candidate":
            path = path / "candidate"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pointer(self, key: PipelineKey) -> pathlib.Path:
        """The stable server's pointer file (a shadow candidate scores with it too)."""
        return self._dir(key) / "pointer.json"

    def server(self, key: PipelineKey, role: Role = "stable") -> ServerInfo | None:
        """The live, answering server of the pipeline ``key``."""
        info = _read_json(self._dir(key, role) / "server.json")
        if not info or not _alive(info):
            return None
        try:
            response = loopback.get(f"{info['url']}/v2/health/live", timeout=2.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return ServerInfo(int(info["pid"]), int(info["port"]), str(info["url"]))

    def running(self, key: PipelineKey) -> bool:
        return any(
            _alive(_read_json(self._dir(key, role) / "server.json"))
            for role in ("stable", "candidate")
        )

    def status(self, key: PipelineKey, model: str, role: Role = "stable") -> ServingView:
        """What the server reports: it answers ready for ``model``, and the version and sha256
        it loaded (written by the server itself when it loaded them)."""
        info = self.server(key, role)
        if info is None:
            return ServingView(ready=False, reason="the model server is not running")
        try:
            answer = loopback.get(f"{info.url}/v2/models/{model}/ready", timeout=2.0)
        except httpx.HTTPError as exc:
            return ServingView(ready=False, url=info.url, reason=f"it does not answer: {exc}")
        served = _read_json(self._dir(key, role) / "served.json")
        ref = None
        if served and served.get("pid") == info.pid:
            ref = ModelRef(
                uri=str(served.get("uri", served.get("path"))),
                version=str(served["version"]),
                sha256=str(served["sha256"]),
            )
        if answer.status_code != 200:
            return ServingView(
                ready=False,
                ref=ref,
                url=info.url,
                reason=f"model {model} is not ready ({answer.status_code})",
            )
        return ServingView(ready=True, ref=ref, url=info.url)

    def url(self, key: PipelineKey, role: Role = "stable") -> str | None:
        info = self.server(key, role)
        return info.url if info else None

    def serve(
        self,
        key: PipelineKey,
        model: str,
        ref: ModelRef,
        model_dir: pathlib.Path,
        role: Role = "stable",
        port: int | None = None,
        shadow: bool = False,
    ) -> str:
        """Serves ``model_dir`` as ``model`` (checked against ``ref.sha256``); returns the URL.
        ``port``: where a new server listens (default: this serving's port; 0 picks one);
        ``shadow``: a candidate also scores each request with the stable model and counts
        where they disagree."""
        actual = sha256_file(model_dir / "model.onnx")
        if actual != ref.sha256:
            raise PermanentError(
                f"refusing to serve {model} version {ref.version}: sha256 is "
                f"{actual}, the repository recorded {ref.sha256}"
            )
        folder = self._dir(key, role)
        pointer = folder / "pointer.json"
        previous = _read_json(pointer)
        _write_json(
            pointer,
            {"version": ref.version, "path": str(model_dir), "uri": ref.uri, "sha256": ref.sha256},
        )
        env = dict(self.candidate_env) if role == "candidate" else {}
        if role == "candidate" and shadow:
            env["MLCD_SERVING_SHADOW_OF"] = str(self.pointer(key))
        try:
            info = self.server(key, role)
            if info is None:
                info = self._start(model, folder, port, env)
            else:
                self._reload(model, info)
            served = _read_json(folder / "served.json") or {}
            if str(served.get("version")) != ref.version or served.get("sha256") != ref.sha256:
                raise StageFailed(
                    f"model server reports version {served.get('version')}, expected {ref.version}"
                )
        except BaseException:
            # The pointer goes back to what still serves; the old version was never unloaded.
            if previous is not None:
                _write_json(pointer, previous)
            raise
        return info.url

    def _reload(self, model: str, info: ServerInfo) -> None:
        try:
            response = loopback.post(f"{info.url}/v2/repository/models/{model}/load", timeout=120.0)
        except httpx.HTTPError as exc:
            raise StageFailed(f"model server at {info.url} did not answer: {exc}") from exc
        if response.status_code != 200:
            raise StageFailed(f"model server refused the new version: {response.text[:500]}")

    def prepare(self, key: PipelineKey, model: str, port: int | None = None) -> None:
        """Starts a model server ahead of need: it loads its libraries while a run evaluates and
        waits for a model; :meth:`serve` then only loads the model. Nothing if one runs."""
        folder = self._dir(key)
        old = _read_json(folder / "server.json") or {}
        if _alive(old):
            return
        self._spawn(model, folder, old, port, {})

    def abandon(self, key: PipelineKey) -> None:
        """Stops a server :meth:`prepare` started that never got a model to serve."""
        folder = self._dir(key)
        if not (folder / "served.json").exists():
            self.stop(key)

    def _spawn(
        self,
        model: str,
        folder: pathlib.Path,
        old: dict[str, Any],
        port: int | None,
        extra: dict[str, str],
    ) -> tuple[int, str]:
        fixed = self.port if port is None else port
        wanted = fixed or int(old.get("port") or 0)
        try:
            # Bound here and handed over: no other process can take the port in between.
            listener = listening_socket(self.host, wanted)
        except OSError as exc:
            if fixed or not wanted:
                raise StageFailed(f"cannot serve on {self.host}:{wanted}: {exc}") from exc
            listener = listening_socket(self.host)  # the last port is taken now: another
        port = int(listener.getsockname()[1])
        url = f"http://{self.host}:{port}"
        env = {
            **os.environ,
            **extra,
            "MLCD_SERVING_MODEL": model,
            "MLCD_SERVING_POINTER": str(folder / "pointer.json"),
            "MLCD_SERVING_PORT": str(port),
            "MLCD_SERVING_HOST": self.host,
            "MLCD_SERVING_FD": str(listener.fileno()),
            "OMP_NUM_THREADS": "1",
        }
        with listener, (folder / "server.log").open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlcd.serving.modelserver"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(listener.fileno(),),
            )
        # Recorded at once, so a crash while it starts leaves no server nobody knows of.
        _write_json(
            folder / "server.json",
            {
                "pid": process.pid,
                "started": start_time(process.pid),
                "port": port,
                "url": url,
                "model": model,
            },
        )
        self._children[process.pid] = process
        return process.pid, url

    def _start(
        self, model: str, folder: pathlib.Path, port: int | None, extra: dict[str, str]
    ) -> ServerInfo:
        old = _read_json(folder / "server.json") or {}
        pid = int(old.get("pid") or 0)
        if _alive(old) and old.get("model") == model and not (folder / "served.json").exists():
            url = str(old["url"])  # prepared earlier: it is waiting for the pointer
        else:
            if _alive(old):
                # Recorded but not answering: a start cut short by a crash, or a hung server.
                kill_group(pid, grace=10.0)
            pid, url = self._spawn(model, folder, old, port, extra)
        port = int(url.rsplit(":", 1)[1])
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            child = self._children.get(pid)
            if (child is not None and child.poll() is not None) or not alive(pid):
                raise StageFailed(f"model server exited:\n{_tail(folder / 'server.log')}")
            with contextlib.suppress(httpx.HTTPError):
                ready = loopback.get(f"{url}/v2/models/{model}/ready", timeout=1.0)
                if ready.status_code == 200:
                    return ServerInfo(pid, port, url)
            time.sleep(0.2)
        kill_group(pid, grace=10.0)
        raise StageFailed(
            f"model server not ready after {self.ready_timeout:.0f}s:\n"
            f"{_tail(folder / 'server.log')}"
        )

    def stop(self, key: PipelineKey, role: Role | None = None) -> None:
        """Stops the server of ``role`` (both when None)."""
        for each in ("candidate", "stable") if role is None else (role,):
            folder = self._dir(key, each)
            info = _read_json(folder / "server.json")
            if info and _alive(info):
                kill_group(int(info["pid"]), grace=10.0)
            for name in ("server.json", "served.json", "pointer.json"):
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()

    def pipelines(self, namespace: str | None = None) -> list[PipelineKey]:
        """The pipelines this machine has served (one machine: no uid)."""
        root = self.home / "serving"
        spaces = [root / namespace] if namespace else sorted(root.glob("*"))
        return [
            PipelineKey(space.name, folder.name)
            for space in spaces
            if space.is_dir()
            for folder in sorted(space.iterdir())
            if folder.is_dir()
        ]
