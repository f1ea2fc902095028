"""Where the trainer reads and writes: paths, or ``s3://`` URIs.

On a cluster the trainer's pods share nothing with mlcd but the artifact store, so
``MLCD_TRAIN_DATA``, ``MLCD_VALIDATION_DATA``, ``MLCD_MODEL_DIR`` and ``MLCD_METRICS_FILE`` are
``s3://bucket/key`` URIs there, with ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` set (docs/trainer-contract.md). Locally they are paths.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


def _client() -> Any:
    from minio import Minio

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL", "https://s3.amazonaws.com"
    )
    return Minio(
        endpoint.split("://", 1)[-1].rstrip("/"),
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        secure=not endpoint.startswith("http://"),
        region=os.environ.get("AWS_REGION", "us-east-1"),
    )


@contextlib.contextmanager
def readable(uri: str) -> Iterator[pathlib.Path]:
    """A local file with the content of ``uri``."""
    if not is_s3(uri):
        yield pathlib.Path(uri)
        return
    bucket, key = _split(uri)
    with tempfile.TemporaryDirectory(prefix="mnist-") as scratch:
        path = pathlib.Path(scratch) / pathlib.PurePosixPath(key).name
        _client().fget_object(bucket, key, str(path))
        yield path


@contextlib.contextmanager
def writable_folder(uri: str) -> Iterator[pathlib.Path]:
    """A local folder whose files end up under ``uri`` when the block succeeds."""
    if not is_s3(uri):
        path = pathlib.Path(uri)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    bucket, prefix = _split(uri)
    with tempfile.TemporaryDirectory(prefix="mnist-") as scratch:
        folder = pathlib.Path(scratch)
        yield folder
        client = _client()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = "/".join(p for p in (prefix, path.relative_to(folder).as_posix()) if p)
            client.fput_object(bucket, key, str(path))


def write_text(uri: str, text: str) -> None:
    if not is_s3(uri):
        pathlib.Path(uri).write_text(text)
        return
    import io

    bucket, key = _split(uri)
    data = text.encode()
    _client().put_object(bucket, key, io.BytesIO(data), len(data))
