"""Serving a pipeline's model on KServe, against KServe's own controller (v0.20, RawDeployment)
on the simulated node: the InferenceService mlcd makes, its credentials, its readiness as
KServe reports it, a new version through a canary, rollback, deletion with the pipeline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kserve_helpers import KEYS, conditions, get_isvc, predictors, ref, secrets, settled
from kubernetes import client

from helpers import wait_for
from mlcd.artifacts.credentials import SecretResolver
from mlcd.domain import kserve as rules
from mlcd.domain.observations import ServingView
from mlcd.domain.spec import StorageLocation
from mlcd.errors import SpecError
from mlcd.k8s.kube import Kube
from mlcd.ports import PipelineKey
from mlcd.serving.kserve import resources
from mlcd.serving.kserve.api import KubeAPI, NotInstalled
from mlcd.serving.kserve.resources import Options, Pipeline
from mlcd.serving.kserve.serving import KServeServing, NotReady, PipelineServing, condition_of
from testenv.cluster import Cluster
from testenv.kube import KubeAPIServer
from testenv.stack import Stack


def owner_uids(metadata: dict[str, Any]) -> list[str]:
    """The uids of an object's owners, from its metadata (the API's or the client's names)."""
    refs = metadata.get("ownerReferences") or metadata.get("owner_references") or []
    return [ref["uid"] for ref in refs]


def serving_for(
    kube: KubeAPI, pipeline: Pipeline, resolve: SecretResolver = secrets, **options: Any
) -> PipelineServing:
    return PipelineServing(kube, pipeline, resolve, Options(**options), ready_timeout=60, poll=0.2)


@pytest.fixture
def serving(kube: KubeAPI, pipeline: Pipeline) -> Iterator[PipelineServing]:
    yield serving_for(kube, pipeline)


