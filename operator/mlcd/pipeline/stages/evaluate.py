"""Evaluate on the holdout the trainer never saw: the ONNX model checked, compared with the
trained model's own outputs, and scored as a classifier."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np

from mlcd.domain import classification
from mlcd.domain.numbers import json_number, json_safe
from mlcd.errors import StageFailed
from mlcd.pipeline.context import RunContext
from mlcd.pipeline.stages import load_npz, save_npz
from mlcd.pipeline.trainer import ProcessGroups, run_trainer

_ORT_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
}


def onnx_outputs(model_path: pathlib.Path, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(model_path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise StageFailed(f"model.onnx fails onnx.checker: {exc}") from exc
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    batch = x.astype(_ORT_NUMPY.get(first.type, np.float32))
    outputs: np.ndarray[Any, Any] = session.run(None, {first.name: batch})[0]
    return outputs


def log_metrics(artifact: Any, values: dict[str, float]) -> None:
    """Logs the metrics on a KFP ``Metrics`` artifact. Its metadata becomes a protobuf
    ``Struct``, which holds no NaN or inf: such a value is kept by its protobuf JSON name."""
    for name, value in values.items():
        if math.isfinite(value):
            artifact.log_metric(name, value)
        else:
            artifact.metadata[name] = json_number(value)


def run(
    ctx: RunContext, holdout_path: str, model_dir: str, metrics: Any, classification_metrics: Any
) -> str:
    """Returns the metrics as JSON; logs them on the KFP Metrics and ClassificationMetrics."""
    spec = ctx.pipeline.spec
    with ctx.stage("evaluate") as outcome:
        x, y = load_npz(holdout_path)
        work = ctx.work_dir("evaluate")
        # The trainer sees the holdout's features, never its labels.
        save_npz(work / "holdout-features.npz", x=x)
        predictions = work / "predictions.npy"
        env = {
            "MLCD_STAGE": "evaluate",
            "MLCD_MODEL_DIR": model_dir,
            "MLCD_EVAL_DATA": str(work / "holdout-features.npz"),
            "MLCD_PREDICTIONS_PATH": str(predictions),
            "MLCD_METRICS_FILE": str(work / "metrics.json"),
            "MLCD_RUN_ID": ctx.run_id,
        }
        groups = ProcessGroups(ctx.dir / "procs")
        with groups.handling_signals():
            result = run_trainer(
                spec.trainer,
                args=[],
                env=env,
                log_path=work / "evaluate.log",
                groups=groups,
                timeout=3600,
            )
        if not result.ok:
            raise StageFailed(f"evaluation {result.failure()}")
        if not predictions.is_file():
            raise StageFailed("the trainer wrote no predictions to $MLCD_PREDICTIONS_PATH")
        trained = np.load(predictions)
        served = onnx_outputs(pathlib.Path(model_dir) / "model.onnx", x)
        if served.shape != trained.shape:
            raise StageFailed(
                f"ONNX outputs have shape {served.shape}, the trained model's {trained.shape}"
            )
        difference = float(np.max(np.abs(served.astype(np.float64) - trained)))
        outcome["parity"] = {
            "maxAbsDifference": difference,
            "tolerance": spec.evaluation.parity_tolerance,
        }
        if not np.isfinite(difference) or difference > spec.evaluation.parity_tolerance:
            raise StageFailed(
                f"ONNX parity failed: max |onnx - trained| = {difference:.3g} > "
                f"parityTolerance {spec.evaluation.parity_tolerance:g}"
            )
        report = classification.evaluate(served, y, spec.dataset.schema_.num_classes)
        values = dict(report.metrics)
        printed = result.metrics.latest()
        values.update({k: v for k, v in printed.items() if k in spec.evaluation.extra_metrics})
        log_metrics(metrics, values)
        labels = [str(c) for c in range(spec.dataset.schema_.num_classes)]
        classification_metrics.log_confusion_matrix(labels, report.confusion)
        classification_metrics.log_roc_curve(report.roc_fpr, report.roc_tpr, report.roc_thresholds)
        outcome.update(
            metrics=values,
            confusion=report.confusion,
            perClass=[vars(c) for c in report.per_class],
            roc={"fpr": report.roc_fpr, "tpr": report.roc_tpr},
            samples=len(y),
        )
        return json.dumps(json_safe(values), allow_nan=False)
