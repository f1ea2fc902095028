"""The operator with the Kubeflow engine registered: a ModelPipeline with ``engine: kubeflow``
next to one with ``engine: local``, on the real API server; both end with the same status
shape, the Kubeflow one also naming its KFP run, Experiment and TrainJob."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubeflow_helpers import POD_SELECTORS, RANK0, KubeflowAPI, play_work, wait
from kubernetes import client

from fakes.kfp_api import FakeKFP
from helpers import softmax_pipeline
from mlcd.engines.local import LocalEngine
from mlcd.serving.local import LocalServing
from testenv.cluster import Cluster
from testenv.proc import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "mlcd.io", "v1alpha1", "modelpipelines"


@pytest.fixture
def operator(
    apiserver: Cluster, kfp: FakeKFP, namespace: str, tmp_path: pathlib.Path
) -> Iterator[pathlib.Path]:
    """``mlcd operator`` watching the test's namespace, with the Kubeflow engine on the fake
    KFP API; its state folder."""
    apiserver.install_crds(ROOT / "crds")
    state = tmp_path / "state"
    env = {
        **os.environ,
        "KUBECONFIG": str(apiserver.kubeconfig),
        "MLCD_SERVING_PORT": "0",
        "MLCD_METRICS_ADDRESS": "127.0.0.1",
        "MLCD_KFP_ENDPOINT": kfp.url,
        "MLCD_KFP_NAMESPACE": kfp.namespace,
        "MLCD_KUBEFLOW_STEPS_KUBECONFIG": str(apiserver.kubeconfig),
        "MLCD_KUBEFLOW_POLL": "0.5",
    }
    log = (tmp_path / "operator.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlcd.cli",
            "operator",
            "--tick=1",
            f"--namespace={namespace}",
            f"--state-dir={state}",
            f"--metrics-port={free_port()}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield state
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        LocalEngine(state).cancel_everything(grace=5.0)
        serving = LocalServing(state)
        for key in serving.pipelines():
            serving.stop(key)


def pipeline(name: str, engine: str, digits: pathlib.Path, tmp_path: pathlib.Path) -> Any:
    body = softmax_pipeline(str(digits))
    body["metadata"] = {"name": name, "annotations": {"mlcd.io/trigger": "1"}}
    body["spec"]["trainer"].update(image="registry.test/softmax:1", workers=2)
    body["spec"].update(
        engine=engine,
        triggers={"newData": False},
        artifacts={"uri": str(tmp_path / f"artifacts-{name}")},
        serving={"inferenceService": name},
    )
    return body


def shape(value: Any) -> Any:
    """The keys of a status, recursively, without the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return ""


def test_kubeflow_and_local_pipelines_end_with_the_same_status_shape(
    apiserver: Cluster,
    trainer: Cluster,
    katib_crds: Cluster,
    nodes: list[str],
    namespace: str,
    kfp: FakeKFP,
    operator: pathlib.Path,
    cluster_api: KubeflowAPI,
    digits: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    api = client.CustomObjectsApi(cluster_api.api)
    for name, engine in (("digits-kf", "kubeflow"), ("digits-local", "local")):
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, pipeline(name, engine, digits, tmp_path)
        )

    # The operator's Kubeflow run: Katib (played) and the pods' work (played) as in the
    # engine's own test.
    experiment = cluster_api.experiment(namespace)
    cluster_api.finish_experiment(
        namespace, experiment["metadata"]["name"], params={"lr": "0.4"}, metric=("accuracy", "0.9")
    )
    job = cluster_api.one("trainer.kubeflow.org", "v1alpha1", "trainjobs", namespace)
    selector = POD_SELECTORS["TrainJob"].format(job["metadata"]["name"])
    pods = cluster_api.running(namespace, selector, 2)
    work = play_work(next(p for p in pods if RANK0["TrainJob"](p)), "node")
    assert work.returncode == 0, work.stderr
    for pod in pods:
        cluster_api.release(pod)

    def finished(name: str) -> dict[str, Any] | None:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = obj.get("status") or {}
        runs = status.get("runs") or []
        done = runs and not status.get("activeRuns") and status.get("serving")
        return status if done else None

    kf = wait("the kubeflow pipeline served", lambda: finished("digits-kf"), timeout=400)
    local = wait("the local pipeline served", lambda: finished("digits-local"), timeout=400)
    assert len(kfp.created_runs()) == 1
    run = kf["runs"][0]
    assert run["result"] == "promoted", run
    children = run.pop("children")
    assert children["kfpRun"] == kfp.created_runs()[0]["run_id"]
    assert children["experiment"] == f"{namespace}/{experiment['metadata']['name']}"
    assert children["trainJob"] == f"{namespace}/{job['metadata']['name']}"
    assert local["runs"][0].pop("children", {}) == {}  # the local engine creates none
    assert shape(kf) == shape(local)
