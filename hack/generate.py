#!/usr/bin/env python3
"""Writes the files generated from other files; tests/chart fails when one of them drifts.

Usage: hack/generate.py [crds] [values] [reference] [monitoring]   (default: all)

  crds        charts/mlcd/crds/: the CRDs of crds/ and deploy/crds/, byte for byte
  values      the values table of charts/mlcd/README.md, from the `# --` comments of values.yaml
  reference   docs/reference.md, every ModelPipeline field from the CRD's schema
  monitoring  deploy/components/monitoring/: the chart's ServiceMonitor, PrometheusRule and
              dashboard ConfigMap for kustomize (needs helm: MLCD_HELM or hack/bootstrap's)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "mlcd"
CRD_FILES = {
    REPO / "crds" / "mlcd.io_modelpipelines.yaml": CHART / "crds" / "mlcd.io_modelpipelines.yaml",
    REPO / "deploy" / "crds" / "kopf-peering.yaml": CHART / "crds" / "kopf-peering.yaml",
}
README = CHART / "README.md"
REFERENCE = REPO / "docs" / "reference.md"
MONITORING = REPO / "deploy" / "components" / "monitoring"
BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"
# What deploy/ is called when rendered from the chart: names as deploy/base has them.
RELEASE, NAMESPACE = "mlcd-operator", "mlcd-system"
# helm template renders for this version (a built helm may default to an older one).
KUBE_VERSION = "1.34.0"


# -- values --------------------------------------------------------------------------------------
def value_docs(text: str) -> dict[str, str]:
    """Each key preceded by a `# --` comment: its dotted path and the comment's text."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if pending is not None:
            docs[path] = " ".join(pending)
            pending = None
    return docs


def lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        node = node[key]
    return node


def leaves(node: Any, path: str = "") -> list[str]:
    """Dotted paths of every value that is not a non-empty mapping."""
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in leaves(v, f"{path}.{k}" if path else k)]
    return [path]


def values_table(text: str) -> str:
    values = yaml.safe_load(text)
    rows = ["| value | default | description |", "|---|---|---|"]
    for path, doc in value_docs(text).items():
        default = json.dumps(lookup(values, path), separators=(", ", ": "))
        cell = default.replace("|", "\\|")
        rows.append(f"| `{path}` | `{cell}` | {doc.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


def readme_with_table(readme: str, values_text: str) -> str:
    before, _, rest = readme.partition(BEGIN)
    _, _, after = rest.partition(END)
    return f"{before}{BEGIN}\n{values_table(values_text)}{END}{after}"


# -- the ModelPipeline reference -----------------------------------------------------------------
def _type(node: dict[str, Any]) -> str:
    kind = node.get("type", "any")
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type(node['additionalProperties'])}"
    if node.get("x-kubernetes-int-or-string"):
        return "integer or string"
    return str(kind)


def _bounds(node: dict[str, Any]) -> list[str]:
    out = []
    if "enum" in node:
        out.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, word in (("minimum", ">"), ("maximum", "<")):
        if key in node:
            exclusive = node.get(f"exclusive{key[0].upper()}{key[1:]}") is True
            out.append(f"{word}{'' if exclusive else '='} {node[key]}")
    for key, word in (
        ("minLength", "at least {} characters"),
        ("maxLength", "at most {} characters"),
        ("minItems", "at least {} items"),
        ("maxItems", "at most {} items"),
        ("maxProperties", "at most {} entries"),
    ):
        if key in node:
            out.append(word.format(node[key]))
    if "pattern" in node:
        out.append(f"pattern `{node['pattern']}`")
    if node.get("x-kubernetes-list-type") == "set":
        out.append("no repeats")
    if "x-kubernetes-list-map-keys" in node:
        keys = ", ".join(node["x-kubernetes-list-map-keys"])
        out.append(f"unique by {keys}")
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _walk(node: dict[str, Any], path: str, required: bool, rows: list[str]) -> None:
    if path:
        default = f"`{json.dumps(node['default'])}`" if "default" in node else ""
        facts = _bounds(node)
        if node.get("nullable"):
            facts.append("may be null")
        rules = [
            f"rule: {r.get('message') or r['rule']}"
            for r in node.get("x-kubernetes-validations", [])
        ]
        text = " ".join(
            [_cell(node.get("description", ""))] + [_cell(f + ".") for f in facts + rules]
        )
        rows.append(f"| `{path}`{' *' if required else ''} | {_type(node)} | {default} | {text} |")
    target = node.get("items", node) if node.get("type") == "array" else node
    suffix = "[]" if node.get("type") == "array" else ""
    if isinstance(target.get("additionalProperties"), dict) and not target.get("properties"):
        target = target["additionalProperties"]
        suffix += "{}"
    needed = set(target.get("required", []))
    for name, child in target.get("properties", {}).items():
        _walk(child, f"{path}{suffix}.{name}" if path else name, name in needed, rows)


