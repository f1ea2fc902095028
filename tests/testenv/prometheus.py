"""Prometheus scraping targets that tests add through file-based service discovery."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from testenv.binaries import binary
from testenv.component import Component, http_ok
from testenv.proc import free_port

SCRAPE_INTERVAL = "1s"


class Prometheus(Component):
    name = "prometheus"
    start_timeout = 60.0

    def start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sd_dir = self.dir / "targets"
        self.sd_dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "prometheus.yml"
        # JSON is YAML: no template engine needed for the config.
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": SCRAPE_INTERVAL,
                        "scrape_timeout": SCRAPE_INTERVAL,
                        "evaluation_interval": SCRAPE_INTERVAL,
                    },
                    "scrape_configs": [
                        {
                            "job_name": "prometheus",
                            "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}],
                        },
                        {
                            "job_name": "testenv",
                            "file_sd_configs": [
                                {"files": [str(self.sd_dir / "*.json")], "refresh_interval": "1s"}
                            ],
                        },
                    ],
                },
                indent=2,
            )
        )
        self.spawn(
            [
                str(binary("prometheus")),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2h",
                "--log.level=warn",
            ]
        )

    def probe(self) -> bool:
        return http_ok(f"{self.url}/-/ready")

    def exports(self) -> dict[str, str]:
        return {"PROMETHEUS_URL": self.url, "PROMETHEUS_TARGETS_DIR": str(self.sd_dir)}

    def state(self) -> dict[str, Any]:
        return {"url": self.url, "targets_dir": str(self.sd_dir)}


class PrometheusAPI:
    """What a test does with a running Prometheus: add targets, wait for them, query."""

    def __init__(self, url: str, targets_dir: Path) -> None:
        self.url = url
        self.targets_dir = targets_dir

    @classmethod
    def of(cls, component: Prometheus) -> PrometheusAPI:
        return cls(component.url, component.sd_dir)

    def add_target(
        self,
        job: str,
        address: str,
        labels: dict[str, str] | None = None,
        metrics_path: str = "/metrics",
    ) -> None:
        """Scrape ``address`` (host:port) as job ``job`` from the next discovery refresh on."""
        group = {
            "targets": [address],
            "labels": {"job": job, "__metrics_path__": metrics_path, **(labels or {})},
        }
        path = self.targets_dir / f"{job}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps([group]))
        os.replace(temporary, path)  # atomic: discovery never reads half a file

    def remove_target(self, job: str) -> None:
        (self.targets_dir / f"{job}.json").unlink(missing_ok=True)

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the result vector."""
        data = self.get("/api/v1/query", query=promql)
        return list(data["result"])

    def wait_for(self, promql: str, timeout: float = 20) -> list[dict[str, Any]]:
        """Poll ``promql`` until it returns a non-empty result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                targets = self.get("/api/v1/targets")["activeTargets"]
                raise TimeoutError(f"no result for {promql!r} in {timeout}s; targets: {targets}")
            time.sleep(0.25)
