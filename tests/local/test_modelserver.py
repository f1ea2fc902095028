"""KServe's model server with our ONNX model: a client's mistake is a 400 that names the
input, the shape and datatype expected and received; the metadata is what a Triton client
expects of an ONNX model."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from helpers import softmax_model
from mlcd.serving.local import LocalServing
from mlcd.serving.modelserver import tensor_problem


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("modelserver")
    folder = root / "model"
    ref = softmax_model(folder)
    serving = LocalServing(root / "home", port=0)
    try:
        yield serving.serve("m", ref, folder)
    finally:
        serving.stop("m")


def _v2(url: str, *tensors: dict) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/m/infer", json={"inputs": list(tensors)}, timeout=30)


def _tensor(shape: list[int], data: list, datatype: str = "FP32", name: str = "input") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_the_v2_metadata_says_platform_and_versions(server: str) -> None:
    metadata = httpx.get(f"{server}/v2/models/m", timeout=10).json()
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]


def test_good_requests_answer(server: str) -> None:
    v2 = _v2(server, _tensor([2, 4], [255.0] * 8))
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["shape"] == [2, 3]
    v1 = httpx.post(f"{server}/v1/models/m:predict", json={"instances": [[0, 0, 0, 255]]})
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == [[9.0, 10.0, 11.0]]


@pytest.mark.parametrize(
    ("tensors", "words"),
    [
        (
            [_tensor([4], [1.0] * 4)],
            "input 'input': expected shape [-1, 4] FP32, received shape [4] FP32",
        ),
        (
            [_tensor([1, 5], [1.0] * 5)],
            "input 'input': expected shape [-1, 4] FP32, received shape [1, 5] FP32",
        ),
        (
            [_tensor([1, 4], [1.0] * 4, "FP64")],
            "input 'input': expected shape [-1, 4] FP32, received shape [1, 4] FP64",
        ),
        ([_tensor([2, 4], [1.0] * 4)], "input 'input': its values do not fill shape [2, 4]"),
        ([_tensor([1, 4], [1.0] * 4, name="pixels")], "input 'pixels' is not an input of m"),
    ],
    ids=["rank", "dimension", "datatype", "too few values", "unknown input"],
)
def test_a_bad_v2_request_is_a_400_that_says_why(server: str, tensors: list, words: str) -> None:
    response = _v2(server, *tensors)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


@pytest.mark.parametrize(
    ("instances", "words"),
    [
        ([[1, 2, 3]], "input 'input': expected shape [-1, 4] FP32, received shape [1, 3]"),
        ([1, 2, 3, 4], "input 'input': expected shape [-1, 4] FP32, received shape [4]"),
        ([[1, 2, 3, 4], [1, 2]], "input 'input': instances do not form a tensor of numbers"),
        ([["a", "b", "c", "d"]], "input 'input': instances do not form a tensor of numbers"),
    ],
    ids=["dimension", "rank", "ragged", "strings"],
)
def test_a_bad_v1_request_is_a_400_that_says_why(server: str, instances: list, words: str) -> None:
    response = httpx.post(f"{server}/v1/models/m:predict", json={"instances": instances})
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


@pytest.mark.parametrize(
    ("shape", "datatype", "fits"),
    [
        ([1, 4], "FP32", True),
        ([7, 4], None, True),
        ([1, 4], "INT64", False),
        ([1, 1, 4], "FP32", False),
        ([], "FP32", False),
    ],
)
def test_tensor_problem(shape: list[int], datatype: str | None, fits: bool) -> None:
    problem = tensor_problem("input", [-1, 4], "FP32", shape, datatype)
    assert (problem is None) is fits
    if problem:
        assert problem.startswith("input 'input': expected shape [-1, 4] FP32, received")
