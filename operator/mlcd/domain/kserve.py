"""Serving on KServe, decided without I/O: which deployment mode an InferenceService runs in,
the predictor names that carry a version, whether KServe has caught up with what we asked for,
and the model repository KServe can read.

KServe (v0.20) reports ``status.observedGeneration`` from the predictor's *Deployment* in
RawDeployment mode and from the Knative Service in Serverless mode, never the
InferenceService's own generation, so comparing the two can hang or pass by coincidence.
What is reliable: in RawDeployment every version runs in a predictor named after it
(``{isvc}-v{version}-predictor``), KServe points ``status.address`` at the stable predictor's
Service and lists each canary by name in ``status.canaryStatuses``; in Serverless the latest
created revision is the latest ready one and its traffic is the percent we set.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mlcd.errors import FieldProblem

Mode = Literal["Standard", "Knative", "ModelMesh"]
#: The names KServe accepts for each mode ("RawDeployment" and "Serverless" are the old ones).
MODE_NAMES: Mapping[str, Mode] = {
    "Standard": "Standard",
    "RawDeployment": "Standard",
    "Knative": "Knative",
    "Serverless": "Knative",
    "ModelMesh": "ModelMesh",
}
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
#: KServe's default when its ConfigMap names none (v0.20: Standard).
DEFAULT_MODE: Mode = "Standard"

# Kubernetes Service names are DNS labels of at most 63 characters.
_DNS_LABEL = 63
_PREDICTOR_SUFFIX = "-predictor"
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def parse_mode(value: str | None) -> Mode | None:
    return MODE_NAMES.get(value or "")


def configured_mode(deploy_config: str | None) -> Mode:
    """The default of the ``deploy`` entry of KServe's ``inferenceservice-config``."""
    try:
        data = json.loads(deploy_config or "{}")
    except ValueError:
        return DEFAULT_MODE
    value = data.get("defaultDeploymentMode") if isinstance(data, dict) else None
    return parse_mode(value if isinstance(value, str) else None) or DEFAULT_MODE


def deployment_mode(
    status_mode: str | None, annotations: Mapping[str, str], deploy_config: str | None
) -> Mode:
    """As KServe decides it: the mode recorded in status, else the annotation, else the
    ConfigMap's default (an unknown annotation falls through to the default, as in KServe)."""
    return (
        parse_mode(status_mode)
        or parse_mode(annotations.get(MODE_ANNOTATION))
        or configured_mode(deploy_config)
    )


# -- names ----------------------------------------------------------------------------------------
def predictor_name(isvc: str, version: str) -> str:
    """The predictor name that carries ``version``: ``v<version>`` when it is a valid name that
    keeps ``{isvc}-{name}-predictor`` a DNS label, else ``v`` and a digest of the version."""
    room = _DNS_LABEL - len(isvc) - len(_PREDICTOR_SUFFIX) - 1
    plain = "v" + version.lower().replace(".", "-").replace("_", "-")
    if len(plain) <= room and _NAME.match(plain):
        return plain
    digest = hashlib.sha256(version.encode()).hexdigest()
    return "v" + digest[: max(1, min(8, room - 1))]


def predictor_service(isvc: str, predictor: str | None) -> str:
    """The Deployment and Service KServe makes for a predictor (``{isvc}-predictor`` unnamed)."""
    return f"{isvc}-{predictor}{_PREDICTOR_SUFFIX}" if predictor else f"{isvc}{_PREDICTOR_SUFFIX}"


# -- the model repository -------------------------------------------------------------------------
def storage_problems(artifacts_uri: str | None) -> list[FieldProblem]:
    """KServe's storage initializer reads the version's folder from S3; a path on the
    operator's host is out of its reach."""
    if artifacts_uri is None:
        return [
            FieldProblem(
                "spec.artifacts.uri",
                "serving on KServe needs an s3:// model repository; none is set, and the "
                "operator's own state directory cannot be read by predictor pods",
            )
        ]
    if not artifacts_uri.startswith("s3://") or len(artifacts_uri) <= len("s3://"):
        return [
            FieldProblem(
                "spec.artifacts.uri",
                f"serving on KServe needs an s3:// model repository, not {artifacts_uri!r}",
            )
        ]
    return []


S3_ENDPOINT = "serving.kserve.io/s3-endpoint"
S3_USE_HTTPS = "serving.kserve.io/s3-usehttps"
S3_REGION = "serving.kserve.io/s3-region"
S3_VERIFY_SSL = "serving.kserve.io/s3-verifyssl"


