"""The Kubeflow engine end to end on the real node: nothing of the training is played.

The (fake) KFP API runs the submitted pipeline's steps on this machine; its train step creates
a TrainJob or a PyTorchJob, the real controllers (Trainer + JobSet, training operator) create
the pods, and the real node's kubelet runs them: the MNIST example trainer, two ranks
rendezvousing over the headless Service the controller made, the model written to MinIO;
then the steps evaluate, gate and export it. Katib is not involved (``spec.tuning`` absent).

Pods reach MinIO at the host end of the node's link (``node_minio``), where the steps on this
machine reach it too: one S3 endpoint for the steps and the pods, as in a cluster."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubeflow_helpers import POD_SELECTORS, engine_for, request
from kubernetes import client

from fakes.kfp_api import FakeKFP
from helpers import EXAMPLE
from mlcd.k8s.kube import Kube
from testenv.cluster import Cluster
from testenv.images import PATH, Image, PythonMounts, busybox_layer, files_layer, python_mounts
from testenv.kubeflow import torch_runtime
from testenv.node import NodeMinIO, RealNode

pytestmark = pytest.mark.real_node

IMAGE = "mlcd.test/mnist-trainer:1"
RUNTIME = "torch-real-node"
TRAINER_PACKAGE = EXAMPLE.parent / "mnist_trainer"
# The example's small budget, smaller still: a slice of the digits, few epochs, a small net.
EPOCHS, CHANNELS, GATE = 3, 8, 0.7


@pytest.fixture(scope="session")
def python() -> PythonMounts:
    return python_mounts()


@pytest.fixture(scope="session")
def trainer_image(real_node: RealNode, python: PythonMounts) -> str:
    """busybox + the example trainer's package in /app (its working directory); Python and
    torch come from the project's environment, mounted, first on PATH (``python``,
    ``torchrun``), as an image with torch has them."""
    files = {f"/app/mnist_trainer/{f.name}": f for f in sorted(TRAINER_PACKAGE.glob("*.py"))}
    bin_dir = str(pathlib.Path(python.python).parent)
    real_node.import_images(
        Image(
            IMAGE,
            (busybox_layer(), files_layer(files, mode=0o644)),
            env={"PATH": f"{bin_dir}:{PATH}"},
            workdir="/app",
        )
    )
    return IMAGE


@pytest.fixture(scope="session")
def real_node_runtime(trainer: Cluster, real_node: RealNode, python: PythonMounts) -> Iterator[str]:
    """A ClusterTrainingRuntime whose pods land on the real node with the Python mounts: what
    a platform team's runtime says about its nodes and volumes, a TrainJob's pods take."""
    body = torch_runtime(
        RUNTIME,
        pod_spec=real_node.pod_spec(volumes=python.volumes),
        container={"imagePullPolicy": "Never", "volumeMounts": python.volume_mounts},
    )
    with trainer.api_client() as api:
        custom = client.CustomObjectsApi(api)
        group, version, plural = "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes"
        custom.create_cluster_custom_object(group, version, plural, body)
        yield RUNTIME
        custom.delete_cluster_custom_object(group, version, plural, RUNTIME)


@pytest.fixture(scope="session")
def digits_slice(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Every other digit of the example's 5,000 (250 of each class)."""
    import numpy as np

    from mnist_trainer.dataset import load_digits

    x, y = load_digits()
    path = tmp_path_factory.mktemp("digits") / "digits-2500.npz"
    np.savez_compressed(path, x=x[::2], y=y[::2])
    return path


