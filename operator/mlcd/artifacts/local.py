"""A model repository and datasets on the local filesystem."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

from mlcd.artifacts.hashing import sha256_file
from mlcd.domain.records import ModelRef
from mlcd.domain.versions import next_version
from mlcd.errors import PermanentError, VersionExists
from mlcd.ports import DatasetObject

METADATA = "metadata.json"


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore:
    """``<root>/<model>/<version>/``; a version appears by one atomic rename of a staged
    directory, so a crash or a full disk never leaves a half-written version visible."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    def uri(self, model: str, version: str | None = None) -> str:
        path = self.root / model
        return (path / version if version else path).resolve().as_uri()

    def _numbered(self, model: str) -> list[pathlib.Path]:
        folder = self.root / model
        if not folder.is_dir():
            return []
        return sorted(
            (d for d in folder.iterdir() if d.is_dir() and d.name.isdigit()),
            key=lambda d: int(d.name),
        )

    def versions(self, model: str) -> list[str]:
        return [d.name for d in self._numbered(model) if (d / METADATA).is_file()]

    def metadata(self, model: str, version: str) -> dict[str, Any] | None:
        path = self.root / model / version / METADATA
        if not path.is_file():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def _published_by(self, model: str, run_id: str) -> ModelRef | None:
        for version in reversed(self.versions(model)):
            meta = self.metadata(model, version) or {}
            if meta.get("run") == run_id:
                return ModelRef(
                    uri=self.uri(model, version), version=version, sha256=str(meta["sha256"])
                )
        return None

    def publish(
        self, model: str, run_id: str, files: Mapping[str, pathlib.Path], metadata: dict[str, Any]
    ) -> ModelRef:
        if "model.onnx" not in files:
            raise PermanentError("a published version needs model.onnx")
        done = self._published_by(model, run_id)
        if done is not None:
            return done
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".staging-{run_id}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
            for name, source in files.items():
                shutil.copyfile(source, staging / name)
            sha = sha256_file(staging / "model.onnx")
            for _ in range(100):
                version = next_version(d.name for d in self._numbered(model))
                meta = {
                    **metadata,
                    "version": version,
                    "sha256": sha,
                    "run": run_id,
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                }
                (staging / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
                with (staging / METADATA).open("rb") as handle:
                    os.fsync(handle.fileno())
                try:
                    # rename() refuses a non-empty target: an existing version is never replaced.
                    staging.rename(folder / version)
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        continue
                    raise
                _fsync_dir(folder)
                return ModelRef(uri=self.uri(model, version), version=version, sha256=sha)
            raise VersionExists(f"could not allocate a new version of {model}")
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)

    def fetch(self, model: str, version: str, directory: pathlib.Path) -> pathlib.Path:
        path = self.root / model / version
        if not (path / METADATA).is_file():
            raise PermanentError(f"model {model} version {version} not found in {self.root}")
        return path

    def put_record(self, model: str, path: str, record: dict[str, Any]) -> str:
        """A run's full record, ``<root>/<model>/runs/<path>.json``; written whole or not."""
        target = self.root / model / "runs" / f"{path}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        tmp.replace(target)
        return str(target)


class LocalDataset:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def version(self) -> str:
        if not self.path.is_file():
            raise PermanentError(f"dataset {self.path} does not exist")
        return "sha256:" + sha256_file(self.path)

    def fetch(self, directory: pathlib.Path) -> DatasetObject:
        return DatasetObject(path=self.path, version=self.version())
