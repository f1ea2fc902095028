"""Where the component binaries are.

``hack/bootstrap`` builds or installs every component and writes the resolved paths to
``$MLCD_CACHE_DIR/components/env`` as ``NAME=path`` lines. An environment variable of the same
name overrides a line of that file.
"""

from __future__ import annotations

import os
from pathlib import Path

# Environment variable (and env-file key) for each binary or file the stack uses.
BINARIES: dict[str, str] = {
    "etcd": "MLCD_ETCD",
    "kube-apiserver": "MLCD_KUBE_APISERVER",
    "kube-controller-manager": "MLCD_KUBE_CONTROLLER_MANAGER",
    "kube-scheduler": "MLCD_KUBE_SCHEDULER",
    "kubectl": "MLCD_KUBECTL",
    "kwok": "MLCD_KWOK",
    "kwok-stages": "MLCD_KWOK_STAGES",
    "minio": "MLCD_MINIO",
    "helm": "MLCD_HELM",
    "kubeconform": "MLCD_KUBECONFORM",
    "monitoring-crds": "MLCD_MONITORING_CRDS",
    "kserve-manager": "MLCD_KSERVE_MANAGER",
    "kserve-config": "MLCD_KSERVE_CONFIG",
    "traefik": "MLCD_TRAEFIK",
    "prometheus": "MLCD_PROMETHEUS",
    "haproxy": "MLCD_HAPROXY",
    "training-operator": "MLCD_TRAINING_OPERATOR",
    "jobset": "MLCD_JOBSET",
    "trainer": "MLCD_TRAINER",
    "katib-crds": "MLCD_KATIB_CRDS",
    # the real node
    "kubelet": "MLCD_KUBELET",
    "kube-proxy": "MLCD_KUBE_PROXY",
    "coredns": "MLCD_COREDNS",
    "containerd": "MLCD_CONTAINERD",
    "ctr": "MLCD_CTR",
    "runc": "MLCD_RUNC",
    "cni-plugins": "MLCD_CNI_PLUGINS",  # a directory
    "busybox": "MLCD_BUSYBOX",  # statically linked: the base layer of the node's images
}


class MissingBinaryError(RuntimeError):
    """A component binary is neither configured nor built."""


def cache_dir() -> Path:
    """The project's cache, shared with ``hack/bootstrap`` and ``hack/setup-env``."""
    configured = os.environ.get("MLCD_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "mlcd"


def env_file() -> Path:
    return cache_dir() / "components" / "env"


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def binary(name: str) -> Path:
    """The path of component ``name`` (a key of :data:`BINARIES`); raises if it is missing."""
    var = BINARIES[name]
    configured = os.environ.get(var) or _read_env_file(env_file()).get(var)
    if not configured:
        raise MissingBinaryError(
            f"{name}: not built yet ({var} is unset and {env_file()} has no entry); "
            "run hack/bootstrap"
        )
    path = Path(configured)
    if not path.exists():
        raise MissingBinaryError(f"{name}: {path} does not exist; run hack/bootstrap")
    return path
