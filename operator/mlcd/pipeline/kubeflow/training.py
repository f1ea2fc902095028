"""Train on Kubeflow: a Trainer v2 TrainJob or a training-operator PyTorchJob with the best
parameters; waits on its terminal conditions; the model comes back through the store."""

from __future__ import annotations

import json
import pathlib
import re
import time
from collections.abc import Mapping
from typing import Any

from mlcd.domain import metrics_text, search
from mlcd.domain.spec import duration_seconds
from mlcd.errors import MlcdError, StageFailed
from mlcd.pipeline.context import RunContext
from mlcd.pipeline.kubeflow import objects
from mlcd.pipeline.kubeflow.kube import PYTORCHJOB, TRAINJOB, Kind, Kube
from mlcd.pipeline.kubeflow.names import child_name
from mlcd.pipeline.kubeflow.runfiles import RunFiles
from mlcd.pipeline.kubeflow.settings import ClusterSteps
from mlcd.pipeline.kubeflow.wait import condition, pod_problems, until

# Terminal conditions: a TrainJob ends Complete or Failed, a PyTorchJob Succeeded or Failed.
DONE = {"TrainJob": "Complete", "PyTorchJob": "Succeeded"}
KINDS = {"TrainJob": TRAINJOB, "PyTorchJob": PYTORCHJOB}
CHILD_KEYS = {"TrainJob": "trainJob", "PyTorchJob": "pyTorchJob"}
# Pods of a TrainJob carry the JobSet's name; those of a PyTorchJob the job's name.
POD_SELECTORS = {
    "TrainJob": "jobset.sigs.k8s.io/jobset-name={name}",
    "PyTorchJob": "training.kubeflow.org/job-name={name}",
}


def run(
    ctx: RunContext,
    cluster: ClusterSteps,
    files: RunFiles,
    train_path: str,
    params_json: str,
    model_dir: str,
) -> None:
    pipeline = ctx.pipeline
    trainer = pipeline.spec.trainer
    kind = cluster.training
    with ctx.stage("train") as outcome:
        params: dict[str, search.ParamValue] = json.loads(params_json)
        namespace = pipeline.namespace
        name = child_name(namespace, pipeline.name, ctx.run_id, "train", cluster.attempt)
        env = {
            "MLCD_TRAIN_DATA": files.put_file("data/train.npz", pathlib.Path(train_path)),
            "MLCD_MODEL_DIR": files.folder("model"),
            "MLCD_METRICS_FILE": f"{files.folder('train')}/metrics.json",
            "MLCD_RUN_ID": ctx.run_id,
            "MLCD_SEED": str(pipeline.spec.evaluation.seed),
        }
        child = objects.Child(name, namespace, ctx.run_id, pipeline.name, env)
        build = objects.train_job if kind == "TrainJob" else objects.pytorch_job
        body = build(pipeline, search.trainer_args(params), child, cluster)
        outcome.update(params=params, workers=trainer.workers, backend=trainer.backend)
        outcome["children"] = {CHILD_KEYS[kind]: f"{namespace}/{name}"}
        files.put_json("current.json", {"stage": "train", "children": outcome["children"]})
        ctx.events.emit("train-start", workers=trainer.workers, params=params)
        timeout = duration_seconds(trainer.timeout)
        started = time.monotonic()
        kube = Kube(cluster.kubeconfig)
        try:
            kube.ensure(KINDS[kind], namespace, body)
            live = until(
                kube,
                KINDS[kind],
                namespace,
                name,
                lambda obj: _finished(kind, obj),
                cluster.poll_seconds,
                deadline=started + timeout,
            )
            problems = pod_problems(kube.pods(namespace, POD_SELECTORS[kind].format(name=name)))
            if live and condition(live, "Failed") and not any(" failed: " in p for p in problems):
                # The training operator deletes the pods of a job it fails (whatever its
                # cleanPodPolicy); its Events keep what each pod exited with.
                problems += _exits(kube, KINDS[kind], namespace, name)
            if live is None and kube.get(KINDS[kind], namespace, name) is not None:
                kube.delete(KINDS[kind], namespace, name)
                detail = "; ".join(problems) or "no pod reported a problem"
                raise StageFailed(
                    f"training job {kind} {namespace}/{name} did not finish within "
                    f"trainer.timeout {trainer.timeout}: {detail}"
                )
        except (KeyboardInterrupt, SystemExit):
            kube.delete(KINDS[kind], namespace, name)
            raise
        finally:
            kube.close()
        outcome["trainSeconds"] = round(time.monotonic() - started, 2)
        if live is None:
            raise StageFailed(f"training job {kind} {namespace}/{name} was deleted")
        failed = condition(live, "Failed")
        if failed is not None:
            said = f"{failed.get('reason')}: {failed.get('message')}"
            failing = [p for p in problems if " failed: " in p]
            raise StageFailed(
                f"training job {kind} {namespace}/{name} failed ({said})"
                + (f"; {'; '.join(failing)}" if failing else "")
            )
        out = pathlib.Path(model_dir)
        out.mkdir(parents=True, exist_ok=True)
        for key in files.keys("model"):
            files.get_file(key, out / key.removeprefix("model/"))
        series = _series(files, trainer.metrics_collector)
        outcome["curves"] = series
        if not series:
            raise StageFailed(
                "the training job reported no metrics: expected a JSON object at $MLCD_METRICS_FILE"
            )
        if not (out / "model.onnx").is_file():
            raise StageFailed(
                f"the training job wrote no model.onnx into $MLCD_MODEL_DIR ({files.uri('model')})"
            )
        outcome["metrics"] = metrics_text.latest(series)


#: The training operator's Event for a pod's end: "Pod: <namespace>.<pod> exited with code N".
EXITED = re.compile(r"Pod: [^.\s]+\.(?P<pod>\S+) exited with code (?P<code>-?\d+)")


def _exits(kube: Kube, kind: Kind, namespace: str, name: str) -> list[str]:
    """Non-zero exits the job's ExitedWithCode Events report, one line per pod."""
    try:
        events = kube.events(namespace, kind, name)
    except MlcdError as exc:
        return [f"the job's Events could not be read ({exc})"]
    exits: dict[str, str] = {}
    for event in events:
        found = EXITED.fullmatch(event.message or "") if event.reason == "ExitedWithCode" else None
        if found and found["code"] != "0":
            exits[found["pod"]] = found["code"]
    return [
        f"pod {pod} failed: exited {code} (Event ExitedWithCode)"
        for pod, code in sorted(exits.items())
    ]


def _finished(kind: str, obj: Mapping[str, Any]) -> bool:
    return bool(condition(obj, DONE[kind]) or condition(obj, "Failed"))


def _series(files: RunFiles, collector: Any) -> dict[str, list[float]]:
    raw = files.get("train/metrics.json")
    if raw is None:
        return {}
    return metrics_text.parse_json(raw.decode(errors="replace"))