@pytest.fixture
def store(
    node_minio: NodeMinIO, apiserver: Cluster, namespace: str, tmp_path: pathlib.Path
) -> Iterator[dict[str, Any]]:
    """``spec.artifacts`` in MinIO under a prefix of the test's own, its keys as a Secret in
    the namespace (for the pods) and as a mounted Secret's folder (for the steps); the
    prefix is emptied afterwards."""
    minio = node_minio.minio
    keys = {"accessKey": minio.access_key, "secretKey": minio.secret_key}
    with apiserver.api_client() as api:
        client.CoreV1Api(api).create_namespaced_secret(
            namespace, {"metadata": {"name": "minio-creds"}, "stringData": keys}
        )
    secrets = tmp_path / "secrets" / "minio-creds"
    secrets.mkdir(parents=True)
    for name, value in keys.items():
        (secrets / name).write_text(value)
    artifacts = {
        "uri": f"s3://{minio.bucket}/{namespace}",
        "endpoint": node_minio.endpoint,
        "credentialsSecretRef": {"name": "minio-creds"},
    }
    yield {"artifacts": artifacts, "secrets_dir": secrets.parent}
    s3 = minio.client()
    for obj in s3.list_objects(minio.bucket, f"{namespace}/", recursive=True, include_version=True):
        s3.remove_object(minio.bucket, obj.object_name, version_id=obj.version_id)


@pytest.fixture(scope="session")
def operator_secrets(apiserver: Cluster) -> Iterator[Any]:
    """Secrets as the operator reads them for the engine: through the API server."""
    kube = Kube.connect(str(apiserver.kubeconfig))
    yield kube.secrets
    kube.http.close()


@pytest.fixture
def node_kfp(
    tmp_path: pathlib.Path, apiserver: Cluster, store: dict[str, Any]
) -> Iterator[FakeKFP]:
    """The fake KFP API; its runs' steps read the store's keys as a step pod reads its
    mounted Secret."""
    fake = FakeKFP(
        tmp_path / "kfp",
        env={
            "KUBECONFIG": str(apiserver.kubeconfig),
            "MLCD_SECRETS_DIR": str(store["secrets_dir"]),
        },
    )
    fake.start()
    yield fake
    fake.stop()


def mnist(namespace: str, dataset: pathlib.Path, artifacts: dict[str, Any]) -> dict[str, Any]:
    """The MNIST example's resource with the small budget, no tuning, the image above."""
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["namespace"] = namespace
    spec = body["spec"]
    del spec["tuning"], spec["schedule"], spec["triggers"]
    spec["dataset"]["uri"] = str(dataset)
    spec["trainer"].update(
        image=IMAGE,
        args=[f"--epochs={EPOCHS}", f"--channels={CHANNELS}"],
        # No CPU limit: a quota would throttle torch's import and training on 2 cores.
        resourcesPerWorker={"memory": "2Gi"},
        env=[
            {"name": "GLOO_SOCKET_IFNAME", "value": "eth0"},
            {"name": "OMP_NUM_THREADS", "value": "1"},
        ],
        timeout="4m",
    )
    spec["gate"]["min"] = GATE
    spec.update(engine="kubeflow", artifacts=artifacts)
    return body


def pods_of(apiserver: Cluster, namespace: str, kind: str, job: str) -> list[client.V1Pod]:
    with apiserver.api_client() as api:
        core = client.CoreV1Api(api)
        listed = core.list_namespaced_pod(namespace, label_selector=POD_SELECTORS[kind].format(job))
        return sorted(listed.items, key=lambda p: p.metadata.name)


def logs(apiserver: Cluster, pod: client.V1Pod) -> str:
    return apiserver.kubectl("logs", "-n", pod.metadata.namespace, pod.metadata.name).stdout


