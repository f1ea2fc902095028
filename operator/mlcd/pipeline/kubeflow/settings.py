"""The ``engine`` pipeline parameter: what the cluster steps need besides the run context."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TrainingKind = Literal["TrainJob", "PyTorchJob"]


class ClusterSteps(BaseModel):
    """Set by the Kubeflow engine for each run; empty (the local engine) runs the steps here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["kubeflow"] = "kubeflow"
    #: The attempt of the run (a lost run is retried with the same id).
    attempt: int = Field(default=1, ge=1)
    #: The training job's kind: a Trainer v2 TrainJob or a training-operator PyTorchJob.
    training: TrainingKind = "TrainJob"
    #: The ClusterTrainingRuntime a TrainJob refers to.
    runtime: str = "torch-distributed"
    #: Service account of trial and training pods; None: the namespace's default.
    service_account: str | None = None
    #: Annotations of trial and PyTorchJob pods (e.g. sidecar.istio.io/inject: "false");
    #: a TrainJob's pods take theirs from its runtime.
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    #: A pod template (``metadata``, ``spec``) for trial and PyTorchJob pods: node placement,
    #: volumes, the container's volumeMounts...; mlcd's own fields win. A TrainJob's pods take
    #: theirs from its runtime.
    pod_template: dict[str, Any] = Field(default_factory=dict)
    #: Seconds between looks at an Experiment or a job.
    poll_seconds: float = Field(default=2.0, gt=0)
    #: Kubeconfig of the steps; None: KUBECONFIG, then the pod's service account.
    kubeconfig: str | None = None

    @field_validator("pod_template")
    @classmethod
    def _shape(cls, template: dict[str, Any]) -> dict[str, Any]:
        problems = pod_template_problems(template)
        if problems:
            raise ValueError("; ".join(problems))
        return template

    @classmethod
    def parse(cls, text: str) -> ClusterSteps | None:
        return cls.model_validate_json(text) if text.strip() else None


def pod_template_problems(template: Any) -> list[str]:
    """What is wrong with a pod template's shape (its fields are checked by the Kubeflow SDKs'
    models when the pods' objects are built)."""
    if not isinstance(template, Mapping):
        return ["must be a pod template: an object with metadata and spec"]
    problems = [f"{key}: not a field of a pod template" for key in template if key not in TEMPLATE]
    for key in TEMPLATE:
        if not isinstance(template.get(key) or {}, Mapping):
            problems.append(f"{key}: must be an object")
    spec = template.get("spec") or {}
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    if containers is not None and (not isinstance(containers, list) or len(containers) > 1):
        problems.append("spec.containers: at most one, merged into the trainer's container")
    return problems


TEMPLATE = ("metadata", "spec")
