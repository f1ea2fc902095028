"""Named points where a test can kill this process (``MLCD_FAILPOINTS=after-submit,...``), to
prove a crash at that exact line loses nothing and repeats nothing. Off unless set."""

from __future__ import annotations

import os
import signal


def hit(name: str) -> None:
    """Dies here, as ``kill -9`` would, when ``name`` is listed in ``MLCD_FAILPOINTS``."""
    wanted = os.environ.get("MLCD_FAILPOINTS")
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
