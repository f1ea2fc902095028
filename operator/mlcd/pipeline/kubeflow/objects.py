"""The Katib Experiment, the TrainJob and the PyTorchJob of a run, built from the Kubeflow
SDKs' own typed models (kubeflow-katib-api, kubeflow-trainer-api, kubeflow-training), so what
we create is checked against the definitions Kubeflow's own tools use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlcd.domain import search
from mlcd.domain.spec import (
    ModelPipeline,
    Parameter,
    Resources,
    Trainer,
    Tuning,
    duration_seconds,
)
from mlcd.pipeline.kubeflow.names import PIPELINE_LABEL, RUN_LABEL
from mlcd.pipeline.kubeflow.settings import ClusterSteps

#: Where a trial writes metrics for Katib's File collector (and the trainer contract's file).
METRICS_FILE = "/var/log/katib/metrics.json"
#: Scratch folder in a pod for the contract's ``MLCD_MODEL_DIR`` in trials.
SCRATCH = "/tmp/mlcd"
#: Katib algorithms that take a seed as the setting ``random_state``.
SEEDED = ("random", "tpe", "multivariate-tpe", "cmaes", "bayesianoptimization")
TRAINER_CONTAINER = "trainer"
#: A TrainJob's torch runtime sets only torchrun's PET_* variables; torchrun turns them into the
#: contract's RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (as the local engine's
#: torchrun does), and runs the trainer's own command.
TORCHRUN = ("torchrun", "--no-python")
PYTORCH_CONTAINER = "pytorch"  # the training operator finds the container by this name


@dataclass(frozen=True)
class Child:
    """Who the object belongs to and where it goes."""

    name: str
    namespace: str
    run_id: str
    pipeline: str
    env: Mapping[str, str] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {RUN_LABEL: _label(self.run_id), PIPELINE_LABEL: _label(self.pipeline)},
        }


def _label(value: str) -> str:
    return value[:63].strip("-_.")


def env_vars(pipeline: ModelPipeline, values: Mapping[str, str]) -> list[dict[str, Any]]:
    """The trainer contract's environment, the user's ``trainer.env`` and the artifact
    store's keys by reference to their Secret (never their values)."""
    spec = pipeline.spec
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items()]
    env += [{"name": e.name, "value": e.value} for e in spec.trainer.env]
    artifacts = spec.artifacts
    if artifacts is not None and artifacts.uri.startswith("s3://"):
        if artifacts.endpoint:
            env.append({"name": "AWS_ENDPOINT_URL", "value": artifacts.endpoint})
        ref = artifacts.credentials_secret_ref
        if ref is not None:
            for name, key in (
                ("AWS_ACCESS_KEY_ID", "accessKey"),
                ("AWS_SECRET_ACCESS_KEY", "secretKey"),
            ):
                env.append(
                    {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}}
                )
    return env


def resources(per_worker: Resources | None) -> dict[str, Any] | None:
    if per_worker is None:
        return None
    amounts: dict[str, str] = {}
    if per_worker.cpu:
        amounts["cpu"] = per_worker.cpu
    if per_worker.memory:
        amounts["memory"] = per_worker.memory
    if per_worker.gpu:
        amounts["nvidia.com/gpu"] = str(per_worker.gpu)
    return {"requests": amounts, "limits": amounts} if amounts else None


def _pod_metadata(child: Child, cluster: ClusterSteps) -> dict[str, Any]:
    template = cluster.pod_template.get("metadata") or {}
    meta: dict[str, Any] = {
        **template,
        "labels": {**(template.get("labels") or {}), RUN_LABEL: _label(child.run_id)},
    }
    annotations = {**(template.get("annotations") or {}), **cluster.pod_annotations}
    if annotations:
        meta["annotations"] = annotations
    return meta


def _pod_spec(container: dict[str, Any], trainer: Trainer, cluster: ClusterSteps) -> dict[str, Any]:
    """One container that runs once (restartPolicy Never), with the worker's resources, over
    the settings' pod template."""
    limits = resources(trainer.resources_per_worker)
    if limits:
        container["resources"] = limits
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if cluster.service_account:
        pod["serviceAccountName"] = cluster.service_account
    return _over_template(pod, cluster.pod_template.get("spec") or {})


def _over_template(pod: dict[str, Any], template: Mapping[str, Any]) -> dict[str, Any]:
    """``pod`` over the template's spec: mlcd's fields win, the template's one container
    gives the trainer's container what mlcd does not set, and its env comes first."""
    theirs = dict((template.get("containers") or [{}])[0])
    ours = pod["containers"][0]
    ours_env = ours.get("env") or []
    mine = {e["name"] for e in ours_env}
    env = [e for e in theirs.pop("env", None) or [] if e.get("name") not in mine] + ours_env
    container = {**theirs, **ours}
    if env:
        container["env"] = env
    return {**template, **pod, "containers": [container]}


