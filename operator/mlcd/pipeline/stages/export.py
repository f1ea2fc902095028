"""Export: the model and its lineage as a new immutable version of the model repository."""

from __future__ import annotations

import pathlib

from mlcd.artifacts import open_store
from mlcd.domain.numbers import json_safe
from mlcd.errors import StageFailed
from mlcd.pipeline.context import RunContext


def run(ctx: RunContext, model_dir: str) -> str:
    """Returns the published version."""
    spec = ctx.pipeline.spec
    if spec.artifacts is None:
        raise StageFailed("spec.artifacts is not set and no default was resolved")
    with ctx.stage("export") as outcome:
        validate = ctx.read("validate") or {}
        train = ctx.read("train") or {}
        evaluate = ctx.read("evaluate") or {}
        gate = ctx.read("gate") or {}
        data = validate.get("data", {})
        metadata = {
            "model": spec.serving.name,
            "pipeline": f"{ctx.pipeline.namespace}/{ctx.pipeline.name}",
            "runId": ctx.run_id,
            "trigger": ctx.trigger,
            "params": train.get("params", {}),
            "metrics": evaluate.get("metrics", {}),
            "parity": evaluate.get("parity"),
            "gate": gate.get("verdict"),
            "dataset": {
                "uri": spec.dataset.uri,
                "sha256": data.get("sha256"),
                "version": data.get("version"),
                "samples": data.get("samples"),
                "stats": validate.get("stats"),
            },
            "trainer": {
                "image": spec.trainer.image,
                "command": spec.trainer.command,
                "args": spec.trainer.args,
                "workers": spec.trainer.workers,
            },
            "format": {"platform": "onnxruntime_onnx", "file": "model.onnx"},
        }
        store = open_store(spec.artifacts)
        ref = store.publish(
            spec.serving.name,
            ctx.run_key or ctx.run_id,
            {"model.onnx": pathlib.Path(model_dir) / "model.onnx"},
            json_safe(metadata),
        )
        outcome["model"] = ref.model_dump(by_alias=True)
        ctx.events.emit("exported", version=ref.version, uri=ref.uri, sha256=ref.sha256)
        return ref.version
