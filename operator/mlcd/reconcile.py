"""One reconcile of a ModelPipeline: observe, ask the lifecycle tables, carry out what they say.

Nothing here knows kopf or the Kubernetes client: the resource comes in as a dict, secrets
through a resolver, and the new status goes back to the caller, who writes it. Every side
effect is idempotent (run ids are deterministic, publishing and serving are keyed by them), so
a reconcile interrupted at any line and repeated does nothing twice.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlcd.artifacts import open_dataset, open_store
from mlcd.artifacts.credentials import SecretResolver
from mlcd.domain import lifecycle, schedule
from mlcd.domain.checks import parse_pipeline
from mlcd.domain.gate import judge
from mlcd.domain.lifecycle import Effects, Notice, Seen
from mlcd.domain.records import ModelRef, RunRecord, ServingRecord
from mlcd.domain.spec import ModelPipeline, StorageLocation, duration_seconds
from mlcd.domain.status import CurrentRun, ModelPipelineStatus
from mlcd.errors import MlcdError, PermanentError, SpecError
from mlcd.ports import ModelServing, PipelineBackend, RunRequest

TRIGGER_ANNOTATION = "mlcd.io/trigger"


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Plan:
    """The outcome of one reconcile: the status to write and what to report after."""

    status: ModelPipelineStatus
    notices: list[Notice] = field(default_factory=list)
    finished: list[RunRecord] = field(default_factory=list)
    started: list[CurrentRun] = field(default_factory=list)


@dataclass
class ReconcilerSettings:
    #: Where runs, the default model repository, serving state and secrets live.
    state_dir: pathlib.Path
    #: The engine of pipelines that do not name one.
    default_engine: str = "local"
    #: Runs in progress at once, across every pipeline of this operator.
    max_active_runs: int = 2


class Reconciler:
    def __init__(
        self,
        settings: ReconcilerSettings,
        engines: Mapping[str, PipelineBackend],
        serving: ModelServing,
        secrets: Callable[[str], SecretResolver],
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.serving = serving
        self.secrets = secrets  # namespace -> resolver
        self.clock = clock
        self._polled: dict[str, float] = {}
        self._blocked: dict[str, str] = {}  # pipeline uid -> why its data cannot be checked
        self._parsed: dict[str, tuple[Any, ModelPipeline | None, str | None, float]] = {}
        self._active: dict[str, int] = {}  # pipeline uid -> runs in progress
        self._lock = threading.Lock()

    # -- the whole pass -------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any]) -> Plan:
        now = self.clock()
        meta = body["metadata"]
        uid = str(meta.get("uid") or f"{meta['namespace']}/{meta['name']}")
        status = ModelPipelineStatus.model_validate(body.get("status") or {})
        effects = Effects()
        pipeline, problem = self._checked(uid, body)
        limit = pipeline.spec.history_limit if pipeline else max(len(status.runs), 10)

        previous = {c.type: c for c in status.conditions}
        status = self._observe_runs(body, pipeline, status, now, limit, effects)
        blocked = waiting = None
        if pipeline is not None and problem is None and not meta.get("deletionTimestamp"):
            status, blocked, waiting = self._triggers(body, pipeline, status, now, limit, effects)
        with self._lock:
            self._active[uid] = len(status.active_runs)
        spec = pipeline.spec if pipeline else None
        status = status.model_copy(
            update={
                "phase": lifecycle.phase(status, spec, problem),
                "observed_generation": meta.get("generation"),
                "conditions": lifecycle.conditions(
                    status, problem, meta.get("generation"), now, blocked, waiting
                ),
                "next_schedule_time": self._next(spec, now),
                "last_metric": lifecycle.last_metric(status, spec.gate.metric) if spec else None,
            }
        )
        # A problem is reported once, when it appears or changes, not at every look.
        spec_valid, degraded = previous.get("SpecValid"), previous.get("Degraded")
        if problem and (spec_valid is None or spec_valid.message != problem):
            effects.notices.append(Notice("Warning", "InvalidSpec", problem))
        if blocked and (degraded is None or degraded.message != blocked):
            effects.notices.append(Notice("Warning", "DatasetUnavailable", blocked))
        training = previous.get("Training")
        if waiting and (training is None or training.message != waiting):
            effects.notices.append(Notice("Normal", "WaitingForCapacity", waiting))
        return Plan(
            status=status,
            notices=effects.notices,
            finished=effects.finished,
            started=effects.submit,
        )

    def forget(self, uid: str) -> None:
        with self._lock:
            self._active.pop(uid, None)
            self._polled.pop(uid, None)
            self._blocked.pop(uid, None)
            self._parsed.pop(uid, None)

    # -- parsing and what only the operator can check -----------------------------------

    def _checked(
        self, uid: str, body: Mapping[str, Any]
    ) -> tuple[ModelPipeline | None, str | None]:
        """Parsed once per generation; what the operator checks (secrets) again every 30 s."""
        generation = body["metadata"].get("generation")
        cached = self._parsed.get(uid)
        if cached is not None and cached[0] == generation and cached[3] > time.monotonic():
            return cached[1], cached[2]
        pipeline, problem = self._parse(body)
        if pipeline is not None and problem is None:
            problem = self._operator_problems(pipeline)
        self._parsed[uid] = (generation, pipeline, problem, time.monotonic() + 30.0)
        return pipeline, problem

    @staticmethod
    def _resource(body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        return {
            "apiVersion": body.get("apiVersion", "mlcd.io/v1alpha1"),
            "kind": body.get("kind", "ModelPipeline"),
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": copy.deepcopy(dict(body.get("spec") or {})),
        }

    def _parse(self, body: Mapping[str, Any]) -> tuple[ModelPipeline | None, str | None]:
        try:
            return parse_pipeline(self._resource(body)), None
        except SpecError as exc:
            return None, "; ".join(str(p) for p in exc.problems)

    def _operator_problems(self, pipeline: ModelPipeline) -> str | None:
        engine = pipeline.spec.engine or self.settings.default_engine
        if engine not in self.engines:
            return (
                f"spec.engine: engine {engine!r} is not available in this operator "
                f"(available: {', '.join(sorted(self.engines))})"
            )
        resolve = self.secrets(pipeline.namespace)
        for where, location in (
            ("spec.dataset", pipeline.spec.dataset),
            ("spec.artifacts", pipeline.spec.artifacts),
        ):
            ref = location.credentials_secret_ref if location else None
            if ref is None:
                continue
            try:
                values = resolve(ref.name)
            except PermanentError:
                return (
                    f"{where}.credentialsSecretRef.name: secret {ref.name!r} not found in "
                    f"namespace {pipeline.namespace!r}"
                )
            if not (
                {"accessKey", "AWS_ACCESS_KEY_ID"} & set(values)
                and {"secretKey", "AWS_SECRET_ACCESS_KEY"} & set(values)
            ):
                return (
                    f"{where}.credentialsSecretRef.name: secret {ref.name!r} needs the keys "
                    "accessKey and secretKey"
                )
        uri = pipeline.spec.dataset.uri
        if "://" not in uri and not os.path.isabs(uri):
            return f"spec.dataset.uri: {uri!r} must be s3://bucket/key or an absolute path"
        return None

    # -- runs in progress ------------------------------------------------------------------

    def _engine(self, run: CurrentRun) -> PipelineBackend:
        return self.engines.get(run.engine) or self.engines[self.settings.default_engine]

    def _observe_runs(
        self,
        body: Mapping[str, Any],
        pipeline: ModelPipeline | None,
        status: ModelPipelineStatus,
        now: dt.datetime,
        limit: int,
        effects: Effects,
    ) -> ModelPipelineStatus:
        deleting = bool(body["metadata"].get("deletionTimestamp"))
        for run in list(status.active_runs):
            engine = self._engine(run)
            if deleting:
                status = lifecycle.advance(
                    status,
                    run,
                    Seen.CANCELLED,
                    None,
                    now,
                    limit,
                    effects,
                    reason="the pipeline was deleted",
                )
                continue
            record = engine.get(run.id, run.attempt)
            seen = lifecycle.classify(run, record)
            status = lifecycle.advance(status, run, seen, record, now, limit, effects)
        for run in [r for r in status.active_runs if r in effects.resubmit]:
            self._submit(body, pipeline, run, status)
        effects.resubmit.clear()
        while effects.promote:
            run_id, ref = effects.promote.pop(0)
            run = next(r for r in status.active_runs if r.id == run_id)
            record = self._engine(run).get(run.id, run.attempt)
            seen, reason, serving = self._promote(body, pipeline, run, record, ref, status)
            status = lifecycle.advance(
                status, run, seen, record, now, limit, effects, reason=reason, serving=serving
            )
        self._cancel(effects)
        self._forget_secrets(body, effects)
        return status

    def _cancel(self, effects: Effects) -> None:
        for run in effects.cancel:
            self._engine(run).cancel(run.id, run.attempt)
        effects.cancel.clear()

    def _forget_secrets(self, body: Mapping[str, Any], effects: Effects) -> None:
        for record in effects.finished:
            folder = self.settings.state_dir / "secrets" / body["metadata"]["namespace"] / record.id
            shutil.rmtree(folder, ignore_errors=True)

    def _promote(
        self,
        body: Mapping[str, Any],
        pipeline: ModelPipeline | None,
        run: CurrentRun,
        record: RunRecord | None,
        ref: ModelRef,
        status: ModelPipelineStatus,
    ) -> tuple[Seen, str | None, ServingRecord | None]:
        resource = self._run_resource(run) or self._resource(body)
        snapshot = parse_pipeline(resource)
        serving = status.serving
        if record is not None and serving is not None and serving.version != ref.version:
            judged_against = record.gate.baseline_version if record.gate else None
            if judged_against != serving.version:
                # Another model started serving since this run was judged: judge again.
                verdict = judge(
                    snapshot.spec.gate, record.metrics, serving.metrics, serving.version
                )
                if not verdict.passed:
                    return Seen.SUPERSEDED, f"superseded: {verdict.reason}", None
        model = snapshot.spec.serving.name
        key = f"{snapshot.namespace}.{snapshot.name}"
        try:
            store = open_store(self._artifacts(snapshot), self.secrets(snapshot.namespace))
            cache = self.settings.state_dir / "serving" / key / "versions"
            model_dir = store.fetch(model, ref.version, cache)
            url = self.serving.serve(model, ref, model_dir, key=key)
        except (MlcdError, OSError) as exc:
            return Seen.SERVE_FAILED, str(exc), None
        return (
            Seen.SERVED,
            None,
            ServingRecord(
                model=model,
                version=ref.version,
                uri=ref.uri,
                sha256=ref.sha256,
                url=url,
                run=run.id,
                metrics=record.metrics if record else {},
            ),
        )

    def _run_resource(self, run: CurrentRun) -> dict[str, Any] | None:
        return self._engine(run).resource(run.id, run.attempt)

    def _artifacts(self, pipeline: ModelPipeline) -> StorageLocation:
        return pipeline.spec.artifacts or StorageLocation(
            uri=str(self.settings.state_dir / "models" / pipeline.namespace)
        )

    # -- triggers ------------------------------------------------------------------------

    def _slots(self, uid: str) -> int:
        with self._lock:
            busy = sum(n for key, n in self._active.items() if key != uid)
        return self.settings.max_active_runs - busy

    def _triggers(
        self,
        body: Mapping[str, Any],
        pipeline: ModelPipeline,
        status: ModelPipelineStatus,
        now: dt.datetime,
        limit: int,
        effects: Effects,
    ) -> tuple[ModelPipelineStatus, str | None, str | None]:
        """Starts what is due; also says why new data could not be checked and which run
        waits for capacity, if so."""
        spec = pipeline.spec
        meta = body["metadata"]
        uid = str(meta.get("uid") or f"{pipeline.namespace}/{pipeline.name}")
        blocked = waiting = None
        wanted: list[tuple[lifecycle.TriggerKind, str, dict[str, Any]]] = []
        annotation = (meta.get("annotations") or {}).get(TRIGGER_ANNOTATION)
        if annotation and annotation != status.handled_trigger:
            run = lifecycle.trigger_run_id(pipeline.name, "manual", annotation)
            wanted.append(("manual", run, {"handled_trigger": annotation}))
        version = None
        if spec.triggers.new_data and not spec.suspend and self._poll_due(uid, spec):
            try:
                version = open_dataset(spec.dataset, self.secrets(pipeline.namespace)).version()
            except MlcdError as exc:
                blocked = f"spec.dataset.uri: {exc}"
                self._blocked[uid] = blocked
            else:
                self._blocked.pop(uid, None)
            self._parsed.pop(uid, None)
        elif spec.triggers.new_data:
            blocked = self._blocked.get(uid)  # between polls, the last answer stands
        if version is not None and version != status.dataset_version:
            run = lifecycle.trigger_run_id(pipeline.name, "new-data", version)
            wanted.append(("new-data", run, {"dataset_version": version}))
        if spec.schedule and not spec.suspend:
            created = parse_time(meta.get("creationTimestamp")) or now
            last = parse_time(status.last_schedule_time) or created
            due = schedule.due(
                spec.schedule, now, last, spec.time_zone, spec.starting_deadline_seconds
            )
            if due.time is not None and due.too_late:
                status = status.model_copy(update={"last_schedule_time": iso(due.time)})
                effects.notices.append(
                    Notice(
                        "Warning",
                        "MissedSchedule",
                        f"run due at {iso(due.time)} missed its starting deadline of "
                        f"{spec.starting_deadline_seconds}s",
                    )
                )
            elif due.time is not None:
                run = lifecycle.trigger_run_id(pipeline.name, "schedule", due.time)
                wanted.append(("schedule", run, {"last_schedule_time": iso(due.time)}))
        for kind, run_id, consumed in wanted:
            if any(r.id == run_id for r in status.active_runs) or any(
                r.id == run_id for r in status.runs
            ):
                status = status.model_copy(update=consumed)  # started before a crash
                continue
            outcome = lifecycle.trigger(kind, bool(status.active_runs), spec.concurrency_policy)
            if outcome in ("start", "replace") and self._slots(uid) <= (
                0 if outcome == "start" else -len(status.active_runs)
            ):
                waiting = (
                    f"{kind} run {run_id} waits: this operator runs "
                    f"{self.settings.max_active_runs} runs at most"
                )
                continue
            if outcome == "skip":
                status = status.model_copy(update=consumed)
                effects.notices.append(
                    Notice(
                        "Normal",
                        "RunSkipped",
                        f"{kind} run {run_id} skipped: a run is active (concurrencyPolicy Forbid)",
                    )
                )
                continue
            if outcome == "defer":
                continue
            if outcome == "replace":
                for active in list(status.active_runs):
                    status = lifecycle.advance(
                        status,
                        active,
                        Seen.CANCELLED,
                        None,
                        now,
                        limit,
                        effects,
                        reason=f"replaced by run {run_id}",
                    )
                self._cancel(effects)
            new_run = CurrentRun(
                id=run_id,
                trigger=kind,
                started_at=iso(now),
                engine=spec.engine or self.settings.default_engine,
            )
            self._submit(body, pipeline, new_run, status)
            effects.submit.append(new_run)
            effects.notices.append(Notice("Normal", "RunStarted", f"{kind} run {run_id} started"))
            status = status.model_copy(
                update={**consumed, "active_runs": [*status.active_runs, new_run]}
            )
            with self._lock:
                self._active[uid] = len(status.active_runs)
        return status, blocked, waiting

    def _poll_due(self, uid: str, spec: Any) -> bool:
        interval = duration_seconds(spec.triggers.poll_interval)
        last = self._polled.get(uid)
        now = time.monotonic()
        if last is not None and now - last < interval:
            return False
        self._polled[uid] = now
        return True

    def _next(self, spec: Any, now: dt.datetime) -> str | None:
        if spec is None or not spec.schedule or spec.suspend:
            return None
        return iso(schedule.next_after(spec.schedule, now, spec.time_zone))

    # -- submitting ----------------------------------------------------------------------

    def _submit(
        self,
        body: Mapping[str, Any],
        pipeline: ModelPipeline | None,
        run: CurrentRun,
        status: ModelPipelineStatus,
    ) -> None:
        if pipeline is None:
            return
        resource = self._resource(body)
        if not resource["spec"].get("artifacts"):
            resource["spec"]["artifacts"] = {"uri": self._artifacts(pipeline).uri}
        baseline = None
        if status.serving is not None:
            store = open_store(self._artifacts(pipeline), self.secrets(pipeline.namespace))
            meta = store.metadata(pipeline.spec.serving.name, status.serving.version) or {}
            baseline = {
                "version": status.serving.version,
                "metrics": meta.get("metrics") or status.serving.metrics,
                "data_stats": (meta.get("dataset") or {}).get("stats"),
            }
        env = {"MLCD_SECRETS_DIR": str(self._materialize_secrets(pipeline, run))}
        self._engine(run).submit(
            RunRequest(
                run_id=run.id,
                trigger=run.trigger,
                spec=resource,
                name=pipeline.name,
                namespace=pipeline.namespace,
                base_dir=str(self.settings.state_dir),
                baseline=baseline,
                attempt=run.attempt,
                env=env,
            )
        )

    def _materialize_secrets(self, pipeline: ModelPipeline, run: CurrentRun) -> pathlib.Path:
        """Referenced secrets as files only the run can read, the layout of a mounted Secret."""
        folder = self.settings.state_dir / "secrets" / pipeline.namespace / run.id
        resolve = self.secrets(pipeline.namespace)
        for location in (pipeline.spec.dataset, pipeline.spec.artifacts):
            ref = location.credentials_secret_ref if location else None
            if ref is None:
                continue
            target = folder / ref.name
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder.chmod(0o700)
            for key, value in resolve(ref.name).items():
                path = target / key
                path.touch(mode=0o600)
                path.write_text(value)
        return folder

    def cleanup(self, body: Mapping[str, Any]) -> None:
        """The pipeline is gone: stop its runs and its serving; artifacts stay."""
        meta = body["metadata"]
        status = ModelPipelineStatus.model_validate(body.get("status") or {})
        for run in status.active_runs:
            # Every attempt: a retry may have started after the status was last written.
            for attempt in range(1, lifecycle.MAX_ATTEMPTS + 1):
                self._engine(run).cancel(run.id, attempt)
        self.serving.stop(f"{meta['namespace']}.{meta['name']}")
        folder = self.settings.state_dir / "secrets" / meta["namespace"]
        for run_folder in folder.glob(f"{meta['name']}-*"):
            shutil.rmtree(run_folder, ignore_errors=True)
        self.forget(str(meta.get("uid") or f"{meta['namespace']}/{meta['name']}"))
