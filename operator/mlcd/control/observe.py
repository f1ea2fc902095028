"""Observe: one bundle of observations per pass, gathered from the ports.

What the engine, the serving target and the dataset report is taken as it is (secret values
masked); what is unknown is said so (an engine that does not answer is not a lost run). The
only choices made here are about I/O: how often the dataset is polled, and caching a parsed
spec per generation.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlcd.artifacts import open_dataset, open_store
from mlcd.artifacts.credentials import SecretResolver
from mlcd.control.credentials import Credentials
from mlcd.control.ledger import Ledger
from mlcd.domain.checks import parse_pipeline
from mlcd.domain.observations import (
    DatasetView,
    DegradationSample,
    Observations,
    Outcome,
    PipelineView,
    RolloutView,
    RunView,
    ServingView,
)
from mlcd.domain.records import RunRecord, ServingRecord
from mlcd.domain.redact import redact
from mlcd.domain.rollout import (
    QueryResult,
    RouterView,
    analysis_due,
    analysis_queries,
    degradation_query,
    needs_rollout,
)
from mlcd.domain.spec import (
    TRIGGER_ANNOTATION,
    ModelPipeline,
    StorageLocation,
    duration_seconds,
)
from mlcd.domain.status import ModelPipelineStatus
from mlcd.domain.triggers import parse_time
from mlcd.errors import MlcdError, PermanentError, SpecError, TemporaryError
from mlcd.ports import (
    MetricProvider,
    ModelServing,
    PipelineBackend,
    PipelineKey,
    RunKey,
    ServingRole,
    TrafficRouter,
    no_targets,
)

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
    #: Splits traffic between stable and candidate during a rollout (None: none here).
    router: TrafficRouter | None = None
    #: Prometheus, for rollout analyses and the degradation trigger (None: none here).
    provider: MetricProvider | None = None
    #: Whether replayed traffic runs for a pipeline in this process (the executor knows).
    replaying: Callable[[PipelineKey], bool] = lambda key: False
    _parsed: dict[str, _Parsed] = field(default_factory=dict)
    _degradation: dict[str, float] = field(default_factory=dict)
    _older: dict[tuple[str, str], ServingRecord] = field(default_factory=dict)
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
        serving_problem = getattr(self.serving, "problem", None)
        if callable(serving_problem) and (problem := serving_problem(pipeline)):
            return str(problem), ()
        rollout = pipeline.spec.serving.rollout
        if needs_rollout(rollout) and self.router is None:
            return (
                "spec.serving.rollout: a progressive rollout needs a traffic router, and this "
                "operator has none (HAProxy for local serving: install it, see docs/rollout.md)"
            ), ()
        if needs_rollout(rollout) and self.provider is None:
            return (
                "spec.serving.rollout: a progressive rollout is analysed by Prometheus, and "
                "this operator has none (set MLCD_PROMETHEUS_URL, or install Prometheus for "
                "the embedded one, see docs/rollout.md)"
            ), ()
        if pipeline.spec.triggers.on_degradation is not None and self.provider is None:
            return (
                "spec.triggers.onDegradation: the condition is evaluated by Prometheus, and "
                "this operator has none (set MLCD_PROMETHEUS_URL)"
            ), ()
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
            serving = self._serving_view(pipeline, model)
            public = self._router_url(pipeline)
            if public is not None:
                # Behind the router, clients use its address (the same through every rollout).
                serving = dataclasses.replace(serving, url=public)
        live: list[str] = []
        serving_running = False
        if view.deleting:
            for name in {r.engine for r in status.active_runs} | {view.engine}:
                live.extend(self.engine(name).live(pipeline))
            serving_running = self.serving.running(pipeline)
        now = self.clock()
        return Observations(
            now=now,
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
            rollout=self._rollout(view, status, now),
            older=self._older_model(view, status),
            degradation=self._degradation_sample(view, status),
        )

    def _serving_view(self, key: PipelineKey, model: str, role: ServingRole = "stable") -> Any:
        """What the serving target reports; when it cannot be asked, not ready, and why."""
        try:
            return self.serving.status(key, model, role)
        except MlcdError as exc:
            return ServingView(ready=False, reason=str(exc))

    def _router_url(self, key: PipelineKey) -> str | None:
        if self.router is None:
            return None
        try:
            return self.router.url(key)
        except MlcdError:
            return None

    # -- rollouts ---------------------------------------------------------------------------

    def _rollout(
        self, view: PipelineView, status: ModelPipelineStatus, now: dt.datetime
    ) -> RolloutView | None:
        """What the router, the servers and (when an analysis is due) Prometheus say."""
        spec = view.spec
        if spec is None or status.serving is None or view.deleting:
            return None
        rollout = spec.serving.rollout
        if status.rollout is None and rollout.rollback_to is None:
            return None
        key = key_of(view)
        model = spec.serving.name
        stable = self._serving_view(key, model)
        candidate = self._serving_view(key, model, "candidate")
        router = self.router
        routes = router.routes(key) if router is not None else None
        state = RouterView(
            canary_weight=routes.canary_weight if routes is not None else None,
            mirror=routes.mirror if routes is not None else False,
            candidate_ready=router.candidate_ready(key) if router is not None else False,
            candidate_version=candidate.ref.version
            if candidate.ready and candidate.ref is not None
            else None,
            stable_version=stable.ref.version if stable.ready and stable.ref is not None else None,
        )
        targets = router.targets(key) if router is not None else no_targets(key)
        results: dict[str, QueryResult] | None = None
        online = True
        provider = self.provider
        if (
            status.rollout is not None
            and provider is not None
            and analysis_due(status.rollout, rollout, now)
        ):
            online = provider.is_online()
            if online:
                results = {}
                for planned in analysis_queries(status.rollout, rollout, targets):
                    try:
                        results[planned.query] = QueryResult(provider.query(planned.query))
                    except TemporaryError:
                        online, results = False, None
                        break
                    except MlcdError as exc:
                        results[planned.query] = QueryResult(error=str(exc))
        return RolloutView(state, targets, results, online, self.replaying(key))

    def _older_model(self, view: PipelineView, status: ModelPipelineStatus) -> ServingRecord | None:
        """The model ``rollbackTo`` names, from the repository (its sha256 and metrics)."""
        spec = view.spec
        if spec is None or spec.serving.rollout.rollback_to is None or view.deleting:
            return None
        version = spec.serving.rollout.rollback_to
        cache = (view.uid or f"{view.namespace}/{view.name}", version)
        if cache in self._older:
            return self._older[cache]
        location = spec.artifacts or StorageLocation(uri=view.default_artifacts)
        model = spec.serving.name
        try:
            store = open_store(location, self.secrets(view.namespace))
            meta = store.metadata(model, version)
        except MlcdError as exc:
            LOG.warning("%s: cannot read version %s of %s: %s", key_of(view), version, model, exc)
            return None
        if meta is None:
            return None
        record = ServingRecord(
            model=model,
            version=version,
            uri=store.uri(model, version),
            sha256=str(meta["sha256"]),
            run=meta.get("runId") or meta.get("run"),
            metrics={k: float(v) for k, v in (meta.get("metrics") or {}).items()},
        )
        self._older[cache] = record
        return record

    def _degradation_sample(
        self, view: PipelineView, status: ModelPipelineStatus
    ) -> DegradationSample | None:
        """``triggers.onDegradation``'s condition, every ``interval``, on the serving model."""
        spec = view.spec
        trigger = spec.triggers.on_degradation if spec is not None else None
        provider = self.provider
        if trigger is None or provider is None or status.serving is None or view.deleting:
            return None
        ident = view.uid or f"{view.namespace}/{view.name}"
        now = time.monotonic()
        last = self._degradation.get(ident)
        if last is not None and now - last < duration_seconds(trigger.interval):
            return None
        self._degradation[ident] = now
        key = key_of(view)
        targets = self.router.targets(key) if self.router is not None else no_targets(key)
        try:
            value = provider.query(degradation_query(trigger, targets))
        except MlcdError:
            return DegradationSample(None)
        return DegradationSample(value is not None)

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
