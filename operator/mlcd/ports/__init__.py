"""The small interfaces the loop depends on; engines, stores and servers implement them."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mlcd.domain.records import ModelRef, RunRecord


@dataclass(frozen=True)
class DatasetObject:
    """A dataset fetched to a local path, with the identity the new-data trigger compares."""

    path: pathlib.Path
    version: str


class DatasetSource(Protocol):
    def version(self) -> str:
        """A cheap identity of the current data (object version, ETag or content hash)."""
        ...

    def fetch(self, directory: pathlib.Path) -> DatasetObject: ...


class ArtifactStore(Protocol):
    """A model repository: ``<root>/<model>/<version>/model.onnx`` plus ``metadata.json``.

    Versions are immutable: a committed version is never overwritten and a half-written
    one is never listed."""

    def versions(self, model: str) -> list[str]: ...

    def metadata(self, model: str, version: str) -> dict[str, Any] | None: ...

    def publish(
        self,
        model: str,
        run_id: str,
        files: Mapping[str, pathlib.Path],
        metadata: dict[str, Any],
    ) -> ModelRef:
        """Writes a new version; publishing the same run twice returns the first version."""
        ...

    def fetch(self, model: str, version: str, directory: pathlib.Path) -> pathlib.Path: ...

    def uri(self, model: str, version: str | None = None) -> str: ...


@dataclass(frozen=True)
class RunRequest:
    """Everything a backend needs to run the pipeline once."""

    run_id: str
    trigger: str
    spec: dict[str, Any]
    name: str
    namespace: str
    base_dir: str
    baseline: dict[str, Any] | None = None
    #: A retry of a lost run: the same id, a fresh attempt.
    attempt: int = 1
    #: Extra environment for the run's processes (never secret values: only paths to them).
    env: dict[str, str] = field(default_factory=dict)


class PipelineBackend(Protocol):
    """Where the pipeline runs: submit, observe, cancel. Runs are keyed by run id, so
    submitting the same id twice starts nothing new."""

    def submit(self, request: RunRequest) -> None: ...

    def get(self, run_id: str, attempt: int = 1) -> RunRecord | None:
        """The run's record; ``None`` when the engine has neither a live run nor a result
        for it (never submitted, or its process ended without one: the run is lost)."""
        ...

    def cancel(self, run_id: str, attempt: int = 1) -> None: ...

    def resource(self, run_id: str, attempt: int = 1) -> dict[str, Any] | None:
        """The resource exactly as the run was submitted with it."""
        ...


class ModelServing(Protocol):
    """Where a model is served; ``serve`` switches to a version that passed its gate."""

    def serve(
        self, model: str, ref: ModelRef, model_dir: pathlib.Path, key: str | None = None
    ) -> str:
        """Serves ``model_dir`` as ``model`` (verified against ``ref.sha256``) under ``key``
        (default: the model name) and returns its URL."""
        ...

    def prepare(self, model: str, key: str | None = None) -> None:
        """Gets ready to serve soon (starts what is slow to start); may do nothing."""
        ...

    def abandon(self, key: str) -> None:
        """Undoes :meth:`prepare` when nothing came to be served."""
        ...

    def current(self, key: str) -> ModelRef | None: ...

    def stop(self, key: str) -> None: ...


class MetricProvider(Protocol):
    """Flagger's shape: one number per query; no data is its own answer (None)."""

    def query(self, promql: str) -> float | None: ...

    def is_online(self) -> bool: ...