def _image(trainer: Trainer) -> str:
    if not trainer.image:
        from mlcd.errors import PermanentError

        raise PermanentError("spec.trainer.image: required by the kubeflow engine")
    return trainer.image


# -- Katib -----------------------------------------------------------------------------------
def _number(kind: str, value: float) -> str:
    return str(int(value)) if kind == "int" else repr(float(value))


def _parameter(p: Parameter) -> dict[str, Any]:
    space: dict[str, Any] = {}
    if p.type in ("double", "int"):
        space = {"min": _number(p.type, p.min or 0), "max": _number(p.type, p.max or 0)}
        if p.step is not None:
            space["step"] = _number(p.type, p.step)
        space["distribution"] = p.distribution
    else:
        space = {"list": list(p.values or [])}
    return {"name": p.name, "parameterType": p.type, "feasibleSpace": space}


def metrics_collector(trainer: Trainer) -> dict[str, Any]:
    collector = trainer.metrics_collector
    if collector.kind == "File":
        return {
            "collector": {"kind": "File"},
            "source": {"fileSystemPath": {"path": METRICS_FILE, "kind": "File", "format": "JSON"}},
        }
    spec: dict[str, Any] = {"collector": {"kind": "StdOut"}}
    if collector.metrics_format:
        spec["source"] = {"filter": {"metricsFormat": list(collector.metrics_format)}}
    return spec


def experiment(
    pipeline: ModelPipeline, tuning: Tuning, child: Child, cluster: ClusterSteps
) -> dict[str, Any]:
    """A Katib v1beta1 Experiment from ``spec.tuning``: algorithm names 1:1, the trainer as
    each trial's Job, hyperparameters as ``--name=${trialParameters.name}``."""
    from kubeflow_katib_api import models as k

    trainer = pipeline.spec.trainer
    args = [
        *trainer.args,
        *tuning.trial_args,
        *(f"--{p.name}=${{trialParameters.{p.name}}}" for p in tuning.parameters),
    ]
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": _image(trainer),
        "command": list(trainer.command),
        "args": args,
        "env": env_vars(
            pipeline,
            {
                "MLCD_STAGE": "trial",
                **child.env,
                "MLCD_MODEL_DIR": SCRATCH,
                "MLCD_METRICS_FILE": METRICS_FILE,
                "MLCD_SEED": str(tuning.seed),
                "RANK": "0",
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "1",
                "MASTER_ADDR": "localhost",
                "MASTER_PORT": "29500",
            },
        ),
    }
    pod_spec = _pod_spec(container, trainer, cluster)
    trial_spec = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(duration_seconds(tuning.trial_timeout)) or 1,
            "template": {"metadata": _pod_metadata(child, cluster), "spec": pod_spec},
        },
    }
    objective: dict[str, Any] = {
        "type": tuning.objective.type,
        "objectiveMetricName": tuning.objective.metric,
    }
    if tuning.objective.goal is not None:
        objective["goal"] = tuning.objective.goal
    extra = [m for m in pipeline.spec.evaluation.extra_metrics if m != tuning.objective.metric]
    if extra:
        objective["additionalMetricNames"] = extra
    if tuning.objective.strategy is not None:
        objective["metricStrategies"] = [
            {"name": tuning.objective.metric, "value": tuning.objective.strategy}
        ]
    algorithm: dict[str, Any] = {"algorithmName": tuning.algorithm}
    if tuning.algorithm in SEEDED:
        algorithm["algorithmSettings"] = [{"name": "random_state", "value": str(tuning.seed)}]
    max_trials = tuning.max_trials
    if tuning.algorithm == "grid":
        max_trials = min(max_trials, search.grid_size(tuning.parameters))
    body = {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": child.metadata(),
        "spec": {
            "algorithm": algorithm,
            "objective": objective,
            "parameters": [_parameter(p) for p in tuning.parameters],
            "maxTrialCount": max_trials,
            "parallelTrialCount": min(tuning.parallel_trials, max_trials),
            # Katib fails at maxFailedTrialCount failures; mlcd tolerates maxFailedTrials.
            "maxFailedTrialCount": tuning.max_failed_trials + 1,
            "metricsCollectorSpec": metrics_collector(trainer),
            "trialTemplate": {
                "primaryContainerName": TRAINER_CONTAINER,
                "trialParameters": [
                    {"name": p.name, "reference": p.name, "description": f"--{p.name}"}
                    for p in tuning.parameters
                ],
                "trialSpec": trial_spec,
                "successCondition": 'status.conditions.#(type=="Complete")#|#(status=="True")#',
                "failureCondition": 'status.conditions.#(type=="Failed")#|#(status=="True")#',
            },
            "resumePolicy": "Never",
        },
    }
    return _checked(k.V1beta1Experiment, body)


