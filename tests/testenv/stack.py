"""The stack: components started on demand in dependency order, stopped together."""

from __future__ import annotations

import atexit
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from testenv.component import Component
from testenv.gateway import Traefik
from testenv.haproxy import HAProxy
from testenv.kserve import KServe
from testenv.kube import Etcd, KubeAPIServer, KubeControllerManager, KubeScheduler, Kwok
from testenv.kubeflow import JobSet, KatibCRDs, Trainer, TrainingOperator
from testenv.minio import MinIO
from testenv.node import Containerd, CoreDNS, Kubelet, KubeProxy, NodeMinIO, NodeSandbox
from testenv.proc import ComponentError, pid_alive, stop_groups
from testenv.prometheus import Prometheus

COMPONENTS: dict[str, type[Component]] = {
    c.name: c
    for c in (
        Etcd,
        KubeAPIServer,
        KubeControllerManager,
        KubeScheduler,
        Kwok,
        MinIO,
        Prometheus,
        HAProxy,
        TrainingOperator,
        JobSet,
        Trainer,
        KatibCRDs,
        NodeSandbox,
        Containerd,
        Kubelet,
        KubeProxy,
        CoreDNS,
        NodeMinIO,
        KServe,
        Traefik,
    )
}

# What a fixture (or `hack/testenv up`) asks for, in component names.
GROUPS: dict[str, tuple[str, ...]] = {
    "apiserver": ("etcd", "kube-apiserver", "kube-controller-manager"),
    "nodes": ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"),
    "minio": ("minio",),
    "prometheus": ("prometheus",),
    "haproxy": ("haproxy",),
    # The Kubeflow controllers (the fixtures' names are the groups' names).
    "training_operator": ("training-operator",),
    "trainer": ("jobset", "trainer"),
    "katib_crds": ("katib-crds",),
    "real_node": (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "node-sandbox",
        "containerd",
        "kubelet",
        "kube-proxy",
        "coredns",
    ),
    # MinIO as the real node's pods reach it (the fixture asks for the real node too).
    "node_minio": ("node-minio",),
    "kserve": (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "kserve",
    ),
    # A Gateway API implementation serving KServe's Gateway.
    "gateway": (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "kserve",
        "traefik",
    ),
}

POLL = 0.05

_live_stacks: weakref.WeakSet[Stack] = weakref.WeakSet()


@atexit.register
def _stop_live_stacks() -> None:
    for stack in list(_live_stacks):
        stack.stop()


def expand(names: Iterable[str]) -> list[str]:
    """Component names for groups or components, with their requirements, in start order."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for required in COMPONENTS[name].requires:
            visit(required)
        order.append(name)

    for name in names:
        for component in GROUPS.get(name, (name,)):
            if component not in COMPONENTS:
                raise KeyError(f"unknown component {component!r}; known: {sorted(COMPONENTS)}")
            visit(component)
    return order


class Stack:
    """Components under one root directory (data, certs, logs), started on demand.

    ``detach=True`` lets the processes outlive this Python process (``hack/testenv up``);
    otherwise they die with it even if it is killed.
    """

    def __init__(self, root: Path, detach: bool = False) -> None:
        self.root = root
        self.log_dir = root / "logs"
        self.detach = detach
        self._components: dict[str, Component] = {}
        self._ready: set[str] = set()
        self._failed: dict[str, ComponentError] = {}
        # Seconds from the up() call that started a component to the component being ready.
        self.ready_after: dict[str, float] = {}
        if not detach:
            _live_stacks.add(self)  # stopped at interpreter exit at the latest

    def component(self, name: str) -> Component:
        return self._components[name]

    def ready(self, name: str) -> bool:
        return name in self._ready

    def components(self) -> list[Component]:
        return list(self._components.values())

    def up(self, *names: str) -> None:
        """Start what ``names`` need and is not running yet; return when all of it is ready.

        Independent components start together; each starts as soon as what it requires is
        ready. On a failure, everything this call started is stopped, and a
        :class:`ComponentError` names the component, with the tail of its log. A component
        that failed once is not retried: later calls raise the same error at once.
        """
        todo = [name for name in expand(names) if name not in self._ready]
        for name in todo:
            if name in self._failed:
                raise self._failed[name]
        begun = time.monotonic()
        started: dict[str, float] = {}
        current = ""  # the component being acted on, to blame for an unexpected exception
        try:
            while todo:
                for name in todo:
                    if name in started:
                        continue
                    if all(r in self._ready for r in COMPONENTS[name].requires):
                        current = name
                        component = COMPONENTS[name](self)
                        self._components[name] = component
                        started[name] = time.monotonic()
                        component.start()
                for name in list(todo):
                    if name not in started:
                        continue
                    current = name
                    component = self._components[name]
                    component.check_alive()
                    if component.probe():
                        component.after_ready()
                        self._ready.add(name)
                        self.ready_after[name] = time.monotonic() - begun
                        todo.remove(name)
                    elif time.monotonic() - started[name] > component.start_timeout:
                        raise component.error(f"not ready after {component.start_timeout:.0f} s")
                if todo:
                    time.sleep(POLL)
        except ComponentError as exc:
            self._failed[exc.component] = exc
            self._stop(list(started))
            raise
        except Exception as exc:
            # A missing binary, a probe or a set-up step raised: blame the component at hand.
            reason = f"{type(exc).__name__}: {exc}"
            failing = self._components.get(current)
            error = failing.error(reason) if failing else ComponentError(current or "stack", reason)
            self._failed[error.component] = error
            self._stop(list(started))
            raise error from exc
        except BaseException:
            self._stop(list(started))
            raise

    def up_quietly(self, *names: str) -> ComponentError | None:
        """:meth:`up`, returning the error instead of raising it (it is remembered)."""
        try:
            self.up(*names)
        except ComponentError as exc:
            return exc
        return None

    def _stop(self, names: list[str]) -> None:
        processes = [p for n in reversed(names) for p in self._components[n].processes]
        stop_groups([p.pid for p in processes if p.pid is not None])
        for name in names:
            self._ready.discard(name)
            self._components.pop(name, None)

    def stop(self) -> None:
        """Stop every component (all at once: SIGTERM, a grace period, then SIGKILL)."""
        self._stop(list(self._components))

    def exports(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for name in self._ready:
            merged.update(self._components[name].exports())
        return merged

    def state(self) -> dict[str, Any]:
        """Enough to find, report on and stop the running stack from another process."""
        return {
            "root": str(self.root),
            "exports": self.exports(),
            "components": {
                name: {
                    "pids": [p.pid for p in component.processes if p.pid is not None],
                    "starttimes": [start_time(p.pid) for p in component.processes if p.pid],
                    "log": str(component.log_path),
                    **component.state(),
                }
                for name, component in self._components.items()
            },
        }


def start_time(pid: int) -> int:
    """The kernel's start time of ``pid`` (to tell a recorded process from a reused pid)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(raw[raw.rindex(")") + 2 :].split()[19])


def running(pid: int, starttime: int) -> bool:
    return pid_alive(pid) and start_time(pid) == starttime


def stop_recorded(state: dict[str, Any]) -> list[str]:
    """Stop the processes a saved :meth:`Stack.state` lists; return the names stopped."""
    stopped: list[str] = []
    pgids: list[int] = []
    for name, facts in reversed(list(state.get("components", {}).items())):
        for pid, starttime in zip(facts.get("pids", []), facts.get("starttimes", []), strict=False):
            if running(pid, starttime):
                pgids.append(pid)
                stopped.append(name)
    stop_groups(pgids)
    return stopped
