"""The Kubeflow engine's tests: the fake KFP API, the real training controllers on the real
API server with kwok's nodes, and the tests playing what cannot run here (Katib's
controller, and the work inside pods, which do not execute on kwok's nodes)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
from kubeflow_helpers import KubeflowAPI

from fakes.kfp_api import FakeKFP
from testenv.cluster import Cluster


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from mnist_trainer.dataset import write

    path = tmp_path_factory.mktemp("data") / "digits.npz"
    write(path)
    return path


@pytest.fixture
def namespace(apiserver: Cluster) -> Iterator[str]:
    name = apiserver.create_namespace(prefix="kf-")
    yield name
    apiserver.delete_namespace(name)


@pytest.fixture
def kfp(tmp_path: pathlib.Path, apiserver: Cluster) -> Iterator[FakeKFP]:
    """The fake KFP API; its runs execute the submitted components on this machine with the
    admin's kubeconfig."""
    fake = FakeKFP(tmp_path / "kfp", env={"KUBECONFIG": str(apiserver.kubeconfig)})
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def cluster_api(apiserver: Cluster) -> Iterator[KubeflowAPI]:
    api = KubeflowAPI(apiserver)
    yield api
    api.close()
