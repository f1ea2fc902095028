"""The Kubeflow training controllers as stack components, built by hack/bootstrap from their
Go modules: the training operator (PyTorchJob), JobSet and the Kubeflow Trainer (TrainJob);
and Katib's CRDs (its controller is played by the tests).

Each installs its CRDs before it starts, serves its webhooks on 127.0.0.1 with a certificate
of the stack's own, and registers them with the API server by URL."""

from __future__ import annotations

import base64
import copy
import shutil
from pathlib import Path
from typing import Any, ClassVar

import yaml

from testenv.binaries import binary
from testenv.component import Component, http_ok
from testenv.images import BUSYBOX_IMAGE
from testenv.kube import KubeAPIServer
from testenv.pki import CertificateAuthority
from testenv.proc import free_port

#: The ClusterTrainingRuntime the tests' TrainJobs use: the stock torch runtime with
#: backoffLimit 0, so a failed node fails the job at once (the stock 6 retries take minutes).
TEST_RUNTIME = "torch-distributed"
#: kwok keeps a pod with this annotation running (tests/cluster/kwok/pod-complete*.yaml).
HOLD = "mlcd.io/kwok-hold"


class _Controller(Component):
    """A controller-runtime manager: CRDs first, a serving cert, webhooks by URL."""

    requires: ClassVar[tuple[str, ...]] = ("kube-apiserver",)
    start_timeout = 90.0
    binary_name: ClassVar[str]
    #: Webhook configurations to register: resource -> (kept) and extra per-webhook settings.
    webhook_resources: ClassVar[tuple[str, ...]] = ()

    def apiserver(self) -> KubeAPIServer:
        component = self.stack.component("kube-apiserver")
        assert isinstance(component, KubeAPIServer)
        return component

    @property
    def home(self) -> Path:
        """The component's folder in the cache (binary, CRDs, manifests)."""
        return binary(self.binary_name).parent.parent

    def prepare(self) -> Path:
        """Installs the CRDs; returns a folder with tls.crt and tls.key for the webhook."""
        from testenv.cluster import Cluster

        Cluster(self.apiserver()).install_crds(self.home / "crds")
        self.dir.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority(self.dir / "pki", f"{self.name}-webhook-ca")
        pair = ca.issue("webhook", "127.0.0.1", hosts=("127.0.0.1", "localhost"), server=True)
        self.webhook_ca = ca.cert
        certs = self.dir / "certs"
        certs.mkdir(exist_ok=True)
        shutil.copyfile(pair.cert, certs / "tls.crt")
        shutil.copyfile(pair.key, certs / "tls.key")
        self.webhook_port = free_port()
        self.probe_port = free_port()
        return certs

    def probe(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.probe_port}/readyz")

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.apiserver().kubeconfig)}

    def after_ready(self) -> None:
        self.register_webhooks()

    def register_webhooks(self) -> None:
        from kubernetes import client

        from testenv.cluster import Cluster

        documents = [d for d in yaml.safe_load_all((self.home / "webhooks.yaml").read_text()) if d]
        ca = base64.b64encode(self.webhook_ca.read_bytes()).decode()
        with Cluster(self.apiserver()).api_client() as api:
            admission = client.AdmissionregistrationV1Api(api)
            for document in documents:
                body = copy.deepcopy(document)
                hooks = []
                for hook in body.get("webhooks") or []:
                    resources = {r for rule in hook.get("rules", []) for r in rule["resources"]}
                    if not resources & set(self.webhook_resources):
                        continue
                    path = hook["clientConfig"]["service"]["path"]
                    hook["clientConfig"] = {
                        "url": f"https://127.0.0.1:{self.webhook_port}{path}",
                        "caBundle": ca,
                    }
                    self.adjust(hook, resources)
                    hooks.append(hook)
                if not hooks:
                    continue
                body["webhooks"] = hooks
                name = f"mlcd-testenv-{self.name}-{document['kind'].lower()}"
                body["metadata"] = {"name": name}
                mutating = body["kind"] == "MutatingWebhookConfiguration"
                create: Any = (
                    admission.create_mutating_webhook_configuration
                    if mutating
                    else admission.create_validating_webhook_configuration
                )
                try:
                    create(body)
                except client.ApiException as exc:
                    if exc.status != 409:
                        raise
                    replace: Any = (
                        admission.patch_mutating_webhook_configuration
                        if mutating
                        else admission.patch_validating_webhook_configuration
                    )
                    replace(name, body)

    def adjust(self, hook: dict[str, Any], resources: set[str]) -> None:
        """Per-webhook changes the manifests make with kustomize patches."""


class TrainingOperator(_Controller):
    """The training operator v1 (PyTorchJob only), through a wrapper main on 127.0.0.1."""

    name = "training-operator"
    binary_name = "training-operator"
    webhook_resources = ("pytorchjobs",)

    def start(self) -> None:
        certs = self.prepare()
        init = self.dir / "init-container.yaml"
        init.write_text(INIT_CONTAINER)
        self.spawn(
            [
                str(binary("training-operator")),
                f"--cert-dir={certs}",
                f"--webhook-server-port={self.webhook_port}",
                "--metrics-bind-address=0",
                f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
                f"--pytorch-init-container-image={BUSYBOX_IMAGE}",
                f"--pytorch-init-container-template-file={init}",
                "--pytorch-init-container-max-tries=60",
            ],
            env=self.env(),
        )


