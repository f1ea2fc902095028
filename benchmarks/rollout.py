"""Figures of the rollout's local router, each a ratio against a baseline measured in the same run.

    python benchmarks/rollout.py [--seconds 5] [--rounds 3] [--clients 4] [--json]

1. Through the proxy vs direct to one model server, the same closed-loop load (``clients``
   threads, keep-alive): p99 latency ratio (goal <= 1.5x) and throughput ratio (goal >= 0.8x);
   legs alternate and each ratio is the median of back-to-back pairs. HAProxy as the router
   uses it (mirroring off, and on: every request also copied to a candidate), and nginx, the
   other proxy Debian has, for the comparison in docs/rollout.md.
2. Errors while the weights change 20 times under that load (goal 0): HAProxy through its
   runtime API, nginx by a graceful reload of its configuration.
3. Decision latency: a candidate answering errors gets traffic; the time from its first bad
   interval to weight 0, with the domain's table, the router and the real Prometheus of the test
   stack driven by a small loop (goal <= one interval + one scrape interval).

Needs hack/bootstrap (Prometheus, HAProxy, nginx from Debian). Everything runs on loopback,
bounded in time, and stops at the end.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from mlcd.domain.rollout import SetWeights  # noqa: E402
from mlcd.domain.spec import Rollout  # noqa: E402
from mlcd.metrics.prometheus import PrometheusProvider  # noqa: E402
from mlcd.ports import PipelineKey  # noqa: E402
from mlcd.processes import free_port, kill_group  # noqa: E402
from mlcd.serving.router.haproxy import LocalRouter  # noqa: E402
from mlcd.serving.router.replay import Replay  # noqa: E402
from rollout.driver import Driver  # noqa: E402
from rollout.servers import MODEL, ModelServer, request_body, samples, write_model  # noqa: E402
from testenv.prometheus import SCRAPE_INTERVAL, Prometheus, PrometheusAPI  # noqa: E402
from testenv.stack import Stack  # noqa: E402

KEY = PipelineKey("bench", "clf")


def closed_loop(url: str, clients: int, seconds: float) -> tuple[list[float], Counter[Any]]:
    """``clients`` threads sending one request after another for ``seconds``."""
    latencies: list[float] = []
    outcomes: Counter[Any] = Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds
    body = request_body(seed=1)

    def client() -> None:
        mine: list[float] = []
        seen: Counter[Any] = Counter()
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    status: Any = http.post(f"{url}/v2/models/{MODEL}/infer", json=body).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                mine.append(time.monotonic() - started)
                seen[status] += 1
        with lock:
            latencies.extend(mine)
            outcomes.update(seen)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, outcomes


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class Nginx:
    """nginx in front of the same two servers; weights change by a graceful reload."""

    def __init__(self, folder: Path, stable: str, candidate: str) -> None:
        binary = os.environ.get("MLCD_NGINX") or shutil.which(
            "nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin"
        )
        if not binary:
            raise FileNotFoundError("nginx is not installed (hack/bootstrap installs it)")
        self.folder, self.stable, self.candidate = folder, stable, candidate
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        self.write(0, mirror=False)
        self.process = subprocess.Popen(
            [binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{self.url}/v2/health/live", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def write(self, canary: int, mirror: bool) -> None:
        def server(address: str, weight: int) -> str:
            return f"server {address} weight={weight};" if weight else f"server {address} down;"

        mirroring = "mirror /mirror; mirror_request_body on;" if mirror else ""
        conf = f"""
