"""Running the user's trainer as the trainer contract (docs/trainer-contract.md) says.

Every invocation runs in its own process group, registered in the run's ``procs`` folder,
so a timeout, a cancel or Ctrl-C stops it and everything it started, and whoever cancels
the run can find any group a crashed stage left behind.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from mlcd.domain import metrics_text
from mlcd.domain.spec import Trainer
from mlcd.errors import StageFailed
from mlcd.pipeline.isolation import trainer_environment
from mlcd.processes import ADDRESS_IN_USE, free_port, kill_group, kill_groups

TAIL_LINES = 20
#: Longest line read at once: a trainer printing without newlines cannot grow memory.
MAX_LINE = 16 * 1024
MAX_METRICS_FILE = 16 * 1024 * 1024
#: Starts of one invocation when its rendezvous port turns out taken.
PORT_ATTEMPTS = 3


@dataclass
class TrainerRun:
    returncode: int
    seconds: float
    metrics: metrics_text.SeriesReader = field(default_factory=metrics_text.SeriesReader)
    stderr_tail: list[str] = field(default_factory=list)
    stdout_tail: list[str] = field(default_factory=list)
    timed_out: bool = False
    cancelled: bool = False

    @property
    def series(self) -> metrics_text.Series:
        return self.metrics.series()

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.cancelled

    def failure(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.timed_out:
            return f"timed out after {self.seconds:.0f}s"
        tail = "\n".join(self.stderr_tail[-TAIL_LINES:])
        return f"exited with code {self.returncode}" + (f"; stderr:\n{tail}" if tail else "")


class ProcessGroups:
    """The trainer process groups alive in this process; all stopped on SIGTERM or Ctrl-C."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.live: set[int] = set()
        self.lock = threading.Lock()
        # While the main thread starts a process and records its group, a signal waits:
        # raised between Popen and the record, it would leave a group no one knows of.
        self._starting = False
        self._pending: int | None = None

    def add(self, pgid: int) -> None:
        with self.lock:
            self.live.add(pgid)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{pgid}.pgid").write_text(str(pgid))

    def remove(self, pgid: int) -> None:
        with self.lock:
            self.live.discard(pgid)
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{pgid}.pgid").unlink()

    def stop_all(self) -> None:
        with self.lock:
            groups = list(self.live)
        kill_groups(groups)

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Starts and records a process with signals held (see :meth:`check`)."""
        main = threading.current_thread() is threading.main_thread()
        if main:
            self._starting = True
        try:
            yield
        finally:
            if main:
                self._starting = False

    def check(self) -> None:
        """Raises the signal that came while a process was starting, if one did."""
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Turns SIGTERM into KeyboardInterrupt, and stops every group on the way out."""

        def on_term(signum: int, frame: FrameType | None) -> None:
            if self._starting:
                self._pending = signum
                return
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            yield
        finally:
            self.stop_all()
            signal.signal(signal.SIGTERM, previous)


def _tool_path() -> str:
    # The trainer runs with this interpreter's environment first on PATH, as if activated.
    here = str(pathlib.Path(sys.executable).parent)
    return os.pathsep.join([here, os.environ.get("PATH", "")])


def command_line(trainer: Trainer, args: list[str], workers: int) -> list[str]:
    base = [*trainer.command, *trainer.args, *args]
    if workers <= 1:
        return base
    torchrun = shutil.which("torchrun", path=_tool_path())
    if torchrun is None:
        raise StageFailed("torchrun not found: install torch in the trainer's environment")
    return [
        torchrun,
        "--nnodes=1",
        f"--nproc-per-node={workers}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "--no-python",
        *base,
    ]


