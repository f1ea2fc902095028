"""Process groups and ports: what the engines, the trainer runner and local serving share."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import socket
import threading
import time
from collections.abc import Iterable


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (``/proc/<pid>/stat``); None when
    there is no such process. With the pid it names one process: a pid reused by another
    process after a restart has another start time."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); None when
    there is no such process."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat.rsplit(")", 1)[1].split()


def alive(pid: int, started: int | None = None) -> bool:
    """The process ``pid`` runs (and, when ``started`` is given, is the one that started
    then, not a later process that reused its pid). A zombie does not run: a process whose
    parent died waits for init to reap it, and some inits (in containers) never do."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def kill_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM to the whole group, SIGKILL to whatever is left after ``grace`` seconds."""
    kill_groups([pgid], grace)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: a process whose
    parent died waits for init to reap it, and some inits (in containers) never do."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces and parentheses: split after its ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def kill_groups(pgids: Iterable[int], grace: float = 5.0) -> None:
    """SIGTERM to every group at once, SIGKILL to whatever is left after ``grace`` seconds:
    n groups take one grace, not n."""
    left = set(pgids)
    for pgid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        for pgid in list(left):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pgid, os.WNOHANG)  # reap our own child, or it lingers as a zombie
            if not group_alive(pgid):
                left.discard(pgid)
        if left:
            time.sleep(0.1)
    for pgid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


#: What a program says when the port it was given was taken first (errno 98, EADDRINUSE).
ADDRESS_IN_USE = re.compile(r"address already in use|EADDRINUSE|errno 98\b", re.IGNORECASE)
_HANDED_OUT: dict[int, float] = {}
_HANDED_OUT_LOCK = threading.Lock()
_REMEMBERED = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a program that binds it itself later. Another
    process may take it first: callers start again on "address already in use"
    (:data:`ADDRESS_IN_USE`). Within this process no port is handed out twice a minute."""
    with _HANDED_OUT_LOCK:
        now = time.monotonic()
        for port, when in list(_HANDED_OUT.items()):
            if now - when > _REMEMBERED:
                del _HANDED_OUT[port]
        for _ in range(50):
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                break
        _HANDED_OUT[port] = now
        return port


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound and listening now (port 0: any free one), to hand to the process
    that serves on it (``pass_fds``): no one can take the port between picking and binding."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # A port a stopped server left in TIME_WAIT may be bound again; a listening one not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock
