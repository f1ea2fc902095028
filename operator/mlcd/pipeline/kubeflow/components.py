"""The pipeline's steps as compiled KFP component YAML, for KFP and Elyra users who wire them
by hand: ``python -m mlcd.pipeline.kubeflow.components DIR`` writes one file per component
and the whole pipeline; the checked-in copies live in ``components/``."""

from __future__ import annotations

import pathlib
import sys
from typing import Any


def components() -> dict[str, Any]:
    from mlcd.pipeline import definition as d

    return {
        "validate-data": d.validate_data,
        "tune": d.tune,
        "train": d.train,
        "evaluate": d.evaluate,
        "gate": d.gate,
        "export": d.export,
        "report": d.report,
        d.PIPELINE_NAME: d.training_pipeline,
    }


def write(folder: pathlib.Path) -> list[pathlib.Path]:
    from kfp import compiler

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, component in components().items():
        path = folder / f"{name}.yaml"
        compiler.Compiler().compile(component, str(path))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "components")):
        print(path)
