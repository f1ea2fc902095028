"""The local router: a real HAProxy before real KServe model servers, under load on loopback."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import httpx
import pytest

from mlcd.domain.rollout import resolve
from mlcd.metrics.prometheus import PrometheusProvider
from mlcd.ports import PipelineKey, Routes
from mlcd.serving.router.haproxy import LocalRouter
from mlcd.serving.router.replay import Replay
from rollout.servers import MODEL, ModelServer, samples, top_class
from testenv.prometheus import PrometheusAPI

KEY = PipelineKey("team-a", "clf")


def _served_by(router: LocalRouter, key: PipelineKey) -> dict[str, int]:
    """Requests each server answered, from HAProxy's own counters."""
    stats = router.stats(key)
    return {role: int(stats[role]["stot"]) for role in ("stable", "candidate")}


def _wait_ready(router: LocalRouter, key: PipelineKey) -> None:
    """Until HAProxy's health checks see the candidate up (a second or two after it attaches)."""
    deadline = time.monotonic() + 10
    while not router.candidate_ready(key):
        assert time.monotonic() < deadline, "HAProxy never saw the candidate up"
        time.sleep(0.1)


def _send(url: str, count: int, seed: int = 0) -> list[httpx.Response]:
    with httpx.Client(timeout=30) as client:
        return [
            client.post(f"{url}/v2/models/{MODEL}/infer", json=_body(seed + i))
            for i in range(count)
        ]


def _body(seed: int) -> dict[str, object]:
    from rollout.servers import request_body

    return request_body(seed=seed)


def test_routes_follow_the_weights(
    router: LocalRouter, stable: ModelServer, candidate: ModelServer
) -> None:
    url = router.reconcile(KEY, stable.url, None)
    assert router.routes(KEY) == Routes(canary_weight=0, mirror=False, candidate=False)
    assert all(r.status_code == 200 for r in _send(url, 10))
    assert _served_by(router, KEY) == {"stable": 10, "candidate": 0}

    assert router.reconcile(KEY, stable.url, candidate.url) == url
    _wait_ready(router, KEY)
    for weight in (20, 50, 100, 0):
        router.set_weights(KEY, weight)
        assert router.routes(KEY) == Routes(canary_weight=weight, mirror=False, candidate=True)
        before = _served_by(router, KEY)
        responses = _send(url, 100, seed=weight)
        assert all(r.status_code == 200 for r in responses)
        after = _served_by(router, KEY)
        share = (after["candidate"] - before["candidate"]) / 100
        assert abs(share - weight / 100) <= 0.02, (weight, before, after)


def test_the_candidate_is_detached_with_no_traffic(
    router: LocalRouter, stable: ModelServer, candidate: ModelServer
) -> None:
    url = router.reconcile(KEY, stable.url, candidate.url)
    router.set_weights(KEY, 50)
    router.reconcile(KEY, stable.url, None)
    assert router.routes(KEY) == Routes(canary_weight=0, mirror=False, candidate=False)
    assert not router.candidate_ready(KEY)
    with pytest.raises(Exception, match="no candidate"):
        router.set_weights(KEY, 10)
    stable_class = {top_class(r) for r in _send(stable.url, 5)}
    assert {top_class(r) for r in _send(url, 5)} == stable_class


