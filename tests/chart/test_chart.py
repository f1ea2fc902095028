"""charts/mlcd as helm sees it: lint, every documented mode, values refused, what it renders."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
from typing import Any

import pytest
import yaml

from mlcd.engines.kubeflow.settings import KubeflowSettings, SecretKeyRef
from mlcd.settings import OperatorSettings
from testenv.binaries import binary
from testenv.manifests import CHART, KUBE_VERSION, MODES, container_env, documents, find, helm, one

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKLOADS = ("Deployment", "StatefulSet")


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] in WORKLOADS]
    return found


def test_every_mode_is_documented() -> None:
    install = (REPO / "docs" / "install.md").read_text()
    assert set(MODES) >= {"cluster-wide", "namespaced", "monitoring", "ha-kubeflow"}
    assert [m for m in MODES if f"charts/mlcd/ci/{m}-values.yaml" not in install] == []


@pytest.mark.parametrize("mode", [None, *MODES])
def test_helm_lint_strict(helm_home, mode):
    args = ["lint", "--strict", str(CHART)]
    if mode:
        args += ["--values", str(MODES[mode])]
    result = helm(*args, home=helm_home, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("mode", [None, *MODES])
def test_every_mode_renders_a_restricted_operator(render, mode):
    docs = render(mode)
    assert all(d.get("apiVersion") and d["metadata"].get("name") for d in docs)
    pod = workload(docs)["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = container_env(workload(docs))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["MLCD_LIVENESS"] == f"http://0.0.0.0:{ports['health']}/healthz"
    assert env["MLCD_METRICS_PORT"] == str(ports["metrics"])
    # Writable: the state folder and /tmp, nothing else.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/var/lib/mlcd", "/tmp"}
    assert env["MLCD_STATE_DIR"] == "/var/lib/mlcd" and env["HOME"] == "/tmp"
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_the_local_engine_runs_one_replica_on_a_claim(render):
    docs = render()
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = one(docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "MLCD_PEERING" not in container_env(deployment)  # standalone: kopf's default unused
    assert find(docs, "StatefulSet") == []


def test_an_existing_claim_is_used_and_none_created(render):
    docs = render(None, "persistence.existingClaim=models")
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "state", "persistentVolumeClaim": {"claimName": "models"}} in volumes
    assert find(docs, "PersistentVolumeClaim") == []


def test_replicas_peer_in_a_named_peering_each_with_its_own_priority(render):
    docs = render("ha-kubeflow")
    statefulset = one(docs, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 2 and find(docs, "Deployment") == []
    env = container_env(statefulset)
    assert env["MLCD_PRIORITY"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    peering = one(docs, "ClusterKopfPeering")
    assert env["MLCD_PEERING"] == peering["metadata"]["name"] == "mlcd"
    assert env["MLCD_ENGINE"] == "kubeflow"


def test_a_namespaced_operator_peers_in_each_watched_namespace(render):
    docs = render("namespaced", "peering.enabled=true", "peering.name=ours")
    peerings = find(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {"ours"}
    assert find(docs, "ClusterKopfPeering") == []
    assert container_env(one(docs, "Deployment"))["MLCD_PEERING"] == "ours"


WRONG_VALUES = [
    ("replicas=0", "replicas"),
    ("operator.engine=spark", "engine"),
    ("operator.maxActiveRuns=0", "maxActiveRuns"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("operatr.tick=1", "operatr"),
    ("watchNamespaces={Team_A}", "watchNamespaces"),
    ("metrics.port=70000", "port"),
    ("persistence.size=lots", "size"),
    ("image.digest=latest", "digest"),
    ("prometheusRule.for=ten minutes", "for"),
    ("replicas=2", "replicas"),
    ("replicas=2,operator.engine=kubeflow", "peering"),
    ("operator.engine=kubeflow", "kubeflow.endpoint"),
    ("operator.serving=knative", "serving"),
    ("kserve.namespace=KServe", "namespace"),
    ("kserve.deploymentMode=Raw", "deploymentMode"),
    ("prometheus.url=prometheus:9090", "url"),
    ("kubeflow.endpoint=ml-pipeline", "endpoint"),
    ("kubeflow.training=MPIJob", "training"),
    ("kubeflow.tokenSecret.name=KFP_Token", "name"),
    ("kubeflow.podAnnotations.a=x\\,y", "podAnnotations"),
    ("kubeflow.poll=0", "poll"),
]


@pytest.mark.parametrize(("value", "field"), WRONG_VALUES)
def test_a_wrong_value_fails_naming_it(helm_home, value, field):
    args = ["template", "x", str(CHART), "--kube-version", KUBE_VERSION, "--set", value]
    result = helm(*args, home=helm_home, check=False)
    assert result.returncode != 0, f"{value} was accepted"
    assert field in result.stderr, result.stderr


def test_the_chart_crds_are_the_project_crds(generate):
    for source, copy in generate.CRD_FILES.items():
        assert copy.read_bytes() == source.read_bytes(), (
            f"{copy.relative_to(REPO)} differs from {source.relative_to(REPO)}: run make crd"
        )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(
        p.name for p in generate.CRD_FILES.values()
    )


def test_the_values_table_is_generated_from_values_yaml(generate):
    readme = generate.README.read_text()
    values = (CHART / "values.yaml").read_text()
    assert generate.readme_with_table(readme, values) == readme, "run make docs"


def test_every_value_is_documented(generate):
    text = (CHART / "values.yaml").read_text()
    documented = set(generate.value_docs(text))
    undocumented = [
        leaf
        for leaf in generate.leaves(yaml.safe_load(text))
        if not any(leaf == d or leaf.startswith(f"{d}.") for d in documented)
    ]
    assert undocumented == []


# OperatorSettings field -> (--set of a value that is not the default, the value it must read).
SETTINGS = {
    "namespaces": ("watchNamespaces={team-a,team-b}", ["team-a", "team-b"]),
    "state_dir": (None, pathlib.Path("/var/lib/mlcd")),
    "engine": ("operator.engine=kubeflow,kubeflow.endpoint=http://kfp:8888", "kubeflow"),
    "max_active_runs": ("operator.maxActiveRuns=5", 5),
    "tick": ("operator.tick=2.5", 2.5),
    "workers": ("operator.workers=4", 4),
    "watch_timeout": ("operator.watchTimeout=120", 120),
    "metrics_port": ("metrics.port=9300", 9300),
    "metrics_address": (None, "0.0.0.0"),
    "peering": ("peering.enabled=true,peering.name=team-peering", "team-peering"),
    "priority": ("peering.priority=7", 7),
    "liveness": ("healthPort=8181", "http://0.0.0.0:8181/healthz"),
    "serving": ("operator.serving=kserve", "kserve"),
    "kserve_runtime": ("kserve.runtime=kserve-onnx", "kserve-onnx"),
    "kserve_namespace": ("kserve.namespace=kubeflow", "kubeflow"),
    "kserve_deployment_mode": ("kserve.deploymentMode=Serverless", "Serverless"),
    "prometheus_url": (
        "prometheus.url=http://prometheus.monitoring:9090",
        "http://prometheus.monitoring:9090",
    ),
}
# Settings that are no chart value, and why.
NOT_VALUES = {
    "kubeconfig": "in a pod the operator uses its ServiceAccount",
    "clock_file": "a test and dry-run aid",
    "prometheus_targets": "file discovery for a Prometheus on the operator's host (local "
    "serving on one machine); no Prometheus reads a folder of the operator's pod",
    "candidate_faults": "a test and demo device",
}
# KubeflowSettings field -> (--set of a value, the value it must read); the engine is on only
# with an endpoint, so every case sets one.
KUBEFLOW_SETTINGS = {
    "endpoint": (
        "kubeflow.endpoint=http://ml-pipeline.kubeflow:8888",
        "http://ml-pipeline.kubeflow:8888",
    ),
    "namespace": ("kubeflow.namespace=team-a-profile", "team-a-profile"),
    "token_secret": (
        "kubeflow.tokenSecret.name=kfp,kubeflow.tokenSecret.namespace=auth,"
        "kubeflow.tokenSecret.key=bearer",
        SecretKeyRef("auth", "kfp", "bearer"),
    ),
    "training": ("kubeflow.training=PyTorchJob", "PyTorchJob"),
    "runtime": ("kubeflow.trainingRuntime=torch-gpu", "torch-gpu"),
    "service_account": ("kubeflow.serviceAccount=trainer", "trainer"),
    "pod_annotations": (
        "kubeflow.podAnnotations.example\\.com/team=a,kubeflow.podAnnotations.tier=batch",
        {"example.com/team": "a", "tier": "batch"},
    ),
    "poll_seconds": ("kubeflow.poll=2.5", 2.5),
}
KUBEFLOW_NOT_VALUES = {
    "steps_kubeconfig": "for steps that run outside the cluster: the tests",
    "pod_template": "a whole pod template, set as JSON through operator.extraEnv",
    "attempts": "a constant of the engine, not read from the environment",
    "backoff_seconds": "a constant of the engine, not read from the environment",
}


@pytest.mark.parametrize(
    ("settings", "values", "not_values"),
    [
        (OperatorSettings, SETTINGS, NOT_VALUES),
        (KubeflowSettings, KUBEFLOW_SETTINGS, KUBEFLOW_NOT_VALUES),
    ],
)
def test_every_operator_setting_is_a_value_or_says_why_not(settings, values, not_values):
    fields = {f.name for f in dataclasses.fields(settings)}
    assert fields == set(values) | set(not_values)


@pytest.mark.parametrize(
    ("settings", "values"), [(OperatorSettings, SETTINGS), (KubeflowSettings, KUBEFLOW_SETTINGS)]
)
def test_the_operator_reads_each_value_as_its_setting(render, monkeypatch, settings, values):
    sets = [s for s, _ in values.values() if s]
    env = container_env(one(render(None, *sets), "Deployment"))
    for name in [n for n in os.environ if n.startswith("MLCD_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        assert isinstance(value, str), (name, value)
        monkeypatch.setenv(name, value)
    read = settings()
    assert {f: getattr(read, f) for f in values} == {f: v for f, (_, v) in values.items()}


def test_a_kubeflow_token_is_passed_by_reference_only(render):
    """The Secret's name reaches the operator; the chart never holds or renders its value."""
    docs = render("kubeflow", "kubeflow.tokenSecret.key=bearer")
    env = container_env(one(docs, "Deployment"))
    assert env["MLCD_KFP_TOKEN_SECRET"] == "mlcd-system/kfp-token#bearer"
    assert find(docs, "Secret") == []


def test_promtool_checks_the_alert_rules(helm_home, tmp_path):
    args = ["template", "mlcd-operator", str(CHART), "--kube-version", KUBE_VERSION]
    args += ["--set", "prometheusRule.enabled=true"]
    args += ["--show-only", "templates/prometheusrule.yaml"]
    [rule] = documents(helm(*args, home=helm_home).stdout)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    promtool = binary("prometheus").parent / "promtool"
    result = subprocess.run(
        [str(promtool), "check", "rules", "--lint=all", "--lint-fatal", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout, result.stdout
