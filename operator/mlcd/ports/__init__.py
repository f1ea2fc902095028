"""The small interfaces the loop depends on; engines, stores and servers implement them."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mlcd.domain.observations import ServingView
from mlcd.domain.records import ModelRef, RunRecord
from mlcd.domain.rollout import Builtins, Targets


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

    def put_record(self, model: str, path: str, record: dict[str, Any]) -> str:
        """Writes a run's full record as ``<root>/<model>/runs/<path>.json``; returns where."""
        ...


@dataclass(frozen=True)
class PipelineKey:
    """Whose runs and servers these are: every folder, lookup and server is keyed by it, so
    two tenants with same-named pipelines never meet, nor does a pipeline deleted and created
    again under the same name meet its predecessor."""

    namespace: str
    name: str
    #: The resource's uid in a cluster; empty on one machine.
    uid: str = ""

    @property
    def folder(self) -> str:
        """``<name>`` on one machine, ``<name>-<uid>`` in a cluster."""
        return f"{self.name}-{self.uid}" if self.uid else self.name

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class RunKey:
    pipeline: PipelineKey
    run: str
    attempt: int = 1

    @property
    def token(self) -> str:
        """One string naming the run across tenants (publish idempotency, logs)."""
        uid = f".{self.pipeline.uid}" if self.pipeline.uid else ""
        return f"{self.pipeline.namespace}.{self.pipeline.name}{uid}.{self.run}"


@dataclass(frozen=True)
class RunRequest:
    """Everything a backend needs to run the pipeline once."""

    key: RunKey
    trigger: str
    #: The resource as the run uses it (the spec it keeps even if the pipeline changes).
    spec: dict[str, Any]
    baseline: dict[str, Any] | None = None
    #: Extra environment for the run's processes (never secret values: only paths to them).
    env: dict[str, str] = field(default_factory=dict)


class PipelineBackend(Protocol):
    """Where the pipeline runs: submit, observe, cancel. Runs are keyed by :class:`RunKey`,
    so submitting the same key twice starts nothing new."""

    def submit(self, request: RunRequest) -> None: ...

    def get(self, key: RunKey) -> RunRecord | None:
        """The run's record; ``None`` when the engine has neither a live run nor a result
        for it (never submitted, or its process ended without one: the run is lost)."""
        ...

    def cancel(self, key: RunKey) -> None: ...

    def resource(self, key: RunKey) -> dict[str, Any] | None:
        """The resource exactly as the run was submitted with it."""
        ...

    def live(self, pipeline: PipelineKey) -> list[str]:
        """Ids of the pipeline's runs the engine is still running."""
        ...

    def finalize(self, key: RunKey, record: RunRecord) -> None:
        """The loop's final word on a run (its result after serving); may do nothing."""
        ...


ServingRole = Literal["stable", "candidate"]


class ModelServing(Protocol):
    """Where a pipeline's model is served; ``serve`` switches to a version that passed its
    gate. Everything is keyed by the pipeline; during a rollout a candidate is served beside
    the stable model (``role``)."""

    def serve(
        self,
        key: PipelineKey,
        model: str,
        ref: ModelRef,
        model_dir: pathlib.Path,
        role: ServingRole = "stable",
        port: int | None = None,
        shadow: bool = False,
    ) -> str:
        """Serves ``model_dir`` as ``model`` (verified against ``ref.sha256``); returns the
        URL. ``shadow``: a candidate also scores each request with the stable model."""
        ...

    def prepare(self, key: PipelineKey, model: str, port: int | None = None) -> None:
        """Gets ready to serve soon (starts what is slow to start); may do nothing. ``port``
        as :meth:`serve` takes it."""
        ...

    def abandon(self, key: PipelineKey) -> None:
        """Undoes :meth:`prepare` when nothing came to be served."""
        ...

    def status(self, key: PipelineKey, model: str, role: ServingRole = "stable") -> ServingView:
        """What the server itself reports now: ready, and the version it serves."""
        ...

    def url(self, key: PipelineKey, role: ServingRole = "stable") -> str | None: ...

    def running(self, key: PipelineKey) -> bool:
        """Whether anything still runs to serve this pipeline."""
        ...

    def stop(self, key: PipelineKey, role: ServingRole | None = None) -> None:
        """Stops the server of ``role`` (every server of the pipeline when None)."""
        ...


class MetricProvider(Protocol):
    """Flagger's shape: one number per query; no data is its own answer (None)."""

    def query(self, promql: str) -> float | None: ...

    def is_online(self) -> bool: ...


@dataclass(frozen=True)
class Routes:
    """What the router does with a pipeline's traffic now."""

    canary_weight: int  # percent to the candidate; the stable server gets the rest
    mirror: bool  # every request is also sent to the candidate, its answer discarded
    candidate: bool  # a candidate upstream is attached


def no_targets(key: PipelineKey) -> Targets:
    """Targets where no router names the servers (nothing to analyse by its metrics)."""
    empty = Builtins("", "", "", "", "", "")
    return Targets(namespace=key.namespace, canary="", stable="", builtins=empty)


class TrafficRouter(Protocol):
    """Flagger's router, small: upstreams in, weights and mirroring set and read back.

    Every call is idempotent and keyed by :class:`PipelineKey`."""

    def reconcile(self, key: PipelineKey, stable: str, candidate: str | None) -> str:
        """Routes ``key``'s traffic to the ``stable`` upstream (a URL) and, when given, the
        ``candidate`` one (new candidates start with weight 0, no mirror); returns the URL
        clients send requests to."""
        ...

    def set_weights(self, key: PipelineKey, canary: int) -> None:
        """``canary`` percent to the candidate, the rest to stable, without dropping a request."""
        ...

    def set_mirror(self, key: PipelineKey, on: bool) -> None: ...

    def routes(self, key: PipelineKey) -> Routes | None:
        """The routes as the router has them now; ``None`` when it has none for ``key``."""
        ...

    def candidate_ready(self, key: PipelineKey) -> bool:
        """The candidate upstream is attached and answers ready."""
        ...

    def targets(self, key: PipelineKey) -> Targets:
        """What ``{{ canary }}`` and ``{{ stable }}`` stand for in queries, and the router's
        built-in queries (requests, success rate, latency, shadow disagreement)."""
        ...

    def finalize(self, key: PipelineKey) -> None:
        """Removes ``key``'s routes (and whatever serves them) for good."""
        ...

    def url(self, key: PipelineKey) -> str | None:
        """Where clients send ``key``'s requests; None while it routes nothing."""
        ...
