"""The training pipeline in the Kubeflow Pipelines v2 DSL.

``kfp.local`` runs it on this machine (the local engine); ``kfp.compiler`` turns the same
definition into the IR package the Kubeflow Pipelines API accepts. Every component is a thin
call into :mod:`mlcd.pipeline.stages`; each receives the run context as JSON.
"""

import pathlib

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from mlcd import __version__

#: The image the components run in on a cluster: mlcd itself plus its dependencies.
IMAGE = f"ghcr.io/mlcd-io/mlcd:{__version__}"
PIPELINE_NAME = "mlcd-training"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_data(context: str, train: Output[Dataset], holdout: Output[Dataset]) -> bool:
    """Schema, sanity and drift checks; splits off the holdout. False: data rejected."""
    from mlcd.pipeline.context import RunContext
    from mlcd.pipeline.stages import validate

    return validate.run(RunContext.parse(context), train.path, holdout.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tune(context: str, train: Input[Dataset]) -> str:
    """Hyperparameter search; returns the best parameters as JSON."""
    from mlcd.pipeline.context import RunContext
    from mlcd.pipeline.stages import tune as stage

    return stage.run(RunContext.parse(context), train.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(context: str, params: str, train: Input[Dataset], model: Output[Model]) -> None:
    """The distributed training job with the best parameters; writes model.onnx."""
    from mlcd.pipeline.context import RunContext
    from mlcd.pipeline.stages import train as stage

    stage.run(RunContext.parse(context), train.path, params, model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    context: str,
    holdout: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
) -> str:
    """Holdout metrics, onnx.checker and parity with the trained model; returns metrics JSON."""
    from mlcd.pipeline.context import RunContext
    from mlcd.pipeline.stages import evaluate as stage

    return stage.run(RunContext.parse(context), holdout.path, model.path, metrics, classification)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(context: str, metrics: str) -> bool:
    """The absolute bound AND no regression against the serving model."""
    from mlcd.pipeline.context import RunContext
    from mlcd.pipeline.stages import gate as stage

    return stage.run(RunContext.parse(context), metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export(context: str, model: Input[Model]) -> str:
    """Publishes the model as a new immutable version; returns the version."""
    from mlcd.pipeline.context import RunContext
    from mlcd.pipeline.stages import export as stage

    return stage.run(RunContext.parse(context), model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(context: str, page: Output[HTML]) -> None:
    """The run's HTML report, written whatever the outcome."""
    from mlcd.pipeline.context import RunContext
    from mlcd.pipeline.stages import report as stage

    stage.run(RunContext.parse(context), page.path)


@dsl.pipeline(name=PIPELINE_NAME, description="mlcd: validate, tune, train, evaluate, gate, export")
def training_pipeline(context: str) -> None:
    with dsl.ExitHandler(report(context=context)):
        data = validate_data(context=context)
        with dsl.If(data.outputs["Output"] == True, name="data-valid"):  # noqa: E712
            best = tune(context=context, train=data.outputs["train"])
            trained = train(context=context, params=best.output, train=data.outputs["train"])
            scored = evaluate(
                context=context, holdout=data.outputs["holdout"], model=trained.outputs["model"]
            )
            verdict = gate(context=context, metrics=scored.outputs["Output"])
            with dsl.If(verdict.output == True, name="gate-passed"):  # noqa: E712
                export(context=context, model=trained.outputs["model"])


def compile_to(path: pathlib.Path) -> pathlib.Path:
    """Writes the pipeline's IR package (YAML) for the Kubeflow Pipelines API."""
    from kfp import compiler

    compiler.Compiler().compile(training_pipeline, str(path))
    return path
