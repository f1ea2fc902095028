"""Real model servers and a real HAProxy router on loopback, started once per module."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from mlcd.ports import PipelineKey
from mlcd.serving.router.haproxy import LocalRouter
from rollout.servers import ModelServer, serve, write_model


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Versions 1 and 3 are the same model; version 2 is another one."""
    folder = tmp_path_factory.mktemp("models")
    write_model(folder, "1", seed=1)
    write_model(folder, "2", seed=2)
    write_model(folder, "3", seed=1)
    return folder


@pytest.fixture(scope="session")
def stable(models: pathlib.Path) -> Iterator[ModelServer]:
    yield from serve(models, "1", "stable")


@pytest.fixture(scope="session")
def candidate(models: pathlib.Path) -> Iterator[ModelServer]:
    yield from serve(models, "2", "candidate")


@pytest.fixture
def router(tmp_path: pathlib.Path) -> Iterator[LocalRouter]:
    local = LocalRouter(tmp_path / "home")
    yield local
    for folder in (tmp_path / "home" / "router").glob("*"):
        namespace, pipeline = folder.name.split(".", 1)
        local.finalize(PipelineKey(namespace, pipeline))
