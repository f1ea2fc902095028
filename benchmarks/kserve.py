"""Figures of KServe in the test stack: what its controller adds to the stack's start and
memory, and how long an ONNX InferenceService takes to be Ready on the simulated node, as a
ratio to a plain Deployment of one pod (the baseline, measured the same way in the same run).

    python benchmarks/kserve.py [--rounds 10] [--json]

Run hack/bootstrap once before.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import psutil  # noqa: E402
from kubernetes import client  # noqa: E402

from testenv.kserve import KServe, onnx_inference_service  # noqa: E402
from testenv.stack import Stack  # noqa: E402

POLL = 0.02


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children, in MiB."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def until(check: Callable[[], bool], timeout: float = 60) -> float:
    """Seconds until ``check`` is true (polled every POLL seconds)."""
    begun = time.monotonic()
    while not check():
        if time.monotonic() - begun > timeout:
            raise TimeoutError(f"not done after {timeout} s")
        time.sleep(POLL)
    return time.monotonic() - begun


def isvc_ready(api: client.ApiClient, namespace: str, name: str) -> float:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        "serving.kserve.io",
        "v1beta1",
        namespace,
        "inferenceservices",
        onnx_inference_service(name, runtime="mlcd-onnx"),
    )

    def ready() -> bool:
        obj = custom.get_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", name
        )
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    return until(ready)


def deployment_ready(api: client.ApiClient, namespace: str, name: str) -> float:
    apps = client.AppsV1Api(api)
    labels = {"app": name}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "main", "image": "registry.invalid/x:1"}]},
                },
            },
        },
    )

    def ready() -> bool:
        status = apps.read_namespaced_deployment_status(name, namespace).status
        conditions = status.conditions or []
        return any(c.type == "Available" and c.status == "True" for c in conditions)

    return until(ready)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlcd-bench-kserve-") as root:
        stack = Stack(Path(root))
        try:
            begun = time.monotonic()
            stack.up("nodes")
            nodes = time.monotonic() - begun
            begun = time.monotonic()
            stack.up("kserve")
            kserve_start = time.monotonic() - begun
            component = stack.component("kserve")
            assert isinstance(component, KServe)
            cluster = component.cluster
            namespace = cluster.create_namespace(prefix="bench-")
            isvc, plain = [], []
            with cluster.api_client() as api:
                # Alternating, so both sides see the same load of the machine.
                for _ in range(args.rounds):
                    suffix = uuid.uuid4().hex[:6]
                    isvc.append(isvc_ready(api, namespace, f"m-{suffix}"))
                    plain.append(deployment_ready(api, namespace, f"d-{suffix}"))
            time.sleep(2)
            rss = round(sum(rss_mib(p.pid) for p in component.processes if p.pid), 1)
        finally:
            stack.stop()
    result: dict[str, Any] = {
        "nodes_start_s": round(nodes, 2),
        "kserve_start_s": round(kserve_start, 2),
        "kserve_manager_rss_mib": rss,
        "isvc_ready_median_s": round(statistics.median(isvc), 3),
        "deployment_ready_median_s": round(statistics.median(plain), 3),
        "ratio": round(statistics.median(isvc) / statistics.median(plain), 2),
        "rounds": args.rounds,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"apiserver, scheduler, kwok and a node ready   {result['nodes_start_s']:7.2f} s")
    print(f"KServe added (CRDs, config, webhooks, runtimes) {result['kserve_start_s']:7.2f} s")
    print(f"kserve-manager resident memory                 {rss:7.1f} MiB")
    print(
        f"ONNX InferenceService to Ready (median of {args.rounds})  "
        f"{result['isvc_ready_median_s']:7.3f} s"
    )
    baseline = result["deployment_ready_median_s"]
    print(f"Deployment of one pod to Available (baseline)  {baseline:7.3f} s")
    print(f"ratio InferenceService / Deployment            {result['ratio']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