def optimal_parameters(tuning: Tuning, status: Mapping[str, Any]) -> dict[str, search.ParamValue]:
    """The best trial's assignments, typed as the search space says."""
    from kubeflow_katib_api import models as k

    parsed = k.V1beta1ExperimentStatus.from_dict(dict(status))
    optimal = parsed.current_optimal_trial if parsed else None
    assigned = {
        a.name: a.value
        for a in ((optimal.parameter_assignments or []) if optimal else [])
        if a.name is not None
    }
    by_name = {p.name: p for p in tuning.parameters}
    return {n: search.typed(by_name[n], v) for n, v in assigned.items() if n in by_name}


# -- training --------------------------------------------------------------------------------
def train_job(
    pipeline: ModelPipeline, args: list[str], child: Child, cluster: ClusterSteps
) -> dict[str, Any]:
    """A Trainer v2 TrainJob: the runtime by reference, ``numNodes`` workers, the best
    parameters as arguments; the runtime's torch plugin sets the PET_* environment that
    torchrun, in front of the trainer's command, reads."""
    from kubeflow_trainer_api import models as t

    trainer = pipeline.spec.trainer
    spec: dict[str, Any] = {
        "runtimeRef": {
            "name": cluster.runtime,
            "kind": "ClusterTrainingRuntime",
            "apiGroup": "trainer.kubeflow.org",
        },
        "trainer": {
            "image": _image(trainer),
            "command": [*TORCHRUN, *trainer.command],
            "args": [*trainer.args, *args],
            "env": env_vars(pipeline, {"MLCD_STAGE": "train", **child.env}),
            "numNodes": trainer.workers,
            # One rank per pod: the world size is trainer.workers (the runtime's "auto"
            # would start a process per CPU of resourcesPerWorker).
            "numProcPerNode": 1,
        },
    }
    limits = resources(trainer.resources_per_worker)
    if limits:
        spec["trainer"]["resourcesPerNode"] = limits
    body = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": child.metadata(),
        "spec": spec,
    }
    return _checked(t.TrainerV1alpha1TrainJob, body)


def pytorch_job(
    pipeline: ModelPipeline, args: list[str], child: Child, cluster: ClusterSteps
) -> dict[str, Any]:
    """A training-operator PyTorchJob: one Master and ``workers - 1`` Workers; the operator
    sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK."""
    from kubeflow.training import models as m
    from kubeflow.training.api_client import ApiClient

    trainer = pipeline.spec.trainer
    container: dict[str, Any] = {
        "name": PYTORCH_CONTAINER,
        "image": _image(trainer),
        "command": list(trainer.command),
        "args": [*trainer.args, *args],
        "env": env_vars(pipeline, {"MLCD_STAGE": "train", **child.env}),
    }
    pod = _pod_spec(container, trainer, cluster)

    def replica(count: int) -> dict[str, Any]:
        template = {"metadata": _pod_metadata(child, cluster), "spec": pod}
        return {"replicas": count, "restartPolicy": "Never", "template": template}

    replicas = {"Master": replica(1)}
    if trainer.workers > 1:
        replicas["Worker"] = replica(trainer.workers - 1)
    body = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": child.metadata(),
        "spec": {
            "runPolicy": {"backoffLimit": 0, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": replicas,
        },
    }
    api = ApiClient()
    # The SDK's own client reads JSON into its models (the way it reads a job it is sent).
    typed = api._ApiClient__deserialize(body, "KubeflowOrgV1PyTorchJob")
    checked: dict[str, Any] = api.sanitize_for_serialization(typed)
    _same(m.KubeflowOrgV1PyTorchJob.__name__, body, checked)
    return checked


def _checked(model: Any, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` through the SDK's model and back: a mistyped field fails to parse, and a field
    the model does not know is dropped by it, which fails here."""
    parsed = model.from_dict(body)
    if parsed is None:
        raise ValueError(f"{model.__name__}: nothing parsed")
    out: dict[str, Any] = parsed.to_dict()
    _same(model.__name__, body, out)
    return out


def _same(model: str, sent: Any, kept: Any, path: str = "") -> None:
    if isinstance(sent, dict):
        if not isinstance(kept, dict):
            raise ValueError(f"{model}: {path or '.'} is not an object in the model")
        for key, value in sent.items():
            if key not in kept:
                raise ValueError(f"{model}: unknown field {path}.{key}")
            _same(model, value, kept[key], f"{path}.{key}")
    elif isinstance(sent, list):
        if not isinstance(kept, list) or len(kept) != len(sent):
            raise ValueError(f"{model}: {path} changed in the model")
        for i, (a, b) in enumerate(zip(sent, kept, strict=True)):
            _same(model, a, b, f"{path}[{i}]")
