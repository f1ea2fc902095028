"""The pipeline kfp.local runs compiles, unchanged, to a valid KFP IR package."""

from __future__ import annotations

import yaml
from kfp import components
from kfp.pipeline_spec import pipeline_spec_pb2

from mlcd.pipeline.definition import compile_to

STAGE_COMPONENTS = {"validate-data", "tune", "train", "evaluate", "gate", "export", "report"}


def test_compiles_to_an_ir_package_with_every_stage(tmp_path):
    path = compile_to(tmp_path / "pipeline.yaml")
    ir = yaml.safe_load(path.read_text())
    assert ir["pipelineInfo"]["name"] == "mlcd-training"
    assert ir["sdkVersion"].startswith("kfp-")
    assert set(ir["deploymentSpec"]["executors"]) == {f"exec-{c}" for c in STAGE_COMPONENTS}
    # The package parses as the PipelineSpec protobuf the KFP API server accepts.
    spec = pipeline_spec_pb2.PipelineSpec()
    from google.protobuf import json_format

    json_format.ParseDict(ir, spec)
    root = spec.root.dag.tasks
    assert "exit-handler-1" in root and "report" in root
    assert root["report"].trigger_policy.strategy == (
        pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED
    )
    text = path.read_text()
    assert "data-valid" in text and "gate-passed" in text
    evaluate = ir["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert evaluate["classification"]["artifactType"]["schemaTitle"] == (
        "system.ClassificationMetrics"
    )
    assert evaluate["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    for executor in ir["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"].startswith("ghcr.io/mlcd-io/mlcd:")
    # And it loads back as a component, as a user of the KFP SDK would load it.
    loaded = components.load_component_from_file(str(path))
    assert loaded.name == "mlcd-training"
