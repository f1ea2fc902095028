"""Serving on this machine: one KServe ModelServer process per model, kept running after the
command that started it returns, switched to a new version in place."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from mlcd.artifacts.hashing import sha256_file
from mlcd.domain.records import ModelRef
from mlcd.errors import PermanentError, StageFailed
from mlcd.processes import alive, kill_group, listening_socket


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    port: int
    url: str


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


class LocalServing:
    """Implements the serving port with KServe's ModelServer on loopback."""

    def __init__(
        self,
        home: pathlib.Path,
        port: int = 8080,
        host: str = "127.0.0.1",
        ready_timeout: float = 90.0,
    ) -> None:
        self.home, self.port, self.host, self.ready_timeout = home, port, host, ready_timeout
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def _dir(self, key: str) -> pathlib.Path:
        path = self.home / "serving" / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def running(self, key: str) -> ServerInfo | None:
        """The live server of ``key`` (a model name, or any name a caller serves it under)."""
        info = _read_json(self._dir(key) / "server.json")
        if not info or not alive(int(info["pid"])):
            return None
        try:
            response = httpx.get(f"{info['url']}/v2/health/live", timeout=2.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return ServerInfo(int(info["pid"]), int(info["port"]), str(info["url"]))

    def current(self, key: str) -> ModelRef | None:
        if self.running(key) is None:
            return None
        served = _read_json(self._dir(key) / "served.json")
        if not served:
            return None
        return ModelRef(
            uri=str(served.get("uri", served["path"])),
            version=str(served["version"]),
            sha256=str(served["sha256"]),
        )

    def url(self, key: str) -> str | None:
        info = self.running(key)
        return info.url if info else None

    def serve(
        self, model: str, ref: ModelRef, model_dir: pathlib.Path, key: str | None = None
    ) -> str:
        """Serves ``model_dir`` as ``model`` (checked against ``ref.sha256``); returns the URL."""
        key = key or model
        actual = sha256_file(model_dir / "model.onnx")
        if actual != ref.sha256:
            raise PermanentError(
                f"refusing to serve {model} version {ref.version}: sha256 is "
                f"{actual}, the repository recorded {ref.sha256}"
            )
        folder = self._dir(key)
        pointer = folder / "pointer.json"
        previous = _read_json(pointer)
        _write_json(
            pointer,
            {"version": ref.version, "path": str(model_dir), "uri": ref.uri, "sha256": ref.sha256},
        )
        try:
            info = self.running(key)
            if info is None:
                info = self._start(model, folder)
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
            response = httpx.post(f"{info.url}/v2/repository/models/{model}/load", timeout=120.0)
        except httpx.HTTPError as exc:
            raise StageFailed(f"model server at {info.url} did not answer: {exc}") from exc
        if response.status_code != 200:
            raise StageFailed(f"model server refused the new version: {response.text[:500]}")

    def prepare(self, model: str, key: str | None = None) -> None:
        """Starts a model server ahead of need: it loads its libraries while a run evaluates and
        waits for a model; :meth:`serve` then only loads the model. Nothing if one runs."""
        folder = self._dir(key or model)
        old = _read_json(folder / "server.json") or {}
        if old.get("pid") and alive(int(old["pid"])):
            return
        self._spawn(model, folder, old)

    def abandon(self, key: str) -> None:
        """Stops a server :meth:`prepare` started that never got a model to serve."""
        folder = self._dir(key)
        if not (folder / "served.json").exists():
            self.stop(key)

    def _spawn(self, model: str, folder: pathlib.Path, old: dict[str, Any]) -> tuple[int, str]:
        wanted = self.port or int(old.get("port") or 0)
        try:
            # Bound here and handed over: no other process can take the port in between.
            listener = listening_socket(self.host, wanted)
        except OSError as exc:
            if self.port or not wanted:
                raise StageFailed(f"cannot serve on {self.host}:{wanted}: {exc}") from exc
            listener = listening_socket(self.host)  # the last port is taken now: another
        port = int(listener.getsockname()[1])
        url = f"http://{self.host}:{port}"
        env = {
            **os.environ,
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
            folder / "server.json", {"pid": process.pid, "port": port, "url": url, "model": model}
        )
        self._children[process.pid] = process
        return process.pid, url

    def _start(self, model: str, folder: pathlib.Path) -> ServerInfo:
        old = _read_json(folder / "server.json") or {}
        pid = int(old.get("pid") or 0)
        if (
            pid
            and alive(pid)
            and old.get("model") == model
            and not (folder / "served.json").exists()
        ):
            url = str(old["url"])  # prepared earlier: it is waiting for the pointer
        else:
            if pid and alive(pid):
                # Recorded but not answering: a start cut short by a crash, or a hung server.
                kill_group(pid, grace=10.0)
            pid, url = self._spawn(model, folder, old)
        port = int(url.rsplit(":", 1)[1])
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            child = self._children.get(pid)
            if (child is not None and child.poll() is not None) or not alive(pid):
                raise StageFailed(f"model server exited:\n{_tail(folder / 'server.log')}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{url}/v2/models/{model}/ready", timeout=1.0)
                if ready.status_code == 200:
                    return ServerInfo(pid, port, url)
            time.sleep(0.2)
        kill_group(pid, grace=10.0)
        raise StageFailed(
            f"model server not ready after {self.ready_timeout:.0f}s:\n"
            f"{_tail(folder / 'server.log')}"
        )

    def stop(self, key: str) -> None:
        folder = self._dir(key)
        info = _read_json(folder / "server.json")
        if info and alive(int(info["pid"])):
            kill_group(int(info["pid"]), grace=10.0)
        for name in ("server.json", "served.json", "pointer.json"):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()

    def models(self) -> list[str]:
        root = self.home / "serving"
        return sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
