"""The rollout's built-in analysis on KServe: success-rate and latency-p99 over the metrics
KServe's model server exports, told apart by the predictor pods' labels.

Predictor pods do not execute on the simulated node, so each predictor's pod is played by the
very program its container runs (``python -m mlcd.serving.kserve.runtime``, KServe's
ModelServer with onnxruntime) on loopback, serving the version folder the storage initializer
would download. The real Prometheus scrapes them with the labels a cluster's scrape
configuration attaches to a pod (``namespace``, and the pod label ``app``); the names in the
queries come from KServe's own objects through the router."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from kserve_helpers import ref, secrets
from played import Predictor, version_folder

from helpers import wait_for
from mlcd.domain.rollout import resolve
from mlcd.metrics.prometheus import PrometheusProvider
from mlcd.ports import PipelineKey
from mlcd.processes import free_port
from mlcd.serving.kserve.api import KubeAPI
from mlcd.serving.kserve.resources import Options, Pipeline
from mlcd.serving.kserve.router import KServeRouter
from mlcd.serving.kserve.runtime import EXPECTED_SHA256
from mlcd.serving.kserve.serving import PipelineServing
from rollout.servers import request_body
from testenv.prometheus import PrometheusAPI

MODEL = "mnist"
REQUESTS = 40


@pytest.fixture
def predictors(tmp_path: pathlib.Path) -> Iterator[tuple[Predictor, Predictor]]:
    stable = Predictor(version_folder(tmp_path, "1", seed=1), "1", MODEL)
    # The candidate answers a quarter of its requests with errors, all of them 250 ms late.
    candidate = Predictor(
        version_folder(tmp_path, "2", seed=2), "2", MODEL, "error=0.25,slow=1,delay=250ms,seed=3"
    )
    try:
        wait_for("both runtimes ready", lambda: stable.ready() and candidate.ready(), 120)
        yield stable, candidate
    finally:
        stable.stop()
        candidate.stop()


def test_success_rate_and_latency_of_the_canary_and_the_stable_predictor(
    kube: KubeAPI,
    pipeline: Pipeline,
    prometheus: PrometheusAPI,
    predictors: tuple[Predictor, Predictor],
) -> None:
    key = PipelineKey(pipeline.namespace, pipeline.name, pipeline.uid)
    serving = PipelineServing(kube, pipeline, secrets, Options(), ready_timeout=60, poll=0.2)
    router = KServeRouter(kube)
    serving.serve(ref("1"))
    serving.deploy_candidate(ref("2"))
    router.reconcile(key, serving.predictor_url(ref("1")), serving.predictor_url(ref("2")))
    targets = router.targets(key)
    stable, candidate = predictors

    client = httpx.Client(timeout=10)
    jobs = []
    for predictor, deployment in ((stable, targets.stable), (candidate, targets.canary)):
        job = f"{pipeline.namespace}-{deployment}"
        labels = {"namespace": pipeline.namespace, "app": f"isvc.{deployment}"}
        prometheus.add_target(job, f"127.0.0.1:{predictor.port}", labels)
        jobs.append(job)
    try:

        def values(name: str, interval: str = "5m") -> dict[str, str]:
            return {
                "namespace": pipeline.namespace,
                "canary": name,
                "stable": targets.stable,
                "interval": interval,
            }

        def query(template: str, deployment: str) -> float | None:
            with PrometheusProvider(prometheus.url) as provider:
                return provider.query(resolve(template, values(deployment)))

        def seen(metric: str, deployment: str) -> float:
            found = query(f'max({metric}{{app="isvc.{{{{ canary }}}}"}})', deployment)
            return found or 0.0

        def infer(predictor: Predictor, seed: int) -> int:
            url = f"{predictor.url}/v2/models/{MODEL}/infer"
            code = client.post(url, json=request_body(seed=seed)).status_code
            assert code in (200, 500)
            return code

        # The model server's series appear with their first observation, and increase()
        # counts from the first scrape: first a few requests, until Prometheus has every
        # series, then the measured ones.
        infer(stable, 0)
        codes = set()
        while codes != {200, 500}:
            codes.add(infer(candidate, len(codes) + 100))
        for deployment in (targets.stable, targets.canary):
            for metric in ("request_predict_seconds_count", "request_postprocess_seconds_count"):
                wait_for(
                    f"{metric} of {deployment}",
                    lambda m=metric, d=deployment: seen(m, d),
                    30,
                )
        base = {
            d: seen("request_predict_seconds_count", d) for d in (targets.stable, targets.canary)
        }

        answered = {"1": 0, "2": 0}
        for i in range(REQUESTS):
            for predictor in predictors:
                answered[predictor.version] += infer(predictor, i) == 200
        assert answered["1"] == REQUESTS
        assert 0 < answered["2"] < REQUESTS
        wait_for(
            "Prometheus to see every request",
            lambda: all(
                seen("request_predict_seconds_count", d) >= base[d] + REQUESTS for d in base
            ),
            timeout=30,
        )
        builtins = targets.builtins
        canary_rate = query(builtins.success_rate, targets.canary)
        stable_rate = query(builtins.success_rate, targets.stable)
        assert canary_rate is not None and stable_rate is not None
        assert canary_rate == pytest.approx(answered["2"] / REQUESTS, abs=0.02)
        assert stable_rate == pytest.approx(1.0)
        requests = query(builtins.requests, targets.canary)
        assert requests is not None and requests >= REQUESTS * 0.9  # increase() extrapolates
        canary_p99 = query(builtins.latency_p99, targets.canary)
        stable_p99 = query(builtins.latency_p99, targets.stable)
        assert canary_p99 is not None and stable_p99 is not None
        assert canary_p99 >= 0.25 > stable_p99
    finally:
        client.close()
        for job in jobs:
            prometheus.remove_target(job)
        serving.stop()


def run_runtime(folder: pathlib.Path, expected: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != EXPECTED_SHA256}
    if expected:
        env[EXPECTED_SHA256] = expected
    argv = [sys.executable, "-m", "mlcd.serving.kserve.runtime", f"--model_name={MODEL}"]
    argv += [f"--model_dir={folder}", f"--http_port={free_port()}", "--host=127.0.0.1"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_the_runtime_refuses_a_version_the_inferenceservice_did_not_ask_for(
    tmp_path: pathlib.Path,
) -> None:
    folder = version_folder(tmp_path, "1", seed=1)
    result = run_runtime(folder, "0" * 64)
    assert result.returncode != 0
    assert f"the InferenceService asks for {'0' * 64}" in result.stderr


def test_the_runtime_refuses_a_model_that_differs_from_its_metadata(
    tmp_path: pathlib.Path,
) -> None:
    # A download that went wrong: the model is not the one metadata.json records.
    folder = version_folder(tmp_path, "1", seed=1)
    shutil.copy(version_folder(tmp_path / "other", "1", seed=9) / "model.onnx", folder)
    result = run_runtime(folder, None)
    assert result.returncode != 0
    assert "sha256 of version 1" in result.stderr + result.stdout
