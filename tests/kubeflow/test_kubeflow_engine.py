"""One ModelPipeline run on the Kubeflow engine: submitted once to the (fake) KFP API, whose
run executes the submitted components on this machine; tuning as a Katib Experiment (the test
plays Katib's controller), training as a TrainJob or PyTorchJob reconciled by the real
controllers on kwok's nodes (the test plays the rank-0 pod's work with the pod's own command
and environment)."""

from __future__ import annotations

import pathlib

import pytest
from kubeflow_helpers import (
    JOBS,
    POD_SELECTORS,
    RANK0,
    KubeflowAPI,
    engine_for,
    play_work,
    request,
    resource,
    wait,
)

from fakes.kfp_api import FakeKFP
from mlcd.domain.records import RunRecord
from mlcd.engines.local import LocalEngine
from testenv.cluster import Cluster


def filled(record: RunRecord) -> set[str]:
    """The fields of a record that carry something: the status shape."""
    return {k for k, v in record.model_dump().items() if v not in (None, {}, [], "")}


@pytest.mark.parametrize("kind", ["TrainJob", "PyTorchJob"])
def test_a_run_on_kubeflow_tunes_on_katib_and_trains_on_the_real_controller(
    kind: str,
    apiserver: Cluster,
    trainer: Cluster,
    training_operator: Cluster,
    katib_crds: Cluster,
    nodes: list[str],
    namespace: str,
    kfp: FakeKFP,
    cluster_api: KubeflowAPI,
    digits: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    engine = engine_for(
        kfp, apiserver, training=kind, pod_annotations={"mlcd.io/kwok-hold": "true"}
    )
    body = resource(namespace, digits, tmp_path / "artifacts")
    run = request(body)
    engine.submit(run)
    engine.submit(run)  # an operator restarted after submitting: nothing new
    assert [r["display_name"] for r in kfp.created_runs()] == [f"mlcd.{namespace}.digits.digits-1"]
    assert engine.resource(run.key) == body

    # Tune: the Experiment, as Katib would get it.
    experiment = cluster_api.experiment(namespace)
    spec = experiment["spec"]
    assert spec["algorithm"]["algorithmName"] == "random"
    assert spec["objective"] == {"type": "maximize", "objectiveMetricName": "accuracy"}
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (
        2,
        2,
        1,
    )
    assert spec["parameters"][0]["feasibleSpace"]["min"] == "0.1"
    template = spec["trialTemplate"]
    assert template["trialParameters"][0]["reference"] == "lr"
    container = template["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--epochs=10", "--lr=${trialParameters.lr}"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLCD_STAGE"] == "trial" and env["WORLD_SIZE"] == "1"
    assert pathlib.Path(env["MLCD_VALIDATION_DATA"]).is_file()
    name = experiment["metadata"]["name"]
    running = wait(
        "the run in tune", lambda: (r := engine.get(run.key)) and r.stage == "tune" and r
    )
    assert running.result == "running"
    assert running.children["experiment"] == f"{namespace}/{name}"
    assert running.children["kfpRun"] == kfp.created_runs()[0]["run_id"]
    cluster_api.finish_experiment(
        namespace, name, params={"lr": "0.35"}, metric=("accuracy", "0.91")
    )

    # Train: the job with the best parameters, reconciled by the real controller.
    group, version, plural, container_name = JOBS[kind]
    job = cluster_api.one(group, version, plural, namespace)
    job_name = job["metadata"]["name"]
    pods = cluster_api.running(namespace, POD_SELECTORS[kind].format(job_name), 2)
    rank0 = next(p for p in pods if RANK0[kind](p))
    work = play_work(rank0, container_name)
    assert work.returncode == 0, work.stderr
    assert "--lr=0.35" in work.args
    for pod in pods:
        cluster_api.release(pod)

    state = kfp.wait(kfp.created_runs()[0]["run_id"], timeout=300)
    assert state == "SUCCEEDED", kfp.log(kfp.created_runs()[0]["run_id"])[-3000:]
    record = engine.get(run.key)
    assert record is not None
    assert record.result == "exported" and record.stage == "serve", record.reason
    assert record.params == {"lr": 0.35}
    assert record.metrics["accuracy"] > 0.8 and record.gate and record.gate.passed
    assert record.model is not None and record.model.version == "1"
    key = "trainJob" if kind == "TrainJob" else "pyTorchJob"
    assert record.children[key] == f"{namespace}/{job_name}"

    # The same shape as a run of the local engine (plus the children).
    local_engine = LocalEngine(tmp_path / "local")
    local_body = {**body, "spec": {**body["spec"], "engine": "local"}}
    local_body["spec"]["artifacts"] = {"uri": str(tmp_path / "local-artifacts")}
    local_run = request(local_body, "digits-local")
    local_engine.submit(local_run)
    local = wait("the local run", lambda: local_engine.done(local_run.key), timeout=300)
    assert local
    local_record = local_engine.get(local_run.key)
    assert local_record is not None and local_record.stage == "serve"
    assert filled(record) == filled(local_record) | {"children"}
