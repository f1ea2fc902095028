"""Fault injection of the local model server, and the shadow comparison's disagreement metric."""

from __future__ import annotations

import pathlib
import random
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from mlcd.domain.rollout import resolve
from mlcd.metrics.prometheus import PrometheusProvider
from mlcd.ports import PipelineKey
from mlcd.serving.faults import Faults
from mlcd.serving.router.haproxy import LocalRouter
from rollout.servers import MODEL, ModelServer, request_body, serve, top_class
from testenv.prometheus import PrometheusAPI


def test_the_fault_option_is_parsed_or_refused_naming_the_item():
    assert Faults.parse("error=0.05, slow=0.5,delay=400ms,wrong=1,seed=3") == Faults(
        error=0.05, slow=0.5, delay=0.4, wrong=1.0, seed=3
    )
    assert not Faults.parse("").any
    with pytest.raises(ValueError, match="error must be in"):
        Faults.parse("error=2")
    with pytest.raises(ValueError, match="unknown fault 'timeout'"):
        Faults.parse("timeout=1")


@pytest.fixture(scope="module")
def faulty(models: pathlib.Path) -> Iterator[ModelServer]:
    """Version 1 answering half its requests with an error and half too late, every one wrong."""
    faults = "error=0.5,slow=0.5,delay=300ms,wrong=1,seed=11"
    yield from serve(models, "1", "faulty", MLCD_SERVING_FAULTS=faults)


def test_injected_errors_slow_answers_and_wrong_predictions(
    faulty: ModelServer, stable: ModelServer
) -> None:
    # The server draws error, then slow, for each request, from its own seeded generator.
    draw = random.Random(11)
    expected = []
    for _ in range(30):
        error = draw.random() < 0.5
        slow = not error and draw.random() < 0.5
        if not error:
            draw.random()  # the wrong-prediction draw (rate 1: always wrong)
        expected.append((error, slow))
    with httpx.Client(timeout=30) as client:
        for i, (error, slow) in enumerate(expected):
            started = time.monotonic()
            response = faulty.infer(client, seed=i)
            took = time.monotonic() - started
            if error:
                assert response.status_code == 500, response.text
                continue
            assert response.status_code == 200
            if slow:  # (an answer on time may be late too on a busy machine: not asserted)
                assert took >= 0.3, (i, took)
            right = top_class(stable.infer(client, seed=i))
            assert top_class(response) != right  # the same model, shifted by one class
    # Health and metadata are not faulted: a faulty model still looks ready.
    assert httpx.get(f"{faulty.url}/v2/models/{MODEL}/ready").status_code == 200


@pytest.fixture(scope="module")
def shadow(models: pathlib.Path, stable: ModelServer) -> Iterator[ModelServer]:
    """Version 3 (the stable model's twin) answering 30 % wrong, comparing with version 1."""
    yield from serve(
        models,
        "3",
        "shadow",
        MLCD_SERVING_FAULTS="wrong=0.3,seed=5",
        MLCD_SERVING_SHADOW_OF=str(models / "pointer-1.json"),
    )


def test_the_disagreement_metric_counts_exactly_the_wrong_answers(
    tmp_path: pathlib.Path,
    prometheus: PrometheusAPI,
    stable: ModelServer,
    shadow: ModelServer,
) -> None:
    router = LocalRouter(tmp_path / "home", targets_dir=prometheus.targets_dir)
    key = PipelineKey("team-s", "clf")
    try:
        url = router.reconcile(key, stable.url, shadow.url)
        router.set_mirror(key, True)
        prometheus.wait_for('up{mlcd_server="team-s.clf.candidate"} == 1')
        sent = 200
        with httpx.Client(timeout=30) as client:
            for i in range(sent):
                body = request_body(rows=1, seed=i)
                assert client.post(f"{url}/v2/models/{MODEL}/infer", json=body).status_code == 200
        deadline = time.monotonic() + 20
        while shadow.metric("mlcd_shadow_predictions_total") < sent:
            assert time.monotonic() < deadline, "not every mirrored request was compared"
            time.sleep(0.2)
        # The k-th request the shadow answered drew the k-th number of its generator.
        draw = random.Random(5)
        wrong = sum(draw.random() < 0.3 for _ in range(sent))
        assert shadow.metric("mlcd_shadow_predictions_total") == sent
        assert shadow.metric("mlcd_shadow_disagreements_total") == wrong
        assert shadow.metric("mlcd_shadow_skipped_total") == 0

        targets = router.targets(key)
        values = {"canary": targets.canary, "stable": targets.stable, "namespace": "team-s"}
        values["interval"] = "1m"
        with PrometheusProvider(prometheus.url) as provider:
            deadline = time.monotonic() + 20
            while True:
                share = provider.query(resolve(targets.builtins.shadow_disagreement, values))
                if share is not None and abs(share - wrong / sent) < 0.02:
                    break
                assert time.monotonic() < deadline, (share, wrong / sent)
                time.sleep(0.5)
            mirrored = provider.query(resolve(targets.builtins.shadow_requests, values))
            assert mirrored is not None and mirrored > 0
    finally:
        router.finalize(key)


def test_a_batch_counts_each_of_its_rows(models: pathlib.Path, stable: ModelServer) -> None:
    env = {"MLCD_SERVING_SHADOW_OF": str(models / "pointer-1.json")}
    twin = ModelServer(models, models / "pointer-3.json", env, name="twin").wait_ready()
    try:
        with httpx.Client(timeout=30) as client:
            body = request_body(rows=8, seed=1)
            answer = client.post(f"{twin.url}/v2/models/{MODEL}/infer", json=body)
            assert np.asarray(answer.json()["outputs"][0]["shape"]).tolist() == [8, 4]
        deadline = time.monotonic() + 10
        while twin.metric("mlcd_shadow_predictions_total") < 8:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert twin.metric("mlcd_shadow_disagreements_total") == 0  # the same model
    finally:
        twin.stop()
