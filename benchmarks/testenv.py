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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-nodes", action="store_true", help="leave out scheduler and kwok")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring RSS")
    args = parser.parse_args()
    figures: dict[str, object] = {}

    begun = time.monotonic()
    subprocess.run([str(REPO / "hack" / "bootstrap")], check=True, capture_output=True)
    figures["warm_bootstrap_s"] = round(time.monotonic() - begun, 2)

    groups = ["apiserver", "minio", "prometheus", "haproxy"]
    with tempfile.TemporaryDirectory(prefix="mlcd-bench-") as root:
        stack = Stack(Path(root))
        try:
            begun = time.monotonic()
            stack.up(*groups)
            figures["start_to_ready_s"] = round(time.monotonic() - begun, 2)
            figures["ready_after_s"] = {k: round(v, 2) for k, v in stack.ready_after.items()}
            if not args.no_nodes:
                begun = time.monotonic()
                stack.up("nodes")
                figures["nodes_start_to_ready_s"] = round(time.monotonic() - begun, 2)
            time.sleep(args.settle)
            rss = {
                c.name: round(sum(rss_mib(p.pid) for p in c.processes if p.pid), 1)
                for c in stack.components()
            }
            figures["rss_mib"] = rss
            figures["rss_total_mib"] = round(sum(rss.values()), 1)
        finally:
            stack.stop()

    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"warm bootstrap                 {figures['warm_bootstrap_s']:6.2f} s")
    print(f"start to all ready ({'+'.join(groups)}) {figures['start_to_ready_s']:6.2f} s")
    for name, seconds in figures["ready_after_s"].items():  # type: ignore[attr-defined]
        print(f"  {name:<28} ready after {seconds:6.2f} s")
    if "nodes_start_to_ready_s" in figures:
        print(f"nodes (scheduler+kwok+node)    {figures['nodes_start_to_ready_s']:6.2f} s")
    print("resident memory")
    for name, mib in rss.items():
        print(f"  {name:<28} {mib:7.1f} MiB")
    print(f"  {'total':<28} {figures['rss_total_mib']:7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
