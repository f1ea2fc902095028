"""Reading a ModelPipeline from the same YAML file a user would ``kubectl apply``."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from mlcd.domain.checks import parse_pipeline
from mlcd.domain.overrides import apply_overrides
from mlcd.domain.spec import ModelPipeline
from mlcd.errors import FieldProblem, SpecError


def read_resource(path: pathlib.Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([FieldProblem(str(path), f"cannot read: {exc.strerror}")]) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([FieldProblem(where, f"invalid YAML: {problem}")]) from None
    pipelines = [d for d in documents if isinstance(d, dict) and d.get("kind") == "ModelPipeline"]
    if len(pipelines) == 1:
        return pipelines[0]
    if not pipelines:
        if len(documents) == 1:
            single: dict[str, Any] = documents[0]  # validated by parse_pipeline
            return single
        raise SpecError([FieldProblem(str(path), "holds no ModelPipeline")])
    raise SpecError(
        [FieldProblem(str(path), f"holds {len(pipelines)} ModelPipelines; give a file with one")]
    )


def load(
    path: pathlib.Path, overrides: list[str] | None = None
) -> tuple[ModelPipeline, dict[str, Any]]:
    """The validated pipeline and the raw resource (with overrides applied)."""
    raw = read_resource(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return parse_pipeline(raw), raw
