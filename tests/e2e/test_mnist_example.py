"""The README's example end to end: the torch trainer, DDP with two workers, KServe serving."""

from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest

from helpers import EXAMPLE, mlcd, v2_infer
from helpers import EXAMPLE_SMALL_BUDGET as SMALL
from mnist_trainer.dataset import write as write_digits


@pytest.mark.slow
def test_the_example_trains_gates_exports_and_serves(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MLCD_HOME", str(home))
    monkeypatch.setenv("MLCD_SERVING_PORT", "0")
    data = tmp_path / "mnist.npz"
    write_digits(data)
    try:
        first = mlcd(
            "run", str(EXAMPLE), *SMALL, "--set", f"dataset.uri={data}", "--output", "json"
        )
        assert first.code == 0, first.stderr
        out = first.json
        assert out["result"] == "promoted"
        assert out["metrics"]["accuracy"] > 0.9  # ten classes: chance is 0.1
        assert out["params"]["optimizer"] in ("adam", "sgd")
        model = home / "models" / "mnist" / out["model"]["version"] / "model.onnx"
        assert hashlib.sha256(model.read_bytes()).hexdigest() == out["model"]["sha256"]
        run_dir = home / "runs" / "default" / "mnist" / out["run"]
        train_log = (run_dir / "work" / "train" / "train.log").read_text()
        assert "--nproc-per-node=2" in train_log  # the distributed job ran two workers

        with np.load(data) as arrays:
            x = arrays["x"][:32].astype(np.float32)
        expected = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
        served = v2_infer(out["serving"]["url"], "mnist", x)
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)

        second = mlcd(
            "run",
            str(EXAMPLE),
            *SMALL,
            "--set",
            f"dataset.uri={data}",
            "--set",
            "gate.min=0.999",
            "--output",
            "json",
        )
        assert second.code == 3, second.stderr
        assert second.json["result"] == "rejected"
        assert "min 0.999" in second.json["reason"]
        assert second.json["serving"]["version"] == out["model"]["version"]
        np.testing.assert_array_equal(v2_infer(out["serving"]["url"], "mnist", x), served)
    finally:
        # The example serves behind its router: everything mlcd run keeps running stops.
        mlcd("down")
