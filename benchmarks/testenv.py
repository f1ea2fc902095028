"""Figures of the test stack: warm bootstrap, start to all ready, memory of each component.

    python benchmarks/testenv.py [--no-nodes] [--json]

Run hack/bootstrap once before (its first run prints the cold build times).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from testenv.stack import Stack  # noqa: E402


def rss_mib(pgid: int) -> float:
    """Resident memory of every process in process group ``pgid``, in MiB."""
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total_kib / 1024


def measure_start(groups: list[str], settle: float) -> dict[str, Any]:
    """Start ``groups`` in one call, as the session fixture does; time it, then measure RSS."""
    with tempfile.TemporaryDirectory(prefix="mlcd-bench-") as root:
        stack = Stack(Path(root))
        try:
            begun = time.monotonic()
            stack.up(*groups)
            took = time.monotonic() - begun
            time.sleep(settle)
            rss = {
                c.name: round(sum(rss_mib(p.pid) for p in c.processes if p.pid), 1)
                for c in stack.components()
            }
        finally:
            stack.stop()
    return {
        "start_to_ready_s": round(took, 2),
        "ready_after_s": {k: round(v, 2) for k, v in stack.ready_after.items()},
        "rss_mib": rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-nodes", action="store_true", help="leave out scheduler and kwok")
    parser.add_argument("--runs", type=int, default=3, help="fresh stacks to start (median)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring RSS")
    args = parser.parse_args()

    begun = time.monotonic()
    subprocess.run([str(REPO / "hack" / "bootstrap")], check=True, capture_output=True)
    warm = round(time.monotonic() - begun, 2)

    groups = ["apiserver", "minio", "prometheus", "haproxy"] + ([] if args.no_nodes else ["nodes"])
    runs = [measure_start(groups, args.settle) for _ in range(args.runs)]
    runs.sort(key=lambda r: float(r["start_to_ready_s"]))
    median = runs[len(runs) // 2]
    rss: dict[str, float] = median["rss_mib"]
    figures = {
        "warm_bootstrap_s": warm,
        "groups": groups,
        "start_to_ready_s": [r["start_to_ready_s"] for r in runs],
        "median_run": median,
        "rss_total_mib": round(sum(rss.values()), 1),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"warm bootstrap: {warm:.2f} s")
    print(
        f"start to all ready ({'+'.join(groups)}), {args.runs} runs: "
        + ", ".join(f"{r['start_to_ready_s']:.2f} s" for r in runs)
    )
    print("median run, each component ready after:")
    for name, seconds in median["ready_after_s"].items():
        print(f"  {name:<26} {seconds:6.2f} s")
    print(f"resident memory ({args.settle:.0f} s after ready):")
    for name, mib in rss.items():
        print(f"  {name:<26} {mib:7.1f} MiB")
    print(f"  {'total':<26} {figures['rss_total_mib']:7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