#: The workers' init container, waiting until the master's name resolves. The operator's own
#: runs alpine 3.10's nslookup; there is no registry here, and the busybox of the real node's
#: images exits 1 when any name of the search list is unknown, found or not: it is the answer's
#: Name line that tells.
INIT_CONTAINER = """\
- name: init-pytorch
  image: {{.InitContainerImage}}
  imagePullPolicy: IfNotPresent
  resources:
    limits: {cpu: 100m, memory: 20Mi}
    requests: {cpu: 50m, memory: 10Mi}
  command:
  - sh
  - -c
  - >-
    for i in $(seq {{.MaxTries}}); do
    nslookup {{.MasterAddr}} | grep -q '^Name:' && exit 0;
    echo waiting for {{.MasterAddr}}; sleep 1; done; exit 1
"""


class JobSet(_Controller):
    """JobSet's controller manager: what a TrainJob becomes."""

    name = "jobset"
    binary_name = "jobset"
    webhook_resources = ("jobsets", "pods")

    def start(self) -> None:
        certs = self.prepare()
        config = {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"port": self.webhook_port, "host": "127.0.0.1", "certDir": str(certs)},
            "metrics": {"bindAddress": "0"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.probe_port}"},
        }
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        self.spawn(
            [
                str(binary("jobset")),
                f"--config={path}",
                "--metrics-bind-address=0",
                f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
            ],
            env=self.env(),
        )

    def adjust(self, hook: dict[str, Any], resources: set[str]) -> None:
        if "pods" in resources:
            # Only the pods of JobSets, as JobSet's own install selects them.
            hook["objectSelector"] = {
                "matchExpressions": [
                    {"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}
                ]
            }


class Trainer(_Controller):
    """The Kubeflow Trainer v2 controller manager (TrainJob → JobSet)."""

    name = "trainer"
    binary_name = "trainer"
    requires = ("kube-apiserver", "jobset")
    webhook_resources = ("trainjobs", "trainingruntimes", "clustertrainingruntimes")

    def start(self) -> None:
        certs = self.prepare()
        # controller-runtime reads the webhook's certificate from $TMPDIR/k8s-webhook-server/
        # serving-certs when the Trainer manages no certificates itself.
        tmp = self.dir / "tmp"
        serving = tmp / "k8s-webhook-server" / "serving-certs"
        serving.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            shutil.copyfile(certs / name, serving / name)
        config = {
            "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
            "kind": "Configuration",
            "health": {
                "healthProbeBindAddress": f"127.0.0.1:{self.probe_port}",
                "readinessEndpointName": "readyz",
                "livenessEndpointName": "healthz",
            },
            "metrics": {"bindAddress": "0", "secureServing": False},
            "webhook": {"port": self.webhook_port, "host": "127.0.0.1"},
            "leaderElection": {"leaderElect": False},
            "certManagement": {"enable": False},
        }
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        self.spawn(
            [str(binary("trainer")), f"--config={path}"], env={**self.env(), "TMPDIR": str(tmp)}
        )

    def after_ready(self) -> None:
        from kubernetes import client

        from testenv.cluster import Cluster

        super().after_ready()
        # kwok keeps held pods running until the test that plays their work releases them.
        runtime = torch_runtime(TEST_RUNTIME, annotations={HOLD: "true"})
        with Cluster(self.apiserver()).api_client() as api:
            client.CustomObjectsApi(api).create_cluster_custom_object(
                "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", runtime
            )


def torch_runtime(
    name: str,
    *,
    annotations: dict[str, str] | None = None,
    pod_spec: dict[str, Any] | None = None,
    container: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Trainer's stock ``torch-distributed`` ClusterTrainingRuntime as ``name``, with
    backoffLimit 0 (a failed node fails the job at once; the stock 6 retries take minutes),
    and ``annotations``, ``pod_spec`` fields and ``container`` fields (the ``node`` container)
    added to its pods."""
    stock = binary("trainer").parent.parent / "runtimes" / "torch_distributed.yaml"
    runtime: dict[str, Any] = yaml.safe_load(stock.read_text())
    runtime["metadata"]["name"] = name
    job = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]
    job.setdefault("spec", {})["backoffLimit"] = 0
    pod = job["spec"]["template"]
    if annotations:
        pod.setdefault("metadata", {}).setdefault("annotations", {}).update(annotations)
    pod["spec"].update(pod_spec or {})
    node = next(c for c in pod["spec"]["containers"] if c["name"] == "node")
    node.update(container or {})
    return runtime


class KatibCRDs(Component):
    """Katib's CRDs only; the tests play its controller (it needs a DB manager and
    suggestion services)."""

    name = "katib-crds"
    requires = ("kube-apiserver",)

    def start(self) -> None:
        from testenv.cluster import Cluster

        component = self.stack.component("kube-apiserver")
        assert isinstance(component, KubeAPIServer)
        Cluster(component).install_crds(binary("katib-crds"))

    def probe(self) -> bool:
        return True
