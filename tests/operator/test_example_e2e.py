"""The example as a user applies it: kubectl apply, kubectl wait, kubectl get, the model served.

The real trainer (PyTorch, DDP with two workers) on a small budget, through the example's
documented overrides (``mlcd render --set``)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import EXAMPLE, EXAMPLE_SMALL_BUDGET, mlcd, v2_infer


@pytest.mark.slow
def test_kubectl_apply_the_example_then_wait_for_ready(start_operator, pipelines, tmp_path):
    from mnist_trainer.dataset import write

    data = tmp_path / "mnist.npz"
    write(data)
    # The example's documented overrides: the same --set as `mlcd run`, rendered for kubectl.
    rendered = mlcd("render", str(EXAMPLE), *EXAMPLE_SMALL_BUDGET, "--set", f"dataset.uri={data}")
    assert rendered.code == 0, rendered.stderr
    start_operator()
    cluster, ns = pipelines.cluster, pipelines.namespace
    cluster.kubectl("apply", "-f", "-", "-n", ns, input=rendered.stdout)
    waited = cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        "modelpipeline/mnist",
        "-n",
        ns,
        "--timeout=600s",
        timeout=660,
    )
    assert "condition met" in waited.stdout
    table = cluster.kubectl("get", "mp", "-n", ns).stdout.splitlines()
    header = ["NAME", "PHASE", "SERVING", "ROLLOUT", "CANARY", "METRIC", "NEXT", "RUN", "AGE"]
    assert table[0].split() == header
    # The first model is served at once: no rollout, its columns empty.
    row = table[1].split()
    assert row[:3] == ["mnist", "Ready", "1"] and row[3].startswith("accuracy="), table

    status = pipelines.status("mnist")
    serving = status["serving"]
    assert serving["version"] == "1" and len(serving["sha256"]) == 64
    assert serving["metrics"]["accuracy"] > 0.9
    assert status["runs"][0]["params"]["optimizer"] in ("adam", "sgd")
    with np.load(data) as arrays:
        x = arrays["x"][:4].astype(np.float32)
    assert v2_infer(serving["url"], "mnist", x).shape == (4, 10)
