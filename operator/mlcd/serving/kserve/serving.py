"""Serving one pipeline's model on KServe: the InferenceService mlcd creates and owns, its
credentials, what KServe reports about it, and the switches of a rollout (a candidate next to
the stable version, promotion, rollback).

Every write is a server-side apply of the whole desired object, so it is idempotent: an
operator killed at any line and restarted applies the same object again. What serves is read
back from the InferenceService itself (the versions are on its predictors), never remembered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlcd.artifacts.credentials import SecretResolver, s3_keys
from mlcd.domain import kserve as rules
from mlcd.domain.observations import ServingView
from mlcd.domain.records import ModelRef
from mlcd.domain.rollout import needs_rollout
from mlcd.domain.spec import API_GROUP, API_VERSION, ModelPipeline, Serving, StorageLocation
from mlcd.errors import MlcdError, PermanentError, SpecError, TemporaryError
from mlcd.ports import ModelServing, PipelineKey, ServingRole
from mlcd.serving.kserve import resources
from mlcd.serving.kserve.api import KubeAPI, NotInstalled, path
from mlcd.serving.kserve.resources import Options, Pipeline

KSERVE = "KServe v0.20 or newer (serving.kserve.io/v1beta1 InferenceService)"
KSERVE_NAMESPACE = "kserve"
CONFIGMAP = "inferenceservice-config"


class NotReady(TemporaryError):
    """KServe did not report the InferenceService ready in time; ``reason`` says why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, delay=30.0)
        self.reason = reason


@dataclass(frozen=True)
class Observation:
    """One look at the pipeline's InferenceService."""

    exists: bool
    mode: rules.Mode
    stable: ModelRef | None
    candidate: ModelRef | None
    readiness: rules.Readiness
    #: The candidate's traffic share as the InferenceService holds it (Knative only).
    canary_percent: int | None = None

    @property
    def url(self) -> str | None:
        return self.readiness.url


def condition_of(error: MlcdError) -> tuple[str, str]:
    """The condition reason and message for what serving on KServe raised."""
    if isinstance(error, SpecError):
        return "InvalidSpec", str(error)
    if isinstance(error, NotInstalled):
        return "KServeNotInstalled", str(error)
    if isinstance(error, NotReady):
        return "InferenceServiceNotReady", str(error)
    return "ServingFailed", str(error)


def read_kserve_config(api: KubeAPI, namespace: str = KSERVE_NAMESPACE) -> dict[str, str]:
    """KServe's ConfigMap, or nothing when it cannot be read (KServe's defaults apply)."""
    where = path("v1", "configmaps", namespace, CONFIGMAP)
    try:
        found = api.get(where, f"reading {namespace}/{CONFIGMAP}")
    except PermanentError:  # not allowed to read it
        found = None
    return dict((found or {}).get("data") or {})


