"""KServe end to end on the real node: ``mlcd operator --serving kserve`` serves a promoted model,
KServe makes its predictor, and the predictor pod runs on the real node (kubelet, containerd,
kube-proxy): the storage initializer downloads the version from MinIO with the credentials
KServe injects by reference, the project's runtime (deploy/kserve/clusterservingruntime.yaml)
serves it, and it answers V2 requests through its Service, reached through the API server's
service proxy.

Devices of the test stack, not how users deploy:
- the runtime's image is busybox with a ``python`` that runs the project's cached environment
  through read-only hostPath mounts (``testenv.images.python_mounts``), in a copy of the
  project's ServingRuntime that also carries the real node's placement;
- KServe's storage initializer image cannot be pulled here (no registry) and its package is not
  in the environment: a ClusterStorageContainer for this test's repository puts
  ``storage_initializer.py`` in its place; KServe still injects the init container, its
  arguments and the S3 credentials (``secretKeyRef``) itself;
- MinIO listens on the host's loopback; a forwarder on the host's end of the node's link makes
  it reachable from pods and from the operator at one endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from kserve_helpers import ISVC, get_isvc, kserve_pipeline, kubectl_wait_ready
from kubernetes import client
from played import digits_request

from helpers import metric_value, wait_for
from operator_process import OperatorProcess, Pipelines
from testenv.cluster import Cluster
from testenv.gateway import Traefik
from testenv.images import Image, busybox_layer, files_layer, python_mounts
from testenv.minio import MinIO
from testenv.node import RealNode
from testenv.nodens import forwarder
from testenv.prometheus import PrometheusAPI

pytestmark = pytest.mark.real_node

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGE = "mlcd.test/kserve-runtime:1"
RUNTIME = "mlcd-onnx-real-node"
STORAGE = "mlcd-test-real-node"
#: Only this test's model repositories (namespaces real-node-*) use the stand-in initializer.
REPOSITORY = r"s3://mlcd-test/real-node-.*"
NAMESPACE_PREFIX = "real-node-"


class HostForward:
    """``host:port`` on the host forwarded to ``127.0.0.1:target`` (a loopback-only server)."""

    def __init__(self, host: str, target: int) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.host, self.port = host, self.listener.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.thread.start()

    def _run(self, target: int) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(forwarder(target), sock=self.listener)
        )
        try:
            self.loop.run_forever()
        finally:
            server.close()
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.listener.close()


@pytest.fixture(scope="module")
def minio_for_pods(real_node: RealNode, minio: MinIO) -> Iterator[str]:
    """The MinIO endpoint pods and the operator both reach."""
    forward = HostForward(real_node.host_ip, minio.port)
    try:
        yield f"http://{forward.host}:{forward.port}"
    finally:
        forward.stop()


def runtime_objects(placement: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's ServingRuntime, on the real node with the project's Python; the stand-in
    storage initializer for this test's repositories."""
    python = python_mounts()
    runtime = yaml.safe_load(
        (ROOT / "deploy" / "kserve" / "clusterservingruntime.yaml").read_text()
    )
    runtime["metadata"]["name"] = RUNTIME
    spec = runtime["spec"]
    [container] = spec["containers"]
    container.update(image=IMAGE, imagePullPolicy="IfNotPresent")
    container["volumeMounts"] = python.volume_mounts
    spec.update(volumes=python.volumes, **placement)
    storage = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterStorageContainer",
        "metadata": {"name": STORAGE},
        "spec": {
            "workloadType": "initContainer",
            "supportedUriFormats": [{"regex": REPOSITORY}],
            "container": {
                "name": "storage-initializer",
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": [
                    "python",
                    str(pathlib.Path(__file__).with_name("storage_initializer.py")),
                ],
                "volumeMounts": python.volume_mounts,
                "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
            },
        },
    }
    return [runtime, storage]


@pytest.fixture(scope="module")
def real_node_runtime(cluster: Cluster, real_node: RealNode, kserve: Any) -> Iterator[str]:
    """The runtime's image imported into the node, the runtime and the stand-in initializer."""
    python = python_mounts()
    launcher = f'#!/bin/sh\nexec {python.python} "$@"\n'.encode()
    real_node.import_images(Image(IMAGE, (busybox_layer(), files_layer({"/bin/python": launcher}))))
    text = json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": runtime_objects(real_node.placement)}
    )
    cluster.kubectl("apply", "--server-side", "-f", "-", input=text)
    try:
        yield RUNTIME
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=text)


