"""The traffic router of pipelines served on KServe (the rollout's ``TrafficRouter`` port).

RawDeployment (KServe's Standard mode): KServe v0.20's ``spec.canary`` creates the candidate's
predictor Deployment and Service but routes nothing by weight, so the split is a Gateway API
HTTPRoute mlcd owns, ``mlcd-<pipeline>``, on the InferenceService's host, with weighted
``backendRefs`` to the two predictor Services (the mechanism KServe itself adopted in v0.21).
The route follows the InferenceService: its backends are the predictors KServe runs for the
stable version and the candidate, so a promotion or a rollback applied to the InferenceService
is routed at once and never to a Service KServe has removed. The route is owned by the
InferenceService, which is owned by the ModelPipeline.

Serverless (Knative): the split is KServe's own ``canaryTrafficPercent``, patched.

Mirroring is not supported on KServe (see :meth:`KServeRouter.set_mirror`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlcd.domain import kserve as rules
from mlcd.domain.rollout import Builtins, Targets
from mlcd.errors import PermanentError, TemporaryError
from mlcd.ports import PipelineKey, Routes, TrafficRouter
from mlcd.serving.kserve import resources
from mlcd.serving.kserve.api import KubeAPI, path
from mlcd.serving.kserve.serving import (
    KSERVE_NAMESPACE,
    find_inference_service,
    read_kserve_config,
)

GATEWAY_GROUP = resources.GATEWAY_GROUP
GATEWAY_GROUP_VERSION = resources.GATEWAY_GROUP_VERSION
HTTPROUTES = resources.HTTPROUTES
GATEWAY_API = "the Gateway API CRDs (gateway.networking.k8s.io/v1 HTTPRoute)"
#: KServe's own default Gateway (inferenceservice-config: ingress.kserveIngressGateway).
DEFAULT_GATEWAY = "kserve/kserve-ingress-gateway"
#: KServe's predictor Services listen on 80 and forward to the runtime's port.
SERVICE_PORT = 80


class MirrorUnsupported(PermanentError):
    """Shadowing a candidate is not available on KServe."""


def builtins(selector: str) -> Builtins:
    """The analysis' built-in queries over the metrics KServe's model server exports.

    ``request_predict_seconds`` is observed for every prediction, failed ones included, and
    ``request_postprocess_seconds`` only after a prediction succeeded: their counts give the
    requests and the success rate, the predict histogram the p99 latency (seconds). ``selector``
    picks the candidate's pods by the labels the scrape configuration attaches."""
    window = "[{{ interval }}]"
    predicted = f"sum(increase(request_predict_seconds_count{{{selector}}}{window}))"
    answered = f"sum(increase(request_postprocess_seconds_count{{{selector}}}{window}))"
    latency = (
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(request_predict_seconds_bucket{{{selector}}}{window})))"
    )
    # The model server's shadow counters; no mirror reaches a candidate on KServe (see above).
    shadowed = f"sum(increase(mlcd_shadow_predictions_total{{{selector}}}{window}))"
    disagreed = f"sum(increase(mlcd_shadow_disagreements_total{{{selector}}}{window}))"
    return Builtins(
        requests=predicted,
        success_rate=f"{answered} / {predicted}",
        latency_p99=latency,
        shadow_requests=shadowed,
        shadow_disagreement=f"{disagreed} / {shadowed}",
        shadow_latency_p99=latency,
    )


#: RawDeployment: a predictor's pods carry ``app=isvc.<its Deployment>``, and ``{{ canary }}``
#: and ``{{ stable }}`` are the Deployments (``<isvc>-v<version>-predictor``).
RAW_BUILTINS = builtins('namespace="{{ namespace }}",app="isvc.{{ canary }}"')
#: Serverless: pods carry ``serving.knative.dev/revision``; the names are revisions.
KNATIVE_BUILTINS = builtins(
    'namespace="{{ namespace }}",serving_knative_dev_revision="{{ canary }}"'
)


@dataclass(frozen=True)
class Found:
    """A pipeline's InferenceService and what is read from it."""

    isvc: dict[str, Any]
    mode: rules.Mode
    stable: str  # the stable predictor's Deployment and Service (Standard)
    candidate: str | None  # the candidate's (Standard), None without a canary


