"""A MinIO server with per-run credentials and one versioned bucket."""

from __future__ import annotations

import secrets
from typing import Any

from testenv.binaries import binary
from testenv.component import Component, http_ok
from testenv.proc import free_port

BUCKET = "mlcd-test"


class MinIO(Component):
    name = "minio"
    start_timeout = 60.0

    def start(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access_key = "testenv-" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(30)
        self.bucket = BUCKET
        self.spawn(
            [
                str(binary("minio")),
                "server",
                str(self.dir / "data"),
                f"--address=127.0.0.1:{self.port}",
                f"--console-address=127.0.0.1:{free_port()}",
                f"--certs-dir={self.dir / 'certs'}",
                "--quiet",
            ],
            env={
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
            },
        )

    def probe(self) -> bool:
        return http_ok(f"{self.endpoint}/minio/health/ready")

    def client(self) -> Any:
        """A ``minio.Minio`` client with the root credentials of this run."""
        from minio import Minio

        return Minio(
            f"127.0.0.1:{self.port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
        )

    def after_ready(self) -> None:
        from minio.commonconfig import ENABLED
        from minio.versioningconfig import VersioningConfig

        minio = self.client()
        if not minio.bucket_exists(self.bucket):
            minio.make_bucket(self.bucket)
        minio.set_bucket_versioning(self.bucket, VersioningConfig(ENABLED))

    def exports(self) -> dict[str, str]:
        return {
            "MINIO_ENDPOINT": self.endpoint,
            "MINIO_ACCESS_KEY": self.access_key,
            "MINIO_SECRET_KEY": self.secret_key,
            "MINIO_BUCKET": self.bucket,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def state(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "bucket": self.bucket}
