"""``mlcd operator --serving kserve`` end to end on the simulated node: the real operator process
as its ServiceAccount (deploy/ with its kserve component), KServe's own controller, the model
repository in MinIO, Prometheus deciding the rollouts.

The pipelines train with the numpy test trainer (seconds) and publish to MinIO; the operator
creates the InferenceService, KServe reconciles it. Pods do not execute on the simulated node,
so the predictor pods and the Gateway are played on loopback (``played.py``): each predictor
Deployment KServe creates gets the runtime program serving its version, scraped by Prometheus
with the pod's labels, and requests go to the HTTPRoute's backends by weight. Everything the
operator and KServe do is real; tests/kserve/test_kserve_real_node.py runs the same on the
real node.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kserve_helpers import (
    ISVC,
    conditions,
    get_isvc,
    kserve_pipeline,
    kubectl_wait_ready,
    minio_secret,
    predictors,
)
from kubernetes import client
from played import PlayedPredictors, PlayedTraffic

from helpers import wait_for
from mlcd.domain import kserve as rules
from operator_process import (
    ACCOUNT,
    NAMESPACE,
    OperatorProcess,
    Operators,
    Pipelines,
    install_operator,
)
from testenv.cluster import Cluster
from testenv.kube import KubeAPIServer
from testenv.minio import MinIO
from testenv.prometheus import PrometheusAPI
from testenv.stack import Stack

ROUTE = "mlcd-digits"
#: Steps of 20, 50 and 100 %, an analysis every 4 s, at least 5 requests each.
ROLLOUT = {
    "steps": [20, 50, 100],
    "interval": "4s",
    "minSamples": 5,
    "failureThreshold": 1,
    "progressDeadline": "60s",
    "metrics": [{"name": "success-rate", "min": 0.95}],
}


def trigger(pipelines: Pipelines, value: str) -> None:
    pipelines.patch("digits", {"metadata": {"annotations": {"mlcd.io/trigger": value}}})


def route_weights(api: client.ApiClient, namespace: str) -> dict[str, int]:
    try:
        route = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", namespace, "httproutes", ROUTE
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    refs = route["spec"]["rules"][0]["backendRefs"]
    return {r["name"]: int(r["weight"]) for r in refs}


class RouteWatch:
    """The HTTPRoute's weights as they change, looked at every 0.2 s while a test runs."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.seen: list[dict[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            weights = route_weights(self.api, self.namespace)
            if weights and (not self.seen or self.seen[-1] != weights):
                self.seen.append(weights)

    def candidate(self, service: str) -> list[int]:
        """The weights ``service`` had, each change once (0 while it was not a backend)."""
        weights = [w.get(service, 0) for w in self.seen]
        return [w for i, w in enumerate(weights) if i == 0 or w != weights[i - 1]]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def rollout_of(pipelines: Pipelines) -> dict[str, Any]:
    return pipelines.status("digits").get("rollout") or {}


def finished_run(pipelines: Pipelines, run: int, timeout: float = 240) -> dict[str, Any]:
    """The ``run``-th run once it has ended (1-based)."""
    runs: list[dict[str, Any]] = pipelines.wait_runs("digits", run, timeout=timeout)
    return runs[run - 1]


@pytest.fixture
def played(
    api: client.ApiClient,
    pipelines: Pipelines,
    prometheus: PrometheusAPI,
    minio: MinIO,
    tmp_path: pathlib.Path,
) -> Iterator[Callable[..., tuple[PlayedPredictors, PlayedTraffic]]]:
    """Plays the namespace's predictor pods and its Gateway's traffic (see played.py)."""
    started: list[tuple[PlayedPredictors, PlayedTraffic]] = []

    def play(faults: dict[str, str] | None = None) -> tuple[PlayedPredictors, PlayedTraffic]:
        namespace = pipelines.namespace
        folder = tmp_path / "predictors"
        running = PlayedPredictors(api, namespace, prometheus, minio, folder, faults or {})
        traffic = PlayedTraffic(api, namespace, ROUTE, running.start())
        started.append((running, traffic.start()))
        return running, traffic

    yield play
    for running, traffic in started:
        traffic.stop()
        running.stop()