def reference(crd: dict[str, Any]) -> str:
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    parts = [
        f"# {kind} reference\n",
        "Generated from `crds/mlcd.io_modelpipelines.yaml` by `make docs` (hack/generate.py); "
        "`tests/chart/test_docs.py` fails when it drifts from the CRD. [crd.md](crd.md) tells "
        "which layer refuses what and why; this page lists every field.\n",
        f"`apiVersion: {group}/{version['name']}`, `kind: {kind}`, namespaced, short name "
        f"`{', '.join(crd['spec']['names'].get('shortNames', []))}`. `*` marks a required "
        "field; a default is filled in by the API server.\n",
    ]
    for part in ("spec", "status"):
        rows = ["| field | type | default | description |", "|---|---|---|---|"]
        _walk(schema["properties"][part], part, part in schema.get("required", []), rows)
        parts.append(f"## {part}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


# -- kustomize's monitoring component ------------------------------------------------------------
def helm() -> str:
    configured = os.environ.get("MLCD_HELM")
    if not configured:
        cache = Path(os.environ.get("MLCD_CACHE_DIR") or Path.home() / ".cache" / "mlcd")
        env = cache / "components" / "env"
        lines = env.read_text().splitlines() if env.is_file() else []
        configured = next((x.split("=", 1)[1] for x in lines if x.startswith("MLCD_HELM=")), None)
    if not configured:
        raise SystemExit("generate: no helm (set MLCD_HELM or run hack/bootstrap)")
    return configured


MONITORING_TEMPLATES = ("servicemonitor", "prometheusrule", "dashboard")
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version")


def monitoring_manifests(helm_path: str) -> dict[str, str]:
    """File name -> manifest, rendered from the chart as deploy/base names things."""
    args = [helm_path, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION]
    args += ["--set", "metrics.serviceMonitor.enabled=true,prometheusRule.enabled=true"]
    args += ["--set", "dashboard.enabled=true"]
    for name in MONITORING_TEMPLATES:
        args += ["--show-only", f"templates/{name}.yaml"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    files: dict[str, str] = {}
    for doc in yaml.safe_load_all(out):
        if not doc:
            continue
        labels = doc["metadata"].get("labels", {})
        for label in HELM_LABELS:
            labels.pop(label, None)
        del doc["metadata"]["namespace"]  # kustomize's namespace sets it
        name = {"ServiceMonitor": "servicemonitor", "PrometheusRule": "prometheusrule"}.get(
            doc["kind"], "dashboard"
        )
        header = "# Generated from charts/mlcd by hack/generate.py monitoring; do not edit.\n"
        files[f"{name}.yaml"] = header + yaml.safe_dump(doc, sort_keys=False, width=100)
    files["kustomization.yaml"] = (
        "# Prometheus Operator and Grafana pieces: add to an overlay with\n"
        "#   components: [../../components/monitoring]\n"
        "# Generated from charts/mlcd by hack/generate.py monitoring; do not edit.\n"
        + yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1alpha1",
                "kind": "Component",
                "resources": [f"{n}.yaml" for n in MONITORING_TEMPLATES],
            },
            sort_keys=False,
        )
    )
    return files


# -- driver --------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    wanted = argv or ["crds", "values", "reference", "monitoring"]
    if "crds" in wanted:
        for source, copy in CRD_FILES.items():
            shutil.copyfile(source, copy)
    if "values" in wanted:
        README.write_text(
            readme_with_table(README.read_text(), (CHART / "values.yaml").read_text())
        )
    if "reference" in wanted:
        crd = yaml.safe_load((REPO / "crds" / "mlcd.io_modelpipelines.yaml").read_text())
        REFERENCE.write_text(reference(crd))
    if "monitoring" in wanted:
        MONITORING.mkdir(parents=True, exist_ok=True)
        for name, text in monitoring_manifests(helm()).items():
            (MONITORING / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
