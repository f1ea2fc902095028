"""The real node: kubelet, containerd with runc and the CNI plugins, kube-proxy and CoreDNS.

Everything runs inside the node's own PID, mount and network namespaces (``testenv.nodens``),
so pods really execute while the host keeps its iptables rules, its sysctls and its mounts, and
several sessions on one machine each have a node of their own. The node reaches the API server
through a forwarder on 127.0.0.1 inside its namespace; the host reaches the node (the API
server for logs and exec, tests for pod IPs) through a veth pair and a route to the pod subnet.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testenv.binaries import binary
from testenv.component import Component, http_ok
from testenv.images import PAUSE_IMAGE, Image, base_images, write_tarball
from testenv.kube import KubeAPIServer, write_kubeconfig
from testenv.nodens import Sandbox

NODENS = Path(__file__).with_name("nodens.py")
REAL_NODE_NAME = "real-node"
# The real node carries this label, and a NoSchedule taint of the same key: only pods that ask
# for it land there (kwok's simulated node takes the others).
REAL_NODE_KEY = "mlcd.io/real-node"
CLUSTER_DOMAIN = "cluster.local"
DNS_SERVICE_IP = "10.96.0.10"
# Ports inside the node's network namespace, on the node's IP (reachable from the host).
KUBELET_PORT = 10250
KUBELET_ROOT = "/var/lib/kubelet"  # inside the node (its /var/lib is a private tmpfs)
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"  # inside the node
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
COREDNS_READY_PORT = 8181
COREDNS_HEALTH_PORT = 8080


class NodeSandbox(Component):
    """The node's namespaces, cgroup root, veth and API server forwarder (``nodens.py``)."""

    name = "node-sandbox"
    requires = ("kube-apiserver",)
    start_timeout = 30.0

    def start(self) -> None:
        apiserver = self.stack.component("kube-apiserver")
        assert isinstance(apiserver, KubeAPIServer)
        self.file = self.dir / "sandbox.json"
        self.file.unlink(missing_ok=True)
        # SIGTERM when pytest dies: the supervisor then removes what it made on the host.
        self.spawn(
            [
                sys.executable,
                str(NODENS),
                "supervise",
                f"--dir={self.dir}",
                f"--api-port={apiserver.port}",
            ],
            death_signal="TERM",
        )

    def probe(self) -> bool:
        return self.file.exists()

    def after_ready(self) -> None:
        self.sandbox = Sandbox.load(self.file)

    def exports(self) -> dict[str, str]:
        addresses = self.sandbox.addresses
        return {"REAL_NODE_IP": addresses.node_ip, "REAL_NODE_POD_SUBNET": addresses.pod_subnet}

    def state(self) -> dict[str, Any]:
        if not self.file.exists():
            return {}
        sandbox = Sandbox.load(self.file)
        return {"slot": sandbox.addresses.slot, "node_ip": sandbox.addresses.node_ip}


