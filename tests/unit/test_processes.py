"""Process liveness: a pid names one process, and a dead one is not taken for alive."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

from mlcd.processes import alive, start_time


def test_a_running_process_is_alive_and_known_by_its_start_time() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = start_time(child.pid)
        assert started is not None
        assert alive(child.pid) and alive(child.pid, started)
        assert not alive(child.pid, started + 1)  # a later process that reused the pid
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid) and start_time(child.pid) is None


def test_a_zombie_is_not_alive() -> None:
    # An exited child nobody reaped yet, as one whose parent was killed stays when the
    # container's init does not reap.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        stat = pathlib.Path(f"/proc/{child.pid}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.05)
        os.kill(child.pid, 0)  # the pid still exists
        assert not alive(child.pid)
    finally:
        child.wait()
