"""Shared pytest configuration: the real-component fixtures live in tests/testenv."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

pytest_plugins = ["testenv.fixtures"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each phase's report on the test item (``rep_call``), for fixtures that print logs of a
    failed test."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def digits_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The digits data set the example trainer reads, written once per session."""
    from mnist_trainer.dataset import write

    path = tmp_path_factory.mktemp("data") / "digits.npz"
    write(path)
    return path
