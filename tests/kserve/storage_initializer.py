"""A stand-in for KServe's storage initializer in the test stack: downloads the S3 folder
``SRC_URI`` into ``DEST`` (``python storage_initializer.py SRC_URI DEST``, the arguments KServe
gives its init container) with the credentials KServe's credential builder puts in the
container's environment (``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` by reference to the
pipeline's Secret, ``AWS_ENDPOINT_URL`` and ``S3_USE_HTTPS`` from its annotations).

KServe's own initializer (the ``kserve/storage-initializer`` image, the ``kserve-storage``
package with its cloud SDKs) cannot be pulled or installed here: the node has no registry and
the project's environment has neither. KServe still injects this container, its arguments and
its credentials itself (a ClusterStorageContainer names it); only the download is ours.
"""

from __future__ import annotations

import os
import pathlib
import sys


def download(uri: str, dest: pathlib.Path, endpoint: str, access: str, secret: str) -> list[str]:
    """Every object under the ``s3://bucket/prefix/`` folder, into ``dest``; their names."""
    from minio import Minio

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/"
    secure = endpoint.startswith("https://")
    host = endpoint.split("://", 1)[-1].rstrip("/")
    client = Minio(host, access_key=access, secret_key=secret, secure=secure)
    names = []
    for item in client.list_objects(bucket, prefix=prefix, recursive=True):
        name = str(item.object_name)[len(prefix) :]
        client.fget_object(bucket, str(item.object_name), str(dest / name))
        names.append(name)
    if not names:
        raise SystemExit(f"{uri} holds no objects")
    return names


def main(argv: list[str]) -> int:
    uri, dest = argv[1], pathlib.Path(argv[2])
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or ""
    if not endpoint:
        https = os.environ.get("S3_USE_HTTPS", "1") != "0"
        endpoint = f"{'https' if https else 'http'}://{os.environ['S3_ENDPOINT']}"
    names = download(
        uri, dest, endpoint, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    )
    print(f"downloaded {uri} to {dest}: {', '.join(sorted(names))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
