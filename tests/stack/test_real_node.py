"""The real node: pods execute (kubelet + containerd + runc + CNI), Services and DNS work
(kube-proxy + CoreDNS), and a two-pod torchrun job trains with gloo over a headless Service."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from kubernetes import client

from helpers import wait_for
from testenv.cluster import Cluster
from testenv.images import BUSYBOX_IMAGE, PAUSE_IMAGE, Image, busybox_layer, files_layer
from testenv.images import python_mounts as project_python
from testenv.node import REAL_NODE_KEY, RealNode

pytestmark = pytest.mark.real_node


def container(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": BUSYBOX_IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
        **extra,
    }


def run_pod(
    core: client.CoreV1Api,
    namespace: str,
    node: RealNode,
    name: str,
    command: list[str],
    main: dict[str, Any] | None = None,
    **spec: Any,
) -> None:
    """A pod on the real node with one busybox container running ``command``."""
    spec["containers"] = [container("main", command, **(main or {}))]
    core.create_namespaced_pod(
        namespace, {"metadata": {"name": name}, "spec": node.pod_spec(**spec)}
    )


def finished(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 60) -> Any:
    return wait_for(
        f"pod {name} to finish",
        lambda: (
            pod
            if (pod := core.read_namespaced_pod_status(name, namespace)).status.phase
            in ("Succeeded", "Failed")
            else None
        ),
        timeout=timeout,
    )


def running(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 60) -> Any:
    def check() -> Any:
        pod = core.read_namespaced_pod_status(name, namespace)
        ready = {c.type: c.status for c in pod.status.conditions or []}.get("Ready")
        return pod if pod.status.phase == "Running" and ready == "True" else None

    return wait_for(f"pod {name} to run", check, timeout=timeout)


def terminated(pod: Any) -> Any:
    return pod.status.container_statuses[0].state.terminated


def test_the_node_is_ready_runs_containerd_and_only_takes_pods_that_ask(
    real_node: RealNode, api: client.ApiClient
) -> None:
    node = client.CoreV1Api(api).read_node(real_node.name)
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    assert node.status.node_info.kubelet_version == "v1.34.4"
    assert node.status.node_info.container_runtime_version.startswith("containerd://1.")
    assert {"type": "InternalIP", "address": real_node.ip} in [
        a.to_dict() for a in node.status.addresses
    ]
    assert node.metadata.labels[REAL_NODE_KEY] == "true"
    assert [(t.key, t.effect) for t in node.spec.taints] == [(REAL_NODE_KEY, "NoSchedule")]
    assert {BUSYBOX_IMAGE, PAUSE_IMAGE} <= set(real_node.images())


def test_a_pod_runs_and_kubectl_reads_its_logs_and_execs_in_it(
    real_node: RealNode, apiserver: Cluster, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    hello = ["sh", "-c", "echo hi from $(hostname); sleep 3600"]
    run_pod(core, namespace, real_node, "hello", hello)
    pod = running(core, namespace, "hello")
    assert pod.spec.node_name == real_node.name
    assert pod.status.container_statuses[0].container_id.startswith("containerd://")
    logs = apiserver.kubectl("logs", "-n", namespace, "hello").stdout
    assert logs.strip() == "hi from hello"
    pid1 = apiserver.kubectl("exec", "-n", namespace, "hello", "--", "cat", "/proc/1/comm")
    assert pid1.stdout.strip() == "sleep"
    # The pod's IP is on the node's pod subnet; its network is its own.
    prefix = real_node.pod_subnet.rsplit(".", 1)[0] + "."
    assert pod.status.pod_ip.startswith(prefix)
    addresses = apiserver.kubectl("exec", "-n", namespace, "hello", "--", "ip", "-4", "addr")
    assert f"inet {pod.status.pod_ip}/" in addresses.stdout


def test_a_failing_container_fails_the_pod_with_its_exit_code(
    real_node: RealNode, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    giving_up = ["sh", "-c", "echo giving up >&2; exit 3"]
    run_pod(core, namespace, real_node, "fails", giving_up, restartPolicy="Never")
    pod = finished(core, namespace, "fails")
    assert pod.status.phase == "Failed"
    assert terminated(pod).exit_code == 3
    assert terminated(pod).reason == "Error"


def test_the_memory_limit_is_enforced(
    real_node: RealNode, api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    limits = {"resources": {"limits": {"memory": "64Mi"}}}
    # dd holds one buffer of the block size: 16 MiB fits the limit, 200 MiB does not.
    for name, block in (("fits", "16M"), ("too-big", "200M")):
        dd = ["dd", "if=/dev/zero", "of=/dev/null", f"bs={block}", "count=1"]
        run_pod(core, namespace, real_node, name, dd, restartPolicy="Never", main=limits)
    fits = finished(core, namespace, "fits")
    assert fits.status.phase == "Succeeded", terminated(fits)
    killed = finished(core, namespace, "too-big")
    assert killed.status.phase == "Failed"
    assert terminated(killed).reason == "OOMKilled"
    assert terminated(killed).exit_code == 137


def web_deployment(node: RealNode, name: str, replicas: int) -> dict[str, Any]:
    """busybox httpd pods that answer with their own name, Ready when they answer."""
    labels = {"app": name}
    serve = "mkdir /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": node.pod_spec(
                    containers=[container("web", ["sh", "-c", serve], readinessProbe=probe)]
                ),
            },
        },
    }


def ready_deployment(apps: client.AppsV1Api, namespace: str, name: str, replicas: int) -> None:
    wait_for(
        f"deployment {name} to have {replicas} ready replicas",
        lambda: (
            (apps.read_namespaced_deployment_status(name, namespace).status.ready_replicas or 0)
            == replicas
        ),
        timeout=90,
    )


def test_a_deployment_of_several_replicas_becomes_ready_and_each_pod_answers(
    real_node: RealNode, api: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, web_deployment(real_node, "web", 3))
    ready_deployment(apps, namespace, "web", 3)
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len({p.status.pod_ip for p in pods}) == 3
    for pod in pods:
        assert pod.spec.node_name == real_node.name
        # The host reaches pod IPs through the node's veth and its route to the pod subnet.
        with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8080/", timeout=5) as response:
            assert response.read().decode().strip() == pod.metadata.name


def test_a_service_cluster_ip_and_dns_name_reach_pods_from_another_pod(
    real_node: RealNode, apiserver: Cluster, api: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, web_deployment(real_node, "web", 2))
    service = core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    run_pod(core, namespace, real_node, "client", ["sleep", "3600"])
    ready_deployment(apps, namespace, "web", 2)
    running(core, namespace, "client")
    backends = {
        p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector="app=web").items
    }

    def fetch(url: str) -> str:
        # busybox's wget -T crashes (Debian's static build): bound it with timeout instead.
        wget = ["timeout", "5", "wget", "-q", "-O", "-", url]
        result = apiserver.kubectl("exec", "-n", namespace, "client", "--", *wget, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    # kube-proxy programs the ClusterIP a moment after the endpoints are ready.
    cluster_ip = service.spec.cluster_ip
    assert wait_for("the ClusterIP to answer", lambda: fetch(f"http://{cluster_ip}/"), 30) in (
        backends
    )
    fqdn = f"web.{namespace}.svc.{real_node.cluster_domain}"
    lookup = apiserver.kubectl("exec", "-n", namespace, "client", "--", "nslookup", fqdn)
    assert f"Address: {cluster_ip}" in lookup.stdout
    answers = {fetch(f"http://{name}/") for name in ("web", fqdn, fqdn, "web", "web", fqdn)}
    assert answers <= backends and answers


ALLREDUCE = b"""\
import os
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"rank {rank} of {world} on {os.uname().nodename}: sum {value.item():g}", flush=True)
dist.destroy_process_group()
"""


def test_a_two_pod_torchrun_job_rendezvouses_over_a_headless_service(
    real_node: RealNode, apiserver: Cluster, api: client.ApiClient, namespace: str
) -> None:
    # The script comes in an image of our own (busybox + one file); Python and torch come from
    # the project's environment through read-only hostPath mounts.
    image = "mlcd.test/allreduce:1"
    real_node.import_images(
        Image(image, (busybox_layer(), files_layer({"/app/allreduce.py": ALLREDUCE})))
    )
    python = project_python()
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    # Indexed Job pods are named <job>-<index>; with the headless Service as their subdomain,
    # rank 0 is ddp-0.ddp in the namespace's DNS (how JobSet and Kubeflow Trainer do it).
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "ddp"},
            "spec": {
                "clusterIP": "None",
                "selector": {"job-name": "ddp"},
                "publishNotReadyAddresses": True,
            },
        },
    )
    torchrun = [
        python.python,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--master-addr=ddp-0.ddp",
        "--master-port=29500",
        "/app/allreduce.py",
    ]
    batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "ddp"},
            "spec": {
                "completions": 2,
                "parallelism": 2,
                "completionMode": "Indexed",
                "backoffLimit": 0,
                "template": {
                    "spec": real_node.pod_spec(
                        restartPolicy="Never",
                        subdomain="ddp",
                        volumes=python.volumes,
                        containers=[
                            {
                                "name": "trainer",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "command": torchrun,
                                "env": [{"name": "GLOO_SOCKET_IFNAME", "value": "eth0"}],
                                "volumeMounts": python.volume_mounts,
                            }
                        ],
                    )
                },
            },
        },
    )

    def done() -> Any:
        job = batch.read_namespaced_job_status("ddp", namespace)
        conditions = {c.type: c.status for c in job.status.conditions or []}
        return job if "True" in (conditions.get("Complete"), conditions.get("Failed")) else None

    job = wait_for("the torchrun job to finish", done, timeout=240, interval=1)
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=ddp").items
    # Keyed by hostname: <job>-<index>, what the ranks are known by in DNS.
    logs = {
        p.spec.hostname: apiserver.kubectl("logs", "-n", namespace, p.metadata.name).stdout
        for p in pods
    }
    assert job.status.succeeded == 2, logs
    for rank in (0, 1):
        assert f"rank {rank} of 2 on ddp-{rank}: sum 3" in logs[f"ddp-{rank}"], logs


def test_it_coexists_with_the_simulated_node(
    real_node: RealNode, nodes: list[str], api: client.ApiClient, namespace: str
) -> None:
    """kwok's node takes the pods that do not ask for the real node; kwok leaves the real
    node's pods alone, and the real node runs them."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    simulated = web_deployment(real_node, "simulated", 2)
    simulated["spec"]["template"]["spec"] = {
        "containers": [{"name": "main", "image": "registry.invalid/never-pulled:1"}]
    }
    apps.create_namespaced_deployment(namespace, simulated)
    apps.create_namespaced_deployment(namespace, web_deployment(real_node, "real", 2))
    ready_deployment(apps, namespace, "simulated", 2)
    ready_deployment(apps, namespace, "real", 2)
    for app, node in (("simulated", nodes[0]), ("real", real_node.name)):
        for pod in core.list_namespaced_pod(namespace, label_selector=f"app={app}").items:
            assert pod.spec.node_name == node
            container_id = pod.status.container_statuses[0].container_id or ""
            assert container_id.startswith("containerd://") == (app == "real")
