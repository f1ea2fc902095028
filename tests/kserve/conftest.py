"""Shared pieces of the KServe tests: a namespace, the admin's clients, a pipeline to own things."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kserve_helpers import REPOSITORY, minio_secret
from kubernetes import client

from helpers import softmax_pipeline
from mlcd.k8s.kube import Kube
from mlcd.serving.kserve.api import KubeAPI
from mlcd.serving.kserve.resources import Pipeline
from operator_process import (
    ACCOUNT,
    NAMESPACE,
    OperatorProcess,
    Operators,
    Pipelines,
    install_operator,
)
from testenv.cluster import Cluster
from testenv.kserve import KServe
from testenv.minio import MinIO
from testenv.prometheus import PrometheusAPI

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster(kserve: KServe) -> Cluster:
    return kserve.cluster


@pytest.fixture(scope="session")
def pipelines_crd(cluster: Cluster) -> None:
    cluster.install_crds(ROOT / "crds")


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator's ServiceAccount with the rules the cluster-wide overlay and the kserve
    component (deploy/components/kserve) give it, and a kubeconfig holding its token, nothing
    more: a missing permission shows."""
    install_operator(cluster, ["kserve"])
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    return cluster.token_kubeconfig(NAMESPACE, ACCOUNT, path)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = cluster.create_namespace(prefix="kserve-")
    yield name
    cluster.delete_namespace(name)


@pytest.fixture
def api(cluster: Cluster) -> Iterator[client.ApiClient]:
    with cluster.api_client() as api_client:
        yield api_client


@pytest.fixture
def kube(cluster: Cluster) -> Iterator[KubeAPI]:
    """The REST client serving on KServe uses, logged in as the admin."""
    connection = Kube.connect(str(cluster.kubeconfig), connections=4)
    try:
        yield KubeAPI(connection.http)
    finally:
        connection.http.close()


@pytest.fixture
def pipeline(cluster: Cluster, pipelines_crd: None, namespace: str) -> Pipeline:
    """A ModelPipeline in the cluster, to own what serving creates."""
    body = softmax_pipeline(
        "s3://datasets/mnist.npz",
        artifacts=REPOSITORY.model_dump(by_alias=True, exclude_none=True),
    )
    body["metadata"] = {"name": "digits", "namespace": namespace}
    body["spec"]["serving"] = {"inferenceService": "mnist"}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    uid = cluster.kubectl(
        "get", "modelpipeline", "digits", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    return Pipeline(namespace, "digits", uid, "mnist", "mnist", REPOSITORY)


@pytest.fixture
def operator(
    operator_kubeconfig: pathlib.Path,
    prometheus: PrometheusAPI,
    tmp_path: pathlib.Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., OperatorProcess]]:
    """Starts ``mlcd operator`` serving on KServe, watching the given namespaces, analysing
    with the session's Prometheus; stopped after the test."""
    with Operators(operator_kubeconfig, tmp_path, request) as operators:

        def start(*namespaces: str, env: dict[str, str] | None = None) -> OperatorProcess:
            return operators.start(
                *[f"--namespace={n}" for n in namespaces],
                env={
                    "MLCD_SERVING": "kserve",
                    "MLCD_PROMETHEUS_URL": prometheus.url,
                    **(env or {}),
                },
            )

        yield start


@pytest.fixture
def pipelines(
    cluster: Cluster, api: client.ApiClient, minio: MinIO, request: pytest.FixtureRequest
) -> Iterator[Pipelines]:
    """ModelPipelines in a namespace of their own (named after the module's NAMESPACE_PREFIX),
    with the MinIO Secret they reference."""
    prefix = getattr(request.module, "NAMESPACE_PREFIX", "kserve-op-")
    namespace = cluster.create_namespace(prefix=prefix)
    minio_secret(api, namespace, minio)
    pipelines = Pipelines(cluster, namespace)
    yield pipelines
    pipelines.remove()