class PipelineServing:
    """One pipeline's InferenceService: what KServe reports, and the switches of serving and
    of a rollout."""

    def __init__(
        self,
        api: KubeAPI,
        pipeline: Pipeline,
        secrets: SecretResolver,
        options: Options | None = None,
        kserve_namespace: str = KSERVE_NAMESPACE,
        ready_timeout: float = 0.0,
        poll: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api, self.pipeline, self.secrets = api, pipeline, secrets
        self.options = options or Options()
        self.kserve_namespace = kserve_namespace
        self.ready_timeout, self.poll, self._sleep = ready_timeout, poll, sleep
        self._config: dict[str, str] | None = None

    # -- reading ---------------------------------------------------------------------------------
    @property
    def _isvc_path(self) -> str:
        return path(
            resources.ISVC_GROUP_VERSION,
            resources.ISVC_PLURAL,
            self.pipeline.namespace,
            self.pipeline.inference_service,
        )

    def check(self) -> None:
        """Raises :class:`SpecError` for a model repository KServe cannot read and
        :class:`NotInstalled` when the cluster has no InferenceService API."""
        uri = self.pipeline.artifacts.uri if self.pipeline.artifacts else None
        problems = rules.storage_problems(uri)
        if problems:
            raise SpecError(problems)
        self.api.require(resources.ISVC_GROUP_VERSION, resources.ISVC_PLURAL, KSERVE)

    def kserve_config(self) -> dict[str, str]:
        if self._config is None:
            self._config = read_kserve_config(self.api, self.kserve_namespace)
        return self._config

    def get(self) -> dict[str, Any] | None:
        return self.api.get(self._isvc_path, f"reading {self._name}")

    @property
    def _name(self) -> str:
        return f"inferenceservice {self.pipeline.namespace}/{self.pipeline.inference_service}"

    def mode(self, isvc: dict[str, Any] | None = None) -> rules.Mode:
        status = (isvc or {}).get("status") or {}
        annotations = dict(((isvc or {}).get("metadata") or {}).get("annotations") or {})
        if isvc is None and self.options.deployment_mode:
            annotations[rules.MODE_ANNOTATION] = self.options.deployment_mode
        return rules.deployment_mode(
            status.get("deploymentMode"), annotations, self.kserve_config().get("deploy")
        )

    def observe(self) -> Observation:
        isvc = self.get()
        mode = self.mode(isvc)
        if isvc is None:
            missing = rules.Readiness(False, False, "NotFound", f"{self._name} does not exist")
            return Observation(False, mode, None, None, missing)
        stable, candidate = resources.served_refs(isvc)
        wanted = resources.wanted(isvc, mode)
        return Observation(
            True, mode, stable, candidate, rules.judge(isvc, wanted), wanted.canary_percent
        )

    def predictor_url(self, ref: ModelRef) -> str:
        """The in-cluster URL of the predictor Service serving ``ref`` (RawDeployment)."""
        service = rules.predictor_service(
            self.pipeline.inference_service,
            rules.predictor_name(self.pipeline.inference_service, ref.version),
        )
        return f"http://{service}.{self.pipeline.namespace}.svc.cluster.local"

    # -- writing ---------------------------------------------------------------------------------
    def ensure_credentials(self) -> str:
        """The predictors' ServiceAccount, listing a Secret with the repository's keys when
        the pipeline references one (the operator's own keys are never copied)."""
        artifacts = self.pipeline.artifacts
        ref = artifacts.credentials_secret_ref if artifacts else None
        if ref is not None:
            access, secret = s3_keys(ref.name, self.secrets)
            assert access is not None and secret is not None  # s3_keys raises otherwise
            s3 = json.loads(self.kserve_config().get("credentials") or "{}").get("s3") or {}
            names = (
                s3.get("s3AccessKeyIDName") or resources.DEFAULT_KEY_NAMES[0],
                s3.get("s3SecretAccessKeyName") or resources.DEFAULT_KEY_NAMES[1],
            )
            body = resources.s3_secret(self.pipeline, access, secret, names, self.options.region)
            where = path("v1", "secrets", self.pipeline.namespace, body["metadata"]["name"])
            self.api.apply(where, body, f"writing the model repository's secret for {self._name}")
        account = resources.service_account(self.pipeline, with_secret=ref is not None)
        where = path("v1", "serviceaccounts", self.pipeline.namespace, account["metadata"]["name"])
        self.api.apply(where, account, f"writing the predictors' service account for {self._name}")
        return str(account["metadata"]["name"])

    def apply(
        self, stable: ModelRef, candidate: ModelRef | None = None, canary_percent: int = 0
    ) -> dict[str, Any]:
        """Makes the InferenceService serve ``stable``, with ``candidate`` beside it."""
        self.check()
        account = self.ensure_credentials()
        isvc = self.get()
        body = resources.inference_service(
            self.pipeline,
            self.mode(isvc),
            stable,
            candidate,
            canary_percent,
            self.options,
            service_account=account,
        )
        return self.api.apply(self._isvc_path, body, f"writing {self._name}")

    def wait(
        self,
        done: Callable[[Observation], bool],
        what: str,
        look: Callable[[], Observation] | None = None,
    ) -> Observation:
        """Looks (by default: observes) until ``done``, at least once; raises
        :class:`NotReady` with KServe's reason after ``ready_timeout`` seconds."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            seen = (look or self.observe)()
            if done(seen):
                return seen
            if time.monotonic() >= deadline:
                why = seen.readiness
                waited = f"after {self.ready_timeout:.0f} s" if self.ready_timeout else "yet"
                raise NotReady(
                    f"{self._name}: {what} not ready {waited}: {why.reason}: {why.message}",
                    why.reason,
                )
            self._sleep(self.poll)

    # -- a rollout's switches --------------------------------------------------------------------
    def deploy_candidate(self, candidate: ModelRef) -> Observation:
        """The candidate next to the stable version, with no traffic of its own."""
        seen = self.observe()
        if seen.stable is None:
            raise PermanentError(f"{self._name} serves nothing yet: serve a version first")
        self.apply(seen.stable, candidate, 0)
        return self.observe()

    def promote(self) -> Observation:
        """The candidate becomes the one version served (in RawDeployment its predictor is kept
        as it is, the stable one removed)."""
        seen = self.observe()
        if seen.candidate is None:
            return seen
        self.apply(seen.candidate)
        return self.observe()

    def rollback(self) -> Observation:
        """The candidate goes; the stable predictor is left as it is. (Serverless: all traffic
        back to the previous revision.)"""
        seen = self.observe()
        if seen.candidate is None:
            return seen
        if seen.mode == "Knative":
            where = self._isvc_path
            self.api.merge_patch(where, rules.knative_canary_patch(0), f"rolling back {self._name}")
        else:
            assert seen.stable is not None
            self.apply(seen.stable)
        return self.observe()

    # -- serving a version ----------------------------------------------------------------------
    def step(self, ref: ModelRef) -> Observation:
        """One idempotent step towards serving ``ref`` alone; returns what KServe reports after.

        RawDeployment replaces a served version through a canary: the new predictor is
        created beside the old one, and only once KServe reports it ready does it become the
        stable predictor (KServe then removes the old one), so no request finds nothing."""
        seen = self.observe()
        if seen.stable == ref and seen.candidate is None:
            return seen
        # Serve ``ref`` alone when nothing else serves, in Serverless (Knative moves the traffic
        # once the new revision is ready), when it is the stable version already (a candidate
        # beside it goes), or when it is a candidate KServe reports ready (promotion).
        alone = (
            seen.stable is None
            or seen.mode == "Knative"
            or seen.stable == ref
            or (seen.candidate == ref and seen.readiness.candidate_ready)
        )
        if alone or seen.stable is None:
            self.apply(ref)
        elif seen.candidate != ref:
            self.apply(seen.stable, ref, 0)
        return self.observe()

    def serve(self, ref: ModelRef) -> str:
        """Steps towards ``ref`` until KServe reports it served alone and ready (at most
        ``ready_timeout`` seconds; 0 is one step); returns the InferenceService's URL, or raises
        :class:`NotReady` with KServe's reason. The model is read by KServe's storage
        initializer from the repository, and the runtime checks it against ``ref.sha256``."""
        seen = self.wait(
            lambda o: o.stable == ref and o.candidate is None and o.readiness.ready,
            f"version {ref.version}",
            look=lambda: self.step(ref),
        )
        return seen.url or ""

    def current(self) -> ModelRef | None:
        seen = self.observe()
        return seen.stable if seen.readiness.ready else None

    def unrouted(self, stable: ModelRef) -> str | None:
        """Why clients cannot reach ``stable`` through the pipeline's HTTPRoute yet (a routed
        pipeline in RawDeployment), else None."""
        name = resources.route_name(self.pipeline.name)
        where = path(
            resources.GATEWAY_GROUP_VERSION, resources.HTTPROUTES, self.pipeline.namespace, name
        )
        route = self.api.get(where, f"reading the HTTPRoute of {self._name}")
        isvc = self.pipeline.inference_service
        service = rules.predictor_service(isvc, rules.predictor_name(isvc, stable.version))
        return rules.route_problem(route, name, service)

    def view(self) -> ServingView:
        """What KServe reports, as the loop observes a serving target: a version serves once
        KServe reports it ready and, for a routed pipeline, its route leads to it (the loop
        takes a reported version for a served one)."""
        seen = self.observe()
        why = seen.readiness
        if not why.ready or seen.stable is None:
            reason = f"{why.reason}: {why.message}"
            return ServingView(ready=False, ref=None, url=why.url, reason=reason)
        if self.pipeline.routed and seen.mode == "Standard":
            missing = self.unrouted(seen.stable)
            if missing is not None:
                return ServingView(ready=False, ref=None, url=why.url, reason=missing)
        return ServingView(ready=True, ref=seen.stable, url=why.url)

    def stop(self) -> None:
        """Deletes the InferenceService (KServe removes its predictors) and the credentials."""
        delete_owned(self.api, self.pipeline.namespace, self.pipeline.name, self._isvc_path)


def delete_owned(api: KubeAPI, namespace: str, pipeline: str, isvc_path: str | None) -> None:
    secret, account = resources.storage_names(pipeline)
    if isvc_path is not None:
        api.delete(isvc_path, f"deleting the InferenceService of {namespace}/{pipeline}")
    api.delete(path("v1", "secrets", namespace, secret), f"deleting secret {namespace}/{secret}")
    api.delete(
        path("v1", "serviceaccounts", namespace, account),
        f"deleting serviceaccount {namespace}/{account}",
    )


def find_inference_service(api: KubeAPI, key: PipelineKey) -> dict[str, Any] | None:
    """The InferenceService mlcd made for ``key``: labelled with its pipeline and, in a
    cluster, owned by that very incarnation of it (its uid). None in a cluster without KServe:
    there is nothing to find (or to clean up when the pipeline is deleted)."""
    if not api.serves(resources.ISVC_GROUP_VERSION, resources.ISVC_PLURAL):
        return None
    where = path(resources.ISVC_GROUP_VERSION, resources.ISVC_PLURAL, key.namespace)
    listed = api.get(
        f"{where}?labelSelector={resources.PIPELINE_LABEL}%3D{key.name}",
        f"listing the InferenceServices of {key}",
    )
    items = [
        item
        for item in (listed or {}).get("items") or []
        if not key.uid
        or any(o.get("uid") == key.uid for o in item["metadata"].get("ownerReferences") or [])
    ]
    if len(items) > 1:
        names = ", ".join(sorted(i["metadata"]["name"] for i in items))
        raise PermanentError(f"{key} owns more than one InferenceService: {names}")
    return items[0] if items else None


class KServeServing:
    """The serving port on KServe, for every pipeline: each call is keyed by the pipeline,
    whose spec (the InferenceService's name, the model repository) is read from the cluster.

    ``secrets`` gives a namespace's Secret resolver (the operator's, reading by reference)."""

    def __init__(
        self,
        api: KubeAPI,
        secrets: Callable[[str], SecretResolver],
        options: Options | None = None,
        kserve_namespace: str = KSERVE_NAMESPACE,
        ready_timeout: float = 0.0,
        poll: float = 1.0,
        pipelines: Callable[[PipelineKey], Pipeline] | None = None,
    ) -> None:
        self.api, self.secrets = api, secrets
        self.options = options or Options()
        self.kserve_namespace = kserve_namespace
        self.ready_timeout, self.poll = ready_timeout, poll
        self._pipelines = pipelines or self.read_pipeline

    def problem(self, pipeline: ModelPipeline) -> str | None:
        """What keeps this pipeline from being served on KServe, naming the field: the model
        repository must be S3 (predictor pods read it, not the operator's disk), and the
        cluster must serve InferenceServices (asked again at the operator's next check, so
        installing KServe lets the pipeline go on). An API server that does not answer now is
        no problem of the pipeline's."""
        artifacts = pipeline.spec.artifacts
        problems = rules.storage_problems(artifacts.uri if artifacts else None)
        if problems:
            return "; ".join(str(p) for p in problems)
        try:
            self.api.require(resources.ISVC_GROUP_VERSION, resources.ISVC_PLURAL, KSERVE)
        except TemporaryError:
            return None
        except MlcdError as exc:  # not installed, or the operator may not look
            return f"spec.serving.inferenceService: {exc}"
        return None

    def read_pipeline(self, key: PipelineKey) -> Pipeline:
        """The pipeline's serving spec, from its ModelPipeline."""
        where = path(f"{API_GROUP}/{API_VERSION}", "modelpipelines", key.namespace, key.name)
        found = self.api.get(where, f"reading modelpipeline {key}")
        uid = str(((found or {}).get("metadata") or {}).get("uid") or "")
        if found is None or (key.uid and uid != key.uid):
            raise PermanentError(f"modelpipeline {key} not found")
        spec = found.get("spec") or {}
        serving = Serving.model_validate(spec.get("serving") or {})
        artifacts = spec.get("artifacts")
        return Pipeline(
            namespace=key.namespace,
            name=key.name,
            uid=uid,
            inference_service=serving.inference_service,
            model=serving.name,
            artifacts=StorageLocation.model_validate(artifacts) if artifacts else None,
            routed=needs_rollout(serving.rollout),
        )

    def target(self, key: PipelineKey) -> PipelineServing:
        return PipelineServing(
            self.api,
            self._pipelines(key),
            self.secrets(key.namespace),
            self.options,
            self.kserve_namespace,
            self.ready_timeout,
            self.poll,
        )

    def serve(
        self,
        key: PipelineKey,
        model: str,
        ref: ModelRef,
        model_dir: object = None,
        role: ServingRole = "stable",
        port: int | None = None,
        shadow: bool = False,
    ) -> str:
        """Serves ``ref`` (see :meth:`PipelineServing.serve`), or deploys it as the candidate
        beside the stable predictor (``role``); ``model_dir`` and ``port`` are not used: the
        predictors read the version from the model repository. Shadowing is not supported
        (the router says so)."""
        target = self.target(key)
        if role == "candidate":
            target.deploy_candidate(ref)
            return target.predictor_url(ref) or ""
        return target.serve(ref)

    def url(self, key: PipelineKey, role: ServingRole = "stable") -> str | None:
        view = self.status(key, "", role)
        return view.url

    def prepare(self, key: PipelineKey, model: str, port: int | None = None) -> None:
        """Checks what can be checked before a model exists (the repository is S3, KServe is
        installed) and writes the credentials; nothing is slow to start here."""
        target = self.target(key)
        target.check()
        target.ensure_credentials()

    def abandon(self, key: PipelineKey) -> None:
        """Nothing was started by :meth:`prepare`."""

    def status(self, key: PipelineKey, model: str, role: ServingRole = "stable") -> ServingView:
        target = self.target(key)
        if role == "candidate":
            seen = target.observe()
            ready = seen.candidate is not None and seen.readiness.candidate_ready
            url = target.predictor_url(seen.candidate) if seen.candidate else None
            return ServingView(ready=ready, ref=seen.candidate, url=url)
        return target.view()

    def running(self, key: PipelineKey) -> bool:
        return find_inference_service(self.api, key) is not None

    def stop(self, key: PipelineKey, role: ServingRole | None = None) -> None:
        """Deletes the pipeline's InferenceService and credentials (found by label, so a
        pipeline already deleted is cleaned up too); the candidate alone is rolled back."""
        if role == "candidate":
            self.target(key).rollback()
            return
        isvc = find_inference_service(self.api, key)
        where = None
        if isvc is not None:
            where = path(
                resources.ISVC_GROUP_VERSION,
                resources.ISVC_PLURAL,
                key.namespace,
                isvc["metadata"]["name"],
            )
        delete_owned(self.api, key.namespace, key.name, where)


if TYPE_CHECKING:  # the port, checked by mypy
    _PORT: type[ModelServing] = KServeServing
