"""Tune on Kubeflow: a Katib Experiment from ``spec.tuning``; waits on its conditions and
reads ``status.currentOptimalTrial``."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

from mlcd.domain.datacheck import holdout_split
from mlcd.errors import StageFailed
from mlcd.pipeline.context import RunContext
from mlcd.pipeline.kubeflow import objects
from mlcd.pipeline.kubeflow.kube import EXPERIMENT, Kube
from mlcd.pipeline.kubeflow.names import child_name
from mlcd.pipeline.kubeflow.runfiles import RunFiles
from mlcd.pipeline.kubeflow.settings import ClusterSteps
from mlcd.pipeline.kubeflow.wait import condition, until
from mlcd.pipeline.stages import load_npz, save_npz


def _finished(obj: Mapping[str, Any]) -> bool:
    return bool(condition(obj, "Succeeded") or condition(obj, "Failed"))


def run(ctx: RunContext, cluster: ClusterSteps, files: RunFiles, train_path: str) -> str:
    """Returns the best parameters as JSON (``{}`` when the spec has no tuning)."""
    pipeline = ctx.pipeline
    tuning = pipeline.spec.tuning
    with ctx.stage("tune") as outcome:
        if tuning is None:
            outcome["skipped"] = True
            return "{}"
        # The trials' split, as the local engine makes it; the trial pods read it from the store.
        x, y = load_npz(train_path)
        fit, val = holdout_split(len(y), tuning.validation_fraction, tuning.seed)
        work = ctx.work_dir("tune")
        save_npz(work / "trial-train.npz", x=x[fit], y=y[fit])
        save_npz(work / "trial-validation.npz", x=x[val], y=y[val])
        env = {
            "MLCD_TRAIN_DATA": files.put_file(
                "data/trial-train.npz", pathlib.Path(work / "trial-train.npz")
            ),
            "MLCD_VALIDATION_DATA": files.put_file(
                "data/trial-validation.npz", pathlib.Path(work / "trial-validation.npz")
            ),
            "MLCD_RUN_ID": ctx.run_id,
            "MLCD_TRIAL_ID": "${trialSpec.Name}",
        }
        namespace = pipeline.namespace
        name = child_name(namespace, pipeline.name, ctx.run_id, "tune", cluster.attempt)
        child = objects.Child(name, namespace, ctx.run_id, pipeline.name, env)
        body = objects.experiment(pipeline, tuning, child, cluster)
        outcome["children"] = {"experiment": f"{namespace}/{name}"}
        files.put_json("current.json", {"stage": "tune", "children": outcome["children"]})
        kube = Kube(cluster.kubeconfig)
        try:
            kube.ensure(EXPERIMENT, namespace, body)
            live = until(kube, EXPERIMENT, namespace, name, _finished, cluster.poll_seconds)
        except (KeyboardInterrupt, SystemExit):
            kube.delete(EXPERIMENT, namespace, name)  # cancelled: its trials stop too
            raise
        finally:
            kube.close()
        if live is None:
            raise StageFailed(f"tuning failed: Katib Experiment {namespace}/{name} was deleted")
        status = live.get("status") or {}
        outcome.update(
            algorithm=tuning.algorithm,
            objective=tuning.objective.model_dump(by_alias=True),
            trialCounts={
                k: status.get(k, 0)
                for k in ("trials", "trialsSucceeded", "trialsFailed", "trialsKilled")
            },
        )
        failed = condition(live, "Failed")
        if failed is not None:
            raise StageFailed(
                f"tuning failed: Katib Experiment {namespace}/{name} "
                f"{failed.get('reason')}: {failed.get('message')}"
            )
        succeeded = condition(live, "Succeeded") or {}
        outcome["stopReason"] = f"{succeeded.get('reason')}: {succeeded.get('message')}"
        params = objects.optimal_parameters(tuning, status)
        if set(params) != {p.name for p in tuning.parameters}:
            raise StageFailed(
                f"tuning failed: Katib Experiment {namespace}/{name} succeeded without an "
                "optimal trial for every parameter"
            )
        optimal = status.get("currentOptimalTrial") or {}
        value = None
        for metric in (optimal.get("observation") or {}).get("metrics") or []:
            if metric.get("name") == tuning.objective.metric:
                value = _number(metric.get("latest"))
        outcome["best"] = {
            "trial": optimal.get("bestTrialName"),
            "params": params,
            "value": value,
            "state": "succeeded",
        }
        return json.dumps(params)


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
