"""Turning a raw resource into a valid :class:`ModelPipeline`, or into one message per problem.

Types, enums and ranges are checked by the models; the rules that tie fields together are
checked here, each naming the field at fault, so a user reads
``spec.tuning.parameters[1].max: must be greater than min (0.2 <= 0.5)`` and nothing else.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from croniter import croniter
from pydantic import ValidationError

from mlcd.domain.rollout import DEGRADATION_VARIABLES, template_names, unknown_variables
from mlcd.domain.spec import (
    BUILTIN_METRICS,
    EVALUATION_METRICS,
    TEMPLATE_VARIABLES,
    ModelPipeline,
    ModelPipelineSpec,
    duration_seconds,
)
from mlcd.errors import FieldProblem, SpecError

_FRIENDLY_PATTERNS = {
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": "must be a DNS label: lowercase letters, digits and '-'",
    r"^[0-9]+(ms|s|m|h)$": "must be a duration such as 30s, 5m or 2h",
}
_TYPE_NAMES = {
    "float_parsing": "a number",
    "float_type": "a number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def format_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(root)"


def _reason(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]} (got {got!r})"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')} (got {got!r})"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return f"{_FRIENDLY_PATTERNS.get(pattern, f'must match {pattern}')} (got {got!r})"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
    bounds["less_than_equal"] = "<="
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit} (got {got!r})"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s) or characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    message = str(error.get("msg", kind))
    return message[:1].lower() + message[1:]


def problems_from_validation(exc: ValidationError) -> list[FieldProblem]:
    return [
        FieldProblem(format_path(err["loc"]), _reason(err)) for err in exc.errors(include_url=False)
    ]


def parse_pipeline(raw: object) -> ModelPipeline:
    """Validates a resource; raises :class:`SpecError` listing every problem found."""
    if not isinstance(raw, Mapping):
        raise SpecError([FieldProblem("(root)", "must be a ModelPipeline object")])
    try:
        pipeline = ModelPipeline.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(problems_from_validation(exc)) from None
    problems = list(spec_problems(pipeline.spec))
    if problems:
        raise SpecError(problems)
    return pipeline


def spec_problems(spec: ModelPipelineSpec) -> Iterator[FieldProblem]:
    """The cross-field rules; each yields the path of the field to change."""
    yield from _schedule_problems(spec)
    yield from _dataset_problems(spec)
    yield from _trainer_problems(spec)
    yield from _tuning_problems(spec)
    yield from _gate_problems(spec)
    yield from _rollout_problems(spec)
    for where, loc in (("spec.dataset", spec.dataset), ("spec.artifacts", spec.artifacts)):
        if loc is not None:
            yield from _uri_problems(where, loc.uri)


def _schedule_problems(spec: ModelPipelineSpec) -> Iterator[FieldProblem]:
    if spec.schedule is not None and not croniter.is_valid(spec.schedule):
        yield FieldProblem("spec.schedule", f"not a valid cron expression: {spec.schedule!r}")
    if spec.time_zone is not None:
        try:
            zoneinfo.ZoneInfo(spec.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            yield FieldProblem("spec.timeZone", f"unknown time zone {spec.time_zone!r}")


def _dataset_problems(spec: ModelPipelineSpec) -> Iterator[FieldProblem]:
    schema = spec.dataset.schema_
    low, high = schema.value_min, schema.value_max
    if low is not None and high is not None and low >= high:
        yield FieldProblem(
            "spec.dataset.schema.valueMax", f"must be greater than valueMin ({high} <= {low})"
        )


def _trainer_problems(spec: ModelPipelineSpec) -> Iterator[FieldProblem]:
    for i, pattern in enumerate(spec.trainer.metrics_collector.metrics_format):
        path = f"spec.trainer.metricsCollector.metricsFormat[{i}]"
        try:
            groups = re.compile(pattern).groups
        except re.error as exc:
            yield FieldProblem(path, f"not a valid regular expression: {exc}")
            continue
        if groups != 2:
            yield FieldProblem(path, f"must have two groups (name, value), has {groups}")


def _tuning_problems(spec: ModelPipelineSpec) -> Iterator[FieldProblem]:
    tuning = spec.tuning
    if tuning is None:
        return
    if tuning.parallel_trials > tuning.max_trials:
        yield FieldProblem(
            "spec.tuning.parallelTrials",
            f"must not exceed maxTrials ({tuning.parallel_trials} > {tuning.max_trials})",
        )
    seen: set[str] = set()
    for i, param in enumerate(tuning.parameters):
        path = f"spec.tuning.parameters[{i}]"
        if param.name in seen:
            yield FieldProblem(f"{path}.name", f"duplicate parameter name {param.name!r}")
        seen.add(param.name)
        if param.type in ("double", "int"):
            if param.min is None:
                yield FieldProblem(f"{path}.min", f"required for type {param.type}")
            if param.max is None:
                yield FieldProblem(f"{path}.max", f"required for type {param.type}")
            if param.min is not None and param.max is not None and param.min >= param.max:
                yield FieldProblem(
                    f"{path}.max", f"must be greater than min ({param.max} <= {param.min})"
                )
            if param.type == "int":
                for bound in ("min", "max"):
                    value = getattr(param, bound)
                    if value is not None and not float(value).is_integer():
                        yield FieldProblem(f"{path}.{bound}", f"must be an integer (got {value})")
            if param.distribution == "logUniform" and param.min is not None and param.min <= 0:
                yield FieldProblem(f"{path}.min", "must be > 0 for distribution logUniform")
            if param.values is not None:
                yield FieldProblem(f"{path}.values", f"not allowed for type {param.type}")
            if tuning.algorithm == "grid" and param.type == "double" and param.step is None:
                yield FieldProblem(f"{path}.step", "required for a double parameter with grid")
        else:
            if not param.values:
                yield FieldProblem(f"{path}.values", f"required for type {param.type}")
            elif len(set(param.values)) != len(param.values):
                yield FieldProblem(f"{path}.values", "must not repeat a value")
            if param.type == "discrete":
                for j, value in enumerate(param.values or []):
                    try:
                        float(value)
                    except ValueError:
                        yield FieldProblem(
                            f"{path}.values[{j}]", f"must be a number for discrete (got {value!r})"
                        )
            for bound in ("min", "max", "step"):
                if getattr(param, bound) is not None:
                    yield FieldProblem(f"{path}.{bound}", f"not allowed for type {param.type}")


def _gate_problems(spec: ModelPipelineSpec) -> Iterator[FieldProblem]:
    gate = spec.gate
    if gate.min is not None and gate.max is not None and gate.min >= gate.max:
        yield FieldProblem("spec.gate.max", f"must be greater than min ({gate.max} <= {gate.min})")
    produced = set(EVALUATION_METRICS) | set(spec.evaluation.extra_metrics)
    if gate.metric not in produced:
        yield FieldProblem(
            "spec.gate.metric",
            f"{gate.metric!r} is not produced by evaluation; one of "
            f"{', '.join(sorted(produced))} (list the trainer's own in evaluation.extraMetrics)",
        )


def _rollout_problems(spec: ModelPipelineSpec) -> Iterator[FieldProblem]:
    rollout = spec.serving.rollout
    where = "spec.serving.rollout"
    steps = rollout.steps
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            yield FieldProblem(
                f"{where}.steps[{i}]", f"steps must ascend ({steps[i]} after {steps[i - 1]})"
            )
    if steps and steps[-1] != 100:
        yield FieldProblem(
            f"{where}.steps[{len(steps) - 1}]", f"the last step must be 100 (got {steps[-1]})"
        )
    interval = duration_seconds(rollout.interval)
    if interval <= 0:
        yield FieldProblem(f"{where}.interval", "must be longer than 0")
    explicit = "progress_deadline" in rollout.model_fields_set
    if explicit and duration_seconds(rollout.progress_deadline) < interval:
        yield FieldProblem(
            f"{where}.progressDeadline",
            f"must be at least interval ({rollout.progress_deadline} < {rollout.interval})",
        )
    if rollout.promote and rollout.abort:
        yield FieldProblem(f"{where}.abort", "promote and abort cannot both be set")
    seen: set[str] = set()
    for i, metric in enumerate(rollout.metrics):
        path = f"{where}.metrics[{i}]"
        if metric.name in seen:
            yield FieldProblem(f"{path}.name", f"duplicate metric name {metric.name!r}")
        seen.add(metric.name)
        if metric.query is None and metric.name not in BUILTIN_METRICS:
            yield FieldProblem(
                f"{path}.query",
                f"required: {metric.name!r} is not built in ({', '.join(BUILTIN_METRICS)})",
            )
        if metric.query is not None:
            for name in unknown_variables(metric.query):
                yield FieldProblem(
                    f"{path}.query",
                    f"unknown variable {{{{ {name} }}}}; one of {', '.join(TEMPLATE_VARIABLES)}",
                )
        relative = metric.relative_to is not None
        if metric.min is None and metric.max is None and not relative:
            yield FieldProblem(path, "needs min or max (or relativeTo with maxIncrease)")
        if metric.min is not None and metric.max is not None and metric.min > metric.max:
            yield FieldProblem(f"{path}.max", f"must be at least min ({metric.max} < {metric.min})")
        if relative and metric.max_increase is None:
            yield FieldProblem(f"{path}.maxIncrease", "required with relativeTo")
        if metric.max_increase is not None and not relative:
            yield FieldProblem(f"{path}.maxIncrease", "only with relativeTo: stable")
        if relative and metric.query is not None and "canary" not in template_names(metric.query):
            yield FieldProblem(
                f"{path}.query",
                "must name {{ canary }} with relativeTo: stable (it is evaluated for each)",
            )
    degradation = spec.triggers.on_degradation
    if degradation is not None:
        for name in unknown_variables(degradation.query, DEGRADATION_VARIABLES):
            yield FieldProblem(
                "spec.triggers.onDegradation.query",
                f"unknown variable {{{{ {name} }}}}; one of {', '.join(DEGRADATION_VARIABLES)}",
            )


def _uri_problems(where: str, uri: str) -> Iterator[FieldProblem]:
    if "://" not in uri:
        return
    scheme, rest = uri.split("://", 1)
    if scheme not in ("s3", "file"):
        yield FieldProblem(f"{where}.uri", f"scheme must be s3:// or file:// (got {scheme}://)")
    elif scheme == "s3" and not rest.split("/", 1)[0]:
        yield FieldProblem(f"{where}.uri", "an s3:// URI needs a bucket: s3://bucket/key")
