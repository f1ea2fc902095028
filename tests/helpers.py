"""One place for what several test modules need: writing specs and running the CLI."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

TESTS = pathlib.Path(__file__).resolve().parent
SOFTMAX_TRAINER = TESTS / "trainers" / "softmax_trainer.py"
EXAMPLE = TESTS.parent / "examples" / "mnist" / "modelpipeline.yaml"
# The example's documented small budget (its header comment), as `mlcd run/render` arguments.
EXAMPLE_SMALL_BUDGET = [
    "--set",
    "tuning.maxTrials=2",
    "--set",
    "tuning.trialArgs[0]=--epochs=1",
    "--set",
    "trainer.args[0]=--epochs=3",
    "--set",
    "gate.min=0.9",
]


def softmax_pipeline(dataset: str, **spec_overrides: Any) -> dict[str, Any]:
    """A ModelPipeline whose trainer is the numpy test trainer: the whole loop in seconds."""
    spec: dict[str, Any] = {
        "dataset": {
            "uri": dataset,
            "schema": {
                "featureShape": [1, 28, 28],
                "numClasses": 10,
                "valueMin": 0,
                "valueMax": 255,
                "minSamples": 1000,
                "minSamplesPerClass": 50,
            },
        },
        "trainer": {"command": ["python", str(SOFTMAX_TRAINER)], "args": ["--epochs=25"]},
        "tuning": {
            "algorithm": "random",
            "objective": {"metric": "accuracy", "type": "maximize"},
            "maxTrials": 2,
            "parallelTrials": 2,
            "maxFailedTrials": 0,
            "trialArgs": ["--epochs=10"],
            "parameters": [{"name": "lr", "type": "double", "min": 0.1, "max": 1.0}],
        },
        "gate": {"metric": "accuracy", "min": 0.8},
        "serving": {"inferenceService": "digits"},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "mlcd.io/v1alpha1",
        "kind": "ModelPipeline",
        "metadata": {"name": "digits"},
        "spec": spec,
    }


def write_spec(path: pathlib.Path, resource: dict[str, Any]) -> pathlib.Path:
    path.write_text(yaml.safe_dump(resource, sort_keys=False))
    return path


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def mlcd(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
    """Runs the ``mlcd`` command as a user would, in a process of its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "mlcd.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 120, interval: float = 0.3
) -> Any:
    """Polls ``check`` until it returns something true; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def v2_infer(url: str, model: str, x: Any) -> Any:
    """Asks a served model through the V2 (Open Inference) protocol; returns its output."""
    import httpx
    import numpy as np

    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    response.raise_for_status()
    out = response.json()["outputs"][0]
    assert out["name"] == "logits" and out["datatype"] == "FP32", out
    return np.array(out["data"]).reshape(out["shape"])


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition, whatever the label order."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def softmax_model(folder: pathlib.Path, features: int = 4, classes: int = 3) -> Any:
    """A small ONNX model (input ``input`` [batch, features] FP32, output ``logits``) written
    by the test trainer into ``folder``; returns its ModelRef as version 1."""
    import numpy as np

    from mlcd.artifacts.hashing import sha256_file
    from mlcd.domain.records import ModelRef

    sys.path.insert(0, str(SOFTMAX_TRAINER.parent))
    from softmax_trainer import export

    folder.mkdir(parents=True, exist_ok=True)
    weights = np.arange(features * classes, dtype=np.float32).reshape(features, classes)
    export(weights, np.zeros(classes, np.float32), (features,), folder)
    return ModelRef(uri=folder.as_uri(), version="1", sha256=sha256_file(folder / "model.onnx"))


def run_python_trainer(folder: pathlib.Path, code: str, timeout: float = 120) -> Any:
    """Runs ``python -c code`` as a trainer through run_trainer; returns (TrainerRun, log)."""
    from mlcd.domain.spec import Trainer
    from mlcd.pipeline.trainer import ProcessGroups, run_trainer

    trainer = Trainer.model_validate({"command": [sys.executable, "-c", code]})
    log = folder / "trainer.log"
    groups = ProcessGroups(folder / "procs")
    result = run_trainer(trainer, args=[], env={}, log_path=log, groups=groups, timeout=timeout)
    return result, log
