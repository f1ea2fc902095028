"""How the operator reaches Kubeflow: read from the environment, each with a default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from mlcd.errors import FieldProblem, SpecError
from mlcd.pipeline.kubeflow.settings import pod_template_problems

POD_TEMPLATE = "MLCD_KUBEFLOW_POD_TEMPLATE"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class SecretKeyRef:
    """A key of a Secret: ``namespace/name`` and the key holding the value."""

    namespace: str
    name: str
    key: str = "token"

    @classmethod
    def parse(cls, text: str, setting: str) -> SecretKeyRef:
        ref, _, key = text.partition("#")
        namespace, _, name = ref.partition("/")
        if not namespace or not name:
            raise SpecError([FieldProblem(setting, f"{text!r} is not namespace/name[#key]")])
        return cls(namespace, name, key or "token")

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} (key {self.key})"


@dataclass(frozen=True)
class KubeflowSettings:
    """The Kubeflow engine's settings. Only ``endpoint`` is required to enable it."""

    #: The KFP API, e.g. http://ml-pipeline.kubeflow:8888 (``MLCD_KFP_ENDPOINT``).
    endpoint: str = field(default_factory=lambda: _env("MLCD_KFP_ENDPOINT"))
    #: KFP namespace of the runs (a profile in multi-user KFP) (``MLCD_KFP_NAMESPACE``).
    namespace: str = field(default_factory=lambda: _env("MLCD_KFP_NAMESPACE", "kubeflow"))
    #: A bearer token for the KFP API, by reference only: ``namespace/name[#key]`` of a
    #: Secret (``MLCD_KFP_TOKEN_SECRET``); key default ``token``.
    token_secret: SecretKeyRef | None = field(
        default_factory=lambda: (
            SecretKeyRef.parse(_env("MLCD_KFP_TOKEN_SECRET"), "MLCD_KFP_TOKEN_SECRET")
            if _env("MLCD_KFP_TOKEN_SECRET")
            else None
        )
    )
    #: TrainJob (Kubeflow Trainer v2) or PyTorchJob (training operator)
    #: (``MLCD_KUBEFLOW_TRAINING``).
    training: Literal["TrainJob", "PyTorchJob"] = field(
        default_factory=lambda: cast(
            Literal["TrainJob", "PyTorchJob"], _env("MLCD_KUBEFLOW_TRAINING", "TrainJob")
        )
    )
    #: The ClusterTrainingRuntime of TrainJobs (``MLCD_KUBEFLOW_RUNTIME``).
    runtime: str = field(default_factory=lambda: _env("MLCD_KUBEFLOW_RUNTIME", "torch-distributed"))
    #: Service account of trial and training pods; empty: the namespace's default
    #: (``MLCD_KUBEFLOW_SERVICE_ACCOUNT``).
    service_account: str = field(default_factory=lambda: _env("MLCD_KUBEFLOW_SERVICE_ACCOUNT"))
    #: Annotations of trial and PyTorchJob pods, ``key=value`` comma-separated
    #: (``MLCD_KUBEFLOW_POD_ANNOTATIONS``).
    pod_annotations: dict[str, str] = field(
        default_factory=lambda: dict(
            item.split("=", 1)
            for item in _env("MLCD_KUBEFLOW_POD_ANNOTATIONS").split(",")
            if "=" in item
        )
    )
    #: A pod template for trial and PyTorchJob pods (node placement, volumes, ...), as JSON or
    #: YAML (``MLCD_KUBEFLOW_POD_TEMPLATE``); mlcd's own fields win.
    pod_template: dict[str, Any] = field(default_factory=lambda: _pod_template(_env(POD_TEMPLATE)))
    #: Seconds between the steps' looks at an Experiment or a job (``MLCD_KUBEFLOW_POLL``).
    poll_seconds: float = field(default_factory=lambda: float(_env("MLCD_KUBEFLOW_POLL", "5")))
    #: Kubeconfig the steps use instead of their pod's service account; for steps that run
    #: outside the cluster (``MLCD_KUBEFLOW_STEPS_KUBECONFIG``).
    steps_kubeconfig: str = field(default_factory=lambda: _env("MLCD_KUBEFLOW_STEPS_KUBECONFIG"))
    #: Tries of one KFP API call before it counts as unreachable, with doubling pauses.
    attempts: int = 4
    backoff_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.training not in ("TrainJob", "PyTorchJob"):
            raise SpecError(
                [FieldProblem("MLCD_KUBEFLOW_TRAINING", "must be TrainJob or PyTorchJob")]
            )
        problems = pod_template_problems(self.pod_template)
        if problems:
            raise SpecError([FieldProblem(POD_TEMPLATE, p) for p in problems])


def _pod_template(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([FieldProblem(POD_TEMPLATE, f"not JSON or YAML: {exc}")]) from exc
    if not isinstance(loaded, dict):
        raise SpecError([FieldProblem(POD_TEMPLATE, "must be a pod template: an object")])
    return loaded
