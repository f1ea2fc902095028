"""A Gateway API implementation as a stack component: Traefik (built from its Go module) with
its kubernetesGateway provider, serving KServe's Gateway ``kserve/kserve-ingress-gateway``.

Traefik runs on the host and watches the API server with the admin's kubeconfig; its entry
point listens on 127.0.0.1, and the Gateway's one HTTP listener has that port (Traefik binds a
listener to the entry point of the same port). Traefik sends each request to a pod IP of the
chosen backend Service (from its EndpointSlices), so with the real node the weights of an
HTTPRoute split real requests between real pods; the host reaches pod IPs through the node's
link.
"""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes import client

from testenv.binaries import binary
from testenv.cluster import Cluster
from testenv.component import Component, http_ok
from testenv.kube import KubeAPIServer
from testenv.proc import free_port

GATEWAY_NAMESPACE, GATEWAY = "kserve", "kserve-ingress-gateway"  # KServe's default Gateway
GATEWAY_CLASS = "traefik"
CONTROLLER = "traefik.io/gateway-controller"
#: Besides the Gateway API CRDs KServe's component installs: what Traefik's provider watches.
MORE_CRDS = ("grpcroutes", "backendtlspolicies")


class Traefik(Component):
    name = "traefik"
    requires = ("kube-apiserver", "kserve")
    start_timeout = 60.0

    def start(self) -> None:
        apiserver = self.stack.component("kube-apiserver")
        assert isinstance(apiserver, KubeAPIServer)
        self.cluster = Cluster(apiserver)
        crds = binary("kserve-config") / "gateway-api"
        files = [crds / f"gateway.networking.k8s.io_{n}.yaml" for n in MORE_CRDS]
        self.cluster.kubectl(
            "apply", "--server-side", *[a for f in files for a in ("-f", str(f))], timeout=120
        )
        with self.cluster.api_client() as api:
            extensions = client.ApiextensionsV1Api(api)
            for name in MORE_CRDS:
                Cluster._wait_established(extensions, f"{name}.gateway.networking.k8s.io", 60)
        self.port = free_port()
        self.ping_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spawn(
            [
                str(binary("traefik")),
                f"--entryPoints.web.address=127.0.0.1:{self.port}",
                f"--entryPoints.ping.address=127.0.0.1:{self.ping_port}",
                "--ping=true",
                "--ping.entryPoint=ping",
                "--providers.kubernetesGateway=true",
                "--log.level=INFO",
                "--global.checkNewVersion=false",
                "--global.sendAnonymousUsage=false",
            ],
            env={"KUBECONFIG": str(apiserver.kubeconfig)},
        )

    def probe(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.ping_port}/ping")

    def after_ready(self) -> None:
        self._apply(
            [
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "GatewayClass",
                    "metadata": {"name": GATEWAY_CLASS},
                    "spec": {"controllerName": CONTROLLER},
                },
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway",
                    "metadata": {"name": GATEWAY, "namespace": GATEWAY_NAMESPACE},
                    "spec": {
                        "gatewayClassName": GATEWAY_CLASS,
                        "listeners": [
                            {
                                "name": "http",
                                "protocol": "HTTP",
                                "port": self.port,
                                "allowedRoutes": {"namespaces": {"from": "All"}},
                            }
                        ],
                    },
                },
            ]
        )
        self._wait_programmed()

    def _apply(self, documents: list[dict[str, Any]]) -> None:
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": documents})
        self.cluster.kubectl("apply", "--server-side", "-f", "-", input=text)

    def _wait_programmed(self, timeout: float = 30) -> None:
        """Until Traefik has accepted the Gateway (its Programmed condition)."""
        deadline = time.monotonic() + timeout
        with self.cluster.api_client() as api:
            custom = client.CustomObjectsApi(api)
            while True:
                gateway = custom.get_namespaced_custom_object(
                    "gateway.networking.k8s.io", "v1", GATEWAY_NAMESPACE, "gateways", GATEWAY
                )
                conditions = {
                    c["type"]: c["status"]
                    for c in (gateway.get("status") or {}).get("conditions") or []
                }
                if conditions.get("Programmed") == "True":
                    return
                self.check_alive()
                if time.monotonic() > deadline:
                    status = gateway.get("status")
                    raise self.error(f"the Gateway was not programmed in {timeout:.0f} s: {status}")
                time.sleep(0.2)

    def exports(self) -> dict[str, str]:
        return {"GATEWAY_URL": self.url}

    def state(self) -> dict[str, Any]:
        return {"url": self.url, "gateway": f"{GATEWAY_NAMESPACE}/{GATEWAY}"}
