"""Settings read from the environment, grouped by concern, each with a default."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field


def _home() -> pathlib.Path:
    return pathlib.Path(os.environ.get("MLCD_HOME", "~/.mlcd")).expanduser()


@dataclass(frozen=True)
class LocalSettings:
    """Where the local engine keeps runs, models and servers."""

    #: State directory: runs, the default model repository, server state (``MLCD_HOME``).
    home: pathlib.Path = field(default_factory=_home)
    #: Port of the local model server; 0 picks a free one (``MLCD_SERVING_PORT``).
    serving_port: int = field(
        default_factory=lambda: int(os.environ.get("MLCD_SERVING_PORT", "8080"))
    )
    #: How long a new model server may take to become ready, in seconds.
    serving_ready_timeout: float = 90.0
    #: A Prometheus of yours for rollout analyses; default: one mlcd starts and keeps running
    #: (``MLCD_PROMETHEUS_URL``).
    prometheus_url: str | None = field(
        default_factory=lambda: os.environ.get("MLCD_PROMETHEUS_URL") or None
    )
    #: Fault injection for candidate model servers, a test and demo device, e.g.
    #: ``error=0.05`` (``MLCD_CANDIDATE_FAULTS``; see docs/rollout.md).
    candidate_faults: str | None = field(
        default_factory=lambda: os.environ.get("MLCD_CANDIDATE_FAULTS") or None
    )

    @property
    def candidate_env(self) -> dict[str, str]:
        return {"MLCD_SERVING_FAULTS": self.candidate_faults} if self.candidate_faults else {}

    @property
    def models(self) -> pathlib.Path:
        """The default model repository when ``spec.artifacts`` is not set."""
        return self.home / "models"

    def pipeline_dir(self, namespace: str, name: str) -> pathlib.Path:
        return self.home / "pipelines" / namespace / name


def _env_list(name: str) -> list[str]:
    return [n for n in os.environ.get(name, "").split(",") if n]


@dataclass(frozen=True)
class OperatorSettings:
    """How ``mlcd operator`` runs. Each field has a flag and an environment variable."""

    #: Namespaces to watch; empty: all (``MLCD_NAMESPACES``, comma-separated).
    namespaces: list[str] = field(default_factory=lambda: _env_list("MLCD_NAMESPACES"))
    #: State of the local engine: runs, default model repository, servers (``MLCD_STATE_DIR``).
    state_dir: pathlib.Path = field(
        default_factory=lambda: pathlib.Path(
            os.environ.get("MLCD_STATE_DIR", str(_home() / "operator"))
        ).expanduser()
    )
    #: The engine of pipelines without ``spec.engine`` (``MLCD_ENGINE``).
    engine: str = field(default_factory=lambda: os.environ.get("MLCD_ENGINE", "local"))
    #: Runs in progress at once across all pipelines (``MLCD_MAX_ACTIVE_RUNS``).
    max_active_runs: int = field(
        default_factory=lambda: int(os.environ.get("MLCD_MAX_ACTIVE_RUNS", "2"))
    )
    #: Seconds between looks at each pipeline (runs in progress, schedules) (``MLCD_TICK``).
    tick: float = field(default_factory=lambda: float(os.environ.get("MLCD_TICK", "10")))
    #: Seconds a watch request asks the API server to keep its stream open; the client gives
    #: up 30 s later, so a stream that goes silent is restarted (``MLCD_WATCH_TIMEOUT``).
    watch_timeout: int = field(
        default_factory=lambda: int(os.environ.get("MLCD_WATCH_TIMEOUT", "300"))
    )
    #: Threads for handlers (``MLCD_WORKERS``).
    workers: int = field(default_factory=lambda: int(os.environ.get("MLCD_WORKERS", "16")))
    #: Port of the operator's /metrics; 0: off (``MLCD_METRICS_PORT``).
    metrics_port: int = field(
        default_factory=lambda: int(os.environ.get("MLCD_METRICS_PORT", "9090"))
    )
    metrics_address: str = field(
        default_factory=lambda: os.environ.get("MLCD_METRICS_ADDRESS", "0.0.0.0")
    )
    #: Peering name for replicas (one acts, the others wait); None: standalone
    #: (``MLCD_PEERING``).
    peering: str | None = field(default_factory=lambda: os.environ.get("MLCD_PEERING") or None)
    #: Among peers, the highest priority acts (``MLCD_PRIORITY``).
    priority: int = field(default_factory=lambda: int(os.environ.get("MLCD_PRIORITY", "0")))
    #: Liveness endpoint, e.g. http://0.0.0.0:8080/healthz (``MLCD_LIVENESS``).
    liveness: str | None = field(default_factory=lambda: os.environ.get("MLCD_LIVENESS") or None)
    #: Kubeconfig to use; default as kubectl: KUBECONFIG, ~/.kube/config, in-cluster.
    kubeconfig: str | None = field(default_factory=lambda: os.environ.get("KUBECONFIG") or None)
    #: Where models are served (``MLCD_SERVING``): ``local`` (a model server on the operator's
    #: host, behind a local router for rollouts) or ``kserve`` (an InferenceService per
    #: pipeline, rolled out through a Gateway API HTTPRoute; needs an s3:// model repository).
    serving: str = field(default_factory=lambda: os.environ.get("MLCD_SERVING", "local"))
    #: The ServingRuntime of the InferenceServices mlcd creates (``MLCD_KSERVE_RUNTIME``).
    kserve_runtime: str = field(
        default_factory=lambda: os.environ.get("MLCD_KSERVE_RUNTIME", "mlcd-onnx")
    )
    #: The namespace KServe is installed in, whose ConfigMap ``inferenceservice-config`` gives
    #: the default deployment mode, the S3 key names and the Gateway (``MLCD_KSERVE_NAMESPACE``;
    #: Kubeflow's manifests install KServe in ``kubeflow``).
    kserve_namespace: str = field(
        default_factory=lambda: os.environ.get("MLCD_KSERVE_NAMESPACE", "kserve")
    )
    #: The deployment mode of the InferenceServices mlcd creates: RawDeployment (Standard) or
    #: Serverless (Knative); None leaves it to KServe's default (``MLCD_KSERVE_DEPLOYMENT_MODE``).
    kserve_deployment_mode: str | None = field(
        default_factory=lambda: os.environ.get("MLCD_KSERVE_DEPLOYMENT_MODE") or None
    )
    #: Prometheus for rollout analyses and the degradation trigger; default: one the operator
    #: starts in its state folder (``MLCD_PROMETHEUS_URL``).
    prometheus_url: str | None = field(
        default_factory=lambda: os.environ.get("MLCD_PROMETHEUS_URL") or None
    )
    #: The folder whose target files that Prometheus discovers the router and model servers by
    #: (``MLCD_PROMETHEUS_TARGETS``; the embedded Prometheus' own by default).
    prometheus_targets: pathlib.Path | None = field(
        default_factory=lambda: (
            pathlib.Path(os.environ["MLCD_PROMETHEUS_TARGETS"])
            if os.environ.get("MLCD_PROMETHEUS_TARGETS")
            else None
        )
    )
    #: Fault injection for candidate model servers, a test and demo device
    #: (``MLCD_CANDIDATE_FAULTS``; see docs/rollout.md).
    candidate_faults: str | None = field(
        default_factory=lambda: os.environ.get("MLCD_CANDIDATE_FAULTS") or None
    )
    #: A file holding the current time (ISO 8601): for tests and dry runs of schedules
    #: (``MLCD_CLOCK_FILE``).
    clock_file: pathlib.Path | None = field(
        default_factory=lambda: (
            pathlib.Path(os.environ["MLCD_CLOCK_FILE"])
            if os.environ.get("MLCD_CLOCK_FILE")
            else None
        )
    )
