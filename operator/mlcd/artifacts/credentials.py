"""Credentials come by reference only: a named secret, or the environment.

Locally a secret named ``minio-creds`` is the directory ``$MLCD_SECRETS_DIR/minio-creds``
holding one file per key (``accessKey``, ``secretKey``), the layout Kubernetes gives a
mounted Secret. The operator resolves names through the Kubernetes API instead.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping

from mlcd.errors import PermanentError

SecretResolver = Callable[[str], Mapping[str, str]]

ACCESS_KEYS = ("accessKey", "AWS_ACCESS_KEY_ID", "access_key", "rootUser")
SECRET_KEYS = ("secretKey", "AWS_SECRET_ACCESS_KEY", "secret_key", "rootPassword")


def secrets_dir() -> pathlib.Path:
    default = pathlib.Path(os.environ.get("MLCD_HOME", "~/.mlcd")).expanduser() / "secrets"
    return pathlib.Path(os.environ.get("MLCD_SECRETS_DIR", str(default))).expanduser()


def directory_secrets(root: pathlib.Path | None = None) -> SecretResolver:
    def resolve(name: str) -> Mapping[str, str]:
        folder = (root or secrets_dir()) / name
        if not folder.is_dir():
            raise PermanentError(f"secret {name!r} not found (looked in {folder})")
        return {f.name: f.read_text().strip() for f in folder.iterdir() if f.is_file()}

    return resolve


def s3_keys(secret: str | None, resolve: SecretResolver) -> tuple[str | None, str | None]:
    """The access and secret key, from the named secret or else the environment."""
    if secret is None:
        return os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    values = resolve(secret)
    access = next((values[k] for k in ACCESS_KEYS if k in values), None)
    secret_key = next((values[k] for k in SECRET_KEYS if k in values), None)
    if access is None or secret_key is None:
        raise PermanentError(f"secret {secret!r} needs the keys accessKey and secretKey")
    return access, secret_key
