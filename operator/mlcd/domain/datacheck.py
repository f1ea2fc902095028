"""Checks on a dataset before any training: shape, values, labels, balance, and drift of its
distribution against the data the serving model was trained on."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from mlcd.domain.spec import DatasetSchema, Model

BINS = 16
_FLOOR = 1e-4


class DataStats(Model):
    """A dataset's distribution, small enough to keep beside a model in its metadata."""

    samples: int
    edges: list[float]
    feature_hist: list[float]
    label_dist: list[float]
    mean: float
    std: float


def sanity_problems(
    x: npt.NDArray[np.generic], y: npt.NDArray[np.generic], schema: DatasetSchema
) -> list[str]:
    """Everything wrong with the arrays, each as one sentence; empty when the data is sound."""
    problems: list[str] = []
    shape = tuple(schema.feature_shape)
    if x.ndim < 1 or tuple(x.shape[1:]) != shape:
        problems.append(f"features have shape {tuple(x.shape[1:])} per sample, schema says {shape}")
    if y.ndim != 1:
        problems.append(f"labels must be one-dimensional, got shape {tuple(y.shape)}")
    if len(x) != len(y):
        problems.append(f"{len(x)} feature rows but {len(y)} labels")
    if len(y) < schema.min_samples:
        problems.append(f"{len(y)} samples, fewer than minSamples {schema.min_samples}")
    if not np.issubdtype(x.dtype, np.number):
        problems.append(f"features have dtype {x.dtype}, not numeric")
        return problems
    if problems:
        return problems
    xf = x.astype(np.float64, copy=False)
    nan = int(np.isnan(xf).sum())
    if nan:
        problems.append(f"{nan} feature values are NaN")
    inf = int(np.isinf(xf).sum())
    if inf:
        problems.append(f"{inf} feature values are infinite")
    finite = xf[np.isfinite(xf)]
    if schema.value_min is not None and finite.size and finite.min() < schema.value_min:
        problems.append(f"feature value {finite.min():g} below valueMin {schema.value_min:g}")
    if schema.value_max is not None and finite.size and finite.max() > schema.value_max:
        problems.append(f"feature value {finite.max():g} above valueMax {schema.value_max:g}")
    if not np.issubdtype(y.dtype, np.integer):
        yf = y.astype(np.float64)
        if not np.all(np.isfinite(yf)) or not np.all(yf == np.round(yf)):
            problems.append(f"labels have dtype {y.dtype} and are not all integers")
            return problems
    labels = y.astype(np.int64)
    bad = int(((labels < 0) | (labels >= schema.num_classes)).sum())
    if bad:
        problems.append(f"{bad} labels outside [0, {schema.num_classes})")
        return problems
    counts = np.bincount(labels, minlength=schema.num_classes)
    thin = [str(c) for c in range(schema.num_classes) if counts[c] < schema.min_samples_per_class]
    if thin:
        problems.append(
            f"classes {', '.join(thin)} have fewer than minSamplesPerClass "
            f"{schema.min_samples_per_class} samples"
        )
    return problems


def class_counts(y: npt.NDArray[np.generic], num_classes: int) -> list[int]:
    return [int(c) for c in np.bincount(y.astype(np.int64), minlength=num_classes)]


def statistics(
    x: npt.NDArray[np.generic],
    y: npt.NDArray[np.generic],
    schema: DatasetSchema,
    edges: list[float] | None = None,
) -> DataStats:
    xf = x.astype(np.float64, copy=False).ravel()
    if edges is None:
        low = schema.value_min if schema.value_min is not None else float(xf.min())
        high = schema.value_max if schema.value_max is not None else float(xf.max())
        if high <= low:
            high = low + 1.0
        edges = [float(e) for e in np.linspace(low, high, BINS + 1)]
    clipped = np.clip(xf, edges[0], edges[-1])
    hist, _ = np.histogram(clipped, bins=np.asarray(edges))
    labels = y.astype(np.int64)
    dist = np.bincount(labels, minlength=schema.num_classes)[: schema.num_classes]
    return DataStats(
        samples=len(labels),
        edges=edges,
        feature_hist=[float(v) for v in hist / max(hist.sum(), 1)],
        label_dist=[float(v) for v in dist / max(dist.sum(), 1)],
        mean=float(xf.mean()),
        std=float(xf.std()),
    )


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index of two distributions over the same bins."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, _FLOOR), max(a, _FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def drift(current: DataStats, reference: DataStats) -> dict[str, float]:
    """PSI of feature values and of labels; the current stats must use the reference's edges."""
    out = {"feature-psi": psi(reference.feature_hist, current.feature_hist)}
    if len(reference.label_dist) == len(current.label_dist):
        out["label-psi"] = psi(reference.label_dist, current.label_dist)
    return out


def holdout_split(
    n: int, fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A fixed split: the same data and seed always give the same (train, holdout) indices."""
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    cut = max(1, round(n * fraction))
    return np.sort(order[cut:]), np.sort(order[:cut])
