"""The operator's capacity: runs in progress across all pipelines, checked and taken under one
lock, so two pipelines never both take the last slot."""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Ledger:
    def __init__(self, limit: int | None) -> None:
        #: Runs at once across all pipelines; None: no limit (one machine, one run).
        self.limit = limit
        self.lock = threading.RLock()
        self._runs: dict[str, frozenset[str]] = {}

    def free_for(self, pipeline: str) -> int:
        """Slots left for ``pipeline``: the limit less the runs of every other pipeline (its
        own runs are in its status, which the decide step counts)."""
        if self.limit is None:
            return 1_000_000
        with self.lock:
            others = sum(len(r) for p, r in self._runs.items() if p != pipeline)
        return self.limit - others

    def set(self, pipeline: str, runs: Iterable[str]) -> None:
        with self.lock:
            ids = frozenset(runs)
            if ids:
                self._runs[pipeline] = ids
            else:
                self._runs.pop(pipeline, None)

    def forget(self, pipeline: str) -> None:
        self.set(pipeline, ())

    def total(self) -> int:
        with self.lock:
            return sum(len(r) for r in self._runs.values())
