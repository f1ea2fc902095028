"""Credentials a run needs, as files only it reads: the layout of a mounted Secret, mode 0600
in folders of mode 0700, one folder per run, removed when the run ends however it ends."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from collections.abc import Iterable

from mlcd.artifacts.credentials import SecretResolver
from mlcd.ports import PipelineKey


class Credentials:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    def pipeline_dir(self, key: PipelineKey) -> pathlib.Path:
        return self.root / key.namespace / key.folder

    def materialize(
        self, key: PipelineKey, run: str, names: Iterable[str], resolve: SecretResolver
    ) -> pathlib.Path:
        """Writes the named secrets for ``run``; returns its folder (``MLCD_SECRETS_DIR``)."""
        folder = self.pipeline_dir(key) / run
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for parent in (folder, *folder.parents):
            if parent == self.root.parent:
                break
            with contextlib.suppress(OSError):
                parent.chmod(0o700)
        for name in names:
            target = folder / name
            target.mkdir(exist_ok=True, mode=0o700)
            for field, value in resolve(name).items():
                path = target / field
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(value)
        return folder

    def runs(self, key: PipelineKey) -> tuple[str, ...]:
        folder = self.pipeline_dir(key)
        if not folder.is_dir():
            return ()
        return tuple(sorted(d.name for d in folder.iterdir() if d.is_dir()))

    def forget(self, key: PipelineKey, run: str) -> None:
        shutil.rmtree(self.pipeline_dir(key) / run, ignore_errors=True)
