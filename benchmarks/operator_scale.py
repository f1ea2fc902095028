"""The operator with many ModelPipelines on the real API server, the engine replaced through its
port by a no-op engine (a run is accepted, then ends rejected: nothing is trained).

    .venv/bin/python benchmarks/operator_scale.py [--pipelines 1000] [--quiet-window 60]

Prints the time until every pipeline is steady (goal <= 60 s), the apply -> run-started latency
p50/p99 (goal p50 <= 1 s), the operator's RSS (goal <= 300 MB) and the API write requests per
minute once nothing changes (goal 0).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


class NoopEngine:
    """Accepts a run and reports it finished (rejected) at the next look: the benchmark
    measures the operator, not the training."""

    def __init__(self) -> None:
        self.runs: dict[Any, Any] = {}

    def submit(self, request: Any) -> None:
        self.runs.setdefault(request.key, request)

    def get(self, key: Any) -> Any:
        from mlcd.domain.records import RunRecord

        request = self.runs.get(key)
        if request is None:
            return None
        return RunRecord(
            id=key.run,
            trigger=request.trigger,
            result="rejected",
            stage="validate",
            reason="no-op engine: nothing was trained",
        )

    def cancel(self, key: Any) -> None:
        self.runs.pop(key, None)

    def resource(self, key: Any) -> dict[str, Any] | None:
        request = self.runs.get(key)
        return request.spec if request else None

    def live(self, pipeline: Any) -> list[str]:
        return sorted({k.run for k in self.runs if k.pipeline == pipeline})

    def finalize(self, key: Any, record: Any) -> None:
        """Nothing kept."""


def serve_operator(state: str, pipelines: int) -> None:
    """The operator process of the benchmark (this script run with --operator)."""
    import logging

    sys.modules.setdefault("kubernetes", None)  # as `mlcd operator` does  # type: ignore[arg-type]
    from mlcd.k8s.operator import run
    from mlcd.settings import OperatorSettings

    logging.basicConfig(level=logging.WARNING)
    # Runs cost nothing here, so the operator-wide limit is not what is measured.
    settings = OperatorSettings(state_dir=Path(state), metrics_port=0, max_active_runs=pipelines)
    run(settings, engines={"local": NoopEngine()})


def writes(api: Any) -> dict[str, float]:
    """Mutating requests the API server has served, by resource."""
    text = api.call_api("/metrics", "GET", auth_settings=["BearerToken"], _preload_content=False)[
        0
    ].data.decode()
    out: dict[str, float] = {}
    pattern = re.compile(r"^apiserver_request_total\{(.*)\} ([0-9.e+]+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("verb") in ("POST", "PUT", "PATCH", "DELETE", "APPLY"):
            key = labels.get("resource", "") + (
                "/" + labels["subresource"] if labels.get("subresource") else ""
            )
            out[key] = out.get(key, 0.0) + float(match.group(2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=1000)
    parser.add_argument("--quiet-window", type=float, default=60.0)
    parser.add_argument("--operator", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.operator:
        serve_operator(args.operator, args.pipelines)
        return

    import psutil
    import yaml
    from kubernetes import client, watch

    from testenv.cluster import Cluster
    from testenv.kube import KubeAPIServer
    from testenv.stack import Stack

    with tempfile.TemporaryDirectory(prefix="mlcd-scale-") as tmp:
        root = Path(tmp)
        stack = Stack(root / "stack")
        operator = None
        try:
            stack.up("apiserver")
            component = stack.component("kube-apiserver")
            assert isinstance(component, KubeAPIServer)
            cluster = Cluster(component)
            cluster.install_crds(REPO / "crds")
            namespace = cluster.create_namespace(prefix="scale-")
            data = root / "data.npz"
            data.write_bytes(b"tiny dataset: the no-op engine never reads it")
            env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
            command = [
                sys.executable,
                __file__,
                "--operator",
                str(root / "state"),
                f"--pipelines={args.pipelines}",
            ]
            if os.environ.get("MLCD_BENCH_OPERATOR_COMMAND"):  # e.g. under a profiler
                command = [
                    *os.environ["MLCD_BENCH_OPERATOR_COMMAND"].split(),
                    str(root / "state"),
                    str(args.pipelines),
                ]
            operator = subprocess.Popen(
                command,
                env=env,
                stdout=open(root / "operator.log", "wb"),  # noqa: SIM115 - lives with it
                stderr=subprocess.STDOUT,
            )
            api = cluster.api_client()
            custom = client.CustomObjectsApi(api)
            example = yaml.safe_load((REPO / "examples/mnist/modelpipeline.yaml").read_text())
            example["spec"].pop("schedule")
            example["spec"]["dataset"]["uri"] = str(data)
            time.sleep(3)  # the operator is up and watching

            started: dict[str, float] = {}
            first_run: dict[str, float] = {}
            steady: dict[str, float] = {}
            done = threading.Event()

            def observe() -> None:
                # Watches until told to stop, resuming where it left off if the stream ends.
                version = None
                while not done.is_set():
                    w = watch.Watch()
                    try:
                        for event in w.stream(
                            custom.list_namespaced_custom_object,
                            "mlcd.io",
                            "v1alpha1",
                            namespace,
                            "modelpipelines",
                            resource_version=version,
                            timeout_seconds=30,
                        ):
                            obj = event["object"]
                            version = obj["metadata"]["resourceVersion"]
                            status = obj.get("status") or {}
                            name = obj["metadata"]["name"]
                            if (status.get("activeRuns") or status.get("runs")) and (
                                name not in first_run
                            ):
                                first_run[name] = time.monotonic()
                            if done.is_set():
                                w.stop()
                    except Exception:
                        version = None

            def count_steady() -> None:
                items = custom.list_namespaced_custom_object(
                    "mlcd.io", "v1alpha1", namespace, "modelpipelines"
                )["items"]
                now = time.monotonic()
                for obj in items:
                    status = obj.get("status") or {}
                    if status.get("runs") and not status.get("activeRuns"):
                        steady.setdefault(obj["metadata"]["name"], now)

            watcher = threading.Thread(target=observe, daemon=True)
            watcher.start()
            time.sleep(1)
            peak_rss = 0
            proc = psutil.Process(operator.pid)

            def create(i: int) -> None:
                body = {**example, "metadata": {"name": f"p{i:04d}", "namespace": namespace}}
                started[f"p{i:04d}"] = time.monotonic()
                custom.create_namespaced_custom_object(
                    "mlcd.io", "v1alpha1", namespace, "modelpipelines", body
                )

            begin = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(create, range(args.pipelines)))
            created = time.monotonic() - begin
            deadline = time.monotonic() + 600
            while len(steady) < args.pipelines and time.monotonic() < deadline:
                peak_rss = max(peak_rss, proc.memory_info().rss)
                count_steady()
                time.sleep(0.5)
            all_steady = max(steady.values()) - begin if steady else float("nan")
            latencies = sorted(first_run[n] - started[n] for n in first_run)
            # kopf's own first writes (finalizer, bookkeeping annotation) may lag behind.
            previous, stable_since = writes(api), time.monotonic()
            while time.monotonic() - stable_since < 5 and time.monotonic() < deadline:
                time.sleep(1)
                current = writes(api)
                mine = {k: v for k, v in current.items() if k.startswith("modelpipelines")}
                if mine != {k: v for k, v in previous.items() if k.startswith("modelpipelines")}:
                    stable_since = time.monotonic()
                previous = current
            settled = time.monotonic() - begin - 5
            quiet_before = writes(api)
            time.sleep(args.quiet_window)
            quiet_after = writes(api)
            steady_rss = proc.memory_info().rss
            # Single applies once the burst is over: what a user sees.
            single: list[float] = []
            for i in range(args.pipelines, args.pipelines + 20):
                create(i)
                name = f"p{i:04d}"
                while name not in first_run and time.monotonic() < deadline:
                    time.sleep(0.01)
                if name in first_run:
                    single.append(first_run[name] - started[name])
                time.sleep(0.5)
            peak_rss = max(peak_rss, steady_rss)
            done.set()
        finally:
            if operator is not None:
                operator.terminate()
                try:
                    operator.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    operator.kill()
            stack.stop()

    per_minute = {
        k: (quiet_after.get(k, 0) - v) * 60 / args.quiet_window
        for k, v in quiet_after.items()
        if quiet_after.get(k, 0) - quiet_before.get(k, 0) > 0
        for v in [quiet_before.get(k, 0)]
    }
    ours = {k: v for k, v in per_minute.items() if k.startswith("modelpipelines") or k == "events"}
    mib = 1024 * 1024
    print(f"pipelines                        {args.pipelines}")
    print(f"created in                       {created:8.1f} s")
    print(
        f"all steady after                 {all_steady:8.1f} s   (goal <= 60 s); the last "
        f"write at {settled:.1f} s"
    )
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"apply -> run started p50 / p99   {statistics.median(latencies):8.2f} s / "
            f"{p99:.2f} s   (goal p50 <= 1 s; {len(latencies)} observed)"
        )
    if single:
        print(
            f"  single applies afterwards p50 / max {statistics.median(single):8.2f} s / "
            f"{max(single):.2f} s   ({len(single)} applies, one at a time)"
        )
    print(
        f"operator RSS peak / steady       {peak_rss / mib:8.0f} MiB / {steady_rss / mib:.0f} MiB"
        "   (goal <= 300 MB)"
    )
    total = sum(ours.values())
    print(
        f"writes/min when nothing changes  {total:8.1f}   (goal 0) to ModelPipelines and "
        f"Events over {args.quiet_window:.0f} s"
    )
    others = {k: round(v, 1) for k, v in per_minute.items() if k not in ours}
    print(
        f"  by resource: { {k: round(v, 1) for k, v in ours.items()} }; "
        f"other components meanwhile: {others}"
    )
    print(f"measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")


if __name__ == "__main__":
    main()
