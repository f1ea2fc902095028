"""The ModelPipeline CRD from crds/, installed on the test stack's real API server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from mlcd.domain.spec import API_GROUP, API_VERSION
from mlcd.k8s.crd import PLURAL
from testenv.cluster import Cluster

CRDS = Path(__file__).resolve().parents[2] / "crds"


class PipelineClient:
    """ModelPipelines of one namespace through the API server's REST interface."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace

    def create(self, body: dict, field_validation: str = "Strict") -> dict:
        # Strict is what kubectl asks for by default (--validate=strict).
        return self.custom.create_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            self.namespace,
            PLURAL,
            body,
            field_validation=field_validation,
        )

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, name
        )

    def replace(self, body: dict) -> dict:
        return self.custom.replace_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, body["metadata"]["name"], body
        )

    def replace_status(self, body: dict) -> dict:
        return self.custom.replace_namespaced_custom_object_status(
            API_GROUP, API_VERSION, self.namespace, PLURAL, body["metadata"]["name"], body
        )


@pytest.fixture(scope="session")
def crd_installed(apiserver: Cluster) -> str:
    """The checked-in CRD, created (or replaced) and Established; its name."""
    return apiserver.install_crds(CRDS)[0]


@pytest.fixture(scope="module")
def crd_namespace(apiserver: Cluster, crd_installed: str) -> Iterator[str]:
    """A namespace of its own for one test module's ModelPipelines."""
    name = apiserver.create_namespace(prefix="crd-")
    yield name
    apiserver.delete_namespace(name)


@pytest.fixture(scope="module")
def crd_pipelines(apiserver: Cluster, crd_namespace: str) -> Iterator[PipelineClient]:
    with apiserver.api_client() as api:
        yield PipelineClient(api, crd_namespace)
