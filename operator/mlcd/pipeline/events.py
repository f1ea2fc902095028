"""An append-only log of a run's progress, read by whoever shows or watches the run."""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any

from mlcd.domain.numbers import json_safe


class EventLog:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def emit(self, kind: str, **fields: Any) -> None:
        line = json.dumps(
            json_safe({"ts": round(time.time(), 3), "kind": kind, **fields}),
            default=str,
            allow_nan=False,
        )
        # One write() of a short line to an O_APPEND file: lines from parallel trials never mix.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def follow(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Events written since ``offset``, and the offset to continue from."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1
        events = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        return events, offset + end

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.follow(0)[0])
