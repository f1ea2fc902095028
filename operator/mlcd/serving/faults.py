"""Fault injection for the local model server, for tests and demos of a rollout.

``MLCD_SERVING_FAULTS`` makes the server misbehave at a given rate, each fault drawn on its own
for every request::

    MLCD_SERVING_FAULTS="error=0.05"                 # 5 % of requests answer HTTP 500
    MLCD_SERVING_FAULTS="slow=0.5,delay=400ms"       # half of them answer 400 ms late
    MLCD_SERVING_FAULTS="wrong=0.2,seed=7"           # 20 % get another class than the model's

``error`` and ``slow`` and ``wrong`` are rates in [0, 1]; ``delay`` a duration (default 1s);
``seed`` makes the draws repeatable. A wrong prediction shifts the output scores by one class, so
its top class is never the model's.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.errors import InferenceError

from mlcd.domain.spec import duration_seconds


class InjectedFault(InferenceError):  # type: ignore[misc]
    """The error a faulty server answers with: KServe's inference error, HTTP 500."""


@dataclass(frozen=True)
class Faults:
    error: float = 0.0
    slow: float = 0.0
    delay: float = 1.0
    wrong: float = 0.0
    seed: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Faults:
        """``error=0.05,slow=0.1,delay=300ms,wrong=0.2,seed=1``; a bad item raises ValueError."""
        values: dict[str, Any] = {}
        for item in (text or "").split(","):
            if not item.strip():
                continue
            name, _, raw = item.partition("=")
            name, raw = name.strip(), raw.strip()
            if name in ("error", "slow", "wrong"):
                rate = float(raw)
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"MLCD_SERVING_FAULTS: {name} must be in [0, 1] (got {raw})")
                values[name] = rate
            elif name == "delay":
                values[name] = duration_seconds(raw)
            elif name == "seed":
                values[name] = int(raw)
            else:
                raise ValueError(
                    f"MLCD_SERVING_FAULTS: unknown fault {name!r}; one of error, slow, delay, "
                    "wrong, seed"
                )
        return cls(**values)

    @property
    def any(self) -> bool:
        return bool(self.error or self.slow or self.wrong)


def shift_classes(scores: np.ndarray) -> np.ndarray:
    """The scores moved one class on: every row's top class changes."""
    return np.roll(scores, 1, axis=-1)


def inject(model: Any, faults: Faults) -> None:
    """Wraps ``model.predict`` (a KServe model) so it misbehaves as ``faults`` says."""
    if not faults.any:
        return
    draw = random.Random(faults.seed)
    original = model.predict

    async def predict(payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        if faults.error and draw.random() < faults.error:
            raise InjectedFault("injected fault: error")
        if faults.slow and draw.random() < faults.slow:
            await asyncio.sleep(faults.delay)
        result = await original(payload, headers, response_headers)
        if faults.wrong and draw.random() < faults.wrong:
            result = _wrong(result)
        return result

    model.predict = predict


def _wrong(result: Any) -> Any:
    if isinstance(result, dict):  # V1
        result["predictions"] = shift_classes(np.asarray(result["predictions"])).tolist()
        return result
    output = result.outputs[0]
    output.set_data_from_numpy(shift_classes(output.as_numpy()), binary_data=False)
    return result
