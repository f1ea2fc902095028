"""Artifact and dataset stores: the local filesystem, or S3/MinIO."""

from __future__ import annotations

import pathlib

from mlcd.artifacts.credentials import SecretResolver, directory_secrets
from mlcd.artifacts.hashing import sha256_file
from mlcd.artifacts.local import LocalDataset, LocalStore
from mlcd.domain.spec import StorageLocation
from mlcd.ports import ArtifactStore, DatasetSource

__all__ = ["open_dataset", "open_store", "sha256_file"]


def _local_path(uri: str) -> pathlib.Path:
    return pathlib.Path(uri.removeprefix("file://")).expanduser()


def open_store(location: StorageLocation, secrets: SecretResolver | None = None) -> ArtifactStore:
    if location.uri.startswith("s3://"):
        from mlcd.artifacts.s3 import S3Store, s3_client

        bucket, _, prefix = location.uri.removeprefix("s3://").partition("/")
        client = s3_client(location, secrets or directory_secrets())
        return S3Store(client, bucket, prefix.strip("/"))
    return LocalStore(_local_path(location.uri))


def open_dataset(location: StorageLocation, secrets: SecretResolver | None = None) -> DatasetSource:
    if location.uri.startswith("s3://"):
        from mlcd.artifacts.s3 import S3Dataset, s3_client

        bucket, _, key = location.uri.removeprefix("s3://").partition("/")
        client = s3_client(location, secrets or directory_secrets())
        return S3Dataset(client, bucket, key)
    return LocalDataset(_local_path(location.uri))
