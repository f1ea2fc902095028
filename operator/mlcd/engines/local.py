"""The local engine: each run is a ``kfp.local`` process on this machine, in its own session.

Runs are keyed by :class:`RunKey` (namespace, pipeline and its uid, run id, attempt), so a
folder, a lookup or a cancel never reaches another tenant's run. Submitting a key that exists
starts nothing; a run whose process died without a result is reported lost, never silently
kept. A run's process is alive only if its pid and its start time both match: a pid reused
after a restart is not our run.
"""

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
from mlcd.pipeline.context import Baseline, RunContext, read_stages
from mlcd.pipeline.events import EventLog
from mlcd.pipeline.isolation import runner_environment
from mlcd.pipeline.outcome import assemble
from mlcd.ports import PipelineKey, RunKey, RunRequest
from mlcd.processes import alive, group_alive, kill_group, kill_groups, start_time
from mlcd.report.html import build as build_report


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def _write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


class LocalEngine:
    """Implements the pipeline backend port with kfp.local's SubprocessRunner."""

    def __init__(self, home: pathlib.Path) -> None:
        self.root = home / "runs"
        self._children: dict[pathlib.Path, subprocess.Popen[bytes]] = {}

    def pipeline_dir(self, pipeline: PipelineKey) -> pathlib.Path:
        return self.root / pipeline.namespace / pipeline.folder

    def run_dir(self, key: RunKey) -> pathlib.Path:
        name = key.run if key.attempt == 1 else f"{key.run}.attempt-{key.attempt}"
        return self.pipeline_dir(key.pipeline) / name

    def find(self, key: RunKey) -> pathlib.Path | None:
        folder = self.run_dir(key)
        return folder if folder.is_dir() else None

    def events(self, key: RunKey) -> EventLog:
        return EventLog(self.run_dir(key) / "events.jsonl")

    def submit(self, request: RunRequest) -> None:
        folder = self.run_dir(request.key)
        folder.mkdir(parents=True, exist_ok=True)
        baseline = Baseline.model_validate(request.baseline) if request.baseline else None
        ctx = RunContext(
            run_id=request.key.run,
            run_key=request.key.token,
            trigger=request.trigger,
            resource=request.spec,
            run_dir=str(folder),
            baseline=baseline,
        )
        # The context is complete before the run is claimed: a crash in between leaves a
        # folder no one launched, which the next submit of the same key starts.
        if not (folder / "context.json").is_file():
            _write_json(folder / "context.json", json.loads(ctx.model_dump_json()))
        try:
            # Claimed once: a second submit of the same key, from anywhere, starts nothing.
            fd = os.open(folder / "launched", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return
        os.close(fd)
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with (folder / "pipeline.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlcd.engines.runner", str(folder)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=runner_environment(request.env),
            )
        self._children[folder] = process
        _write_json(
            folder / "runner.json",
            {"pid": process.pid, "started": start_time(process.pid), "startedAt": started},
        )

    def _running(self, folder: pathlib.Path) -> bool:
        child = self._children.get(folder)
        if child is not None:
            return child.poll() is None
        runner = _read_json(folder / "runner.json")
        if runner is None or "pid" not in runner:
            return False
        return alive(int(runner["pid"]), runner.get("started"))

    def done(self, key: RunKey) -> bool:
        """Cheap enough to ask many times a second: has the run's process ended?"""
        folder = self.find(key)
        return folder is None or (folder / "result.json").is_file() or not self._running(folder)

    def get(self, key: RunKey) -> RunRecord | None:
        folder = self.find(key)
        if folder is None:
            return None
        result = folder / "result.json"
        if result.is_file():
            return RunRecord.model_validate_json(result.read_text())
        context = _read_json(folder / "context.json")
        runner = _read_json(folder / "runner.json")
        if context is None or runner is None:
            return None  # claimed, then the operator stopped before the process started
        trigger = str(context.get("trigger", "manual"))
        started = runner.get("startedAt")
        if self._running(folder):
            stage: Stage = "validate"
            for event in EventLog(folder / "events.jsonl"):
                if event.get("kind") == "stage-start" and event.get("stage") in STAGES:
                    stage = event["stage"]
            return RunRecord(
                id=key.run, trigger=trigger, result="running", stage=stage, started_at=started
            )
        # The process ended without writing its result (killed, or the machine went down).
        record = assemble(folder, key.run, trigger, started)
        if record.result == "exported":
            return record  # it had exported a gated model: that part is done
        return None

    def resource(self, key: RunKey) -> dict[str, Any] | None:
        context = _read_json(self.run_dir(key) / "context.json")
        return None if context is None else context.get("resource")

    def live(self, pipeline: PipelineKey) -> list[str]:
        folder = self.pipeline_dir(pipeline)
        if not folder.is_dir():
            return []
        runs = {
            d.name.split(".attempt-")[0]
            for d in folder.iterdir()
            if d.is_dir() and not (d / "result.json").is_file() and self._running(d)
        }
        return sorted(runs)

    def cancel(self, key: RunKey, grace: float = 10.0) -> None:
        folder = self.find(key)
        if folder is not None:
            self._stop(folder, grace)

    def cancel_everything(self, grace: float = 10.0) -> None:
        """Stops every run this engine's state folder knows of, of every pipeline."""
        for folder in sorted(self.root.glob("*/*/*")):
            if folder.is_dir():
                self._stop(folder, grace)

    def _stop(self, folder: pathlib.Path, grace: float) -> None:
        runner = _read_json(folder / "runner.json") or {}
        pid, started = runner.get("pid"), runner.get("started")
        if pid and alive(int(pid), started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + grace
            # The whole group, not the runner alone: its component is still stopping the
            # trainers it started (they have sessions of their own) and recording its stage.
            while time.monotonic() < deadline and (self._running(folder) or group_alive(pid)):
                time.sleep(0.1)
            if alive(int(pid), started) or group_alive(int(pid)):
                kill_group(int(pid), grace=0)
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
        child = self._children.pop(folder, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)

    def finalize(self, key: RunKey, record: RunRecord) -> None:
        """Keeps the final record beside the engine's and rewrites the report with it."""
        folder = self.find(key)
        if folder is None:
            return
        _write_json(folder / "final.json", json.loads(record.model_dump_json(by_alias=True)))
        context = _read_json(folder / "context.json") or {}
        meta = (context.get("resource") or {}).get("metadata") or {}
        page = build_report(
            read_stages(folder),
            f"Run {record.id} of {meta.get('namespace', key.pipeline.namespace)}/"
            f"{meta.get('name', key.pipeline.name)}",
            record.model_dump(by_alias=True),
        )
        (folder / "report.html").write_text(page)

    def report_path(self, key: RunKey) -> pathlib.Path | None:
        folder = self.find(key)
        return folder / "report.html" if folder else None
