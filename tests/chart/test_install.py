"""The chart and the overlays installed on the real API server, into namespaces that enforce the
Pod Security "restricted" level: the API server's own PodSecurity admission admits the operator's
pod. The manifests also pass kubeconform against the API server's own OpenAPI schemas."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import wait_for
from testenv.binaries import binary
from testenv.cluster import Cluster
from testenv.manifests import CHART, DEPLOY, MODES, NAMESPACE, kustomize_text

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
WORKLOADS = {"Deployment": "deployments", "StatefulSet": "statefulsets"}


@pytest.fixture(scope="module")
def cluster(apiserver: Cluster) -> Cluster:
    """The API server with the CRDs the manifests use: mlcd's, kopf's peering, Prometheus'."""
    root = Path(__file__).resolve().parents[2]
    apiserver.install_crds(root / "crds")
    apiserver.install_crds(root / "deploy" / "crds")
    apiserver.install_crds(binary("monitoring-crds"))
    return apiserver


def restricted_namespace(cluster: Cluster, prefix: str) -> str:
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    with cluster.api_client() as api:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": RESTRICTED}})
    return name


def admitted_pods(cluster: Cluster, namespace: str) -> list[Any]:
    """The operator's pods its controller created: each passed PodSecurity admission."""
    with cluster.api_client() as api:
        pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    return [p for p in pods if p.metadata.labels.get("app.kubernetes.io/name") == "mlcd"]


def refusals(cluster: Cluster, namespace: str) -> list[str]:
    with cluster.api_client() as api:
        events = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [e.message for e in events if e.reason == "FailedCreate"]


def test_podsecurity_admission_is_on(cluster):
    """A root pod is refused in a restricted namespace: the checks below can fail."""
    namespace = restricted_namespace(cluster, "psa-")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}]},
    }
    try:
        with cluster.api_client() as api, pytest.raises(ApiException) as refused:
            client.CoreV1Api(api).create_namespaced_pod(namespace, pod, dry_run="All")
        assert refused.value.status == 403
        message = json.loads(refused.value.body)["message"]
        assert 'violates PodSecurity "restricted:latest"' in message, message
    finally:
        cluster.delete_namespace(namespace)


@pytest.mark.parametrize("mode", MODES)
def test_the_chart_installs_and_its_pod_is_admitted(cluster, mode):
    namespace = restricted_namespace(cluster, "chart-")
    release = f"mlcd-{mode}"
    watched = [restricted_namespace(cluster, "watched-") for _ in range(2)]
    values = yaml.safe_load(MODES[mode].read_text()) or {}
    sets = [f"peering.name={release}"]  # cluster-wide names of parallel installs never meet
    if values.get("watchNamespaces"):
        sets.append(f"watchNamespaces={{{','.join(watched)}}}")
    if values.get("kserve"):  # KServe's namespace, where a Role lets it read KServe's ConfigMap
        sets.append(f"kserve.namespace={watched[0]}")
    try:
        cluster.helm(
            "install",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--values",
            str(MODES[mode]),
            *[a for s in sets for a in ("--set", s)],
            "--wait=false",
        )
        replicas = max(1, values.get("replicas", 1))

        def all_pods() -> list[Any]:
            pods = admitted_pods(cluster, namespace)
            return pods if len(pods) >= replicas else []

        pods = wait_for(f"{replicas} operator pods of {release}", all_pods, timeout=60)
        assert len(pods) == replicas
        assert refusals(cluster, namespace) == []
        for pod in pods:
            assert pod.spec.service_account_name == release
            assert pod.spec.security_context.run_as_non_root is True
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace, check=False)
        for name in (namespace, *watched):
            cluster.delete_namespace(name)


def isolated(text: str, namespace: str, watched: str, suffix: str) -> str:
    """An overlay's output with names of its own, so it never meets another install's objects.

    The CRDs are installed once by the fixture; the operator's namespace is one the test made.
    """
    docs = [
        d
        for d in yaml.safe_load_all(text)
        if d and d["kind"] not in ("CustomResourceDefinition", "Namespace")
    ]
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            doc["metadata"]["name"] += f"-{suffix}"
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] += f"-{suffix}"
    return yaml.safe_dump_all(docs).replace(NAMESPACE, namespace).replace("team-a", watched)


