"""KServe's own controller (v0.20, built from its Go module) in the test stack: its admission
webhooks run, an ONNX InferenceService reconciles to Ready on the simulated node in RawDeployment
mode, and deleting it removes its Deployment and Service."""

from __future__ import annotations

import json

from kserve_helpers import conditions, custom, get_isvc
from kubernetes import client

from helpers import wait_for
from testenv.cluster import Cluster
from testenv.kserve import onnx_inference_service


def test_kserve_runtimes_and_config_are_installed(cluster: Cluster, api: client.ApiClient) -> None:
    runtimes = custom(api).list_cluster_custom_object(
        "serving.kserve.io", "v1alpha1", "clusterservingruntimes"
    )
    names = {r["metadata"]["name"] for r in runtimes["items"]}
    assert {"kserve-tritonserver", "kserve-sklearnserver", "mlcd-onnx"} <= names
    config = client.CoreV1Api(api).read_namespaced_config_map("inferenceservice-config", "kserve")
    assert json.loads(config.data["deploy"]) == {"defaultDeploymentMode": "RawDeployment"}
    assert json.loads(config.data["ingress"])["disableIstioVirtualHost"] is True


def test_admission_is_real(cluster: Cluster, namespace: str) -> None:
    # KServe's validator refuses a canary in Serverless mode; its defaulter fills the spec.
    bad = onnx_inference_service("refused")
    bad["metadata"]["annotations"] = {"serving.kserve.io/deploymentMode": "Serverless"}
    bad["spec"]["canary"] = [
        {"predictor": {"name": "c", "model": {"storageUri": "s3://m/2/"}}, "trafficPercent": 0}
    ]
    refused = cluster.kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False
    )
    assert refused.returncode != 0
    assert "canary is only supported in Standard deployment mode" in refused.stderr


def test_an_onnx_inferenceservice_is_ready_and_goes_with_its_objects(
    cluster: Cluster, api: client.ApiClient, namespace: str
) -> None:
    custom(api).create_namespaced_custom_object(
        "serving.kserve.io",
        "v1beta1",
        namespace,
        "inferenceservices",
        onnx_inference_service("mnist"),
    )
    ready = wait_for(
        "InferenceService mnist Ready",
        lambda: (
            (o := get_isvc(api, namespace, "mnist")) and conditions(o).get("Ready") == "True" and o
        ),
        timeout=60,
    )
    status = ready["status"]
    # An ONNX model naming no runtime gets a stock one, as in a stock install.
    assert status["clusterServingRuntimeName"] == "kserve-tritonserver"
    assert status["deploymentMode"] in ("RawDeployment", "Standard")
    assert status["address"]["url"].startswith(f"http://mnist-predictor.{namespace}.svc")
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    assert apps.read_namespaced_deployment("mnist-predictor", namespace).status.ready_replicas == 1
    assert core.read_namespaced_service("mnist-predictor", namespace)
    # KServe's pod mutator ran: the storage initializer downloads the model first.
    pods = core.list_namespaced_pod(
        namespace, label_selector="serving.kserve.io/inferenceservice=mnist"
    ).items
    assert [c.name for c in pods[0].spec.init_containers or []] == ["storage-initializer"]

    custom(api).delete_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", namespace, "inferenceservices", "mnist"
    )

    def gone() -> bool:
        deployments = apps.list_namespaced_deployment(namespace).items
        services = core.list_namespaced_service(namespace).items
        return not deployments and not services

    # The garbage collector learns of a CRD installed a moment ago at its next sync (30 s).
    wait_for("the predictor's Deployment and Service removed", gone, timeout=60)
