"""The fake KFP API refuses what KFP would refuse: so a request of ours that KFP would not
take fails the tests that use the fake."""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from fakes.kfp_api import FakeKFP
from mlcd.pipeline.definition import compile_to


@pytest.fixture
def fake(tmp_path: pathlib.Path) -> Iterator[FakeKFP]:
    api = FakeKFP(tmp_path / "kfp").start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = compile_to(tmp_path_factory.mktemp("ir") / "pipeline.yaml")
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def post(fake: FakeKFP, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{fake.url}/apis/v2beta1/{path}", content=json.dumps(body), timeout=10)


def run_body(fake: FakeKFP, spec: dict[str, Any]) -> dict[str, Any]:
    experiment = post(fake, "experiments", {"display_name": "mlcd.team-a"}).json()
    return {
        "display_name": "mlcd.team-a.digits.r1",
        "experiment_id": experiment["experiment_id"],
        "pipeline_spec": copy.deepcopy(spec),
        "runtime_config": {"parameters": {"context": "{}", "engine": ""}},
    }


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (lambda b: b.update(pipelineSpec=b.pop("pipeline_spec")), "unknown field 'pipelineSpec'"),
        (lambda b: b.update(display_name=7), "display_name: expected str"),
        (lambda b: b.update(state="DONE"), "'DONE' is not a V2beta1RuntimeState"),
        (lambda b: b.update(run_id="mine"), "run_id is set by the server"),
        (lambda b: b.update(experiment_id="nope"), "experiment 'nope' does not exist"),
        (lambda b: b["runtime_config"]["parameters"].pop("context"), "'context' is required"),
        (
            lambda b: b["runtime_config"]["parameters"].update(context={"run": 1}),
            "parameters.context: expected a string",
        ),
        (
            lambda b: b["runtime_config"]["parameters"].update(epochs="3"),
            "'epochs' is not a pipeline input",
        ),
        (lambda b: b["pipeline_spec"].update(stages=[]), "pipeline_spec: "),
        (lambda b: b["pipeline_spec"]["root"].update(dag="x"), "pipeline_spec: "),
    ],
    ids=[
        "unknown-field",
        "wrong-type",
        "bad-enum",
        "output-only",
        "no-experiment",
        "missing-parameter",
        "parameter-type",
        "unknown-parameter",
        "unknown-spec-field",
        "spec-type",
    ],
)
def test_a_run_kfp_would_refuse_is_refused(
    fake: FakeKFP, spec: dict[str, Any], change: Any, refusal: str
) -> None:
    body = run_body(fake, spec)
    change(body)
    answer = post(fake, "runs", body)
    assert answer.status_code == 400, answer.text
    assert refusal in answer.json()["message"]
    assert fake.created_runs() == []


def test_a_duplicate_experiment_is_refused(fake: FakeKFP) -> None:
    assert post(fake, "experiments", {"display_name": "a"}).status_code == 200
    assert post(fake, "experiments", {"display_name": "a"}).status_code == 409
    assert post(fake, "experiments", {"name": "a"}).status_code == 400
