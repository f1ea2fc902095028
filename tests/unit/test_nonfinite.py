"""NaN, +inf and -inf on their way out of the process: KFP artifacts, JSON files, status and
the operator's metrics each give a clear verdict, never a crash and never a pass."""

from __future__ import annotations

import json
import math

import pytest
from google.protobuf import json_format, struct_pb2
from kfp.dsl import Metrics
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlcd.domain import numbers
from mlcd.domain.gate import judge
from mlcd.domain.records import GateVerdict, RunRecord, ServingRecord
from mlcd.domain.spec import Gate
from mlcd.domain.status import ModelPipelineStatus, summarize
from mlcd.metrics.operator import OperatorMetrics
from mlcd.pipeline.context import Baseline
from mlcd.pipeline.events import EventLog
from mlcd.pipeline.stages.evaluate import log_metrics
from mlcd.report.html import build

ODD = [("NaN", math.nan), ("+inf", math.inf), ("-inf", -math.inf)]


@pytest.mark.parametrize(("word", "value"), ODD)
def test_the_gate_names_the_value_and_never_passes(word, value):
    for gate in ({"metric": "custom", "min": 0.1}, {"metric": "custom", "direction": "minimize"}):
        verdict = judge(Gate.model_validate(gate), {"custom": value, "accuracy": 0.99})
        assert not verdict.passed
        assert verdict.reason == f"custom is {word}: never passes"


@pytest.mark.parametrize(("word", "value"), ODD)
def test_a_kfp_metrics_artifact_holds_them_as_protobuf_json_names(word, value):
    artifact = Metrics(name="metrics", uri="/tmp/metrics", metadata={})
    log_metrics(artifact, {"accuracy": 0.9, "custom": value})
    # What kfp does with an artifact's metadata on the way to its executor output.
    struct = struct_pb2.Struct()
    struct.update(artifact.metadata)
    as_json = json_format.MessageToDict(struct)
    assert as_json["accuracy"] == 0.9
    assert as_json["custom"] == {"NaN": "NaN", "+inf": "Infinity", "-inf": "-Infinity"}[word]


def _record(value: float) -> RunRecord:
    verdict = judge(Gate.model_validate({"metric": "custom", "min": 0.1}), {"custom": value})
    return RunRecord(
        id="r",
        result="rejected",
        stage="gate",
        reason=f"gate: {verdict.reason}",
        metrics={"accuracy": 0.9, "custom": value},
        gate=verdict,
        data={"ok": True, "drift": {"feature-psi": value}},
    )


@pytest.mark.parametrize(("word", "value"), ODD)
def test_records_write_strict_json_and_read_it_back(word, value):
    record = _record(value)
    text = record.model_dump_json(by_alias=True)
    json.loads(text, parse_constant=pytest.fail)  # no NaN or Infinity tokens
    back = RunRecord.model_validate_json(text)
    assert math.isnan(back.metrics["custom"]) and back.metrics["accuracy"] == 0.9
    assert back.gate is not None and back.gate.value is None
    assert back.reason == f"gate: custom is {word}: never passes"
    assert back.data is not None and math.isnan(back.data.drift["feature-psi"])


@pytest.mark.parametrize(("word", "value"), ODD)
def test_the_status_the_operator_writes_is_json_the_api_server_takes(word, value):
    record = _record(value)
    status = ModelPipelineStatus(
        runs=[summarize(record, "rejected")],
        serving=ServingRecord(
            model="m", version="1", uri="file:///m/1", sha256="0" * 64, metrics={"x": value}
        ),
    )
    # As the operator sends it: model_dump(mode="json"), then json.dumps by httpx.
    sent = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    body = json.dumps(sent, allow_nan=False)  # raises on a NaN or an infinity
    back = ModelPipelineStatus.model_validate(json.loads(body))
    assert math.isnan(back.runs[0].metrics["custom"])
    assert back.serving is not None and math.isnan(back.serving.metrics["x"])


