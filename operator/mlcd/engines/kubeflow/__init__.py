"""The Kubeflow engine: the pipeline on the Kubeflow Pipelines API, tuning on Katib, training
on the Kubeflow Trainer or the training operator."""

from mlcd.engines.kubeflow.engine import KubeflowEngine
from mlcd.engines.kubeflow.settings import KubeflowSettings

__all__ = ["KubeflowEngine", "KubeflowSettings"]
