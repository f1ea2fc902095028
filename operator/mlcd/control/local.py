"""The loop on one machine: ``mlcd run`` as passes of the same controller the operator runs,
with the status kept in a file instead of the resource.

A run is an on-demand trigger; each pass observes the local engine and model server, decides
and executes, and the status is saved after it. Ctrl-C (or SIGTERM) never interrupts a pass
half-way: it is noted, and the next pass cancels the run like any other stop, so every process
of the run is stopped and the status says what happened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from mlcd.artifacts.credentials import directory_secrets
from mlcd.control.controller import Controller, ControllerSettings
from mlcd.domain.decide import Decision
from mlcd.domain.intents import Post
from mlcd.domain.records import RunRecord
from mlcd.domain.rollout import RolloutState
from mlcd.domain.spec import ModelPipeline
from mlcd.domain.status import ModelPipelineStatus, RunSummary
from mlcd.domain.triggers import trigger_run_id
from mlcd.engines.local import LocalEngine
from mlcd.errors import FieldProblem, MlcdError, PermanentError, SpecError
from mlcd.metrics.embedded import EmbeddedPrometheus, EmbeddedProvider
from mlcd.metrics.prometheus import PrometheusProvider
from mlcd.ports import MetricProvider, PipelineKey, RunKey
from mlcd.serving.local import LocalServing
from mlcd.serving.router.haproxy import LocalRouter, haproxy_binary
from mlcd.settings import LocalSettings

#: Seconds between passes while a run is in progress. A pass that did something (other than
#: posting an Event) is followed by one at once, which sees what it did: a model the server
#: has just loaded is announced without waiting for the next interval.
PASS_INTERVAL = 0.25


def acted(decision: Decision) -> bool:
    """Whether the pass carried out anything but Events."""
    return any(not isinstance(intent, Post) for intent in decision.intents)


class Busy(MlcdError):
    """Another run of the same pipeline is in progress on this machine."""


class StatusFile:
    """A pipeline's status on this machine: ``<home>/pipelines/<namespace>/<name>/status.json``."""

    def __init__(self, home: pathlib.Path) -> None:
        self.home = home

    def folder(self, namespace: str, name: str) -> pathlib.Path:
        return self.home / "pipelines" / namespace / name

    def load(self, namespace: str, name: str) -> ModelPipelineStatus:
        path = self.folder(namespace, name) / "status.json"
        if not path.is_file():
            return ModelPipelineStatus()
        return ModelPipelineStatus.model_validate_json(path.read_text())

    def save(self, namespace: str, name: str, status: ModelPipelineStatus) -> None:
        folder = self.folder(namespace, name)
        folder.mkdir(parents=True, exist_ok=True)
        text = status.model_dump_json(by_alias=True, exclude_none=True, indent=2)
        path = folder / "status.json"
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return  # most passes change nothing: no write, no rename
        tmp = folder / ".status.json.tmp"
        tmp.write_text(text)
        tmp.replace(path)

    def pipelines(self, namespace: str) -> list[str]:
        root = self.home / "pipelines" / namespace
        if not root.is_dir():
            return []
        return sorted(d.name for d in root.iterdir() if (d / "status.json").is_file())


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def resolve_locations(
    resource: dict[str, Any], spec_dir: pathlib.Path, default_models: pathlib.Path
) -> dict[str, Any]:
    """Relative paths are relative to the spec file; without ``spec.artifacts`` models go to
    the local model repository."""
    out: dict[str, Any] = json.loads(json.dumps(resource))
    spec = out["spec"]

    def absolute(uri: str) -> str:
        if "://" in uri or pathlib.Path(uri).is_absolute():
            return uri
        return str((spec_dir / uri).resolve())

    spec["dataset"]["uri"] = absolute(spec["dataset"]["uri"])
    if spec.get("artifacts"):
        spec["artifacts"]["uri"] = absolute(spec["artifacts"]["uri"])
    else:
        spec["artifacts"] = {"uri": str(default_models)}
    return out


class Interrupts:
    """SIGINT and SIGTERM become a flag the loop reads between passes (never an exception in
    the middle of one)."""

    def __init__(self) -> None:
        self.flag = threading.Event()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.flag.set()

    @contextlib.contextmanager
    def catching(self) -> Iterator[Interrupts]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait(self, seconds: float) -> bool:
        return self.flag.wait(seconds)

    @property
    def set(self) -> bool:
        return self.flag.is_set()


