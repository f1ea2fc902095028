"""The operator against the real API server, run as its own ServiceAccount (deploy/: the
cluster-wide overlay with the peering component)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest

from operator_process import (
    ACCOUNT,
    NAMESPACE,
    OperatorProcess,
    Operators,
    Pipelines,
    install_operator,
)
from testenv.cluster import Cluster


@pytest.fixture(scope="session")
def mlcd_cluster(apiserver: Cluster) -> Cluster:
    """The CRD, the operator's namespace, ServiceAccount, RBAC and peering objects."""
    install_operator(apiserver)
    return apiserver


@pytest.fixture(scope="session")
def operator_kubeconfig(
    mlcd_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """A kubeconfig holding the operator ServiceAccount's token, nothing more."""
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    return mlcd_cluster.token_kubeconfig(NAMESPACE, ACCOUNT, path)


@pytest.fixture
def start_operator(
    operator_kubeconfig: pathlib.Path, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OperatorProcess]]:
    """Starts operators for one test; all stopped (and their model servers) afterwards."""
    with Operators(operator_kubeconfig, tmp_path, request) as operators:
        yield operators.start


@pytest.fixture
def pipelines(mlcd_cluster: Cluster) -> Iterator[Pipelines]:
    namespace = mlcd_cluster.create_namespace(prefix="mp-")
    pipelines = Pipelines(mlcd_cluster, namespace)
    yield pipelines
    pipelines.remove()


@pytest.fixture
def other_tenant(mlcd_cluster: Cluster) -> Iterator[Pipelines]:
    """ModelPipelines in a second namespace, for tests of two tenants."""
    namespace = mlcd_cluster.create_namespace(prefix="mp-")
    pipelines = Pipelines(mlcd_cluster, namespace)
    yield pipelines
    pipelines.remove()
