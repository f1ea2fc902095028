"""The holdout's samples, for replayed traffic during a rollout (``rollout.traffic``): the same
split evaluation holds out of training, read from the pipeline's dataset."""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np

from mlcd.artifacts import open_dataset
from mlcd.artifacts.credentials import SecretResolver
from mlcd.domain import datacheck
from mlcd.domain.spec import ModelPipeline

#: Samples kept for replay: enough to vary the requests, small enough to hold in memory.
MAX_SAMPLES = 256


def holdout_samples(
    pipeline: ModelPipeline, secrets: SecretResolver, scratch: pathlib.Path
) -> np.ndarray:
    spec = pipeline.spec
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".replay-") as folder:
        data = open_dataset(spec.dataset, secrets).fetch(pathlib.Path(folder))
        with np.load(data.path) as arrays:
            x, y = arrays["x"], arrays["y"]
            _, holdout = datacheck.holdout_split(
                len(y), spec.evaluation.holdout_fraction, spec.evaluation.seed
            )
            return np.asarray(x[holdout[:MAX_SAMPLES]], dtype=np.float32)
