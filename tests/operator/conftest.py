"""The operator against the real API server, run as its own ServiceAccount (deploy/: the
cluster-wide overlay with the peering component)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from helpers import wait_for
from testenv.cluster import Cluster
from testenv.manifests import kustomize
from testenv.proc import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "mlcd.io", "v1alpha1", "modelpipelines"
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


@pytest.fixture(scope="session")
def mlcd_cluster(apiserver: Cluster) -> Cluster:
    """The CRD, the operator's namespace, ServiceAccount, RBAC and peering objects."""
    apiserver.install_crds(ROOT / "crds")
    apiserver.install_crds(ROOT / "deploy" / "crds")
    overlay = ROOT / "deploy" / "overlays" / "cluster-wide"
    manifests = kustomize(overlay, [ROOT / "deploy" / "components" / "peering"])
    wanted = [m for m in manifests if m["kind"] in INSTALLED_KINDS]
    apiserver.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(wanted))
    apiserver.wait_service_account("mlcd-system", "mlcd-operator")
    return apiserver


@pytest.fixture(scope="session")
def operator_kubeconfig(
    mlcd_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """A kubeconfig holding the operator ServiceAccount's token, nothing more."""
    token = mlcd_cluster.kubectl(
        "create", "token", "mlcd-operator", "-n", "mlcd-system", "--duration=4h"
    ).stdout.strip()
    admin = yaml.safe_load(pathlib.Path(mlcd_cluster.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "mlcd-operator", "user": {"token": token}}],
        "contexts": [
            {"name": "mlcd", "context": {"cluster": cluster["name"], "user": "mlcd-operator"}}
        ],
        "current-context": "mlcd",
    }
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


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
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT
        )
        wait_for("the operator's metrics endpoint", self._metrics_up, timeout=60)
        return self

    def _metrics_up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.tail()}")
        import httpx

        try:
            return (
                httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        import httpx

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


@pytest.fixture
def start_operator(
    operator_kubeconfig: pathlib.Path, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OperatorProcess]]:
    """Starts operators for one test; all stopped (and their model servers) afterwards."""
    started: list[OperatorProcess] = []

    def start(
        *args: str, state: pathlib.Path | None = None, env: dict[str, str] | None = None
    ) -> OperatorProcess:
        index = len(started)
        process = OperatorProcess(
            operator_kubeconfig,
            state or tmp_path / "state",
            tmp_path / f"operator-{index}.log",
            *args,
            env=env,
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
    failed = getattr(request.node, "rep_call", None)
    from mlcd.engines.local import LocalEngine
    from mlcd.metrics.embedded import EmbeddedPrometheus
    from mlcd.serving.local import LocalServing
    from mlcd.serving.router.haproxy import LocalRouter

    for process in started:
        # Runs, servers and routers outlive their operator by design; a test's do not outlive
        # the test.
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


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


@pytest.fixture
def pipelines(mlcd_cluster: Cluster) -> Iterator[Pipelines]:
    namespace = mlcd_cluster.create_namespace(prefix="mp-")
    yield Pipelines(mlcd_cluster, namespace)
    mlcd_cluster.delete_namespace(namespace)


@pytest.fixture
def other_tenant(mlcd_cluster: Cluster) -> Iterator[Pipelines]:
    """ModelPipelines in a second namespace, for tests of two tenants."""
    namespace = mlcd_cluster.create_namespace(prefix="mp-")
    yield Pipelines(mlcd_cluster, namespace)
    mlcd_cluster.delete_namespace(namespace)


@pytest.fixture(scope="session")
def digits_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from mnist_trainer.dataset import write

    path = tmp_path_factory.mktemp("data") / "digits.npz"
    write(path)
    return path
