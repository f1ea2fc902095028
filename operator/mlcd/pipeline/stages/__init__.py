"""The stages of a run. Each is called by one KFP component and keeps its outcome in the run's
records through :meth:`RunContext.stage`."""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Any

from mlcd.errors import StageFailed

if TYPE_CHECKING:
    import numpy as np


def cpus() -> int:
    return int(os.environ.get("MLCD_CPUS") or os.cpu_count() or 1)


# numpy is imported where arrays are read or written: the gate, export and report components
# start without it.


def load_npz(path: str | pathlib.Path) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return data["x"], data["y"]


def save_npz(path: str | pathlib.Path, **arrays: np.ndarray[Any, Any]) -> None:
    import numpy as np

    # A file handle keeps numpy from appending ".npz" to an artifact's path.
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def require_file(path: pathlib.Path, what: str) -> pathlib.Path:
    if not path.is_file():
        raise StageFailed(what)
    return path
