"""Train: the best parameters as one distributed job of ``trainer.workers`` processes."""

from __future__ import annotations

import json
import pathlib

from mlcd.domain import search
from mlcd.domain.spec import duration_seconds
from mlcd.errors import StageFailed
from mlcd.pipeline.context import RunContext
from mlcd.pipeline.stages import cpus
from mlcd.pipeline.trainer import ProcessGroups, run_trainer


def run(ctx: RunContext, train_path: str, params_json: str, model_dir: str) -> None:
    spec = ctx.pipeline.spec
    trainer = spec.trainer
    with ctx.stage("train") as outcome:
        params: dict[str, search.ParamValue] = json.loads(params_json)
        out = pathlib.Path(model_dir)
        out.mkdir(parents=True, exist_ok=True)
        work = ctx.work_dir("train")
        env = {
            "MLCD_STAGE": "train",
            "MLCD_TRAIN_DATA": train_path,
            "MLCD_MODEL_DIR": str(out),
            "MLCD_METRICS_FILE": str(work / "metrics.json"),
            "MLCD_RUN_ID": ctx.run_id,
            "MLCD_SEED": str(spec.evaluation.seed),
        }
        groups = ProcessGroups(ctx.dir / "procs")
        outcome.update(params=params, workers=trainer.workers, backend=trainer.backend)
        ctx.events.emit("train-start", workers=trainer.workers, params=params)
        with groups.handling_signals():
            result = run_trainer(
                trainer,
                args=search.trainer_args(params),
                env=env,
                log_path=work / "train.log",
                groups=groups,
                timeout=duration_seconds(trainer.timeout),
                workers=trainer.workers,
                threads=max(1, cpus() // trainer.workers),
            )
        outcome["curves"] = result.series
        outcome["steps"] = result.metrics.steps()
        if not result.ok:
            raise StageFailed(f"training job of {trainer.workers} worker(s) {result.failure()}")
        if not result.series:
            raise StageFailed(
                "the training job printed no metrics: expected name=value lines "
                "on stdout (or a JSON object in $MLCD_METRICS_FILE)"
            )
        if not (out / "model.onnx").is_file():
            raise StageFailed("the training job wrote no model.onnx into $MLCD_MODEL_DIR")
        outcome["metrics"] = result.metrics.latest()
        outcome["trainSeconds"] = round(result.seconds, 2)
