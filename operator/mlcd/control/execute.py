"""Execute: carries out the decide step's intents, in order, through the ports.

Every intent is idempotent (run ids are deterministic, engines start a key once, publishing
and serving are keyed by the run), so a pass cut short at any line and repeated does nothing
twice. What went wrong is returned as outcomes, which the next pass observes; nothing is
decided here. A temporary failure (a store or an engine that does not answer) is retried with
backoff, never turned into a failed run.
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from mlcd import failpoints
from mlcd.artifacts import open_store
from mlcd.artifacts.credentials import SecretResolver
from mlcd.control.credentials import Credentials
from mlcd.domain.decide import record_path
from mlcd.domain.intents import (
    Cancel,
    Finished,
    ForgetCredentials,
    Intent,
    Notice,
    Post,
    Promote,
    Replay,
    Started,
    StopServing,
    Submit,
)
from mlcd.domain.lifecycle import MAX_ATTEMPTS
from mlcd.domain.observations import Done, Outcome, PipelineView
from mlcd.domain.records import ModelRef, RunRecord
from mlcd.domain.redact import redact
from mlcd.domain.rollout import (
    DeployCandidate,
    RecordAnalysis,
    RemoveCandidate,
    ServeStable,
    SetMirror,
    SetWeights,
    needs_rollout,
)
from mlcd.domain.spec import ModelPipeline, StorageLocation
from mlcd.errors import MlcdError, PermanentError, TemporaryError
from mlcd.metrics.operator import OperatorMetrics
from mlcd.ports import (
    ModelServing,
    PipelineBackend,
    PipelineKey,
    RunKey,
    RunRequest,
    TrafficRouter,
)

LOG = logging.getLogger("mlcd.operator")
Post_ = Callable[[Notice], None]


@dataclass
class Backoff:
    """Exponential delays between retries of one intent after temporary failures."""

    first: float = 2.0
    most: float = 60.0
    _next: dict[tuple[str, str], tuple[float, float, Outcome]] = field(default_factory=dict)

    def waiting(self, key: tuple[str, str]) -> Outcome | None:
        """The last outcome while the delay runs; None when it may be tried now."""
        entry = self._next.get(key)
        if entry is None or time.monotonic() >= entry[0]:
            return None
        return entry[2]

    def failed(self, key: tuple[str, str], outcome: Outcome) -> None:
        delay = self._next[key][1] * 2 if key in self._next else self.first
        delay = min(delay, self.most)
        self._next[key] = (time.monotonic() + delay, delay, outcome)

    def succeeded(self, key: tuple[str, str]) -> None:
        self._next.pop(key, None)


@dataclass
class Executor:
    engines: Mapping[str, PipelineBackend]
    default_engine: str
    serving: ModelServing
    secrets: Callable[[str], SecretResolver]
    credentials: Credentials
    #: Where fetched model versions are cached for serving.
    state_dir: pathlib.Path
    metrics: OperatorMetrics | None = None
    backoff: Backoff = field(default_factory=Backoff)
    router: TrafficRouter | None = None
    _replays: dict[PipelineKey, Any] = field(default_factory=dict)

    def engine(self, name: str) -> PipelineBackend:
        return self.engines.get(name) or self.engines[self.default_engine]

    def execute(
        self,
        view: PipelineView,
        pipeline: ModelPipeline | None,
        resource: dict[str, Any],
        intents: list[Intent],
        post: Post_ | None = None,
        masks: tuple[str, ...] = (),
    ) -> tuple[Outcome, ...]:
        key = PipelineKey(view.namespace, view.name, view.uid)
        outcomes: list[Outcome] = []
        # An analysis is counted once its decision is carried out: its decision time includes
        # setting the weights.
        counted = [i for i in intents if isinstance(i, RecordAnalysis)]
        for intent in [*(i for i in intents if not isinstance(i, RecordAnalysis)), *counted]:
            try:
                outcome = self._one(key, view, pipeline, resource, intent, post)
            except (MlcdError, OSError, httpx.HTTPError) as exc:
                outcome = _failed(intent, exc)
            if outcome is not None:
                if not outcome.ok:
                    outcome = Outcome(
                        outcome.kind,
                        outcome.run,
                        False,
                        outcome.temporary,
                        redact(outcome.message, masks),
                    )
                    LOG.warning("%s: %s %s: %s", key, outcome.kind, outcome.run, outcome.message)
                outcomes.append(outcome)
        return tuple(outcomes)

    def _one(
        self,
        key: PipelineKey,
        view: PipelineView,
        pipeline: ModelPipeline | None,
        resource: dict[str, Any],
        intent: Intent,
        post: Post_ | None,
    ) -> Outcome | None:
        if isinstance(intent, Post):
            if post is not None:
                try:
                    post(intent.notice)
                except MlcdError as exc:
                    # An Event that cannot be posted (the namespace is going away, the API
                    # server is busy) loses no decision: the status records it.
                    LOG.warning("could not post %s for %s: %s", intent.notice.reason, key, exc)
            return None
        if isinstance(intent, Submit):
            return self._submit(key, view, pipeline, resource, intent)
        if isinstance(intent, Cancel):
            engine = self.engine(intent.run.engine)
            for attempt in range(1, max(intent.run.attempt, MAX_ATTEMPTS) + 1):
                engine.cancel(RunKey(key, intent.run.id, attempt))
            return Outcome(Done.CANCEL, intent.run.id, True)
        if isinstance(intent, Promote):
            return self._promote(key, view, pipeline, intent)
        if isinstance(intent, Finished):
            self._finished(key, view, pipeline, intent)
            return None
        if isinstance(intent, Started):
            if self.metrics is not None:
                self.metrics.started(key.namespace, key.name, intent.run.trigger)
            return None
        if isinstance(intent, ForgetCredentials):
            self.credentials.forget(key, intent.run)
            return None
        if isinstance(intent, StopServing):
            self._replay(key, view, pipeline, None)
            self.serving.stop(key)
            if self.router is not None:
                self.router.finalize(key)
            return Outcome(Done.STOP_SERVING, None, True)
        if isinstance(intent, Replay):
            self._replay(key, view, pipeline, intent.rate)
            return None
        if isinstance(intent, RecordAnalysis):
            if self.metrics is not None:
                self.metrics.analysed(key.namespace, key.name, intent)
            return None
        return self._rollout(key, view, pipeline, intent)

    # -- rollouts ----------------------------------------------------------------------------

    def routed(self, pipeline: ModelPipeline | None) -> bool:
        """The pipeline's traffic goes through the router (its spec rolls models out)."""
        return (
            self.router is not None
            and pipeline is not None
            and needs_rollout(pipeline.spec.serving.rollout)
        )

    def _model(
        self, view: PipelineView, pipeline: ModelPipeline, version: str
    ) -> tuple[ModelRef, pathlib.Path]:
        """A version of the pipeline's model from the repository: its ref and local folder."""
        key = PipelineKey(view.namespace, view.name, view.uid)
        model = pipeline.spec.serving.name
        store = open_store(self.artifacts(view, pipeline), self.secrets(key.namespace))
        meta = store.metadata(model, version)
        if meta is None:
            raise PermanentError(f"version {version} of {model} is not in the model repository")
        ref = ModelRef(uri=store.uri(model, version), version=version, sha256=str(meta["sha256"]))
        cache = self.state_dir / "serving" / key.namespace / key.folder / "versions"
        return ref, store.fetch(model, version, cache)

    def _rollout(
        self,
        key: PipelineKey,
        view: PipelineView,
        pipeline: ModelPipeline | None,
        intent: Intent,
    ) -> Outcome | None:
        if pipeline is None:
            return Outcome(Done.OTHER, None, False, False, "the spec is invalid")
        router = self.router
        if router is None:
            raise PermanentError("no traffic router: the rollout cannot be carried out")
        model = pipeline.spec.serving.name
        if isinstance(intent, DeployCandidate):
            ref, folder = self._model(view, pipeline, intent.version)
            shadow = pipeline.spec.serving.rollout.shadow is not None
            candidate = self.serving.serve(
                key, model, ref, folder, role="candidate", port=0, shadow=shadow
            )
            router.reconcile(key, self._stable_url(key), candidate)
        elif isinstance(intent, SetWeights):
            router.set_weights(key, intent.canary)
        elif isinstance(intent, SetMirror):
            router.set_mirror(key, intent.on)
        elif isinstance(intent, ServeStable):
            served = self.serving.status(key, model).ref
            if served is None or served.version != intent.version:
                ref, folder = self._model(view, pipeline, intent.version)
                self.serving.serve(key, model, ref, folder, port=0)
            routes = router.routes(key)
            attached = self.serving.url(key, "candidate") if routes and routes.candidate else None
            router.reconcile(key, self._stable_url(key), attached)
        elif isinstance(intent, RemoveCandidate):
            router.reconcile(key, self._stable_url(key), None)
            self.serving.stop(key, "candidate")
        else:
            raise TypeError(f"unknown intent {intent!r}")
        return None

    def _stable_url(self, key: PipelineKey) -> str:
        url = self.serving.url(key)
        if url is None:
            raise TemporaryError(f"{key}: the stable model server does not answer", delay=2.0)
        return url

    def _replay(
        self,
        key: PipelineKey,
        view: PipelineView,
        pipeline: ModelPipeline | None,
        rate: float | None,
    ) -> None:
        """Starts (``rate``) or stops (None) replaying the holdout at the serving endpoint."""
        running = self._replays.pop(key, None)
        if running is not None:
            running.stop()
        if rate is None or pipeline is None or self.router is None:
            return
        url = self.router.url(key) if hasattr(self.router, "url") else None
        if url is None:
            return
        # Here, not at the top: numpy is for replays only, and every command imports this.
        from mlcd.serving.holdout import holdout_samples
        from mlcd.serving.router.replay import Replay as Replayer

        samples = holdout_samples(pipeline, self.secrets(key.namespace), self.state_dir)
        self._replays[key] = Replayer(url, pipeline.spec.serving.name, samples, rate).start()

    def replaying(self, key: PipelineKey) -> bool:
        return key in self._replays

    def close(self) -> None:
        """Stops replayed traffic (the process is going away)."""
        for replay in self._replays.values():
            replay.stop()
        self._replays.clear()

    def artifacts(self, view: PipelineView, pipeline: ModelPipeline | None) -> StorageLocation:
        if pipeline is not None and pipeline.spec.artifacts is not None:
            return pipeline.spec.artifacts
        return StorageLocation(uri=view.default_artifacts)

    def _submit(
        self,
        key: PipelineKey,
        view: PipelineView,
        pipeline: ModelPipeline | None,
        resource: dict[str, Any],
        intent: Submit,
    ) -> Outcome:
        if pipeline is None:
            return Outcome(Done.SUBMIT, intent.run.id, False, False, "the spec is invalid")
        resource = {**resource, "spec": dict(resource["spec"])}
        if not resource["spec"].get("artifacts"):
            resource["spec"]["artifacts"] = {"uri": view.default_artifacts}
        baseline = None
        resolve = self.secrets(key.namespace)
        if intent.baseline is not None:
            store = open_store(self.artifacts(view, pipeline), resolve)
            meta = store.metadata(pipeline.spec.serving.name, intent.baseline.version) or {}
            baseline = {
                "version": intent.baseline.version,
                "metrics": meta.get("metrics") or intent.baseline.metrics,
                "data_stats": (meta.get("dataset") or {}).get("stats"),
            }
        names = [
            location.credentials_secret_ref.name
            for location in (pipeline.spec.dataset, pipeline.spec.artifacts)
            if location is not None and location.credentials_secret_ref is not None
        ]
        folder = self.credentials.materialize(key, intent.run.id, names, resolve)
        self.engine(intent.run.engine).submit(
            RunRequest(
                key=RunKey(key, intent.run.id, intent.run.attempt),
                trigger=intent.run.trigger,
                spec=resource,
                baseline=baseline,
                env={"MLCD_SECRETS_DIR": str(folder)},
            )
        )
        failpoints.hit("after-submit")  # the run is started, its status not yet written
        return Outcome(Done.SUBMIT, intent.run.id, True)

    def _promote(
        self,
        key: PipelineKey,
        view: PipelineView,
        pipeline: ModelPipeline | None,
        intent: Promote,
    ) -> Outcome:
        retry = (key.namespace + "/" + key.folder, intent.run.id)
        waiting = self.backoff.waiting(retry)
        if waiting is not None:
            return waiting
        model = pipeline.spec.serving.name if pipeline is not None else ""
        try:
            store = open_store(self.artifacts(view, pipeline), self.secrets(key.namespace))
            cache = self.state_dir / "serving" / key.namespace / key.folder / "versions"
            model_dir = store.fetch(model, intent.model.version, cache)
            if self.routed(pipeline):
                # Behind the router from the first model on: its address is the one clients
                # keep through every rollout.
                assert self.router is not None
                url = self.serving.serve(key, model, intent.model, model_dir, port=0)
                self.router.reconcile(key, url, None)
            else:
                self.serving.serve(key, model, intent.model, model_dir)
        except (MlcdError, OSError, httpx.HTTPError) as exc:
            outcome = _failed(intent, exc)
            if outcome.temporary:
                self.backoff.failed(retry, outcome)
            return outcome
        self.backoff.succeeded(retry)
        return Outcome(Done.PROMOTE, intent.run.id, True)

    def _finished(
        self,
        key: PipelineKey,
        view: PipelineView,
        pipeline: ModelPipeline | None,
        intent: Finished,
    ) -> None:
        """Keeps the run's full record beside the model and counts it. A record that cannot
        be written now stays in the engine's own store; the run is not held up for it."""
        summary = intent.summary
        run_key = RunKey(key, intent.run.id, intent.run.attempt)
        engine = self.engine(intent.run.engine)
        try:
            record = engine.get(run_key)
        except MlcdError:
            record = None
        base = record or RunRecord(id=summary.id, trigger=summary.trigger)
        reason = summary.reason
        if reason and reason.endswith("(see the record)") and base.reason:
            reason = base.reason  # the status keeps it short; the record keeps it whole
        final = base.model_copy(
            update={
                "result": summary.result,
                "stage": summary.stage,
                "reason": reason,
                "started_at": summary.started_at,
                "finished_at": summary.finished_at,
                "children": {**base.children, **intent.run.children},
            }
        )
        try:
            engine.finalize(run_key, final)
        except (MlcdError, OSError) as exc:
            LOG.warning("%s: could not finalize run %s: %s", key, summary.id, exc)
        if pipeline is not None:
            try:
                store = open_store(self.artifacts(view, pipeline), self.secrets(key.namespace))
                store.put_record(
                    pipeline.spec.serving.name,
                    record_path(key.namespace, key.name, key.uid, summary.id),
                    {
                        **final.model_dump(by_alias=True, mode="json"),
                        "pipeline": {"namespace": key.namespace, "name": key.name, "uid": key.uid},
                        "attempt": summary.attempt,
                    },
                )
            except (MlcdError, OSError) as exc:
                LOG.warning("%s: could not keep the record of run %s: %s", key, summary.id, exc)
        if self.metrics is not None:
            self.metrics.finished(key.namespace, key.name, final)


def _failed(intent: Intent, exc: BaseException) -> Outcome:
    kinds = {
        Submit: Done.SUBMIT,
        Promote: Done.PROMOTE,
        Cancel: Done.CANCEL,
        StopServing: Done.STOP_SERVING,
    }
    kind = kinds.get(type(intent), Done.OTHER)
    run = getattr(getattr(intent, "run", None), "id", None)
    temporary = isinstance(exc, TemporaryError | OSError | httpx.HTTPError)
    return Outcome(kind, run, False, temporary, str(exc) or type(exc).__name__)
