"""A small control loop for one rollout: observe, decide (the domain's ``advance``), carry out.

It drives the real pieces (the HAProxy router, Prometheus through the provider, model servers
already started by the caller) the way the operator's executor will, so the tests and the
benchmark see whole rollouts decided by Prometheus. Each intent is carried out as
:class:`mlcd.domain.rollout` documents it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from mlcd.domain.rollout import (
    DeployCandidate,
    Intent,
    Observation,
    PostEvent,
    QueryResult,
    RecordAnalysis,
    RemoveCandidate,
    RolloutState,
    RouterView,
    ServeStable,
    SetMirror,
    SetWeights,
    advance,
    analysis_due,
    analysis_queries,
    start,
)
from mlcd.domain.spec import Rollout
from mlcd.metrics.prometheus import PrometheusProvider, PrometheusUnavailable, QueryError
from mlcd.ports import PipelineKey
from mlcd.serving.router.haproxy import LocalRouter
from rollout.servers import MODEL, ModelServer


def served_version(server: ModelServer) -> str | None:
    """The version a server reports it serves (its served.json), if it answers at all."""
    try:
        if httpx.get(f"{server.url}/v2/health/ready", timeout=2).status_code != 200:
            return None
    except httpx.HTTPError:
        return None
    try:
        return str(json.loads(server.served.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class Driver:
    key: PipelineKey
    rollout: Rollout
    router: LocalRouter
    provider: PrometheusProvider
    stable: ModelServer
    candidate: ModelServer
    #: Every intent carried out, with the wall-clock time it was done.
    done: list[tuple[float, Intent]] = field(default_factory=list)
    state: RolloutState | None = None
    attached: bool = False

    def begin(self) -> None:
        candidate = served_version(self.candidate)
        assert candidate is not None, "the candidate server does not answer"
        self.router.reconcile(self.key, self.stable.url, None)
        self.state, intents = start(candidate, served_version(self.stable), _now())
        self.carry_out(intents)

    def observe(self) -> Observation:
        assert self.state is not None
        now = _now()
        routes = self.router.routes(self.key)
        view = RouterView(
            canary_weight=routes.canary_weight if routes else None,
            mirror=routes.mirror if routes else False,
            candidate_ready=self.router.candidate_ready(self.key),
            candidate_version=served_version(self.candidate) if self.attached else None,
            stable_version=served_version(self.stable),
        )
        targets = self.router.targets(self.key)
        results: dict[str, QueryResult] | None = None
        online = True
        if analysis_due(self.state, self.rollout, now):
            online = self.provider.is_online()
            if online:
                results = {}
                for planned in analysis_queries(self.state, self.rollout, targets):
                    try:
                        results[planned.query] = QueryResult(self.provider.query(planned.query))
                    except QueryError as exc:
                        results[planned.query] = QueryResult(error=str(exc))
                    except PrometheusUnavailable:
                        online, results = False, None
                        break
        return Observation(
            now=now, router=view, targets=targets, results=results, prometheus_online=online
        )

    def step(self) -> RolloutState:
        assert self.state is not None
        self.state, intents = advance(self.state, self.rollout, self.observe())
        self.carry_out(intents)
        return self.state

    def carry_out(self, intents: list[Intent]) -> None:
        for intent in intents:
            if isinstance(intent, DeployCandidate):
                self.router.reconcile(self.key, self.stable.url, self.candidate.url)
                self.attached = True
            elif isinstance(intent, SetWeights):
                self.router.set_weights(self.key, intent.canary)
            elif isinstance(intent, SetMirror):
                self.router.set_mirror(self.key, intent.on)
            elif isinstance(intent, ServeStable):
                self._serve_stable(intent.version)
            elif isinstance(intent, RemoveCandidate):
                self.router.reconcile(self.key, self.stable.url, None)
                self.attached = False
            elif isinstance(intent, PostEvent | RecordAnalysis):
                pass  # the operator posts an Event / counts the verdicts
            self.done.append((time.monotonic(), intent))

    def _serve_stable(self, version: str) -> None:
        if served_version(self.stable) == version:
            return
        source = self.stable.folder / f"pointer-{version}.json"
        self.stable.pointer.write_text(source.read_text())
        response = httpx.post(f"{self.stable.url}/v2/repository/models/{MODEL}/load", timeout=60)
        response.raise_for_status()

    def run(self, until: set[str], timeout: float, every: float = 0.25) -> RolloutState:
        """Steps until the phase is one of ``until`` (bounded by ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.step()
            if state.phase in until:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout still {state.phase} after {timeout}s: {state.reason}")
            time.sleep(every)

    def weights(self) -> list[tuple[float, int]]:
        return [(t, i.canary) for t, i in self.done if isinstance(i, SetWeights)]

    def events(self) -> list[str]:
        return [i.reason for _, i in self.done if isinstance(i, PostEvent)]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def summary(state: RolloutState) -> list[dict[str, Any]]:
    """The steps and their analyses, as a test's failure message shows them."""
    return [
        {
            "step": s.step,
            "weight": s.weight,
            "analyses": [
                [(r.metric, r.value, r.samples, r.verdict) for r in a.results] for a in s.analyses
            ],
        }
        for s in state.steps
    ]
