"""``mlcd operator`` as the tests run it: installed as deploy/ installs it (its CRDs, namespace,
ServiceAccount and RBAC, not its pod) and started in a process of its own with that account's
token, as it runs in its pod."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from helpers import wait_for
from mlcd.k8s.operator import FINALIZER
from testenv.cluster import Cluster
from testenv.manifests import kustomize
from testenv.proc import free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]

GROUP, VERSION, PLURAL = "mlcd.io", "v1alpha1", "modelpipelines"
NAMESPACE, ACCOUNT = "mlcd-system", "mlcd-operator"

#: Where kopf keeps the spec it last handled (its default diff-base storage): written in a
#: patch of its own once it has handled the object's creation.
DIFF_BASE = "kopf.zalando.org/last-handled-configuration"

# What of deploy/ the tests install: the operator's identity and permissions, not its pod.
INSTALLED_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ClusterKopfPeering",
}


def install_operator(cluster: Cluster, components: Sequence[str] = ()) -> None:
    """The CRDs, the operator's namespace, ServiceAccount, RBAC and peering objects (the
    cluster-wide overlay with the peering component and ``components`` of deploy/components,
    e.g. ``kserve``)."""
    cluster.install_crds(ROOT / "crds")
    cluster.install_crds(ROOT / "deploy" / "crds")
    overlay = ROOT / "deploy" / "overlays" / "cluster-wide"
    parts = [ROOT / "deploy" / "components" / name for name in ("peering", *components)]
    manifests = kustomize(overlay, parts)
    wanted = [m for m in manifests if m["kind"] in INSTALLED_KINDS]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(wanted))
    cluster.wait_service_account(NAMESPACE, ACCOUNT)


class OperatorProcess:
    """``mlcd operator`` in a process of its own, as it runs in its pod."""

    def __init__(
        self,
        kubeconfig: pathlib.Path,
        state: pathlib.Path,
        log: pathlib.Path,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.metrics_port = free_port()
        self.argv = [
            sys.executable,
            "-m",
            "mlcd.cli",
            "operator",
            "--tick=1",
            f"--state-dir={state}",
            f"--metrics-port={self.metrics_port}",
            *args,
        ]
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "MLCD_SERVING_PORT": "0",
            "MLCD_METRICS_ADDRESS": "127.0.0.1",
            **(env or {}),
        }
        self.state, self.log = state, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT
            )
        wait_for("the operator's metrics endpoint", self._metrics_up, timeout=60)
        return self

    def _metrics_up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.tail()}")
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Operators:
    """The operators one test starts: all stopped at the end, and what outlives an operator by
    design (local runs, model servers, routers, the embedded Prometheus) stopped too; their logs
    printed when the test failed."""

    def __init__(
        self, kubeconfig: pathlib.Path, folder: pathlib.Path, request: pytest.FixtureRequest
    ) -> None:
        self.kubeconfig, self.folder, self.request = kubeconfig, folder, request
        self.started: list[OperatorProcess] = []

    def start(
        self, *args: str, state: pathlib.Path | None = None, env: dict[str, str] | None = None
    ) -> OperatorProcess:
        process = OperatorProcess(
            self.kubeconfig,
            state or self.folder / "state",
            self.folder / f"operator-{len(self.started)}.log",
            *args,
            env=env,
        )
        self.started.append(process)
        return process.start()

    def __enter__(self) -> Operators:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.started:
            process.stop()
        failed = getattr(self.request.node, "rep_call", None)
        from mlcd.engines.local import LocalEngine
        from mlcd.metrics.embedded import EmbeddedPrometheus
        from mlcd.serving.local import LocalServing
        from mlcd.serving.router.haproxy import LocalRouter

        for process in self.started:
            LocalEngine(process.state).cancel_everything(grace=5.0)
            targets = process.env.get("MLCD_PROMETHEUS_TARGETS")
            router = LocalRouter(
                process.state,
                targets_dir=pathlib.Path(targets)
                if targets
                else EmbeddedPrometheus(process.state).targets_dir,
            )
            for key in router.pipelines():
                router.finalize(key)
            serving = LocalServing(process.state)
            for key in serving.pipelines():
                serving.stop(key)
            EmbeddedPrometheus(process.state).stop()
            if failed is not None and failed.failed:
                print(f"--- {process.log} ---\n{process.tail(200)}")


class Pipelines:
    """ModelPipelines in one namespace, through the admin's client."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.api = client.CustomObjectsApi(cluster.api_client())
        self.core = client.CoreV1Api(cluster.api_client())

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        body = json.loads(json.dumps(resource))
        body["metadata"]["namespace"] = self.namespace
        created: dict[str, Any] = self.api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return created

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def settled_version(self, name: str, timeout: float = 30) -> str:
        """The object's resourceVersion once the operator's first pass is wholly written.
        Besides the status the handler writes, kopf writes twice, each in a patch of its own
        that may land after the status: its finalizer, then the spec it handled (the diff
        base). From then on, a pass that changes nothing writes nothing."""

        def version() -> str | None:
            meta = self.get(name)["metadata"]
            settled = FINALIZER in meta.get("finalizers", []) and DIFF_BASE in (
                meta.get("annotations") or {}
            )
            return meta["resourceVersion"] if settled else None

        result: str = wait_for(f"{name} with kopf's finalizer and diff base", version, timeout)
        return result

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def events(self, name: str) -> list[Any]:
        return self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items

    def reasons(self, name: str) -> list[str]:
        return [e.reason for e in self.events(name)]

    def wait_condition(
        self, name: str, ctype: str, status: str = "True", timeout: float = 180
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            for condition in self.status(name).get("conditions", []):
                if condition["type"] == ctype and condition["status"] == status:
                    return condition
            return None

        result: dict[str, Any] = wait_for(f"{name} condition {ctype}={status}", check, timeout)
        return result

    def wait_runs(self, name: str, count: int, timeout: float = 180) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            status = self.status(name)
            runs = status.get("runs", [])
            return runs if len(runs) >= count and not status.get("activeRuns") else None

        result: list[dict[str, Any]] = wait_for(f"{count} finished runs of {name}", check, timeout)
        return result

    def remove(self, grace: float = 10.0) -> None:
        """Deletes every ModelPipeline of the namespace, then the namespace. An operator still
        running releases them (its cleanup runs); what is still held after ``grace`` seconds
        has its finalizers dropped. No pipeline outlives its test: an operator a later test
        starts watching every namespace would otherwise take it up."""
        import time

        def names() -> list[str]:
            listed = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
            return [item["metadata"]["name"] for item in listed.get("items", [])]

        for name in names():
            try:
                self.delete(name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        deadline = time.monotonic() + grace
        while names() and time.monotonic() < deadline:
            time.sleep(0.5)
        for name in names():
            try:
                self.patch(name, {"metadata": {"finalizers": None}})
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        self.cluster.delete_namespace(self.namespace)
