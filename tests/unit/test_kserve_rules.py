"""Serving on KServe decided without I/O: modes, predictor names, readiness, patches, backends."""

from __future__ import annotations

from typing import Any

import pytest

from mlcd.domain import kserve as rules

RAW = '{"defaultDeploymentMode": "RawDeployment"}'
SERVERLESS = '{"defaultDeploymentMode": "Serverless"}'

MODES = [
    # (status.deploymentMode, annotation, ConfigMap deploy entry, mode)
    (None, None, None, "Standard"),
    (None, None, RAW, "Standard"),
    (None, None, SERVERLESS, "Knative"),
    (None, None, '{"defaultDeploymentMode": "Knative"}', "Knative"),
    (None, None, '{"defaultDeploymentMode": "Standard"}', "Standard"),
    (None, None, "not json", "Standard"),
    (None, None, '{"defaultDeploymentMode": "Sideways"}', "Standard"),
    (None, "Serverless", RAW, "Knative"),
    (None, "RawDeployment", SERVERLESS, "Standard"),
    (None, "ModelMesh", RAW, "ModelMesh"),
    (None, "Sideways", SERVERLESS, "Knative"),  # an unknown annotation: the default, as KServe
    ("RawDeployment", "Serverless", SERVERLESS, "Standard"),  # status first, as KServe
    ("Knative", None, RAW, "Knative"),
]


@pytest.mark.parametrize(("status", "annotation", "config", "mode"), MODES)
def test_deployment_mode(
    status: str | None, annotation: str | None, config: str | None, mode: str
) -> None:
    annotations = {rules.MODE_ANNOTATION: annotation} if annotation else {}
    assert rules.deployment_mode(status, annotations, config) == mode


NAMES = [
    # (isvc, version, predictor name)
    ("mnist", "1", "v1"),
    ("mnist", "12", "v12"),
    ("mnist", "1.2_rc", "v1-2-rc"),
    ("mnist", "-x", None),  # not a DNS label: a digest
    ("mnist", "A" * 60, None),
    ("m" * 45, "1234567", None),  # {isvc}-v1234567-predictor would exceed 63 characters
    ("m" * 45, "123456", "v123456"),
]


@pytest.mark.parametrize(("isvc", "version", "expected"), NAMES)
def test_predictor_names_are_dns_labels_that_carry_the_version(
    isvc: str, version: str, expected: str | None
) -> None:
    name = rules.predictor_name(isvc, version)
    if expected is not None:
        assert name == expected
    service = rules.predictor_service(isvc, name)
    assert len(service) <= 63
    assert rules._NAME.match(service)
    assert rules.predictor_name(isvc, version) == name  # deterministic
    assert rules.predictor_name(isvc, version + "0") != name


def test_predictor_service_names_follow_kserve() -> None:
    assert rules.predictor_service("mnist", None) == "mnist-predictor"
    assert rules.predictor_service("mnist", "v2") == "mnist-v2-predictor"


STORAGE = [
    (None, "none is set"),
    ("/var/lib/mlcd/models", "not '/var/lib/mlcd/models'"),
    ("file:///models", "not 'file:///models'"),
    ("s3://", "not 's3://'"),
    ("s3://models/", None),
    ("s3://models/team-a/", None),
]


@pytest.mark.parametrize(("uri", "words"), STORAGE)
def test_only_an_s3_repository_serves_on_kserve(uri: str | None, words: str | None) -> None:
    problems = rules.storage_problems(uri)
    if words is None:
        assert problems == []
    else:
        assert [p.path for p in problems] == ["spec.artifacts.uri"]
        assert words in problems[0].reason


def test_s3_annotations() -> None:
    assert rules.s3_annotations("http://minio.minio:9000/", "eu-west-1") == {
        rules.S3_ENDPOINT: "minio.minio:9000",
        rules.S3_USE_HTTPS: "0",
        rules.S3_REGION: "eu-west-1",
    }
    assert rules.s3_annotations("https://s3.example.com", "us-east-1")[rules.S3_USE_HTTPS] == "1"
    assert rules.s3_annotations(None, "us-east-1") == {rules.S3_REGION: "us-east-1"}


