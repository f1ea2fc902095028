"""Starting the operator: kopf with mlcd's handlers, settings and wiring."""

from __future__ import annotations

import datetime as dt
import logging
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from mlcd.control.controller import Controller, ControllerSettings
from mlcd.control.local import local_provider, local_router
from mlcd.engines.kubeflow import KubeflowEngine, KubeflowSettings
from mlcd.engines.local import LocalEngine
from mlcd.errors import PermanentError
from mlcd.k8s.handlers import Memo, register
from mlcd.k8s.kube import Kube, login
from mlcd.metrics.operator import OperatorMetrics
from mlcd.metrics.prometheus import PrometheusProvider
from mlcd.ports import MetricProvider, ModelServing, PipelineBackend, TrafficRouter
from mlcd.serving.local import LocalServing
from mlcd.settings import OperatorSettings

FINALIZER = "mlcd.io/finalizer"


def file_clock(path: pathlib.Path) -> Callable[[], dt.datetime]:
    """Time read from a file: lets tests and dry runs move the operator's clock."""

    def now() -> dt.datetime:
        text = path.read_text().strip()
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))

    return now


def default_engines(settings: OperatorSettings, kube: Kube) -> dict[str, PipelineBackend]:
    """The local engine, and the Kubeflow engine when MLCD_KFP_ENDPOINT is set."""
    engines: dict[str, PipelineBackend] = {"local": LocalEngine(settings.state_dir)}
    kubeflow = KubeflowSettings()
    if kubeflow.endpoint:
        engines["kubeflow"] = KubeflowEngine(kubeflow, secrets=kube.secrets)
    return engines


def serving_target(
    settings: OperatorSettings, kube: Kube
) -> tuple[ModelServing, TrafficRouter | None, MetricProvider | None]:
    """Where models are served (``MLCD_SERVING``), the router of their rollouts, and the
    Prometheus that analyses them."""
    if settings.serving == "kserve":
        # Imported here: the kserve SDK costs the local-serving operator ~70 MiB it never uses.
        from mlcd.domain.kserve import MODE_NAMES
        from mlcd.serving.kserve.api import KubeAPI
        from mlcd.serving.kserve.resources import Options
        from mlcd.serving.kserve.router import KServeRouter
        from mlcd.serving.kserve.serving import KServeServing

        mode = settings.kserve_deployment_mode
        if mode is not None and MODE_NAMES.get(mode) not in ("Standard", "Knative"):
            raise PermanentError(
                f"MLCD_KSERVE_DEPLOYMENT_MODE: {mode!r} is not RawDeployment, Standard, "
                "Serverless or Knative"
            )
        api = KubeAPI(kube.http)
        options = Options(
            runtime=settings.kserve_runtime, deployment_mode=settings.kserve_deployment_mode
        )
        provider = PrometheusProvider(settings.prometheus_url) if settings.prometheus_url else None
        where = settings.kserve_namespace
        return (
            KServeServing(api, kube.secrets, options, kserve_namespace=where),
            KServeRouter(api, kserve_namespace=where),
            provider,
        )
    if settings.serving != "local":
        raise PermanentError(f"MLCD_SERVING: {settings.serving!r} is not local or kserve")
    state = settings.state_dir
    provider_, targets = local_provider(state, settings.prometheus_url)
    targets = settings.prometheus_targets or targets
    faults = {"MLCD_SERVING_FAULTS": settings.candidate_faults} if settings.candidate_faults else {}
    serving = LocalServing(state, port=0, candidate_env=faults)
    return serving, local_router(state, 0, targets), provider_


def build_memo(
    settings: OperatorSettings, engines: Mapping[str, PipelineBackend] | None = None
) -> Memo:
    kube = Kube.connect(settings.kubeconfig, connections=settings.workers + 4)
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    metrics = OperatorMetrics()
    serving, router, provider = serving_target(settings, kube)
    controller = Controller(
        ControllerSettings(
            state_dir=state,
            default_engine=settings.engine,
            max_active_runs=settings.max_active_runs,
        ),
        engines=engines or default_engines(settings, kube),
        serving=serving,
        secrets=kube.secrets,
        clock=file_clock(settings.clock_file)
        if settings.clock_file
        else (lambda: dt.datetime.now(dt.UTC)),
        metrics=metrics,
        router=router,
        provider=provider,
    )
    return Memo(
        controller=controller, kube=kube, metrics=metrics, namespaces=list(settings.namespaces)
    )


def run(
    config: OperatorSettings,
    engines: Mapping[str, PipelineBackend] | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    """Runs until stopped (SIGINT/SIGTERM, or ``stop_flag``)."""
    if config.kubeconfig:
        os.environ["KUBECONFIG"] = config.kubeconfig  # kopf logs in the way kubectl does
    # Each handler's success is not news; decisions are logged by mlcd.operator.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    memo = build_memo(config, engines)
    registry = kopf.OperatorRegistry()
    register(registry, config.tick)
    workers = config.workers

    @kopf.on.login(registry=registry)
    def on_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return login(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="mlcd.io")
        settings.persistence.consistency_timeout = 5.0
        # mlcd posts the Events of its decisions itself; kopf posts only its errors.
        settings.posting.level = logging.ERROR
        settings.posting.reporting_component = "mlcd"
        settings.execution.max_workers = workers
        settings.peering.lifetime = 30
        # A watch that goes silent without an error (kopf #810, #847, #1094) is cut by the
        # client a little after the server should have ended it, and started again.
        settings.watching.server_timeout = config.watch_timeout
        settings.watching.client_timeout = config.watch_timeout + 30
        settings.watching.connect_timeout = 30
        settings.networking.request_timeout = 60

    if config.metrics_port:
        memo.metrics.serve(config.metrics_port, config.metrics_address)
    kopf.run(
        registry=registry,
        memo=memo,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        standalone=config.peering is None,
        peering_name=config.peering,
        priority=config.priority,
        liveness_endpoint=config.liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
