"""Real components for the tests: Kubernetes control plane + kwok, MinIO, Prometheus, HAProxy.

``hack/bootstrap`` builds or installs them; :class:`testenv.stack.Stack` starts and stops them;
``testenv.fixtures`` offers them to pytest; ``hack/testenv`` to a shell. See docs/testenv.md.
"""

from testenv.proc import ComponentError
from testenv.stack import GROUPS, Stack

__all__ = ["GROUPS", "ComponentError", "Stack"]