def test_no_request_fails_while_the_weights_change_20_times(
    router: LocalRouter, stable: ModelServer, candidate: ModelServer
) -> None:
    url = router.reconcile(KEY, stable.url, candidate.url)
    _wait_ready(router, KEY)
    statuses: Counter[int | str] = Counter()
    stop = threading.Event()

    def load(seed: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(2000):  # bounded; ends when the weights are done changing
                if stop.is_set():
                    return
                try:
                    response = client.post(f"{url}/v2/models/{MODEL}/infer", json=_body(seed + i))
                    statuses[response.status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

    threads = [threading.Thread(target=load, args=(1000 * n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    draw = random.Random(7)
    try:
        for _ in range(20):
            router.set_weights(KEY, draw.choice([0, 5, 10, 20, 50, 80, 100]))
            time.sleep(0.15)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) == {200}, statuses
    assert statuses[200] >= 40
    served = _served_by(router, KEY)
    assert served["stable"] > 0 and served["candidate"] > 0


def test_mirrored_requests_reach_the_candidate_and_its_answers_are_discarded(
    router: LocalRouter, stable: ModelServer, candidate: ModelServer
) -> None:
    url = router.reconcile(KEY, stable.url, candidate.url)
    router.set_mirror(KEY, True)
    assert router.routes(KEY) == Routes(canary_weight=0, mirror=True, candidate=True)
    before = candidate.metric("request_predict_seconds_count")
    responses = _send(url, 40, seed=5)
    direct = _send(stable.url, 40, seed=5)
    # Every answer is the stable model's (the two models disagree on these inputs).
    assert [r.json()["outputs"] for r in responses] == [r.json()["outputs"] for r in direct]
    assert [top_class(r) for r in _send(candidate.url, 40, seed=5)] != [
        top_class(r) for r in direct
    ]
    deadline = time.monotonic() + 10
    while candidate.metric("request_predict_seconds_count") - before < 40:
        assert time.monotonic() < deadline, "the mirror did not reach the candidate"
        time.sleep(0.1)
    assert _served_by(router, KEY)["candidate"] == 0  # no client request went there
    router.set_mirror(KEY, False)
    seen = candidate.metric("request_predict_seconds_count")
    _send(url, 10)
    time.sleep(0.5)
    assert candidate.metric("request_predict_seconds_count") == seen


def test_the_router_restarts_when_its_process_is_gone(
    router: LocalRouter, stable: ModelServer, candidate: ModelServer
) -> None:
    url = router.reconcile(KEY, stable.url, candidate.url)
    router.set_weights(KEY, 30)
    proxy = router.running(KEY)
    assert proxy is not None
    from mlcd.processes import kill_group

    kill_group(proxy.pid, grace=2)
    assert router.routes(KEY) is None  # what the rollout sees as drift, and restores
    assert router.reconcile(KEY, stable.url, candidate.url) == url
    router.set_weights(KEY, 30)
    assert router.routes(KEY) == Routes(canary_weight=30, mirror=False, candidate=True)


def test_two_pipelines_never_share_a_route(
    router: LocalRouter, stable: ModelServer, candidate: ModelServer
) -> None:
    other = PipelineKey("team-b", "clf")
    first = router.reconcile(KEY, stable.url, None)
    second = router.reconcile(other, candidate.url, None)
    assert first != second
    assert {top_class(r) for r in _send(second, 5)} == {
        top_class(r) for r in _send(candidate.url, 5)
    }
    assert router.targets(KEY).canary == "team-a.clf.candidate"
    assert router.targets(other).stable == "team-b.clf.stable"


def test_prometheus_scrapes_the_router_and_the_servers(
    tmp_path, prometheus: PrometheusAPI, stable: ModelServer, candidate: ModelServer
) -> None:
    router = LocalRouter(tmp_path / "home", targets_dir=prometheus.targets_dir)
    key = PipelineKey("team-p", "clf")
    try:
        url = router.reconcile(key, stable.url, candidate.url)
        _wait_ready(router, key)
        router.set_weights(key, 50)
        prometheus.wait_for('up{job="mlcd-router",mlcd_pipeline="clf",mlcd_namespace="team-p"}')
        prometheus.wait_for('up{mlcd_server="team-p.clf.candidate"} == 1')
        _send(url, 60)
        targets = router.targets(key)
        values = {"canary": targets.canary, "stable": targets.stable, "namespace": "team-p"}
        values["interval"] = "30s"
        builtins = targets.builtins
        with PrometheusProvider(prometheus.url) as provider:
            # Each target is scraped every second, not all at once: wait for all three.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                requests = provider.query(resolve(builtins.requests, values))
                p99 = provider.query(resolve(builtins.latency_p99, values))
                if requests is not None and requests >= 25 and p99 is not None:
                    break
                time.sleep(0.5)
            assert requests is not None and requests >= 25
            assert p99 is not None and 0 < p99 < 5
            assert provider.query(resolve(builtins.success_rate, values)) == 1.0
    finally:
        router.finalize(key)
    assert not (prometheus.targets_dir / "team-p.clf.json").exists()


def test_replay_sends_the_samples_through_the_router(
    router: LocalRouter, stable: ModelServer
) -> None:
    url = router.reconcile(KEY, stable.url, None)
    before = stable.metric("request_predict_seconds_count")
    with Replay(url, MODEL, samples(8), rate=40, threads=2, seconds=1.5) as replay:
        time.sleep(2.0)  # the replay ends by itself after 1.5 s
    assert replay.sent > 0 and set(replay.statuses) == {200}
    assert stable.metric("request_predict_seconds_count") - before == replay.sent
    assert _served_by(router, KEY)["stable"] == replay.sent
