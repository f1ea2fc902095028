"""The real node's sandbox: its own PID, mount and network namespaces, and their teardown.

Run by :class:`testenv.node.NodeSandbox` as a program (standard library only)::

    python nodens.py supervise --dir DIR --api-port PORT

The supervisor stays in the host's namespaces. It removes what supervisors killed by SIGKILL
left in slots nobody holds, claims a slot (an abstract unix socket, freed by the kernel when its
holder dies, so a killed session never blocks a slot), creates the node's cgroup root, starts
the init of the namespaces, links the node's network namespace to the host with a veth pair,
forwards ``127.0.0.1:PORT`` inside the node to the API server on the host's loopback, and
writes ``DIR/sandbox.json``. On SIGTERM or SIGINT, on the death of its parent (it runs with
PDEATHSIG=TERM) or when the init dies, it kills everything in the namespaces and removes the
cgroups and the veth before it exits.

The init (``nodens.py init``) is PID 1 of the new PID namespace, so every process of the node,
containerd's shims and the containers included, dies with it. It mounts private tmpfs over
/run, /var/lib and /var/log (the netns files, the CNI cache, shim sockets and log links the
runtime writes to fixed host paths), shows the kubelet the kernel tunables it insists on through
files of its own (the host's values stay untouched), and reaps orphans.

Nothing of the node is in the host's network namespace but the host end of the veth and one
route to the pod subnet; the bridge, the iptables rules and every ``net.*`` sysctl live and die
in the node's namespace.

``nodens.py forward --listen ADDRESS --to PORT --port-file FILE`` forwards a free port of
ADDRESS (the host end of the veth, which the node's pods reach) to ``127.0.0.1:PORT`` on the
host, and writes the port it took to FILE: a service of the host's loopback made reachable for
pods (:class:`testenv.node.NodeMinIO`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SLOTS = 64
SLOT_SOCKET = "mlcd-testenv-node-{slot}"  # abstract unix socket name (host network namespace)
CGROUP_PREFIX = "mlcd-node-"  # + slot: the kubelet's cgroupRoot in every hierarchy
VETH_PREFIX = "mlcdn"  # + slot: the host end of the veth pair
TOOLS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# What the kubelet sets at start (k8s.io/kubernetes pkg/kubelet/cm, setupKernelTunables); the
# node sees these values, the host keeps its own.
KUBELET_TUNABLES = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
PRIVATE_TMPFS = {"/run": "64m", "/var/lib": "256m", "/var/log": "64m"}

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Addresses:
    """The node's addresses, derived from its slot so that nodes of several sessions coexist."""

    slot: int
    host_ip: str  # the host end of the veth
    node_ip: str  # the node end: the node's InternalIP, where the kubelet and CoreDNS listen
    link_prefix: int
    pod_subnet: str  # the CNI bridge's subnet

    @property
    def gateway(self) -> str:  # the bridge's address, the pods' default gateway
        return self.pod_subnet.rsplit(".", 1)[0] + ".1"

    @classmethod
    def of(cls, slot: int) -> Addresses:
        return cls(slot, f"10.250.{slot}.1", f"10.250.{slot}.2", 24, f"10.251.{slot}.0/24")


@dataclass(frozen=True)
class Sandbox:
    """What the supervisor writes to ``sandbox.json`` once the namespaces are ready."""

    supervisor_pid: int
    init_pid: int  # in the host's PID namespace; components nsenter through it
    cgroup_root: str  # "/mlcd-node-N": the kubelet's cgroupRoot
    veth: str
    addresses: Addresses

    @classmethod
    def load(cls, path: Path) -> Sandbox:
        raw = json.loads(path.read_text())
        return cls(**{**raw, "addresses": Addresses(**raw["addresses"])})


# -- residue: what a slot leaves on the host, found and removed ------------------------------------
def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers, named ones and v2)."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            mounts.append(Path(left.split()[4]))
    return mounts


def slot_cgroups(slot: int | None = None) -> list[Path]:
    """The cgroup roots of one slot (or of every slot) that exist now."""
    pattern = f"{CGROUP_PREFIX}{'*' if slot is None else slot}"
    return sorted(p for mount in cgroup_hierarchies() for p in mount.glob(pattern) if p.is_dir())


def slot_veths(slot: int | None = None) -> list[str]:
    names = os.listdir("/sys/class/net")
    if slot is None:
        return sorted(n for n in names if n.startswith(VETH_PREFIX))
    return [n for n in names if n == f"{VETH_PREFIX}{slot}"]


def _cgroup_pids(root: Path) -> list[int]:
    pids: list[int] = []
    for directory, _, files in os.walk(root):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                pids += [int(p) for p in (Path(directory) / "cgroup.procs").read_text().split()]
    return pids


