"""The training pipeline in the Kubeflow Pipelines v2 DSL.

``kfp.local`` runs it on this machine (the local engine); ``kfp.compiler`` turns the same
definition into the IR package the Kubeflow Pipelines API accepts (the Kubeflow engine). Every
component is a thin call into :mod:`mlcd.pipeline.stages` through :mod:`mlcd.pipeline.steps`;
each receives the run context as JSON and the ``engine`` parameter (empty: this machine).
"""

import pathlib

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from mlcd import __version__

#: The image the components run in on a cluster: mlcd itself plus its dependencies.
IMAGE = f"ghcr.io/mlcd-io/mlcd:{__version__}"
PIPELINE_NAME = "mlcd-training"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate_data(
    context: str, train: Output[Dataset], holdout: Output[Dataset], engine: str = ""
) -> bool:
    """Schema, sanity and drift checks; splits off the holdout. False: data rejected."""
    from mlcd.pipeline.stages import validate
    from mlcd.pipeline.steps import step

    with step(context, engine, "validate") as ctx:
        return validate.run(ctx, train.path, holdout.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tune(context: str, train: Input[Dataset], engine: str = "") -> str:
    """Hyperparameter search (on Kubeflow a Katib Experiment); the best parameters as JSON."""
    from mlcd.pipeline import steps

    return steps.tune(context, engine, train.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    context: str, params: str, train: Input[Dataset], model: Output[Model], engine: str = ""
) -> None:
    """The distributed training job (on Kubeflow a TrainJob or PyTorchJob); writes model.onnx."""
    from mlcd.pipeline import steps

    steps.train(context, engine, train.path, params, model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    context: str,
    holdout: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    engine: str = "",
) -> str:
    """Holdout metrics, onnx.checker and parity with the trained model; returns metrics JSON."""
    from mlcd.pipeline.stages import evaluate as stage
    from mlcd.pipeline.steps import step

    with step(context, engine, "evaluate") as ctx:
        return stage.run(ctx, holdout.path, model.path, metrics, classification)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gate(context: str, metrics: str, engine: str = "") -> bool:
    """The absolute bound AND no regression against the serving model."""
    from mlcd.pipeline.stages import gate as stage
    from mlcd.pipeline.steps import step

    with step(context, engine, "gate") as ctx:
        return stage.run(ctx, metrics)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export(context: str, model: Input[Model], engine: str = "") -> str:
    """Publishes the model as a new immutable version; returns the version."""
    from mlcd.pipeline.stages import export as stage
    from mlcd.pipeline.steps import step

    with step(context, engine, "export") as ctx:
        return stage.run(ctx, model.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report(context: str, page: Output[HTML], engine: str = "") -> None:
    """The run's HTML report, written whatever the outcome."""
    from mlcd.pipeline.stages import report as stage
    from mlcd.pipeline.steps import step

    with step(context, engine, "report") as ctx:
        stage.run(ctx, page.path)


@dsl.pipeline(name=PIPELINE_NAME, description="mlcd: validate, tune, train, evaluate, gate, export")
def training_pipeline(context: str, engine: str = "") -> None:
    with dsl.ExitHandler(report(context=context, engine=engine)):
        data = validate_data(context=context, engine=engine)
        with dsl.If(data.outputs["Output"] == True, name="data-valid"):  # noqa: E712
            best = tune(context=context, train=data.outputs["train"], engine=engine)
            trained = train(
                context=context, params=best.output, train=data.outputs["train"], engine=engine
            )
            scored = evaluate(
                context=context,
                holdout=data.outputs["holdout"],
                model=trained.outputs["model"],
                engine=engine,
            )
            verdict = gate(context=context, metrics=scored.outputs["Output"], engine=engine)
            with dsl.If(verdict.output == True, name="gate-passed"):  # noqa: E712
                export(context=context, model=trained.outputs["model"], engine=engine)


def compile_to(path: pathlib.Path) -> pathlib.Path:
    """Writes the pipeline's IR package (YAML) for the Kubeflow Pipelines API."""
    from kfp import compiler

    compiler.Compiler().compile(training_pipeline, str(path))
    return path
