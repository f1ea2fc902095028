"""The kopf handlers: thin. Each reads the resource, asks the reconciler, writes the status if
it changed, and reports. Nothing is written when nothing changed."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from mlcd.domain.lifecycle import Notice
from mlcd.domain.spec import API_GROUP, API_VERSION
from mlcd.domain.status import ModelPipelineStatus
from mlcd.errors import PermanentError, TemporaryError
from mlcd.k8s.kube import PLURAL, Conflict, Kube
from mlcd.metrics.operator import OperatorMetrics
from mlcd.reconcile import Plan, Reconciler

CONFLICT_RETRIES = 5
Log = logging.Logger | logging.LoggerAdapter[Any]
LOG = logging.getLogger("mlcd.operator")


@dataclass
class Memo:
    """What the handlers share: passed to kopf as its memo, no module globals."""

    reconciler: Reconciler
    kube: Kube
    metrics: OperatorMetrics
    #: Posts an Event; by default through the API server (``Kube.post_event``).
    post: Callable[[dict[str, Any], Notice], None] | None = None
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


def reconcile(body: dict[str, Any], memo: Memo, logger: Log) -> None:
    """One serialized reconcile; a stale resourceVersion is retried with a fresh read."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    with memo.lock(str(meta.get("uid"))):
        started = time.monotonic()
        uid = str(meta.get("uid"))
        written = memo.written.get(uid)
        if (
            written is not None
            and ModelPipelineStatus.model_validate(body.get("status") or {}) != written[1]
        ):
            # Only this operator writes the status: a body without our last write is older
            # than it (kopf has not seen it yet). Decide on the object as it is now.
            body = memo.kube.get(namespace, name)
        posted: set[tuple[str, str]] = set()  # a retry after a conflict repeats no Event
        for _ in range(CONFLICT_RETRIES):
            try:
                plan = memo.reconciler.reconcile(body)
            except PermanentError as exc:
                memo.metrics.errors.labels("permanent").inc()
                logger.error("cannot reconcile: %s", exc)
                return
            except TemporaryError as exc:
                memo.metrics.errors.labels("temporary").inc()
                raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
            current = ModelPipelineStatus.model_validate(body.get("status") or {})
            if plan.status == current:
                break
            _post(body, plan, memo, posted)  # before the status that records the decisions
            try:
                version = memo.kube.write_status(body, plan.status)
                if version is not None:
                    memo.written[uid] = (version, plan.status)
                break
            except Conflict:
                memo.metrics.errors.labels("conflict").inc()
                body = memo.kube.get(namespace, name)
        else:
            raise kopf.TemporaryError("the status kept changing under us", delay=1)
        memo.metrics.reconciles.observe(time.monotonic() - started)
        _report(body, plan, memo, logger)


def _post(body: dict[str, Any], plan: Plan, memo: Memo, posted: set[tuple[str, str]]) -> None:
    post = memo.post or memo.kube.post_event
    for notice in plan.notices:
        if (notice.reason, notice.message) in posted:
            continue
        posted.add((notice.reason, notice.message))
        try:
            post(body, notice)
        except TemporaryError as exc:
            LOG.warning(
                "could not post %s for %s: %s", notice.reason, body["metadata"]["name"], exc
            )


def _report(body: dict[str, Any], plan: Plan, memo: Memo, logger: Log) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    for run in plan.started:
        memo.metrics.started(namespace, name, run.trigger)
    for record in plan.finished:
        memo.metrics.finished(namespace, name, record)
    memo.metrics.observe(namespace, name, plan.status)
    for notice in plan.notices:
        level = logging.WARNING if notice.type == "Warning" else logging.INFO
        LOG.log(level, "%s/%s %s: %s", namespace, name, notice.reason, notice.message)


def register(registry: kopf.OperatorRegistry, tick: float) -> None:
    """Adds mlcd's handlers to ``registry``; runs in progress are looked at every ``tick``."""
    resource = (API_GROUP, API_VERSION, PLURAL)

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
            # Watching handlers run before kopf releases its finalizer: stop what runs first.
            cleanup(dict(body), memo)
            return
        reconcile(dict(body), memo, logger)

    @kopf.timer(*resource, id="reconcile-on-tick", interval=tick, registry=registry)
    def on_tick(body: kopf.Body, memo: Any, logger: Log, **_: Any) -> None:
        if body.get("metadata", {}).get("deletionTimestamp"):
            return
        reconcile(dict(body), memo, logger)


def cleanup(body: dict[str, Any], memo: Memo) -> None:
    """The pipeline is being deleted: its runs and its serving stop; artifacts stay."""
    meta = body["metadata"]
    with memo.lock(str(meta.get("uid"))):
        memo.reconciler.cleanup(body)
    memo.metrics.forget(meta["namespace"], meta["name"])
    LOG.info(
        "%s/%s deleted: its runs and serving are stopped, its artifacts kept",
        meta["namespace"],
        meta["name"],
    )
