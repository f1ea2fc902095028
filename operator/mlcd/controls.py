"""``mlcd promote|abort|pause|resume|rollback NAME [--to VERSION]``: the manual controls of a
rollout, on this machine or in the cluster.

They set the fields a cluster user would set in ``spec.serving.rollout`` (``promote``,
``abort``, ``pause``, ``rollbackTo``), wait until the status shows the effect, and clear the
one-shot ones (promote, abort, rollbackTo) so they do not apply to the next rollout. On this
machine the fields live beside the pipeline's status; when no ``mlcd run`` drives the
pipeline, the command drives it itself until the effect shows.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from mlcd.domain.status import ModelPipelineStatus
from mlcd.errors import MlcdError

Done = Callable[[ModelPipelineStatus], bool]
ENDED = ("Promoted", "RolledBack", "Failed")


def _request(args: argparse.Namespace) -> tuple[dict[str, Any], Done, str]:
    """The fields to set, when the effect shows, and what to say."""

    def ended(status: ModelPipelineStatus) -> bool:
        return status.rollout is None or status.rollout.phase in ENDED

    if args.command == "promote":
        return {"promote": True}, ended, "promoted"
    if args.command == "abort" or (args.command == "rollback" and not args.version):
        return {"abort": True}, ended, "rolled back"
    if args.command == "pause":
        return (
            {"pause": True},
            lambda s: s.rollout is None or s.rollout.phase in ("Paused", *ENDED),
            "paused",
        )
    if args.command == "resume":
        return (
            {"pause": False},
            lambda s: s.rollout is None or s.rollout.phase != "Paused",
            "resumed",
        )
    version = str(args.version)
    return (
        {"rollbackTo": version},
        lambda s: s.serving is not None and s.serving.version == version,
        f"version {version} serves",
    )


def main(args: argparse.Namespace, out: Console) -> int:
    changes, done, said = _request(args)
    if args.kubeconfig is None and _local(args):
        status = _on_this_machine(args, changes, done)
    else:
        status = _in_the_cluster(args, changes, done)
    rollout = status.rollout
    where = f" ({rollout.phase}: {rollout.reason})" if rollout is not None else ""
    out.print(f"{args.name}: {said}{where}")
    return 0


def _one_shot(changes: dict[str, Any]) -> dict[str, Any]:
    return {k: None for k in changes if k != "pause"}


# -- this machine -------------------------------------------------------------------------------


def _local(args: argparse.Namespace) -> bool:
    from mlcd.control.local import StatusFile
    from mlcd.settings import LocalSettings

    return args.name in StatusFile(LocalSettings().home).pipelines(args.namespace or "default")


def _on_this_machine(
    args: argparse.Namespace, changes: dict[str, Any], done: Done
) -> ModelPipelineStatus:
    from mlcd.control.local import Busy, LocalLoop
    from mlcd.domain.checks import parse_pipeline
    from mlcd.settings import LocalSettings

    namespace = args.namespace or "default"
    loop = LocalLoop(LocalSettings())
    loop.set_controls(namespace, args.name, **changes)
    folder = loop.statuses.folder(namespace, args.name)
    try:
        resource = json.loads((folder / "resource.json").read_text())
        pipeline = parse_pipeline(resource)
        try:
            with loop.exclusive(pipeline):
                # No `mlcd run` drives it now: drive it here until the control took effect.
                return loop.drive(pipeline, resource, done, args.timeout)
        except Busy:
            return _wait(lambda: loop.statuses.load(namespace, args.name), done, args.timeout)
    finally:
        loop.set_controls(namespace, args.name, **_one_shot(changes))
        loop.close()


# -- the cluster --------------------------------------------------------------------------------


def _in_the_cluster(
    args: argparse.Namespace, changes: dict[str, Any], done: Done
) -> ModelPipelineStatus:
    from mlcd.k8s.kube import Kube

    kube = Kube.connect(args.kubeconfig)
    namespace = str(args.namespace or kube.default_namespace or "default")

    def patch(fields: dict[str, Any]) -> None:
        kube.patch_spec(namespace, args.name, {"serving": {"rollout": fields}})

    patch(changes)
    try:
        return _wait(
            lambda: ModelPipelineStatus.model_validate(
                kube.get(namespace, args.name).get("status") or {}
            ),
            done,
            args.timeout,
        )
    finally:
        if _one_shot(changes):
            patch(_one_shot(changes))


def _wait(
    read: Callable[[], ModelPipelineStatus], done: Done, timeout: float
) -> ModelPipelineStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = read()
        if done(status):
            return status
        if time.monotonic() > deadline:
            raise MlcdError(f"no effect after {timeout:.0f}s (phase {status.phase})")
        time.sleep(0.5)
