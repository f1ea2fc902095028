"""Shared pieces of the stack's proof tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from testenv.cluster import Cluster

CRDS = Path(__file__).parent / "crds"
GROUP, VERSION, PLURAL = "stack.mlcd.io", "v1", "widgets"


@pytest.fixture(scope="session")
def widgets_crd(apiserver: Cluster) -> str:
    """The test CRD, installed and Established."""
    return apiserver.install_crds(CRDS)[0]


@pytest.fixture
def namespace(apiserver: Cluster) -> Iterator[str]:
    name = apiserver.create_namespace()
    yield name
    apiserver.delete_namespace(name)


@pytest.fixture
def api(apiserver: Cluster) -> Iterator[client.ApiClient]:
    with apiserver.api_client() as api_client:
        yield api_client


def widget(name: str, **spec: object) -> dict[str, object]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": "small", **spec},
    }