def s3_annotations(endpoint: str | None, region: str) -> dict[str, str]:
    """The annotations KServe's credential builder reads from an S3 Secret: the endpoint as
    host[:port], whether it speaks HTTPS, the region."""
    annotations = {S3_REGION: region}
    if endpoint:
        https = not endpoint.startswith("http://")
        annotations[S3_ENDPOINT] = endpoint.split("://", 1)[-1].rstrip("/")
        annotations[S3_USE_HTTPS] = "1" if https else "0"
    return annotations


# -- readiness ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Wanted:
    """What we asked KServe for. Standard mode: the stable predictor's name and the candidate's
    (None without a rollout). Knative mode: the candidate's traffic percent (None: all traffic
    to the latest revision)."""

    mode: Mode
    stable: str | None = None
    candidate: str | None = None
    canary_percent: int | None = None


@dataclass(frozen=True)
class Readiness:
    """KServe's view of one InferenceService, judged against what we asked for.

    ``ready``: the stable version serves (Ready, and KServe has caught up with our change);
    ``candidate_ready``: the candidate's predictor is available too. ``reason`` is a
    CamelCase word for a condition, ``message`` says what is missing."""

    ready: bool
    candidate_ready: bool
    reason: str
    message: str
    url: str | None = None


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    items = status.get("conditions") or []
    return {str(c.get("type")): c for c in items if isinstance(c, Mapping)}


def _true(condition: Mapping[str, Any] | None) -> bool:
    return condition is not None and str(condition.get("status")) == "True"


def _why(condition: Mapping[str, Any] | None, default: str) -> tuple[str, str]:
    if condition is None:
        return "Pending", default
    reason = str(condition.get("reason") or "NotReady")
    message = str(condition.get("message") or default)
    return reason, message


def _failure(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """KServe's account of a model that cannot load (a runtime missing, an invalid spec)."""
    info = (status.get("modelStatus") or {}).get("lastFailureInfo")
    if not isinstance(info, Mapping) or not info.get("reason"):
        return None
    return str(info["reason"]), str(info.get("message") or info["reason"])


def _url(status: Mapping[str, Any]) -> str | None:
    url = status.get("url")
    if isinstance(url, str) and url:
        return url
    address = status.get("address")
    if isinstance(address, Mapping) and isinstance(address.get("url"), str):
        return str(address["url"])
    return None


def _host(url: object) -> str:
    text = str(url or "")
    return text.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]


def judge(isvc: Mapping[str, Any], wanted: Wanted) -> Readiness:
    """Whether the InferenceService serves what ``wanted`` says; pure, from the object alone."""
    status = isvc.get("status")
    if not isinstance(status, Mapping) or not status.get("conditions"):
        return Readiness(False, False, "Pending", "KServe has not reported on it yet")
    if wanted.mode == "Standard":
        return _judge_standard(isvc, status, wanted)
    if wanted.mode == "Knative":
        return _judge_knative(status, wanted)
    return Readiness(False, False, "UnsupportedMode", "ModelMesh mode is not supported")


def _judge_standard(
    isvc: Mapping[str, Any], status: Mapping[str, Any], wanted: Wanted
) -> Readiness:
    conditions = _conditions(status)
    name = str(isvc.get("metadata", {}).get("name", ""))
    url = _url(status)
    candidate_ready = _candidate_ready(status, conditions, wanted.candidate)
    ready_condition = conditions.get("Ready")
    if not _true(ready_condition):
        # KServe's model status or the predictor's condition says why (a runtime that does not
        # exist, the Deployment's progress deadline).
        reason, message = _failure(status) or _why(
            conditions.get("PredictorReady") or ready_condition, "the predictor is not ready"
        )
        return Readiness(False, candidate_ready, reason, message, url)
    entry = predictor_service(name, wanted.stable)
    host = _host((status.get("address") or {}).get("url"))
    if not host.startswith(entry + "."):
        return Readiness(
            False,
            candidate_ready,
            "Reconciling",
            f"KServe still routes to {host or 'nothing'}, not yet to {entry}",
            url,
        )
    listed = [str(c.get("name")) for c in status.get("canaryStatuses") or []]
    if wanted.candidate is None and listed:
        return Readiness(
            False, False, "Reconciling", f"KServe still runs the canary {', '.join(listed)}", url
        )
    if wanted.candidate is None:
        return Readiness(True, False, "Serving", f"{entry} is ready", url)
    if not candidate_ready:
        reason, message = _why(
            conditions.get("CanaryPredictorReady"),
            f"KServe has not created the candidate {wanted.candidate} yet",
        )
        if wanted.candidate not in listed:
            reason = "Reconciling"
            message = f"KServe has not created the candidate {wanted.candidate} yet"
        return Readiness(True, False, reason, message, url)
    return Readiness(True, True, "Serving", f"{entry} and the candidate are ready", url)


