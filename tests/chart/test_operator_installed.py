"""The operator as the chart installs it (namespaced mode, named peering, your Prometheus for
rollouts), run with the rendered ServiceAccount's token and the rendered container's settings
through a promoted run, a failed one and a rollout the real Prometheus rolls back; a permission
outside its Role refused; its live /metrics linted by promtool; every PromQL expression of the
dashboard and the alerts answered by a real Prometheus scraping it, each alert firing on its
cause."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from helpers import softmax_pipeline, wait_for
from mlcd.domain.spec import TRIGGER_ANNOTATION
from testenv.binaries import binary
from testenv.cluster import Cluster
from testenv.manifests import CHART, KUBE_VERSION, container_env, documents, one
from testenv.minio import MinIO
from testenv.proc import free_port
from testenv.prometheus import PrometheusAPI

REPO = Path(__file__).resolve().parents[2]
RELEASE = "mlcd-e2e"
GROUP, VERSION, PLURAL = "mlcd.io", "v1alpha1", "modelpipelines"
# Grafana's variables as a user's first look at the dashboard sets them.
RANGE, RATE_INTERVAL = "1h", "1m"
# A rollout that its analyses end quickly: every answer of a candidate is an error (the
# candidate fault injection, a test device), so its success rate fails at the first step.
ROLLOUT = {
    "steps": [50, 100],
    "interval": "3s",
    "minSamples": 10,
    "failureThreshold": 1,
    "progressDeadline": "3m",
    "metrics": [{"name": "success-rate", "min": 0.99}],
    "traffic": {"rate": 20},
}
CANDIDATE_FAULTS = "error=1"
ENDED = ("Promoted", "RolledBack", "Failed")


@dataclass
class Installed:
    cluster: Cluster
    namespace: str  # the operator's
    watched: str  # where its ModelPipelines are
    other: str  # a namespace it does not watch
    deployment: dict[str, Any]
    kubeconfig: Path  # the rendered ServiceAccount's token, nothing more
    job: str  # the Prometheus job the ServiceMonitor makes: the metrics Service's name


def token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    token = cluster.kubectl(
        "create", "token", account, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": account}}
        ],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def installed(
    apiserver: Cluster, prometheus: PrometheusAPI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    apiserver.install_crds(REPO / "crds")
    apiserver.install_crds(REPO / "deploy" / "crds")
    suffix = uuid.uuid4().hex[:6]
    namespace, watched, other = (f"{p}-{suffix}" for p in ("mlcd", "team", "other"))
    for name in (namespace, watched, other):
        apiserver.create_namespace(name)
    sets = [
        f"watchNamespaces={{{watched}}}",
        "peering.enabled=true",
        f"peering.name=e2e-{suffix}",
        "operator.tick=1",
        "persistence.enabled=false",
        f"prometheus.url={prometheus.url}",
    ]
    apiserver.helm(
        "install", RELEASE, str(CHART), "-n", namespace, *[a for s in sets for a in ("--set", s)]
    )
    try:
        manifest = documents(apiserver.helm("get", "manifest", RELEASE, "-n", namespace).stdout)
        deployment = one(manifest, "Deployment")
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        apiserver.wait_service_account(namespace, account)
        kubeconfig = token_kubeconfig(
            apiserver, namespace, account, tmp_path_factory.mktemp("sa") / "kubeconfig"
        )
        job = one(manifest, "Service")["metadata"]["name"]
        yield Installed(apiserver, namespace, watched, other, deployment, kubeconfig, job)
    finally:
        apiserver.helm("uninstall", RELEASE, "-n", namespace, check=False)
        for name in (namespace, watched, other):
            apiserver.delete_namespace(name)


class InstalledOperator:
    """``mlcd operator`` with the settings of the rendered container; only its paths and ports
    are this machine's (the state folder, /metrics, the liveness endpoint, and the folder from
    which Prometheus discovers the routers and model servers of local serving)."""

    def __init__(self, installed: Installed, state: Path, log: Path, targets: Path) -> None:
        env = container_env(installed.deployment)
        self.metrics_port, self.health_port = free_port(), free_port()
        rendered = {k: v for k, v in env.items() if isinstance(v, str) and k != "HOME"}
        rendered.update(
            MLCD_STATE_DIR=str(state),
            MLCD_METRICS_PORT=str(self.metrics_port),
            MLCD_METRICS_ADDRESS="127.0.0.1",
            MLCD_PROMETHEUS_TARGETS=str(targets),
            MLCD_LIVENESS=re.sub(
                r"//0\.0\.0\.0:\d+/", f"//127.0.0.1:{self.health_port}/", env["MLCD_LIVENESS"]
            ),
        )
        [container] = installed.deployment["spec"]["template"]["spec"]["containers"]
        self.rendered = rendered
        self.argv = [sys.executable, "-m", "mlcd.cli", *container["args"]]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLCD_")},
            **rendered,
            "KUBECONFIG": str(installed.kubeconfig),
            "MLCD_SERVING_PORT": "0",
            "MLCD_CANDIDATE_FAULTS": CANDIDATE_FAULTS,
        }
        self.state, self.log = state, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self.rollout: dict[str, Any] = {}

    def start(self) -> InstalledOperator:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_for("the operator's liveness endpoint", self.healthy, timeout=60)
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.log.read_text()[-4000:]}")
        try:
            return httpx.get(self.rendered["MLCD_LIVENESS"], timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def returns_data(prometheus: PrometheusAPI, expr: str, timeout: float) -> list[dict[str, Any]]:
    """The expression's samples that are numbers once there are some, or [] after ``timeout``
    seconds. A syntax error or a wrong type is an HTTP 400 from Prometheus, and raises."""

    def numbers() -> list[dict[str, Any]]:
        return [s for s in prometheus.query(expr) if s["value"][1] != "NaN"]

    try:
        result: list[dict[str, Any]] = wait_for(expr, numbers, timeout=timeout, interval=0.5)
    except AssertionError:
        return []
    return result


def failing_pipeline(dataset: str) -> dict[str, Any]:
    resource = softmax_pipeline(dataset, triggers={"newData": True})
    resource["metadata"]["name"] = "broken"
    del resource["spec"]["tuning"]
    resource["spec"]["trainer"]["command"] = [sys.executable, "-c", "raise SystemExit(3)"]
    resource["spec"]["serving"]["inferenceService"] = "broken"
    return resource


@pytest.fixture(scope="module")
def ran(
    installed: Installed,
    minio: MinIO,
    prometheus: PrometheusAPI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[InstalledOperator]:
    """The operator after a promoted run (artifacts in MinIO through a Secret), a failed one,
    and a run of the promoted pipeline whose rollout the real Prometheus's answers roll back."""
    from mnist_trainer.dataset import write

    folder = tmp_path_factory.mktemp("installed")
    digits = folder / "digits.npz"
    write(digits)
    state = folder / "state"
    operator = InstalledOperator(installed, state, folder / "operator.log", prometheus.targets_dir)
    prometheus.add_target(installed.job, f"127.0.0.1:{operator.metrics_port}")
    with installed.cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_secret(
            installed.watched,
            {
                "metadata": {"name": "minio-creds"},
                "data": {
                    "accessKey": base64.b64encode(minio.access_key.encode()).decode(),
                    "secretKey": base64.b64encode(minio.secret_key.encode()).decode(),
                },
            },
        )
        good = softmax_pipeline(
            str(digits),
            schedule="* * * * *",
            triggers={"newData": True},
            artifacts={
                "uri": f"s3://{minio.bucket}/{installed.watched}/models",
                "endpoint": minio.endpoint,
                "credentialsSecretRef": {"name": "minio-creds"},
            },
            # Every model that clears the bound is rolled out, better than the serving one or not.
            gate={"metric": "accuracy", "min": 0.8, "baseline": {"compareTo": "none"}},
            serving={"inferenceService": "digits", "rollout": ROLLOUT},
        )
        pipelines = client.CustomObjectsApi(api)
        operator.start()
        try:
            for resource in (good, failing_pipeline(str(digits))):
                pipelines.create_namespaced_custom_object(
                    GROUP, VERSION, installed.watched, PLURAL, resource
                )

            def status(name: str) -> dict[str, Any]:
                found = pipelines.get_namespaced_custom_object(
                    GROUP, VERSION, installed.watched, PLURAL, name
                )
                return dict(found.get("status", {}))

            def finished(name: str) -> list[dict[str, Any]] | None:
                now = status(name)
                runs = now.get("runs", [])
                return runs if runs and not now.get("activeRuns") else None

            operator.runs = {
                name: wait_for(f"a finished run of {name}", lambda n=name: finished(n), 240)
                for name in ("digits", "broken")
            }
            # Another run of digits, on demand: its model is rolled out, and rolled back.
            pipelines.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                installed.watched,
                PLURAL,
                "digits",
                {"metadata": {"annotations": {TRIGGER_ANNOTATION: "rollout"}}},
            )

            def rolled_out() -> dict[str, Any] | None:
                now = status("digits")
                rollout = now.get("rollout") or {}
                runs = {r["id"]: r for r in now.get("runs", [])}
                return now if rollout.get("phase") in ENDED and rollout.get("run") in runs else None

            rolled = wait_for("the rollout of a second model of digits", rolled_out, 240)
            operator.runs["digits"] = rolled["runs"]
            operator.rollout = rolled["rollout"]
            yield operator
        finally:
            operator.stop()
            prometheus.remove_target(installed.job)
            from mlcd.engines.local import LocalEngine
            from mlcd.ports import PipelineKey
            from mlcd.serving.local import LocalServing
            from mlcd.serving.router.haproxy import LocalRouter

            LocalEngine(operator.state).cancel_everything(grace=5.0)
            serving = LocalServing(operator.state)
            for key in serving.pipelines():
                serving.stop(key)
            router = LocalRouter(operator.state, targets_dir=prometheus.targets_dir)
            for slug in (operator.state / "router").glob("*"):  # <namespace>.<name>-<uid>
                namespace, _, folder = slug.name.partition(".")
                router.finalize(PipelineKey(namespace, folder))
            if not operator.runs:
                print(operator.log.read_text()[-6000:])


