"""``mlcd get``, ``describe`` and ``trigger``: the cluster read through the kubeconfig, as
kubectl reads it."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from mlcd.k8s.kube import Kube


def _namespace(args: argparse.Namespace, kube: Kube) -> str:
    """``-n``, else the kubeconfig context's namespace, else ``default``, as kubectl."""
    return str(args.namespace or kube.default_namespace or "default")


def _age(created: str | None) -> str:
    if not created:
        return ""
    then = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    seconds = int((dt.datetime.now(dt.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def get(args: argparse.Namespace, out: Console) -> int:
    kube = Kube.connect(args.kubeconfig)
    namespace = None if args.all_namespaces else _namespace(args, kube)
    items = kube.items(namespace)
    if args.name:
        items = [i for i in items if i["metadata"]["name"] == args.name]
        if not items:
            out.print(f"modelpipeline {args.name} not found in {namespace}", style="red")
            return 1
    if args.output == "json":
        sys.stdout.write(json.dumps(items, indent=2, default=str) + "\n")
        return 0
    table = Table(box=None, pad_edge=False)
    columns = ["NAMESPACE"] if args.all_namespaces else []
    for col in (*columns, "NAME", "PHASE", "SERVING", "METRIC", "NEXT RUN", "AGE"):
        table.add_column(col)
    for item in items:
        status = item.get("status") or {}
        row = [item["metadata"]["namespace"]] if args.all_namespaces else []
        row += [
            item["metadata"]["name"],
            status.get("phase", ""),
            (status.get("serving") or {}).get("version", ""),
            status.get("lastMetric") or "",
            status.get("nextScheduleTime") or "",
            _age(item["metadata"].get("creationTimestamp")),
        ]
        table.add_row(*row)
    out.print(table)
    return 0


def describe(args: argparse.Namespace, out: Console) -> int:
    kube = Kube.connect(args.kubeconfig)
    namespace = _namespace(args, kube)
    item: dict[str, Any] = kube.get(namespace, args.name)
    spec, status = item.get("spec") or {}, item.get("status") or {}
    out.print(f"[bold]Name:[/] {args.name}   [bold]Namespace:[/] {namespace}")
    out.print(
        f"[bold]Phase:[/] {status.get('phase', 'Pending')}   "
        f"[bold]Schedule:[/] {spec.get('schedule') or '-'}   "
        f"[bold]Next run:[/] {status.get('nextScheduleTime') or '-'}"
    )
    serving = status.get("serving")
    if serving:
        out.print(
            f"[bold]Serving:[/] version {serving['version']} at {serving.get('url')} "
            f"(sha256 {serving['sha256']})"
        )
    rollout = status.get("rollout")
    if rollout:
        out.print(
            f"[bold]Rollout:[/] version {rollout.get('candidate')} {rollout.get('phase')}, "
            f"step {rollout.get('step', 0)} at {rollout.get('canaryWeight', 0)}%, "
            f"{rollout.get('failedChecks', 0)} failed checks: {rollout.get('reason', '')}"
        )
        for result in rollout.get("lastAnalysis") or []:
            out.print(
                f"  {result.get('metric')}: {result.get('value')} "
                f"({result.get('samples')} requests) {result.get('verdict')} "
                f"{result.get('reason', '')}"
            )
    conditions = Table(
        "TYPE", "STATUS", "REASON", "MESSAGE", title="Conditions", title_justify="left", box=None
    )
    for c in status.get("conditions", []):
        conditions.add_row(c["type"], c["status"], c.get("reason", ""), c.get("message", ""))
    out.print(conditions)
    for run in status.get("activeRuns", []):
        out.print(
            f"[bold]Active run:[/] {run['id']} ({run['trigger']}) at stage {run['stage']}, "
            f"attempt {run.get('attempt', 1)}, started {run['startedAt']}"
        )
    runs = Table(
        "RUN",
        "TRIGGER",
        "RESULT",
        "METRICS",
        "VERSION",
        "REASON",
        title="Runs",
        title_justify="left",
        box=None,
    )
    for r in status.get("runs", [])[-10:]:
        metrics = " ".join(
            f"{k}={v:.4f}" for k, v in (r.get("metrics") or {}).items() if k in ("accuracy", "loss")
        )
        runs.add_row(
            r["id"],
            r.get("trigger", ""),
            r.get("result", ""),
            metrics,
            (r.get("model") or {}).get("version", ""),
            (r.get("reason") or "")[:90],
        )
    out.print(runs)
    events = Table("TYPE", "REASON", "MESSAGE", title="Events", title_justify="left", box=None)
    for e in kube.events(namespace, args.name)[-15:]:
        events.add_row(e.get("type", ""), e.get("reason", ""), e.get("message", ""))
    out.print(events)
    return 0


def trigger(args: argparse.Namespace, out: Console) -> int:
    kube = Kube.connect(args.kubeconfig)
    namespace = _namespace(args, kube)
    value = kube.trigger(namespace, args.name)
    out.print(f"modelpipeline {namespace}/{args.name} triggered ({value})")
    return 0
