"""The pipeline backend port on Kubeflow Pipelines.

Runs are found by their KFP display name, derived from the namespace, pipeline, run id and
attempt, and looked up before each submit: the engine keeps no state of its own, and an
operator restarted at any line submits nothing twice. The run's result is assembled from the
stage records its steps keep in the artifact store (:mod:`mlcd.pipeline.kubeflow.runfiles`)."""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from mlcd.artifacts.credentials import SecretResolver
from mlcd.domain.records import STAGES, RunRecord, Stage
from mlcd.domain.spec import StorageLocation
from mlcd.engines.kubeflow.settings import KubeflowSettings
from mlcd.errors import MlcdError, PermanentError, TemporaryError
from mlcd.pipeline.context import Baseline, RunContext
from mlcd.pipeline.kubeflow.names import (
    kfp_experiment_name,
    kfp_run_name,
    pipeline_folder,
    run_folder,
)
from mlcd.pipeline.kubeflow.runfiles import CURRENT, RunFiles
from mlcd.pipeline.kubeflow.settings import ClusterSteps
from mlcd.pipeline.outcome import assemble
from mlcd.ports import PipelineKey, RunKey, RunRequest

T = TypeVar("T")
LOG = logging.getLogger("mlcd.kubeflow")

#: KFP run states (v2beta1 RuntimeState) in which the run is still going.
ACTIVE = ("PENDING", "RUNNING", "PAUSED", "CANCELING", "RUNTIME_STATE_UNSPECIFIED", None)
NamespaceSecrets = Callable[[str], SecretResolver]