def test_serves_a_version_as_an_onnx_inferenceservice(
    serving: PipelineServing, api: client.ApiClient, namespace: str, pipeline: Pipeline
) -> None:
    url = serving.serve(ref("1"))

    isvc = get_isvc(api, namespace, "mnist")
    assert isvc is not None
    assert url == isvc["status"]["url"] == f"http://mnist-{namespace}.example.com"
    predictor = isvc["spec"]["predictor"]
    assert predictor["name"] == "v1"
    assert predictor["model"]["modelFormat"]["name"] == "onnx"
    assert predictor["model"]["protocolVersion"] == "v2"
    assert predictor["model"]["runtime"] == "mlcd-onnx"
    assert predictor["model"]["storageUri"] == "s3://models/team/mnist/1/"
    assert predictor["serviceAccountName"] == "mlcd-digits"
    [owner] = isvc["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("ModelPipeline", "digits", pipeline.uid)
    assert (
        isvc["status"][
            "servingRuntimeName"
            if "servingRuntimeName" in isvc["status"]
            else "clusterServingRuntimeName"
        ]
        == "mlcd-onnx"
    )
    assert serving.current() == ref("1")
    assert set(predictors(api, namespace)) == {"mnist-v1-predictor"}

    # KServe's credential builder turned the Secret into the storage initializer's environment.
    core = client.CoreV1Api(api)
    [pod] = core.list_namespaced_pod(
        namespace, label_selector="serving.kserve.io/inferenceservice=mnist"
    ).items
    [init] = pod.spec.init_containers
    env = {e.name: e for e in init.env}
    assert env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.name == "mlcd-digits-s3"
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.key == "AWS_SECRET_ACCESS_KEY"
    assert env["S3_ENDPOINT"].value == "minio.storage:9000"
    assert env["S3_USE_HTTPS"].value == "0"
    assert env["AWS_DEFAULT_REGION"].value == "us-east-1"
    # Keys only by reference: no value of theirs in the pod, the InferenceService or its status.
    text = json.dumps(client.ApiClient().sanitize_for_serialization(pod)) + json.dumps(isvc)
    assert KEYS["secretKey"] not in text and KEYS["accessKey"] not in text
    main = next(c for c in pod.spec.containers if c.name == "kserve-container")
    assert {e.name: e.value for e in main.env}[resources.SHA256_ENV] == ref("1").sha256

    # Serving the same version again changes nothing.
    generation = isvc["metadata"]["generation"]
    assert serving.serve(ref("1")) == url
    assert get_isvc(api, namespace, "mnist")["metadata"]["generation"] == generation


def test_observed_generation_is_the_deployments_so_readiness_reads_the_predictor(
    serving: PipelineServing, api: client.ApiClient, namespace: str
) -> None:
    serving.serve(ref("1"))
    serving.deploy_candidate(ref("2"))
    serving.wait(lambda o: o.readiness.candidate_ready, "the candidate")
    serving.promote()
    done = serving.wait(lambda o: o.readiness.ready and o.candidate is None, "the promotion")
    isvc = get_isvc(api, namespace, "mnist")
    assert isvc is not None
    # KServe copied the predictor Deployment's generation, not the InferenceService's: a judge
    # comparing the two would wait for ever (or pass by coincidence).
    assert isvc["status"]["observedGeneration"] != isvc["metadata"]["generation"]
    assert done.stable == ref("2")
    assert isvc["status"]["address"]["url"].startswith(f"http://mnist-v2-predictor.{namespace}.")


def test_a_new_version_goes_through_a_canary_and_replaces_the_old_one(
    serving: PipelineServing, api: client.ApiClient, namespace: str
) -> None:
    serving.serve(ref("1"))
    old = predictors(api, namespace)["mnist-v1-predictor"].metadata.uid

    seen = serving.deploy_candidate(ref("2"))
    assert (seen.stable, seen.candidate) == (ref("1"), ref("2"))
    seen = serving.wait(lambda o: o.readiness.candidate_ready, "the candidate")
    isvc = get_isvc(api, namespace, "mnist")
    assert isvc["spec"]["canary"][0]["trafficPercent"] == 0
    [canary] = isvc["status"]["canaryStatuses"]
    assert (canary["name"], canary["ready"], canary["trafficPercent"]) == ("v2", True, 0)
    assert conditions(isvc)["CanaryPredictorReady"] == "True"
    both = predictors(api, namespace)
    assert set(both) == {"mnist-v1-predictor", "mnist-v2-predictor"}
    assert both["mnist-v1-predictor"].metadata.uid == old  # the stable one untouched
    assert client.CoreV1Api(api).read_namespaced_service("mnist-v2-predictor", namespace)
    candidate_deployment = both["mnist-v2-predictor"].metadata.uid

    serving.promote()
    settled(serving, api, "mnist-v2-predictor", "the promotion")
    # The candidate's own Deployment serves on: promotion restarts nothing.
    assert predictors(api, namespace)["mnist-v2-predictor"].metadata.uid == candidate_deployment
    assert serving.current() == ref("2")
    isvc = get_isvc(api, namespace, "mnist")
    assert "canary" not in isvc["spec"]
    assert "CanaryPredictorReady" not in conditions(isvc)


def test_rollback_removes_the_candidate_and_leaves_the_stable_one_untouched(
    serving: PipelineServing, kube: KubeAPI, api: client.ApiClient, namespace: str
) -> None:
    serving.serve(ref("1"))
    stable = predictors(api, namespace)["mnist-v1-predictor"]

    # A candidate no node can take: its pod stays Pending, its Deployment never available.
    body = resources.inference_service(
        serving.pipeline, "Standard", ref("1"), ref("2"), 0, serving.options, "mlcd-digits"
    )
    body["spec"]["canary"][0]["predictor"]["nodeSelector"] = {"mlcd.io/no-such-node": "true"}
    kube.apply(serving._isvc_path, body, "a candidate that cannot run")
    seen = wait_for(
        "KServe to report the candidate not ready",
        lambda: (o := serving.observe()).readiness.reason == "CanariesNotReady" and o,
        timeout=30,
    )
    assert seen.readiness.ready and not seen.readiness.candidate_ready
    assert seen.stable == ref("1") and seen.candidate == ref("2")

    serving.rollback()
    settled(serving, api, "mnist-v1-predictor", "the rollback")
    after = predictors(api, namespace)["mnist-v1-predictor"]
    assert after.metadata.uid == stable.metadata.uid
    assert after.metadata.generation == stable.metadata.generation
    assert serving.current() == ref("1")


def test_an_inferenceservice_that_never_becomes_ready(
    kube: KubeAPI, pipeline: Pipeline, api: client.ApiClient, namespace: str
) -> None:
    # A cluster without mlcd's ServingRuntime: KServe cannot make a predictor.
    serving = serving_for(kube, pipeline, runtime="mlcd-missing")
    serving.ready_timeout = 5
    with pytest.raises(NotReady) as raised:
        serving.serve(ref("1"))
    reason, message = condition_of(raised.value)
    assert reason == "InferenceServiceNotReady"
    assert message.startswith(
        f"inferenceservice {namespace}/mnist: version 1 not ready after 5 s: "
    )
    # KServe's own words.
    assert message.endswith("RuntimeNotRecognized: Waiting for runtime to become available")
    assert serving.current() is None
    assert conditions(get_isvc(api, namespace, "mnist")).get("Ready") != "True"
    assert not predictors(api, namespace)


def test_a_local_model_repository_is_refused_naming_the_field(
    kube: KubeAPI, pipeline: Pipeline, api: client.ApiClient, namespace: str
) -> None:
    local = Pipeline(
        namespace, "digits", pipeline.uid, "mnist", "mnist", StorageLocation(uri="/srv/models")
    )
    with pytest.raises(SpecError) as raised:
        serving_for(kube, local).serve(ref("1"))
    assert condition_of(raised.value) == (
        "InvalidSpec",
        "spec.artifacts.uri: serving on KServe needs an s3:// model repository, not '/srv/models'",
    )
    assert get_isvc(api, namespace, "mnist") is None


def test_kserve_not_installed_is_a_clear_condition(
    pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A cluster of its own (etcd and an API server) that has never seen KServe.
    bare = Stack(tmp_path_factory.mktemp("bare"))
    try:
        bare.up("kube-apiserver")
        apiserver = bare.component("kube-apiserver")
        assert isinstance(apiserver, KubeAPIServer)
        connection = Kube.connect(str(apiserver.kubeconfig))
        missing = PipelineServing(KubeAPI(connection.http), pipeline, secrets)
        with pytest.raises(NotInstalled) as raised:
            missing.serve(ref("1"))
        connection.http.close()
    finally:
        bare.stop()
    reason, message = condition_of(raised.value)
    assert reason == "KServeNotInstalled"
    assert message == (
        "the cluster does not serve inferenceservices.serving.kserve.io "
        "(serving.kserve.io/v1beta1): install KServe v0.20 or newer "
        "(serving.kserve.io/v1beta1 InferenceService)"
    )


def test_deleting_the_pipeline_deletes_what_it_owns(
    serving: PipelineServing,
    cluster: Cluster,
    api: client.ApiClient,
    namespace: str,
    pipeline: Pipeline,
) -> None:
    serving.serve(ref("1"))
    core = client.CoreV1Api(api)

    def owned() -> dict[str, list[str]]:
        """What serving made for the pipeline and is still there, each with its owners' uids."""
        found: dict[str, list[str]] = {}
        isvc = get_isvc(api, namespace, "mnist")
        if isvc is not None:
            found["InferenceService mnist"] = owner_uids(isvc["metadata"])
        for name, deployment in predictors(api, namespace).items():
            found[f"Deployment {name}"] = owner_uids(deployment.metadata.to_dict())
        for secret in core.list_namespaced_secret(namespace).items:
            if secret.metadata.name == "mlcd-digits-s3":
                found["Secret mlcd-digits-s3"] = owner_uids(secret.metadata.to_dict())
        for account in core.list_namespaced_service_account(namespace).items:
            if account.metadata.name == "mlcd-digits":
                found["ServiceAccount mlcd-digits"] = owner_uids(account.metadata.to_dict())
        return found

    # There is something to collect (KServe creates the predictor a moment after the serve),
    # and the pipeline owns it: directly, or through the InferenceService.
    wait_for("the predictor", lambda: "Deployment mnist-v1-predictor" in owned(), timeout=60)
    before = owned()
    isvc = get_isvc(api, namespace, "mnist")
    assert isvc is not None
    isvc_uid = isvc["metadata"]["uid"]
    assert before == {
        "InferenceService mnist": [pipeline.uid],
        "Deployment mnist-v1-predictor": [isvc_uid],
        "Secret mlcd-digits-s3": [pipeline.uid],
        "ServiceAccount mlcd-digits": [pipeline.uid],
    }

    cluster.kubectl("delete", "modelpipeline", "digits", "-n", namespace, "--wait=false")
    # The garbage collector learns of a CRD installed a moment ago at its next sync (30 s).
    wait_for("what the pipeline owned collected", lambda: not owned(), timeout=60)
    assert owned() == {}


def test_stop_deletes_the_inferenceservice_and_credentials(
    serving: PipelineServing, api: client.ApiClient, namespace: str
) -> None:
    serving.serve(ref("1"))
    serving.stop()
    # KServe's finalizer holds the deletion until it has cleaned up.
    wait_for("the InferenceService gone", lambda: get_isvc(api, namespace, "mnist") is None, 30)
    core = client.CoreV1Api(api)
    assert "mlcd-digits-s3" not in {
        s.metadata.name for s in core.list_namespaced_secret(namespace).items
    }
    serving.stop()  # twice is fine


def test_serverless_patches_and_mode_detection(
    kube: KubeAPI, pipeline: Pipeline, api: client.ApiClient, namespace: str
) -> None:
    # Knative cannot run here: KServe stores the object but cannot reconcile it; the patches
    # mlcd makes are what is checked.
    serving = serving_for(kube, pipeline, deployment_mode="Serverless")
    assert serving.mode() == "Knative"
    serving.apply(ref("1"))
    isvc = get_isvc(api, namespace, "mnist")
    # KServe's defaulter spells the mode its own way; both spellings are the same mode.
    assert rules.parse_mode(isvc["metadata"]["annotations"][rules.MODE_ANNOTATION]) == "Knative"
    assert serving.mode(isvc) == "Knative"
    assert "name" not in isvc["spec"]["predictor"]
    assert "canary" not in isvc["spec"]

    serving.apply(ref("1"), ref("2"), 10)
    predictor = get_isvc(api, namespace, "mnist")["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"] == "s3://models/team/mnist/2/"
    seen = serving.observe()
    assert (seen.stable, seen.candidate, seen.canary_percent) == (ref("1"), ref("2"), 10)

    serving.rollback()
    predictor = get_isvc(api, namespace, "mnist")["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 0  # all back to the previous revision

    serving.apply(ref("1"), ref("2"), 50)
    serving.promote()
    isvc = get_isvc(api, namespace, "mnist")
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]  # all to the latest
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/team/mnist/2/"
    assert resources.STABLE_ANNOTATION not in isvc["metadata"]["annotations"]


def test_the_serving_port_keyed_by_pipeline(
    kube: KubeAPI, pipeline: Pipeline, api: client.ApiClient, namespace: str
) -> None:
    # What the loop holds: the key; the InferenceService's name and the repository come from
    # the ModelPipeline in the cluster.
    port = KServeServing(kube, lambda ns: secrets, ready_timeout=60, poll=0.2)
    key = PipelineKey(namespace, pipeline.name, pipeline.uid)
    assert port.running(key) is False
    port.prepare(key, "mnist")  # credentials written, nothing served yet
    assert port.running(key) is False

    url = port.serve(key, "mnist", ref("1"), None)
    assert url == f"http://mnist-{namespace}.example.com"
    assert port.status(key, "mnist") == ServingView(ready=True, ref=ref("1"), url=url)
    assert port.running(key) is True
    # Another incarnation of a pipeline of that name owns nothing here.
    assert port.running(PipelineKey(namespace, pipeline.name, "another-uid")) is False

    # Without waiting (the operator's default), serve is one step: the candidate is created
    # and KServe's reason for "not yet" is raised; the stable version keeps serving.
    stepping = KServeServing(kube, lambda ns: secrets)
    with pytest.raises(NotReady):
        stepping.serve(key, "mnist", ref("2"), None)
    view = port.status(key, "mnist")
    assert (view.ready, view.ref) == (True, ref("1"))
    wait_for(
        "KServe to create the candidate's predictor beside the stable one",
        lambda: set(predictors(api, namespace)) >= {"mnist-v1-predictor", "mnist-v2-predictor"},
        timeout=30,
    )
    assert port.serve(key, "mnist", ref("2"), None) == url
    assert port.status(key, "mnist").ref == ref("2")

    port.stop(key)
    wait_for("nothing running", lambda: not port.running(key), timeout=30)
    port.stop(key)  # twice is fine


def test_prepare_reports_a_local_repository(
    kube: KubeAPI, cluster: Cluster, pipeline: Pipeline, namespace: str
) -> None:
    cluster.kubectl(
        "patch",
        "modelpipeline",
        "digits",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"artifacts": {"uri": "/srv/models"}}}),
    )
    port = KServeServing(kube, lambda ns: secrets)
    with pytest.raises(SpecError, match=r"spec\.artifacts\.uri: serving on KServe needs an s3://"):
        port.prepare(PipelineKey(namespace, pipeline.name, pipeline.uid), "mnist")
