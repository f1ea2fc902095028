"""The real node leaves nothing on the host: no mounts, cgroups, network namespaces, links,
routes, iptables rules, changed sysctls or processes; after a normal stop, after the process
that started it was killed, and when its supervisor itself was killed (the next node removes
what it left)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from testenv import nodens

pytestmark = pytest.mark.real_node

CHILD = Path(__file__).with_name("real_node_child.py")
SYSCTLS = [
    *nodens.KUBELET_TUNABLES,
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
]


def sysctls() -> dict[str, str]:
    return {name: (Path("/proc/sys") / name).read_text().strip() for name in SYSCTLS}


def iptables() -> str:
    """The host's rules (nft and legacy backends), without the comment lines' timestamps."""
    dumps = []
    for command in ("iptables-save", "iptables-legacy-save", "ip6tables-save"):
        result = subprocess.run([command], capture_output=True, text=True, check=False)
        dumps.append(result.stdout if result.returncode == 0 else f"{command}: {result.stderr}")
    return "\n".join(line for d in dumps for line in d.splitlines() if not line.startswith("#"))


def host_mounts(root: Path) -> list[str]:
    """Host mounts a node could leave: under its root, netns files, overlays, runtime dirs."""
    places = (str(root), "/run/netns", "/run/containerd", "/var/lib/cni", "/var/lib/kubelet")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        point, fstype = left.split()[4], right.split()[0]
        if point.startswith(places) or fstype in ("nsfs", "overlay"):
            found.append(f"{fstype} {point}")
    return found


def namespace_users(facts: dict[str, Any]) -> list[int]:
    """Processes on the host inside the node's network, PID or mount namespace."""
    users = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            inodes = {
                "netns": os.stat(entry / "ns" / "net").st_ino,
                "pidns": os.stat(entry / "ns" / "pid").st_ino,
                "mntns": os.stat(entry / "ns" / "mnt").st_ino,
            }
        except OSError:
            continue
        if any(inodes[k] == facts[k] for k in inodes):
            users.append(int(entry.name))
    return users


def host_state(root: Path, slot: int | None) -> dict[str, Any]:
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    return {
        "sysctls": sysctls(),
        "iptables": iptables(),
        "mounts": host_mounts(root),
        "cgroups": [str(p) for p in nodens.slot_cgroups(slot)] if slot is not None else [],
        "links": nodens.slot_veths(slot) if slot is not None else [],
        "bridge": Path("/sys/class/net/cni0").exists(),
        "routes": [r for r in routes.splitlines() if slot is not None and f"10.251.{slot}." in r],
    }


def inside(facts: dict[str, Any], *argv: str) -> str:
    enter = ["nsenter", f"--target={facts['init_pid']}", "--net", "--mount", "--"]
    return subprocess.run([*enter, *argv], capture_output=True, text=True, check=True).stdout


def start_child(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def read_facts(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"the child stack did not start (exit {child.wait()}); logs under its root"
    facts: dict[str, Any] = json.loads(line)
    return facts


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def test_two_nodes_side_by_side_leave_nothing_when_stopped_or_killed(tmp_path: Path) -> None:
    before = host_state(tmp_path, None)
    # Two nodes at once, as two sessions on one machine have: each in its own slot.
    stopped, killed = start_child(tmp_path / "stopped"), start_child(tmp_path / "killed")
    try:
        facts = {"stopped": read_facts(stopped), "killed": read_facts(killed)}
        assert facts["stopped"]["slot"] != facts["killed"]["slot"]
        for name, fact in facts.items():
            # The node has what a stop must remove, inside its own namespaces ...
            assert ":KUBE-SERVICES " in inside(fact, "iptables-save", "-t", "nat")
            assert "cni0" in inside(fact, "ip", "-br", "link")
            assert " - overlay " in Path(f"/proc/{fact['init_pid']}/mountinfo").read_text()
            during = host_state(tmp_path / name, fact["slot"])
            # ... and on the host only its cgroups, its veth and the route to its pods.
            assert during["cgroups"] and during["links"] and during["routes"], during
            assert during["sysctls"] == before["sysctls"]
            assert during["iptables"] == before["iptables"]
            assert during["mounts"] == [] and not during["bridge"]

        assert stopped.stdin is not None
        stopped.stdin.write("stop\n")
        stopped.stdin.flush()
        assert stopped.wait(timeout=60) == 0
        # pytest killed: the supervisor gets SIGTERM from the kernel and cleans up alone.
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        deadline = time.monotonic() + 20
        while not gone(facts["killed"]["supervisor_pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)

        for name, fact in facts.items():
            after = host_state(tmp_path / name, fact["slot"])
            assert after == {**before, "cgroups": [], "links": [], "routes": []}, name
            assert namespace_users(fact) == [], name
    finally:
        for child in (stopped, killed):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def test_a_new_node_removes_what_a_killed_supervisor_left(tmp_path: Path) -> None:
    # What a supervisor killed by SIGKILL leaves: its cgroup root (the namespaces and the veth
    # die with their processes). Made by hand in a slot nobody holds.
    slot = next(s for s in reversed(range(nodens.SLOTS)) if not nodens.slot_taken(s))
    for mount in nodens.cgroup_hierarchies():
        (mount / f"{nodens.CGROUP_PREFIX}{slot}" / "kubepods").mkdir(parents=True)
    assert nodens.slot_cgroups(slot)
    supervisor = subprocess.Popen(
        [sys.executable, nodens.__file__, "supervise", f"--dir={tmp_path}", "--api-port=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "sandbox.json").exists():
            assert supervisor.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert nodens.slot_cgroups(slot) == []
        own = nodens.Sandbox.load(tmp_path / "sandbox.json").addresses.slot
    finally:
        supervisor.send_signal(signal.SIGTERM)
        output, _ = supervisor.communicate(timeout=20)
    reports = [line for line in output.splitlines() if "removed what earlier nodes left" in line]
    assert reports, output
    assert str(slot) in reports[0].partition("[")[2].rstrip("]").split(", "), output
    assert nodens.slot_cgroups(own) == [] and nodens.slot_veths(own) == []