def cond(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


def raw(
    conditions: list[dict[str, str]],
    address: str | None = "http://mnist-v1-predictor.ns.svc.cluster.local",
    canaries: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": conditions,
        "url": "http://mnist-ns.example.com",
        # KServe copies the Deployment's generation here: never compared with ours.
        "observedGeneration": 1,
    }
    if address:
        status["address"] = {"url": address}
    if canaries is not None:
        status["canaryStatuses"] = canaries
    return {"metadata": {"name": "mnist", "generation": 7}, "status": status}


def failed(isvc: dict[str, Any]) -> dict[str, Any]:
    """KServe's model status when no runtime serves the model."""
    isvc["status"]["modelStatus"] = {
        "transitionStatus": "InvalidSpec",
        "lastFailureInfo": {
            "reason": "RuntimeNotRecognized",
            "message": "Waiting for runtime to become available",
        },
    }
    return isvc


READY = [cond("PredictorReady", "True"), cond("IngressReady", "True"), cond("Ready", "True")]
CANARY_READY = [*READY, cond("CanaryPredictorReady", "True", "AllCanariesReady")]
CANARY_NOT_READY = [*READY, cond("CanaryPredictorReady", "False", "CanariesNotReady")]
PROGRESS = cond(
    "PredictorReady", "False", "ProgressDeadlineExceeded", "ReplicaSet has timed out progressing"
)

STANDARD = [
    # (InferenceService, stable, candidate, ready, candidate ready, reason)
    ({"metadata": {"name": "mnist"}}, "v1", None, False, False, "Pending"),
    (raw(READY), "v1", None, True, False, "Serving"),
    (raw(READY, address="http://mnist-predictor.ns.svc"), "v1", None, False, False, "Reconciling"),
    (raw(READY), "v2", None, False, False, "Reconciling"),  # promoted, KServe not caught up
    (raw(READY, address=None), "v1", None, False, False, "Reconciling"),
    (raw([PROGRESS, cond("Ready", "False")]), "v1", None, False, False, "ProgressDeadlineExceeded"),
    (raw([cond("Ready", "False", "Unknown")]), "v1", None, False, False, "Unknown"),
    (raw([cond("Ready", "Unknown")]), "v1", None, False, False, "NotReady"),
    (failed(raw([cond("Ready", "Unknown")])), "v1", None, False, False, "RuntimeNotRecognized"),
    (raw(READY), "v1", "v2", True, False, "Reconciling"),  # canary not created yet
    (
        raw(CANARY_NOT_READY, canaries=[{"name": "v2", "ready": False, "trafficPercent": 0}]),
        "v1",
        "v2",
        True,
        False,
        "CanariesNotReady",
    ),
    (
        raw(CANARY_READY, canaries=[{"name": "v2", "ready": True, "trafficPercent": 0}]),
        "v1",
        "v2",
        True,
        True,
        "Serving",
    ),
    (  # a stale canary of another version
        raw(CANARY_READY, canaries=[{"name": "v3", "ready": True, "trafficPercent": 0}]),
        "v1",
        "v2",
        True,
        False,
        "Reconciling",
    ),
    (  # rolled back, KServe still runs the canary
        raw(CANARY_READY, canaries=[{"name": "v2", "ready": True, "trafficPercent": 0}]),
        "v1",
        None,
        False,
        False,
        "Reconciling",
    ),
]


@pytest.mark.parametrize(
    ("isvc", "stable", "candidate", "ready", "candidate_ready", "reason"), STANDARD
)
def test_readiness_in_rawdeployment(
    isvc: dict[str, Any],
    stable: str,
    candidate: str | None,
    ready: bool,
    candidate_ready: bool,
    reason: str,
) -> None:
    verdict = rules.judge(isvc, rules.Wanted("Standard", stable=stable, candidate=candidate))
    assert (verdict.ready, verdict.candidate_ready, verdict.reason) == (
        ready,
        candidate_ready,
        reason,
    )
    assert verdict.message


def knative(
    created: str, latest_ready: str, traffic: list[dict[str, Any]], ready: str = "True"
) -> dict[str, Any]:
    predictor = {
        "latestCreatedRevision": created,
        "latestReadyRevision": latest_ready,
        "traffic": traffic,
    }
    return {
        "metadata": {"name": "mnist"},
        "status": {
            "conditions": [cond("PredictorReady", ready), cond("Ready", ready)],
            "url": "http://mnist.ns.example.com",
            "components": {"predictor": predictor},
        },
    }


ALL_LATEST = [{"revisionName": "p-2", "latestRevision": True, "percent": 100}]
SPLIT = [
    {"revisionName": "p-2", "latestRevision": True, "percent": 10},
    {"revisionName": "p-1", "latestRevision": False, "percent": 90},
]

KNATIVE = [
    # (InferenceService, canary percent asked, ready, candidate ready, reason)
    (knative("p-2", "p-2", ALL_LATEST), None, True, False, "Serving"),
    (knative("p-2", "p-1", SPLIT), 10, False, False, "NotReady"),
    (knative("p-2", "p-2", SPLIT), 10, True, True, "Serving"),
    (knative("p-2", "p-2", SPLIT), 50, False, False, "Reconciling"),
    (knative("p-2", "p-2", SPLIT), None, False, False, "Reconciling"),
    (knative("p-2", "p-2", ALL_LATEST, ready="False"), None, False, False, "NotReady"),
]


@pytest.mark.parametrize(("isvc", "percent", "ready", "candidate_ready", "reason"), KNATIVE)
def test_readiness_in_serverless(
    isvc: dict[str, Any], percent: int | None, ready: bool, candidate_ready: bool, reason: str
) -> None:
    verdict = rules.judge(isvc, rules.Wanted("Knative", canary_percent=percent))
    assert (verdict.ready, verdict.candidate_ready, verdict.reason) == (
        ready,
        candidate_ready,
        reason,
    )


def test_modelmesh_is_not_supported() -> None:
    verdict = rules.judge(raw(READY), rules.Wanted("ModelMesh"))
    assert not verdict.ready
    assert verdict.reason == "UnsupportedMode"


@pytest.mark.parametrize(
    ("percent", "patch"),
    [
        (10, {"spec": {"predictor": {"canaryTrafficPercent": 10}}}),
        (0, {"spec": {"predictor": {"canaryTrafficPercent": 0}}}),  # rollback
        (None, {"spec": {"predictor": {"canaryTrafficPercent": None}}}),  # promote: removed
    ],
)
def test_serverless_canary_patches(percent: int | None, patch: dict[str, Any]) -> None:
    assert rules.knative_canary_patch(percent) == patch


@pytest.mark.parametrize("percent", [-1, 101])
def test_serverless_canary_patch_bounds(percent: int) -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        rules.knative_canary_patch(percent)


@pytest.mark.parametrize(
    ("candidate", "weight", "expected"),
    [
        (None, 0, [("s", 100)]),
        (None, 50, [("s", 100)]),
        ("c", 0, [("s", 100), ("c", 0)]),
        ("c", 10, [("s", 90), ("c", 10)]),
        ("c", 100, [("s", 0), ("c", 100)]),
    ],
)
def test_backends(candidate: str | None, weight: int, expected: list[tuple[str, int]]) -> None:
    assert [(b.service, b.weight) for b in rules.backends("s", candidate, weight)] == expected


@pytest.mark.parametrize("weight", [-1, 101])
def test_backend_weight_bounds(weight: int) -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        rules.backends("s", "c", weight)


def _route(*services: str) -> dict[str, Any]:
    refs = [{"kind": "Service", "name": s, "port": 80, "weight": 0} for s in services]
    return {"spec": {"rules": [{"backendRefs": refs}]}}


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        (None, "RouteMissing: the HTTPRoute mlcd-digits does not exist yet"),
        (
            _route("mnist-v1-predictor"),
            "RouteMissing: the HTTPRoute mlcd-digits does not route to mnist-v2-predictor yet",
        ),
        (
            {"spec": {}},
            "RouteMissing: the HTTPRoute mlcd-digits does not route to mnist-v2-predictor yet",
        ),
        # A backend of the route, whatever its weight (at a rollout's last step the stable one
        # has none and still serves).
        (_route("mnist-v1-predictor", "mnist-v2-predictor"), None),
    ],
)
def test_a_routed_version_serves_once_its_route_leads_to_it(
    route: dict[str, Any] | None, problem: str | None
) -> None:
    assert rules.route_problem(route, "mlcd-digits", "mnist-v2-predictor") == problem
