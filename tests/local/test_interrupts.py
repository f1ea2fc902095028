"""Ctrl-C (SIGINT) and SIGTERM at any moment of ``mlcd run``: the command exits 130, every
process of the run stops, and the state says what happened.

SIGINT is sent to a CLI that inherited it as ignored, as a background job of a script does
(``make test`` run by a harness): the case where it once was not acted on at all."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from helpers import softmax_pipeline, write_spec


def _events(home: pathlib.Path) -> list[dict]:
    logs = list((home / "runs").glob("*/*/*/events.jsonl"))
    if not logs:
        return []
    return [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]


def _event(kind: str, **fields: str) -> Callable[[pathlib.Path], bool]:
    def seen(home: pathlib.Path) -> bool:
        return any(
            e["kind"] == kind and all(e.get(k) == v for k, v in fields.items())
            for e in _events(home)
        )

    return seen


MOMENTS: dict[str, Callable[[pathlib.Path], bool]] = {
    # The pipeline's lock file: the command has read its file and is about to start the run.
    "before the run starts": lambda home: (home / "pipelines/default/digits/lock").exists(),
    "while the runner starts": lambda home: any((home / "runs").glob("*/*/*/runner.json")),
    "validating": _event("stage-start", stage="validate"),
    "tuning starts": _event("stage-start", stage="tune"),
    "a trial runs": _event("trial-start"),
    "two trials run": lambda home: sum(e["kind"] == "trial-start" for e in _events(home)) == 2,
    "between trials": _event("trial-end"),
    "training": _event("train-start"),
    "evaluating (the model server starts)": _event("stage-start", stage="evaluate"),
    "exporting": _event("stage-start", stage="export"),
    "exported (serving next)": _event("exported"),
}


def _of_the_test(root: pathlib.Path) -> list[psutil.Process]:
    """Every process whose command line or environment points into ``root``."""
    mark, found = str(root), []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            text = " ".join([*proc.cmdline(), *proc.environ().values()])
            if mark in text and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: SIGTERM takes the same path as SIGINT once caught: a few moments of each kind prove it.
SIGTERM_MOMENTS = ("before the run starts", "a trial runs", "training", "exported (serving next)")
CASES = [
    *[pytest.param(signal.SIGINT, m, id=f"SIGINT-{m}") for m in MOMENTS],
    *[pytest.param(signal.SIGTERM, m, id=f"SIGTERM-{m}") for m in SIGTERM_MOMENTS],
]


@pytest.mark.parametrize(("signum", "moment"), CASES)
def test_a_signal_at_any_moment_stops_everything(home, digits, tmp_path, signum, moment):
    resource = softmax_pipeline(str(digits))
    # Three trials, two at a time: a moment with both running, one between trials.
    resource["spec"]["tuning"].update(
        maxTrials=3, parallelTrials=2, trialArgs=["--epochs=4", "--sleep=0.3"]
    )
    resource["spec"]["trainer"]["args"] = ["--epochs=10", "--sleep=0.1"]
    spec = write_spec(tmp_path / "mp.yaml", resource)
    cli = subprocess.Popen(
        [sys.executable, "-m", "mlcd.cli", "run", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint if signum == signal.SIGINT else None,
    )
    try:
        reached = MOMENTS[moment]
        deadline = time.monotonic() + 300
        while not reached(home) and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reached(home), f"the run never reached {moment!r}"
        assert cli.poll() is None, f"the run ended before {moment!r}: {cli.stderr.read()}"
        cli.send_signal(signum)
        # A hang is the failure looked for; the bound is generous for a loaded machine.
        _, stderr = cli.communicate(timeout=90)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 130, stderr
    assert "interrupted" in stderr

    state_file = home / "pipelines" / "default" / "digits" / "status.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"runs": []}
    served = state.get("serving")
    left = _of_the_test(tmp_path)
    if served:
        # The signal came as serving ended: the run is complete and its server serves.
        assert state["runs"][-1]["result"] == "promoted"
        server = json.loads((home / "serving" / "default" / "digits" / "server.json").read_text())
        assert [p.pid for p in left] == [server["pid"]], [p.cmdline()[:3] for p in left]
    else:
        assert left == [], [p.cmdline()[:4] for p in left]
        if state["runs"]:
            last = state["runs"][-1]
            assert last["result"] == "cancelled" and "interrupted" in last["reason"], last
    assert not list((home / "runs").glob("*/*/*/procs/*.pgid")), "trainer groups left recorded"
    with (home / "pipelines" / "default" / "digits" / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: the next run may start
