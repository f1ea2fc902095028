"""The objects mlcd owns for a pipeline served on KServe, built from the kserve SDK's typed
models: the InferenceService (ONNX, V2 protocol, mlcd's runtime, the version's folder in the
model repository, a canary while a rollout runs), the S3 Secret KServe's storage initializer
reads and the ServiceAccount that lists it. Each is owned by its ModelPipeline, so deleting the
pipeline deletes them."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from kserve import ApiClient
from kserve.models import (
    V1beta1CanarySpec,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1ModelFormat,
    V1beta1ModelSpec,
    V1beta1PredictorSpec,
)
from kubernetes.client import V1EnvVar, V1ObjectMeta, V1OwnerReference

from mlcd.domain import kserve as rules
from mlcd.domain.records import ModelRef
from mlcd.domain.spec import API_GROUP, API_VERSION, StorageLocation

ISVC_GROUP_VERSION = "serving.kserve.io/v1beta1"
ISVC_PLURAL = "inferenceservices"
PIPELINE_LABEL = "mlcd.io/pipeline"
VERSION_ANNOTATION = "mlcd.io/version"
SHA256_ANNOTATION = "mlcd.io/sha256"
#: Serverless: the version the previous revision serves while the predictor holds a candidate.
STABLE_ANNOTATION = "mlcd.io/stable"
#: The digest the model server checks the downloaded model against (runtime.py).
SHA256_ENV = "MLCD_MODEL_SHA256"
#: The key names KServe's storage initializer reads by default (inferenceservice-config).
DEFAULT_KEY_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_GROUP_VERSION = f"{GATEWAY_GROUP}/v1"
HTTPROUTES = "httproutes"


def route_name(pipeline: str) -> str:
    """The HTTPRoute that splits a pipeline's traffic during its rollouts (RawDeployment)."""
    return f"mlcd-{pipeline}"


@dataclass(frozen=True)
class Pipeline:
    """The ModelPipeline a set of objects belongs to (keyed by namespace and name)."""

    namespace: str
    name: str
    uid: str
    inference_service: str
    model: str
    artifacts: StorageLocation | None = None
    #: Its models roll out (spec.serving.rollout): clients reach them through mlcd's HTTPRoute.
    routed: bool = False


@dataclass(frozen=True)
class Options:
    """How InferenceServices are made (operator settings)."""

    runtime: str = "mlcd-onnx"
    #: The deploymentMode annotation of new InferenceServices; None leaves it to KServe's default.
    deployment_mode: str | None = None
    min_replicas: int = 1
    region: str = "us-east-1"
    labels: dict[str, str] = field(default_factory=dict)


@cache
def _serializer() -> ApiClient:
    return ApiClient()


def to_json(model: Any) -> dict[str, Any]:
    """A kserve (or Kubernetes) SDK model as the API's JSON (camelCase, no unset fields)."""
    data: dict[str, Any] = _serializer().sanitize_for_serialization(model)
    return data


def owner(pipeline: Pipeline) -> V1OwnerReference:
    return V1OwnerReference(
        api_version=f"{API_GROUP}/{API_VERSION}",
        kind="ModelPipeline",
        name=pipeline.name,
        uid=pipeline.uid,
        controller=True,
        block_owner_deletion=True,
    )


def storage_names(pipeline: str) -> tuple[str, str]:
    """The Secret and the ServiceAccount of a pipeline's model repository credentials."""
    return f"mlcd-{pipeline}-s3", f"mlcd-{pipeline}"


def _predictor(
    pipeline: Pipeline,
    ref: ModelRef,
    options: Options,
    name: str | None,
    service_account: str | None,
) -> V1beta1PredictorSpec:
    return V1beta1PredictorSpec(
        name=name,
        min_replicas=options.min_replicas,
        service_account_name=service_account,
        annotations={VERSION_ANNOTATION: ref.version, SHA256_ANNOTATION: ref.sha256},
        model=V1beta1ModelSpec(
            name=None,  # the container's name is the runtime's
            model_format=V1beta1ModelFormat(name="onnx"),
            protocol_version="v2",
            runtime=options.runtime,
            storage_uri=ref.uri,
            env=[V1EnvVar(name=SHA256_ENV, value=ref.sha256)],
        ),
    )


