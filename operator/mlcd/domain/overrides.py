"""``--set key=value`` overrides applied to a raw resource before it is validated."""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

import yaml

from mlcd.errors import FieldProblem, SpecError

_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def _split(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in key.split("."):
        match = _PART.fullmatch(piece)
        if not match:
            raise ValueError(f"cannot read {piece!r}")
        parts.append(match.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return parts


def apply_overrides(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Returns a copy of ``raw`` with each ``key=value`` set. Keys are relative to ``spec``
    unless they start with ``spec.`` or ``metadata.``; values are read as YAML. An index one
    past the end of a list appends to it."""
    out = copy.deepcopy(raw)
    problems: list[FieldProblem] = []
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            problems.append(FieldProblem(f"--set {assignment}", "expected key=value"))
            continue
        try:
            path = _split(key.strip())
            value = yaml.safe_load(text) if text.strip() else ""
        except (ValueError, yaml.YAMLError) as exc:
            problems.append(FieldProblem(f"--set {key}", str(exc)))
            continue
        if path[0] not in ("spec", "metadata"):
            path.insert(0, "spec")
        try:
            _assign(out, path, value)
        except (KeyError, IndexError, TypeError) as exc:
            problems.append(FieldProblem(f"--set {key}", f"no such place in the spec ({exc})"))
    if problems:
        raise SpecError(problems)
    return out


def _assign(node: Any, path: list[str | int], value: Any) -> None:
    for here, nxt in itertools.pairwise(path):
        if isinstance(here, int):
            node = node[here]
            continue
        if not isinstance(node, dict):
            raise TypeError(f"{here} is inside a non-object")
        if here not in node or node[here] is None:
            node[here] = [] if isinstance(nxt, int) else {}
        node = node[here]
    last = path[-1]
    if isinstance(last, int) and isinstance(node, list) and last == len(node):
        node.append(value)  # one past the end appends: trainer.args[1]=... adds an argument
    elif isinstance(last, int) or isinstance(node, dict):
        node[last] = value
    else:
        raise TypeError(f"{last} is inside a non-object")
