"""The ModelPipeline CustomResourceDefinition, generated from the domain models.

    python -m mlcd.k8s.crd --output crds/mlcd.io_modelpipelines.yaml

The OpenAPI schema is the models' JSON schema (``model_json_schema``) made *structural*, as the
API server requires: every ``$ref`` inlined, ``anyOf [X, null]`` turned into ``X`` with
``nullable``, JSON Schema's numeric exclusive bounds turned into OpenAPI v3's booleans, no
``additionalProperties: false`` (unknown fields are pruned, or refused with
``kubectl --validate=strict``). Defaults, including those the models make with a factory, are
kept so that the API server stores what the operator will use.

The rules of :mod:`mlcd.domain.checks` that CEL can express are ``x-kubernetes-validations``
here (:data:`RULES`), each with the path of the field at fault; the rest (time zones, regular
expressions, a full cron parser) are the operator's to report in a condition.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from mlcd.domain.rollout import DEGRADATION_VARIABLES
from mlcd.domain.spec import (
    API_GROUP,
    API_VERSION,
    BUILTIN_METRICS,
    EVALUATION_METRICS,
    KIND,
    TEMPLATE_VARIABLES,
    DatasetSchema,
    Degradation,
    Evaluation,
    Gate,
    ModelPipeline,
    ModelPipelineSpec,
    Parameter,
    Rollout,
    RolloutMetric,
    StorageLocation,
    Trainer,
    Tuning,
)
from mlcd.domain.status import ModelPipelineStatus

PLURAL = "modelpipelines"
SINGULAR = "modelpipeline"
SHORT_NAMES = ["mp"]
CATEGORIES = ["mlcd", "all"]
NAME = f"{PLURAL}.{API_GROUP}"
FILE_NAME = f"{API_GROUP}_{PLURAL}.yaml"

# RE2 (CEL) and Python `re` read these the same way.
_DIGITS = r"[0-9](_?[0-9])*"
#: What Python's ``float()`` accepts: discrete parameter values must be numbers.
NUMBER = (
    rf"^\s*[+-]?((?i:inf|infinity|nan)|({_DIGITS})?\.{_DIGITS}([eE][+-]?{_DIGITS})?"
    rf"|{_DIGITS}\.?([eE][+-]?{_DIGITS})?)\s*$"
)
_CRON_FIELD = r"[-0-9A-Za-z*?/,#]+"
#: A cron expression's shape (CEL has no cron parser; the operator parses it fully).
CRON = (
    rf"^\s*((?i:@(yearly|annually|monthly|weekly|daily|midnight|hourly))"
    rf"|{_CRON_FIELD}(\s+{_CRON_FIELD}){{4}})\s*$"
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Serving",
        "type": "string",
        "description": "Version of the model now serving.",
        "jsonPath": ".status.serving.version",
    },
    {
        "name": "Metric",
        "type": "string",
        "description": "The gate metric of the last finished run.",
        "jsonPath": ".status.lastMetric",
    },
    # A string, not a date: kubectl shows a date as its age, and a future time as <invalid>.
    {
        "name": "Next Run",
        "type": "string",
        "description": "When the schedule next starts a run (UTC).",
        "jsonPath": ".status.nextScheduleTime",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


@dataclass(frozen=True)
class Rule:
    """One ``x-kubernetes-validations`` entry.

    ``field_path`` (relative to where the rule sits) is the field the API server names in its
    error; without it, the error names the object or field the rule is attached to.
    """

    rule: str
    message: str = ""
    message_expression: str = ""
    field_path: str = ""
    reason: str = "FieldValueInvalid"

    def as_dict(self) -> dict[str, str]:
        out = {"rule": self.rule}
        if self.message:
            out["message"] = self.message
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.field_path:
            out["fieldPath"] = self.field_path
        out["reason"] = self.reason
        return out


_NUMERIC = "self.type in ['double', 'int']"
_NOT_NUMERIC = f"!({_NUMERIC})"


def _integral(bound: str) -> Rule:
    # Doubles this large are integers anyway; int() of them would overflow.
    return Rule(
        f"self.type != 'int' || !has(self.{bound}) || self.{bound} <= -1e18"
        f" || self.{bound} >= 1e18 || double(int(self.{bound})) == self.{bound}",
        message="must be an integer for type int",
        field_path=f".{bound}",
    )


def _forbidden_unless_numeric(field: str) -> Rule:
    return Rule(
        f"{_NUMERIC} || !has(self.{field})",
        message_expression="'not allowed for type ' + self.type",
        field_path=f".{field}",
        reason="FieldValueForbidden",
    )


def _required_if_numeric(field: str) -> Rule:
    return Rule(
        f"{_NOT_NUMERIC} || has(self.{field})",
        message_expression="'required for type ' + self.type",
        field_path=f".{field}",
        reason="FieldValueRequired",
    )


def _greater_than(low: str, high: str, guard: str = "") -> Rule:
    # No numbers in the message: the cost estimate of string(double) is unbounded.
    return Rule(
        f"{guard}!has(self.{low}) || !has(self.{high}) || self.{low} < self.{high}",
        message=f"must be greater than {low}",
        field_path=f".{high}",
    )


def _known_variables(names: Sequence[str]) -> Rule:
    # Every {{ of a query opens a known variable: one regular expression over the text, as
    # findAll() of every {{ x }} costs too much for the API server's budget.
    known = "|".join(names)
    return Rule(
        r"self.matches(r'^([^{]|\{[^{]|\{\{\s*(" + known + r")\s*\}\})*\{?$')",
        message="unknown variable in the query; one of "
        + ", ".join(f"{{{{ {n} }}}}" for n in names),
    )


#: Rules by (model, None) for the model's object, or (model, field alias) for one field.
#: A rule on a model also holds for its subclasses (Dataset is a StorageLocation).
RULES: dict[tuple[type[BaseModel], str | None], list[Rule]] = {
    (ModelPipelineSpec, None): [
        Rule(
            f"self.gate.metric in {list(EVALUATION_METRICS)} || (has(self.evaluation)"
            " && has(self.evaluation.extraMetrics)"
            " && self.gate.metric in self.evaluation.extraMetrics)",
            message_expression=(
                '"\'" + self.gate.metric + "\' is not produced by evaluation; one of '
                + ", ".join(EVALUATION_METRICS)
                + " (list the trainer's own in evaluation.extraMetrics)\""
            ),
            field_path=".gate.metric",
        ),
    ],
    (ModelPipelineSpec, "schedule"): [
        Rule(
            f"self.matches(r'{CRON}')",
            message="not a valid cron expression: five fields (minute hour day-of-month month"
            " day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly",
        ),
    ],
    (StorageLocation, "uri"): [
        Rule(
            "!self.contains('://') || self.matches('^(s3|file)://')",
            message="scheme must be s3:// or file:// (or none, for a path)",
        ),
        Rule(
            "!self.startsWith('s3://') || self.matches('^s3://[^/]')",
            message="an s3:// URI needs a bucket: s3://bucket/key",
        ),
    ],
    (DatasetSchema, None): [_greater_than("valueMin", "valueMax")],
    (Tuning, None): [
        Rule(
            "self.parallelTrials <= self.maxTrials",
            message="must not exceed maxTrials",
            field_path=".parallelTrials",
        ),
        Rule(
            "self.algorithm != 'grid' || self.parameters.all(p, p.type != 'double' || has(p.step))",
            message="every double parameter needs a step with algorithm grid",
            field_path=".parameters",
        ),
    ],
    (Parameter, None): [
        _required_if_numeric("min"),
        _required_if_numeric("max"),
        _greater_than("min", "max", guard=f"{_NOT_NUMERIC} || "),
        _integral("min"),
        _integral("max"),
        Rule(
            f"self.distribution != 'logUniform' || {_NOT_NUMERIC} || !has(self.min)"
            " || self.min > 0",
            message="must be > 0 for distribution logUniform",
            field_path=".min",
        ),
        Rule(
            f"{_NOT_NUMERIC} || !has(self.values)",
            message_expression="'not allowed for type ' + self.type",
            field_path=".values",
            reason="FieldValueForbidden",
        ),
        Rule(
            f"{_NUMERIC} || (has(self.values) && size(self.values) > 0)",
            message_expression="'required for type ' + self.type",
            field_path=".values",
            reason="FieldValueRequired",
        ),
        Rule(
            f"self.type != 'discrete' || !has(self.values)"
            f" || self.values.all(v, v.matches(r'{NUMBER}'))",
            message="must all be numbers for type discrete",
            field_path=".values",
        ),
        _forbidden_unless_numeric("min"),
        _forbidden_unless_numeric("max"),
        _forbidden_unless_numeric("step"),
    ],
    (Gate, None): [_greater_than("min", "max")],
    (Rollout, "steps"): [
        Rule("self.isSorted()", message="steps must ascend"),
        Rule("self[size(self) - 1] == 100", message="the last step must be 100"),
    ],
    (Rollout, None): [
        Rule(
            "!(self.promote && self.abort)",
            message="promote and abort cannot both be set",
            field_path=".abort",
        ),
    ],
    (RolloutMetric, None): [
        Rule(
            "has(self.min) || has(self.max) || has(self.relativeTo)",
            message="needs min or max (or relativeTo with maxIncrease)",
        ),
        Rule(
            "!has(self.min) || !has(self.max) || self.min <= self.max",
            message="must be at least min",
            field_path=".max",
        ),
        Rule(
            f"has(self.query) || self.name in {list(BUILTIN_METRICS)}",
            message_expression=(
                '"required: \'" + self.name + "\' is not built in ('
                + ", ".join(BUILTIN_METRICS)
                + ')"'
            ),
            field_path=".query",
            reason="FieldValueRequired",
        ),
        Rule(
            "!has(self.relativeTo) || has(self.maxIncrease)",
            message="required with relativeTo",
            field_path=".maxIncrease",
            reason="FieldValueRequired",
        ),
        Rule(
            "!has(self.maxIncrease) || has(self.relativeTo)",
            message="only with relativeTo: stable",
            field_path=".maxIncrease",
            reason="FieldValueForbidden",
        ),
        Rule(
            "!has(self.relativeTo) || !has(self.query)"
            " || self.query.matches(r'\\{\\{\\s*canary\\s*\\}\\}')",
            message="must name {{ canary }} with relativeTo: stable (it is evaluated for each)",
            field_path=".query",
        ),
    ],
    (RolloutMetric, "query"): [_known_variables(TEMPLATE_VARIABLES)],
    (Degradation, "query"): [_known_variables(DEGRADATION_VARIABLES)],
}


def _map(*keys: str) -> dict[str, Any]:
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


_SET = {"x-kubernetes-list-type": "set"}

#: List semantics of one field: ``map`` (items keyed, duplicates refused, server-side apply
#: merges by key) or ``set`` (unique scalars). Every other list is ``atomic``: replaced whole.
LIST_TYPES: dict[tuple[type[BaseModel], str], dict[str, Any]] = {
    (Tuning, "parameters"): _map("name"),
    (Parameter, "values"): _SET,
    (Rollout, "steps"): _SET,
    (Rollout, "metrics"): _map("name"),
    (Trainer, "env"): _map("name"),
    (Evaluation, "extraMetrics"): _SET,
    (ModelPipelineStatus, "conditions"): _map("type"),
}

_KEY_ORDER = (
    "description",
    "type",
    "nullable",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "maxProperties",
    "items",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "properties",
    "additionalProperties",
    "required",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
)
_COPIED = {"type", "description", "enum", "minimum", "maximum", "minLength", "maxLength"}
_COPIED |= {"pattern", "minItems", "maxItems", "required", "maxProperties"}


class _FactoryDefaults(GenerateJsonSchema):
    """Shows defaults made by a factory too (``[100]``, ``Evaluation()``), so that the API
    server applies them and the stored object says what the operator will do."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return super().get_default_value(schema)


