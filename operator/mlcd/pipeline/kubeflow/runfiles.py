"""A run's files in the artifact store, under ``<artifacts>/runs/<namespace>/<pipeline>/<run>/``:
the stage records the Kubeflow engine assembles the run's result from, the data the trial and
training pods read, and the model the training job writes.

On a cluster every step runs in its own pod; this prefix is what they and the operator share."""

from __future__ import annotations

import io
import json
import pathlib
from typing import Any

from mlcd.artifacts.credentials import SecretResolver, directory_secrets
from mlcd.domain.spec import StorageLocation
from mlcd.errors import PermanentError

CURRENT = "current.json"


class RunFiles:
    """Objects under one run's prefix: S3 (MinIO) or a local folder (``file://`` or a path)."""

    def __init__(
        self,
        location: StorageLocation,
        namespace: str,
        pipeline: str,
        folder: str,
        secrets: SecretResolver | None = None,
    ) -> None:
        self.location = location
        root = location.uri.rstrip("/")
        self.prefix_uri = f"{root}/runs/{namespace}/{pipeline}/{folder}"
        self._client: Any = None
        self._secrets = secrets
        if root.startswith("s3://"):
            bucket, _, prefix = root.removeprefix("s3://").partition("/")
            self.bucket = bucket
            self.prefix = "/".join(p for p in (prefix, "runs", namespace, pipeline, folder) if p)
        else:
            self.bucket = ""
            self.prefix = str(
                pathlib.Path(root.removeprefix("file://")).expanduser()
                / "runs"
                / namespace
                / pipeline
                / folder
            )

    @property
    def s3(self) -> bool:
        return bool(self.bucket)

    def uri(self, key: str) -> str:
        """Where ``key`` is, as the pods are told it (``s3://...`` or a path)."""
        return f"{self.prefix_uri}/{key}" if self.s3 else f"{self.prefix}/{key}"

    def _minio(self) -> Any:
        if self._client is None:
            from mlcd.artifacts.s3 import s3_client

            self._client = s3_client(self.location, self._secrets or directory_secrets())
        return self._client

    def folder(self, key: str) -> str:
        """The URI of a folder the pods write into; on a file system it is made first."""
        if not self.s3:
            (pathlib.Path(self.prefix) / key).mkdir(parents=True, exist_ok=True)
        return self.uri(key)

    def put(self, key: str, data: bytes) -> None:
        if self.s3:
            from mlcd.artifacts.s3 import _call

            _call(
                f"writing {self.uri(key)}",
                lambda: self._minio().put_object(
                    self.bucket, f"{self.prefix}/{key}", io.BytesIO(data), len(data)
                ),
            )
            return
        path = pathlib.Path(self.prefix) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def get(self, key: str) -> bytes | None:
        if self.s3:
            from minio.error import S3Error

            from mlcd.artifacts.s3 import _call

            def read() -> bytes | None:
                try:
                    response = self._minio().get_object(self.bucket, f"{self.prefix}/{key}")
                except S3Error as exc:
                    if exc.code in ("NoSuchKey", "NoSuchObject"):
                        return None
                    raise
                try:
                    return bytes(response.read())
                finally:
                    response.close()
                    response.release_conn()

            return _call(f"reading {self.uri(key)}", read)
        path = pathlib.Path(self.prefix) / key
        return path.read_bytes() if path.is_file() else None

    def keys(self, folder: str) -> list[str]:
        """Keys under ``folder/``, relative to the run's prefix."""
        if self.s3:
            from mlcd.artifacts.s3 import _call

            start = f"{self.prefix}/{folder.strip('/')}/"
            return _call(
                f"listing {self.uri(folder)}",
                lambda: [
                    str(o.object_name).removeprefix(f"{self.prefix}/")
                    for o in self._minio().list_objects(self.bucket, start, recursive=True)
                ],
            )
        root = pathlib.Path(self.prefix)
        base = root / folder
        if not base.is_dir():
            return []
        return sorted(
            str(f.relative_to(root))
            for f in base.rglob("*")
            if f.is_file() and not f.name.startswith(".")
        )

    def put_file(self, key: str, source: pathlib.Path) -> str:
        self.put(key, source.read_bytes())
        return self.uri(key)

    def get_file(self, key: str, target: pathlib.Path) -> bool:
        data = self.get(key)
        if data is None:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return True

    def put_json(self, key: str, value: Any) -> None:
        self.put(key, json.dumps(value, indent=2, default=str).encode())

    def get_json(self, key: str) -> Any:
        data = self.get(key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise PermanentError(f"{self.uri(key)} is not JSON: {exc}") from exc