def run_trainer(
    trainer: Trainer,
    *,
    args: list[str],
    env: Mapping[str, str],
    log_path: pathlib.Path,
    groups: ProcessGroups,
    timeout: float,
    workers: int = 1,
    threads: int = 1,
    cancel: threading.Event | None = None,
) -> TrainerRun:
    """Runs one trainer invocation to the end and collects what it reported.

    The rendezvous port (torchrun's, or MASTER_PORT) is picked free but bound by the trainer
    later: when another process took it meanwhile, the invocation starts again on another."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        argv = command_line(trainer, args, workers)
        # Untrusted code: the contract's variables and the user's own, nothing of the operator's.
        full_env = trainer_environment(
            {e.name: e.value for e in trainer.env},
            {
                **env,
                "PATH": _tool_path(),
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads),
            },
        )
        if workers <= 1:
            full_env.update(
                RANK="0",
                LOCAL_RANK="0",
                WORLD_SIZE="1",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(free_port()),
            )
        result = _invoke(trainer, argv, full_env, log_path, groups, timeout, cancel)
        taken = any(ADDRESS_IN_USE.search(line) for line in result.stderr_tail)
        if result.ok or result.cancelled or result.timed_out or not taken:
            return result
        if attempt < PORT_ATTEMPTS:
            with log_path.open("a") as log:
                log.write("(mlcd) its port was taken by another process: starting it again\n")
    return result


def _invoke(
    trainer: Trainer,
    argv: list[str],
    full_env: dict[str, str],
    log_path: pathlib.Path,
    groups: ProcessGroups,
    timeout: float,
    cancel: threading.Event | None,
) -> TrainerRun:
    metrics_file = full_env.get("MLCD_METRICS_FILE")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    collector = trainer.metrics_collector
    # Only a tail of each stream and the parsed metrics stay in memory; the log has it all.
    parsed = metrics_text.SeriesReader(collector.metrics_format)
    stdout_tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES * 2)
    stderr_tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES * 2)
    started = time.monotonic()
    with groups.starting():
        try:
            process = subprocess.Popen(
                argv,
                env=full_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise StageFailed(f"cannot start trainer {argv[0]!r}: {exc}") from exc
        groups.add(process.pid)
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log_lock = threading.Lock()
        flushed = [time.monotonic()]

        def pump(stream: Any, tail: collections.deque[str], tag: str) -> None:
            parse = parsed.feed if tag == "out" and collector.kind == "StdOut" else None
            for line in iter(lambda: stream.readline(MAX_LINE), ""):
                text = line.rstrip("\n")
                tail.append(text)
                if parse is not None:
                    parse(text)
                with log_lock:
                    if log.closed:
                        continue  # given up on (see below): drain the pipe, keep nothing
                    log.write(f"{tag} {line}" if line.endswith("\n") else f"{tag} {line}\n")
                    if time.monotonic() - flushed[0] > 0.2:
                        log.flush()
                        flushed[0] = time.monotonic()

        readers = [
            threading.Thread(target=pump, args=(process.stdout, stdout_tail, "out"), daemon=True),
            threading.Thread(target=pump, args=(process.stderr, stderr_tail, "err"), daemon=True),
        ]
        for reader in readers:
            reader.start()
        timed_out = cancelled = False
        try:
            while process.poll() is None:
                groups.check()
                if time.monotonic() - started > timeout:
                    timed_out = True
                    break
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                kill_group(process.pid)
            process.wait()
            # Whatever of its group is left holds the pipes open: stopped, so that reading ends.
            kill_group(process.pid, grace=2.0)
            # The last lines (the final metrics) may still be in the pipes: read to the end,
            # unless a process that left the group keeps them open.
            for reader in readers:
                reader.join(timeout=60)
            groups.remove(process.pid)
            with log_lock:
                log.close()
    groups.check()
    if metrics_file and pathlib.Path(metrics_file).is_file():
        try:
            size = pathlib.Path(metrics_file).stat().st_size
            if size > MAX_METRICS_FILE:
                raise ValueError(f"{size} bytes, more than {MAX_METRICS_FILE}")
            from_file = metrics_text.parse_json(pathlib.Path(metrics_file).read_text())
        except ValueError as exc:
            stderr_tail.append(f"(mlcd) unreadable metrics file {metrics_file}: {exc}")
        else:
            parsed.add_series(from_file)
    return TrainerRun(
        returncode=process.returncode if process.returncode is not None else -1,
        seconds=time.monotonic() - started,
        metrics=parsed,
        stderr_tail=list(stderr_tail),
        stdout_tail=list(stdout_tail),
        timed_out=timed_out,
        cancelled=cancelled,
    )
