"""A stack with a real node in a process of its own, for the residue tests to stop or kill.

    python real_node_child.py ROOT

Starts the real node under ROOT, runs a pod behind a Service (so containers, their mounts and
network namespaces, kube-proxy's rules and the CNI bridge all exist), prints one JSON line with
what identifies the node on the host, then stops the stack when a line "stop" arrives on stdin.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client

from testenv.cluster import Cluster
from testenv.images import BUSYBOX_IMAGE
from testenv.kube import KubeAPIServer
from testenv.node import NodeSandbox, RealNode
from testenv.stack import Stack


def main() -> int:
    stack = Stack(Path(sys.argv[1]))
    try:
        stack.up("real_node")
        apiserver = stack.component("kube-apiserver")
        sandbox = stack.component("node-sandbox")
        assert isinstance(apiserver, KubeAPIServer) and isinstance(sandbox, NodeSandbox)
        node = RealNode.of(stack)
        cluster = Cluster(apiserver)
        namespace = cluster.create_namespace()
        with cluster.api_client() as api:
            core = client.CoreV1Api(api)
            labels = {"app": "sleeper"}
            spec = node.pod_spec(
                containers=[
                    {
                        "name": "main",
                        "image": BUSYBOX_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                    }
                ]
            )
            core.create_namespaced_pod(
                namespace, {"metadata": {"name": "sleeper", "labels": labels}, "spec": spec}
            )
            core.create_namespaced_service(
                namespace,
                {
                    "metadata": {"name": "sleeper"},
                    "spec": {"selector": labels, "ports": [{"port": 80}]},
                },
            )
            deadline = time.monotonic() + 60
            while core.read_namespaced_pod_status("sleeper", namespace).status.phase != "Running":
                if time.monotonic() > deadline:
                    raise TimeoutError("the pod did not run")
                time.sleep(0.1)
        init = sandbox.sandbox.init_pid
        facts = {
            "slot": sandbox.sandbox.addresses.slot,
            "supervisor_pid": sandbox.sandbox.supervisor_pid,
            "init_pid": init,
            "netns": os.stat(f"/proc/{init}/ns/net").st_ino,
            "pidns": os.stat(f"/proc/{init}/ns/pid").st_ino,
            "mntns": os.stat(f"/proc/{init}/ns/mnt").st_ino,
            "pod_subnet": node.pod_subnet,
        }
        print(json.dumps(facts), flush=True)
        for line in sys.stdin:
            if line.strip() == "stop":
                break
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
