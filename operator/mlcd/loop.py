"""The loop on one machine: start a run on the local engine, follow it, serve what passed.

A rejected or failed run never touches what is serving; a promoted one is served only after
its sha256 is verified."""

from __future__ import annotations

import copy
import datetime as dt
import fcntl
import os
import pathlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlcd.artifacts import open_store
from mlcd.domain.records import RunRecord, ServingRecord
from mlcd.domain.spec import ModelPipeline, StorageLocation
from mlcd.domain.versions import run_id as make_run_id
from mlcd.engines.local import LocalEngine
from mlcd.errors import MlcdError
from mlcd.pipeline.context import read_stages
from mlcd.ports import RunRequest
from mlcd.report.html import build as build_report
from mlcd.serving.local import LocalServing
from mlcd.settings import LocalSettings
from mlcd.state import PipelineState


class Busy(MlcdError):
    """Another run of the same pipeline is in progress on this machine."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def resolve_locations(
    resource: dict[str, Any], spec_dir: pathlib.Path, default_models: pathlib.Path
) -> dict[str, Any]:
    """Relative paths are relative to the spec file; without ``spec.artifacts`` models go to
    the local model repository."""
    out = copy.deepcopy(resource)
    spec = out["spec"]

    def absolute(uri: str) -> str:
        if "://" in uri or os.path.isabs(uri):
            return uri
        return str((spec_dir / uri).resolve())

    spec["dataset"]["uri"] = absolute(spec["dataset"]["uri"])
    if spec.get("artifacts"):
        spec["artifacts"]["uri"] = absolute(spec["artifacts"]["uri"])
    else:
        spec["artifacts"] = {"uri": str(default_models)}
    return out


class LocalLoop:
    def __init__(self, settings: LocalSettings) -> None:
        self.settings = settings
        self.engine = LocalEngine(settings.home)
        self.serving = LocalServing(
            settings.home, port=settings.serving_port, ready_timeout=settings.serving_ready_timeout
        )

    def folder(self, pipeline: ModelPipeline) -> pathlib.Path:
        return self.settings.pipeline_dir(pipeline.namespace, pipeline.name)

    def state(self, pipeline: ModelPipeline) -> PipelineState:
        return PipelineState.load(self.folder(pipeline))

    @contextmanager
    def exclusive(self, pipeline: ModelPipeline) -> Iterator[None]:
        folder = self.folder(pipeline)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(
                    f"another run of {pipeline.name} is in progress on this machine"
                ) from None
            yield

    def baseline(self, pipeline: ModelPipeline, state: PipelineState) -> dict[str, Any] | None:
        serving = state.serving
        if serving is None:
            return None
        store = open_store(self._artifacts(pipeline))
        meta = store.metadata(pipeline.spec.serving.name, serving.version) or {}
        return {
            "version": serving.version,
            "metrics": meta.get("metrics") or serving.metrics,
            "data_stats": (meta.get("dataset") or {}).get("stats"),
        }

    def _artifacts(self, pipeline: ModelPipeline) -> StorageLocation:
        return pipeline.spec.artifacts or StorageLocation(uri=str(self.settings.models))

    def start(
        self, pipeline: ModelPipeline, resource: dict[str, Any], trigger: str = "manual"
    ) -> str:
        state = self.state(pipeline)
        base = make_run_id(pipeline.name, trigger, now())
        run, n = base, 1
        while self.engine.find(run) is not None:  # two manual runs within one second
            n += 1
            run = f"{base}-{n}"
        request = RunRequest(
            run_id=run,
            trigger=trigger,
            spec=resource,
            name=pipeline.name,
            namespace=pipeline.namespace,
            base_dir=str(self.folder(pipeline)),
            baseline=self.baseline(pipeline, state),
        )
        self.engine.submit(request)
        record = RunRecord(id=run, trigger=trigger, started_at=now().isoformat(timespec="seconds"))
        state.with_run(record, pipeline.spec.history_limit).save(self.folder(pipeline))
        return run

    def prepare_serving(self, pipeline: ModelPipeline) -> None:
        """Starts the model server ahead of need, so that it has loaded its libraries by the
        time a model passes the gate. Called when evaluation starts: tuning and training keep
        every core busy, evaluation leaves one free."""
        self.serving.prepare(pipeline.spec.serving.name)

    def finish(self, pipeline: ModelPipeline, record: RunRecord) -> RunRecord:
        """Serves an exported model, records the run, and rewrites its report."""
        state = self.state(pipeline)
        if record.result == "running" and record.stage == "serve" and record.model is not None:
            record, serving = self._serve(pipeline, record)
            if serving is not None:
                state = state.model_copy(update={"serving": serving})
        if record.result != "promoted":
            self.serving.abandon(pipeline.spec.serving.name)
        if record.finished_at is None or record.result != "running":
            record = record.model_copy(update={"finished_at": now().isoformat(timespec="seconds")})
        state = state.with_run(record, pipeline.spec.history_limit)
        if record.data and record.data.version:
            state = state.model_copy(update={"dataset_version": record.data.version})
        state.save(self.folder(pipeline))
        self._write_report(pipeline, record)
        return record

    def _serve(
        self, pipeline: ModelPipeline, record: RunRecord
    ) -> tuple[RunRecord, ServingRecord | None]:
        assert record.model is not None
        model = pipeline.spec.serving.name
        try:
            store = open_store(self._artifacts(pipeline))
            cache = self.settings.home / "serving" / model / "versions"
            model_dir = store.fetch(model, record.model.version, cache)
            url = self.serving.serve(model, record.model, model_dir)
        except (MlcdError, OSError) as exc:
            return record.model_copy(
                update={"result": "failed", "stage": "serve", "reason": f"serving: {exc}"}
            ), None
        serving = ServingRecord(
            model=model,
            version=record.model.version,
            uri=record.model.uri,
            sha256=record.model.sha256,
            url=url,
            run=record.id,
            metrics=record.metrics,
        )
        return record.model_copy(
            update={
                "result": "promoted",
                "stage": "done",
                "reason": record.gate.reason if record.gate else None,
            }
        ), serving

    def _write_report(self, pipeline: ModelPipeline, record: RunRecord) -> None:
        folder = self.engine.find(record.id)
        if folder is None:
            return
        page = build_report(
            read_stages(folder),
            f"Run {record.id} of {pipeline.namespace}/{pipeline.name}",
            record.model_dump(by_alias=True),
        )
        (folder / "report.html").write_text(page)

    def report_path(self, run_id: str) -> pathlib.Path | None:
        folder = self.engine.find(run_id)
        return folder / "report.html" if folder else None