@pytest.mark.parametrize("overlay", ["cluster-wide", "namespaced"])
def test_an_overlay_applies_and_its_pod_is_admitted(cluster, overlay):
    namespace = restricted_namespace(cluster, "kustomize-")
    watched = restricted_namespace(cluster, "watched-")
    text = kustomize_text(DEPLOY / "overlays" / overlay)
    # The overlay's namespace carries the label the test namespace was given.
    [ours] = [d for d in yaml.safe_load_all(text) if d and d["kind"] == "Namespace"]
    assert ours["metadata"]["labels"].items() >= RESTRICTED.items()
    manifests = isolated(text, namespace, watched, namespace)
    try:
        cluster.kubectl("apply", "--server-side", "-f", "-", input=manifests)
        pods = wait_for(
            f"{overlay}'s operator pod", lambda: admitted_pods(cluster, namespace), timeout=60
        )
        assert len(pods) == 1 and refusals(cluster, namespace) == []
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=manifests)
        cluster.delete_namespace(namespace)
        cluster.delete_namespace(watched)


# -- kubeconform ---------------------------------------------------------------------------------
def openapi_schemas(cluster: Cluster, folder: Path, kinds: set[tuple[str, str, str]]) -> Path:
    """A JSON schema per (group, version, kind) of ``kinds``, from the API server's OpenAPI v3.

    Objects close over their properties (additionalProperties: false), as kubeconform's
    strict schemas do, unless the API keeps unknown fields.
    """
    with cluster.api_client() as api:

        def get(path: str) -> dict[str, Any]:
            response = api.call_api(
                path, "GET", auth_settings=["BearerToken"], _preload_content=False
            )
            return json.loads(response[0].data)

        paths = get("/openapi/v3")["paths"]
        documents = [get(f"/openapi/v3/{p}") for p in paths if p.startswith(("api/", "apis/"))]
    folder.mkdir(parents=True, exist_ok=True)
    for document in documents:
        schemas = document.get("components", {}).get("schemas", {})
        for schema in schemas.values():
            close(schema)
        for name, schema in schemas.items():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                group, version, kind = gvk["group"], gvk["version"], gvk["kind"]
                if (group, version, kind) not in kinds:
                    continue
                # kubeconform's {{ .Group }} of a core kind ("v1") is its version.
                target = folder / f"{group or version}-{kind.lower()}_{version}.json"
                body = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}}
                target.write_text(json.dumps(body))
    return folder


def close(node: Any) -> None:
    if isinstance(node, dict):
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            close(value)
    elif isinstance(node, list):
        for value in node:
            close(value)


def kubeconform(schemas: Path, manifests: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(binary("kubeconform")),
            "-strict",
            "-summary",
            "-output",
            "text",
            "-schema-location",
            str(schemas) + "/{{ .Group }}-{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
            "-",
        ],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def installs(render) -> dict[str, str]:
    return every_install(render)


@pytest.fixture(scope="module")
def schemas(
    cluster: Cluster, installs: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    kinds = set()
    for manifests in installs.values():
        for doc in yaml.safe_load_all(manifests):
            if doc:
                group, _, version = doc["apiVersion"].rpartition("/")
                kinds.add((group, version, doc["kind"]))
    return openapi_schemas(cluster, tmp_path_factory.mktemp("schemas"), kinds)


def every_install(render) -> dict[str, str]:
    builds = {f"chart {m}": yaml.safe_dump_all(render(m)) for m in MODES}
    builds["chart defaults"] = yaml.safe_dump_all(render())
    for overlay in ("cluster-wide", "namespaced"):
        builds[f"overlay {overlay}"] = kustomize_text(DEPLOY / "overlays" / overlay)
    components = [DEPLOY / "components" / c for c in ("peering", "monitoring", "kubeflow")]
    builds["overlay cluster-wide + components"] = kustomize_text(
        DEPLOY / "overlays" / "cluster-wide", components
    )
    for overlay in ("cluster-wide", "namespaced"):
        builds[f"overlay {overlay} + kserve"] = kustomize_text(
            DEPLOY / "overlays" / overlay, [DEPLOY / "components" / "kserve"]
        )
    return builds


def test_kubeconform_validates_every_install(schemas, installs):
    for name, manifests in installs.items():
        result = kubeconform(schemas, manifests)
        assert result.returncode == 0, f"{name}:\n{result.stdout}{result.stderr}"
        assert "Invalid: 0, Errors: 0, Skipped: 0" in result.stdout, (name, result.stdout)


def test_kubeconform_refuses_a_misspelt_field(schemas, render):
    docs = render()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = 1
    result = kubeconform(schemas, yaml.safe_dump(deployment))
    assert result.returncode != 0 and "replica" in result.stdout, result.stdout
