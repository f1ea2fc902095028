"""A model repository and datasets in S3 (MinIO), through the ``minio`` client."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import json
import os
import pathlib
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error

from mlcd.artifacts.credentials import SecretResolver, s3_keys
from mlcd.artifacts.hashing import sha256_file
from mlcd.domain.records import ModelRef
from mlcd.domain.spec import StorageLocation
from mlcd.domain.versions import next_version
from mlcd.errors import PermanentError, StoreUnavailable, VersionExists
from mlcd.ports import DatasetObject

METADATA = "metadata.json"
#: Created first, conditionally: whoever creates it owns the version.
CLAIM = "claim.json"
T = TypeVar("T")
_MISSING = ("NoSuchKey", "NoSuchObject", "NoSuchVersion")


def s3_client(location: StorageLocation, secrets: SecretResolver) -> Minio:
    endpoint = (
        location.endpoint
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "https://s3.amazonaws.com"
    )
    secure = not endpoint.startswith("http://")
    host = endpoint.split("://", 1)[-1].rstrip("/")
    ref = location.credentials_secret_ref
    access, secret = s3_keys(ref.name if ref else None, secrets)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=60),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        host,
        access_key=access,
        secret_key=secret,
        secure=secure,
        http_client=http,
        region=os.environ.get("AWS_REGION", "us-east-1"),
    )


def _call(what: str, fn: Callable[[], T]) -> T:
    """Tells an unreachable store (temporary) from a refusal (permanent)."""
    try:
        return fn()
    except S3Error as exc:
        if exc.code in (
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "NoSuchBucket",
        ):
            raise PermanentError(f"{what}: {exc.code}: {exc.message}") from exc
        raise StoreUnavailable(f"{what}: {exc.code}: {exc.message}") from exc
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        cause = getattr(exc, "reason", None) or exc
        # Without object addresses the message is the same each time it is reported.
        text = re.sub(r"<[^>]*>: ", "", re.sub(r" at 0x[0-9a-f]+", "", str(cause)))
        raise StoreUnavailable(f"{what}: object store unreachable ({text})") from exc


class S3Store:
    """``s3://bucket/<prefix>/<model>/<version>/``.

    A version is taken by creating its ``claim.json`` with a conditional PUT
    (``If-None-Match: *``): of two writers, exactly one creates it, the other takes the next
    number. Only the claimant writes into the version, and ``metadata.json``, written last,
    is the commit mark: a version without it is not listed. A failed upload removes what it
    wrote, its claim last; a writer killed midway leaves its claim, and that number is
    skipped (or resumed by the same run)."""

    def __init__(self, client: Minio, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def uri(self, model: str, version: str | None = None) -> str:
        return f"s3://{self.bucket}/{self._key(model, version or '')}".rstrip("/") + (
            "/" if version else ""
        )

    def _objects(self, model: str) -> Iterator[str]:
        base = self._key(model) + "/"
        objects = _call(
            f"listing {self.uri(model)}",
            lambda: list(self.client.list_objects(self.bucket, prefix=base, recursive=True)),
        )
        for obj in objects:
            yield str(obj.object_name)[len(base) :]

    def _all_versions(self, model: str) -> tuple[set[str], set[str]]:
        seen, committed = set(), set()
        for rel in self._objects(model):
            version, _, name = rel.partition("/")
            if version.isdigit():
                seen.add(version)
                if name == METADATA:
                    committed.add(version)
        return seen, committed

    def versions(self, model: str) -> list[str]:
        return sorted(self._all_versions(model)[1], key=int)

    def _read_json(self, key: str) -> dict[str, Any] | None:
        def read() -> bytes | None:
            try:
                response = self.client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    return None
                raise
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        data = _call(f"reading {key}", read)
        return None if data is None else dict(json.loads(data))

    def metadata(self, model: str, version: str) -> dict[str, Any] | None:
        return self._read_json(self._key(model, version, METADATA))

    def _create(self, key: str, body: bytes) -> bool:
        """PUTs ``key`` only if no object has that name (``If-None-Match: *``); True if this
        call created it. minio's put_object sends no conditional headers: _put_object is its
        single-request PUT."""

        def put() -> bool:
            try:
                self.client._put_object(
                    self.bucket,
                    key,
                    body,
                    headers={"If-None-Match": "*", "Content-Type": "application/json"},
                )
            except S3Error as exc:
                if exc.code == "PreconditionFailed":
                    return False
                raise
            return True

        return _call(f"creating {key}", put)

    def _claim(self, model: str, run_id: str, seen: set[str]) -> tuple[str, dict[str, Any]]:
        """Takes a version for ``run_id``: one this run claimed before (a run retried after a
        crash resumes it), else the next number no one has claimed."""
        for version in sorted(seen, key=int, reverse=True):
            claim = self._read_json(self._key(model, version, CLAIM))
            if claim and claim.get("run") == run_id:
                return version, claim
        taken = set(seen)
        for _ in range(100):
            version = next_version(taken)
            claim = {
                "run": run_id,
                "nonce": uuid.uuid4().hex,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            key = self._key(model, version, CLAIM)
            if self._create(key, json.dumps(claim).encode()):
                return version, claim
            # Taken by another writer, or by this very request answered late (a retry).
            if (self._read_json(key) or {}).get("nonce") == claim["nonce"]:
                return version, claim
            taken.add(version)
        raise VersionExists(f"could not take a new version of {model} in 100 tries")

    def publish(
        self, model: str, run_id: str, files: Mapping[str, pathlib.Path], metadata: dict[str, Any]
    ) -> ModelRef:
        if "model.onnx" not in files:
            raise PermanentError("a published version needs model.onnx")
        seen, committed = self._all_versions(model)
        for version in sorted(committed, key=int, reverse=True):
            meta = self.metadata(model, version) or {}
            if meta.get("run") == run_id:
                return ModelRef(
                    uri=self.uri(model, version), version=version, sha256=str(meta["sha256"])
                )
        digest = sha256_file(files["model.onnx"])
        version, _ = self._claim(model, run_id, seen - committed)
        meta = {
            **metadata,
            "version": version,
            "sha256": digest,
            "run": run_id,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        written: list[str] = []
        try:
            for name, source in files.items():
                key = self._key(model, version, name)
                written.append(key)
                _call(
                    f"uploading {key}",
                    functools.partial(self.client.fput_object, self.bucket, key, str(source)),
                )
            marker = self._key(model, version, METADATA)
            body = json.dumps(meta, indent=2, sort_keys=True).encode()
            if not self._create(marker, body):
                raise VersionExists(f"{self.uri(model, version)} already exists")
        except BaseException:
            # Only this version's objects: it is ours until its claim goes, which goes last.
            for key in [*written, self._key(model, version, CLAIM)]:
                with contextlib.suppress(Exception):
                    self.client.remove_object(self.bucket, key)
            raise
        return ModelRef(uri=self.uri(model, version), version=version, sha256=digest)

    def fetch(self, model: str, version: str, directory: pathlib.Path) -> pathlib.Path:
        if self.metadata(model, version) is None:
            raise PermanentError(f"{self.uri(model, version)} not found")
        target = directory / model / version
        target.mkdir(parents=True, exist_ok=True)
        base = self._key(model, version) + "/"
        for rel in list(self._objects(model)):
            if rel.startswith(version + "/") and rel != f"{version}/{CLAIM}":
                name = rel.split("/", 1)[1]
                _call(
                    f"downloading {base}{name}",
                    functools.partial(
                        self.client.fget_object, self.bucket, base + name, str(target / name)
                    ),
                )
        return target

    def put_record(self, model: str, path: str, record: dict[str, Any]) -> str:
        """A run's full record, ``<prefix>/<model>/runs/<path>.json``; written whole or not."""
        key = self._key(model, "runs", f"{path}.json")
        data = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
        _call(
            f"writing {key}",
            lambda: self.client.put_object(
                self.bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type="application/json",
            ),
        )
        return f"s3://{self.bucket}/{key}"


class S3Dataset:
    def __init__(self, client: Minio, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key

    def version(self) -> str:
        def stat() -> str:
            try:
                info = self.client.stat_object(self.bucket, self.key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    raise PermanentError(
                        f"dataset s3://{self.bucket}/{self.key} does not exist"
                    ) from exc
                raise
            if info.version_id and info.version_id != "null":
                return f"version:{info.version_id}"
            return f"etag:{info.etag}"

        return _call(f"checking s3://{self.bucket}/{self.key}", stat)

    def fetch(self, directory: pathlib.Path) -> DatasetObject:
        version = self.version()
        target = directory / pathlib.PurePosixPath(self.key).name
        directory.mkdir(parents=True, exist_ok=True)
        # Read exactly the version that was identified, even if a newer one lands meanwhile.
        version_id = version.removeprefix("version:") if version.startswith("version:") else None
        _call(
            f"downloading s3://{self.bucket}/{self.key}",
            lambda: self.client.fget_object(
                self.bucket, self.key, str(target), version_id=version_id
            ),
        )
        return DatasetObject(path=target, version=version)