def inference_service(
    pipeline: Pipeline,
    mode: rules.Mode,
    stable: ModelRef,
    candidate: ModelRef | None = None,
    canary_percent: int = 0,
    options: Options | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """The InferenceService serving ``stable``, with ``candidate`` as its canary.

    Standard (RawDeployment): each version is a predictor named after it, the candidate a
    ``spec.canary`` entry of one replica (KServe creates its own Deployment and Service; the
    traffic split is the router's). Knative (Serverless): one predictor; the candidate replaces
    its model and ``canaryTrafficPercent`` keeps ``100 - percent`` on the previous revision.
    """
    options = options or Options()
    name = pipeline.inference_service
    annotations: dict[str, str] = {}
    if options.deployment_mode:
        annotations[rules.MODE_ANNOTATION] = options.deployment_mode
    if mode == "Knative":
        served = candidate or stable
        predictor = _predictor(pipeline, served, options, None, service_account)
        if candidate is not None:
            predictor.canary_traffic_percent = canary_percent
            annotations[STABLE_ANNOTATION] = stable.model_dump_json()
        spec = V1beta1InferenceServiceSpec(predictor=predictor)
    else:
        predictor = _predictor(
            pipeline, stable, options, rules.predictor_name(name, stable.version), service_account
        )
        canary = None
        if candidate is not None:
            canary_predictor = _predictor(
                pipeline,
                candidate,
                options,
                rules.predictor_name(name, candidate.version),
                service_account,
            )
            canary_predictor.min_replicas = 1  # up from the start, whatever its weight
            canary = [V1beta1CanarySpec(predictor=canary_predictor, traffic_percent=canary_percent)]
        spec = V1beta1InferenceServiceSpec(predictor=predictor, canary=canary)
    isvc = V1beta1InferenceService(
        api_version=ISVC_GROUP_VERSION,
        kind="InferenceService",
        metadata=V1ObjectMeta(
            name=name,
            namespace=pipeline.namespace,
            labels={**options.labels, PIPELINE_LABEL: pipeline.name},
            annotations=annotations or None,
            owner_references=[owner(pipeline)],
        ),
        spec=spec,
    )
    return to_json(isvc)


def served_refs(isvc: dict[str, Any]) -> tuple[ModelRef | None, ModelRef | None]:
    """The stable and candidate versions an InferenceService made by mlcd names (from its
    predictors' annotations and storage URIs)."""

    def ref(predictor: dict[str, Any] | None) -> ModelRef | None:
        if not predictor:
            return None
        annotations = predictor.get("annotations") or {}
        model = predictor.get("model") or {}
        version, sha256 = annotations.get(VERSION_ANNOTATION), annotations.get(SHA256_ANNOTATION)
        if not version or not sha256 or not model.get("storageUri"):
            return None
        return ModelRef(uri=str(model["storageUri"]), version=str(version), sha256=str(sha256))

    spec = isvc.get("spec") or {}
    predictor = spec.get("predictor")
    canaries = spec.get("canary") or []
    if canaries:
        return ref(predictor), ref(canaries[0].get("predictor"))
    if predictor and predictor.get("canaryTrafficPercent") is not None:
        # Serverless: the predictor holds the candidate; the previous revision the stable one.
        recorded = ((isvc.get("metadata") or {}).get("annotations") or {}).get(STABLE_ANNOTATION)
        stable = ModelRef.model_validate_json(recorded) if recorded else None
        return stable, ref(predictor)
    return ref(predictor), None


def wanted(isvc: dict[str, Any], mode: rules.Mode) -> rules.Wanted:
    """What mlcd asked of an InferenceService it made, read back from the object itself."""
    stable, candidate = served_refs(isvc)
    name = str(isvc["metadata"]["name"])
    percent = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
    return rules.Wanted(
        mode=mode,
        stable=rules.predictor_name(name, stable.version) if stable else None,
        candidate=rules.predictor_name(name, candidate.version) if candidate else None,
        canary_percent=percent if isinstance(percent, int) else None,
    )


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def s3_secret(
    pipeline: Pipeline,
    access_key: str,
    secret_key: str,
    key_names: tuple[str, str] = DEFAULT_KEY_NAMES,
    region: str = "us-east-1",
) -> dict[str, Any]:
    """The model repository's keys under the names KServe reads, with the endpoint annotations
    its credential builder turns into the storage initializer's environment."""
    secret_name, _ = storage_names(pipeline.name)
    endpoint = pipeline.artifacts.endpoint if pipeline.artifacts else None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name,
            "namespace": pipeline.namespace,
            "labels": {PIPELINE_LABEL: pipeline.name},
            "annotations": rules.s3_annotations(endpoint, region),
            "ownerReferences": [to_json(owner(pipeline))],
        },
        "data": {key_names[0]: _b64(access_key), key_names[1]: _b64(secret_key)},
    }


def service_account(pipeline: Pipeline, with_secret: bool) -> dict[str, Any]:
    """The predictors' ServiceAccount; KServe mounts the S3 credentials of the Secrets it lists."""
    secret_name, account = storage_names(pipeline.name)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": account,
            "namespace": pipeline.namespace,
            "labels": {PIPELINE_LABEL: pipeline.name},
            "ownerReferences": [to_json(owner(pipeline))],
        },
    }
    if with_secret:
        body["secrets"] = [{"name": secret_name}]
    return body