def remove_cgroups(roots: list[Path], timeout: float = 10.0) -> list[Path]:
    """Kill what is left in ``roots`` and remove them, deepest first; return what remains."""
    deadline = time.monotonic() + timeout
    while True:
        for root in roots:
            for pid in _cgroup_pids(root):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for directory, _, _ in sorted(os.walk(root, topdown=False), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
        left = [root for root in roots if root.exists()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)  # a cgroup is busy for a moment after its last process exits


def remove_veth(name: str) -> None:
    subprocess.run(
        ["ip", "link", "delete", name], capture_output=True, check=False, env=_tools_env()
    )


def clean_slot(slot: int) -> None:
    """Remove what an earlier holder of ``slot`` left (only called while holding the slot)."""
    remove_cgroups(slot_cgroups(slot))
    for name in slot_veths(slot):
        remove_veth(name)


def residue_slots() -> set[int]:
    """Slots with cgroups or a veth on the host (live nodes' and dead ones')."""
    names = [p.name.removeprefix(CGROUP_PREFIX) for p in slot_cgroups()]
    names += [n.removeprefix(VETH_PREFIX) for n in slot_veths()]
    return {int(n) for n in names if n.isdigit()}


def clean_free_slots() -> list[int]:
    """Remove what killed holders left in slots nobody holds now; return those slots.

    A slot is cleaned only while this process holds it, so a live node is never touched.
    """
    cleaned = []
    for slot in sorted(residue_slots()):
        holder = _hold(slot)
        if holder is not None:
            with holder:
                clean_slot(slot)
            cleaned.append(slot)
    return cleaned


def _tools_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{TOOLS_PATH}"}


# -- namespaces ------------------------------------------------------------------------------------
def setns(fd: int, nstype: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _hold(slot: int) -> socket.socket | None:
    """Bind the slot's abstract socket; None if another process holds it."""
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        holder.bind("\0" + SLOT_SOCKET.format(slot=slot))
    except OSError:
        holder.close()
        return None
    return holder


def claim_slot() -> tuple[int, socket.socket]:
    for slot in range(SLOTS):
        holder = _hold(slot)
        if holder is not None:
            return slot, holder
    raise RuntimeError(f"all {SLOTS} real-node slots are taken on this machine")


def slot_taken(slot: int) -> bool:
    holder = _hold(slot)
    if holder is None:
        return True
    holder.close()
    return False


def make_cgroup_root(slot: int) -> str:
    name = f"{CGROUP_PREFIX}{slot}"
    for mount in cgroup_hierarchies():
        path = mount / name
        path.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # a new v1 cpuset starts empty
            if (mount / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((mount / knob).read_text())
    return f"/{name}"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _ip(*args: str, netns_pid: int | None = None) -> None:
    prefix = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", "--"] if netns_pid else []
    result = subprocess.run(
        [*prefix, "ip", *args], capture_output=True, text=True, check=False, env=_tools_env()
    )
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def link(init_pid: int, veth: str, addresses: Addresses) -> None:
    """The veth pair between host and node, its addresses, and the host's route to the pods."""
    prefix = addresses.link_prefix
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(init_pid))
    _ip("addr", "add", f"{addresses.host_ip}/{prefix}", "dev", veth)
    _ip("link", "set", veth, "up")
    _ip("addr", "add", f"{addresses.node_ip}/{prefix}", "dev", "eth0", netns_pid=init_pid)
    _ip("link", "set", "eth0", "up", netns_pid=init_pid)
    _ip("route", "add", addresses.pod_subnet, "via", addresses.node_ip, "dev", veth)


# -- the API server forwarder ----------------------------------------------------------------------
async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def forwarder(port: int) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:  # the supervisor stops: drop the connection
            up_writer.close()
            writer.close()

    return handle


def listen_inside(init_pid: int, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` in the node's network namespace."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    node = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY)
    try:
        setns(node, CLONE_NEWNET)
        try:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(128)
            listener.setblocking(False)
        finally:
            setns(own, CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(node)
    return listener


# -- supervise -------------------------------------------------------------------------------------
def say(message: str) -> None:
    print(f"nodens: {message}", flush=True)


def stop_on_signals() -> Callable[[], bool]:
    """SIGTERM and SIGINT only raise a flag (the returned check): the caller winds down."""
    stopped = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return lambda: stopped


def supervise(directory: Path, api_port: int) -> int:
    # Before anything is made on the host: a stop from now on is a teardown.
    stopping = stop_on_signals()
    directory.mkdir(parents=True, exist_ok=True)
    cleaned = clean_free_slots()  # what killed supervisors left
    if cleaned:
        say(f"removed what earlier nodes left in slots {cleaned}")
    slot, _holder = claim_slot()
    addresses = Addresses.of(slot)
    veth = f"{VETH_PREFIX}{slot}"
    say(f"slot {slot}: node {addresses.node_ip}, pods {addresses.pod_subnet}")
    unshare: subprocess.Popen[bytes] | None = None
    init_pid = 0
    try:
        cgroup_root = make_cgroup_root(slot)
        init_ready = directory / "init.ready"
        init_ready.unlink(missing_ok=True)
        unshare = _start_init(init_ready)
        deadline = time.monotonic() + 20
        while not init_ready.exists():
            if stopping() or unshare.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the init of the node's namespaces did not come up")
            time.sleep(0.01)
        children = _children(unshare.pid)
        if len(children) != 1:
            raise RuntimeError(f"expected one init under unshare, found {children}")
        init_pid = children[0]
        link(init_pid, veth, addresses)
        listener = listen_inside(init_pid, api_port)
        sandbox = Sandbox(os.getpid(), init_pid, cgroup_root, veth, addresses)
        (directory / "sandbox.json").write_text(json.dumps(asdict(sandbox), indent=2))
        say(f"ready: init pid {init_pid}, API server forwarded to 127.0.0.1:{api_port}")
        asyncio.run(_serve(listener, api_port, unshare, stopping))
        if not stopping():
            say(f"the init exited with {unshare.poll()}")
        return 0
    finally:
        _teardown(unshare, init_pid, slot, veth)


def _start_init(ready_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            sys.executable,
            __file__,
            "init",
            "--ready-file",
            str(ready_file),
        ],
        env=_tools_env(),
    )


async def _serve(
    listener: socket.socket,
    port: int,
    unshare: subprocess.Popen[bytes],
    stopping: Callable[[], bool],
) -> None:
    server = await asyncio.start_server(forwarder(port), sock=listener)
    async with server:
        while unshare.poll() is None and not stopping():
            await asyncio.sleep(0.1)


def _teardown(unshare: subprocess.Popen[bytes] | None, init_pid: int, slot: int, veth: str) -> None:
    # SIGKILL to PID 1 of the namespace: the kernel kills every process in it.
    if unshare is not None:
        for pid in (init_pid, unshare.pid):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        unshare.wait()
    # Within the stack's grace period (5 s) before it would SIGKILL this process.
    left = remove_cgroups(slot_cgroups(slot), timeout=4.0)
    for name in slot_veths(slot):
        remove_veth(name)
    say(f"stopped; {'cgroups left: ' + str(left) if left else 'nothing left'} ({veth})")


# -- a host service for the pods ------------------------------------------------------------------
def forward(address: str, port: int, port_file: Path) -> int:
    """Forwards a free port of ``address`` to ``127.0.0.1:port`` until SIGTERM or SIGINT."""
    stopping = stop_on_signals()

    async def serve() -> None:
        server = await asyncio.start_server(forwarder(port), address, 0)
        taken = server.sockets[0].getsockname()[1]
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{taken}\n")
        tmp.replace(port_file)
        say(f"forwarding {address}:{taken} to 127.0.0.1:{port}")
        async with server:
            while not stopping():
                await asyncio.sleep(0.1)

    asyncio.run(serve())
    return 0


# -- init ------------------------------------------------------------------------------------------
def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, env=_tools_env())


def init(ready_file: Path) -> int:
    for target, size in PRIVATE_TMPFS.items():
        _run("mount", "-t", "tmpfs", "-o", f"mode=0755,size={size}", "tmpfs", target)
    tunables = Path("/run/mlcd-node/tunables")
    tunables.mkdir(parents=True)
    for name, value in KUBELET_TUNABLES.items():
        target = Path("/proc/sys") / name
        if int(target.read_text().split()[0]) != value:
            shown = tunables / name.replace("/", ".")
            shown.write_text(f"{value}\n")
            _run("mount", "--bind", "-o", "ro", str(shown), str(target))
    _run("ip", "link", "set", "lo", "up")

    def leave(signum: int, frame: object) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    ready_file.write_text("ready\n")
    while True:  # PID 1 reaps the orphans (shims re-parent here)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sup = commands.add_parser("supervise")
    sup.add_argument("--dir", type=Path, required=True)
    sup.add_argument("--api-port", type=int, required=True)
    ini = commands.add_parser("init")
    ini.add_argument("--ready-file", type=Path, required=True)
    fwd = commands.add_parser("forward")
    fwd.add_argument("--listen", required=True)
    fwd.add_argument("--to", type=int, required=True)
    fwd.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "supervise":
        return supervise(args.dir, args.api_port)
    if args.command == "forward":
        return forward(args.listen, args.to, args.port_file)
    return init(args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
