"""Serving and a rollout on KServe as the operator's ServiceAccount, with the RBAC of the
cluster-wide overlay and the kserve component (deploy/components/kserve) and nothing more: a
missing permission shows here. The chart's `operator.serving: kserve` renders the same rules
(tests/chart/test_kustomize.py)."""

from __future__ import annotations

import pathlib

from kserve_helpers import KEYS, get_isvc, ref
from kubernetes import client

from helpers import wait_for
from mlcd.k8s.kube import Kube
from mlcd.ports import PipelineKey, Routes
from mlcd.serving.kserve.api import KubeAPI
from mlcd.serving.kserve.resources import Options, Pipeline
from mlcd.serving.kserve.router import KServeRouter
from mlcd.serving.kserve.serving import PipelineServing, read_kserve_config


def test_serving_and_a_rollout_with_the_operators_permissions(
    operator_kubeconfig: pathlib.Path,
    pipeline: Pipeline,
    api: client.ApiClient,
    namespace: str,
) -> None:
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": "minio-creds"}, "stringData": KEYS}
    )
    connection = Kube.connect(str(operator_kubeconfig), connections=2)
    try:
        kube = KubeAPI(connection.http)
        serving = PipelineServing(
            kube, pipeline, connection.secrets(namespace), Options(), ready_timeout=60, poll=0.2
        )
        router = KServeRouter(kube)
        key = PipelineKey(namespace, pipeline.name, pipeline.uid)
        # Refused, KServe's ConfigMap would read as empty and KServe's defaults would apply.
        assert "deploy" in read_kserve_config(kube)

        serving.serve(ref("1"))
        router.reconcile(key, serving.predictor_url(ref("1")), None)
        serving.deploy_candidate(ref("2"))
        router.reconcile(key, serving.predictor_url(ref("1")), serving.predictor_url(ref("2")))
        wait_for("the candidate ready", lambda: router.candidate_ready(key), timeout=60)
        router.set_weights(key, 50)
        assert router.routes(key) == Routes(50, False, True)
        assert router.targets(key).canary == "mnist-v2-predictor"
        serving.promote()
        router.set_weights(key, 0)
        router.reconcile(key, serving.predictor_url(ref("2")), None)
        serving.wait(lambda o: o.readiness.ready and o.candidate is None, "the promotion")
        assert serving.current() == ref("2")

        router.finalize(key)
        serving.stop()
        wait_for("deleted", lambda: get_isvc(api, namespace, "mnist") is None, timeout=30)
    finally:
        connection.http.close()
