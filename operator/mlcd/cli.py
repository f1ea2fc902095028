"""The ``mlcd`` command.

Exit codes: 0 promoted (or success), 1 failed, 2 bad input, 3 rejected, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from mlcd import __version__
from mlcd.domain.numbers import json_safe
from mlcd.domain.spec import ModelPipeline
from mlcd.domain.status import RunSummary
from mlcd.errors import MlcdError, SpecError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_REJECTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_BY_RESULT = {
    "promoted": EXIT_OK,
    "rejected": EXIT_REJECTED,
    "failed": EXIT_FAILED,
    "exported": EXIT_FAILED,  # it passed its gate, but serving it failed
    "cancelled": EXIT_INTERRUPTED,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcd", description="Continuous training and delivery of ML models."
    )
    parser.add_argument("--version", action="version", version=f"mlcd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole loop once on this machine")
    run.add_argument("file", type=pathlib.Path, help="a ModelPipeline YAML file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. tuning.maxTrials=2 (repeatable)",
    )
    run.add_argument("--output", choices=["text", "json"], default="text")

    check = sub.add_parser("validate", help="check a ModelPipeline file without running it")
    check.add_argument("file", type=pathlib.Path)
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    render = sub.add_parser("render", help="print the resource with overrides applied, for kubectl")
    render.add_argument("file", type=pathlib.Path)
    render.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    status = sub.add_parser("status", help="what is served and the last runs")
    status.add_argument("name", nargs="?", help="a pipeline name (default: all)")
    status.add_argument("--namespace", default="default")
    status.add_argument("--output", choices=["text", "json"], default="text")

    down = sub.add_parser(
        "down", help="stop the local model servers, routers and the embedded Prometheus"
    )
    down.add_argument(
        "name",
        nargs="?",
        help="a pipeline name: its servers and router only (default: everything)",
    )
    down.add_argument("--namespace", default="default")

    op = sub.add_parser("operator", help="run the operator (watches ModelPipelines)")
    op.add_argument(
        "--namespace",
        "-n",
        dest="namespaces",
        action="append",
        default=None,
        help="a namespace to watch (repeatable); default MLCD_NAMESPACES or all",
    )
    op.add_argument("--state-dir", type=pathlib.Path, help="runs, models, servers (MLCD_STATE_DIR)")
    op.add_argument("--engine", help="engine of pipelines without spec.engine (MLCD_ENGINE)")
    op.add_argument("--max-active-runs", type=int, help="runs at once (MLCD_MAX_ACTIVE_RUNS)")
    op.add_argument("--tick", type=float, help="seconds between looks (MLCD_TICK)")
    op.add_argument("--metrics-port", type=int, help="/metrics port, 0: off (MLCD_METRICS_PORT)")
    op.add_argument("--peering", help="peering name for replicas (MLCD_PEERING)")
    op.add_argument("--priority", type=int, help="priority among peers (MLCD_PRIORITY)")
    op.add_argument("--liveness", help="liveness endpoint URL (MLCD_LIVENESS)")
    op.add_argument("--kubeconfig", help="kubeconfig file (KUBECONFIG)")
    op.add_argument(
        "--watch-timeout", type=int, help="seconds a watch stream lasts (MLCD_WATCH_TIMEOUT)"
    )
    op.add_argument(
        "--serving", choices=["local", "kserve"], help="where models are served (MLCD_SERVING)"
    )
    op.add_argument(
        "--kserve-runtime", help="ServingRuntime of InferenceServices (MLCD_KSERVE_RUNTIME)"
    )
    op.add_argument(
        "--kserve-namespace", help="KServe's namespace, its ConfigMap (MLCD_KSERVE_NAMESPACE)"
    )
    op.add_argument(
        "--kserve-deployment-mode",
        choices=["RawDeployment", "Standard", "Serverless", "Knative"],
        help="mode of new InferenceServices; default KServe's (MLCD_KSERVE_DEPLOYMENT_MODE)",
    )
    op.add_argument("--prometheus-url", help="Prometheus for rollouts (MLCD_PROMETHEUS_URL)")
    op.add_argument(
        "--prometheus-targets",
        type=pathlib.Path,
        help="its file-discovery folder for local routers (MLCD_PROMETHEUS_TARGETS)",
    )

    get = sub.add_parser("get", help="list ModelPipelines in the cluster")
    get.add_argument("name", nargs="?")
    get.add_argument("-n", "--namespace", default=None)
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=["text", "json"], default="text")
    get.add_argument("--kubeconfig")

    desc = sub.add_parser("describe", help="a ModelPipeline's status, runs and events")
    desc.add_argument("name")
    desc.add_argument("-n", "--namespace", default=None)
    desc.add_argument("--kubeconfig")

    trig = sub.add_parser("trigger", help="ask the operator for a run now")
    trig.add_argument("name")
    trig.add_argument("-n", "--namespace", default=None)
    trig.add_argument("--kubeconfig")

    for command, text in (
        ("promote", "skip a rollout's remaining steps: the candidate serves all traffic"),
        ("abort", "stop a rollout: all traffic back to the stable model"),
        ("pause", "hold a rollout where it is"),
        ("resume", "let a paused rollout go on"),
        ("rollback", "stop a rollout, or with --to serve an earlier version at once"),
    ):
        control = sub.add_parser(command, help=text)
        control.add_argument("name")
        control.add_argument("-n", "--namespace", default=None)
        control.add_argument(
            "--kubeconfig",
            help="act on the cluster (default: this machine "
            "when the pipeline ran here, else the cluster)",
        )
        control.add_argument("--timeout", type=float, default=300.0)
        if command == "rollback":
            control.add_argument("--to", dest="version", help="the version to serve")

    comp = sub.add_parser("compile", help="write the pipeline's KFP IR package")
    comp.add_argument("-o", "--output", type=pathlib.Path, default=pathlib.Path("pipeline.yaml"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out, err = Console(), Console(stderr=True)
    try:
        if args.command == "run":
            return cmd_run(args, out, err)
        if args.command == "validate":
            return cmd_validate(args, out, err)
        if args.command == "render":
            return cmd_render(args)
        if args.command == "status":
            return cmd_status(args, out)
        if args.command == "down":
            return cmd_down(args, out)
        if args.command == "operator":
            return cmd_operator(args)
        if args.command in ("promote", "abort", "pause", "resume", "rollback"):
            from mlcd import controls

            return int(controls.main(args, out))
        if args.command in ("get", "describe", "trigger"):
            from mlcd import cluster_cli

            return int(getattr(cluster_cli, args.command)(args, out))
        if args.command == "compile":
            from mlcd.pipeline.definition import compile_to

            compile_to(args.output)
            out.print(f"wrote {args.output}")
            return EXIT_OK
    except SpecError as exc:
        _print_problems(err, exc)
        return EXIT_BAD_INPUT
    except MlcdError as exc:
        err.print(f"[red]error:[/] {exc}", soft_wrap=True)
        return EXIT_FAILED
    return EXIT_BAD_INPUT


def _print_problems(err: Console, exc: SpecError) -> None:
    err.print(
        f"[red]invalid ModelPipeline[/] ({len(exc.problems)} problem"
        f"{'s' if len(exc.problems) != 1 else ''}):"
    )
    for problem in exc.problems:
        err.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)


def cmd_validate(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mlcd import specfile

    pipeline, _ = specfile.load(args.file, args.overrides)
    out.print(f"{args.file}: ModelPipeline {pipeline.namespace}/{pipeline.name} is valid")
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    """The validated resource as YAML; relative paths become absolute, as ``run`` reads them."""
    import yaml

    from mlcd import specfile
    from mlcd.control.local import resolve_locations
    from mlcd.settings import LocalSettings

    _, raw = specfile.load(args.file, args.overrides)
    resource = resolve_locations(raw, args.file.resolve().parent, LocalSettings().models)
    if not raw["spec"].get("artifacts"):
        del resource["spec"]["artifacts"]  # the operator's own default applies in a cluster
    sys.stdout.write(yaml.safe_dump(resource, sort_keys=False))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from mlcd import specfile
    from mlcd.control.local import Interrupts, LocalLoop, resolve_locations
    from mlcd.domain.checks import parse_pipeline
    from mlcd.progress import RunView
    from mlcd.settings import LocalSettings

    pipeline, raw = specfile.load(args.file, args.overrides)
    settings = LocalSettings()
    loop = LocalLoop(settings)
    resource = resolve_locations(raw, args.file.resolve().parent, settings.models)
    pipeline = parse_pipeline(resource)
    started = time.monotonic()
    view = RunView(err, pipeline) if args.output == "text" else None
    interrupts = Interrupts()

    def on_start(run_id: str) -> None:
        if view is not None:
            err.print(f"run [bold]{run_id}[/] of {pipeline.namespace}/{pipeline.name}")

    shown = view if view is not None else contextlib.nullcontext()
    try:
        with interrupts.catching(), loop.exclusive(pipeline), shown:
            summary = loop.run(
                pipeline,
                resource,
                on_event=view.apply if view is not None else None,
                on_start=on_start,
                interrupts=interrupts,
                on_rollout=view.rollout if view is not None else None,
            )
            if view is not None and summary is not None:
                view.serving(summary)
    finally:
        loop.close()
    if interrupts.set:
        err.print("[yellow]interrupted: the run and its processes were stopped[/]")
    if summary is None:
        return EXIT_INTERRUPTED
    result = _summary(loop, pipeline, summary, time.monotonic() - started)
    if args.output == "json":
        text = json.dumps(json_safe(result), indent=2, default=str, allow_nan=False)
        sys.stdout.write(text + "\n")
    else:
        _print_summary(out, result)
    if interrupts.set:
        return EXIT_INTERRUPTED
    return EXIT_BY_RESULT.get(summary.result, EXIT_FAILED)


def _summary(
    loop: Any, pipeline: ModelPipeline, summary: RunSummary, elapsed: float
) -> dict[str, Any]:
    status = loop.status(pipeline)
    serving = status.serving
    record = loop.record(pipeline, summary)
    report = loop.report_path(pipeline, summary)
    data = record.data if record is not None and record.data is not None else None
    return {
        "run": summary.id,
        "pipeline": f"{pipeline.namespace}/{pipeline.name}",
        "result": summary.result,
        "stage": summary.stage,
        "reason": record.reason if record is not None and record.reason else summary.reason,
        "params": summary.params,
        "metrics": summary.metrics,
        "gate": record.gate.model_dump(by_alias=True)
        if record is not None and record.gate
        else (summary.gate.model_dump(by_alias=True) if summary.gate else None),
        "data": data.model_dump(by_alias=True, exclude={"class_counts"}) if data else None,
        "model": summary.model.model_dump(by_alias=True) if summary.model else None,
        "serving": {"url": serving.url, "version": serving.version, "sha256": serving.sha256}
        if serving
        else {"url": None, "version": None, "sha256": None},
        "timings": {**(record.timings if record is not None else {}), "total": round(elapsed, 2)},
        "record": summary.record,
        "report": str(report) if report and report.exists() else None,
        "rollout": _rollout_summary(status.rollout, summary),
    }


def _rollout_summary(rollout: Any, summary: RunSummary) -> dict[str, Any] | None:
    """The run's rollout: its phase, how it ended, every step with its analyses."""
    if rollout is None or rollout.run != summary.id:
        return None
    return {
        "phase": rollout.phase,
        "result": summary.result,
        "reason": rollout.reason,
        "steps": [
            {
                "step": step.step,
                "weight": step.weight,
                "mirror": step.mirror,
                "analyses": [
                    {
                        "at": analysis.at,
                        "verdict": analysis.verdict,
                        "metrics": [
                            {
                                "metric": r.metric,
                                "query": r.query,
                                "value": r.value,
                                "samples": r.samples,
                                "verdict": r.verdict,
                                "reason": r.reason,
                            }
                            for r in analysis.results
                        ],
                    }
                    for analysis in step.analyses
                ],
            }
            for step in rollout.steps
        ],
    }


