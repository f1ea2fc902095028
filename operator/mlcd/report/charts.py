"""Charts as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def trials(records: Sequence[Mapping[str, Any]], params: Sequence[str], metric: str) -> bytes:
    """Each parameter against the objective, as Katib's UI shows it; failed trials in grey."""
    fig, axes = plt.subplots(
        1, max(len(params), 1), figsize=(4 * max(len(params), 1), 3.2), squeeze=False
    )
    for ax, name in zip(axes[0], params, strict=False):
        good = [r for r in records if r.get("value") is not None]
        xs = [r["params"].get(name) for r in good]
        ys = [r["value"] for r in good]
        if xs and all(isinstance(v, int | float) for v in xs):
            ax.scatter(xs, ys, c="tab:blue")
            if name.lower() in ("lr", "learning_rate", "learning-rate") and min(xs) > 0:
                ax.set_xscale("log")
        else:
            labels = sorted({str(v) for v in xs})
            ax.scatter([labels.index(str(v)) for v in xs], ys, c="tab:blue")
            ax.set_xticks(range(len(labels)), labels)
        failed = [r for r in records if r.get("value") is None]
        if failed:
            ax.set_title(f"{name} ({len(failed)} failed)", fontsize=10)
        else:
            ax.set_title(name, fontsize=10)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    return _png(fig)


def curves(series: Mapping[str, Sequence[float]]) -> bytes:
    shown = {k: v for k, v in series.items() if k != "epoch" and len(v) > 1}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, values in shown.items():
        ax.plot(range(1, len(values) + 1), values, marker=".", label=name)
    ax.set_xlabel("report")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion(matrix: Sequence[Sequence[int]]) -> bytes:
    size = len(matrix)
    fig, ax = plt.subplots(figsize=(0.45 * size + 2, 0.45 * size + 1.6))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value:
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > max(map(max, matrix)) / 2 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    return _png(fig)


def roc(fpr: Sequence[float], tpr: Sequence[float], auc: float | None) -> bytes:
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot(fpr, tpr, label=f"micro-average (macro AUC {auc:.4f})" if auc else "ROC")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)