daemon off;
worker_processes 1;
user {getpass.getuser()};
pid {self.folder}/nginx.pid;
error_log {self.folder}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {self.folder}/body;
  proxy_temp_path {self.folder}/proxy;
  fastcgi_temp_path {self.folder}/fastcgi;
  uwsgi_temp_path {self.folder}/uwsgi;
  scgi_temp_path {self.folder}/scgi;
  upstream split {{
    {server(self.stable, 100 - canary)}
    {server(self.candidate, canary)}
    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      {mirroring}
      proxy_pass http://split;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location = /mirror {{
      internal;
      proxy_pass http://{self.candidate}$request_uri;
    }}
  }}
}}
"""
        (self.folder / "nginx.conf").write_text(conf)

    def set_weights(self, canary: int, mirror: bool = False) -> None:
        self.write(canary, mirror)
        os.kill(self.process.pid, signal.SIGHUP)

    def stop(self) -> None:
        kill_group(self.process.pid, grace=5)
        self.process.wait(timeout=10)


def compare(
    direct: str, proxied: str, clients: int, seconds: float, rounds: int
) -> dict[str, float]:
    """Alternating legs; each ratio is the median of back-to-back pairs."""
    p99_ratios, rate_ratios, direct_p99, direct_rate = [], [], [], []
    for _ in range(rounds):
        base, base_outcomes = closed_loop(direct, clients, seconds)
        via, via_outcomes = closed_loop(proxied, clients, seconds)
        if set(base_outcomes) != {200} or set(via_outcomes) != {200}:
            raise RuntimeError(f"errors under load: direct {base_outcomes}, proxy {via_outcomes}")
        p99_ratios.append(p99(via) / p99(base))
        rate_ratios.append(len(via) / len(base))
        direct_p99.append(p99(base))
        direct_rate.append(len(base) / seconds)
    return {
        "p99_ratio": round(statistics.median(p99_ratios), 3),
        "throughput_ratio": round(statistics.median(rate_ratios), 3),
        "direct_p99_ms": round(1000 * statistics.median(direct_p99), 2),
        "direct_rps": round(statistics.median(direct_rate), 1),
    }


def weight_changes(url: str, change: Callable[[int], None], clients: int) -> dict[str, Any]:
    """20 weight changes, 0.25 s apart, under the closed-loop load; every outcome counted."""
    result: dict[str, Any] = {}

    def load() -> None:
        _, outcomes = closed_loop(url, clients, seconds=6.0)
        result["outcomes"] = outcomes

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(0.3)
    weights = [0, 10, 20, 50, 80, 100, 50, 20, 5, 0] * 2
    for weight in weights:
        change(weight)
        time.sleep(0.25)
    thread.join()
    outcomes = result["outcomes"]
    return {
        "changes": len(weights),
        "requests": sum(outcomes.values()),
        "errors": sum(n for status, n in outcomes.items() if status != 200),
        "outcomes": {str(k): v for k, v in outcomes.items()},
    }


def decision_latency(
    root: Path, prometheus: PrometheusAPI, stable: ModelServer, interval: str
) -> dict[str, Any]:
    """Seconds from the first bad interval (the faulty candidate's first traffic) to weight 0."""
    faulty = ModelServer(
        root, root / "pointer-2.json", {"MLCD_SERVING_FAULTS": "error=0.3,seed=1"}, name="faulty"
    ).wait_ready()
    router = LocalRouter(root / "decide", targets_dir=prometheus.targets_dir)
    provider = PrometheusProvider(prometheus.url)
    spec = Rollout.model_validate(
        {
            "steps": [50, 100],
            "interval": interval,
            "failureThreshold": 1,
            "minSamples": 10,
            "metrics": [{"name": "success-rate", "min": 0.99}],
        }
    )
    driver = Driver(KEY, spec, router, provider, stable, faulty)
    try:
        driver.begin()
        prometheus.wait_for(f'up{{job="mlcd-router",mlcd_pipeline="{KEY.name}"}} == 1')
        url = router.url(KEY) or ""
        with Replay(url, MODEL, samples(), rate=100, seconds=120):
            state = driver.run({"RolledBack", "Promoted", "Failed", "Halted"}, 120, every=0.1)
        weights = [(t, i.canary) for t, i in driver.done if isinstance(i, SetWeights)]
        first_bad = next(t for t, w in weights if w > 0)
        back = next(t for t, w in weights if t > first_bad and w == 0)
        return {"phase": state.phase, "seconds": round(back - first_bad, 2), "reason": state.reason}
    finally:
        provider.close()
        router.finalize(KEY)
        faulty.stop()


def seconds_of(duration: str) -> float:
    from mlcd.domain.spec import duration_seconds

    return duration_seconds(duration)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one load leg")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of legs per comparison")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--interval", default="3s", help="rollout interval of part 3")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    out: dict[str, Any] = {"proxies": {}, "weight_changes": {}}
    with tempfile.TemporaryDirectory(prefix="mlcd-bench-rollout-") as tmp:
        root = Path(tmp)
        write_model(root, "1", seed=1)
        write_model(root, "2", seed=1)
        stack = Stack(root / "stack")
        stable = ModelServer(root, root / "pointer-1.json", name="stable")
        candidate = ModelServer(root, root / "pointer-2.json", name="candidate")
        router = LocalRouter(root / "home")
        nginx: Nginx | None = None
        try:
            stack.up("prometheus")
            stable.wait_ready()
            candidate.wait_ready()
            url = router.reconcile(KEY, stable.url, candidate.url)
            deadline = time.monotonic() + 15
            while not router.candidate_ready(KEY):  # HAProxy's health checks see it up
                if time.monotonic() > deadline:
                    raise TimeoutError("the candidate never came up behind HAProxy")
                time.sleep(0.1)
            c, s, r = args.clients, args.seconds, args.rounds
            out["proxies"]["haproxy"] = compare(stable.url, url, c, s, r)
            router.set_mirror(KEY, True)
            out["proxies"]["haproxy+mirror"] = compare(stable.url, url, c, s, r)
            router.set_mirror(KEY, False)
            out["weight_changes"]["haproxy (runtime API)"] = weight_changes(
                url, lambda w: router.set_weights(KEY, w), c
            )
            router.set_weights(KEY, 0)
            try:
                nginx = Nginx(root / "nginx", stable.address, candidate.address)
            except FileNotFoundError as exc:
                out["proxies"]["nginx"] = {"skipped": str(exc)}
            if nginx is not None:
                out["proxies"]["nginx"] = compare(stable.url, nginx.url, c, s, r)
                nginx.set_weights(0, mirror=True)
                time.sleep(0.5)
                out["proxies"]["nginx+mirror"] = compare(stable.url, nginx.url, c, s, r)
                out["weight_changes"]["nginx (graceful reload)"] = weight_changes(
                    nginx.url, nginx.set_weights, c
                )
            component = stack.component("prometheus")
            assert isinstance(component, Prometheus)
            out["decision"] = decision_latency(
                root, PrometheusAPI.of(component), stable, args.interval
            )
            out["decision"]["goal_seconds"] = seconds_of(args.interval) + seconds_of(
                SCRAPE_INTERVAL
            )
        finally:
            if nginx is not None:
                nginx.stop()
            router.finalize(KEY)
            candidate.stop()
            stable.stop()
            stack.stop()

    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"through the proxy vs direct to one model server ({args.clients} clients, "
        f"{args.seconds:g} s legs, median of {args.rounds} pairs):"
    )
    for name, figures in out["proxies"].items():
        if "skipped" in figures:
            print(f"  {name:<16} skipped: {figures['skipped']}")
            continue
        print(
            f"  {name:<16} p99 ratio {figures['p99_ratio']:.2f}x (goal <= 1.5)   "
            f"throughput ratio {figures['throughput_ratio']:.2f}x (goal >= 0.8)   "
            f"[direct: p99 {figures['direct_p99_ms']} ms, {figures['direct_rps']} req/s]"
        )
    print("errors while the weights change 20 times under that load (goal 0):")
    for name, figures in out["weight_changes"].items():
        print(
            f"  {name:<26} {figures['errors']} errors in {figures['requests']} requests "
            f"{figures['outcomes']}"
        )
    decision = out["decision"]
    print(
        f"decision latency, first bad interval -> weight 0 (interval {args.interval}, scrape "
        f"{SCRAPE_INTERVAL}): {decision['seconds']} s (goal <= {decision['goal_seconds']:g} s); "
        f"{decision['phase']}: {decision['reason']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
