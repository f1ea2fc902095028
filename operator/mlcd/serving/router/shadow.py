"""Shadow comparison: the candidate server also scores what it answers with the stable model.

While a rollout shadows, the candidate receives only mirrored requests and its answers are
discarded, so the proxy cannot pair them with the stable server's answers. The pairing happens
where both are at hand: the candidate server (started with ``MLCD_SERVING_SHADOW_OF`` naming
the stable server's pointer file) loads the stable model next to its own and, after answering,
scores the same input with it in a background thread. It counts the rows it compared and those
whose top class differs, as Prometheus counters on its own ``/metrics``::

    mlcd_shadow_predictions_total{model_name}     rows compared
    mlcd_shadow_disagreements_total{model_name}   rows whose top class differs from stable's
    mlcd_shadow_skipped_total{model_name}         rows not compared (the queue was full)

The comparison never delays an answer: the stable model runs after the candidate answered, off
the request path; when it falls behind, rows are skipped and counted, never guessed.
"""

from __future__ import annotations

import json
import logging
import pathlib
import queue
import threading
from typing import Any

import numpy as np
from prometheus_client import Counter

_LABELS = ["model_name"]
PREDICTIONS = Counter("mlcd_shadow_predictions", "Rows compared with the stable model.", _LABELS)
DISAGREEMENTS = Counter(
    "mlcd_shadow_disagreements",
    "Rows whose top class differs from the stable model's.",
    _LABELS,
)
SKIPPED = Counter(
    "mlcd_shadow_skipped", "Rows not compared: the comparison queue was full.", _LABELS
)
QUEUE_SIZE = 256

log = logging.getLogger("mlcd.serving.shadow")


def top_classes(scores: Any) -> np.ndarray:
    array = np.asarray(scores)
    return array.reshape(array.shape[0], -1).argmax(axis=1) if array.ndim > 1 else array


def _features(payload: Any) -> np.ndarray:
    if isinstance(payload, dict):  # V1
        return np.asarray(payload["instances"])
    return np.asarray(payload.inputs[0].as_numpy())


def _answered(result: Any) -> np.ndarray:
    if isinstance(result, dict):
        return np.asarray(result["predictions"])
    return np.asarray(result.outputs[0].as_numpy())


class StableScorer:
    """The stable model in an onnxruntime session of its own, fed from a bounded queue."""

    def __init__(self, model_name: str, pointer: pathlib.Path) -> None:
        import onnxruntime as ort

        from mlcd.artifacts.hashing import sha256_file

        target = json.loads(pointer.read_text())
        path = pathlib.Path(target["path"]) / "model.onnx"
        if sha256_file(path) != target["sha256"]:
            raise ValueError(f"stable model {path} does not match its sha256")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.version = str(target["version"])
        self.model_name = model_name
        # Exported at 0 from the start: Prometheus' increase() misses a series' first value.
        for counter in (PREDICTIONS, DISAGREEMENTS, SKIPPED):
            counter.labels(model_name)
        self.queue: queue.Queue[tuple[np.ndarray, np.ndarray]] = queue.Queue(QUEUE_SIZE)
        threading.Thread(target=self._run, name="shadow-compare", daemon=True).start()

    def submit(self, features: np.ndarray, answered: np.ndarray) -> None:
        try:
            self.queue.put_nowait((features, answered))
        except queue.Full:
            SKIPPED.labels(self.model_name).inc(len(features))

    def _run(self) -> None:
        while True:
            features, answered = self.queue.get()
            try:
                stable = self.session.run(None, {self.input: features.astype(np.float32)})[0]
                mine, theirs = top_classes(answered), top_classes(stable)
                PREDICTIONS.labels(self.model_name).inc(len(mine))
                DISAGREEMENTS.labels(self.model_name).inc(int(np.sum(mine != theirs)))
            except Exception:  # a row we cannot compare is skipped, and said so
                log.exception("shadow comparison failed")
                SKIPPED.labels(self.model_name).inc(len(features))


def compare_with_stable(model: Any, stable_pointer: pathlib.Path) -> None:
    """Wraps ``model.predict`` so every answer is also compared with the stable model's."""
    scorer = StableScorer(model.name, stable_pointer)
    original = model.predict

    async def predict(payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        result = await original(payload, headers, response_headers)
        scorer.submit(_features(payload), _answered(result))
        return result

    model.predict = predict
