"""KServe's Python ModelServer serving an ONNX model with onnxruntime (V1 and V2 protocols).

Run as ``python -m mlcd.serving.modelserver``, configured by environment variables so that
KServe's own argument parser, which reads ``sys.argv`` at import time, sees nothing of ours:

``MLCD_SERVING_MODEL`` model name · ``MLCD_SERVING_POINTER`` JSON file naming the version to
serve (``{"version", "path", "sha256"}``) · ``MLCD_SERVING_PORT`` · ``MLCD_SERVING_HOST`` ·
``MLCD_SERVING_FD``, a listening socket bound by the starter, served on instead of binding.

``POST /v2/repository/models/<name>/load`` (Triton's repository extension) re-reads the
pointer and swaps the model in without dropping a request; a version whose sha256 does not
match is refused and the old one keeps serving.

For rollouts, two more variables: ``MLCD_SERVING_FAULTS`` makes the server answer errors, slow
responses or wrong predictions at a given rate (tests and demos; see :mod:`mlcd.serving.faults`),
and ``MLCD_SERVING_SHADOW_OF`` (the stable server's pointer file) makes it compare every answer
with the stable model's (see :mod:`mlcd.serving.router.shadow`).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time
import uuid
from typing import Any

import numpy as np

_ONNX_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}
_NUMPY = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


def _dims(shape: Any) -> list[int]:
    """An ONNX shape as the V2 protocol writes it: a dynamic dimension is -1."""
    return [d if isinstance(d, int) else -1 for d in shape]


def tensor_problem(
    name: str,
    expected_shape: list[int],
    expected_type: str,
    shape: list[int],
    datatype: str | None,
) -> str | None:
    """Why a request's tensor does not fit the model's input, naming the input, the shape and
    datatype expected and those received; None if it fits. ``datatype`` None: V1's JSON
    numbers, converted to the input's type."""
    fits = len(shape) == len(expected_shape) and all(
        e == -1 or e == g for e, g in zip(expected_shape, shape, strict=True)
    )
    if fits and datatype in (None, expected_type):
        return None
    return (
        f"input {name!r}: expected shape {expected_shape} {expected_type}, "
        f"received shape {shape} {datatype or '(JSON numbers)'}"
    )


