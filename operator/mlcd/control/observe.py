"""Observe: one bundle of observations per pass, gathered from the ports.

What the engine, the serving target and the dataset report is taken as it is (secret values
masked); what is unknown is said so (an engine that does not answer is not a lost run). The
only choices made here are about I/O: how often the dataset is polled, and caching a parsed
spec per generation.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlcd.artifacts import open_dataset
from mlcd.artifacts.credentials import SecretResolver
from mlcd.control.credentials import Credentials
from mlcd.control.ledger import Ledger
from mlcd.domain.checks import parse_pipeline
from mlcd.domain.observations import (
    DatasetView,
    Observations,
    Outcome,
    PipelineView,
    RunView,
)
from mlcd.domain.records import RunRecord
from mlcd.domain.redact import redact
from mlcd.domain.spec import TRIGGER_ANNOTATION, ModelPipeline, duration_seconds
from mlcd.domain.status import ModelPipelineStatus
from mlcd.domain.triggers import parse_time
from mlcd.errors import MlcdError, PermanentError, SpecError, TemporaryError
from mlcd.ports import ModelServing, PipelineBackend, PipelineKey, RunKey

LOG = logging.getLogger("mlcd.operator")
#: How long a parsed spec and the operator's checks of it (its Secrets) are trusted.
RECHECK_SECONDS = 30.0


def key_of(view: PipelineView) -> PipelineKey:
    return PipelineKey(view.namespace, view.name, view.uid)


def resource_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as a run keeps it: apiVersion, kind, name, namespace, uid, spec."""
    meta = body["metadata"]
    metadata = {"name": meta["name"], "namespace": meta.get("namespace", "default")}
    if meta.get("uid"):
        metadata["uid"] = meta["uid"]
    return {
        "apiVersion": body.get("apiVersion", "mlcd.io/v1alpha1"),
        "kind": body.get("kind", "ModelPipeline"),
        "metadata": metadata,
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
    }


@dataclass
class _Parsed:
    generation: Any
    pipeline: ModelPipeline | None
    problem: str | None
    secrets: tuple[str, ...]
    until: float


@dataclass
class ObserverSettings:
    #: The engine of pipelines that do not name one.
    default_engine: str = "local"
    #: Where the model repository is when ``spec.artifacts`` is not set, by namespace.
    default_artifacts: Callable[[str], str] = lambda namespace: ""
    engines_available: tuple[str, ...] = ("local",)


