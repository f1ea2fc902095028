"""The kopf handlers: thin. Each reads the resource, runs one pass of the loop (observe,
decide, execute), writes the status if it changed, and reports. Nothing is written when
nothing changed."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from mlcd.control.controller import Controller
from mlcd.domain.decide import Decision
from mlcd.domain.intents import Notice
from mlcd.domain.spec import API_GROUP, API_VERSION
from mlcd.domain.status import ModelPipelineStatus
from mlcd.errors import PermanentError, TemporaryError
from mlcd.k8s.kube import PLURAL, Conflict, Kube
from mlcd.metrics.operator import OperatorMetrics

CONFLICT_RETRIES = 5
#: Seconds between attempts to finish cleaning up a deleted pipeline.
CLEANUP_RETRY = 2.0
Log = logging.Logger | logging.LoggerAdapter[Any]
LOG = logging.getLogger("mlcd.operator")


@dataclass
class Memo:
    """What the handlers share: passed to kopf as its memo, no module globals."""

    controller: Controller
    kube: Kube
    metrics: OperatorMetrics
    #: Posts an Event; by default through the API server (``Kube.post_event``).
    post: Callable[[dict[str, Any], Notice], None] | None = None
    #: The namespaces watched (empty: all), for counting runs in progress at start.
    namespaces: list[str] = field(default_factory=list)
    locks: defaultdict[str, threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock)
    )
    guard: threading.Lock = field(default_factory=threading.Lock)
    #: Our last status write to each object: the resourceVersion it got (its echo is not
    #: news) and the status written.
    written: dict[str, tuple[str, ModelPipelineStatus]] = field(default_factory=dict)

    def lock(self, uid: str) -> threading.Lock:
        with self.guard:
            return self.locks[uid]


def _poster(
    body: dict[str, Any], memo: Memo, posted: set[tuple[str, str]]
) -> Callable[[Notice], None]:
    """Posts each Event once per reconcile, even when a conflict makes it run again."""
    post = memo.post or memo.kube.post_event

    def one(notice: Notice) -> None:
        if (notice.reason, notice.message) in posted:
            return
        posted.add((notice.reason, notice.message))
        post(body, notice)

    return one


def reconcile(body: dict[str, Any], memo: Memo, logger: Log) -> Decision | None:
    """One serialized pass; a stale resourceVersion is retried with a fresh read. Events are
    posted (by the pass) before the status that records their decisions."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    uid = str(meta.get("uid"))
    with memo.lock(uid):
        started = time.monotonic()
        written = memo.written.get(uid)
        if (
            written is not None
            and ModelPipelineStatus.model_validate(body.get("status") or {}) != written[1]
        ):
            # Only this operator writes the status: a body without our last write is older
            # than it (kopf has not seen it yet). Decide on the object as it is now.
            body = memo.kube.get(namespace, name)
        posted: set[tuple[str, str]] = set()
        decision = None
        for _ in range(CONFLICT_RETRIES):
            try:
                decision = memo.controller.reconcile(body, post=_poster(body, memo, posted))
            except PermanentError as exc:
                memo.metrics.errors.labels("permanent").inc()
                logger.error("cannot reconcile: %s", exc)
                return None
            except TemporaryError as exc:
                memo.metrics.errors.labels("temporary").inc()
                raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
            current = ModelPipelineStatus.model_validate(body.get("status") or {})
            if decision.status == current:
                break
            try:
                version = memo.kube.write_status(body, decision.status)
            except Conflict:
                memo.metrics.errors.labels("conflict").inc()
                body = memo.kube.get(namespace, name)
                continue
            except TemporaryError as exc:
                memo.metrics.errors.labels("temporary").inc()
                raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
            if version is not None:
                memo.written[uid] = (version, decision.status)
            break
        else:
            raise kopf.TemporaryError("the status kept changing under us", delay=1)
        memo.metrics.reconciles.observe(time.monotonic() - started)
        if decision is not None:
            _report(namespace, name, decision, memo)
        return decision


def _report(namespace: str, name: str, decision: Decision, memo: Memo) -> None:
    memo.metrics.observe(namespace, name, decision.status)
    for notice in decision.notices:
        level = logging.WARNING if notice.type == "Warning" else logging.INFO
        LOG.log(level, "%s/%s %s: %s", namespace, name, notice.reason, notice.message)


def register(registry: kopf.OperatorRegistry, tick: float) -> None:
    """Adds mlcd's handlers to ``registry``; runs in progress are looked at every ``tick``."""
    resource = (API_GROUP, API_VERSION, PLURAL)

    @kopf.on.startup(registry=registry, retries=30, backoff=2)
    def count_runs(memo: Any, **_: Any) -> None:
        # After a restart the capacity counts what already runs, before any pass starts more.
        try:
            for namespace in memo.namespaces or [None]:
                memo.controller.seed(memo.kube.items(namespace))
        except TemporaryError as exc:
            raise kopf.TemporaryError(f"counting the runs in progress: {exc}", delay=2) from exc

    @kopf.on.cleanup(registry=registry)
    def stop_replays(memo: Any, **_: Any) -> None:
        memo.controller.close()  # replayed traffic is this process' own

    @kopf.on.event(*resource, id="reconcile-on-change", registry=registry)
    def on_event(body: kopf.Body, type: str | None, memo: Any, logger: Log, **_: Any) -> None:
        # Every change (created, spec edited, annotated, status written) gets a look at once.
        meta = body.get("metadata", {})
        uid = str(meta.get("uid"))
        if type == "DELETED":
            memo.written.pop(uid, None)
            return
        if uid in memo.written and memo.written[uid][0] == meta.get("resourceVersion"):
            return  # the echo of our own status write
        if meta.get("deletionTimestamp"):
            return  # the deletion handler cleans up, and is retried until it is done
        reconcile(dict(body), memo, logger)

    @kopf.timer(*resource, id="reconcile-on-tick", interval=tick, registry=registry)
    def on_tick(body: kopf.Body, memo: Any, logger: Log, **_: Any) -> None:
        if body.get("metadata", {}).get("deletionTimestamp"):
            return
        reconcile(dict(body), memo, logger)

    @kopf.on.delete(*resource, id="clean-up", registry=registry)
    def on_delete(body: kopf.Body, memo: Any, logger: Log, **_: Any) -> None:
        """Stops the pipeline's runs and its serving; artifacts stay. kopf keeps the finalizer
        until this returns, and retries it until everything is stopped."""
        meta = body["metadata"]
        try:
            decision = reconcile(dict(body), memo, logger)
        except kopf.TemporaryError:
            raise
        except (TemporaryError, PermanentError) as exc:
            raise kopf.TemporaryError(f"cleaning up: {exc}", delay=CLEANUP_RETRY) from exc
        if decision is None or not decision.cleaned_up:
            waiting = next(
                (
                    c.message
                    for c in (decision.status.conditions if decision else [])
                    if c.type == "Deleting"
                ),
                "cleanup did not finish",
            )
            raise kopf.TemporaryError(waiting, delay=CLEANUP_RETRY)
        memo.metrics.forget(meta["namespace"], meta["name"])
        LOG.info(
            "%s/%s deleted: its runs and serving are stopped, its artifacts kept",
            meta["namespace"],
            meta["name"],
        )