class _InNode(Component):
    """A component whose processes run inside the node's namespaces."""

    def sandbox(self) -> Sandbox:
        component = self.stack.component("node-sandbox")
        assert isinstance(component, NodeSandbox)
        return component.sandbox

    def apiserver(self) -> KubeAPIServer:
        component = self.stack.component("kube-apiserver")
        assert isinstance(component, KubeAPIServer)
        return component

    def prepare(self) -> Sandbox:
        """The sandbox, with the node's IP noted and this component's directory made."""
        sandbox = self.sandbox()
        self.node_ip = sandbox.addresses.node_ip
        self.dir.mkdir(parents=True, exist_ok=True)
        return sandbox

    def enter(self) -> list[str]:
        return ["nsenter", f"--target={self.sandbox().init_pid}", "--pid", "--net", "--mount"]

    def spawn_inside(self, argv: list[str]) -> None:
        self.spawn([*self.enter(), "--", *argv])

    def run_inside(self, *argv: str) -> None:
        result = subprocess.run(
            [*self.enter(), "--", *argv], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise self.error(f"{' '.join(argv)} in the node: {result.stderr.strip()}")

    def kubeconfig(self, user: str, common_name: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for ``common_name``; 127.0.0.1:port inside the node is the forwarder."""
        apiserver = self.apiserver()
        pair = apiserver.authority.issue(user, common_name, groups, client=True)
        return write_kubeconfig(
            self.dir / f"{user}.kubeconfig", apiserver.url, apiserver.ca, pair, common_name
        )


class Containerd(_InNode):
    """containerd (Debian's) with runc and the CNI bridge; imports the base images."""

    name = "containerd"
    requires = ("node-sandbox",)
    start_timeout = 30.0

    def start(self) -> None:
        sandbox = self.sandbox()
        self.dir.mkdir(parents=True, exist_ok=True)
        # A unix socket's path holds at most 107 bytes: the socket is in the node's own /run,
        # and the host reaches it through the init's root.
        self.socket = Path(f"/proc/{sandbox.init_pid}/root{CONTAINERD_SOCKET}")
        cni_conf = self.dir / "net.d"
        cni_conf.mkdir(exist_ok=True)
        addresses = sandbox.addresses
        (cni_conf / "10-mlcd.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "mlcd-node",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [
                                    [{"subnet": addresses.pod_subnet, "gateway": addresses.gateway}]
                                ],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )
        config = self.dir / "config.toml"
        config.write_text(
            CONTAINERD_CONFIG.format(
                dir=self.dir,
                socket=CONTAINERD_SOCKET,
                runc=binary("runc"),
                cni_bin=binary("cni-plugins"),
                cni_conf=cni_conf,
                pause=PAUSE_IMAGE,
            )
        )
        self.spawn_inside([str(binary("containerd")), f"--config={config}"])

    def probe(self) -> bool:
        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def after_ready(self) -> None:
        self.import_images(base_images())

    def exports(self) -> dict[str, str]:
        # What ctr reads: `ctr images list` talks to the node's containerd.
        return {"CONTAINERD_ADDRESS": str(self.socket), "CONTAINERD_NAMESPACE": "k8s.io"}

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [str(binary("ctr")), f"--address={self.socket}", "--namespace=k8s.io", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def import_images(self, images: list[Image]) -> None:
        tarball = write_tarball(self.dir / "images" / f"{time.monotonic_ns()}.tar", images)
        self.import_tarball(tarball)
        tarball.unlink()

    def import_tarball(self, tarball: Path) -> None:
        self.ctr("images", "import", str(tarball))


CONTAINERD_CONFIG = """\
version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "warn"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # root lacks CAP_SYS_RESOURCE here: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


class Kubelet(_InNode):
    """The kubelet of node ``real-node``: cgroupfs under the slot's cgroup root, x509 + webhook
    authentication, its own root and log directories."""

    name = "kubelet"
    requires = ("kube-apiserver", "node-sandbox", "containerd")
    start_timeout = 60.0

    def start(self) -> None:
        sandbox = self.prepare()
        apiserver = self.apiserver()
        serving = apiserver.authority.issue(
            "kubelet-serving", REAL_NODE_NAME, hosts=(REAL_NODE_NAME, self.node_ip), server=True
        )
        kubeconfig = self.kubeconfig("kubelet", f"system:node:{REAL_NODE_NAME}", ("system:nodes",))
        endpoint = f"unix://{CONTAINERD_SOCKET}"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": self.node_ip,
            "healthzPort": KUBELET_HEALTHZ_PORT,
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(apiserver.ca)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": endpoint,
            "imageServiceEndpoint": endpoint,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": sandbox.cgroup_root,
            "failCgroupV1": False,
            "failSwapOn": False,
            # The node's namespace shows the kernel tunables the kubelet wants (nodens.py).
            "protectKernelDefaults": True,
            "makeIPTablesUtilChains": False,
            "podLogsDir": str(self.dir / "pods"),
            "clusterDNS": [DNS_SERVICE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "",
            "registerWithTaints": [{"key": REAL_NODE_KEY, "value": "true", "effect": "NoSchedule"}],
            # A shared test machine: evict only when really short, never collect our images.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "kubeAPIQPS": 50,
            "kubeAPIBurst": 100,
            "rotateCertificates": False,
        }
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        # The kubelet's unix sockets live under its root, and a socket path has at most 107
        # bytes: inside the node its root is /var/lib/kubelet, a bind mount of ours.
        root = self.dir / "root"
        root.mkdir(exist_ok=True)
        self.run_inside("mkdir", "-p", KUBELET_ROOT)
        self.run_inside("mount", "--bind", str(root), KUBELET_ROOT)
        self.spawn_inside(
            [
                str(binary("kubelet")),
                f"--config={path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={KUBELET_ROOT}",
                f"--cert-dir={self.dir / 'pki'}",
                f"--hostname-override={REAL_NODE_NAME}",
                f"--node-ip={self.node_ip}",
                f"--node-labels={REAL_NODE_KEY}=true",
            ]
        )

    def probe(self) -> bool:
        return http_ok(f"http://{self.node_ip}:{KUBELET_HEALTHZ_PORT}/healthz")

    def exports(self) -> dict[str, str]:
        return {"REAL_NODE": REAL_NODE_NAME}

    def after_ready(self) -> None:
        from testenv.cluster import Cluster

        cluster = Cluster(self.apiserver())
        deadline = time.monotonic() + 60
        while not node_ready(cluster, REAL_NODE_NAME):
            self.check_alive()
            if time.monotonic() > deadline:
                raise self.error(f"node {REAL_NODE_NAME} not Ready after 60 s")
            time.sleep(0.1)


def node_ready(cluster: Any, name: str) -> bool:
    """Ready, and the node-lifecycle controller has lifted its not-ready taints."""
    with cluster.api_client() as api:
        try:
            node = client.CoreV1Api(api).read_node(name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
    conditions = (node.status and node.status.conditions) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    lifecycle = [t for t in node.spec.taints or [] if t.key.startswith("node.kubernetes.io/")]
    return ready and not lifecycle


class KubeProxy(_InNode):
    """kube-proxy in iptables mode: Service ClusterIPs inside the node's network namespace."""

    name = "kube-proxy"
    requires = ("kube-apiserver", "node-sandbox")
    start_timeout = 60.0

    def start(self) -> None:
        sandbox = self.prepare()
        # system:kube-proxy is bound to system:node-proxier by the API server's default RBAC.
        kubeconfig = self.kubeconfig("kube-proxy", "system:kube-proxy")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": REAL_NODE_NAME,
            "healthzBindAddress": f"{self.node_ip}:{KUBE_PROXY_HEALTHZ_PORT}",
            "metricsBindAddress": "127.0.0.1:10249",
            "clusterCIDR": sandbox.addresses.pod_subnet,
            "detectLocalMode": "ClusterCIDR",
            "nodePortAddresses": ["primary"],
            # Leave the conntrack sysctls alone (nf_conntrack_max is the host's, read-only here).
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "oomScoreAdj": 0,
        }
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        self.spawn_inside([str(binary("kube-proxy")), f"--config={path}"])

    def probe(self) -> bool:
        # 200 once the node is known and the rules are synced.
        return http_ok(f"http://{self.node_ip}:{KUBE_PROXY_HEALTHZ_PORT}/healthz")


COREDNS_RULES = [
    {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"]},
]


class CoreDNS(_InNode):
    """CoreDNS for cluster.local on the node's IP, behind the kube-dns Service (10.96.0.10)."""

    name = "coredns"
    requires = ("kube-apiserver", "node-sandbox")
    start_timeout = 60.0

    def start(self) -> None:
        from testenv.cluster import Cluster

        self.prepare()
        user = "system:coredns"
        with Cluster(self.apiserver()).api_client() as api:
            rbac = client.RbacAuthorizationV1Api(api)
            role = {
                "metadata": {"name": user},
                "rules": [{**r, "verbs": ["list", "watch"]} for r in COREDNS_RULES],
            }
            group = "rbac.authorization.k8s.io"
            binding = {
                "metadata": {"name": user},
                "roleRef": {"apiGroup": group, "kind": "ClusterRole", "name": user},
                "subjects": [{"apiGroup": group, "kind": "User", "name": user}],
            }
            create_or_keep(lambda: rbac.create_cluster_role(role))
            create_or_keep(lambda: rbac.create_cluster_role_binding(binding))
        kubeconfig = self.kubeconfig("coredns", user)
        corefile = self.dir / "Corefile"
        corefile.write_text(
            COREFILE.format(
                domain=CLUSTER_DOMAIN,
                kubeconfig=kubeconfig,
                health=COREDNS_HEALTH_PORT,
                ready=COREDNS_READY_PORT,
            )
        )
        self.spawn_inside([str(binary("coredns")), "-conf", str(corefile)])

    def probe(self) -> bool:
        # The ready plugin answers 200 once the kubernetes plugin has synced its caches.
        return http_ok(f"http://{self.node_ip}:{COREDNS_READY_PORT}/ready")

    def after_ready(self) -> None:
        from testenv.cluster import Cluster

        ports = [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ]
        service = {
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": DNS_SERVICE_IP,
                "ports": [{**p, "targetPort": 53} for p in ports],
            },
        }
        # No selector: the endpoint is CoreDNS on the node's IP, not a pod.
        endpoints = {
            "metadata": {
                "name": "kube-dns-real-node",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "testenv.mlcd.io",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [self.node_ip],
                    "conditions": {"ready": True},
                    "nodeName": REAL_NODE_NAME,
                }
            ],
            "ports": ports,
        }
        with Cluster(self.apiserver()).api_client() as api:
            core = client.CoreV1Api(api)
            discovery = client.DiscoveryV1Api(api)
            create_or_keep(lambda: core.create_namespaced_service("kube-system", service))
            create_or_keep(
                lambda: discovery.create_namespaced_endpoint_slice("kube-system", endpoints)
            )


COREFILE = """\
.:53 {{
    errors
    health :{health}
    ready :{ready}
    kubernetes {domain} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} testenv
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""


def create_or_keep(create: Any) -> None:
    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise


class NodeMinIO(Component):
    """MinIO for the node's pods: a forwarder on the host end of the node's veth to MinIO on the
    host's loopback (pods on the pod network and hostNetwork pods both route there). The host
    reaches the same address, so one S3 endpoint serves what runs on the host and in pods."""

    name = "node-minio"
    requires = ("minio", "node-sandbox")
    start_timeout = 15.0

    def start(self) -> None:
        minio = self.minio
        sandbox = self.stack.component("node-sandbox")
        assert isinstance(sandbox, NodeSandbox)
        self.host = sandbox.sandbox.addresses.host_ip
        self.port_file = self.dir / "port"
        self.port_file.unlink(missing_ok=True)
        self.spawn(
            [
                sys.executable,
                str(NODENS),
                "forward",
                f"--listen={self.host}",
                f"--to={minio.port}",
                f"--port-file={self.port_file}",
            ]
        )

    @property
    def minio(self) -> Any:
        """The MinIO behind it: credentials, bucket, a client."""
        from testenv.minio import MinIO

        component = self.stack.component("minio")
        assert isinstance(component, MinIO)
        return component

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port_file.read_text().strip()}"

    def probe(self) -> bool:
        return self.port_file.exists() and http_ok(f"{self.endpoint}/minio/health/ready")

    def exports(self) -> dict[str, str]:
        return {"REAL_NODE_MINIO_ENDPOINT": self.endpoint}


# -- what a test gets ------------------------------------------------------------------------------
@dataclass
class RealNode:
    """The running real node, as the ``real_node`` fixture hands it to a test."""

    name: str
    ip: str
    pod_subnet: str
    dns_service_ip: str
    cluster_domain: str
    containerd: Containerd = field(repr=False)
    #: The host's end of the link to the node: a server of the test listening there is
    #: reachable from pods (the node's and the pods' own loopbacks are theirs).
    host_ip: str = ""

    @classmethod
    def of(cls, stack: Any) -> RealNode:
        sandbox = stack.component("node-sandbox")
        containerd = stack.component("containerd")
        assert isinstance(sandbox, NodeSandbox) and isinstance(containerd, Containerd)
        addresses = sandbox.sandbox.addresses
        return cls(
            REAL_NODE_NAME,
            addresses.node_ip,
            addresses.pod_subnet,
            DNS_SERVICE_IP,
            CLUSTER_DOMAIN,
            containerd,
            addresses.host_ip,
        )

    @property
    def placement(self) -> dict[str, Any]:
        """nodeSelector and toleration that put a pod on this node (and only there)."""
        return {
            "nodeSelector": {REAL_NODE_KEY: "true"},
            "tolerations": [{"key": REAL_NODE_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        }

    def pod_spec(self, **spec: Any) -> dict[str, Any]:
        """A pod spec for this node: placement, a short grace period (busybox as PID 1 ignores
        SIGTERM), then ``spec``."""
        return {**self.placement, "terminationGracePeriodSeconds": 1, **spec}

    def import_images(self, *images: Image) -> None:
        """Build ``images`` into one OCI tarball and import it (pods use imagePullPolicy Never
        or IfNotPresent: there is no registry)."""
        self.containerd.import_images(list(images))

    def import_tarball(self, tarball: Path) -> None:
        self.containerd.import_tarball(tarball)

    def images(self) -> list[str]:
        listed = self.containerd.ctr("images", "list", "--quiet").stdout
        return sorted(line for line in listed.splitlines() if line and "@" not in line)