def _print_summary(out: Console, s: dict[str, Any]) -> None:
    colour = {"promoted": "green", "rejected": "yellow", "exported": "yellow"}.get(
        s["result"], "red"
    )
    table = Table(title=f"run {s['run']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("result", f"[{colour}]{s['result']}[/]")
    if s["reason"]:
        table.add_row("reason", str(s["reason"]))
    for name, value in (s["params"] or {}).items():
        table.add_row(f"param {name}", f"{value:.6g}" if isinstance(value, float) else str(value))
    for name, value in (s["metrics"] or {}).items():
        table.add_row(name, f"{value:.4f}")
    if s["gate"]:
        table.add_row(
            "gate", ("passed: " if s["gate"]["passed"] else "refused: ") + s["gate"]["reason"]
        )
    if s["model"]:
        table.add_row("model", f"version {s['model']['version']}  {s['model']['uri']}")
        table.add_row("sha256", s["model"]["sha256"])
    served = s["serving"]
    if served["url"]:
        table.add_row("serving", f"version {served['version']} at {served['url']}")
    table.add_row("timings", "  ".join(f"{k} {v:.1f}s" for k, v in s["timings"].items()))
    if s["report"]:
        table.add_row("report", s["report"])
    if s.get("rollout"):
        rollout = s["rollout"]
        steps = " → ".join(
            "shadow" if step["mirror"] and not step["weight"] else f"{step['weight']}%"
            for step in rollout["steps"]
        )
        table.add_row("rollout", f"{rollout['phase']} ({steps}): {rollout['reason']}")
    out.print(table)


def cmd_status(args: argparse.Namespace, out: Console) -> int:
    from mlcd.control.local import StatusFile
    from mlcd.ports import PipelineKey
    from mlcd.progress import print_rollout
    from mlcd.serving.local import LocalServing
    from mlcd.serving.router.haproxy import LocalRouter
    from mlcd.settings import LocalSettings

    settings = LocalSettings()
    serving = LocalServing(settings.home, port=settings.serving_port)
    router = LocalRouter(settings.home)
    files = StatusFile(settings.home)
    names = [args.name] if args.name else files.pipelines(args.namespace)
    rows: list[dict[str, Any]] = []
    for name in names:
        if name not in files.pipelines(args.namespace):
            continue
        status = files.load(args.namespace, name)
        served = status.serving
        key = PipelineKey(args.namespace, name)
        live = serving.status(key, served.model) if served else None
        routed = key in router.pipelines()
        routes = router.routes(key) if routed else None
        rows.append(
            {
                "pipeline": f"{args.namespace}/{name}",
                "serving": served.model_dump(by_alias=True) if served else None,
                "running": bool(live and live.ready),
                # Behind a router, clients use its address.
                "url": ((routed and router.url(key)) or live.url) if live and live.ready else None,
                "reason": live.reason if live and not live.ready else None,
                "rollout": status.rollout.model_dump(by_alias=True, exclude={"steps"})
                if status.rollout
                else None,
                "router": {"canaryWeight": routes.canary_weight, "mirror": routes.mirror}
                if routes is not None
                else None,
                "runs": [r.model_dump(by_alias=True) for r in status.runs],
            }
        )
    if args.name and not rows:
        raise MlcdError(f"no pipeline {args.namespace}/{args.name} has run on this machine")
    if args.output == "json":
        sys.stdout.write(json.dumps(json_safe(rows), indent=2, default=str, allow_nan=False) + "\n")
        return EXIT_OK
    if not rows:
        out.print("no pipeline has run on this machine yet")
    for row in rows:
        table = Table(title=row["pipeline"], title_justify="left")
        for col in ("run", "trigger", "result", "metrics", "model", "reason"):
            table.add_column(col)
        for r in row["runs"][-10:]:
            metrics = " ".join(
                f"{k}={v:.4f}" for k, v in r["metrics"].items() if k in ("accuracy", "loss")
            )
            version = r["model"]["version"] if r.get("model") else ""
            table.add_row(
                r["id"], r["trigger"], r["result"], metrics, version, (r.get("reason") or "")[:80]
            )
        served = row["serving"]
        if served:
            liveness = "serving" if row["running"] else f"[red]not serving: {row['reason']}[/]"
            out.print(
                f"[bold]{row['pipeline']}[/]: version {served['version']} {liveness}"
                f"{' at ' + row['url'] if row['url'] else ''}\n  sha256 {served['sha256']}"
                f"\n  metrics " + " ".join(f"{k}={v:.4f}" for k, v in served["metrics"].items()),
                soft_wrap=True,
            )
        else:
            out.print(f"[bold]{row['pipeline']}[/]: nothing served")
        if row["rollout"]:
            print_rollout(out, row["rollout"], row["router"])
        out.print(table)
    return EXIT_OK


def cmd_down(args: argparse.Namespace, out: Console) -> int:
    """Stops what ``mlcd run`` keeps running: the model servers and the routers of a pipeline
    (every pipeline without NAME), and then the embedded Prometheus they shared."""
    from mlcd.control.local import local_provider
    from mlcd.metrics.embedded import EmbeddedPrometheus
    from mlcd.ports import PipelineKey
    from mlcd.serving.local import LocalServing
    from mlcd.serving.router.haproxy import LocalRouter
    from mlcd.settings import LocalSettings

    settings = LocalSettings()
    serving = LocalServing(settings.home, port=settings.serving_port)
    _, targets = local_provider(settings.home, settings.prometheus_url)
    router = LocalRouter(settings.home, targets_dir=targets)
    routed = router.pipelines()
    if args.name:
        keys = [PipelineKey(args.namespace, args.name)]
    else:
        keys = sorted({*serving.pipelines(), *routed}, key=str)
    for key in keys:
        if key in routed:
            # Clients first: nothing is sent to a server about to stop.
            router.finalize(key)
            out.print(f"stopped the router of {key}")
        if serving.running(key):
            serving.stop(key)
            out.print(f"stopped the model server of {key}")
    if not args.name:
        prometheus = EmbeddedPrometheus(settings.home)
        if prometheus.pid() is not None:
            prometheus.stop()
            out.print("stopped the embedded Prometheus")
    return EXIT_OK


def cmd_operator(args: argparse.Namespace) -> int:
    import dataclasses
    import logging

    # kopf watches with its own client and mlcd talks to the API server through httpx: the
    # Kubernetes client library (kopf loads it when installed) would only cost memory, unless
    # the Kubeflow engine is on (kfp.Client imports it) or models are served on KServe (the
    # kserve SDK's models import it).
    serving = args.serving or os.environ.get("MLCD_SERVING", "local")
    if not os.environ.get("MLCD_KFP_ENDPOINT") and serving != "kserve":
        sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

    from mlcd.k8s.operator import run
    from mlcd.settings import OperatorSettings

    flags = {
        "namespaces": args.namespaces,
        "state_dir": args.state_dir,
        "engine": args.engine,
        "max_active_runs": args.max_active_runs,
        "tick": args.tick,
        "metrics_port": args.metrics_port,
        "peering": args.peering,
        "priority": args.priority,
        "liveness": args.liveness,
        "kubeconfig": args.kubeconfig,
        "watch_timeout": args.watch_timeout,
        "serving": args.serving,
        "kserve_runtime": args.kserve_runtime,
        "kserve_namespace": args.kserve_namespace,
        "kserve_deployment_mode": args.kserve_deployment_mode,
        "prometheus_url": args.prometheus_url,
        "prometheus_targets": args.prometheus_targets,
    }
    settings = dataclasses.replace(
        OperatorSettings(), **{k: v for k, v in flags.items() if v is not None}
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(settings)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
