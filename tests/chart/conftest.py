"""The chart and deploy/ as a platform engineer's tools see them."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from testenv.manifests import CHART, KUBE_VERSION, MODES, NAMESPACE, RELEASE, documents, helm

REPO = pathlib.Path(__file__).resolve().parents[2]

Render = Callable[..., list[dict[str, Any]]]


def generate_module() -> ModuleType:
    """hack/generate.py, the generator of the files the tests compare."""
    spec = importlib.util.spec_from_file_location("generate", REPO / "hack" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("generate", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def generate() -> ModuleType:
    return generate_module()


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("helm")


@pytest.fixture(scope="session")
def render(helm_home: pathlib.Path) -> Render:
    """``helm template`` of the chart: the documents, for a mode and --set values."""

    def run(
        mode: str | None = None,
        *sets: str,
        release: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> list[dict[str, Any]]:
        args = ["template", release, str(CHART), "--namespace", namespace, "--include-crds"]
        args += ["--kube-version", KUBE_VERSION]
        if mode is not None:
            args += ["--values", str(MODES[mode])]
        for value in sets:
            args += ["--set", value]
        return documents(helm(*args, home=helm_home).stdout)

    return run
