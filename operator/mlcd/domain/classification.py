"""Classification metrics computed from a model's outputs on the holdout."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_ROC_POINTS = 101


@dataclass(frozen=True)
class ClassReport:
    label: int
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    metrics: dict[str, float]
    confusion: list[list[int]]
    per_class: list[ClassReport]
    roc_fpr: list[float] = field(default_factory=list)
    roc_tpr: list[float] = field(default_factory=list)
    roc_thresholds: list[float] = field(default_factory=list)


def probabilities(outputs: npt.NDArray[np.generic]) -> FloatArray:
    """Softmax of logits; outputs that already are probabilities pass through."""
    out = outputs.astype(np.float64)
    if out.size and np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        return out
    shifted = out - out.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: FloatArray = exp / exp.sum(axis=1, keepdims=True)
    return result


def _auc(fpr: FloatArray, tpr: FloatArray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def _roc(
    truth: npt.NDArray[np.bool_], scores: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    order = np.argsort(-scores, kind="stable")
    truth, scores = truth[order], scores[order]
    distinct = np.r_[np.where(np.diff(scores))[0], truth.size - 1]
    tps = np.cumsum(truth)[distinct].astype(np.float64)
    fps = (distinct + 1 - tps).astype(np.float64)
    positives, negatives = max(tps[-1], 1.0), max(fps[-1], 1.0)
    fpr = np.r_[0.0, fps / negatives]
    tpr = np.r_[0.0, tps / positives]
    thresholds = np.r_[np.inf, scores[distinct]]
    return fpr, tpr, thresholds


def evaluate(
    outputs: npt.NDArray[np.generic], labels: npt.NDArray[np.generic], num_classes: int
) -> ClassificationReport:
    probs = probabilities(outputs)
    y = labels.astype(np.int64)
    predicted = probs.argmax(axis=1)
    n = len(y)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    per_class: list[ClassReport] = []
    for c in range(num_classes):
        tp = confusion[c, c]
        predicted_c, actual_c = confusion[:, c].sum(), confusion[c, :].sum()
        precision = float(tp / predicted_c) if predicted_c else 0.0
        recall = float(tp / actual_c) if actual_c else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(ClassReport(c, precision, recall, f1, int(actual_c)))
    onehot = np.zeros_like(probs, dtype=bool)
    onehot[np.arange(n), y] = True
    aucs = []
    for c in range(num_classes):
        if 0 < onehot[:, c].sum() < n:
            fpr_c, tpr_c, _ = _roc(onehot[:, c], probs[:, c])
            aucs.append(_auc(fpr_c, tpr_c))
    fpr, tpr, thresholds = _roc(onehot.ravel(), probs.ravel())
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(_ROC_POINTS, len(fpr))).astype(int))
    picked = np.clip(thresholds[keep], 0.0, 1.0)
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(n), y], 1e-12, 1.0))))
    metrics = {
        "accuracy": float((predicted == y).mean()) if n else float("nan"),
        "loss": loss,
        "precision-macro": float(np.mean([r.precision for r in per_class])),
        "recall-macro": float(np.mean([r.recall for r in per_class])),
        "f1-macro": float(np.mean([r.f1 for r in per_class])),
        "roc-auc": float(np.mean(aucs)) if aucs else float("nan"),
    }
    return ClassificationReport(
        metrics=metrics,
        confusion=confusion.tolist(),
        per_class=per_class,
        roc_fpr=[float(v) for v in fpr[keep]],
        roc_tpr=[float(v) for v in tpr[keep]],
        roc_thresholds=[float(v) for v in picked],
    )
