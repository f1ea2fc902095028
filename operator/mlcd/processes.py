"""Process groups and ports: what the engines, the trainer runner and local serving share."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import time


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (``/proc/<pid>/stat``); None when
    there is no such process. With the pid it names one process: a pid reused by another
    process after a restart has another start time."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def alive(pid: int, started: int | None = None) -> bool:
    """The process ``pid`` exists (and, when ``started`` is given, is the one that started
    then, not a later process that reused its pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is None:
        return True
    now = start_time(pid)
    return now is not None and now == started


def kill_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM to the whole group, SIGKILL to whatever is left after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, os.WNOHANG)  # reap our own child, or it lingers as a zombie
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
