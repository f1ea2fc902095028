"""MinIO is real: per-run credentials, a versioned bucket that keeps every write of a key."""

from __future__ import annotations

import io

from minio.error import S3Error

from testenv.minio import MinIO


def test_versioned_bucket_keeps_two_versions_of_one_key(minio: MinIO) -> None:
    s3 = minio.client()
    key = "datasets/versions-test.txt"
    written = []
    for content in (b"first", b"second"):
        result = s3.put_object(minio.bucket, key, io.BytesIO(content), len(content))
        written.append(result.version_id)
    assert all(written) and written[0] != written[1]

    versions = [
        o.version_id
        for o in s3.list_objects(minio.bucket, prefix=key, include_version=True)
        if o.object_name == key
    ]
    assert sorted(versions) == sorted(written)
    for version, content in zip(written, (b"first", b"second"), strict=True):
        response = s3.get_object(minio.bucket, key, version_id=version)
        try:
            assert response.read() == content
        finally:
            response.close()
            response.release_conn()
    assert s3.stat_object(minio.bucket, key).version_id == written[1]


def test_credentials_are_generated_per_run(minio: MinIO) -> None:
    assert minio.access_key != "minioadmin" and len(minio.secret_key) >= 30
    stranger = MinIO.__new__(MinIO)
    stranger.port, stranger.access_key, stranger.secret_key = minio.port, "minioadmin", "minioadmin"
    try:
        stranger.client().bucket_exists(minio.bucket)
    except S3Error as exc:
        assert exc.code == "InvalidAccessKeyId"
    else:
        raise AssertionError("the default MinIO credentials were accepted")
