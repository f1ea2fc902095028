"""The install manifests as the tools build them: kustomize (kubectl's) and helm template."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from testenv.binaries import binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "charts" / "mlcd"
# deploy/ names things as the chart does for this release in this namespace.
RELEASE, NAMESPACE = "mlcd-operator", "mlcd-system"
# What `helm template` renders for: the test API server's version.
KUBE_VERSION = "1.34.0"
# Every documented mode of the chart: its ci/ values files (docs/install.md names each).
MODES = {p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*.yaml"))}


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [doc] = find(docs, kind, name)
    return doc


def container_env(workload: dict[str, Any]) -> dict[str, Any]:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def kustomize_text(overlay: Path, components: Sequence[Path] = ()) -> str:
    """``kubectl kustomize`` of an overlay, with kustomize components added to it."""
    with tempfile.TemporaryDirectory(prefix="kustomize-") as folder:
        root = overlay
        if components:
            # kustomize takes only relative paths to other kustomizations.
            root = Path(folder)
            (root / "kustomization.yaml").write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "kustomize.config.k8s.io/v1beta1",
                        "kind": "Kustomization",
                        "resources": [os.path.relpath(overlay, root)],
                        "components": [os.path.relpath(c, root) for c in components],
                    }
                )
            )
        result = subprocess.run(
            [str(binary("kubectl")), "kustomize", str(root)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed:\n{result.stderr}")
    return result.stdout


def kustomize(overlay: Path, components: Sequence[Path] = ()) -> list[dict[str, Any]]:
    return documents(kustomize_text(overlay, components))


def helm(
    *args: str, home: Path, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The project's helm, with its caches and configuration under ``home``."""
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run(
        [str(binary("helm")), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result