class KServeRouter:
    """Implements ``TrafficRouter`` on KServe; stateless: everything is read back from the
    InferenceService and the HTTPRoute."""

    def __init__(
        self,
        api: KubeAPI,
        gateway: str | None = None,
        kserve_namespace: str = KSERVE_NAMESPACE,
    ) -> None:
        self.api = api
        self._gateway = gateway
        self.kserve_namespace = kserve_namespace
        self._config: dict[str, str] | None = None

    # -- reading ---------------------------------------------------------------------------------
    def kserve_config(self) -> dict[str, str]:
        if self._config is None:
            self._config = read_kserve_config(self.api, self.kserve_namespace)
        return self._config

    def gateway(self) -> tuple[str, str]:
        """The Gateway the routes attach to: as configured, else KServe's own."""
        configured = self._gateway
        if configured is None:
            ingress = json.loads(self.kserve_config().get("ingress") or "{}")
            configured = ingress.get("kserveIngressGateway") or DEFAULT_GATEWAY
        namespace, _, name = str(configured).rpartition("/")
        return namespace or self.kserve_namespace, name

    def find(self, key: PipelineKey) -> Found | None:
        """The InferenceService mlcd made for ``key``, and its predictors."""
        isvc = find_inference_service(self.api, key)
        if isvc is None:
            return None
        status = isvc.get("status") or {}
        annotations = (isvc.get("metadata") or {}).get("annotations") or {}
        mode = rules.deployment_mode(
            status.get("deploymentMode"), annotations, self.kserve_config().get("deploy")
        )
        name = isvc["metadata"]["name"]
        spec = isvc.get("spec") or {}
        stable = rules.predictor_service(name, (spec.get("predictor") or {}).get("name"))
        canaries = spec.get("canary") or []
        candidate = (
            rules.predictor_service(name, canaries[0]["predictor"]["name"]) if canaries else None
        )
        return Found(isvc, mode, stable, candidate)

    def _found(self, key: PipelineKey) -> Found:
        found = self.find(key)
        if found is None:
            raise TemporaryError(f"{key} has no InferenceService yet", delay=5.0)
        return found

    def _route_path(self, key: PipelineKey) -> str:
        return path(
            GATEWAY_GROUP_VERSION, HTTPROUTES, key.namespace, resources.route_name(key.name)
        )

    def route(self, key: PipelineKey) -> dict[str, Any] | None:
        if not self.api.serves(GATEWAY_GROUP_VERSION, HTTPROUTES):
            return None
        return self.api.get(self._route_path(key), f"reading the HTTPRoute of {key}")

    # -- writing ---------------------------------------------------------------------------------
    def _apply_route(self, key: PipelineKey, found: Found, attach: bool, weight: int) -> None:
        self.api.require(GATEWAY_GROUP_VERSION, HTTPROUTES, GATEWAY_API)
        status = found.isvc.get("status") or {}
        host = str(status.get("url") or "").split("://", 1)[-1].split("/", 1)[0]
        if not host:
            raise TemporaryError(f"waiting for KServe to report the URL of {key}", delay=5.0)
        candidate = found.candidate if attach else None
        namespace, gateway = self.gateway()
        meta = found.isvc["metadata"]
        body = {
            "apiVersion": GATEWAY_GROUP_VERSION,
            "kind": "HTTPRoute",
            "metadata": {
                "name": resources.route_name(key.name),
                "namespace": key.namespace,
                "labels": {resources.PIPELINE_LABEL: key.name},
                "ownerReferences": [
                    {
                        "apiVersion": resources.ISVC_GROUP_VERSION,
                        "kind": "InferenceService",
                        "name": meta["name"],
                        "uid": meta["uid"],
                    }
                ],
            },
            "spec": {
                "parentRefs": [
                    {
                        "group": GATEWAY_GROUP,
                        "kind": "Gateway",
                        "namespace": namespace,
                        "name": gateway,
                    }
                ],
                "hostnames": [host],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                        "backendRefs": [
                            {
                                "group": "",
                                "kind": "Service",
                                "name": backend.service,
                                "port": SERVICE_PORT,
                                "weight": backend.weight,
                            }
                            for backend in rules.backends(found.stable, candidate, weight)
                        ],
                    }
                ],
            },
        }
        self.api.apply(self._route_path(key), body, f"writing the HTTPRoute of {key}")

    def _weight(self, key: PipelineKey, found: Found) -> int:
        """The candidate's weight on the route now (0 when it has none)."""
        current = self.route(key)
        refs = ((current or {}).get("spec") or {}).get("rules") or [{}]
        for ref in refs[0].get("backendRefs") or []:
            if ref.get("name") == found.candidate:
                return int(ref.get("weight", 1))
        return 0

    # -- the port --------------------------------------------------------------------------------
    def reconcile(self, key: PipelineKey, stable: str, candidate: str | None) -> str:
        """Routes the pipeline's host to its InferenceService's predictors: the stable one and,
        when ``candidate`` is given and KServe runs a canary, the candidate (weight 0 when new).
        The URLs name the upstreams as serving reported them; the predictors themselves are
        read from the InferenceService. Returns the URL clients use."""
        found = self._found(key)
        url = str((found.isvc.get("status") or {}).get("url") or "")
        if found.mode != "Standard":
            return url
        attach = candidate is not None and found.candidate is not None
        self._apply_route(key, found, attach, self._weight(key, found) if attach else 0)
        return url

    def set_weights(self, key: PipelineKey, canary: int) -> None:
        found = self._found(key)
        if found.mode == "Knative":
            predictor = (found.isvc.get("spec") or {}).get("predictor") or {}
            if predictor.get("canaryTrafficPercent") is None:
                return  # no candidate: the latest revision has it all
            where = path(
                resources.ISVC_GROUP_VERSION,
                resources.ISVC_PLURAL,
                key.namespace,
                found.isvc["metadata"]["name"],
            )
            self.api.merge_patch(
                where, rules.knative_canary_patch(canary), f"setting the weights of {key}"
            )
            return
        current = self.route(key)
        attached = any(
            ref.get("name") == found.candidate
            for rule in ((current or {}).get("spec") or {}).get("rules") or []
            for ref in rule.get("backendRefs") or []
        )
        self._apply_route(key, found, attached and found.candidate is not None, canary)

    def set_mirror(self, key: PipelineKey, on: bool) -> None:
        """Not supported on KServe: a Gateway's RequestMirror filter is an extended feature
        that not every implementation has, and judging a shadow needs the candidate to score
        each request with the stable model as well, which mlcd's runtime does only on one
        machine. Turning it off is always possible (it is never on)."""
        if on:
            raise MirrorUnsupported(
                f"{key}: shadowing (mirrored traffic) is not supported when serving on KServe; "
                "remove spec.serving.rollout.shadow"
            )

    def routes(self, key: PipelineKey) -> Routes | None:
        found = self.find(key)
        if found is None:
            return None
        if found.mode == "Knative":
            predictor = (found.isvc.get("spec") or {}).get("predictor") or {}
            percent = predictor.get("canaryTrafficPercent")
            return Routes(int(percent or 0), False, percent is not None)
        current = self.route(key)
        if current is None:
            return None
        refs = ((current.get("spec") or {}).get("rules") or [{}])[0].get("backendRefs") or []
        names = [r.get("name") for r in refs]
        attached = found.candidate is not None and found.candidate in names
        return Routes(self._weight(key, found) if attached else 0, False, attached)

    def candidate_ready(self, key: PipelineKey) -> bool:
        """KServe reports the candidate's predictor available (RawDeployment: its canary
        status and CanaryPredictorReady; Serverless: the latest revision ready)."""
        found = self.find(key)
        if found is None:
            return False
        return rules.judge(found.isvc, resources.wanted(found.isvc, found.mode)).candidate_ready

    def targets(self, key: PipelineKey) -> Targets:
        found = self._found(key)
        if found.mode == "Knative":
            predictor = ((found.isvc.get("status") or {}).get("components") or {}).get(
                "predictor"
            ) or {}
            return Targets(
                namespace=key.namespace,
                canary=str(predictor.get("latestCreatedRevision") or ""),
                stable=str(predictor.get("previousRolledoutRevision") or ""),
                builtins=KNATIVE_BUILTINS,
            )
        return Targets(
            namespace=key.namespace,
            canary=found.candidate or "",
            stable=found.stable,
            builtins=RAW_BUILTINS,
        )

    def url(self, key: PipelineKey) -> str | None:
        """The InferenceService's own address: the route splits traffic on its host."""
        found = self.find(key)
        if found is None:
            return None
        status = found.isvc.get("status") or {}
        return str(status.get("url")) if status.get("url") else None

    def finalize(self, key: PipelineKey) -> None:
        """Deletes the route (the InferenceService is serving's to delete)."""
        if self.api.serves(GATEWAY_GROUP_VERSION, HTTPROUTES):
            self.api.delete(self._route_path(key), f"deleting the HTTPRoute of {key}")


if TYPE_CHECKING:  # the port, checked by mypy
    _PORT: type[TrafficRouter] = KServeRouter