def _listen(host: str, fd: int | None) -> None:
    """KServe's REST server binds every interface; a laptop should serve on loopback only.
    With ``fd``, it serves on the socket the starter bound and handed over (no other process
    can take its port in between)."""
    from kserve.protocol.rest import server as rest_server

    original = rest_server.uvicorn.Config

    class Config(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["host"] = host
            if fd is not None:
                kwargs["fd"] = fd
            super().__init__(*args, **kwargs)

    rest_server.uvicorn.Config = Config


def _rollout_extras(model: Any) -> None:
    """Fault injection and shadow comparison, when their variables ask for them."""
    from mlcd.serving.faults import Faults, inject

    inject(model, Faults.parse(os.environ.get("MLCD_SERVING_FAULTS")))
    stable = os.environ.get("MLCD_SERVING_SHADOW_OF")
    if stable:
        from mlcd.serving.router.shadow import compare_with_stable

        compare_with_stable(model, pathlib.Path(stable))


def build(name: str, pointer: pathlib.Path) -> Any:
    import kserve
    import onnxruntime as ort
    from kserve.errors import InferenceError, InvalidInput
    from kserve.model_repository import ModelRepository

    from mlcd.artifacts.hashing import sha256_file

    class OnnxModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, model_name: str, version: str, path: pathlib.Path, sha256: str):
            super().__init__(model_name)
            self.version, self.path, self.sha256 = version, path, sha256
            self.session: Any = None

        def load(self) -> bool:
            actual = sha256_file(self.path / "model.onnx")
            if actual != self.sha256:
                raise ValueError(
                    f"sha256 of version {self.version} is {actual}, expected {self.sha256}"
                )
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(
                str(self.path / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
            self.ready = True
            return True

        def _types(self, tensors: list[Any]) -> list[dict[str, Any]]:
            return [
                {
                    "name": t.name,
                    "datatype": _ONNX_TO_V2.get(t.type, t.type),
                    "shape": _dims(t.shape),
                }
                for t in tensors
            ]

        def _feed(self, meta: Any, array: Any, datatype: str | None) -> Any:
            """The request's tensor for input ``meta``, checked against it: a client's mistake
            is InvalidInput (HTTP 400), never onnxruntime's error (500)."""
            expected = _ONNX_TO_V2.get(meta.type, meta.type)
            problem = tensor_problem(
                meta.name, _dims(meta.shape), expected, list(array.shape), datatype
            )
            if problem is not None:
                raise InvalidInput(problem)
            return array.astype(_NUMPY.get(expected, np.float32), copy=False)

        def _run(self, feeds: dict[str, Any]) -> Any:
            try:
                return self.session.run(None, feeds)
            except Exception as exc:  # checked inputs: what fails now is the server's
                raise InferenceError(f"onnxruntime failed: {exc}") from exc

        def get_input_types(self) -> list[dict[str, Any]]:
            return self._types(self.session.get_inputs())

        def get_output_types(self) -> list[dict[str, Any]]:
            return self._types(self.session.get_outputs())

        async def predict(
            self, payload: Any, headers: Any = None, response_headers: Any = None
        ) -> Any:
            inputs = {meta.name: meta for meta in self.session.get_inputs()}
            first = next(iter(inputs.values()))
            if isinstance(payload, dict):  # V1: {"instances": [...]}
                if not isinstance(payload.get("instances"), list):
                    raise InvalidInput('a V1 request is {"instances": [...]}')
                try:
                    batch: Any = np.asarray(payload["instances"], dtype=np.float64)
                except (ValueError, TypeError) as exc:
                    raise InvalidInput(
                        f"input {first.name!r}: instances do not form a tensor of numbers "
                        f"(expected shape {_dims(first.shape)}): {exc}"
                    ) from exc
                outputs = self._run({first.name: self._feed(first, batch, None)})
                return {"predictions": outputs[0].tolist()}
            feeds = {}
            for tensor in payload.inputs:
                meta = inputs.get(tensor.name)
                if meta is None:
                    raise InvalidInput(
                        f"input {tensor.name!r} is not an input of {self.name}; "
                        f"its inputs: {', '.join(inputs)}"
                    )
                try:
                    array = tensor.as_numpy()
                except (ValueError, TypeError) as exc:
                    raise InvalidInput(
                        f"input {tensor.name!r}: its values do not fill shape "
                        f"{list(tensor.shape)} {tensor.datatype}: {exc}"
                    ) from exc
                feeds[tensor.name] = self._feed(meta, array, tensor.datatype)
            missing = [n for n in inputs if n not in feeds]
            if missing:
                raise InvalidInput(f"inputs {missing} missing; expected {list(inputs)}")
            results = self._run(feeds)
            outs = [
                kserve.InferOutput(
                    name=meta.name,
                    shape=list(value.shape),
                    datatype=_ONNX_TO_V2.get(meta.type, "FP32"),
                    data=value,
                )
                for meta, value in zip(self.session.get_outputs(), results, strict=True)
            ]
            return kserve.InferResponse(
                model_name=self.name,
                infer_outputs=outs,
                response_id=payload.id or str(uuid.uuid4()),
            )

    class PointerRepository(ModelRepository):  # type: ignore[misc]
        """Serves whatever version the pointer file names; ``load`` swaps it in."""

        def load(self, model_name: str) -> bool:
            if model_name != name:
                raise ValueError(f"this server serves {name}, not {model_name}")
            target = json.loads(pointer.read_text())
            model = OnnxModel(
                name, str(target["version"]), pathlib.Path(target["path"]), str(target["sha256"])
            )
            model.load()
            _rollout_extras(model)
            self.update(model)
            served = pointer.with_name("served.json")
            tmp = served.with_suffix(".tmp")
            tmp.write_text(json.dumps({**target, "pid": os.getpid()}))
            tmp.replace(served)
            logging.getLogger("mlcd.serving").info("serving %s version %s", name, target["version"])
            return True

    repository = PointerRepository()
    repository.load(name)
    return repository


def _triton_metadata(dataplane: Any, repository: Any) -> None:
    """V2 model metadata as a Triton client expects it of an ONNX model: KServe's data plane
    leaves ``platform`` empty and ``versions`` out; the REST endpoints read this instance."""
    plain = dataplane.model_metadata

    async def model_metadata(model_name: str) -> dict[str, Any]:
        metadata: dict[str, Any] = await plain(model_name)
        model = repository.get_model(model_name)
        version = getattr(model, "version", None)
        return {
            **metadata,
            "platform": "onnxruntime_onnx",
            **({"versions": [str(version)]} if version is not None else {}),
        }

    dataplane.model_metadata = model_metadata


def main() -> int:
    name = os.environ["MLCD_SERVING_MODEL"]
    pointer = pathlib.Path(os.environ["MLCD_SERVING_POINTER"])
    port = int(os.environ.get("MLCD_SERVING_PORT", "8080"))
    fd = os.environ.get("MLCD_SERVING_FD")
    _listen(os.environ.get("MLCD_SERVING_HOST", "127.0.0.1"), int(fd) if fd else None)
    import kserve
    import onnxruntime  # noqa: F401 - loaded now, while there may be nothing to serve yet

    # Started ahead of need, the server waits here for the model it will serve.
    while not pointer.exists():
        time.sleep(0.1)

    repository = build(name, pointer)
    server = kserve.ModelServer(
        http_port=port, enable_grpc=False, registered_models=repository, workers=1
    )
    _triton_metadata(server.dataplane, repository)
    server.start([repository.get_model(name)])
    return 0


if __name__ == "__main__":
    sys.argv = sys.argv[:1]
    sys.exit(main())