def proxied(
    api: client.ApiClient,
    namespace: str,
    service: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> Any:
    """A request to ``service``'s port 80 through the API server's service proxy; the raw
    response (``status``, ``data``)."""
    where = f"/api/v1/namespaces/{namespace}/services/{service}:80/proxy{path}"
    response = api.call_api(
        where,
        method,
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    return response


def predictor_pods(api: client.ApiClient, namespace: str, deployment: str) -> list[Any]:
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(namespace, label_selector=f"app=isvc.{deployment}").items
    return [p for p in pods if not p.metadata.deletion_timestamp]


class PodTargets:
    """The namespace's ready predictor pods scraped by Prometheus at their IPs, with the labels a
    pod discovery job with ``labelmap`` attaches (``namespace``, the pod label ``app``), as a
    cluster's scrape configuration does (docs/kserve.md, Analysis)."""

    def __init__(self, api: client.ApiClient, namespace: str, prometheus: PrometheusAPI) -> None:
        self.api, self.namespace, self.prometheus = api, namespace, prometheus
        self.jobs: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        core = client.CoreV1Api(self.api)
        while not self._stop.wait(0.5):
            pods = core.list_namespaced_pod(self.namespace, label_selector="component=predictor")
            ready = {
                f"{self.namespace}-{p.metadata.name}": p
                for p in pods.items
                if p.status.pod_ip
                and not p.metadata.deletion_timestamp
                and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            }
            for job, pod in ready.items():
                if job not in self.jobs:
                    labels = {"namespace": self.namespace, "app": pod.metadata.labels["app"]}
                    self.prometheus.add_target(job, f"{pod.status.pod_ip}:8080", labels)
                    self.jobs.add(job)
            for job in self.jobs - set(ready):
                self.prometheus.remove_target(job)
                self.jobs.discard(job)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for job in self.jobs:
            self.prometheus.remove_target(job)


class GatewayTraffic:
    """Requests to the InferenceService's host through the Gateway, ``rate`` a second, bounded
    in time; their status codes counted."""

    def __init__(self, url: str, host: str, rate: float = 8.0, limit: float = 400.0) -> None:
        self.url, self.host, self.rate, self.limit = url, host, rate, limit
        self.codes: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        deadline = time.monotonic() + self.limit
        with httpx.Client(timeout=10, headers={"Host": self.host}) as http:
            sent = 0
            while not self._stop.wait(1 / self.rate) and time.monotonic() < deadline:
                sent += 1
                try:
                    response = http.post(
                        f"{self.url}/v2/models/{ISVC}/infer", json=digits_request(sent)
                    )
                    self.codes[response.status_code] += 1
                except httpx.HTTPError:
                    self.codes[0] += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def predictions(api: client.ApiClient, namespace: str, service: str) -> float:
    """The predictions a predictor has made, from its own /metrics (through its Service)."""
    text = proxied(api, namespace, service, "GET", "/metrics").data.decode()
    return metric_value(text, "request_predict_seconds_count") or 0.0


#: A step of half the traffic, then all of it; an analysis every 20 s on the real pods' metrics.
ROLLOUT = {
    "steps": [50, 100],
    "interval": "20s",
    "minSamples": 5,
    "failureThreshold": 1,
    "progressDeadline": "180s",
    "metrics": [{"name": "success-rate", "min": 0.95}],
}


def test_predictors_run_on_the_real_node_and_a_canary_splits_real_traffic(
    cluster: Cluster,
    api: client.ApiClient,
    pipelines: Pipelines,
    operator: Callable[..., OperatorProcess],
    gateway: Traefik,
    prometheus: PrometheusAPI,
    minio: MinIO,
    minio_for_pods: str,
    real_node_runtime: str,
    digits_file: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    namespace = pipelines.namespace
    operator(namespace, env={"MLCD_KSERVE_RUNTIME": real_node_runtime})
    body = kserve_pipeline(namespace, digits_file, minio, ROLLOUT)
    body["spec"]["artifacts"]["endpoint"] = minio_for_pods
    pipelines.create(body)
    kubectl_wait_ready(cluster, namespace, 300)

    # KServe's predictor pod ran on the real node: the initializer downloaded the version with
    # the injected credentials (by reference, never a value), the runtime serves it.
    [pod] = predictor_pods(api, namespace, "mnist-v1-predictor")
    assert pod.spec.node_name == "real-node"
    [init] = pod.spec.init_containers
    assert init.args == [f"s3://{minio.bucket}/{namespace}/mnist/1/", "/mnt/models"]
    env = {e.name: e for e in init.env}
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "mlcd-digits-s3"
    assert env["AWS_SECRET_ACCESS_KEY"].value is None
    assert env["AWS_ENDPOINT_URL"].value == minio_for_pods
    assert pod.status.init_container_statuses[0].state.terminated.exit_code == 0
    log = client.CoreV1Api(api).read_namespaced_pod_log(
        pod.metadata.name, namespace, container="storage-initializer"
    )
    assert "metadata.json" in log and "model.onnx" in log

    # V2 through the predictor's Service (the API server's service proxy: the host never
    # sends traffic to a ClusterIP).
    ready = proxied(api, namespace, "mnist-v1-predictor", "GET", f"/v2/models/{ISVC}/ready")
    assert ready.status == 200, ready.data
    request = digits_request(seed=5)
    answered = proxied(
        api, namespace, "mnist-v1-predictor", "POST", f"/v2/models/{ISVC}/infer", request
    )
    assert answered.status == 200, answered.data
    [output] = json.loads(answered.data)["outputs"]
    assert output["name"] == "logits" and output["shape"] == [1, 10]
    # The very model the repository holds answers the same.
    import onnxruntime

    local = tmp_path / "model.onnx"
    minio.client().fget_object(minio.bucket, f"{namespace}/mnist/1/model.onnx", str(local))
    session = onnxruntime.InferenceSession(str(local))
    pixels = np.asarray(request["inputs"][0]["data"], dtype=np.float32).reshape(1, 1, 28, 28)
    expected = session.run(None, {"input": pixels})[0]
    np.testing.assert_allclose(np.asarray(output["data"]).reshape(1, 10), expected, rtol=1e-5)

    # Clients use the InferenceService's URL: the Gateway routes its host by mlcd's HTTPRoute.
    status = pipelines.status("digits")
    isvc = get_isvc(api, namespace, ISVC)
    assert isvc is not None and status["serving"]["url"] == isvc["status"]["url"]
    host = status["serving"]["url"].split("://", 1)[1]
    targets = PodTargets(api, namespace, prometheus)
    traffic = GatewayTraffic(gateway.url, host)
    try:
        wait_for("answers through the Gateway", lambda: traffic.codes[200] >= 5, timeout=60)

        # A second model rolls out: its predictor runs on the real node too, and at the 50 %
        # step the Gateway splits the requests between the two pods.
        pipelines.patch("digits", {"metadata": {"annotations": {"mlcd.io/trigger": "2"}}})
        wait_for(
            "the rollout at 50 %",
            lambda: (pipelines.status("digits").get("rollout") or {}).get("step") == 1,
            timeout=300,
        )
        [candidate] = predictor_pods(api, namespace, "mnist-v2-predictor")
        assert candidate.spec.node_name == "real-node"
        services = ("mnist-v1-predictor", "mnist-v2-predictor")
        # From the first request Traefik sends to the candidate (it applies a changed route
        # after a moment), the requests of 8 s.
        wait_for(
            "the Gateway to send to the candidate",
            lambda: predictions(api, namespace, "mnist-v2-predictor") > 0,
            timeout=30,
        )
        before = {s: predictions(api, namespace, s) for s in services}
        time.sleep(8)
        after = {s: predictions(api, namespace, s) for s in services}
        assert (pipelines.status("digits").get("rollout") or {}).get("step") == 1
        made = {s: after[s] - before[s] for s in services}
        share = made["mnist-v2-predictor"] / sum(made.values())
        assert sum(made.values()) >= 20 and 0.3 <= share <= 0.7, made
        print(f"predictions in 8 s at the 50 % step: {made}")

        # Prometheus judged the candidate on its pod's own metrics: promoted.
        [run] = pipelines.wait_runs("digits", 2, timeout=300)[1:]
        assert run["result"] == "promoted", run
        rollout = pipelines.status("digits")["rollout"]
        assert rollout["phase"] == "Promoted"
        rates = [
            r["value"]
            for step in rollout["steps"]
            for analysis in step["analyses"]
            for r in analysis["results"]
            if r["metric"] == "success-rate"
        ]
        assert rates and all(rate >= 0.95 for rate in rates), rollout["steps"]
        wait_for(
            "the old pod gone",
            lambda: not predictor_pods(api, namespace, "mnist-v1-predictor"),
            timeout=60,
        )
        served = traffic.codes[200]
        wait_for("answers from the new version", lambda: traffic.codes[200] >= served + 5, 60)
    finally:
        traffic.stop()
        targets.stop()
    answered_ok = traffic.codes[200] / sum(traffic.codes.values())
    print(f"status codes through the Gateway: {dict(traffic.codes)}")
    assert answered_ok >= 0.95, traffic.codes
    with contextlib.suppress(client.ApiException):
        pipelines.delete("digits")
