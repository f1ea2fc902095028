"""KServe's controller (built from its Go module, v0.20) as a stack component.

Installed as a stock install is, from the module's own manifests: the CRDs of
``config/crd/full`` (server-side apply: the InferenceService CRD is about 1 MB), the
``inferenceservice-config`` ConfigMap (RawDeployment by default, no Istio VirtualServices), the
webhook configurations of ``config/webhook`` and the stock ClusterServingRuntimes of
``config/runtimes``; besides them the project's own runtime (``deploy/kserve/``) and the
Gateway API CRDs of the version KServe builds against. The webhooks are registered by URL on
127.0.0.1 with a CA made for the run, so KServe's defaulting, validation and pod mutation run
for real.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from testenv.binaries import binary
from testenv.cluster import Cluster
from testenv.component import Component, http_ok
from testenv.kube import KubeAPIServer
from testenv.pki import CertificateAuthority
from testenv.proc import free_port

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "kserve"  # where KServe reads its ConfigMap ($POD_NAMESPACE)
CONFIGMAP = "inferenceservice-config"
PROJECT_RUNTIME = REPO / "deploy" / "kserve" / "clusterservingruntime.yaml"
# The Gateway API's standard CRDs mlcd's router and KServe's own Gateway API ingress use.
GATEWAY_API_CRDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants")


def inferenceservice_config(source: Path, deployment_mode: str = "RawDeployment") -> dict[str, Any]:
    """KServe's own ConfigMap with the test stack's choices: the default deployment mode, no
    Istio VirtualServices (no Istio here)."""
    configmap: dict[str, Any] = yaml.safe_load(source.read_text())
    data = configmap["data"]
    data.pop("_example", None)
    data["deploy"] = json.dumps({"defaultDeploymentMode": deployment_mode})
    ingress = json.loads(data["ingress"])
    ingress["disableIstioVirtualHost"] = True
    data["ingress"] = json.dumps(ingress)
    configmap["metadata"]["namespace"] = NAMESPACE
    return configmap


def onnx_inference_service(name: str, **model: Any) -> dict[str, Any]:
    """A plain ONNX InferenceService (V2 protocol), as a user would write one."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "onnx"},
                    "protocolVersion": "v2",
                    "storageUri": "s3://models/mnist/1/",
                    **model,
                }
            }
        },
    }


def webhook_configurations(source: Path, port: int, ca: bytes) -> list[dict[str, Any]]:
    """KServe's webhook configurations, pointed at the manager on 127.0.0.1 by URL."""
    documents = [d for d in yaml.safe_load_all(source.read_text()) if d]
    bundle = base64.b64encode(ca).decode()
    for document in documents:
        document["metadata"].pop("creationTimestamp", None)
        for hook in document["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
    return documents


class KServe(Component):
    name = "kserve"
    requires = ("kube-apiserver", "kube-controller-manager")
    start_timeout = 120.0

    def start(self) -> None:
        apiserver = self.stack.component("kube-apiserver")
        assert isinstance(apiserver, KubeAPIServer)
        self.kubeconfig = apiserver.kubeconfig
        self.cluster = Cluster(apiserver)
        self.config = binary("kserve-config")
        self._install_crds()
        self._apply(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                inferenceservice_config(self.config / "configmap" / "inferenceservice.yaml"),
            ]
        )
        pki = self.dir / "pki"
        ca = CertificateAuthority(pki, "kserve-webhook-ca")
        self.ca = ca.cert
        certs = self.dir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        serving = ca.issue("tls", "kserve-webhook", hosts=("127.0.0.1",), server=True)
        (certs / "tls.crt").write_bytes(serving.cert.read_bytes())
        (certs / "tls.key").write_bytes(serving.key.read_bytes())
        (certs / "tls.key").chmod(0o600)
        self.webhook_port = free_port()
        self.probe_port = free_port()
        self.spawn(
            [
                str(binary("kserve-manager")),
                f"--kubeconfig={self.kubeconfig}",
                f"--cert-dir={certs}",
                f"--webhook-port={self.webhook_port}",
                f"--health-probe-addr=127.0.0.1:{self.probe_port}",
                "--zap-encoder=console",
            ],
            env={"POD_NAMESPACE": NAMESPACE},
        )

    def probe(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.probe_port}/readyz")

    def after_ready(self) -> None:
        self._apply(
            webhook_configurations(
                self.config / "webhook" / "manifests.yaml", self.webhook_port, self.ca.read_bytes()
            )
        )
        self._wait_admission()
        # The stock runtimes (an ONNX InferenceService naming no runtime is admitted) and
        # the project's own; KServe's validating webhook checks each of them.
        stock = self.cluster.kubectl("kustomize", str(self.config / "runtimes")).stdout
        self.cluster.kubectl("apply", "--server-side", "-f", "-", input=stock)
        self.cluster.kubectl("apply", "--server-side", "-f", str(PROJECT_RUNTIME))

    # -- helpers ---------------------------------------------------------------------------------
    def _apply(self, documents: list[dict[str, Any]]) -> None:
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": documents})
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)

    def _install_crds(self) -> None:
        names: list[str] = []
        gateway = self.config / "gateway-api"
        files = [gateway / f"gateway.networking.k8s.io_{n}.yaml" for n in GATEWAY_API_CRDS]
        for args in (
            ["-k", str(self.config / "crd")],
            [arg for file in files for arg in ("-f", str(file))],
        ):
            out = self.cluster.kubectl(
                "apply", "--server-side", "--force-conflicts", "-o", "name", *args, timeout=120
            ).stdout
            names += [
                n.split("/", 1)[1] for n in out.split() if n.startswith("customresourcedefinition")
            ]
        with self.cluster.api_client() as api:
            extensions = client.ApiextensionsV1Api(api)
            for name in names:
                Cluster._wait_established(extensions, name, timeout=60)

    def _wait_admission(self, timeout: float = 30) -> None:
        """Until the API server calls the webhooks: KServe's validator refuses a canary in
        Serverless mode (a dry run, nothing is stored)."""
        probe = {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": f"admission-probe-{uuid.uuid4().hex[:6]}",
                "namespace": NAMESPACE,
                "annotations": {"serving.kserve.io/deploymentMode": "Serverless"},
            },
            "spec": {
                "predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://a/b"}},
                "canary": [
                    {
                        "predictor": {"name": "probe", "model": {"storageUri": "s3://a/c"}},
                        "trafficPercent": 0,
                    }
                ],
            },
        }
        deadline = time.monotonic() + timeout
        while True:
            result = self.cluster.kubectl(
                "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
            )
            if result.returncode != 0 and "admission webhook" in result.stderr:
                return
            self.check_alive()
            if time.monotonic() > deadline:
                raise self.error(
                    f"KServe's admission webhooks not called after {timeout:.0f} s: "
                    f"{result.stderr.strip() or result.stdout.strip()}"
                )
            time.sleep(0.2)

    def state(self) -> dict[str, Any]:
        return {"webhook_port": self.webhook_port, "namespace": NAMESPACE}
