"""Settings read from the environment, grouped by concern, each with a default."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field


def _home() -> pathlib.Path:
    return pathlib.Path(os.environ.get("MLCD_HOME", "~/.mlcd")).expanduser()


@dataclass(frozen=True)
class LocalSettings:
    """Where the local engine keeps runs, models and servers."""

    #: State directory: runs, the default model repository, server state (``MLCD_HOME``).
    home: pathlib.Path = field(default_factory=_home)
    #: Port of the local model server; 0 picks a free one (``MLCD_SERVING_PORT``).
    serving_port: int = field(
        default_factory=lambda: int(os.environ.get("MLCD_SERVING_PORT", "8080"))
    )
    #: How long a new model server may take to become ready, in seconds.
    serving_ready_timeout: float = 90.0

    @property
    def models(self) -> pathlib.Path:
        """The default model repository when ``spec.artifacts`` is not set."""
        return self.home / "models"

    def pipeline_dir(self, namespace: str, name: str) -> pathlib.Path:
        return self.home / "pipelines" / namespace / name
