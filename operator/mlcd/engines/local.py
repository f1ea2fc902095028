"""The local engine: each run is a ``kfp.local`` process on this machine, in its own session.

Runs are keyed by id: submitting an id that exists starts nothing; a run whose process died
without a result is reported failed, never silently lost."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

from mlcd.domain.records import STAGES, RunRecord, Stage
from mlcd.pipeline.context import Baseline, RunContext
from mlcd.pipeline.events import EventLog
from mlcd.pipeline.outcome import assemble
from mlcd.ports import RunRequest
from mlcd.processes import alive, group_alive, kill_group, kill_groups


class LocalEngine:
    """Implements the pipeline backend port with kfp.local's SubprocessRunner."""

    def __init__(self, home: pathlib.Path) -> None:
        self.root = home / "runs"
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @staticmethod
    def _name(run_id: str, attempt: int) -> str:
        return run_id if attempt == 1 else f"{run_id}.attempt-{attempt}"

    def run_dir(self, namespace: str, run_id: str, attempt: int = 1) -> pathlib.Path:
        return self.root / namespace / self._name(run_id, attempt)

    def find(self, run_id: str, attempt: int = 1) -> pathlib.Path | None:
        if not self.root.is_dir():
            return None
        name = self._name(run_id, attempt)
        return next((d for d in self.root.glob(f"*/{name}") if d.is_dir()), None)

    def events(self, run_id: str, attempt: int = 1) -> EventLog | None:
        folder = self.find(run_id, attempt)
        return EventLog(folder / "events.jsonl") if folder else None

    def submit(self, request: RunRequest) -> None:
        folder = self.run_dir(request.namespace, request.run_id, request.attempt)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            # Created once: a second submit of the same id, from anywhere, starts nothing.
            fd = os.open(folder / "launched", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return
        os.close(fd)
        baseline = Baseline.model_validate(request.baseline) if request.baseline else None
        ctx = RunContext(
            run_id=request.run_id,
            trigger=request.trigger,
            resource=request.spec,
            run_dir=str(folder),
            baseline=baseline,
        )
        (folder / "context.json").write_text(ctx.model_dump_json(indent=2))
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with (folder / "pipeline.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlcd.engines.runner", str(folder)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **request.env},
            )
        self._children[folder.name] = process
        (folder / "runner.json").write_text(json.dumps({"pid": process.pid, "startedAt": started}))

    def _running(self, folder: pathlib.Path) -> bool:
        child = self._children.get(folder.name)
        if child is not None:
            return child.poll() is None
        try:
            pid = int(json.loads((folder / "runner.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return False
        return alive(pid)

    def done(self, run_id: str, attempt: int = 1) -> bool:
        """Cheap enough to ask many times a second: has the run's process ended?"""
        folder = self.find(run_id, attempt)
        return folder is None or (folder / "result.json").is_file() or not self._running(folder)

    def get(self, run_id: str, attempt: int = 1) -> RunRecord | None:
        folder = self.find(run_id, attempt)
        if folder is None:
            return None
        result = folder / "result.json"
        if result.is_file():
            return RunRecord.model_validate_json(result.read_text())
        ctx = RunContext.model_validate_json((folder / "context.json").read_text())
        started = None
        with contextlib.suppress(OSError, ValueError):
            started = json.loads((folder / "runner.json").read_text()).get("startedAt")
        if self._running(folder):
            stage: Stage = "validate"
            for event in EventLog(folder / "events.jsonl"):
                if event.get("kind") == "stage-start" and event.get("stage") in STAGES:
                    stage = event["stage"]
            return RunRecord(
                id=run_id, trigger=ctx.trigger, result="running", stage=stage, started_at=started
            )
        # The process ended without writing its result (killed, or the machine went down).
        record = assemble(folder, run_id, ctx.trigger, started)
        if record.result == "running" and record.model is not None:
            return record  # it had exported a gated model: that part is done
        return None

    def resource(self, run_id: str, attempt: int = 1) -> dict[str, Any] | None:
        folder = self.find(run_id, attempt)
        if folder is None or not (folder / "context.json").is_file():
            return None
        return RunContext.model_validate_json((folder / "context.json").read_text()).resource

    def cancel(self, run_id: str, attempt: int = 1, grace: float = 10.0) -> None:
        folder = self.find(run_id, attempt)
        if folder is None:
            return
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads((folder / "runner.json").read_text())["pid"])
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            # The whole group, not the runner alone: its component is still stopping the
            # trainers it started (they have sessions of their own) and recording its stage.
            while time.monotonic() < deadline and (self._running(folder) or group_alive(pid)):
                time.sleep(0.1)
            kill_group(pid, grace=0)
        # Trainer groups live in sessions of their own; any left behind are stopped here.
        markers = list((folder / "procs").glob("*.pgid"))
        groups = []
        for marker in markers:
            with contextlib.suppress(ValueError, OSError):
                groups.append(int(marker.read_text()))
        kill_groups(groups, grace=2.0)
        for marker in markers:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
        child = self._children.pop(folder.name, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