def test_serves_then_rolls_out_through_the_steps_and_resumes_after_a_kill(
    cluster: Cluster,
    api: client.ApiClient,
    pipelines: Pipelines,
    operator: Callable[..., OperatorProcess],
    played: Callable[..., tuple[PlayedPredictors, PlayedTraffic]],
    minio: MinIO,
    digits_file: pathlib.Path,
) -> None:
    namespace = pipelines.namespace
    running, traffic = played()
    first = operator(namespace)
    created = pipelines.create(kserve_pipeline(namespace, digits_file, minio, ROLLOUT))

    # The first model is served at once: the operator creates the InferenceService, KServe
    # reconciles it to Ready, and the ModelPipeline is Ready with the InferenceService's URL.
    kubectl_wait_ready(cluster, namespace, 240)
    status = pipelines.status("digits")
    isvc = get_isvc(api, namespace, ISVC)
    assert isvc is not None and conditions(isvc)["Ready"] == "True"
    assert status["serving"]["version"] == "1"
    assert (
        status["serving"]["url"] == isvc["status"]["url"] == f"http://mnist-{namespace}.example.com"
    )
    predictor = isvc["spec"]["predictor"]
    assert predictor["name"] == "v1"
    assert predictor["model"]["storageUri"] == f"s3://{minio.bucket}/{namespace}/mnist/1/"
    assert predictor["model"]["runtime"] == "mlcd-onnx"
    [owner] = isvc["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("ModelPipeline", created["metadata"]["uid"])
    assert route_weights(api, namespace) == {"mnist-v1-predictor": 100}

    # A second promoted model rolls out: KServe creates the candidate's predictor beside the
    # stable one, and the route's weights follow the steps.
    watch = RouteWatch(api, namespace)
    trigger(pipelines, "2")
    wait_for(
        "the rollout at step 2",
        lambda: running.check() or rollout_of(pipelines).get("step") == 2,
        timeout=240,
        interval=0.2,
    )
    assert set(predictors(api, namespace)) == {"mnist-v1-predictor", "mnist-v2-predictor"}
    services = {
        s.metadata.name for s in client.CoreV1Api(api).list_namespaced_service(namespace).items
    }
    assert "mnist-v2-predictor" in services
    candidate_uid = predictors(api, namespace)["mnist-v2-predictor"].metadata.uid

    # Killed at step 2; restarted, it goes on from step 2, not from the start.
    first.kill9()
    before = rollout_of(pipelines)
    assert before["step"] == 2 and before["phase"] == "Progressing"
    assert route_weights(api, namespace) == {"mnist-v1-predictor": 50, "mnist-v2-predictor": 50}
    operator(namespace)
    run = finished_run(pipelines, 2)
    assert run["result"] == "promoted", run
    after = rollout_of(pipelines)
    assert after["phase"] == "Promoted", after
    assert [s["step"] for s in after["steps"]] == [1, 2, 3]  # no step twice
    assert [s["weight"] for s in after["steps"]] == [20, 50, 100]
    assert all(s["analyses"] for s in after["steps"])
    assert pipelines.reasons("digits").count("RolloutStarted") == 1

    # Promoted: one predictor, the new version's, the one that served the candidate.
    wait_for(
        "the old predictor removed",
        lambda: set(predictors(api, namespace)) == {"mnist-v2-predictor"},
        timeout=60,
    )
    assert predictors(api, namespace)["mnist-v2-predictor"].metadata.uid == candidate_uid
    isvc = get_isvc(api, namespace, ISVC)
    assert isvc is not None and "canary" not in isvc["spec"]
    assert isvc["spec"]["predictor"]["name"] == "v2"
    assert route_weights(api, namespace) == {"mnist-v2-predictor": 100}
    watch.stop()
    assert watch.candidate("mnist-v2-predictor") == [0, 20, 50, 100], watch.seen
    pipelines.wait_condition("digits", "Ready", timeout=60)
    assert pipelines.status("digits")["serving"]["version"] == "2"
    assert traffic.answered[("mnist-v2-predictor", 200)] > 0

    # Deleting the pipeline deletes the InferenceService first: the operator's finalizer
    # holds the ModelPipeline until it is gone.
    pipelines.delete("digits")
    wait_for("the pipeline gone", lambda: not _exists(pipelines), timeout=120)
    assert get_isvc(api, namespace, ISVC) is None
    assert route_weights(api, namespace) == {}
    core = client.CoreV1Api(api)
    assert "mlcd-digits-s3" not in {
        s.metadata.name for s in core.list_namespaced_secret(namespace).items
    }
    wait_for("its predictor removed", lambda: not predictors(api, namespace), timeout=60)


def _exists(pipelines: Pipelines) -> bool:
    try:
        pipelines.get("digits")
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_bad_metrics_roll_the_candidate_back_and_leave_the_stable_one_untouched(
    api: client.ApiClient,
    pipelines: Pipelines,
    operator: Callable[..., OperatorProcess],
    played: Callable[..., tuple[PlayedPredictors, PlayedTraffic]],
    minio: MinIO,
    digits_file: pathlib.Path,
) -> None:
    namespace = pipelines.namespace
    # Version 2's model server answers half of its requests with errors.
    played({"2": "error=0.5,seed=3"})
    operator(namespace)
    pipelines.create(kserve_pipeline(namespace, digits_file, minio, ROLLOUT))
    pipelines.wait_condition("digits", "Ready", timeout=240)
    stable = predictors(api, namespace)["mnist-v1-predictor"]

    trigger(pipelines, "2")
    run = finished_run(pipelines, 2)
    assert run["result"] == "rejected", run
    rollout = rollout_of(pipelines)
    assert rollout["phase"] == "RolledBack", rollout
    assert "success-rate" in rollout["reason"]
    [failed] = [r for r in rollout["lastAnalysis"] if r["metric"] == "success-rate"]
    assert failed["verdict"] == "fail" and failed["value"] < 0.95
    assert "RolledBack" in pipelines.reasons("digits")

    wait_for(
        "the candidate removed",
        lambda: set(predictors(api, namespace)) == {"mnist-v1-predictor"},
        timeout=60,
    )
    after = predictors(api, namespace)["mnist-v1-predictor"]
    assert (after.metadata.uid, after.metadata.generation) == (
        stable.metadata.uid,
        stable.metadata.generation,
    )
    isvc = get_isvc(api, namespace, ISVC)
    assert isvc is not None and "canary" not in isvc["spec"]
    assert isvc["spec"]["predictor"]["name"] == "v1"
    assert route_weights(api, namespace) == {"mnist-v1-predictor": 100}
    status = pipelines.status("digits")
    assert status["serving"]["version"] == "1"
    pipelines.wait_condition("digits", "Ready", timeout=60)


def test_an_inferenceservice_that_never_becomes_ready(
    cluster: Cluster,
    api: client.ApiClient,
    pipelines: Pipelines,
    operator: Callable[..., OperatorProcess],
    minio: MinIO,
    digits_file: pathlib.Path,
) -> None:
    """Two namespaces, each with a pod quota: where no predictor pod may run, the first serve
    holds and the conditions say why in KServe's words; where only the stable one may, the
    candidate never becomes ready, the rollout fails at its deadline and the stable predictor
    is left as it was."""
    held = Pipelines(cluster, cluster.create_namespace(prefix="kserve-op-"))
    try:
        minio_secret(api, held.namespace, minio)
        core = client.CoreV1Api(api)
        for namespace, pods in ((held.namespace, "0"), (pipelines.namespace, "1")):
            quota = {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": pods}}}
            core.create_namespaced_resource_quota(namespace, quota)
        rollout = {**ROLLOUT, "progressDeadline": "15s"}
        operator(pipelines.namespace, held.namespace)
        for target in (pipelines, held):
            target.create(kserve_pipeline(target.namespace, digits_file, minio, rollout))

        # The first serve holds: the run waits in stage serve with KServe's reason.
        def holding() -> dict[str, Any] | None:
            for condition in held.status("digits").get("conditions", []):
                message = condition["message"]
                if (
                    condition["type"] == "Training"
                    and "not ready" in message
                    and "Pending" not in message
                ):
                    return condition
            return None

        training = wait_for("the first serve to hold", holding, timeout=240)
        assert "stage serve" in training["message"]
        assert "FailedCreate" in training["message"] and "exceeded quota" in training["message"]
        assert "PromotionRetrying" in held.reasons("digits")
        status = held.status("digits")
        assert "serving" not in status
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False"
        assert conditions(get_isvc(api, held.namespace, ISVC)).get("Ready") != "True"

        # The rollout of a candidate that never becomes ready fails at its deadline.
        pipelines.wait_condition("digits", "Ready", timeout=240)
        stable = predictors(api, pipelines.namespace)["mnist-v1-predictor"]
        trigger(pipelines, "2")
        run = finished_run(pipelines, 2)
        assert run["result"] == "failed", run
        assert "not ready within progressDeadline" in run["reason"]
        rollout_status = rollout_of(pipelines)
        assert rollout_status["phase"] == "Failed"
        assert "CandidateNeverReady" in pipelines.reasons("digits")
        degraded = pipelines.wait_condition("digits", "Degraded", timeout=30)
        assert "not ready within progressDeadline" in degraded["message"]
        wait_for(
            "the candidate removed",
            lambda: set(predictors(api, pipelines.namespace)) == {"mnist-v1-predictor"},
            timeout=60,
        )
        after = predictors(api, pipelines.namespace)["mnist-v1-predictor"]
        assert (after.metadata.uid, after.metadata.generation) == (
            stable.metadata.uid,
            stable.metadata.generation,
        )
        assert pipelines.status("digits")["serving"]["version"] == "1"
        pipelines.wait_condition("digits", "Ready", timeout=60)
    finally:
        cluster.delete_namespace(held.namespace)


def test_kserve_not_installed_is_a_clear_condition_and_no_crash_loop(
    minio: MinIO,
    digits_file: pathlib.Path,
    tmp_path: pathlib.Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> None:
    # A cluster of its own (etcd, an API server and its controllers) that has never seen
    # KServe, with the operator installed as deploy/ installs it.
    bare = Stack(tmp_path_factory.mktemp("bare"))
    try:
        bare.up("apiserver")
        apiserver = bare.component("kube-apiserver")
        assert isinstance(apiserver, KubeAPIServer)
        cluster = Cluster(apiserver)
        cluster.kubectl("create", "namespace", "kserve")  # the kserve component's Role is there
        install_operator(cluster, ["kserve"])
        kubeconfig = cluster.token_kubeconfig(NAMESPACE, ACCOUNT, tmp_path / "kubeconfig")
        namespace = cluster.create_namespace(prefix="bare-")
        with cluster.api_client() as api:
            minio_secret(api, namespace, minio)
        pipelines = Pipelines(cluster, namespace)
        with Operators(kubeconfig, tmp_path, request) as operators:
            started = operators.start(f"--namespace={namespace}", env={"MLCD_SERVING": "kserve"})
            rollout = {"steps": [100]}
            pipelines.create(kserve_pipeline(namespace, digits_file, minio, rollout))
            invalid = pipelines.wait_condition("digits", "SpecValid", "False", timeout=60)
            assert invalid["message"] == (
                "spec.serving.inferenceService: the cluster does not serve "
                "inferenceservices.serving.kserve.io (serving.kserve.io/v1beta1): install "
                "KServe v0.20 or newer (serving.kserve.io/v1beta1 InferenceService)"
            )
            status = pipelines.status("digits")
            assert status["phase"] == "Invalid" and not status.get("activeRuns")
            assert pipelines.reasons("digits").count("InvalidSpec") == 1
            # No crash loop: the operator keeps running and keeps its word.
            version = pipelines.settled_version("digits")
            time.sleep(4)
            assert started.proc is not None and started.proc.poll() is None
            assert pipelines.get("digits")["metadata"]["resourceVersion"] == version
            # Nothing to clean up: the pipeline goes at once.
            pipelines.delete("digits")
            wait_for("the pipeline gone", lambda: not _exists(pipelines), timeout=30)
            assert "Traceback" not in started.tail(400)
    finally:
        bare.stop()


def test_serverless_mode_is_the_operators_choice_and_knative_is_not_faked(
    api: client.ApiClient,
    pipelines: Pipelines,
    operator: Callable[..., OperatorProcess],
    minio: MinIO,
    digits_file: pathlib.Path,
) -> None:
    """Knative cannot run here: the operator told to use Serverless creates the
    InferenceService in that mode (one unnamed predictor, no route of its own), and since KServe
    cannot make it ready, the first serve holds saying so; the Serverless canary patches are
    checked in test_kserve_serving.py and test_kserve_router.py."""
    namespace = pipelines.namespace
    operator(namespace, env={"MLCD_KSERVE_DEPLOYMENT_MODE": "Serverless"})
    pipelines.create(kserve_pipeline(namespace, digits_file, minio, ROLLOUT))
    isvc = wait_for(
        "the InferenceService", lambda: get_isvc(api, namespace, ISVC), timeout=240, interval=0.5
    )
    annotations = isvc["metadata"]["annotations"]
    assert rules.parse_mode(annotations[rules.MODE_ANNOTATION]) == "Knative"
    assert "name" not in isvc["spec"]["predictor"] and "canary" not in isvc["spec"]

    def holding() -> dict[str, Any] | None:
        for condition in pipelines.status("digits").get("conditions", []):
            if condition["type"] == "Training" and "not ready yet" in condition["message"]:
                return condition
        return None

    training = wait_for("the first serve to hold", holding, timeout=60)
    assert "stage serve" in training["message"]
    assert "serving" not in pipelines.status("digits")
    assert route_weights(api, namespace) == {}
