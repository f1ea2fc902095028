"""Real KServe model servers for the rollout tests and benchmark: a small ONNX classifier,
served by ``python -m mlcd.serving.modelserver`` with the options a test asks for."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

import httpx
import numpy as np

from mlcd.artifacts.hashing import sha256_file
from mlcd.processes import free_port, kill_group

MODEL = "clf"
FEATURES, CLASSES = 16, 4


def write_model(folder: pathlib.Path, version: str, seed: int) -> pathlib.Path:
    """A linear classifier (16 features, 4 classes) as ONNX, and a pointer naming it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    b = rng.normal(size=(CLASSES,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / version
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))
    pointer = folder / f"pointer-{version}.json"
    pointer.write_text(
        json.dumps(
            {"version": version, "path": str(path), "sha256": sha256_file(path / "model.onnx")}
        )
    )
    return pointer


def samples(count: int = 64, seed: int = 0) -> np.ndarray:
    """Inputs for the classifier, one row each (what a replay sends)."""
    return np.random.default_rng(seed).normal(size=(count, FEATURES)).astype(np.float32)


def request_body(rows: int = 1, seed: int = 0) -> dict[str, object]:
    data = np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)
    return {
        "inputs": [
            {
                "name": "input",
                "shape": [rows, FEATURES],
                "datatype": "FP32",
                "data": data.ravel().tolist(),
            }
        ]
    }


class ModelServer:
    """One model server process on a free loopback port."""

    def __init__(
        self,
        folder: pathlib.Path,
        pointer: pathlib.Path,
        env: Mapping[str, str] | None = None,
        name: str = "server",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.log = folder / f"{name}.log"
        # The pointer is copied: the server writes served.json next to it.
        self.folder = folder
        own = folder / name / "pointer.json"
        self.pointer, self.served = own, own.with_name("served.json")
        own.parent.mkdir(parents=True, exist_ok=True)
        own.write_text(pointer.read_text())
        environment = {
            **os.environ,
            "MLCD_SERVING_MODEL": MODEL,
            "MLCD_SERVING_POINTER": str(own),
            "MLCD_SERVING_PORT": str(self.port),
            "MLCD_SERVING_HOST": "127.0.0.1",
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlcd.serving.modelserver"],
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 120.0) -> ModelServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"model server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/models/{MODEL}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"model server not ready:\n{self.log.read_text()[-3000:]}")

    def infer(self, client: httpx.Client, base: str | None = None, seed: int = 0) -> httpx.Response:
        return client.post(
            f"{base or self.url}/v2/models/{MODEL}/infer", json=request_body(seed=seed)
        )

    def metric(self, name: str) -> float:
        """The sum of one metric's samples on this server's /metrics (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            kill_group(self.process.pid, grace=5.0)
        self.process.wait(timeout=10)


def serve(folder: pathlib.Path, version: str, name: str, **env: str) -> Iterator[ModelServer]:
    """A server of ``version`` for a fixture: ready when yielded, stopped after."""
    server = ModelServer(folder, folder / f"pointer-{version}.json", env, name=name)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def top_class(response: httpx.Response) -> int:
    output = response.json()["outputs"][0]
    return int(np.argmax(np.asarray(output["data"])))
