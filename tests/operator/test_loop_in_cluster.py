"""The operator drives the loop: created → run → gated → served, all visible in the status."""

from __future__ import annotations

import time

import httpx

from helpers import softmax_pipeline


def test_new_pipeline_trains_gates_and_serves(start_operator, pipelines, digits_file):
    operator = start_operator()
    pipelines.create(softmax_pipeline(str(digits_file), triggers={"newData": True}))
    ready = pipelines.wait_condition("digits", "Ready", timeout=180)
    status = pipelines.status("digits")
    assert status["phase"] == "Ready", status
    serving = status["serving"]
    assert serving["version"] == "1"
    assert len(serving["sha256"]) == 64
    assert serving["metrics"]["accuracy"] > 0.8
    assert status["lastMetric"].startswith("accuracy=")
    assert "version 1" in ready["message"]
    [run] = status["runs"]
    assert run["result"] == "promoted" and run["trigger"] == "new-data"
    assert run["gate"]["passed"] is True
    assert status["observedGeneration"] == pipelines.get("digits")["metadata"]["generation"]
    reasons = pipelines.reasons("digits")
    assert "RunStarted" in reasons and "Promoted" in reasons
    body = {"instances": [[[[0.0] * 28] * 28]]}
    answer = httpx.post(f"{serving['url']}/v1/models/digits:predict", json=body, timeout=10)
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]) == 10
    metrics = operator.metrics()
    labels = f'namespace="{pipelines.namespace}",pipeline="digits"'
    assert f'mlcd_runs_total{{{labels},trigger="new-data",result="promoted"}} 1.0' in metrics
    assert f'mlcd_serving_model_metric{{{labels},metric="accuracy"}}' in metrics
    assert f'mlcd_gate_verdicts_total{{{labels},verdict="passed"}} 1.0' in metrics

    # Nothing changes, so nothing is written.
    version = pipelines.get("digits")["metadata"]["resourceVersion"]
    time.sleep(5)
    assert pipelines.get("digits")["metadata"]["resourceVersion"] == version