def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_FactoryDefaults
    )


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``root``'s fields, by the name its JSON schema uses."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            if annotation.__name__ not in found:
                found[annotation.__name__] = annotation
                for field in annotation.model_fields.values():
                    visit(field.annotation)
            return
        for arg in typing.get_args(annotation):
            visit(arg)

    visit(root)
    return found


def _without_empties(value: Any) -> Any:
    """A default as the API server should store it: no nulls, no empty lists or objects."""
    if isinstance(value, dict):
        kept = {k: _without_empties(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != [] and v != {}}
    return value


class _Structural:
    """Turns one model's JSON schema into a structural schema, attaching RULES and LIST_TYPES."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        self.json_schema = _json_schema(model)
        self.defs: dict[str, Any] = self.json_schema.get("$defs", {})
        self.models = _models(model)
        self.used: set[tuple[type[BaseModel], str | None]] = set()

    def root(self) -> dict[str, Any]:
        top = {k: v for k, v in self.json_schema.items() if k != "$defs"}
        return self.convert(top, owner=self.model.__name__)

    def _extras(self, owner: str | None, field: str | None) -> tuple[list[Rule], dict[str, Any]]:
        rules: list[Rule] = []
        extensions: dict[str, Any] = {}
        model = self.models.get(owner) if owner else None
        for cls in model.__mro__ if model else ():
            if (cls, field) in RULES:
                rules += RULES[cls, field]
                self.used.add((cls, field))
            if field is not None and (cls, field) in LIST_TYPES:
                extensions.update(LIST_TYPES[cls, field])
                self.used.add((cls, field))
        return rules, extensions

    def convert(self, schema: Mapping[str, Any], owner: str | None = None) -> dict[str, Any]:
        """``owner`` is the name of the model whose properties ``schema`` has, if any."""
        node = dict(schema)
        out: dict[str, Any] = {}
        if "$ref" in node:
            name = node.pop("$ref").removeprefix("#/$defs/")
            if name not in self.models:
                raise ValueError(f"$ref to {name!r}, not one of the models")
            out.update(self.convert(self.defs[name], owner=name))
        if "anyOf" in node:
            options = [o for o in node.pop("anyOf") if o != {"type": "null"}]
            if len(options) == 1:
                out.update(self.convert(options[0], owner=owner))
            elif {o.get("type") for o in options} <= {"string", "number", "integer", "boolean"}:
                # A scalar of several types (a trial's parameter value): structural schemas
                # cannot say "string or number", so the value is kept as it is.
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                raise ValueError(f"no structural form for anyOf {options}")
            if len(options) < len(schema["anyOf"]):
                out["nullable"] = True
        node.pop("title", None)
        if node.pop("additionalProperties", None) not in (None, False):
            out["additionalProperties"] = self.convert(schema["additionalProperties"])
        if "const" in node:
            out["enum"] = [node.pop("const")]
        for key, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if key in node:
                out[flag] = node.pop(key)
                out[key] = True
        if "default" in node:
            default = _without_empties(node.pop("default"))
            if default is not None and default != [] and default != {}:
                out["default"] = default
        if "items" in node:
            out["items"] = self.convert(node.pop("items"))
        if "properties" in node:
            out["properties"] = {}
            for name, prop in node.pop("properties").items():
                converted = self.convert(prop)
                rules, extensions = self._extras(owner, name)
                converted.update(extensions)
                if converted.get("type") == "array":
                    converted.setdefault("x-kubernetes-list-type", "atomic")
                if rules:
                    converted["x-kubernetes-validations"] = [r.as_dict() for r in rules]
                out["properties"][name] = converted
            rules, _ = self._extras(owner, None)
            if rules:
                out["x-kubernetes-validations"] = [r.as_dict() for r in rules]
        for key in _COPIED & node.keys():
            out[key] = copy.deepcopy(node.pop(key))  # no YAML anchors for shared lists
        if node:
            raise ValueError(f"no structural form for {sorted(node)} in {dict(schema)}")
        return {k: out[k] for k in _KEY_ORDER if k in out}


def _metadata_schema() -> dict[str, Any]:
    # A CRD may restrict only its objects' name; the rest of metadata is the API server's.
    meta = _json_schema(ModelPipeline)["$defs"]["ObjectMeta"]
    if "name" not in meta.get("required", ()):
        raise ValueError("ObjectMeta.name must stay required")
    name = meta["properties"]["name"]
    return {
        "type": "object",
        "properties": {
            "name": {
                "description": "The name: a DNS label of at most 53 characters.",
                "type": "string",
                "maxLength": name["maxLength"],
                "pattern": name["pattern"],
            }
        },
    }


def _doc(model: type[BaseModel]) -> str:
    return inspect.cleandoc(model.__doc__ or "")


def openapi_schema() -> dict[str, Any]:
    """The resource's structural OpenAPI v3 schema: spec and status from their models."""
    spec = _Structural(ModelPipelineSpec)
    status = _Structural(ModelPipelineStatus)
    properties = {
        "apiVersion": {
            "description": f"{API_GROUP}/{API_VERSION}: the schema version of this object.",
            "type": "string",
        },
        "kind": {"description": f"{KIND}: the REST resource this object is.", "type": "string"},
        "metadata": _metadata_schema(),
        "spec": spec.root(),
        "status": {
            "description": "What the operator observed and decided; written only by it.",
            **status.root(),
        },
    }
    unused = set(RULES) | set(LIST_TYPES)
    unused -= spec.used | status.used
    if unused:
        raise ValueError(f"rules for fields the models no longer have: {sorted(map(str, unused))}")
    return {
        "description": _doc(ModelPipeline),
        "type": "object",
        "properties": properties,
        "required": ["spec"],
    }


def custom_resource_definition() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


HEADER = """\
# Generated from the models in operator/mlcd/domain by operator/mlcd/k8s/crd.py. Do not edit:
#   python -m mlcd.k8s.crd --output crds/mlcd.io_modelpipelines.yaml
"""


def render() -> str:
    """The CRD as the YAML file checked in under crds/."""
    body = yaml.safe_dump(
        custom_resource_definition(), sort_keys=False, width=100_000, allow_unicode=True
    )
    return HEADER + "---\n" + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlcd.k8s.crd", description="Print the ModelPipeline CRD as YAML."
    )
    parser.add_argument("--output", type=Path, help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    text = render()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
