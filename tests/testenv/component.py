"""The base of every stack component and its readiness probes."""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from testenv.proc import ComponentError, Process

if TYPE_CHECKING:
    from testenv.stack import Stack


class Component:
    """One part of the stack: its processes, a readiness probe and what it exports.

    ``start`` only launches processes; the stack polls ``probe`` until it returns True, then
    calls ``after_ready`` once (for set-up through the component's own API).
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    start_timeout: ClassVar[float] = 60.0

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.dir = stack.root / self.name
        self.processes: list[Process] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def probe(self) -> bool:
        raise NotImplementedError

    def after_ready(self) -> None:
        """Set-up once the component answers (a bucket, a node, ...)."""

    def check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()

    def error(self, reason: str) -> ComponentError:
        log = self.processes[0].tail() if self.processes else ""
        return ComponentError(self.name, reason, log)

    # -- helpers for subclasses ----------------------------------------------------------------
    def spawn(
        self, argv: list[str], env: dict[str, str] | None = None, death_signal: str = "KILL"
    ) -> Process:
        self.dir.mkdir(parents=True, exist_ok=True)
        process = Process(self.name, argv, self.stack.log_dir / f"{self.name}.log", env=env)
        self.processes.append(process)
        process.start(die_with_parent=not self.stack.detach, death_signal=death_signal)
        return process

    @property
    def log_path(self) -> Path:
        return self.stack.log_dir / f"{self.name}.log"

    # -- what the outside sees -----------------------------------------------------------------
    def exports(self) -> dict[str, str]:
        """Environment variables a shell (``hack/testenv up``) gets for this component."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON-able facts needed to find this component again from another process."""
        return {}


def http_ok(
    url: str,
    context: ssl.SSLContext | None = None,
    timeout: float = 1.0,
    headers: dict[str, str] | None = None,
) -> bool:
    """True if GET ``url`` answers 2xx; connection errors and other statuses are False."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError):
        return False
    except OSError:
        return False


def tls_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client TLS context trusting ``ca`` (or nothing checked if None), with a client cert."""
    if ca is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context
