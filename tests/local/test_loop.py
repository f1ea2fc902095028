"""The whole loop through ``mlcd run``, with the numpy test trainer: outcomes and faults."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from helpers import mlcd, softmax_pipeline, v2_infer, write_spec
from mnist_trainer.dataset import write as write_digits


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _served_predictions(url: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v1 = httpx.post(f"{url}/v1/models/digits:predict", json={"instances": x.tolist()}, timeout=30)
    v1.raise_for_status()
    return np.array(v1.json()["predictions"]), v2_infer(url, "digits", x)


def _status(home: pathlib.Path) -> dict:
    result = mlcd("status", "digits", "--output", "json")
    assert result.code == 0, result.stderr
    return result.json[0]


def test_first_run_is_served_and_an_impossible_gate_keeps_it(home, digits, tmp_path):
    spec = write_spec(tmp_path / "mp.yaml", softmax_pipeline(str(digits)))
    first = mlcd("run", str(spec), "--output", "json")
    assert first.code == 0, first.stderr
    out = first.json
    assert out["result"] == "promoted"
    assert out["metrics"]["accuracy"] > 0.8  # chance is 0.1
    assert set(out["timings"]) >= {"validate", "tune", "train", "evaluate", "gate", "export"}
    version_dir = home / "models" / "digits" / "1"
    assert out["model"]["version"] == "1"
    assert out["model"]["sha256"] == _sha256(version_dir / "model.onnx")
    meta = json.loads((version_dir / "metadata.json").read_text())
    assert meta["sha256"] == out["model"]["sha256"]
    assert meta["runId"] == out["run"]
    assert meta["gate"]["passed"] is True
    assert meta["dataset"]["sha256"] == _sha256(digits)
    assert set(meta["params"]) == {"lr"}
    assert meta["metrics"]["accuracy"] == pytest.approx(out["metrics"]["accuracy"])
    report = pathlib.Path(out["report"]).read_text()
    assert report.count("<svg") >= 4
    # What happened to the run, serving included; the curve is against the printed epochs.
    assert re.search(
        r"<td>serve</td><td><span class=\"ok\">succeeded</span> — version 1 serving", report
    )
    assert ">epoch</text>" in report

    url = out["serving"]["url"]
    with np.load(digits) as data:
        x = data["x"][:16].astype(np.float32)
    expected = ort.InferenceSession(str(version_dir / "model.onnx")).run(None, {"input": x})[0]
    v1, v2 = _served_predictions(url, x)
    np.testing.assert_allclose(v1, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v2, expected, rtol=1e-5, atol=1e-5)

    second = mlcd("run", str(spec), "--set", "gate.min=1.01", "--output", "json")
    assert second.code == 3, second.stderr
    assert second.json["result"] == "rejected"
    assert "min 1.01" in second.json["reason"]
    assert second.json["gate"]["passed"] is False
    assert second.json["serving"]["version"] == "1"
    assert sorted(d for d in os.listdir(home / "models" / "digits") if d.isdigit()) == ["1"]
    # Each run's full record is kept beside the model, linked from its summary.
    records = home / "models" / "digits" / "runs" / "default" / "digits"
    kept = sorted(p.stem for p in records.glob("*.json"))
    assert kept == sorted([out["run"], second.json["run"]])
    assert second.json["record"] == str(records / f"{second.json['run']}.json")
    kept = json.loads((records / f"{second.json['run']}.json").read_text())
    assert kept["result"] == "rejected" and kept["gate"]["checks"]
    status = _status(home)
    assert status["serving"]["version"] == "1" and status["running"] is True
    assert [r["result"] for r in status["runs"]] == ["promoted", "rejected"]
    np.testing.assert_allclose(_served_predictions(url, x)[0], expected, rtol=1e-5, atol=1e-5)


def test_failed_and_rejected_runs_leave_serving_untouched(home, digits, tmp_path):
    spec = write_spec(tmp_path / "mp.yaml", softmax_pipeline(str(digits)))
    assert mlcd("run", str(spec)).code == 0
    served = _status(home)["serving"]

    cases = [
        (["trainer.args[1]=--fault=train-crash"], "train", ["exited with code 3", "worker lost"]),
        (["trainer.args[1]=--fault=no-metrics"], "train", ["printed no metrics"]),
        (["trainer.args[1]=--fault=no-model"], "train", ["wrote no model.onnx"]),
        (["trainer.args[1]=--fault=parity"], "evaluate", ["ONNX parity failed"]),
    ]
    for overrides, stage, words in cases:
        args = [f"--set={o}" for o in overrides]
        result = mlcd("run", str(spec), *args, "--output", "json")
        assert result.code == 1, (overrides, result.stderr)
        assert result.json["result"] == "failed"
        assert result.json["stage"] == stage
        for word in words:
            assert word in result.json["reason"], (overrides, result.json["reason"])
        assert result.json["model"] is None
        assert sorted(d for d in os.listdir(home / "models" / "digits") if d.isdigit()) == ["1"]
        assert _status(home)["serving"] == served

    shifted = tmp_path / "shifted.npz"
    write_digits(shifted, shift=0.4)
    drifted = mlcd("run", str(spec), f"--set=dataset.uri={shifted}", "--output", "json")
    assert drifted.code == 3
    assert drifted.json["stage"] == "validate"
    assert "feature-psi" in drifted.json["reason"]
    assert "serving version 1" in drifted.json["reason"]
    status = _status(home)
    assert status["serving"] == served and status["running"]


@pytest.mark.parametrize(
    ("corruption", "words"),
    [("nan", "NaN"), ("labels", "outside [0, 10)"), ("shape", "schema says (1, 28, 28)")],
)
def test_bad_data_is_rejected_before_training(home, tmp_path, corruption, words):
    data = tmp_path / "bad.npz"
    write_digits(data, corrupt=corruption)
    spec = write_spec(tmp_path / "mp.yaml", softmax_pipeline(str(data)))
    result = mlcd("run", str(spec), "--output", "json")
    assert result.code == 3, result.stderr
    assert result.json["result"] == "rejected"
    assert result.json["stage"] == "validate"
    assert words in result.json["reason"]
    assert set(result.json["timings"]) == {"validate", "total"}


def test_failed_trials_are_counted_against_max_failed_trials(home, digits, tmp_path):
    resource = softmax_pipeline(str(digits))
    resource["spec"]["tuning"].update(maxTrials=4, parallelTrials=1, maxFailedTrials=1)
    resource["spec"]["trainer"]["args"].append("--fault=trial-crash-all")
    spec = write_spec(tmp_path / "mp.yaml", resource)
    result = mlcd("run", str(spec), "--output", "json")
    assert result.code == 1
    assert result.json["stage"] == "tune"
    assert "2 trials failed, more than maxFailedTrials 1" in result.json["reason"]
    assert "lr too high" in result.json["reason"]  # the trial's stderr tail
    run_dir = next((home / "runs" / "default" / "digits").iterdir())
    tune = json.loads((run_dir / "stages" / "tune.json").read_text())
    assert [t["state"] for t in tune["trials"]] == ["failed", "failed"]


def test_unreachable_artifact_store_fails_the_run_with_nothing_published(home, digits, tmp_path):
    spec = write_spec(
        tmp_path / "mp.yaml",
        softmax_pipeline(
            str(digits), artifacts={"uri": "s3://models/", "endpoint": "http://127.0.0.1:9"}
        ),
    )
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test-secret"}
    result = mlcd("run", str(spec), "--output", "json", env=env)
    assert result.code == 1
    assert result.json["stage"] == "export"
    assert "unreachable" in result.json["reason"]
    assert result.json["model"] is None
    assert result.json["serving"]["url"] is None


def test_invalid_spec_exits_2_with_every_problem_and_starts_nothing(home, digits, tmp_path):
    resource = softmax_pipeline(str(digits))
    resource["spec"]["tuning"]["parameters"][0].update(min=2.0, max=1.0)
    resource["spec"]["tuning"]["maxTrials"] = 0
    resource["spec"]["gate"]["metric"] = "acc"
    spec = write_spec(tmp_path / "mp.yaml", resource)
    result = mlcd("run", str(spec))
    assert result.code == 2
    assert "spec.tuning.maxTrials: must be >= 1 (got 0)" in result.stderr
    result = mlcd("run", str(spec), "--set", "tuning.maxTrials=2")
    assert result.code == 2
    assert "spec.tuning.parameters[0].max: must be greater than min (1.0 <= 2.0)" in result.stderr
    assert "spec.gate.metric: 'acc' is not produced by evaluation" in result.stderr
    assert not (home / "runs").exists()

    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: mlcd.io/v1alpha1\nkind: ModelPipeline\nspec: [unclosed\n")
    result = mlcd("run", str(broken))
    assert result.code == 2
    assert f"{broken}:4:1: invalid YAML" in result.stderr

    result = mlcd("run", str(spec), "--set", "tuning.maxTrials")
    assert result.code == 2 and "expected key=value" in result.stderr


def test_a_nan_metric_rejects_the_run_naming_it_and_nothing_crashes(home, digits, tmp_path):
    resource = softmax_pipeline(
        str(digits),
        evaluation={"extraMetrics": ["custom"]},
        gate={"metric": "custom", "min": 0.1},
    )
    resource["spec"]["trainer"]["args"].append("--fault=eval-nan")
    spec = write_spec(tmp_path / "mp.yaml", resource)
    result = mlcd("run", str(spec), "--output", "json")
    assert result.code == 3, result.stderr
    out = json.loads(result.stdout, parse_constant=pytest.fail)  # strict JSON: no NaN token
    assert out["result"] == "rejected" and out["stage"] == "gate"
    assert out["reason"] == "gate: custom is NaN: never passes"
    assert out["metrics"]["custom"] == "NaN"
    assert out["metrics"]["accuracy"] > 0.8
    assert out["model"] is None and out["serving"]["url"] is None
    status = json.loads(
        mlcd("status", "digits", "--output", "json").stdout, parse_constant=pytest.fail
    )
    (run,) = status[0]["runs"]
    assert run["reason"] == "gate: custom is NaN: never passes"
    assert run["gate"]["passed"] is False
    report = pathlib.Path(out["report"]).read_text()
    assert "custom is NaN: never passes" in report
    assert "<td>custom</td><td>NaN</td>" in report
    # The KFP Metrics artifact holds it by its protobuf JSON name.
    run_dir = pathlib.Path(out["report"]).parent
    (executor_output,) = run_dir.glob("kfp/*/evaluate/executor_output.json")
    assert '"custom": "NaN"' in executor_output.read_text()
