"""A run's result, assembled from the records its stages kept."""

from __future__ import annotations

import pathlib
from typing import Any

from mlcd.domain.records import STAGES, DataReport, GateVerdict, ModelRef, RunRecord, Stage
from mlcd.pipeline.context import read_stage


def assemble(
    run_dir: pathlib.Path, run_id: str, trigger: str, started_at: str | None = None
) -> RunRecord:
    records: dict[Stage, dict[str, Any]] = {}
    for stage in STAGES:
        record = read_stage(run_dir, stage)
        if record is not None:
            records[stage] = record
    fields: dict[str, Any] = {"id": run_id, "trigger": trigger, "started_at": started_at}
    fields["timings"] = {s: float(r.get("seconds", 0.0)) for s, r in records.items()}
    if "validate" in records and records["validate"].get("data"):
        fields["data"] = DataReport.model_validate(records["validate"]["data"])
    if "train" in records:
        fields["params"] = records["train"].get("params") or {}
    if "evaluate" in records and records["evaluate"].get("metrics"):
        fields["metrics"] = records["evaluate"]["metrics"]
    if "gate" in records and records["gate"].get("verdict"):
        fields["gate"] = GateVerdict.model_validate(records["gate"]["verdict"])
    if "export" in records and records["export"].get("model"):
        fields["model"] = ModelRef.model_validate(records["export"]["model"])
    finished = [str(r["finishedAt"]) for r in records.values() if r.get("finishedAt")]
    fields["finished_at"] = max(finished) if finished else None

    for stage, record in records.items():
        status = record.get("status")
        if status == "failed":
            return RunRecord(result="failed", stage=stage, reason=record.get("reason"), **fields)
        if status == "rejected":
            return RunRecord(result="rejected", stage=stage, reason=record.get("reason"), **fields)
    if "model" in fields:
        # Exported: serving it is the loop's step, not the pipeline's.
        return RunRecord(result="exported", stage="serve", **fields)
    last: Stage = next((s for s in reversed(STAGES) if s in records), "validate")
    return RunRecord(
        result="failed",
        stage=last,
        reason=f"the pipeline stopped after {last} without a result",
        **fields,
    )
