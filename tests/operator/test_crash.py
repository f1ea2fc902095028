"""kill -9 the operator at each step of a run, restart it: the run completes once, with the same
id, and serving only ever points at a model that passed its gate."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal

import httpx
import pytest

from helpers import softmax_pipeline, wait_for


def _events(state: pathlib.Path, namespace: str) -> list[dict]:
    logs = list((state / "runs" / namespace).glob("*/events.jsonl"))
    if not logs:
        return []
    return [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]


def _seen(state: pathlib.Path, namespace: str, kind: str, stage: str | None = None) -> bool:
    return any(
        e["kind"] == kind and (stage is None or e.get("stage") == stage)
        for e in _events(state, namespace)
    )


def _create_slow_pipeline(pipelines, digits_file) -> None:
    """A pipeline whose stages take seconds, so each kill point can be hit."""
    resource = softmax_pipeline(str(digits_file), triggers={"newData": True})
    resource["spec"]["trainer"]["args"].append("--sleep=0.15")
    pipelines.create(resource)


KILL_POINTS = {
    "after-trigger": lambda p, s, ns: p.status("digits").get("activeRuns"),
    "during-tuning": lambda p, s, ns: _seen(s, ns, "trial-start"),
    "during-training": lambda p, s, ns: _seen(s, ns, "train-start"),
    "after-the-gate": lambda p, s, ns: _seen(s, ns, "stage-end", "gate"),
    "while-serving-switches": lambda p, s, ns: list((s / "serving").glob("*/pointer.json")),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_minus_nine_and_restart(point, start_operator, pipelines, digits_file, tmp_path):
    state = tmp_path / "state"
    operator = start_operator(state=state)
    _create_slow_pipeline(pipelines, digits_file)
    wait_for(
        point,
        lambda: KILL_POINTS[point](pipelines, state, pipelines.namespace),
        timeout=120,
        interval=0.05,
    )
    operator.kill9()
    start_operator(state=state)
    [run] = pipelines.wait_runs("digits", 1, timeout=240)
    assert run["result"] == "promoted", run
    run_dirs = [d.name for d in (state / "runs" / pipelines.namespace).iterdir()]
    assert run_dirs == [run["id"]]  # one run, one attempt: nothing twice
    versions = sorted(os.listdir(state / "models" / pipelines.namespace / "digits"))
    assert versions == ["1"]
    status = pipelines.status("digits")
    meta = json.loads(
        (state / "models" / pipelines.namespace / "digits" / "1" / "metadata.json").read_text()
    )
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
    run_dir = next((state / "runs" / pipelines.namespace).iterdir())
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
    assert "RunRetried" in pipelines.reasons("digits")
    assert pipelines.status("digits")["serving"]["version"] == "1"
