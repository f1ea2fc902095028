"""What the predictor pods and the Gateway would do, played on loopback for the simulated node
(pods do not execute there; the real node runs them, tests/kserve/test_kserve_real_node.py).

- :class:`Predictor`: one predictor pod's container, the very program it runs
  (``python -m mlcd.serving.kserve.runtime``, KServe's ModelServer with onnxruntime).
- :class:`PlayedPredictors`: for every predictor Deployment KServe creates, its version folder
  downloaded from the model repository (the storage initializer's job) and a :class:`Predictor`
  serving it, scraped by the real Prometheus with the labels a cluster's scrape configuration
  attaches to the pod (``namespace``, the pod label ``app``); stopped when KServe removes the
  Deployment.
- :class:`PlayedTraffic`: requests to the InferenceService's host, each sent to a backend of
  the pipeline's HTTPRoute chosen by its weight, as a Gateway would.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from kubernetes import client
from storage_initializer import download

from mlcd.processes import free_port, kill_group
from mlcd.serving.kserve.runtime import EXPECTED_SHA256
from rollout.servers import write_model
from testenv.minio import MinIO
from testenv.prometheus import PrometheusAPI

#: What KServe annotates a predictor's pod template with: the storageUri it downloads.
SOURCE_URI = "internal.serving.kserve.io/storage-initializer-sourceuri"
ISVC_LABEL = "serving.kserve.io/inferenceservice"


class Predictor:
    """One predictor pod's container, on loopback."""

    def __init__(
        self, folder: pathlib.Path, version: str, model: str = "mnist", faults: str = ""
    ) -> None:
        self.folder, self.version, self.model = folder, version, model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        metadata = json.loads((folder / "metadata.json").read_text())
        env = {**os.environ, EXPECTED_SHA256: metadata["sha256"], "OMP_NUM_THREADS": "1"}
        if faults:
            env["MLCD_SERVING_FAULTS"] = faults
        self.log = folder.parent / f"predictor-{folder.name}-{version}.log"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlcd.serving.kserve.runtime",
                    f"--model_name={model}",
                    f"--model_dir={folder}",
                    f"--http_port={self.port}",
                    "--host=127.0.0.1",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the runtime exited:\n{self.log.read_text()[-3000:]}")
        try:
            url = f"{self.url}/v2/models/{self.model}/ready"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            kill_group(self.process.pid, grace=5.0)
        self.process.wait(timeout=10)


def version_folder(root: pathlib.Path, version: str, seed: int) -> pathlib.Path:
    """A folder as KServe's storage initializer downloads it: model.onnx and metadata.json."""
    pointer = json.loads(write_model(root, version, seed).read_text())
    folder = pathlib.Path(pointer["path"])
    (folder / "metadata.json").write_text(
        json.dumps({"version": version, "sha256": pointer["sha256"]})
    )
    return folder


def digits_request(seed: int = 0) -> dict[str, Any]:
    """A V2 request for the digits model of the test pipelines (one 1x28x28 image)."""
    pixels = random.Random(seed).choices(range(256), k=28 * 28)
    return {
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": pixels}]
    }


@dataclass
class PlayedPredictors:
    """Plays the predictor pods of one namespace while it runs (see the module's doc)."""

    api: client.ApiClient
    namespace: str
    prometheus: PrometheusAPI
    minio: MinIO
    folder: pathlib.Path
    #: Version -> MLCD_SERVING_FAULTS of the model server playing it (e.g. a faulty candidate).
    faults: dict[str, str] = field(default_factory=dict)
    model: str = "mnist"
    running: dict[str, Predictor] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def sync(self) -> None:
        apps = client.AppsV1Api(self.api)
        listed = apps.list_namespaced_deployment(self.namespace, label_selector=ISVC_LABEL).items
        present = {d.metadata.name for d in listed if not d.metadata.deletion_timestamp}
        for deployment in listed:
            name = deployment.metadata.name
            if name not in present or name in self.running:
                continue
            annotations = deployment.spec.template.metadata.annotations or {}
            version = annotations["mlcd.io/version"]
            target = self.folder / name
            target.mkdir(parents=True, exist_ok=True)
            download(
                annotations[SOURCE_URI],
                target,
                self.minio.endpoint,
                self.minio.access_key,
                self.minio.secret_key,
            )
            predictor = Predictor(target, version, self.model, self.faults.get(version, ""))
            self.running[name] = predictor
            labels = {"namespace": self.namespace, "app": f"isvc.{name}"}
            self.prometheus.add_target(self._job(name), f"127.0.0.1:{predictor.port}", labels)
        for name in set(self.running) - present:
            self.prometheus.remove_target(self._job(name))
            self.running.pop(name).stop()

    def _job(self, deployment: str) -> str:
        return f"{self.namespace}-{deployment}"

    def _loop(self) -> None:
        try:
            while not self._stop.wait(0.5):
                self.sync()
        except BaseException as exc:  # reported by check()
            self._error = exc

    def start(self) -> PlayedPredictors:
        self._thread = threading.Thread(target=self._loop, name="played-predictors", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        if self._error is not None:
            raise AssertionError(f"playing the predictors failed: {self._error!r}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for name, predictor in self.running.items():
            self.prometheus.remove_target(self._job(name))
            predictor.stop()
        self.running.clear()


@dataclass
class PlayedTraffic:
    """Requests to the pipeline's InferenceService, each sent to one backend of its HTTPRoute
    chosen by weight (as the Gateway does), at ``rate`` per second; bounded in time."""

    api: client.ApiClient
    namespace: str
    route: str
    predictors: PlayedPredictors
    rate: float = 10.0
    limit: float = 600.0  # seconds: the loop stops by itself
    answered: Counter[tuple[str, int]] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def backends(self) -> list[tuple[str, int]]:
        try:
            route = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", self.namespace, "httproutes", self.route
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return []
            raise
        refs = route["spec"]["rules"][0]["backendRefs"]
        return [(r["name"], int(r.get("weight", 1))) for r in refs]

    def _loop(self) -> None:
        chooser = random.Random(7)
        deadline = time.monotonic() + self.limit
        backends: list[tuple[str, int]] = []
        looked = 0.0
        with httpx.Client(timeout=10) as http:
            sent = 0
            while not self._stop.wait(1 / self.rate) and time.monotonic() < deadline:
                if time.monotonic() - looked > 0.5:
                    backends, looked = self.backends(), time.monotonic()
                weighted = [(name, weight) for name, weight in backends if weight > 0]
                if not weighted:
                    continue
                names, weights = zip(*weighted, strict=True)
                service = chooser.choices(names, weights)[0]
                predictor = self.predictors.running.get(service)
                if predictor is None:
                    continue
                sent += 1
                try:
                    response = http.post(
                        f"{predictor.url}/v2/models/{predictor.model}/infer",
                        json=digits_request(sent),
                    )
                except httpx.HTTPError:
                    continue  # not up yet, or just removed
                self.answered[(service, response.status_code)] += 1

    def start(self) -> PlayedTraffic:
        self._thread = threading.Thread(target=self._loop, name="played-traffic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