class KubeflowEngine:
    """Implements the pipeline backend port with ``kfp.Client``."""

    def __init__(
        self,
        settings: KubeflowSettings,
        secrets: NamespaceSecrets | None = None,
    ) -> None:
        if not settings.endpoint:
            raise PermanentError("MLCD_KFP_ENDPOINT: the KFP API endpoint is not set")
        self.settings = settings
        self.secrets = secrets
        self._client: Any = None
        self._lock = threading.Lock()
        self._package: pathlib.Path | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="mlcd-kfp-")

    # -- the KFP API -----------------------------------------------------------------------
    def _token(self) -> str | None:
        ref = self.settings.token_secret
        if ref is None:
            return None
        if self.secrets is None:
            raise PermanentError(f"MLCD_KFP_TOKEN_SECRET: no way to read Secret {ref}")
        try:
            values = self.secrets(ref.namespace)(ref.name)
        except PermanentError as exc:
            raise PermanentError(
                f"MLCD_KFP_TOKEN_SECRET: Secret {ref.namespace}/{ref.name} for the KFP API "
                f"cannot be read: {exc}"
            ) from exc
        if ref.key not in values:
            raise PermanentError(
                f"MLCD_KFP_TOKEN_SECRET: Secret {ref.namespace}/{ref.name} has no key {ref.key}"
            )
        return values[ref.key]

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import kfp

                token = self._token()

                def connect() -> Any:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FutureWarning)  # "works with KFP 2.0+"
                        return kfp.Client(
                            host=self.settings.endpoint,
                            namespace=self.settings.namespace,
                            existing_token=token,
                        )

                self._client = self._call("connecting", connect)
            return self._client

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Retries what may pass later (no answer, 5xx) with doubling pauses; a refusal
        (4xx) is permanent and names what KFP said."""
        import kfp_server_api
        import urllib3

        pause = self.settings.backoff_seconds
        last = ""
        for attempt in range(1, self.settings.attempts + 1):
            try:
                return fn()
            except kfp_server_api.ApiException as exc:
                if exc.status and 400 <= exc.status < 500 and exc.status not in (408, 429):
                    raise PermanentError(
                        f"KFP API refused {what}: {exc.status} {_said(exc)}"
                    ) from exc
                last = f"{exc.status or 'no answer'} {_said(exc)}".strip()
            except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError) as exc:
                last = f"unreachable ({type(exc).__name__})"
            if attempt < self.settings.attempts:
                LOG.info("KFP API %s: %s; retrying in %.1f s", what, last, pause)
                time.sleep(pause)
                pause *= 2
        raise TemporaryError(
            f"KFP API at {self.settings.endpoint}: {what} failed {self.settings.attempts} "
            f"times: {last}",
            delay=30.0,
        )

    def _runs(self, what: str, operation: str, value: str) -> list[Any]:
        """KFP runs whose display name equals (``EQUALS``) or contains (``IS_SUBSTRING``)
        ``value``, every page."""
        client = self.client()
        query = json.dumps(
            {"predicates": [{"key": "display_name", "operation": operation, "string_value": value}]}
        )
        found: list[Any] = []
        token = ""
        while True:
            page = self._call(
                what,
                lambda token=token: client.list_runs(  # type: ignore[misc]
                    page_token=token,
                    page_size=100,
                    namespace=self.settings.namespace,
                    filter=query,
                ),
            )
            found.extend(page.runs or [])
            token = page.next_page_token or ""
            if not token:
                return found

    def _find(self, key: RunKey) -> Any:
        """The KFP run of this key (namespace, pipeline and uid, run, attempt), or None."""
        name = _name(key)
        runs = self._runs(f"looking up run {key.run}", "EQUALS", name)
        return next((r for r in runs if r.display_name == name), None)

    def _experiment_id(self, namespace: str) -> str:
        client = self.client()
        name = kfp_experiment_name(namespace)
        query = json.dumps(
            {"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]}
        )

        def find() -> str | None:
            page = self._call(
                f"looking up experiment {name}",
                lambda: client.list_experiments(namespace=self.settings.namespace, filter=query),
            )
            found = [e for e in page.experiments or [] if e.display_name == name]
            return str(found[0].experiment_id) if found else None

        existing = find()
        if existing is not None:
            return existing
        try:
            created = self._call(
                f"creating experiment {name}",
                lambda: client.create_experiment(
                    name,
                    description=f"mlcd runs of namespace {namespace}",
                    namespace=self.settings.namespace,
                ),
            )
        except PermanentError:
            # Created meanwhile (another submit, or a lost answer): use that one.
            existing = find()
            if existing is None:
                raise
            return existing
        return str(created.experiment_id)

    def package(self) -> pathlib.Path:
        """The pipeline's IR, compiled once: the same definition the local engine runs."""
        with self._lock:
            if self._package is None:
                from mlcd.pipeline.definition import compile_to

                self._package = compile_to(pathlib.Path(self._folder.name) / "pipeline.yaml")
            return self._package

    # -- the port --------------------------------------------------------------------------
    def submit(self, request: RunRequest) -> None:
        key = request.key
        if self._find(key) is not None:
            return
        folder = run_folder(key.run, key.attempt)
        name = _name(key)
        context = RunContext(
            run_id=key.run,
            run_key=key.token,
            trigger=request.trigger,
            resource=request.spec,
            run_dir=folder,
            baseline=Baseline.model_validate(request.baseline) if request.baseline else None,
        )
        steps = ClusterSteps(
            attempt=key.attempt,
            training=self.settings.training,
            runtime=self.settings.runtime,
            service_account=self.settings.service_account or None,
            pod_annotations=dict(self.settings.pod_annotations),
            pod_template=dict(self.settings.pod_template),
            poll_seconds=self.settings.poll_seconds,
            kubeconfig=self.settings.steps_kubeconfig or None,
        )
        experiment = self._experiment_id(key.pipeline.namespace)
        package = str(self.package())
        client = self.client()

        def create() -> Any:
            # A create whose answer was lost may have been made: look again before each try.
            if self._find(key) is not None:
                return None
            with contextlib.redirect_stdout(None):  # kfp prints the run's link
                return client.run_pipeline(
                    experiment_id=experiment,
                    job_name=name,
                    pipeline_package_path=package,
                    params={
                        "context": context.model_dump_json(),
                        "engine": steps.model_dump_json(),
                    },
                )

        self._call(f"creating run {name}", create)

    def get(self, key: RunKey) -> RunRecord | None:
        run = self._find(key)
        if run is None:
            return None
        run_id = key.run
        ctx = _context(run)
        files = self._files(ctx, key.attempt)
        current = files.get_json(CURRENT) or {} if files else {}
        children = {"kfpRun": str(run.run_id)}
        started = _iso(run.created_at)
        state = str(run.state) if run.state is not None else None
        if state in ACTIVE:
            stage: Stage = next((s for s in STAGES if s == current.get("stage")), "validate")
            children.update(current.get("children") or {})
            return RunRecord(
                id=run_id,
                trigger=ctx.trigger,
                result="running",
                stage=stage,
                started_at=started,
                children=children,
            )
        with tempfile.TemporaryDirectory(prefix="mlcd-kfp-run-") as tmp:
            folder = pathlib.Path(tmp)
            for stage in STAGES:
                data = files.get(f"stages/{stage}.json") if files else None
                if data is not None:
                    (folder / "stages").mkdir(exist_ok=True)
                    (folder / "stages" / f"{stage}.json").write_bytes(data)
                    children.update(json.loads(data).get("children") or {})
            record = assemble(folder, run_id, ctx.trigger, started)
        update: dict[str, Any] = {"children": children}
        if state == "CANCELED" and record.result in ("running", "failed"):
            update.update(result="cancelled", reason=f"cancelled during {record.stage}")
        elif state == "FAILED" and record.result == "running" and record.model is None:
            message = getattr(run.error, "message", None) if run.error else None
            update.update(
                result="failed", reason=f"KFP run {run.run_id} failed: {message or 'no reason'}"
            )
        if not record.finished_at:
            update["finished_at"] = _iso(run.finished_at)
        return record.model_copy(update=update)

    def resource(self, key: RunKey) -> dict[str, Any] | None:
        run = self._find(key)
        return _context(run).resource if run is not None else None

    def cancel(self, key: RunKey) -> None:
        run = self._find(key)
        if run is None or str(run.state) not in ACTIVE:
            return
        client = self.client()
        self._call(f"terminating run {run.run_id}", lambda: client.terminate_run(run.run_id))

    def live(self, pipeline: PipelineKey) -> list[str]:
        prefix = kfp_run_name(pipeline.namespace, pipeline.folder, "", 1)
        runs = self._runs(f"listing the runs of {pipeline}", "IS_SUBSTRING", prefix)
        return sorted(
            {
                str(r.display_name)[len(prefix) :].split(".attempt-")[0]
                for r in runs
                if str(r.display_name or "").startswith(prefix)
                and (str(r.state) if r.state is not None else None) in ACTIVE
            }
        )

    def finalize(self, key: RunKey, record: RunRecord) -> None:
        """Nothing to add: the run's steps keep their records in the artifact store."""

    def close(self) -> None:
        self._folder.cleanup()

    # -- helpers ---------------------------------------------------------------------------
    def _files(self, ctx: RunContext, attempt: int) -> RunFiles | None:
        spec = ctx.resource.get("spec") or {}
        meta = ctx.resource.get("metadata") or {}
        if not spec.get("artifacts"):
            return None
        location = StorageLocation.model_validate(spec["artifacts"])
        namespace = str(meta.get("namespace"))
        resolver = self.secrets(namespace) if self.secrets else None
        folder = run_folder(ctx.run_id, attempt)
        return RunFiles(location, namespace, pipeline_folder(meta), folder, resolver)


def _name(key: RunKey) -> str:
    return kfp_run_name(key.pipeline.namespace, key.pipeline.folder, key.run, key.attempt)


def _context(run: Any) -> RunContext:
    params: Mapping[str, Any] = (run.runtime_config.parameters or {}) if run.runtime_config else {}
    try:
        return RunContext.parse(str(params["context"]))
    except (KeyError, ValueError) as exc:
        raise MlcdError(f"KFP run {run.run_id} has no mlcd context parameter") from exc


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        return str(value.isoformat(timespec="seconds")).replace("+00:00", "Z")
    return str(value)


def _said(exc: Any) -> str:
    try:
        body = json.loads(exc.body)
        return str(body.get("message") or body.get("error") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or "")
