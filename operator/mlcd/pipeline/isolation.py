"""What the user's code and the run's processes may see of this process's environment.

A trainer is untrusted code: it gets an allow-listed environment (the trainer contract's
variables, the user's ``trainer.env``, and what a process needs to run at all), never the
operator's kubeconfig, tokens or settings. The run's own process (mlcd's pipeline) also gets
the documented S3 fallback keys, since it reads the dataset and writes the model.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

from mlcd.domain.redact import redact

#: Variables a process needs to run: the interpreter, locale, temp files, certificates,
#: proxies to reach a store.
BASE = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "TZ",
        "TMPDIR",
        "TERM",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    }
)
#: Accelerator and distributed-training knobs a trainer may rely on.
TRAINER_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "GLOO_", "TORCH_")
#: The run's process also reads the stores: the documented fallback keys and endpoint, and
#: the share of cores it may use.
RUNNER_PREFIXES = ("LC_", "AWS_")
RUNNER_EXTRA = frozenset({"MLCD_CPUS"})


def _allowed(prefixes: tuple[str, ...], extra: frozenset[str] = frozenset()) -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k in BASE or k in extra or any(k.startswith(p) for p in prefixes)
    }


def trainer_environment(user: Mapping[str, str], contract: Mapping[str, str]) -> dict[str, str]:
    """The trainer's whole environment: the allow-list, then the user's ``trainer.env``,
    then the contract's variables (which the user cannot override)."""
    return {**_allowed(TRAINER_PREFIXES), **user, **contract}


def runner_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a run's own process (the pipeline), started by the local engine."""
    return {**_allowed(RUNNER_PREFIXES, RUNNER_EXTRA), **extra}


def secret_values(folder: str | os.PathLike[str] | None) -> list[str]:
    """The values of the run's credential files (``MLCD_SECRETS_DIR``), to redact."""
    if not folder:
        return []
    root = pathlib.Path(folder)
    if not root.is_dir():
        return []
    values = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                values.append(path.read_text().strip())
            except (OSError, UnicodeDecodeError):
                continue
    return values


def redact_run_text(text: str) -> str:
    """Masks this run's secret values in a text that may leave the run (reasons, reports)."""
    return redact(text, secret_values(os.environ.get("MLCD_SECRETS_DIR")))
