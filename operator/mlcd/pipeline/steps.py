"""What each component of the pipeline runs, on either engine.

The components (:mod:`mlcd.pipeline.definition`) get the ``engine`` pipeline parameter: empty
under the local engine, which runs every stage on this machine; the Kubeflow engine sets it
(:class:`~mlcd.pipeline.kubeflow.settings.ClusterSteps`), and then tune creates a Katib
Experiment, train a TrainJob or PyTorchJob, and every step keeps its stage record in the
artifact store, where the next step (each in its own pod) and the engine find it."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import tempfile
import threading
from collections.abc import Iterator
from types import FrameType

from mlcd.domain.records import STAGES
from mlcd.pipeline.context import RunContext
from mlcd.pipeline.kubeflow.names import pipeline_folder, run_folder
from mlcd.pipeline.kubeflow.runfiles import CURRENT, RunFiles
from mlcd.pipeline.kubeflow.settings import ClusterSteps


def run_files(ctx: RunContext, cluster: ClusterSteps) -> RunFiles:
    artifacts = ctx.pipeline.spec.artifacts
    if artifacts is None:
        from mlcd.errors import PermanentError

        raise PermanentError("spec.artifacts: required by the kubeflow engine")
    return RunFiles(
        artifacts,
        ctx.pipeline.namespace,
        pipeline_folder(ctx.resource.get("metadata") or {}),
        run_folder(ctx.run_id, cluster.attempt),
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def step(context: str, engine: str, stage: str) -> Iterator[RunContext]:
    """The run context of one step. On Kubeflow: a scratch run folder in the pod, filled
    with the records of the steps before, and this step's record published when it ends."""
    ctx = RunContext.parse(context)
    cluster = ClusterSteps.parse(engine)
    if cluster is None:
        yield ctx
        return
    files = run_files(ctx, cluster)
    if threading.current_thread() is threading.main_thread():
        # A terminated KFP run stops its pods with SIGTERM: unwind, so the step deletes
        # what it created and keeps its record.
        signal.signal(signal.SIGTERM, _interrupt)
    root = pathlib.Path(os.environ.get("MLCD_STEP_DIR") or tempfile.mkdtemp(prefix="mlcd-"))
    ctx = ctx.model_copy(update={"run_dir": str(root / run_folder(ctx.run_id, cluster.attempt))})
    (ctx.dir / "stages").mkdir(parents=True, exist_ok=True)
    for name in STAGES:
        record = files.get(f"stages/{name}.json")
        if record is not None:
            (ctx.dir / "stages" / f"{name}.json").write_bytes(record)
    if stage in STAGES:
        files.put_json(CURRENT, {"stage": stage})
    try:
        yield ctx
    finally:
        path = ctx.dir / "stages" / f"{stage}.json"
        if stage in STAGES and path.is_file():
            files.put(f"stages/{stage}.json", path.read_bytes())


def tune(context: str, engine: str, train_path: str) -> str:
    with step(context, engine, "tune") as ctx:
        cluster = ClusterSteps.parse(engine)
        if cluster is None:
            from mlcd.pipeline.stages import tune as local

            return local.run(ctx, train_path)
        from mlcd.pipeline.kubeflow import katib

        return katib.run(ctx, cluster, run_files(ctx, cluster), train_path)


def train(context: str, engine: str, train_path: str, params: str, model_dir: str) -> None:
    with step(context, engine, "train") as ctx:
        cluster = ClusterSteps.parse(engine)
        if cluster is None:
            from mlcd.pipeline.stages import train as local

            local.run(ctx, train_path, params, model_dir)
            return
        from mlcd.pipeline.kubeflow import training

        training.run(ctx, cluster, run_files(ctx, cluster), train_path, params, model_dir)
