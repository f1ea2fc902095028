"""Helpers over a running API server: clients, CRDs, namespaces, impersonation, kubectl."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from testenv.binaries import binary

if TYPE_CHECKING:
    from testenv.kube import KubeAPIServer


class Cluster:
    """The admin's view of the test cluster, plus helpers tests need again and again."""

    def __init__(self, apiserver: KubeAPIServer | Path) -> None:
        self.kubeconfig = apiserver if isinstance(apiserver, Path) else apiserver.kubeconfig

    # -- clients ---------------------------------------------------------------------------------
    def api_client(self) -> client.ApiClient:
        """A new admin client (system:masters through a client certificate)."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def impersonate(self, namespace: str, service_account: str) -> client.ApiClient:
        """A client acting as ServiceAccount ``namespace/service_account``.

        The API server adds the service-account groups itself when only the user is given.
        """
        api = self.api_client()
        api.set_default_header(
            "Impersonate-User", f"system:serviceaccount:{namespace}:{service_account}"
        )
        return api

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the project's kubectl against this cluster."""
        argv = [str(binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def helm(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the project's helm against this cluster (its caches next to the kubeconfig)."""
        home = self.kubeconfig.parent / "helm"
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        argv = [str(binary("helm")), *args]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    # -- namespaces and service accounts ---------------------------------------------------------
    def create_namespace(self, name: str | None = None, prefix: str = "test-") -> str:
        """Create a namespace (a unique name by default) and wait for its default ServiceAccount.

        Pods need that ServiceAccount before the admission plugin lets them in.
        """
        name = name or f"{prefix}{uuid.uuid4().hex[:8]}"
        with self.api_client() as api:
            client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
        self.wait_service_account(name, "default")
        return name

    def delete_namespace(self, name: str) -> None:
        with self.api_client() as api:
            try:
                client.CoreV1Api(api).delete_namespace(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def wait_service_account(self, namespace: str, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            while True:
                try:
                    core.read_namespaced_service_account(name, namespace)
                    return
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"ServiceAccount {namespace}/{name} missing after {timeout}s"
                    )
                time.sleep(0.1)

    def token_kubeconfig(
        self, namespace: str, service_account: str, path: Path, duration: str = "4h"
    ) -> Path:
        """A kubeconfig at ``path`` holding a token of ServiceAccount
        ``namespace/service_account`` and nothing more: a process run with it has exactly that
        account's permissions."""
        self.wait_service_account(namespace, service_account)
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        admin = yaml.safe_load(Path(self.kubeconfig).read_text())
        cluster = admin["clusters"][0]
        user = f"{namespace}-{service_account}"
        config_ = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": cluster["name"], "user": user}}],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config_))
        return path

    # -- CRDs ------------------------------------------------------------------------------------
    def install_crds(self, folder: Path, timeout: float = 30) -> list[str]:
        """Create (or replace) every CRD in ``folder``'s YAML files; wait until Established."""
        documents: list[dict[str, Any]] = []
        for path in sorted(folder.glob("*.y*ml")):
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
        crds = [d for d in documents if d.get("kind") == "CustomResourceDefinition"]
        if not crds:
            raise ValueError(f"no CustomResourceDefinition in {folder}")
        with self.api_client() as api:
            extensions = client.ApiextensionsV1Api(api)
            for crd in crds:
                name = crd["metadata"]["name"]
                try:
                    extensions.create_custom_resource_definition(crd)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    current = extensions.read_custom_resource_definition(name)
                    crd["metadata"]["resourceVersion"] = current.metadata.resource_version
                    extensions.replace_custom_resource_definition(name, crd)
            names = [crd["metadata"]["name"] for crd in crds]
            for name in names:
                self._wait_established(extensions, name, timeout)
        return names

    @staticmethod
    def _wait_established(extensions: client.ApiextensionsV1Api, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            crd = extensions.read_custom_resource_definition(name)
            conditions = (crd.status and crd.status.conditions) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout}s: {conditions}")
            time.sleep(0.1)

    # -- nodes -----------------------------------------------------------------------------------
    def create_node(self, name: str, annotations: dict[str, str]) -> None:
        body = {
            "metadata": {
                "name": name,
                "annotations": annotations,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "type": "kwok",
                },
            }
        }
        with self.api_client() as api:
            try:
                client.CoreV1Api(api).create_node(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise

    def node_schedulable(self, name: str) -> bool:
        """Ready, and the node-lifecycle controller has lifted the not-ready taints."""
        with self.api_client() as api:
            node = client.CoreV1Api(api).read_node(name)
        conditions = (node.status and node.status.conditions) or []
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        taints = node.spec.taints or []
        blocking = [t for t in taints if t.effect in ("NoSchedule", "NoExecute")]
        return ready and not blocking
