"""The model repository on disk and in a real MinIO: immutable versions, nothing half-written."""

from __future__ import annotations

import errno
import hashlib
import io
import pathlib
import shutil
import threading
import uuid

import pytest

from mlcd.artifacts import open_dataset, open_store
from mlcd.artifacts.local import LocalStore
from mlcd.domain.spec import StorageLocation
from mlcd.errors import PermanentError, StoreUnavailable


@pytest.fixture
def model_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx, but bytes with a hash " + uuid.uuid4().bytes)
    return path


def test_local_versions_are_immutable_and_publishing_is_idempotent(tmp_path, model_file):
    store = LocalStore(tmp_path / "repo")
    first = store.publish("m", "run-a", {"model.onnx": model_file}, {"metrics": {"a": 1}})
    assert first.version == "1"
    assert first.sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert store.publish("m", "run-a", {"model.onnx": model_file}, {}) == first
    second = store.publish("m", "run-b", {"model.onnx": model_file}, {})
    assert second.version == "2"
    # Another writer took version 3 meanwhile: its files are never replaced.
    (tmp_path / "repo" / "m" / "3").mkdir()
    (tmp_path / "repo" / "m" / "3" / "model.onnx").write_bytes(b"theirs")
    third = store.publish("m", "run-c", {"model.onnx": model_file}, {})
    assert third.version == "4"
    assert (tmp_path / "repo" / "m" / "3" / "model.onnx").read_bytes() == b"theirs"
    assert store.versions("m") == ["1", "2", "4"]
    assert store.metadata("m", "1")["metrics"] == {"a": 1}
    assert store.metadata("m", "1")["run"] == "run-a"


def test_a_full_disk_leaves_no_version_visible(tmp_path, model_file, monkeypatch):
    store = LocalStore(tmp_path / "repo")

    def full_disk(src: str, dst: str) -> None:
        pathlib.Path(dst).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    with pytest.raises(OSError, match="No space left"):
        store.publish("m", "run-a", {"model.onnx": model_file}, {})
    assert store.versions("m") == []
    assert list((tmp_path / "repo" / "m").iterdir()) == []
    monkeypatch.undo()
    assert store.publish("m", "run-a", {"model.onnx": model_file}, {}).version == "1"


@pytest.fixture
def s3(minio, tmp_path, monkeypatch):
    """An S3 location in the test MinIO, with keys given through a referenced secret."""
    secrets = tmp_path / "secrets" / "minio-creds"
    secrets.mkdir(parents=True)
    (secrets / "accessKey").write_text(minio.access_key)
    (secrets / "secretKey").write_text(minio.secret_key)
    monkeypatch.setenv("MLCD_SECRETS_DIR", str(tmp_path / "secrets"))
    prefix = f"models-{uuid.uuid4().hex[:8]}"
    location = StorageLocation.model_validate(
        {
            "uri": f"s3://{minio.bucket}/{prefix}",
            "endpoint": minio.endpoint,
            "credentialsSecretRef": {"name": "minio-creds"},
        }
    )
    return location, prefix


def test_s3_versions_are_immutable_and_half_written_ones_invisible(minio, s3, model_file, tmp_path):
    location, prefix = s3
    store = open_store(location)
    first = store.publish("m", "run-a", {"model.onnx": model_file}, {"metrics": {"a": 1.0}})
    assert (first.version, first.uri) == ("1", f"s3://{minio.bucket}/{prefix}/m/1/")
    assert store.publish("m", "run-a", {"model.onnx": model_file}, {}) == first

    # A crash between the model and its metadata leaves version 2 without its commit mark.
    client = minio.client()
    client.put_object(minio.bucket, f"{prefix}/m/2/model.onnx", io.BytesIO(b"x"), 1)
    assert store.versions("m") == ["1"]
    third = store.publish("m", "run-b", {"model.onnx": model_file}, {})
    assert third.version == "3"  # never reuses the half-written number

    # An upload failing midway removes what it wrote.
    missing = tmp_path / "gone.bin"
    with pytest.raises(FileNotFoundError):
        store.publish("m", "run-c", {"model.onnx": model_file, "extra.bin": missing}, {})
    assert store.versions("m") == ["1", "3"]
    leftovers = [
        o.object_name for o in client.list_objects(minio.bucket, f"{prefix}/m/4/", recursive=True)
    ]
    assert leftovers == []

    fetched = store.fetch("m", "3", tmp_path / "cache")
    assert hashlib.sha256((fetched / "model.onnx").read_bytes()).hexdigest() == third.sha256
    assert store.metadata("m", "1")["metrics"] == {"a": 1.0}


