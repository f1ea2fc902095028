"""Waiting on a child object's conditions, with the pod-level reasons a failure needs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mlcd.errors import TemporaryError
from mlcd.pipeline.kubeflow.kube import Kind, Kube


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The condition of type ``kind`` if it is True."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and str(cond.get("status")) == "True":
            found: Mapping[str, Any] = cond
            return found
    return None


def until(
    kube: Kube,
    kind: Kind,
    namespace: str,
    name: str,
    done: Callable[[Mapping[str, Any]], bool],
    poll: float,
    deadline: float | None = None,
) -> Mapping[str, Any] | None:
    """Polls until ``done(object)``; None when the object is gone or the deadline passed."""
    while True:
        try:
            live = kube.get(kind, namespace, name)
        except TemporaryError:  # the API server did not answer this time: look again
            live = {}
        if live is None or (live and done(live)):
            return live
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(poll)


def pod_problems(pods: Iterable[Any]) -> list[str]:
    """One line per pod that failed or cannot start: what Kubernetes says about it."""
    lines: list[str] = []
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        name, status = pod.metadata.name, pod.status
        phase = status.phase if status else None
        said = _containers(status)
        if phase == "Failed":
            lines.append(f"pod {name} failed: {said or status.reason or status.message or '?'}")
        elif phase == "Pending":
            why = said
            for cond in (status.conditions or []) if status else []:
                if cond.type == "PodScheduled" and cond.status != "True":
                    why = f"{cond.reason}: {cond.message}" if cond.message else cond.reason
            lines.append(f"pod {name} Pending" + (f" ({why})" if why else ""))
    return lines


def _containers(status: Any) -> str:
    parts: list[str] = []
    for cs in (status.container_statuses or []) if status else []:
        state = cs.state
        if state and state.terminated and state.terminated.exit_code:
            t = state.terminated
            text = f"container {cs.name} exited {t.exit_code} ({t.reason or 'Error'})"
            parts.append(text + (f": {t.message.strip()}" if t.message else ""))
        elif state and state.waiting and state.waiting.reason not in (None, "ContainerCreating"):
            w = state.waiting
            parts.append(
                f"container {cs.name} {w.reason}" + (f": {w.message}" if w.message else "")
            )
    return "; ".join(parts)