@pytest.mark.parametrize("kind", ["TrainJob", "PyTorchJob"])
def test_the_trainer_runs_distributed_on_the_real_node_and_the_model_is_exported(
    kind: str,
    apiserver: Cluster,
    real_node: RealNode,
    training_operator: Cluster,
    real_node_runtime: str,
    trainer_image: str,
    python: PythonMounts,
    node_minio: NodeMinIO,
    namespace: str,
    node_kfp: FakeKFP,
    store: dict[str, Any],
    operator_secrets: Any,
    digits_slice: pathlib.Path,
) -> None:
    # PyTorchJob pods are mlcd's own: the engine's pod template puts them on the node.
    template = {
        "spec": real_node.pod_spec(
            volumes=python.volumes,
            containers=[
                {
                    "name": "trainer",
                    "imagePullPolicy": "Never",
                    "volumeMounts": python.volume_mounts,
                }
            ],
        )
    }
    engine = engine_for(
        node_kfp, apiserver, training=kind, runtime=real_node_runtime, pod_template=template
    )
    engine.secrets = operator_secrets
    body = mnist(namespace, digits_slice, store["artifacts"])
    run = request(body)
    engine.submit(run)
    run_id = node_kfp.created_runs()[0]["run_id"]
    state = node_kfp.wait(run_id, timeout=300)
    record = engine.get(run.key)
    assert record is not None
    job = record.children.get("trainJob" if kind == "TrainJob" else "pyTorchJob", "/")
    job_name = job.split("/", 1)[1]
    pods = pods_of(apiserver, namespace, kind, job_name)
    said = {p.metadata.name: logs(apiserver, p) for p in pods}
    assert state == "SUCCEEDED", (node_kfp.log(run_id)[-3000:], said)

    # The pods ran on the real node, and their two ranks met.
    assert len(pods) == 2, said
    for pod in pods:
        assert pod.spec.node_name == real_node.name
        assert pod.status.phase == "Succeeded", said
    ranks = sorted(
        line for text in said.values() for line in text.splitlines() if "process group" in line
    )
    assert ranks == ["process group: rank 0 of 2", "process group: rank 1 of 2"], said
    assert any(f"epoch={EPOCHS} loss=" in text for text in said.values()), said

    # Rank 0 wrote the model to MinIO under the run's prefix.
    minio = node_minio.minio
    s3 = minio.client()
    written = {
        o.object_name.rsplit("/", 1)[1]
        for o in s3.list_objects(minio.bucket, f"{namespace}/runs/", recursive=True)
        if "/model/" in o.object_name
    }
    assert written == {"model.onnx", "model.pt"}

    # Evaluated, gated and exported by the steps, with the real numbers in the record.
    assert (record.result, record.stage) == ("exported", "serve"), record.reason
    assert record.params == {}
    assert record.metrics["accuracy"] >= GATE and record.gate and record.gate.passed
    assert 0 < record.metrics["loss"] < 2.3  # below chance: the ranks learned
    model = record.model
    assert model is not None and model.version == "1"
    assert model.uri.startswith(f"s3://{minio.bucket}/{namespace}/")
    key = model.uri.removeprefix(f"s3://{minio.bucket}/").rstrip("/") + "/model.onnx"
    assert s3.stat_object(minio.bucket, key).size > 0


def test_a_failing_ranks_exit_code_reaches_the_runs_reason(
    apiserver: Cluster,
    real_node: RealNode,
    training_operator: Cluster,
    node_minio: NodeMinIO,
    namespace: str,
    node_kfp: FakeKFP,
    store: dict[str, Any],
    operator_secrets: Any,
    digits_slice: pathlib.Path,
) -> None:
    """Rank 1 exits 3 in a real container; the run's reason carries that exit code."""
    template = {"spec": real_node.pod_spec(containers=[{"name": "x", "imagePullPolicy": "Never"}])}
    engine = engine_for(node_kfp, apiserver, training="PyTorchJob", pod_template=template)
    engine.secrets = operator_secrets
    body = mnist(namespace, digits_slice, store["artifacts"])
    script = 'if [ "$RANK" = 1 ]; then echo "rank 1: out of data" >&2; exit 3; fi; sleep 60'
    body["spec"]["trainer"].update(image="mlcd.test/busybox:1", command=["sh", "-c", script])
    run = request(body)
    engine.submit(run)
    run_id = node_kfp.created_runs()[0]["run_id"]
    assert node_kfp.wait(run_id, timeout=180) == "FAILED", node_kfp.log(run_id)[-3000:]
    record = engine.get(run.key)
    assert record is not None and (record.result, record.stage) == ("failed", "train")
    job = record.children["pyTorchJob"]
    name = job.split("/", 1)[1]
    assert record.reason is not None
    assert record.reason.startswith(f"training job PyTorchJob {job} failed ("), record.reason
    # The operator deletes the failed job's pods: the exit comes from the pod if it is still
    # there, else from the operator's ExitedWithCode Event.
    exited = rf"pod {name}-worker-0 failed: (container pytorch )?exited 3\b"
    assert re.search(exited, record.reason), record.reason
