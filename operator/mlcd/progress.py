"""The live view of a run in the terminal: a bar per stage and per trial, from the run's
event log."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column

from mlcd.domain.records import STAGES
from mlcd.domain.rollout import RolloutState
from mlcd.domain.spec import ModelPipeline
from mlcd.domain.status import RunSummary
from mlcd.pipeline.events import EventLog


class RunView:
    def __init__(self, console: Console, pipeline: ModelPipeline) -> None:
        self.pipeline = pipeline
        # The labels keep their width; a long note is cut at the end of the line instead.
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=16)),
            BarColumn(bar_width=20),
            TextColumn(
                "{task.fields[note]}",
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
            ),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            expand=True,
        )
        self.stages: dict[str, TaskID] = {}
        self.rollout_steps: dict[int, TaskID] = {}
        self.trials: dict[int, TaskID] = {}
        self.started: set[int] = set()
        tuning = pipeline.spec.tuning
        for stage in STAGES:
            total = float(tuning.max_trials) if stage == "tune" and tuning else 1.0
            self.stages[stage] = self.progress.add_task(
                f"{stage:<9}", total=total, note="", start=False
            )
            if stage == "tune" and tuning:
                # One row per possible trial, under the tune row, shown when it starts.
                for number in range(tuning.max_trials):
                    self.trials[number] = self.progress.add_task(
                        f"  trial {number:<3}", total=1, note="", start=False, visible=False
                    )

    def __enter__(self) -> RunView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def apply(self, event: dict[str, Any]) -> None:
        kind, progress = event.get("kind"), self.progress
        if kind == "stage-start":
            progress.start_task(self.stages[event["stage"]])
        elif kind == "stage-end":
            task = self.stages[event["stage"]]
            note = event.get("status", "")
            if event.get("reason"):
                note += f": {str(event['reason']).splitlines()[0][:70]}"
            if event["stage"] == "tune":
                ran = max(len(self.started), 1)
                progress.update(task, total=ran, completed=ran, note=note)
            else:
                progress.update(task, completed=1, note=note)
            progress.stop_task(task)
        elif kind == "trial-start":
            params = " ".join(f"{k}={_short(v)}" for k, v in event.get("params", {}).items())
            trial = self.trials.get(event["number"])
            if trial is not None:
                self.started.add(event["number"])
                progress.update(trial, visible=True, note=params)
                progress.start_task(trial)
        elif kind == "trial-end":
            ended = self.trials.get(event["number"])
            if ended is not None:
                value = event.get("value")
                note = (
                    f"{self.pipeline.spec.tuning.objective.metric}={value:.4f}"
                    if value is not None and self.pipeline.spec.tuning
                    else f"{event.get('state')}: {str(event.get('reason', ''))[:60]}"
                )
                progress.update(ended, completed=1, note=note)
                progress.stop_task(ended)
            progress.advance(self.stages["tune"])
        elif kind == "train-start":
            progress.update(self.stages["train"], note=f"{event.get('workers')} worker(s)")
        elif kind == "exported":
            progress.update(self.stages["export"], note=f"version {event.get('version')}")

    def rollout(self, state: RolloutState) -> None:
        """A bar per rollout step (the shadow phase first), with the last analysis' values."""
        for record in state.steps:
            label = "shadow" if record.step == 0 else f"step {record.step} {record.weight:>3}%"
            task = self.rollout_steps.get(record.step)
            if task is None:
                task = self.progress.add_task(f"  {label:<14}", total=1, note="", start=True)
                self.rollout_steps[record.step] = task
            note = ""
            if record.analyses:
                last = record.analyses[-1]
                note = f"{last.verdict}: " + "  ".join(
                    f"{r.metric}={_short(r.value) if r.value is not None else 'no data'}"
                    for r in last.results
                )
            current = record.step == state.step and state.phase in ("Shadowing", "Progressing")
            if state.phase in ("Shadowing",) and record.step == 0:
                current = True
            done = not current or state.phase in ("Promoted", "RolledBack", "Failed")
            self.progress.update(task, completed=1 if done else 0, note=note[:90])
        serve = self.stages["serve"]
        self.progress.start_task(serve)
        self.progress.update(serve, note=f"rollout {state.phase}: {state.reason}"[:90])

    def serving(self, record: RunSummary) -> None:
        task = self.stages["serve"]
        self.progress.start_task(task)
        # A rollout refuses a model (rejected) or is cut short (cancelled); neither failed.
        ended = {"rejected": "refused", "cancelled": "cancelled"}.get(record.result, "failed")
        note = (
            "served"
            if record.result == "promoted"
            else ("skipped" if record.stage != "serve" else f"{ended}: {record.reason}")
        )
        self.progress.update(task, completed=1, note=note[:80])
        self.progress.stop_task(task)


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def follow(
    log: EventLog,
    done: Callable[[], bool],
    on_event: Callable[[dict[str, Any]], None],
    interval: float = 0.1,
) -> None:
    """Feeds every event to ``on_event`` until ``done()``; the last events are not missed."""
    offset = 0
    while True:
        finished = done()
        events, offset = log.follow(offset)
        for event in events:
            on_event(event)
        if finished:
            return
        time.sleep(interval)


def print_rollout(
    out: Console, rollout: dict[str, Any], router: dict[str, Any] | None = None
) -> None:
    """A rollout's state (``status.rollout`` as JSON): its phase, its weights (as decided, and
    as the router has them) and the values of its last analysis."""
    weight = rollout.get("canaryWeight", 0)
    weights = f"{weight}% to version {rollout.get('candidate')}"
    if rollout.get("mirror"):
        weights += ", mirrored"
    if router is not None and router.get("canaryWeight") != weight:
        weights += f" (the router has {router.get('canaryWeight')}%)"
    out.print(
        f"  rollout [bold]{rollout.get('phase')}[/]: step {rollout.get('step', 0)}, {weights}, "
        f"{rollout.get('failedChecks', 0)} failed check(s); {escape(rollout.get('reason', ''))}",
        highlight=False,
        soft_wrap=True,
    )
    for result in rollout.get("lastAnalysis") or []:
        value = result.get("value")
        shown = "no data" if value is None else f"{value:.4g}"
        samples = result.get("samples")
        counted = "" if samples is None else f" ({samples:.0f} requests)"
        out.print(
            f"    {result.get('metric')} = {shown}{counted}: {result.get('verdict')} "
            f"({result.get('reason', '')})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
