"""A Prometheus of mlcd's own, for rollouts on one machine: started on first need and kept
running after the command returns (like the model servers), scraping what the routers list in
its targets folder (file-based discovery). ``MLCD_PROMETHEUS_URL`` replaces it with yours."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import time

import httpx

from mlcd import loopback
from mlcd.errors import PermanentError, TemporaryError
from mlcd.metrics.prometheus import PrometheusProvider
from mlcd.processes import alive, free_port, kill_group, start_time

#: A query over ``{{ interval }}`` needs at least two scrapes in its window (rate, increase):
#: every second, a rollout's intervals of 3 s and up see data on a laptop; every 2 s, a 3 s
#: window mostly held one scrape and most analyses had no data.
SCRAPE_INTERVAL = "1s"


def prometheus_binary() -> str:
    path = os.environ.get("MLCD_PROMETHEUS") or shutil.which("prometheus")
    if path is None:
        for candidate in ("/usr/bin/prometheus", "/usr/sbin/prometheus"):
            if os.access(candidate, os.X_OK):
                return candidate
        raise PermanentError(
            "rollouts on this machine are analysed by Prometheus, which is not installed: "
            "run `hack/bootstrap --only serving` (Debian's prometheus), or set "
            "MLCD_PROMETHEUS_URL to a Prometheus of yours"
        )
    return path


class EmbeddedPrometheus:
    def __init__(self, home: pathlib.Path, port: int = 0, ready_timeout: float = 30.0) -> None:
        self.folder = home / "prometheus"
        self.port, self.ready_timeout = port, ready_timeout

    @property
    def targets_dir(self) -> pathlib.Path:
        return self.folder / "targets"

    def _record(self) -> dict[str, object]:
        try:
            data: dict[str, object] = json.loads((self.folder / "server.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def pid(self) -> int | None:
        """The recorded process, if it is alive (whether or not it answers)."""
        record = self._record()
        pid, started = record.get("pid"), record.get("started")
        if isinstance(pid, int) and alive(pid, started if isinstance(started, int) else None):
            return pid
        return None

    def url(self) -> str | None:
        """The running Prometheus' address, if it runs and answers."""
        if self.pid() is None:
            return None
        record = self._record()
        url = str(record["url"])
        with contextlib.suppress(httpx.HTTPError):
            if loopback.get(f"{url}/-/ready", timeout=2.0).status_code == 200:
                return url
        return None

    def ensure(self) -> str:
        """Starts it unless it runs; returns its address."""
        url = self.url()
        if url is not None:
            return url
        old = self._record()
        stale = self.pid()
        if stale is not None:
            kill_group(stale, grace=5.0)  # recorded but not answering
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        port = self.port or int(old.get("port") or 0) or free_port()  # type: ignore[call-overload]
        config = self.folder / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "mlcd",
                            "file_sd_configs": [
                                {
                                    "files": [str(self.targets_dir / "*.json")],
                                    "refresh_interval": "1s",
                                }
                            ],
                        }
                    ],
                },
                indent=2,
            )
        )
        with (self.folder / "prometheus.log").open("ab") as log:
            process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=2d",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        record = {"pid": process.pid, "started": start_time(process.pid), "port": port, "url": url}
        (self.folder / "server.json").write_text(json.dumps(record))
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if self.url() is not None:
                return url
            time.sleep(0.2)
        kill_group(process.pid, grace=2.0)
        log_text = (self.folder / "prometheus.log").read_text(errors="replace")[-1500:]
        raise TemporaryError(f"Prometheus did not start:\n{log_text}", delay=5.0)

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            kill_group(pid, grace=5.0)
        with contextlib.suppress(FileNotFoundError):
            (self.folder / "server.json").unlink()


class EmbeddedProvider:
    """The metric provider port on the embedded Prometheus, started on the first query (a
    pipeline without rollouts never starts it)."""

    def __init__(self, prometheus: EmbeddedPrometheus) -> None:
        self.prometheus = prometheus
        self._provider: PrometheusProvider | None = None

    def _live(self) -> PrometheusProvider:
        url = self.prometheus.ensure()
        if self._provider is None or self._provider.url != url:
            self._provider = PrometheusProvider(url)
        return self._provider

    def query(self, promql: str) -> float | None:
        return self._live().query(promql)

    def is_online(self) -> bool:
        try:
            return self._live().is_online()
        except TemporaryError:
            return False