def test_s3_dataset_identity_follows_object_versions(minio, s3, tmp_path):
    location, prefix = s3
    key = f"{prefix}/data.npz"
    client = minio.client()
    client.put_object(minio.bucket, key, io.BytesIO(b"one"), 3)
    dataset = open_dataset(location.model_copy(update={"uri": f"s3://{minio.bucket}/{key}"}))
    before = dataset.version()
    assert before.startswith("version:")
    assert dataset.version() == before
    client.put_object(minio.bucket, key, io.BytesIO(b"two!"), 4)
    after = dataset.version()
    assert after != before
    fetched = dataset.fetch(tmp_path / "d")
    assert fetched.version == after and fetched.path.read_bytes() == b"two!"


def test_s3_problems_are_told_apart(minio, s3, model_file, tmp_path, monkeypatch):
    location, _ = s3
    missing_secret = StorageLocation.model_validate(
        {**location.model_dump(by_alias=True), "credentialsSecretRef": {"name": "nope"}}
    )
    with pytest.raises(PermanentError, match="secret 'nope' not found"):
        open_store(missing_secret)
    wrong_bucket = location.model_copy(update={"uri": "s3://no-such-bucket/x"})
    with pytest.raises(PermanentError, match="NoSuchBucket"):
        open_store(wrong_bucket).versions("m")
    down = location.model_copy(update={"endpoint": "http://127.0.0.1:9"})
    with pytest.raises(StoreUnavailable, match="unreachable"):
        open_store(down).versions("m")


def test_concurrent_s3_publishers_never_share_a_version_nor_remove_each_others(minio, s3, tmp_path):
    location, prefix = s3
    writers = 8
    failing = {2, 5}  # these fail after uploading their model: their cleanup runs meanwhile
    barrier = threading.Barrier(writers)
    outcomes: dict[int, object] = {}

    def publish(n: int) -> None:
        model = tmp_path / f"model-{n}.onnx"
        model.write_bytes(f"model of writer {n} ".encode() * 1000)
        files = {"model.onnx": model}
        if n in failing:
            files["extra.bin"] = tmp_path / "missing.bin"
        store = open_store(location)  # a client of its own, as another process has
        barrier.wait()
        try:
            outcomes[n] = store.publish("m", f"run-{n}", files, {"writer": n})
        except FileNotFoundError as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    published = {n: ref for n, ref in outcomes.items() if n not in failing}
    assert all(isinstance(outcomes[n], FileNotFoundError) for n in failing), outcomes
    versions = [ref.version for ref in published.values()]
    assert len(set(versions)) == len(versions) == writers - len(failing), versions
    store = open_store(location)
    assert sorted(store.versions("m"), key=int) == sorted(versions, key=int)
    for n, ref in published.items():
        meta = store.metadata("m", ref.version)
        assert meta["run"] == f"run-{n}" and meta["writer"] == n
        fetched = store.fetch("m", ref.version, tmp_path / "cache") / "model.onnx"
        assert fetched.read_bytes() == (tmp_path / f"model-{n}.onnx").read_bytes()
        assert hashlib.sha256(fetched.read_bytes()).hexdigest() == ref.sha256 == meta["sha256"]
    # The failed writers left nothing; every object belongs to a published version.
    client = minio.client()
    names = [o.object_name for o in client.list_objects(minio.bucket, f"{prefix}/m/", True)]
    assert {name.split("/")[-2] for name in names} == set(versions)


def test_a_claim_left_by_a_killed_writer_is_skipped_or_resumed_by_its_run(minio, s3, model_file):
    location, prefix = s3
    client = minio.client()
    claim = b'{"run": "run-killed", "nonce": "x"}'
    client.put_object(minio.bucket, f"{prefix}/m/1/claim.json", io.BytesIO(claim), len(claim))
    client.put_object(minio.bucket, f"{prefix}/m/1/model.onnx", io.BytesIO(b"half"), 4)
    store = open_store(location)
    assert store.versions("m") == []
    other = store.publish("m", "run-other", {"model.onnx": model_file}, {})
    assert other.version == "2"
    resumed = store.publish("m", "run-killed", {"model.onnx": model_file}, {})
    assert resumed.version == "1"
    assert store.versions("m") == ["1", "2"]
    assert store.metadata("m", "1")["run"] == "run-killed"
