"""Child processes of the stack: own process group, log file, readiness, teardown."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class ComponentError(RuntimeError):
    """A component failed to start or died; the message names it and ends with its log tail."""

    def __init__(self, component: str, reason: str, log_tail: str = "") -> None:
        message = f"{component}: {reason}"
        if log_tail:
            message += f"\n--- last lines of the {component} log ---\n{log_tail}"
        super().__init__(message)
        self.component = component


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (empty if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _pdeathsig_prefix(death_signal: str = "KILL") -> list[str]:
    # The child gets SIGKILL when the process that started it dies, even by SIGKILL, so a killed
    # test run leaves nothing behind. setpriv (util-linux) sets it and then execs the command.
    # A child that must undo changes to the host gets SIGTERM instead and cleans up itself.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", death_signal, "--"] if setpriv else []


class Process:
    """One long-running child in its own process group, logging to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.pid: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self, die_with_parent: bool = True, death_signal: str = "KILL") -> None:
        """Start without waiting. With ``die_with_parent`` the child gets ``death_signal`` when
        this process dies."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = (_pdeathsig_prefix(death_signal) if die_with_parent else []) + self.argv
        env = {**os.environ, **self.env} if self.env is not None else None
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ComponentError(self.name, f"cannot execute {self.argv[0]}: {exc}") from exc
        self.pid = self._popen.pid

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def exit_code(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def error(self, reason: str) -> ComponentError:
        return ComponentError(self.name, reason, self.tail())

    def check_alive(self) -> None:
        if not self.alive():
            raise self.error(f"exited with code {self.exit_code()}")

    def signal_group(self, sig: int) -> None:
        if self.pid is not None:
            signal_group(self.pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        """Wait until the process is gone; True if it exited in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return not self.alive()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid`` from /proc, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as gone; our own zombie children are reaped)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_groups(pgids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM every process group, wait up to ``grace`` seconds, SIGKILL what is left."""
    for pgid in pgids:
        signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    remaining = list(pgids)
    while remaining and time.monotonic() < deadline:
        remaining = [p for p in remaining if _group_alive(p)]
        if remaining:
            time.sleep(0.05)
    for pgid in remaining:
        signal_group(pgid, signal.SIGKILL)
    for pgid in remaining:
        end = time.monotonic() + 2
        while _group_alive(pgid) and time.monotonic() < end:
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process is left in process group ``pgid``."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[1] == pgid and stat[0] != "Z":
            return True
    return False
