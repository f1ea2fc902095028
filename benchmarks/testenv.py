"""Figures of the test stack: warm bootstrap, start to ready, pod start latency, memory.

    python benchmarks/testenv.py [--no-nodes] [--no-real-node] [--runs N] [--pods N] [--json]

Each run starts a fresh stack in three steps and times each: the control plane and the
services (API server, controller manager, scheduler, MinIO, Prometheus, HAProxy), then kwok's
simulated node, then the real node (kubelet, containerd, kube-proxy, CoreDNS). Then it creates
pods one after the other on each node and times each from its creation to Ready (kwok's node is
the baseline, measured the same way), and measures the resident memory of every component,
the real node counted as every process in its namespaces (containerd's shims and the pods'
sandboxes included). Run hack/bootstrap once before (its first run prints the cold build times).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import client, watch  # noqa: E402

from testenv.cluster import Cluster  # noqa: E402
from testenv.images import BUSYBOX_IMAGE  # noqa: E402
from testenv.kube import KubeAPIServer  # noqa: E402
from testenv.node import NodeSandbox, RealNode  # noqa: E402
from testenv.stack import Stack  # noqa: E402

BASE = ["apiserver", "minio", "prometheus", "haproxy"]
NODE_PARTS = ("node-sandbox", "containerd", "kubelet", "kube-proxy", "coredns")
SHIMS = "shims, pod sandboxes"


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def rss_mib(pgid: int) -> float:
    """Resident memory of every process in process group ``pgid``, in MiB."""
    total_kib = 0
    for pid in _pids():
        try:
            if _pgid(pid) == pgid:
                total_kib += _rss_kib(pid)
        except (OSError, ValueError):
            continue
    return total_kib / 1024


def _pgid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[2])


def namespace_rss_mib(init_pid: int, own_groups: set[int]) -> float:
    """Resident memory of the processes in the PID namespace of ``init_pid`` that are in none
    of ``own_groups`` (containerd's shims, the pods' sandboxes and containers), in MiB."""
    namespace = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    total_kib = 0
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino == namespace and _pgid(pid) not in own_groups:
                total_kib += _rss_kib(pid)
        except (OSError, ValueError):
            continue
    return total_kib / 1024


def pod_ready(pod: Any) -> bool:
    conditions = {c.type: c.status for c in pod.status.conditions or []}
    return pod.status.phase == "Running" and conditions.get("Ready") == "True"


def pod_start_latencies(
    cluster: Cluster, spec: dict[str, Any], count: int, namespace: str
) -> list[float]:
    """Create ``count`` pods one after the other; seconds from each creation to Ready."""
    latencies = []
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        for index in range(count):
            name = f"pod-{index}"
            begun = time.monotonic()
            core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": spec})
            stream = watch.Watch().stream(
                core.list_namespaced_pod,
                namespace,
                field_selector=f"metadata.name={name}",
                timeout_seconds=120,
            )
            for event in stream:
                if pod_ready(event["object"]):
                    latencies.append(time.monotonic() - begun)
                    break
            else:
                raise TimeoutError(f"pod {name} on {spec} not Ready in 120 s")
    return latencies


def timed_up(stack: Stack, *groups: str) -> float:
    begun = time.monotonic()
    stack.up(*groups)
    return round(time.monotonic() - begun, 2)


def measure(nodes: bool, real_node: bool, pods: int, settle: float) -> dict[str, Any]:
    """One fresh stack: start times of each step, memory, then pod start latencies."""
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mlcd-bench-") as root:
        stack = Stack(Path(root))
        try:
            figures["base_s"] = timed_up(stack, *BASE, "kube-scheduler")
            if nodes:
                figures["kwok_node_s"] = timed_up(stack, "nodes")
            if real_node:
                figures["real_node_s"] = timed_up(stack, "real_node")
            time.sleep(settle)
            rss = {
                c.name: round(sum(rss_mib(p.pid) for p in c.processes if p.pid), 1)
                for c in stack.components()
            }
            if real_node:
                sandbox = stack.component("node-sandbox")
                assert isinstance(sandbox, NodeSandbox)
                # containerd's shims and the pods' sandboxes are no process group of ours.
                groups = {p.pid for c in stack.components() for p in c.processes if p.pid}
                rss[SHIMS] = round(namespace_rss_mib(sandbox.sandbox.init_pid, groups), 1)
            figures["rss_mib"] = rss
            apiserver = stack.component("kube-apiserver")
            assert isinstance(apiserver, KubeAPIServer)
            cluster = Cluster(apiserver)
            if nodes:
                simulated = {"containers": [{"name": "main", "image": "registry.invalid/x:1"}]}
                namespace = cluster.create_namespace(prefix="bench-")
                figures["kwok_pod_s"] = pod_start_latencies(cluster, simulated, pods, namespace)
            if real_node:
                node = RealNode.of(stack)
                sleeper = {
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                }
                namespace = cluster.create_namespace(prefix="bench-")
                spec = node.pod_spec(containers=[sleeper])
                figures["real_pod_s"] = pod_start_latencies(cluster, spec, pods, namespace)
                time.sleep(settle)
                groups = {p.pid for c in stack.components() for p in c.processes if p.pid}
                figures["rss_pods_mib"] = {
                    SHIMS: round(namespace_rss_mib(sandbox.sandbox.init_pid, groups), 1),
                    "kubelet": round(rss_mib(stack.component("kubelet").processes[0].pid), 1),
                    "containerd": round(rss_mib(stack.component("containerd").processes[0].pid), 1),
                }
        finally:
            stack.stop()
    return figures


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-nodes", action="store_true", help="leave out kwok's node")
    parser.add_argument("--no-real-node", action="store_true", help="leave out the real node")
    parser.add_argument("--runs", type=int, default=3, help="fresh stacks to start (median)")
    parser.add_argument("--pods", type=int, default=20, help="pods to start on each node")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring RSS")
    args = parser.parse_args()
    nodes, real_node = not args.no_nodes, not args.no_real_node

    begun = time.monotonic()
    subprocess.run([str(REPO / "hack" / "bootstrap")], check=True, capture_output=True)
    warm = round(time.monotonic() - begun, 2)

    runs = [measure(nodes, real_node, args.pods, args.settle) for _ in range(args.runs)]
    key = "real_node_s" if real_node else "kwok_node_s" if nodes else "base_s"
    runs.sort(key=lambda r: float(r[key]))
    median = runs[len(runs) // 2]
    rss: dict[str, float] = median["rss_mib"]
    node_total = sum(v for k, v in rss.items() if k in (*NODE_PARTS, SHIMS))
    without_node = sum(rss.values()) - node_total
    figures: dict[str, Any] = {"warm_bootstrap_s": warm, "runs": runs}
    for step in ("base_s", "kwok_node_s", "real_node_s"):
        if step in median:
            figures[step] = [r[step] for r in runs]
    for side in ("kwok_pod_s", "real_pod_s"):
        if side in median:
            figures[side.replace("_s", "_p50_s")] = p50([x for r in runs for x in r[side]])
    figures["rss_without_real_node_mib"] = round(without_node, 1)
    figures["rss_real_node_mib"] = round(node_total, 1)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0

    print(f"warm bootstrap: {warm:.2f} s")
    print(f"start, {args.runs} fresh stacks (each step after the one before):")
    labels = {
        "base_s": "API server, controllers, scheduler, MinIO, Prometheus, HAProxy",
        "kwok_node_s": "kwok's simulated node, to Ready",
        "real_node_s": "the real node, to Ready (DNS and proxy ready)",
    }
    for step, label in labels.items():
        if step in figures:
            print(f"  {label:<66} " + ", ".join(f"{s:.2f} s" for s in figures[step]))
    if nodes and real_node:
        ratio = p50(figures["real_node_s"]) / p50(figures["kwok_node_s"])
        print(f"  real node / kwok node start: {ratio:.2f}")
    count = args.pods * args.runs
    for side, label in (("kwok_pod_p50_s", "kwok's node"), ("real_pod_p50_s", "the real node")):
        if side in figures:
            print(
                f"pod start latency, creation to Ready, p50 of {count} on {label}: "
                f"{figures[side]:.3f} s"
            )
    if nodes and real_node:
        ratio = figures["real_pod_p50_s"] / figures["kwok_pod_p50_s"]
        print(f"  real / kwok pod start latency: {ratio:.2f}")
    print(f"resident memory of the median run ({args.settle:.0f} s after ready, before pods):")
    for name, mib in rss.items():
        print(f"  {name:<26} {mib:7.1f} MiB")
    print(f"  {'stack without the node':<26} {without_node:7.1f} MiB")
    if real_node:
        print(f"  {'the real node':<26} {node_total:7.1f} MiB")
        print(
            f"  {'stack with the node':<26} {without_node + node_total:7.1f} MiB "
            f"({(without_node + node_total) / without_node:.2f} x)"
        )
        print(f"with {args.pods} pods running on the real node:")
        for name, mib in median["rss_pods_mib"].items():
            print(f"  {name:<26} {mib:7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
