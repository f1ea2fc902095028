"""etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok as stack components."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from testenv.binaries import binary
from testenv.component import Component, http_ok, tls_context
from testenv.pki import CertificateAuthority, KeyPair, signing_key
from testenv.proc import free_port

SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
NODE_NAME = "kwok-node-0"
# kwok manages only the nodes carrying this annotation (kwok's own convention).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

# The controllers the operator's tests rely on (names as kube-controller-manager --help lists).
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "resourcequota-controller",
    "disruption-controller",
)


def write_kubeconfig(path: Path, server: str, ca: Path, client: KeyPair, user: str) -> Path:
    """A kubeconfig with one cluster, one client-certificate user and a current context."""

    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testenv",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": user}}],
        "current-context": "testenv",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


class Etcd(Component):
    name = "etcd"
    start_timeout = 30.0

    def start(self) -> None:
        self.port = free_port()
        peer = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spawn(
            [
                str(binary("etcd")),
                "--name=testenv",
                f"--data-dir={self.dir / 'data'}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=testenv=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]
        )

    def probe(self) -> bool:
        return http_ok(f"{self.url}/health")

    def state(self) -> dict[str, Any]:
        return {"url": self.url}


class KubeAPIServer(Component):
    """kube-apiserver with serving certs, client-cert auth, RBAC and service-account tokens."""

    name = "kube-apiserver"
    requires = ("etcd",)
    start_timeout = 60.0

    def start(self) -> None:
        pki_dir = self.dir / "pki"
        ca = CertificateAuthority(pki_dir)
        self.authority = ca  # issues the identities of components that start later
        self.ca = ca.cert
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            hosts=(
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server=True,
        )
        self.sa_key = signing_key(pki_dir)
        # The aggregation layer's CA and client: extension API servers trust these headers.
        front_proxy_ca = CertificateAuthority(pki_dir / "front-proxy", "front-proxy-ca")
        front_proxy = front_proxy_ca.issue("front-proxy-client", "front-proxy-client", client=True)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        # One client identity per user of the API: the admin and each control-plane component.
        self.admin = ca.issue("admin", "admin", ("system:masters",), client=True)
        self.kubeconfig = write_kubeconfig(
            self.stack.root / "kubeconfig", self.url, ca.cert, self.admin, "admin"
        )
        identities = {
            "kube-controller-manager": ("system:kube-controller-manager", ()),
            "kube-scheduler": ("system:kube-scheduler", ()),
            # kwok plays every kubelet; it gets admin rights like kwok's own clusters do.
            "kwok": ("kwok-controller", ("system:masters",)),
        }
        self.kubeconfigs: dict[str, Path] = {}
        for user, (common_name, groups) in identities.items():
            pair = ca.issue(user, common_name, groups, client=True)
            self.kubeconfigs[user] = write_kubeconfig(
                self.dir / f"{user}.kubeconfig", self.url, ca.cert, pair, common_name
            )
        # The API server's identity towards kubelets (logs, exec, port-forward).
        kubelet_client = ca.issue(
            "kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",), client=True
        )
        etcd = self.stack.component("etcd")
        assert isinstance(etcd, Etcd)
        self.spawn(
            [
                str(binary("kube-apiserver")),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.dir / 'certs'}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert}",
                f"--etcd-servers={etcd.url}",
                # Node: a kubelet may read what its own pods need, as in any real cluster.
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={self.sa_key.cert}",
                f"--service-account-signing-key-file={self.sa_key.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                f"--requestheader-client-ca-file={front_proxy_ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={front_proxy.cert}",
                f"--proxy-client-key-file={front_proxy.key}",
                # No kubelets serve the "kubernetes" Service; loopback is no valid endpoint.
                "--endpoint-reconciler-type=none",
                # A real node's kubelet listens on its InternalIP; its name resolves nowhere.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--profiling=false",
            ]
        )
        self._context = tls_context(ca.cert, self.admin.cert, self.admin.key)

    def probe(self) -> bool:
        return http_ok(f"{self.url}/readyz", self._context)

    def exports(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def state(self) -> dict[str, Any]:
        return {"url": self.url, "kubeconfig": str(self.kubeconfig), "ca": str(self.ca)}


class _ControlPlaneComponent(Component):
    """A component that talks to the API server with its own kubeconfig and serves /healthz."""

    requires = ("kube-apiserver",)

    def apiserver(self) -> KubeAPIServer:
        component = self.stack.component("kube-apiserver")
        assert isinstance(component, KubeAPIServer)
        return component

    def common_flags(self) -> list[str]:
        self.port = free_port()
        kubeconfig = self.apiserver().kubeconfigs[self.name]
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.dir / 'certs'}",
            "--leader-elect=false",
        ]

    def probe(self) -> bool:
        return http_ok(f"https://127.0.0.1:{self.port}/healthz", tls_context(None))


class KubeControllerManager(_ControlPlaneComponent):
    name = "kube-controller-manager"
    start_timeout = 60.0

    def start(self) -> None:
        apiserver = self.apiserver()
        self.spawn(
            [
                str(binary("kube-controller-manager")),
                *self.common_flags(),
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={apiserver.sa_key.key}",
                f"--root-ca-file={apiserver.ca}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--controllers={','.join(CONTROLLERS)}",
                # Quick reaction to a simulated node that stops (or starts) heart-beating.
                "--node-monitor-period=1s",
                "--node-monitor-grace-period=20s",
            ]
        )

    def after_ready(self) -> None:
        # The service-account controller creating "default" proves the controllers run.
        from testenv.cluster import Cluster

        Cluster(self.apiserver()).wait_service_account("default", "default", timeout=30)


class KubeScheduler(_ControlPlaneComponent):
    name = "kube-scheduler"
    start_timeout = 30.0

    def start(self) -> None:
        self.spawn([str(binary("kube-scheduler")), *self.common_flags()])


class Kwok(Component):
    """kwok playing the kubelet of one simulated node, with the stages hack/bootstrap assembled."""

    name = "kwok"
    requires = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
    start_timeout = 90.0

    def start(self) -> None:
        apiserver = self.stack.component("kube-apiserver")
        assert isinstance(apiserver, KubeAPIServer)
        self.apiserver = apiserver
        self.port = free_port()
        self.spawn(
            [
                str(binary("kwok")),
                f"--kubeconfig={apiserver.kubeconfigs['kwok']}",
                f"--config={binary('kwok-stages')}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.0.1",
                f"--server-address=127.0.0.1:{self.port}",
            ]
        )

    def probe(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.port}/healthz")

    def after_ready(self) -> None:
        from testenv.cluster import Cluster

        cluster = Cluster(self.apiserver)
        cluster.create_node(NODE_NAME, {KWOK_NODE_ANNOTATION: "fake"})
        deadline = time.monotonic() + 60
        while not cluster.node_schedulable(NODE_NAME):
            self.check_alive()
            if time.monotonic() > deadline:
                raise self.error(f"node {NODE_NAME} did not become Ready and untainted in 60 s")
            time.sleep(0.2)

    def state(self) -> dict[str, Any]:
        return {"node": NODE_NAME}
