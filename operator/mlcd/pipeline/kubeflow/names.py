"""Deterministic names of what a run creates on Kubeflow, so a retried step or a restarted
operator finds its objects instead of creating them twice."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

#: Label on every object a run creates: its run id (selects them for clean-up).
RUN_LABEL = "mlcd.io/run"
#: Label naming the ModelPipeline that the run belongs to.
PIPELINE_LABEL = "mlcd.io/pipeline"

# Katib derives Trial, Job and Service names from the Experiment's; Services are DNS labels.
MAX_NAME = 40


def run_folder(run_id: str, attempt: int = 1) -> str:
    """The run's folder name, as the local engine names it."""
    return run_id if attempt == 1 else f"{run_id}.attempt-{attempt}"


def pipeline_folder(metadata: Mapping[str, Any]) -> str:
    """``<name>-<uid>`` (``<name>`` without a uid): a pipeline deleted and created again under
    its old name never meets its predecessor's runs."""
    name, uid = str(metadata.get("name")), metadata.get("uid")
    return f"{name}-{uid}" if uid else name


def kfp_run_name(namespace: str, pipeline: str, run_id: str, attempt: int = 1) -> str:
    """The KFP run's display name: unique per namespace, pipeline (its folder: name and uid),
    run and attempt."""
    return f"mlcd.{namespace}.{pipeline}.{run_folder(run_id, attempt)}"


def kfp_experiment_name(namespace: str) -> str:
    """The KFP experiment that groups the runs of one namespace's pipelines."""
    return f"mlcd.{namespace}"


def child_name(namespace: str, pipeline: str, run_id: str, kind: str, attempt: int = 1) -> str:
    """A DNS-1035 label for a child object (``kind``: tune, train), at most 40 characters.

    Children of every tenant share the KFP namespace: a digest of the namespace, pipeline,
    run and attempt keeps them apart; the run's folder name keeps them readable."""
    digest = hashlib.sha256(f"{namespace}/{pipeline}/{run_id}/{attempt}".encode()).hexdigest()
    slug = re.sub(r"[^a-z0-9]+", "-", run_folder(run_id, attempt).lower()).strip("-")
    room = MAX_NAME - len(kind) - 10
    return f"r{slug[: room - 1].strip('-')}-{digest[:8]}-{kind}".replace("--", "-")
