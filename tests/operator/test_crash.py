"""kill -9 the operator at each step of a run, restart it: the run completes once, with the same
id, and serving only ever points at a model that passed its gate. Each kill point checks that
the run was where it names when the kill landed."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
from collections.abc import Callable

import httpx
import pytest

from helpers import softmax_pipeline, wait_for


def _run_dirs(state: pathlib.Path, namespace: str) -> list[pathlib.Path]:
    return sorted(p for p in (state / "runs" / namespace).glob("*/*") if p.is_dir())


def _events(state: pathlib.Path, namespace: str) -> list[dict]:
    dirs = _run_dirs(state, namespace)
    log = dirs[0] / "events.jsonl" if dirs else None
    if log is None or not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _seen(state: pathlib.Path, namespace: str, kind: str, stage: str | None = None) -> bool:
    return any(
        e["kind"] == kind and (stage is None or e.get("stage") == stage)
        for e in _events(state, namespace)
    )


def _stage_in_progress(state: pathlib.Path, namespace: str) -> str | None:
    """The stage that started and has not ended, from the run's own event log."""
    current = None
    for event in _events(state, namespace):
        if event["kind"] == "stage-start":
            current = event["stage"]
        elif event["kind"] == "stage-end" and event["stage"] == current:
            current = None
    return current


def _create_slow_pipeline(pipelines, digits_file) -> None:
    """A pipeline whose stages take seconds, so each kill point can be hit."""
    resource = softmax_pipeline(str(digits_file), triggers={"newData": True})
    resource["spec"]["trainer"]["args"].append("--sleep=0.15")
    pipelines.create(resource)


Check = Callable[..., object]

# kill point -> (when to kill, what must hold when the kill has landed)
KILL_POINTS: dict[str, tuple[Check, Check]] = {
    "after-trigger": (
        lambda p, s, ns: p.status("digits").get("activeRuns"),
        lambda p, s, ns: (
            _stage_in_progress(s, ns) in (None, "validate")
            and not _seen(s, ns, "stage-end", "validate")
        ),
    ),
    "during-tuning": (
        lambda p, s, ns: _seen(s, ns, "trial-start"),
        lambda p, s, ns: _stage_in_progress(s, ns) == "tune",
    ),
    "during-training": (
        lambda p, s, ns: _seen(s, ns, "train-start"),
        lambda p, s, ns: _stage_in_progress(s, ns) == "train",
    ),
    "after-the-gate": (
        lambda p, s, ns: _seen(s, ns, "stage-end", "gate"),
        lambda p, s, ns: not p.status("digits").get("serving"),
    ),
    "while-serving-switches": (
        lambda p, s, ns: list((s / "serving" / ns).glob("*/pointer.json")),
        lambda p, s, ns: not p.status("digits").get("serving"),
    ),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_minus_nine_and_restart(point, start_operator, pipelines, digits_file, tmp_path):
    state = tmp_path / "state"
    operator = start_operator(state=state)
    _create_slow_pipeline(pipelines, digits_file)
    when, then = KILL_POINTS[point]
    ns = pipelines.namespace
    wait_for(point, lambda: when(pipelines, state, ns), timeout=120, interval=0.05)
    operator.kill9()
    assert then(pipelines, state, ns), f"the kill did not land {point}"
    start_operator(state=state)
    _assert_one_promoted_run(pipelines, state)


def test_kill_between_submitting_a_run_and_recording_it(
    start_operator, pipelines, digits_file, tmp_path
):
    """The run is started in the engine, then the operator dies before the status says so:
    after a restart the same run is found, not started again."""
    state = tmp_path / "state"
    operator = start_operator(state=state, env={"MLCD_FAILPOINTS": "after-submit"})
    _create_slow_pipeline(pipelines, digits_file)
    assert operator.proc is not None
    wait_for("the operator to die at the failpoint", lambda: operator.proc.poll() is not None)
    assert operator.proc.returncode == -signal.SIGKILL
    assert len(_run_dirs(state, pipelines.namespace)) == 1  # started ...
    assert not pipelines.status("digits").get("activeRuns")  # ... and not recorded
    start_operator(state=state)
    _assert_one_promoted_run(pipelines, state)


def _assert_one_promoted_run(pipelines, state: pathlib.Path) -> None:
    [run] = pipelines.wait_runs("digits", 1, timeout=240)
    assert run["result"] == "promoted", run
    run_dirs = [d.name for d in _run_dirs(state, pipelines.namespace)]
    assert run_dirs == [run["id"]]  # one run, one attempt: nothing twice
    models = state / "models" / pipelines.namespace / "digits"
    assert sorted(d for d in os.listdir(models) if d.isdigit()) == ["1"]
    status = pipelines.status("digits")
    meta = json.loads((models / "1" / "metadata.json").read_text())
    assert meta["gate"]["passed"] is True
    assert status["serving"]["sha256"] == meta["sha256"] == run["model"]["sha256"]
    answer = httpx.get(f"{status['serving']['url']}/v2/models/digits/ready", timeout=10)
    assert answer.status_code == 200
    assert pipelines.reasons("digits").count("RunStarted") == 1


def test_a_run_lost_with_the_operator_is_retried_once_with_the_same_id(
    start_operator, pipelines, digits_file, tmp_path
):
    state = tmp_path / "state"
    operator = start_operator(state=state)
    _create_slow_pipeline(pipelines, digits_file)
    wait_for(
        "training",
        lambda: _seen(state, pipelines.namespace, "train-start"),
        timeout=120,
        interval=0.05,
    )
    operator.kill9()
    # The node goes down with it: the run's processes die too, without a result.
    [run_dir] = _run_dirs(state, pipelines.namespace)
    runner = json.loads((run_dir / "runner.json").read_text())["pid"]
    os.killpg(runner, signal.SIGKILL)
    for marker in (run_dir / "procs").glob("*.pgid"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(marker.read_text()), signal.SIGKILL)
    start_operator(state=state)
    [run] = pipelines.wait_runs("digits", 1, timeout=240)
    assert run["result"] == "promoted" and run["id"] == run_dir.name
    assert sorted(d.name for d in run_dir.parent.iterdir()) == [
        run_dir.name,
        f"{run_dir.name}.attempt-2",
    ]
    assert run["attempt"] == 2
    assert "RunRetried" in pipelines.reasons("digits")
    assert pipelines.status("digits")["serving"]["version"] == "1"
