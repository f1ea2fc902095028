"""pytest fixtures for the real stack (enable with ``pytest_plugins = ["testenv.fixtures"]``).

Every fixture is session-scoped: a component starts once, on the first test that needs it.
The first request starts together everything the selected tests need, so independent
components start in parallel. All of it stops at the end of the session, on Ctrl-C and on
SIGTERM; the processes also die with the pytest process if it is killed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Generator, Iterator
from types import FrameType

import pytest

from testenv.cluster import Cluster
from testenv.gateway import Traefik
from testenv.haproxy import HAProxy
from testenv.kserve import KServe
from testenv.kube import NODE_NAME, KubeAPIServer
from testenv.minio import MinIO
from testenv.node import NodeMinIO, RealNode
from testenv.prometheus import Prometheus, PrometheusAPI
from testenv.stack import Stack

# Fixture name -> stack group of the same name (see testenv.stack.GROUPS).
STACK_FIXTURES = (
    "apiserver",
    "nodes",
    "real_node",
    "minio",
    "node_minio",
    "prometheus",
    "haproxy",
    "training_operator",
    "trainer",
    "katib_crds",
    "kserve",
    "gateway",
)
LOG_LINES = 60

_stack_key = pytest.StashKey[Stack]()


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "nodes: needs simulated nodes (kube-scheduler + kwok); added automatically"
    )
    config.addinivalue_line(
        "markers",
        "real_node: needs the real node (kubelet, containerd, kube-proxy, CoreDNS); "
        "added automatically",
    )
    config.addinivalue_line(
        "markers", "stack: uses a real component of the test stack; added automatically"
    )
    # SIGTERM (CI cancelling the job) unwinds like Ctrl-C, so fixture teardown runs.
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"nodes", "kserve", "gateway"}:
            item.add_marker(pytest.mark.nodes)
        if "real_node" in names:
            item.add_marker(pytest.mark.real_node)
        if names & set(STACK_FIXTURES):
            item.add_marker(pytest.mark.stack)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    stack = item.session.stash.get(_stack_key, None)
    if not report.failed or stack is None:
        return
    if not set(getattr(item, "fixturenames", ())) & {*STACK_FIXTURES, "testenv_stack"}:
        return
    for component in stack.components():
        log = "\n".join(p.tail(LOG_LINES) for p in component.processes)
        report.sections.append((f"testenv: {component.name} log ({component.log_path})", log))


@pytest.fixture(scope="session")
def testenv_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The session's stack; data, certs and logs live in a pytest temp dir."""
    stack = Stack(tmp_path_factory.mktemp("testenv"))
    request.session.stash[_stack_key] = stack
    wanted = sorted(
        {
            name
            for item in request.session.items
            for name in getattr(item, "fixturenames", ())
            if name in STACK_FIXTURES
        }
    )
    try:
        # Start together what the selected tests need. A failure is remembered by the stack
        # and raised by the fixture that needs the failed component.
        stack.up_quietly(*wanted)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def apiserver(testenv_stack: Stack) -> Cluster:
    """etcd + kube-apiserver + kube-controller-manager; the admin's :class:`Cluster`."""
    testenv_stack.up("apiserver")
    component = testenv_stack.component("kube-apiserver")
    assert isinstance(component, KubeAPIServer)
    return Cluster(component)


@pytest.fixture(scope="session")
def nodes(testenv_stack: Stack, apiserver: Cluster) -> list[str]:
    """kube-scheduler + kwok + one simulated node; the names of the Ready nodes."""
    testenv_stack.up("nodes")
    return [NODE_NAME]


@pytest.fixture(scope="session")
def real_node(testenv_stack: Stack, apiserver: Cluster) -> RealNode:
    """A real node (kubelet, containerd, runc, CNI, kube-proxy, CoreDNS) where pods execute.

    Pods land there only when they ask (``real_node.placement`` or ``real_node.pod_spec()``);
    images come from ``real_node.import_images`` (there is no registry).
    """
    testenv_stack.up("real_node")
    return RealNode.of(testenv_stack)


@pytest.fixture(scope="session")
def minio(testenv_stack: Stack) -> MinIO:
    """A MinIO server: ``endpoint``, ``access_key``, ``secret_key``, versioned ``bucket``."""
    testenv_stack.up("minio")
    component = testenv_stack.component("minio")
    assert isinstance(component, MinIO)
    return component


@pytest.fixture(scope="session")
def node_minio(testenv_stack: Stack, real_node: RealNode, minio: MinIO) -> NodeMinIO:
    """MinIO as the real node's pods reach it: ``endpoint`` on the host end of the node's link,
    which the host reaches too; ``minio`` for the credentials, bucket and a client."""
    testenv_stack.up("node_minio")
    component = testenv_stack.component("node-minio")
    assert isinstance(component, NodeMinIO)
    return component


@pytest.fixture(scope="session")
def prometheus(testenv_stack: Stack) -> PrometheusAPI:
    """Prometheus with a 1 s scrape interval; add targets with ``add_target``."""
    testenv_stack.up("prometheus")
    component = testenv_stack.component("prometheus")
    assert isinstance(component, Prometheus)
    return PrometheusAPI.of(component)


@pytest.fixture(scope="session")
def haproxy(testenv_stack: Stack) -> HAProxy:
    """HAProxy: ``url`` to send traffic to, ``runtime()`` for its admin socket."""
    testenv_stack.up("haproxy")
    component = testenv_stack.component("haproxy")
    assert isinstance(component, HAProxy)
    return component


@pytest.fixture(scope="session")
def training_operator(testenv_stack: Stack, apiserver: Cluster) -> Cluster:
    """The training operator (PyTorchJob) with its validating webhook."""
    testenv_stack.up("training_operator")
    return apiserver


@pytest.fixture(scope="session")
def trainer(testenv_stack: Stack, apiserver: Cluster) -> Cluster:
    """JobSet + the Kubeflow Trainer (TrainJob), and the ClusterTrainingRuntime
    ``torch-distributed`` (backoffLimit 0)."""
    testenv_stack.up("trainer")
    return apiserver


@pytest.fixture(scope="session")
def katib_crds(testenv_stack: Stack, apiserver: Cluster) -> Cluster:
    """Katib's CRDs (Experiment, Trial, Suggestion); the tests play its controller."""
    testenv_stack.up("katib_crds")
    return apiserver


@pytest.fixture(scope="session")
def kserve(testenv_stack: Stack, nodes: list[str]) -> KServe:
    """KServe's controller (v0.20, RawDeployment by default) with its CRDs, ConfigMap, webhooks
    and ClusterServingRuntimes, on the simulated node."""
    testenv_stack.up("kserve")
    component = testenv_stack.component("kserve")
    assert isinstance(component, KServe)
    return component


@pytest.fixture(scope="session")
def gateway(testenv_stack: Stack, kserve: KServe) -> Traefik:
    """Traefik serving KServe's Gateway ``kserve/kserve-ingress-gateway`` on ``url``
    (127.0.0.1): HTTPRoutes attached to it carry real requests to the pods of their backends."""
    testenv_stack.up("gateway")
    component = testenv_stack.component("traefik")
    assert isinstance(component, Traefik)
    return component
