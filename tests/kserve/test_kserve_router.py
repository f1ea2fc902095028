"""The KServe router against KServe's controller (v0.20, RawDeployment) and the Gateway API's
own CRDs: the HTTPRoute's weights follow a rollout's steps; promotion leaves one predictor, the
new version; rollback leaves the stable one untouched. The intents are carried out in the order
the rollout table emits them. Pods do not execute on the simulated node, so no request goes
through the route here: that is for the real node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kserve_helpers import custom, get_isvc, predictors, ref, secrets, settled
from kubernetes import client

from helpers import wait_for
from mlcd.domain import kserve as rules
from mlcd.domain.rollout import resolve
from mlcd.ports import PipelineKey, Routes, TrafficRouter
from mlcd.serving.kserve.api import FIELD_MANAGER, KubeAPI
from mlcd.serving.kserve.resources import Options, Pipeline
from mlcd.serving.kserve.router import KServeRouter, MirrorUnsupported
from mlcd.serving.kserve.serving import PipelineServing


@pytest.fixture
def key(pipeline: Pipeline) -> PipelineKey:
    return PipelineKey(pipeline.namespace, pipeline.name, pipeline.uid)


@pytest.fixture
def serving(kube: KubeAPI, pipeline: Pipeline) -> PipelineServing:
    return PipelineServing(kube, pipeline, secrets, Options(), ready_timeout=60, poll=0.2)


@pytest.fixture
def router(kube: KubeAPI, key: PipelineKey) -> Iterator[KServeRouter]:
    router = KServeRouter(kube)
    yield router
    router.finalize(key)


def route(api: client.ApiClient, key: PipelineKey) -> dict[str, Any]:
    obj: dict[str, Any] = custom(api).get_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", key.namespace, "httproutes", f"mlcd-{key.name}"
    )
    return obj


def backends(api: client.ApiClient, key: PipelineKey) -> list[tuple[str, int]]:
    [rule] = route(api, key)["spec"]["rules"]
    return [(b["name"], b["weight"]) for b in rule["backendRefs"]]


def written_by_mlcd(obj: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """The route's spec generation and mlcd's own entries in its managed fields (their time
    moves with every write of mlcd's that changed something)."""
    meta = obj["metadata"]
    mine = [m for m in meta.get("managedFields") or [] if m.get("manager") == FIELD_MANAGER]
    assert mine, "mlcd manages the route's fields"
    return meta["generation"], mine


def start_rollout(
    serving: PipelineServing, router: KServeRouter, key: PipelineKey
) -> tuple[str, str]:
    """What the operator does before a rollout: serve v1, route it; then the rollout's start
    intents (mirror off, weight 0, deploy the candidate)."""
    stable_url = serving.predictor_url(ref("1"))
    serving.serve(ref("1"))
    router.reconcile(key, stable_url, None)
    router.set_mirror(key, False)
    router.set_weights(key, 0)
    serving.deploy_candidate(ref("2"))
    candidate_url = serving.predictor_url(ref("2"))
    router.reconcile(key, stable_url, candidate_url)
    wait_for("the candidate ready", lambda: router.candidate_ready(key), timeout=60)
    return stable_url, candidate_url


def test_the_router_is_a_traffic_router(kube: KubeAPI) -> None:
    router: TrafficRouter = KServeRouter(kube)
    assert router is not None


def test_the_route_follows_the_steps_and_promotion_leaves_the_new_version(
    serving: PipelineServing,
    router: KServeRouter,
    key: PipelineKey,
    api: client.ApiClient,
    namespace: str,
) -> None:
    stable_url = serving.predictor_url(ref("1"))
    url = (serving.serve(ref("1")), router.reconcile(key, stable_url, None))
    assert url[0] == url[1] == f"http://mnist-{namespace}.example.com"
    obj = route(api, key)
    assert obj["spec"]["hostnames"] == [f"mnist-{namespace}.example.com"]
    [parent] = obj["spec"]["parentRefs"]
    assert (parent["namespace"], parent["name"]) == ("kserve", "kserve-ingress-gateway")
    [owner] = obj["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("InferenceService", "mnist")
    assert backends(api, key) == [("mnist-v1-predictor", 100)]
    assert router.routes(key) == Routes(0, False, False)

    start_rollout(serving, router, key)
    assert backends(api, key) == [("mnist-v1-predictor", 100), ("mnist-v2-predictor", 0)]
    assert router.routes(key) == Routes(0, False, True)
    targets = router.targets(key)
    assert (targets.namespace, targets.stable, targets.canary) == (
        namespace,
        "mnist-v1-predictor",
        "mnist-v2-predictor",
    )
    # The candidate's Service is the one the route sends its share to.
    service = client.CoreV1Api(api).read_namespaced_service("mnist-v2-predictor", namespace)
    assert [p.port for p in service.spec.ports] == [80]

    for step in (10, 50, 100):
        router.set_weights(key, step)
        assert backends(api, key) == [
            ("mnist-v1-predictor", 100 - step),
            ("mnist-v2-predictor", step),
        ]
        assert router.routes(key) == Routes(step, False, True)
        # KServe's own trafficPercent stays 0: in v0.21 it would route by it a second time.
        assert get_isvc(api, namespace, "mnist")["spec"]["canary"][0]["trafficPercent"] == 0

    # Promotion, as the rollout table orders it: mirror off, serve the candidate as stable,
    # weights to 0, remove the candidate.
    router.set_mirror(key, False)
    serving.promote()
    router.set_weights(key, 0)
    # Never a backend KServe is about to remove: the route follows the InferenceService.
    assert backends(api, key) == [("mnist-v2-predictor", 100)]
    router.reconcile(key, serving.predictor_url(ref("2")), None)
    assert backends(api, key) == [("mnist-v2-predictor", 100)]
    settled(serving, api, "mnist-v2-predictor", "the promotion")
    assert serving.current() == ref("2")
    assert router.routes(key) == Routes(0, False, False)


def test_rollback_leaves_the_stable_predictor_untouched(
    serving: PipelineServing,
    router: KServeRouter,
    key: PipelineKey,
    api: client.ApiClient,
    namespace: str,
) -> None:
    stable_url, _ = start_rollout(serving, router, key)
    before = predictors(api, namespace)["mnist-v1-predictor"]
    router.set_weights(key, 50)
    assert backends(api, key) == [("mnist-v1-predictor", 50), ("mnist-v2-predictor", 50)]

    # The rollout table's retreat: weights to 0, mirror off, the stable version served,
    # the candidate removed.
    router.set_weights(key, 0)
    assert backends(api, key) == [("mnist-v1-predictor", 100), ("mnist-v2-predictor", 0)]
    router.set_mirror(key, False)
    assert serving.serve(ref("1"))  # already served: nothing changes
    serving.rollback()
    router.reconcile(key, stable_url, None)
    assert backends(api, key) == [("mnist-v1-predictor", 100)]
    settled(serving, api, "mnist-v1-predictor", "the rollback")
    after = predictors(api, namespace)["mnist-v1-predictor"]
    assert (after.metadata.uid, after.metadata.generation) == (
        before.metadata.uid,
        before.metadata.generation,
    )
    assert serving.current() == ref("1")
    assert router.routes(key) == Routes(0, False, False)


def test_mirroring_is_reported_unsupported(
    serving: PipelineServing, router: KServeRouter, key: PipelineKey
) -> None:
    start_rollout(serving, router, key)
    with pytest.raises(MirrorUnsupported, match=r"shadowing .* is not supported"):
        router.set_mirror(key, True)
    router.set_mirror(key, False)
    routes = router.routes(key)
    assert routes is not None and routes.mirror is False


def test_reconcile_is_idempotent_and_keeps_the_weight(
    serving: PipelineServing, router: KServeRouter, key: PipelineKey, api: client.ApiClient
) -> None:
    stable_url, candidate_url = start_rollout(serving, router, key)
    router.set_weights(key, 50)
    before = written_by_mlcd(route(api, key))
    router.reconcile(key, stable_url, candidate_url)  # an operator restarted mid-rollout
    assert backends(api, key)[1] == ("mnist-v2-predictor", 50)
    # A Gateway controller (Traefik, once the real-node tests started it) writes the route's
    # status whenever it likes: what mlcd wrote, and when, is what must not change.
    assert written_by_mlcd(route(api, key)) == before


def test_no_route_before_there_is_an_inferenceservice(
    router: KServeRouter, key: PipelineKey
) -> None:
    assert router.routes(key) is None
    assert router.candidate_ready(key) is False


def test_the_route_goes_with_the_inferenceservice(
    serving: PipelineServing, router: KServeRouter, key: PipelineKey, api: client.ApiClient
) -> None:
    serving.serve(ref("1"))
    router.reconcile(key, serving.predictor_url(ref("1")), None)
    # There is a route to collect, and the InferenceService is its owner.
    assert backends(api, key) == [("mnist-v1-predictor", 100)]
    isvc = get_isvc(api, key.namespace, "mnist")
    assert isvc is not None
    owners = route(api, key)["metadata"].get("ownerReferences") or []
    assert [(o["kind"], o["uid"]) for o in owners] == [
        ("InferenceService", isvc["metadata"]["uid"])
    ]
    serving.stop()

    def gone() -> bool:
        items = custom(api).list_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", key.namespace, "httproutes"
        )["items"]
        return not items

    # Collected by the garbage collector (up to its 30 s discovery sync for new CRDs).
    wait_for("the HTTPRoute collected", gone, timeout=60)


def test_serverless_weights_are_kserve_canary_traffic_percent(
    kube: KubeAPI, serving: PipelineServing, key: PipelineKey, api: client.ApiClient, namespace: str
) -> None:
    # Knative cannot run here: the patches are what is checked.
    knative = PipelineServing(
        kube, serving.pipeline, secrets, Options(deployment_mode="Serverless")
    )
    router = KServeRouter(kube)
    knative.apply(ref("1"), ref("2"), 0)
    assert router.reconcile(key, "", "") == ""  # no route of mlcd's: KServe's own URL
    assert router.routes(key) == Routes(0, False, True)
    for step in (10, 50):
        router.set_weights(key, step)
        predictor = get_isvc(api, namespace, "mnist")["spec"]["predictor"]
        assert predictor["canaryTrafficPercent"] == step
        assert router.routes(key) == Routes(step, False, True)
    assert router.route(key) is None
    targets = router.targets(key)
    assert "serving_knative_dev_revision" in targets.builtins.latency_p99


def test_builtin_queries_name_the_predictors(
    serving: PipelineServing, router: KServeRouter, key: PipelineKey, namespace: str
) -> None:
    start_rollout(serving, router, key)
    targets = router.targets(key)
    values = {
        "canary": targets.canary,
        "stable": targets.stable,
        "namespace": namespace,
        "interval": "1m",
    }
    assert resolve(targets.builtins.success_rate, values) == (
        f'sum(increase(request_postprocess_seconds_count{{namespace="{namespace}",'
        f'app="isvc.mnist-v2-predictor"}}[1m])) / sum(increase(request_predict_seconds_count'
        f'{{namespace="{namespace}",app="isvc.mnist-v2-predictor"}}[1m]))'
    )
    assert rules.predictor_service("mnist", "v2") == targets.canary