@dataclass
class Observer:
    settings: ObserverSettings
    engines: Mapping[str, PipelineBackend]
    serving: ModelServing
    secrets: Callable[[str], SecretResolver]
    ledger: Ledger
    credentials: Credentials
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    _parsed: dict[str, _Parsed] = field(default_factory=dict)
    _polled: dict[str, tuple[float, DatasetView]] = field(default_factory=dict)
    _gates: dict[RunKey, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the resource ---------------------------------------------------------------------

    def view(
        self,
        body: Mapping[str, Any],
        *,
        trigger: str | None = None,
        scheduling: bool = True,
    ) -> PipelineView:
        meta = body["metadata"]
        namespace = meta.get("namespace", "default")
        uid = str(meta.get("uid") or "")
        parsed = self._parse(uid or f"{namespace}/{meta['name']}", body)
        pipeline = parsed.pipeline
        spec = pipeline.spec if pipeline is not None else None
        annotation = (meta.get("annotations") or {}).get(TRIGGER_ANNOTATION)
        return PipelineView(
            namespace=namespace,
            name=meta["name"],
            uid=uid,
            created=parse_time(meta.get("creationTimestamp")) or self.clock(),
            spec=spec,
            problem=parsed.problem,
            generation=meta.get("generation"),
            engine=(spec.engine if spec else None) or self.settings.default_engine,
            deleting=bool(meta.get("deletionTimestamp")),
            trigger=trigger if trigger is not None else annotation,
            scheduling=scheduling,
            default_artifacts=self.settings.default_artifacts(namespace),
        )

    def _parse(self, cache_key: str, body: Mapping[str, Any]) -> _Parsed:
        """Parsed once per generation; the operator's own checks (Secrets) again every 30 s."""
        generation = body["metadata"].get("generation")
        with self._lock:
            cached = self._parsed.get(cache_key)
        fresh = cached is not None and cached.until > time.monotonic()
        if cached is not None and fresh and cached.generation == generation:
            return cached
        try:
            pipeline: ModelPipeline | None = parse_pipeline(resource_of(body))
            problem = None
        except SpecError as exc:
            pipeline, problem = None, "; ".join(str(p) for p in exc.problems)
        secrets: tuple[str, ...] = ()
        if pipeline is not None:
            problem, secrets = self._operator_problems(pipeline)
        parsed = _Parsed(generation, pipeline, problem, secrets, time.monotonic() + RECHECK_SECONDS)
        with self._lock:
            self._parsed[cache_key] = parsed
        return parsed

    def _operator_problems(self, pipeline: ModelPipeline) -> tuple[str | None, tuple[str, ...]]:
        """What only the operator can check, as a problem naming the field; and the values of
        the Secrets the pipeline references (to mask them wherever text leaves a run)."""
        engine = pipeline.spec.engine or self.settings.default_engine
        if engine not in self.engines:
            return (
                f"spec.engine: engine {engine!r} is not available in this operator "
                f"(available: {', '.join(sorted(self.engines))})"
            ), ()
        resolve = self.secrets(pipeline.namespace)
        values: list[str] = []
        for where, location in (
            ("spec.dataset", pipeline.spec.dataset),
            ("spec.artifacts", pipeline.spec.artifacts),
        ):
            ref = location.credentials_secret_ref if location else None
            if ref is None:
                continue
            try:
                secret = resolve(ref.name)
            except PermanentError:
                return (
                    f"{where}.credentialsSecretRef.name: secret {ref.name!r} not found in "
                    f"namespace {pipeline.namespace!r}"
                ), ()
            except TemporaryError as exc:
                LOG.warning("cannot read secret %s/%s now: %s", pipeline.namespace, ref.name, exc)
                continue
            if not (
                {"accessKey", "AWS_ACCESS_KEY_ID"} & set(secret)
                and {"secretKey", "AWS_SECRET_ACCESS_KEY"} & set(secret)
            ):
                return (
                    f"{where}.credentialsSecretRef.name: secret {ref.name!r} needs the keys "
                    "accessKey and secretKey"
                ), ()
            values.extend(secret.values())
        uri = pipeline.spec.dataset.uri
        if "://" not in uri and not os.path.isabs(uri):
            return f"spec.dataset.uri: {uri!r} must be s3://bucket/key or an absolute path", ()
        return None, tuple(values)

    def pipeline(self, view: PipelineView) -> ModelPipeline | None:
        """The parsed resource of ``view`` (from this pass's cache)."""
        with self._lock:
            parsed = self._parsed.get(view.uid or f"{view.namespace}/{view.name}")
        return parsed.pipeline if parsed is not None and parsed.problem is None else None

    def secret_values(self, view: PipelineView) -> tuple[str, ...]:
        with self._lock:
            parsed = self._parsed.get(view.uid or f"{view.namespace}/{view.name}")
        return parsed.secrets if parsed is not None else ()

    def forget(self, view: PipelineView) -> None:
        cache_key = view.uid or f"{view.namespace}/{view.name}"
        with self._lock:
            self._parsed.pop(cache_key, None)
            self._polled.pop(cache_key, None)
            for key in [k for k in self._gates if k.pipeline == key_of(view)]:
                self._gates.pop(key, None)

    # -- one bundle -----------------------------------------------------------------------

    def engine(self, name: str) -> PipelineBackend:
        return self.engines.get(name) or self.engines[self.settings.default_engine]

    def observe(
        self,
        view: PipelineView,
        status: ModelPipelineStatus,
        outcomes: tuple[Outcome, ...] = (),
        interrupted: bool = False,
    ) -> Observations:
        pipeline = key_of(view)
        masks = self.secret_values(view)
        runs: dict[str, RunView] = {}
        for run in status.active_runs:
            key = RunKey(pipeline, run.id, run.attempt)
            engine = self.engine(run.engine)
            try:
                record = engine.get(key)
            except MlcdError as exc:
                # Unreachable, or the engine's own settings are wrong (its credentials): the
                # run is held with the reason, never taken for lost.
                problem = redact(str(exc), masks)
                runs[run.id] = RunView(record=None, reachable=False, problem=problem)
                continue
            runs[run.id] = RunView(record=_masked(record, masks), gate=self._gate(engine, key))
        model = (
            view.spec.serving.name
            if view.spec
            else (status.serving.model if status.serving else "")
        )
        serving = None
        promoting = any(r.stage == "serve" for r in status.active_runs)
        if (status.serving is not None or promoting) and model:
            serving = self.serving.status(pipeline, model)
        live: list[str] = []
        serving_running = False
        if view.deleting:
            for name in {r.engine for r in status.active_runs} | {view.engine}:
                live.extend(self.engine(name).live(pipeline))
            serving_running = self.serving.running(pipeline)
        return Observations(
            now=self.clock(),
            pipeline=view,
            runs=runs,
            serving=serving,
            dataset=self._dataset(view),
            free_slots=self.ledger.free_for(view.uid or str(pipeline)),
            max_active_runs=self.ledger.limit,
            outcomes=outcomes,
            live_runs=tuple(sorted(set(live))),
            credentials=self.credentials.runs(pipeline),
            serving_running=serving_running,
            interrupted=interrupted,
        )

    def _gate(self, engine: PipelineBackend, key: RunKey) -> Any:
        """The gate the run was judged with, from the resource it runs with (cached)."""
        if key not in self._gates:
            try:
                resource = engine.resource(key)
            except MlcdError:
                return None  # asked again at the next pass
            gate = None
            if resource is not None:
                try:
                    gate = parse_pipeline(resource).spec.gate
                except (SpecError, MlcdError):
                    gate = None
            self._gates[key] = gate
        return self._gates[key]

    def _dataset(self, view: PipelineView) -> DatasetView | None:
        """Polled every ``spec.triggers.pollInterval``; between polls the last answer stands."""
        spec = view.spec
        if spec is None or not spec.triggers.new_data or spec.suspend or not view.scheduling:
            return None
        if view.deleting or view.problem:
            return None
        cache_key = view.uid or f"{view.namespace}/{view.name}"
        interval = duration_seconds(spec.triggers.poll_interval)
        with self._lock:
            last = self._polled.get(cache_key)
        now = time.monotonic()
        if last is not None and now - last[0] < interval:
            return last[1]
        try:
            version = open_dataset(spec.dataset, self.secrets(view.namespace)).version()
            answer = DatasetView(version=version)
        except MlcdError as exc:
            answer = DatasetView(error=f"spec.dataset.uri: {exc}")
        with self._lock:
            self._polled[cache_key] = (now, answer)
        return answer


def _masked(record: RunRecord | None, masks: tuple[str, ...]) -> RunRecord | None:
    if record is None or not masks:
        return record
    update: dict[str, Any] = {}
    if record.reason:
        update["reason"] = redact(record.reason, masks)
    if record.data is not None and record.data.problems:
        update["data"] = record.data.model_copy(
            update={"problems": [redact(p, masks) for p in record.data.problems]}
        )
    return record.model_copy(update=update) if update else record
