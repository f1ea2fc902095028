"""The kopf handlers: thin. Each reads the resource, asks the reconciler, writes the status if
it changed, and reports. Nothing is written when nothing changed."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

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


def post_event(body: dict[str, Any], notice: Notice) -> None:
    kopf.event(
        cast(kopf.Body, body), type=notice.type, reason=notice.reason, message=notice.message
    )


@dataclass
class Memo:
    """What the handlers share: passed to kopf as its memo, no module globals."""

    reconciler: Reconciler
    kube: Kube
    metrics: OperatorMetrics
    post: Callable[[dict[str, Any], Notice], None] = post_event
    locks: defaultdict[str, threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock)
    )
    guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, uid: str) -> threading.Lock:
        with self.guard:
            return self.locks[uid]


def _dump(status: ModelPipelineStatus) -> dict[str, Any]:
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def reconcile(body: dict[str, Any], memo: Memo, logger: Log) -> None:
    """One serialized reconcile; a stale resourceVersion is retried with a fresh read."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    with memo.lock(str(meta.get("uid"))):
        started = time.monotonic()
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
            if _dump(plan.status) == _dump(current):
                break
            try:
                memo.kube.write_status(body, plan.status)
                break
            except Conflict:
                memo.metrics.errors.labels("conflict").inc()
                body = memo.kube.get(namespace, name)
        else:
            raise kopf.TemporaryError("the status kept changing under us", delay=1)
        memo.metrics.reconciles.observe(time.monotonic() - started)
        _report(body, plan, memo, logger)


def _report(body: dict[str, Any], plan: Plan, memo: Memo, logger: Log) -> None:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    for run in plan.started:
        memo.metrics.started(namespace, name, run.trigger)
    for record in plan.finished:
        memo.metrics.finished(namespace, name, record)
    memo.metrics.observe(namespace, name, plan.status)
    for notice in plan.notices:
        memo.post(body, notice)
        level = logging.WARNING if notice.type == "Warning" else logging.INFO
        LOG.log(level, "%s/%s %s: %s", namespace, name, notice.reason, notice.message)


def register(registry: kopf.OperatorRegistry, tick: float) -> None:
    """Adds mlcd's handlers to ``registry``; runs in progress are looked at every ``tick``."""
    resource = (API_GROUP, API_VERSION, PLURAL)

    @kopf.on.event(*resource, id="reconcile-on-change", registry=registry)
    def on_event(body: kopf.Body, type: str | None, memo: Any, logger: Log, **_: Any) -> None:
        # Every change (created, spec edited, annotated, status written) gets a look at once.
        if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
            return
        reconcile(dict(body), memo, logger)

    @kopf.timer(*resource, id="reconcile-on-tick", interval=tick, registry=registry)
    def on_tick(body: kopf.Body, memo: Any, logger: Log, **_: Any) -> None:
        reconcile(dict(body), memo, logger)

    @kopf.on.delete(*resource, id="stop-runs-and-serving", registry=registry)
    def on_delete(body: kopf.Body, memo: Any, logger: Log, **_: Any) -> None:
        meta = body["metadata"]
        memo.reconciler.cleanup(dict(body))
        memo.metrics.forget(meta["namespace"], meta["name"])
        logger.info(
            "stopped the runs and the serving of %s/%s; artifacts are kept",
            meta["namespace"],
            meta["name"],
        )
