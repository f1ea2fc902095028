"""Our metrics agree with scikit-learn's on the same outputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from mlcd.domain.classification import evaluate, probabilities


def test_agrees_with_scikit_learn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 500)
    logits = rng.normal(size=(500, 4)) + 2.0 * np.eye(4)[labels]
    report = evaluate(logits, labels, 4)
    probs = probabilities(logits)
    predicted = probs.argmax(1)
    assert report.metrics["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert report.metrics["loss"] == pytest.approx(sk.log_loss(labels, probs))
    assert report.metrics["f1-macro"] == pytest.approx(
        sk.f1_score(labels, predicted, average="macro")
    )
    assert report.metrics["precision-macro"] == pytest.approx(
        sk.precision_score(labels, predicted, average="macro")
    )
    assert report.metrics["roc-auc"] == pytest.approx(
        sk.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )
    assert report.confusion == sk.confusion_matrix(labels, predicted).tolist()
    micro = sk.roc_auc_score(np.eye(4)[labels].ravel(), probs.ravel())
    area = np.trapezoid(report.roc_tpr, report.roc_fpr)
    assert area == pytest.approx(micro, abs=0.01)
    assert report.roc_fpr[0] == 0.0 and report.roc_tpr[-1] == 1.0


def test_perfect_and_probability_inputs():
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3)[labels]
    report = evaluate(probs, labels, 3)
    assert report.metrics["accuracy"] == 1.0
    assert report.metrics["roc-auc"] == 1.0
    assert [c.support for c in report.per_class] == [1, 2, 1]