def _candidate_ready(
    status: Mapping[str, Any], conditions: Mapping[str, Mapping[str, Any]], candidate: str | None
) -> bool:
    if candidate is None:
        return False
    for entry in status.get("canaryStatuses") or []:
        if isinstance(entry, Mapping) and entry.get("name") == candidate:
            return bool(entry.get("ready")) and _true(conditions.get("CanaryPredictorReady"))
    return False


def _judge_knative(status: Mapping[str, Any], wanted: Wanted) -> Readiness:
    conditions = _conditions(status)
    url = _url(status)
    ready_condition = conditions.get("Ready")
    predictor = (status.get("components") or {}).get("predictor") or {}
    created = predictor.get("latestCreatedRevision")
    latest_ready = predictor.get("latestReadyRevision")
    if not created or created != latest_ready:
        reason, message = _failure(status) or _why(
            conditions.get("PredictorReady"),
            f"revision {created or '?'} is not ready (latest ready: {latest_ready or 'none'})",
        )
        # Serverless keeps serving the previous revision while the new one is not ready.
        return Readiness(False, False, reason, message, url)
    if not _true(ready_condition):
        reason, message = _why(ready_condition, "the InferenceService is not ready")
        return Readiness(False, False, reason, message, url)
    latest = _traffic_to_latest(predictor.get("traffic") or [])
    expected = 100 if wanted.canary_percent is None else wanted.canary_percent
    if latest != expected:
        return Readiness(
            False,
            False,
            "Reconciling",
            f"the latest revision has {latest}% of the traffic, not yet {expected}%",
            url,
        )
    return Readiness(True, wanted.canary_percent is not None, "Serving", f"{created} is ready", url)


def _traffic_to_latest(traffic: Sequence[Any]) -> int:
    return sum(
        int(t.get("percent") or 0)
        for t in traffic
        if isinstance(t, Mapping) and t.get("latestRevision") is True
    )


# -- Serverless canaries --------------------------------------------------------------------------
def knative_canary_patch(percent: int | None) -> dict[str, Any]:
    """A JSON merge patch of ``spec.predictor.canaryTrafficPercent``: a percent to the latest
    revision (0 = all back to the previous one), or None to remove it (promote: all to the
    latest)."""
    if percent is not None and not 0 <= percent <= 100:
        raise ValueError(f"canaryTrafficPercent must be within 0..100, not {percent}")
    return {"spec": {"predictor": {"canaryTrafficPercent": percent}}}


# -- the split through a Gateway API HTTPRoute ----------------------------------------------------
@dataclass(frozen=True)
class Backend:
    service: str
    weight: int


def backends(stable: str, candidate: str | None, canary_weight: int) -> list[Backend]:
    """Weighted backendRefs: ``canary_weight`` percent to the candidate's Service, the rest to
    the stable one. Without a candidate everything goes to the stable Service."""
    if not 0 <= canary_weight <= 100:
        raise ValueError(f"a canary weight is within 0..100, not {canary_weight}")
    if candidate is None:
        return [Backend(stable, 100)]
    return [Backend(stable, 100 - canary_weight), Backend(candidate, canary_weight)]


def route_problem(route: Mapping[str, Any] | None, name: str, service: str) -> str | None:
    """Why the HTTPRoute ``name`` does not lead clients to the predictor Service ``service``
    yet (it is missing, or ``service`` is none of its backends, whatever its weight), else
    None."""
    if route is None:
        return f"RouteMissing: the HTTPRoute {name} does not exist yet"
    backends = [
        ref.get("name")
        for rule in (route.get("spec") or {}).get("rules") or []
        if isinstance(rule, Mapping)
        for ref in rule.get("backendRefs") or []
        if isinstance(ref, Mapping)
    ]
    if service not in backends:
        return f"RouteMissing: the HTTPRoute {name} does not route to {service} yet"
    return None
