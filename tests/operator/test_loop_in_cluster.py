"""The operator drives the loop: created → run → gated → served, all visible in the status."""

from __future__ import annotations

import time

import httpx

from helpers import metric_value, softmax_pipeline, wait_for


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
    ours = {"namespace": pipelines.namespace, "pipeline": "digits"}

    def counted() -> bool:
        return (
            metric_value(
                operator.metrics(), "mlcd_runs_total", trigger="new-data", result="promoted", **ours
            )
            == 1.0
        )

    # The metrics follow the status write that the test has just seen.
    wait_for("the run to be counted", counted, timeout=10)
    metrics = operator.metrics()
    assert metric_value(metrics, "mlcd_gate_verdicts_total", verdict="passed", **ours) == 1.0
    assert (
        metric_value(metrics, "mlcd_serving_model_metric", metric="accuracy", **ours)
        == (serving["metrics"]["accuracy"])
    )
    assert metric_value(metrics, "mlcd_serving_model_version", **ours) == 1.0
    assert (metric_value(metrics, "mlcd_last_success_timestamp_seconds", **ours) or 0) > 0
    assert metric_value(metrics, "mlcd_stage_duration_seconds_count", stage="train") == 1.0

    # Nothing changes, so nothing is written.
    version = pipelines.settled_version("digits")
    time.sleep(5)
    assert pipelines.get("digits")["metadata"]["resourceVersion"] == version