def local_router(home: pathlib.Path, port: int, targets: pathlib.Path | None) -> LocalRouter | None:
    """HAProxy as the router when it is installed; without it, rollouts are refused (with
    the reason) and models are served at once as before."""
    try:
        haproxy_binary()
    except PermanentError:
        return None
    return LocalRouter(home, port=port, targets_dir=targets)


def local_provider(
    home: pathlib.Path, url: str | None
) -> tuple[MetricProvider, pathlib.Path | None]:
    """``url``'s Prometheus (``MLCD_PROMETHEUS_URL``), else the embedded one, started on
    first need; and the folder its file discovery reads (None for yours: configure it with
    ``MLCD_PROMETHEUS_TARGETS``)."""
    if url:
        targets = os.environ.get("MLCD_PROMETHEUS_TARGETS")
        return PrometheusProvider(url), pathlib.Path(targets) if targets else None
    embedded = EmbeddedPrometheus(home)
    return EmbeddedProvider(embedded), embedded.targets_dir


class LocalLoop:
    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        home = settings.home
        self.engine = LocalEngine(home)
        self.serving = LocalServing(
            home,
            port=settings.serving_port,
            ready_timeout=settings.serving_ready_timeout,
            candidate_env=settings.candidate_env,
        )
        self.statuses = StatusFile(home)
        self.provider, targets = local_provider(home, settings.prometheus_url)
        self.router = local_router(home, settings.serving_port, targets)
        self.controller = Controller(
            ControllerSettings(
                state_dir=home,
                max_active_runs=None,
                default_artifacts=lambda namespace: str(settings.models),
            ),
            engines={"local": self.engine},
            serving=self.serving,
            secrets=lambda namespace: directory_secrets(),
            router=self.router,
            provider=self.provider,
        )

    # -- manual controls of a rollout --------------------------------------------------------

    def controls_file(self, namespace: str, name: str) -> pathlib.Path:
        return self.statuses.folder(namespace, name) / "controls.json"

    def controls(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.controls_file(namespace, name).read_text())
        except (OSError, ValueError):
            return {}
        return data

    def set_controls(self, namespace: str, name: str, **changes: Any) -> None:
        """``mlcd promote|abort|pause|resume|rollback`` on this machine: the same fields a
        cluster user sets in ``spec.serving.rollout``, kept beside the pipeline's status."""
        data = {**self.controls(namespace, name), **changes}
        data = {k: v for k, v in data.items() if v not in (None, False)}
        path = self.controls_file(namespace, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".controls.json.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def with_controls(self, resource: dict[str, Any]) -> dict[str, Any]:
        meta = resource["metadata"]
        controls = self.controls(meta.get("namespace", "default"), meta["name"])
        if not controls:
            return resource
        out: dict[str, Any] = json.loads(json.dumps(resource))
        rollout = out["spec"].setdefault("serving", {}).setdefault("rollout", {})
        rollout.update(controls)
        return out

    @staticmethod
    def key(pipeline: ModelPipeline) -> PipelineKey:
        return PipelineKey(pipeline.namespace, pipeline.name)

    @contextlib.contextmanager
    def exclusive(self, pipeline: ModelPipeline) -> Iterator[None]:
        folder = self.statuses.folder(pipeline.namespace, pipeline.name)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(
                    f"another run of {pipeline.name} is in progress on this machine"
                ) from None
            yield

    def status(self, pipeline: ModelPipeline) -> ModelPipelineStatus:
        return self.statuses.load(pipeline.namespace, pipeline.name)

    def run(
        self,
        pipeline: ModelPipeline,
        resource: dict[str, Any],
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_start: Callable[[str], None] | None = None,
        interrupts: Interrupts | None = None,
        on_rollout: Callable[[RolloutState], None] | None = None,
    ) -> RunSummary | None:
        """Runs the loop once, on demand, until the run it starts is over; returns its summary
        (None when interrupted before it started). The caller holds :meth:`exclusive`."""
        interrupts = interrupts or Interrupts()
        # Kept for `mlcd promote|abort|pause|resume|rollback`, which drive the pipeline later.
        folder = self.statuses.folder(pipeline.namespace, pipeline.name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "resource.json").write_text(json.dumps(resource, indent=2))
        trigger = now().isoformat(timespec="microseconds")
        run_id = trigger_run_id(pipeline.name, "manual", trigger)
        key = self.key(pipeline)
        metadata = {"name": pipeline.name, "namespace": pipeline.namespace}
        body: dict[str, Any] = {**resource, "metadata": metadata}
        offsets: dict[int, int] = {}
        announced = False
        again = False  # this pass follows one that acted, at once
        while True:
            body = {**self.with_controls(resource), "metadata": metadata}
            body["status"] = self.status(pipeline).model_dump(by_alias=True, exclude_none=True)
            decision = self.controller.reconcile(
                body, trigger=trigger, scheduling=False, interrupted=interrupts.set
            )
            self.statuses.save(pipeline.namespace, pipeline.name, decision.status)
            done = next((r for r in decision.status.runs if r.id == run_id), None)
            active = next((r for r in decision.status.active_runs if r.id == run_id), None)
            if active is not None and not announced and on_start is not None:
                on_start(run_id)
                announced = True
            if active is not None or done is not None:
                attempt = active.attempt if active is not None else done.attempt  # type: ignore[union-attr]
                self._follow(RunKey(key, run_id, attempt), offsets, on_event, pipeline)
            rollout = decision.status.rollout
            if on_rollout is not None and rollout is not None and rollout.run == run_id:
                on_rollout(rollout)
            if done is not None:
                if done.result != "promoted":
                    self.serving.abandon(key)
                return done
            if active is None and done is None:
                if interrupts.set:
                    return None
                if decision.status.handled_trigger == trigger:
                    raise MlcdError(f"run {run_id} did not start")
                invalid = next(
                    (c for c in decision.status.conditions if c.type == "SpecValid"), None
                )
                if invalid is not None and invalid.status == "False":
                    # What only the loop checks (a Secret, a router for a rollout): no run
                    # starts until the spec changes, and this spec will not.
                    path, _, reason = invalid.message.partition(": ")
                    raise SpecError(
                        [FieldProblem(path, reason) if reason else FieldProblem("spec", path)]
                    )
            # At once after a pass that acted, but never twice in a row: an intent some state
            # repeats every pass cannot turn the loop into a busy one.
            again = acted(decision) and not again
            if not again:
                interrupts.wait(PASS_INTERVAL)

    def drive(
        self,
        pipeline: ModelPipeline,
        resource: dict[str, Any],
        done: Callable[[ModelPipelineStatus], bool],
        timeout: float,
        interrupts: Interrupts | None = None,
    ) -> ModelPipelineStatus:
        """Passes with no new run, until ``done(status)`` (a manual control took effect) or
        ``timeout`` seconds; the caller holds :meth:`exclusive`."""
        interrupts = interrupts or Interrupts()
        metadata = {"name": pipeline.name, "namespace": pipeline.namespace}
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(pipeline)
            body = {**self.with_controls(resource), "metadata": metadata}
            body["status"] = status.model_dump(by_alias=True, exclude_none=True)
            decision = self.controller.reconcile(
                body, trigger=status.handled_trigger, scheduling=False
            )
            self.statuses.save(pipeline.namespace, pipeline.name, decision.status)
            if done(decision.status):
                return decision.status
            if time.monotonic() > deadline or interrupts.set:
                raise MlcdError(f"not done after {timeout:.0f}s: {decision.status.phase}")
            interrupts.wait(PASS_INTERVAL)

    def close(self) -> None:
        self.controller.close()

    def _follow(
        self,
        key: RunKey,
        offsets: dict[int, int],
        on_event: Callable[[dict[str, Any]], None] | None,
        pipeline: ModelPipeline,
    ) -> None:
        log = self.engine.events(key)
        events, offsets[key.attempt] = log.follow(offsets.get(key.attempt, 0))
        for event in events:
            if event.get("kind") == "stage-start" and event.get("stage") == "evaluate":
                # The model server loads its libraries while evaluation leaves a core free
                # (behind the router on a port of its own: the router has the public one).
                routed = self.controller.executor.routed(pipeline)
                self.serving.prepare(
                    self.key(pipeline), pipeline.spec.serving.name, 0 if routed else None
                )
            if on_event is not None:
                on_event(event)

    def record(self, pipeline: ModelPipeline, summary: RunSummary) -> RunRecord | None:
        """The run's full record: the final one when the loop finished it, else the engine's."""
        key = RunKey(self.key(pipeline), summary.id, summary.attempt)
        folder = self.engine.find(key)
        if folder is not None and (folder / "final.json").is_file():
            return RunRecord.model_validate_json((folder / "final.json").read_text())
        return self.engine.get(key)

    def report_path(self, pipeline: ModelPipeline, summary: RunSummary) -> pathlib.Path | None:
        return self.engine.report_path(RunKey(self.key(pipeline), summary.id, summary.attempt))