def test_the_installed_operator_trains_gates_and_serves(ran):
    first, *_ = ran.runs["digits"]
    assert first["result"] == "promoted", first
    assert first["model"]["uri"].startswith("s3://")  # through the Secret its Role may read
    [failed] = ran.runs["broken"]
    assert failed["result"] == "failed"


def test_the_installed_operator_rolls_back_what_its_prometheus_refuses(ran):
    """Analysed by the Prometheus the chart's prometheus.url names: every request the candidate
    answered was an error, so the rollout rolls back at the first step and the run is rejected."""
    rollout = ran.rollout
    assert rollout["phase"] == "RolledBack", rollout
    assert "success-rate" in rollout["reason"], rollout["reason"]
    [check] = [r for r in rollout["lastAnalysis"] if r["metric"] == "success-rate"]
    assert check["verdict"] == "fail" and check["value"] == 0.0, check
    assert (
        rollout["canaryWeight"] == 0
        and rollout["stable"] == ran.runs["digits"][0]["model"]["version"]
    )
    [run] = [r for r in ran.runs["digits"] if r["id"] == rollout["run"]]
    assert run["result"] == "rejected", run


def kubectl_as_operator(installed: Installed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("kubectl")), f"--kubeconfig={installed.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


OUTSIDE_ITS_ROLE = [
    ("get", "secret", "minio-creds", "other"),  # a Secret where it watches nothing
    ("get", "modelpipelines.mlcd.io", "", "other"),
    ("get", "secrets", "", "watched"),  # listing Secrets, even where it watches
    ("get", "pods", "", "watched"),
    ("get", "clusterkopfpeerings.kopf.dev", "", None),
]


