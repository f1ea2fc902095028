"""The docs the chart points to stay true: the generated reference, every condition and Event
reason in the troubleshooting guide, every metric in the metrics reference, every alert."""

from __future__ import annotations

import ast
import pathlib
import re
from typing import get_args

import pytest
import yaml
from prometheus_client import generate_latest

from mlcd.domain.status import ConditionType
from mlcd.metrics.operator import OperatorMetrics

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
# CamelCase, a word of two capitals allowed (KServeNotInstalled); never ALLCAPS.
REASON = re.compile(r"^[A-Z](?:[A-Z]?[a-z0-9]+)+$")


def test_the_reference_is_generated_from_the_crd(generate):
    crd = yaml.safe_load((REPO / "crds" / "mlcd.io_modelpipelines.yaml").read_text())
    assert generate.reference(crd) == (DOCS / "reference.md").read_text(), "run make docs"


def reasons_in_code() -> dict[str, set[str]]:
    """Condition and Event reasons, found where the operator's code states them: a condition
    as a (type, status, reason, ...) or (status, reason, message) tuple, or as the (reason,
    message) a ``condition_of`` function returns; an Event as a Notice(type, reason, ...) or
    the rollout's PostEvent(type, reason, ...), and maps from an observation (``Seen.X``) to
    the Event it posts (the run table's and the rollout's)."""
    types = set(get_args(ConditionType))
    found: dict[str, set[str]] = {"condition": set(), "event": set()}

    def constant(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value if REASON.match(node.value) else None
        return None

    for path in (REPO / "operator" / "mlcd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.Call):
                items = node.elts if isinstance(node, ast.Tuple) else node.args
                raw = [i.value if isinstance(i, ast.Constant) else None for i in items]
                reason = constant(items[2]) if len(items) >= 3 else None
                if reason and raw[0] in types and raw[1] in ("True", "False", "Unknown"):
                    found["condition"].add(reason)
                # (status, reason, message), the Ready condition's own shape
                second = constant(items[1]) if len(items) >= 2 else None
                statuses = ("True", "False", "Unknown")
                if second and raw[0] in statuses and second not in statuses:
                    found["condition"].add(second)
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                events = ("Notice", "PostEvent")
                if name in events and len(node.args) >= 2 and constant(node.args[1]):
                    found["event"].add(str(constant(node.args[1])))
            if isinstance(node, ast.FunctionDef) and node.name.startswith("condition_of"):
                returned = [r.value for r in ast.walk(node) if isinstance(r, ast.Return)]
                tuples = [r for r in returned if isinstance(r, ast.Tuple)]
                found["condition"] |= {c for t in tuples if (c := constant(t.elts[0]))}
            if isinstance(node, ast.Dict) and node.keys:
                keys = [k for k in node.keys if isinstance(k, ast.Attribute)]
                if len(keys) == len(node.keys) and all(
                    isinstance(k.value, ast.Name) and k.value.id == "Seen" for k in keys
                ):
                    found["event"] |= {v for v in map(constant, node.values) if v}
    return found


def test_the_scan_finds_the_reasons_it_is_meant_to():
    found = reasons_in_code()
    assert {"InvalidSpec", "WaitingForCapacity", "Serving", "NoModel"} <= found["condition"]
    assert {"KServeNotInstalled", "InferenceServiceNotReady"} <= found["condition"]
    assert {"Promoted", "RunStarted", "RunFailed", "MissedSchedule"} <= found["event"]
    assert {"RolloutStarted", "RolledBack", "StepPassed", "RoutesRestored"} <= found["event"]


@pytest.mark.parametrize("kind", ["condition", "event"])
def test_troubleshooting_explains_every_reason(kind):
    text = (DOCS / "troubleshooting.md").read_text()
    missing = sorted(r for r in reasons_in_code()[kind] if f"`{r}`" not in text)
    assert missing == [], f"{kind} reasons without a word in docs/troubleshooting.md"


def test_troubleshooting_has_a_section_per_alert():
    rules = (REPO / "charts" / "mlcd" / "files" / "alerts.yaml").read_text()
    alerts = re.findall(r"alert: (\w+)", rules)
    headings = re.findall(r"^#+ (\w+)", (DOCS / "troubleshooting.md").read_text(), re.M)
    assert alerts and sorted(set(alerts) - set(headings)) == []
    # The runbook links use GitHub's anchor of the heading.
    for alert in alerts:
        assert f"#{alert.lower()}" in rules


def metric_names() -> set[str]:
    text = generate_latest(OperatorMetrics().registry).decode()
    # prometheus_client adds a <name>_created gauge to counters and histograms: the start time.
    return {
        line.split()[2]
        for line in text.splitlines()
        if line.startswith("# TYPE") and not line.split()[2].endswith("_created")
    }


@pytest.mark.parametrize("doc", ["metrics.md", "operator.md"])
def test_every_metric_is_in_the_metrics_tables(doc):
    text = (DOCS / doc).read_text()
    names = metric_names()
    assert len(names) >= 10
    assert sorted(n for n in names if f"`{n}`" not in text) == []
    documented = set(re.findall(r"^\| `(mlcd_\w+)`", text, re.M))
    assert documented <= names, "a metric documented that the operator does not have"


def test_every_query_of_the_dashboard_and_alerts_uses_real_metrics():
    import json

    chart = REPO / "charts" / "mlcd" / "files"
    dashboard = json.loads((chart / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append((chart / "alerts.yaml").read_text())  # a template: its text, not YAML
    used = {m for e in exprs for m in re.findall(r"\b(mlcd_\w+)", e)}
    known = {f"{n}{suffix}" for n in metric_names() for suffix in ("", "_bucket", "_sum", "_count")}
    assert used and sorted(used - known) == []
