"""One pass of the loop for one pipeline: observe, decide, execute.

The operator's handlers call :meth:`Controller.reconcile` with the resource as the API server
has it and write the status it returns; ``mlcd run`` calls it with a resource read from a file
and keeps the status in a file. Passes of one pipeline must not overlap (the callers serialize
them); passes of different pipelines may run at once, and the operator's capacity is checked
and taken under one lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlcd.artifacts.credentials import SecretResolver
from mlcd.control.credentials import Credentials
from mlcd.control.execute import Executor
from mlcd.control.ledger import Ledger
from mlcd.control.observe import Observer, ObserverSettings, key_of, resource_of
from mlcd.domain.decide import Decision, decide
from mlcd.domain.intents import Notice, Started
from mlcd.domain.observations import Outcome, PipelineView
from mlcd.domain.status import ModelPipelineStatus
from mlcd.metrics.operator import OperatorMetrics
from mlcd.ports import MetricProvider, ModelServing, PipelineBackend, TrafficRouter


@dataclass
class ControllerSettings:
    #: Runs, credentials, the default model repository, servers.
    state_dir: pathlib.Path
    #: The engine of pipelines that do not name one.
    default_engine: str = "local"
    #: Runs in progress at once across all pipelines; None: no limit.
    max_active_runs: int | None = 2
    #: The model repository when ``spec.artifacts`` is not set, by namespace; default
    #: ``<state_dir>/models/<namespace>``.
    default_artifacts: Callable[[str], str] | None = None


class Controller:
    def __init__(
        self,
        settings: ControllerSettings,
        engines: Mapping[str, PipelineBackend],
        serving: ModelServing,
        secrets: Callable[[str], SecretResolver],
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        metrics: OperatorMetrics | None = None,
        router: TrafficRouter | None = None,
        provider: MetricProvider | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = Ledger(settings.max_active_runs)
        credentials = Credentials(settings.state_dir / "secrets")
        artifacts = settings.default_artifacts or (
            lambda namespace: str(settings.state_dir / "models" / namespace)
        )
        self.observer = Observer(
            ObserverSettings(default_engine=settings.default_engine, default_artifacts=artifacts),
            engines=engines,
            serving=serving,
            secrets=secrets,
            ledger=self.ledger,
            credentials=credentials,
            clock=clock,
            router=router,
            provider=provider,
        )
        self.executor = Executor(
            engines=engines,
            default_engine=settings.default_engine,
            serving=serving,
            secrets=secrets,
            credentials=credentials,
            state_dir=settings.state_dir,
            metrics=metrics,
            router=router,
        )
        self.observer.replaying = self.executor.replaying
        self._outcomes: dict[str, tuple[Outcome, ...]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _id(view: PipelineView) -> str:
        return view.uid or str(key_of(view))

    def seed(self, bodies: list[Mapping[str, Any]]) -> None:
        """Counts the runs in progress recorded in these resources (after a restart, before
        any pass), so the operator's capacity is right from the first pass."""
        for body in bodies:
            meta = body.get("metadata") or {}
            runs = ((body.get("status") or {}).get("activeRuns")) or []
            pipeline = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
            self.ledger.set(pipeline, [str(r.get("id")) for r in runs])

    def reconcile(
        self,
        body: Mapping[str, Any],
        *,
        post: Callable[[Notice], None] | None = None,
        trigger: str | None = None,
        scheduling: bool = True,
        interrupted: bool = False,
    ) -> Decision:
        view = self.observer.view(body, trigger=trigger, scheduling=scheduling)
        status = ModelPipelineStatus.model_validate(body.get("status") or {})
        ident = self._id(view)
        with self._lock:
            outcomes = self._outcomes.pop(ident, ())
        seen = self.observer.observe(view, status, outcomes, interrupted)
        decision = decide(status, seen)
        if any(isinstance(i, Started) for i in decision.intents):
            # Check the capacity and take it in one step: two pipelines never both take the
            # last slot. The decision is made again on the exact count.
            with self.ledger.lock:
                seen = dataclasses.replace(seen, free_slots=self.ledger.free_for(ident))
                decision = decide(status, seen)
                self.ledger.set(ident, [r.id for r in decision.status.active_runs])
        else:
            self.ledger.set(ident, [r.id for r in decision.status.active_runs])
        done = self.executor.execute(
            view,
            self.observer.pipeline(view),
            resource_of(body),
            decision.intents,
            post,
            self.observer.secret_values(view),
        )
        with self._lock:
            self._outcomes[ident] = done
        if decision.cleaned_up:
            self.forget(body)
        return decision

    def close(self) -> None:
        """Stops what runs in this process for the pipelines (replayed traffic)."""
        self.executor.close()

    def forget(self, body: Mapping[str, Any]) -> None:
        view = self.observer.view(body)
        ident = self._id(view)
        self.ledger.forget(ident)
        self.observer.forget(view)
        with self._lock:
            self._outcomes.pop(ident, None)
