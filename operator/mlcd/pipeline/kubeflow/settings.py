"""The ``engine`` pipeline parameter: what the cluster steps need besides the run context."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
    #: Seconds between looks at an Experiment or a job.
    poll_seconds: float = Field(default=2.0, gt=0)
    #: Kubeconfig of the steps; None: KUBECONFIG, then the pod's service account.
    kubeconfig: str | None = None

    @classmethod
    def parse(cls, text: str) -> ClusterSteps | None:
        return cls.model_validate_json(text) if text.strip() else None
