"""What the Kubeflow engine's tests share: an engine on the fake KFP API, the run they
submit, and the parts they play (Katib's controller, the work inside pods)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from fakes.kfp_api import FakeKFP
from helpers import softmax_pipeline
from mlcd.engines.kubeflow import KubeflowEngine, KubeflowSettings
from mlcd.pipeline.kubeflow import objects
from mlcd.ports import PipelineKey, RunKey, RunRequest
from testenv.cluster import Cluster
from testenv.kubeflow import HOLD

CHAOS_FAIL = "pod-container-running-failed.stage.kwok.x-k8s.io"


def engine_for(fake: FakeKFP, cluster: Cluster, **overrides: Any) -> KubeflowEngine:
    settings = KubeflowSettings(
        **{
            "endpoint": fake.url,
            "namespace": fake.namespace,
            "token_secret": None,
            "poll_seconds": 0.3,
            "steps_kubeconfig": str(cluster.kubeconfig),
            "backoff_seconds": 0.05,
            **overrides,
        }
    )
    return KubeflowEngine(settings)


def wait(what: str, probe: Callable[[], Any], timeout: float = 120, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(every)


class KubeflowAPI:
    """What the tests do on the API server: read children, play Katib and the pods."""

    def __init__(self, cluster: Cluster) -> None:
        self.api = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def close(self) -> None:
        self.api.close()

    def objects(self, group: str, version: str, plural: str, namespace: str) -> list[Any]:
        listed = self.custom.list_namespaced_custom_object(group, version, namespace, plural)
        return list(listed["items"])

    def one(self, group: str, version: str, plural: str, namespace: str) -> dict[str, Any]:
        found = wait(
            f"a {plural} in {namespace}",
            lambda: self.objects(group, version, plural, namespace),
        )
        assert len(found) == 1, [o["metadata"]["name"] for o in found]
        return dict(found[0])

    # -- Katib's controller, played ----------------------------------------------------------
    def experiment(self, namespace: str) -> dict[str, Any]:
        return self.one("kubeflow.org", "v1beta1", "experiments", namespace)

    def finish_experiment(
        self,
        namespace: str,
        name: str,
        *,
        params: dict[str, str] | None = None,
        metric: tuple[str, str] | None = None,
        failed: tuple[str, str] | None = None,
    ) -> None:
        """Sets the status Katib's controller would: Succeeded with an optimal trial, or
        Failed with Katib's reason."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [
            {
                "type": "Created",
                "status": "True",
                "reason": "ExperimentCreated",
                "message": "Experiment is created",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
        ]
        status: dict[str, Any] = {"startTime": now, "completionTime": now}
        if failed is not None:
            conditions.append(
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": failed[0],
                    "message": failed[1],
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                }
            )
            status.update(trials=2, trialsFailed=2)
        else:
            conditions.append(
                {
                    "type": "Succeeded",
                    "status": "True",
                    "reason": "ExperimentMaxTrialsReached",
                    "message": "Experiment has succeeded because max trial count has reached",
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                }
            )
            observation = (
                {
                    "metrics": [
                        {"name": metric[0], "latest": metric[1], "min": metric[1], "max": metric[1]}
                    ]
                }
                if metric
                else {}
            )
            status.update(
                trials=2,
                trialsSucceeded=2,
                currentOptimalTrial={
                    "bestTrialName": f"{name}-best",
                    "parameterAssignments": [
                        {"name": k, "value": v} for k, v in (params or {}).items()
                    ],
                    "observation": observation,
                },
            )
        status["conditions"] = conditions
        self.custom.patch_namespaced_custom_object_status(
            "kubeflow.org", "v1beta1", namespace, "experiments", name, {"status": status}
        )

    # -- the kubelet's work, played ----------------------------------------------------------
    def pods(self, namespace: str, selector: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(namespace, label_selector=selector).items)

    def running(self, namespace: str, selector: str, count: int) -> list[Any]:
        def ready() -> list[Any]:
            pods = self.pods(namespace, selector)
            up = [p for p in pods if p.status and p.status.phase == "Running"]
            return up if len(up) == count else []

        return list(wait(f"{count} running pods {selector}", ready))

    def release(self, pod: Any, fail: bool = False) -> None:
        """Ends a held pod: kwok completes it, or fails it (its chaos stage) with ``fail``."""
        patch: dict[str, Any] = {"metadata": {"annotations": {HOLD: None}}}
        if fail:
            patch["metadata"]["labels"] = {CHAOS_FAIL: "true"}
        self.core.patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace, patch)


def play_work(pod: Any, container: str) -> subprocess.CompletedProcess[str]:
    """Runs the pod's container on this machine as the kubelet would start it: its command,
    arguments and environment (the values it sets, not references to Secrets). A TrainJob's
    ``torchrun --no-python`` is left out: the ranks cannot meet here, so rank 0's trainer runs
    alone (the real node's tests run torchrun for real)."""
    spec = next(c for c in pod.spec.containers if c.name == container)
    env = {e.name: e.value for e in spec.env or [] if e.value is not None}
    command = list(spec.command or [])
    if command[:2] == list(objects.TORCHRUN):
        command = command[2:]
    command = [sys.executable if part == "python" else part for part in command]
    return subprocess.run(
        [*command, *(spec.args or [])],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


JOBS = {
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "node"),
    "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs", "pytorch"),
}
POD_SELECTORS = {
    "TrainJob": "jobset.sigs.k8s.io/jobset-name={}",
    "PyTorchJob": "training.kubeflow.org/job-name={}",
}
RANK0 = {
    "TrainJob": lambda pod: (
        pod.metadata.labels.get("batch.kubernetes.io/job-completion-index") == "0"
    ),
    "PyTorchJob": lambda pod: pod.metadata.name.endswith("-master-0"),
}


def resource(
    namespace: str, digits: pathlib.Path, artifacts: pathlib.Path, **spec: Any
) -> dict[str, Any]:
    body = softmax_pipeline(str(digits))
    body["metadata"]["namespace"] = namespace
    body["spec"]["trainer"].update(image="registry.test/softmax:1", workers=2)
    body["spec"].update(engine="kubeflow", artifacts={"uri": str(artifacts)}, **spec)
    return body


def key(namespace: str, run_id: str = "digits-1", name: str = "digits") -> RunKey:
    """The engine's key of a run of pipeline ``name`` (no uid: created by the test, not the
    API server)."""
    return RunKey(PipelineKey(namespace, name), run_id)


def request(body: dict[str, Any], run_id: str = "digits-1") -> RunRequest:
    meta = body["metadata"]
    return RunRequest(key=key(meta["namespace"], run_id, meta["name"]), trigger="manual", spec=body)
