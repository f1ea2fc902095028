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
from typing import Any

from mlcd.artifacts.credentials import SecretResolver, s3_keys
from mlcd.domain import kserve as rules
from mlcd.domain.records import ModelRef
from mlcd.errors import MlcdError, PermanentError, SpecError, TemporaryError
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


class KServeServing:
    """Implements the serving port for one pipeline (the port's ``key`` is the pipeline's)."""

    def __init__(
        self,
        api: KubeAPI,
        pipeline: Pipeline,
        secrets: SecretResolver,
        options: Options | None = None,
        kserve_namespace: str = KSERVE_NAMESPACE,
        ready_timeout: float = 300.0,
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

    def wait(self, done: Callable[[Observation], bool], what: str) -> Observation:
        """Polls until ``done``; raises :class:`NotReady` with KServe's reason after the timeout."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            seen = self.observe()
            if done(seen):
                return seen
            if time.monotonic() >= deadline:
                why = seen.readiness
                raise NotReady(
                    f"{self._name}: {what} not ready after {self.ready_timeout:.0f} s: "
                    f"{why.reason}: {why.message}",
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

    # -- the serving port ------------------------------------------------------------------------
    def prepare(self, model: str, key: str | None = None) -> None:
        """Checks what can be checked before a model exists; nothing is slow to start here."""
        self.check()
        self.ensure_credentials()

    def abandon(self, key: str) -> None:
        """Nothing was started by :meth:`prepare`."""

    def serve(
        self, model: str, ref: ModelRef, model_dir: object = None, key: str | None = None
    ) -> str:
        """Serves ``ref`` and returns the InferenceService's URL once KServe reports it ready.

        The model is read by KServe's storage initializer from the repository, and the runtime
        checks it against ``ref.sha256``; ``model_dir`` is not used. Replacing a served version
        goes through a canary (up, ready) and its promotion, so no request finds nothing."""
        seen = self.observe()
        if seen.exists and seen.stable == ref and seen.candidate is None and seen.readiness.ready:
            return seen.url or ""
        if not seen.exists or seen.stable is None or seen.mode == "Knative":
            self.apply(ref)
        else:
            if seen.stable != ref:
                self.apply(seen.stable, ref, 0)
                self.wait(lambda o: o.readiness.candidate_ready, f"version {ref.version}")
            self.apply(ref)
        done = self.wait(
            lambda o: o.stable == ref and o.candidate is None and o.readiness.ready,
            f"version {ref.version}",
        )
        return done.url or ""

    def current(self, key: str | None = None) -> ModelRef | None:
        seen = self.observe()
        return seen.stable if seen.readiness.ready else None

    def stop(self, key: str | None = None) -> None:
        """Deletes the InferenceService (KServe removes its predictors) and the credentials."""
        secret, account = resources.storage_names(self.pipeline)
        ns = self.pipeline.namespace
        self.api.delete(self._isvc_path, f"deleting {self._name}")
        self.api.delete(path("v1", "secrets", ns, secret), f"deleting secret {ns}/{secret}")
        self.api.delete(
            path("v1", "serviceaccounts", ns, account), f"deleting serviceaccount {ns}/{account}"
        )
