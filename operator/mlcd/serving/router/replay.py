"""Replayed traffic (``spec.serving.rollout.traffic``, Flagger's load tester idea).

While a rollout is analysed, a demo or a test has no users; :class:`Replay` sends the holdout's
samples, one per request (V2 inference protocol), to the serving endpoint at a steady rate, from
a few threads, until stopped or for at most ``seconds``. Every answer's status (or the error) is
counted. It is for demos and tests only: in production, real traffic is what a rollout judges.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np

_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64"}
_DATATYPES[np.dtype(np.int64)] = "INT64"


def infer_body(sample: np.ndarray, input_name: str = "input") -> dict[str, Any]:
    """One sample as a V2 inference request (a batch of one)."""
    batch = np.asarray(sample)[None, ...]
    if batch.dtype not in _DATATYPES:
        batch = batch.astype(np.float32)
    return {
        "inputs": [
            {
                "name": input_name,
                "shape": list(batch.shape),
                "datatype": _DATATYPES[batch.dtype],
                "data": batch.ravel().tolist(),
            }
        ]
    }


class Replay:
    """Sends ``samples`` (cycled) to ``{url}/v2/models/{model}/infer`` at ``rate`` per second."""

    def __init__(
        self,
        url: str,
        model: str,
        samples: np.ndarray,
        rate: float,
        input_name: str = "input",
        threads: int = 4,
        seconds: float = 3600.0,
        timeout: float = 30.0,
    ) -> None:
        if rate <= 0 or not len(samples):
            raise ValueError("a replay needs a positive rate and at least one sample")
        self.endpoint = f"{url.rstrip('/')}/v2/models/{model}/infer"
        self.bodies = [infer_body(s, input_name) for s in samples]
        self.rate, self.seconds, self.timeout = rate, seconds, timeout
        self.statuses: Counter[int | str] = Counter()
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(n, threads), daemon=True, name=f"replay-{n}")
            for n in range(threads)
        ]

    def start(self) -> Replay:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()

    def __enter__(self) -> Replay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def sent(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    def _run(self, number: int, threads: int) -> None:
        period = threads / self.rate
        began = time.monotonic()
        bodies = itertools.islice(itertools.cycle(self.bodies), number, None, threads)
        with httpx.Client(timeout=self.timeout) as client:
            for i, body in enumerate(bodies):
                if self._stop.is_set() or time.monotonic() - began > self.seconds:
                    return
                started = time.monotonic()
                try:
                    outcome: int | str = client.post(self.endpoint, json=body).status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                took = time.monotonic() - started
                with self._lock:
                    self.statuses[outcome] += 1
                    self.latencies.append(took)
                wait = began + (i + 1) * period - time.monotonic()
                if wait > 0:
                    self._stop.wait(wait)
