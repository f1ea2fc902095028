"""What every stage of a run receives, and where it keeps what it found."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import pathlib
import signal
import threading
import time
from collections.abc import Iterator
from functools import cached_property
from types import FrameType
from typing import Any

from pydantic import BaseModel

from mlcd.domain.checks import parse_pipeline
from mlcd.domain.numbers import Metric, json_safe
from mlcd.domain.records import STAGES
from mlcd.domain.spec import ModelPipeline
from mlcd.pipeline.events import EventLog
from mlcd.pipeline.isolation import redact_run_text


class Baseline(BaseModel):
    """The model serving when the run started: what the gate and the drift check compare to."""

    version: str
    metrics: dict[str, Metric] = {}
    data_stats: dict[str, Any] | None = None


class RunContext(BaseModel):
    run_id: str
    #: The run across tenants (namespace, pipeline, uid, run id): what publishing is keyed by.
    run_key: str = ""
    trigger: str = "manual"
    resource: dict[str, Any]
    run_dir: str
    baseline: Baseline | None = None

    @classmethod
    def parse(cls, text: str) -> RunContext:
        return cls.model_validate_json(text)

    @cached_property
    def pipeline(self) -> ModelPipeline:
        return parse_pipeline(self.resource)

    @property
    def dir(self) -> pathlib.Path:
        return pathlib.Path(self.run_dir)

    @property
    def events(self) -> EventLog:
        return EventLog(self.dir / "events.jsonl")

    def work_dir(self, stage: str) -> pathlib.Path:
        path = self.dir / "work" / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, stage: str, data: dict[str, Any]) -> None:
        """Keeps a stage's outcome; the run's result is assembled from these records."""
        folder = self.dir / "stages"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{stage}.json.tmp"
        tmp.write_text(json.dumps(json_safe(data), indent=2, default=str, allow_nan=False))
        tmp.replace(folder / f"{stage}.json")

    def read(self, stage: str) -> dict[str, Any] | None:
        return read_stage(self.dir, stage)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Times a stage, announces it, and records a failure with its reason. SIGTERM (a
        cancel) unwinds the stage like Ctrl-C, so that its cleanups run and it is recorded."""
        started = time.time()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _interrupt)
        self.events.emit("stage-start", stage=name)
        outcome: dict[str, Any] = {"stage": name, "status": "succeeded", "startedAt": _iso(started)}
        try:
            yield outcome
        except BaseException as exc:
            reason = redact_run_text(str(exc) or type(exc).__name__)
            if isinstance(exc, KeyboardInterrupt | SystemExit) and not str(exc):
                reason = "interrupted"
            outcome.update(status="failed", reason=reason)
            raise
        finally:
            outcome["seconds"] = round(time.time() - started, 3)
            outcome["finishedAt"] = _iso(time.time())
            self.record(name, outcome)
            self.events.emit(
                "stage-end",
                stage=name,
                status=outcome["status"],
                reason=outcome.get("reason"),
                seconds=outcome["seconds"],
            )
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def read_stage(run_dir: pathlib.Path, stage: str) -> dict[str, Any] | None:
    path = run_dir / "stages" / f"{stage}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def read_stages(run_dir: pathlib.Path) -> dict[str, dict[str, Any] | None]:
    return {stage: read_stage(run_dir, stage) for stage in STAGES}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
