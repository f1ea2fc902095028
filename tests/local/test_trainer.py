"""Running a trainer: what stays in memory of what it prints is bounded, whatever it prints."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

from helpers import run_python_trainer
from mlcd.domain.metrics_text import MAX_POINTS
from mlcd.domain.spec import Trainer
from mlcd.pipeline.trainer import MAX_LINE, TAIL_LINES, ProcessGroups, run_trainer

CHATTY = """
import sys
out = sys.stdout
for i in range(200_000):
    out.write(f"step={i} loss={1.0 / (i + 1)} and some words to make the line longer\\n")
out.write("x" * (5 * 1024 * 1024))  # one line of 5 MiB, no newline
out.write("\\nstep=200000 loss=0.25 accuracy=0.5\\n")
print("done on stderr", file=sys.stderr)
"""


def test_a_chatty_trainer_leaves_a_bounded_tail_and_its_metrics(tmp_path: pathlib.Path) -> None:
    result, log = run_python_trainer(tmp_path, CHATTY, timeout=300)
    assert result.ok, result.failure()
    assert len(result.stdout_tail) <= 2 * TAIL_LINES
    assert all(len(line) <= MAX_LINE for line in result.stdout_tail)
    assert result.stdout_tail[-1] == "step=200000 loss=0.25 accuracy=0.5"
    assert result.stderr_tail == ["done on stderr"]
    curves = result.metrics.curves
    assert all(len(c.values) <= MAX_POINTS for c in curves.values())
    assert curves["loss"].count == 200_001
    assert curves["loss"].reduce("latest") == 0.25
    assert curves["loss"].reduce("min") == 1.0 / 200_000
    assert result.metrics.latest()["accuracy"] == 0.5
    assert result.metrics.steps()["loss"]["name"] == "step"
    # Everything it printed is in the log, nothing is lost.
    assert log.stat().st_size > 5 * 1024 * 1024 + 200_000 * 60


def test_a_signal_while_a_trainer_starts_still_stops_it(tmp_path, monkeypatch) -> None:
    """SIGTERM landing between the trainer's start and the record of its group (the window
    in which a cancel used to leave a trainer in a session no one knew of)."""
    import signal
    import subprocess
    import time

    import psutil

    from mlcd.pipeline import trainer as module

    started: list[int] = []
    real = subprocess.Popen

    def popen_then_signal(*args, **kwargs):  # type: ignore[no-untyped-def]
        process = real(*args, **kwargs)
        started.append(process.pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, inside the window
        return process

    monkeypatch.setattr(module.subprocess, "Popen", popen_then_signal)
    trainer = Trainer.model_validate(
        {"command": [sys.executable, "-c", "import time; time.sleep(60)"]}
    )
    groups = ProcessGroups(tmp_path / "procs")
    with pytest.raises(KeyboardInterrupt), groups.handling_signals():
        run_trainer(
            trainer, args=[], env={}, log_path=tmp_path / "t.log", groups=groups, timeout=300
        )
    assert (started and not psutil.pid_exists(started[0])) or (
        psutil.Process(started[0]).status() == psutil.STATUS_ZOMBIE
    )
    assert list((tmp_path / "procs").glob("*.pgid")) == []