@pytest.mark.parametrize(("verb", "resource", "name", "where"), OUTSIDE_ITS_ROLE)
def test_a_permission_outside_its_role_is_refused(ran, installed, verb, resource, name, where):
    namespace = {"other": installed.other, "watched": installed.watched, None: None}[where]
    args = [verb, resource, *([name] if name else [])]
    if namespace:
        args += ["-n", namespace]
    result = kubectl_as_operator(installed, *args)
    assert result.returncode != 0 and "Forbidden" in result.stderr, (args, result)


def test_its_role_lets_it_read_what_it_needs(ran, installed):
    for args in (
        ["get", "secret", "minio-creds", "-n", installed.watched],
        ["get", "modelpipelines.mlcd.io", "-n", installed.watched],
    ):
        result = kubectl_as_operator(installed, *args)
        assert result.returncode == 0, (args, result.stderr)


def test_promtool_finds_nothing_in_the_live_metrics(ran):
    promtool = binary("prometheus").parent / "promtool"
    result = subprocess.run(
        [str(promtool), "check", "metrics"],
        input=ran.metrics(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


def live_metric_names(text: str) -> set[str]:
    # prometheus_client adds a <name>_created gauge to counters and histograms: the start time.
    return {
        line.split()[2]
        for line in text.splitlines()
        if line.startswith("# TYPE mlcd_") and not line.split()[2].endswith("_created")
    }


def test_every_live_metric_is_documented(ran):
    names = live_metric_names(ran.metrics())
    assert len(names) >= 10
    for doc in ("docs/metrics.md", "docs/operator.md"):
        text = (REPO / doc).read_text()
        assert sorted(n for n in names if f"`{n}`" not in text) == [], doc


def dashboard_queries(installed: Installed) -> list[tuple[str, str]]:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    variables = {
        "$namespace": installed.watched,
        "$pipeline": ".+",
        "$job": installed.job,
        "$__rate_interval": RATE_INTERVAL,
        "$__range": RANGE,
    }
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"an unknown variable in {target['expr']}"
            queries.append((panel["title"], expr))
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):  # label_values(metric{...}, label): its series must exist
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", query["query"])
            assert match, query
            expr = match.group(1).replace("$namespace", installed.watched)
            queries.append((f"variable {variable['name']}", expr))
    return queries


def test_every_dashboard_query_returns_data(ran, installed, prometheus):
    queries = dashboard_queries(installed)
    assert len(queries) >= 15
    empty = []
    for title, expr in queries:
        # The schedule's series come when its first time has passed: a minute at most.
        if not returns_data(prometheus, expr, timeout=90):
            empty.append((title, expr))
    assert empty == []


def alert_rules(installed: Installed, helm_home: Path, *sets: str) -> dict[str, str]:
    args = ["template", RELEASE, str(CHART), "-n", installed.namespace]
    args += ["--kube-version", KUBE_VERSION]
    args += ["--set", "prometheusRule.enabled=true", "--show-only", "templates/prometheusrule.yaml"]
    for value in sets:
        args += ["--set", value]
    from testenv.manifests import helm

    [rule] = documents(helm(*args, home=helm_home).stdout)
    return {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def test_every_alert_measures_live_data_and_fires_on_its_cause(
    ran, installed, prometheus, helm_home
):
    rules = alert_rules(installed, helm_home)
    assert set(rules) == {
        "MlcdOperatorDown",
        "MlcdReconcileErrors",
        "MlcdRunsFailing",
        "MlcdServingModelStale",
        "MlcdRolloutRolledBack",
    }
    # The rolled-back rollout fires its alert, for that pipeline only. (A scheduled run may be
    # rolling out again meanwhile; its rollout ends rolled back too.)
    rolled_back = returns_data(prometheus, rules["MlcdRolloutRolledBack"], timeout=90)
    assert [
        (s["metric"]["namespace"], s["metric"]["pipeline"], s["metric"]["phase"])
        for s in rolled_back
    ] == [(installed.watched, "digits", "RolledBack")]
    # The failed run fires its alert, for that pipeline only.
    firing = returns_data(prometheus, rules["MlcdRunsFailing"], timeout=60)
    assert [(s["metric"]["namespace"], s["metric"]["pipeline"]) for s in firing] == [
        (installed.watched, "broken")
    ]
    # No reconcile error happened: the alert's measure is there, at zero, and it does not fire.
    measure, _, threshold = rules["MlcdReconcileErrors"].rpartition(" > ")
    assert threshold == "0" and returns_data(prometheus, measure, timeout=30)
    assert prometheus.query(rules["MlcdReconcileErrors"]) == []
    # Staleness is measured in schedule periods: with a threshold of 0 periods, the model just
    # promoted under a schedule is "stale"; with 1000 periods it is not.
    stale = alert_rules(installed, helm_home, "prometheusRule.staleSchedules=0")
    fired = returns_data(prometheus, stale["MlcdServingModelStale"], timeout=120)
    assert {s["metric"]["pipeline"] for s in fired} == {"digits"}
    fresh = alert_rules(installed, helm_home, "prometheusRule.staleSchedules=1000")
    assert prometheus.query(fresh["MlcdServingModelStale"]) == []
    # The operator is up: no alert; stopped: the alert fires.
    assert prometheus.query(rules["MlcdOperatorDown"]) == []
    ran.stop()
    assert returns_data(prometheus, rules["MlcdOperatorDown"], timeout=30)