def test_the_baseline_a_run_receives_survives_its_context_file():
    baseline = Baseline(version="1", metrics={"accuracy": 0.9, "custom": math.nan})
    back = Baseline.model_validate_json(baseline.model_dump_json())
    assert math.isnan(back.metrics["custom"])
    verdict = judge(
        Gate.model_validate({"metric": "custom", "min": 0.1}),
        {"custom": 0.5},
        back.metrics,
        back.version,
    )
    assert verdict.passed and "serving model 1 has no custom" in verdict.reason


@pytest.mark.parametrize(("word", "value"), ODD)
def test_stage_records_and_events_are_strict_json_and_keep_the_value(tmp_path, word, value):
    log = EventLog(tmp_path / "events.jsonl")
    log.emit("trial-end", value=value, series=[1.0, value])
    line = (tmp_path / "events.jsonl").read_text()
    event = json.loads(line, parse_constant=pytest.fail)
    assert numbers.number(event["value"]) == value or word == "NaN"
    assert math.isnan(numbers.number(event["value"])) == (word == "NaN")
    assert json.loads(json.dumps(numbers.json_safe({"v": value}), allow_nan=False))["v"] in (
        "NaN",
        "Infinity",
        "-Infinity",
    )


@pytest.mark.parametrize(("word", "value"), ODD)
def test_the_operator_metrics_expose_them(word, value):
    metrics = OperatorMetrics()
    record = _record(value)
    status = ModelPipelineStatus(
        serving=ServingRecord(
            model="m", version="3", uri="file:///m/3", sha256="0" * 64, metrics={"custom": value}
        ),
        runs=[summarize(record, "rejected")],
    )
    metrics.observe("ns", "p", status)
    metrics.finished("ns", "p", record)
    text = generate_latest(metrics.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = families["mlcd_serving_model_metric"].samples
    assert sample.value == value or (word == "NaN" and math.isnan(sample.value))


@pytest.mark.parametrize(("word", "value"), ODD)
def test_the_report_shows_them(word, value):
    record = _record(value)
    stages = {
        "evaluate": {
            "status": "succeeded",
            "metrics": numbers.json_safe({"accuracy": 0.9, "custom": value, "roc-auc": value}),
            "parity": numbers.json_safe({"maxAbsDifference": value, "tolerance": 0.001}),
            "confusion": [[1, 0], [0, 1]],
            "roc": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]},
        },
        "train": {
            "status": "succeeded",
            "curves": numbers.json_safe({"loss": [0.5, value, 0.3], "accuracy": [value, value]}),
        },
        "gate": {"status": "rejected", "verdict": json.loads(record.gate.model_dump_json())},
    }
    page = build(stages, "t", json.loads(record.model_dump_json(by_alias=True)))
    assert f"custom is {word}: never passes" in page
    assert "<td>custom</td><td>" + numbers.json_number(value) + "</td>" in page
    assert page.count("<polyline") >= 1  # the loss curve, without its odd point


def test_a_spec_refuses_non_finite_bounds():
    from mlcd.domain.checks import parse_pipeline
    from mlcd.errors import SpecError

    resource = {
        "apiVersion": "mlcd.io/v1alpha1",
        "kind": "ModelPipeline",
        "metadata": {"name": "m"},
        "spec": {
            "dataset": {"uri": "d.npz", "schema": {"featureShape": [4], "numClasses": 2}},
            "trainer": {"command": ["t"]},
            "gate": {"metric": "accuracy", "min": math.inf},
            "serving": {"inferenceService": "m"},
        },
    }
    with pytest.raises(SpecError) as caught:
        parse_pipeline(resource)
    assert [(p.path, p.reason) for p in caught.value.problems] == [
        ("spec.gate.min", "input should be a finite number")
    ]


def test_a_verdict_model_keeps_none_apart_from_nan():
    verdict = GateVerdict(passed=False, metric="m", reason="r", value=math.nan)
    assert math.isnan(verdict.value)
    assert json.loads(verdict.model_dump_json())["value"] is None
