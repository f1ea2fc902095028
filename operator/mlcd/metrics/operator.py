"""The operator's own Prometheus metrics, named by Prometheus' conventions."""

from __future__ import annotations

import datetime as dt
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mlcd.domain.records import RunRecord, RunResult
from mlcd.domain.rollout import Phase, RecordAnalysis
from mlcd.domain.status import ModelPipelineStatus

PHASES = tuple(p.value for p in Phase)

_STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, 7200)
# Series exist at 0 before their first event, so rate() and increase() see the first one.
_RESULTS = tuple(r for r in get_args(RunResult) if r != "running")
_VERDICTS = ("passed", "failed")
ERROR_KINDS = ("temporary", "permanent", "conflict", "unexpected")


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "mlcd_runs_total",
            "Finished runs, by trigger and result.",
            ["namespace", "pipeline", "trigger", "result"],
            registry=r,
        )
        self.runs_started = Counter(
            "mlcd_runs_started_total",
            "Runs started, by trigger.",
            ["namespace", "pipeline", "trigger"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "mlcd_stage_duration_seconds",
            "How long each stage of a run took.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.gate = Counter(
            "mlcd_gate_verdicts_total",
            "Gate verdicts, passed or failed.",
            ["namespace", "pipeline", "verdict"],
            registry=r,
        )
        self.serving_metric = Gauge(
            "mlcd_serving_model_metric",
            "Evaluation metrics of the model serving now.",
            ["namespace", "pipeline", "metric"],
            registry=r,
        )
        self.serving_version = Gauge(
            "mlcd_serving_model_version",
            "Version of the model serving now.",
            ["namespace", "pipeline"],
            registry=r,
        )
        self.last_success = Gauge(
            "mlcd_last_success_timestamp_seconds",
            "When a run last promoted a model (Unix time).",
            ["namespace", "pipeline"],
            registry=r,
        )
        self.active = Gauge(
            "mlcd_active_runs", "Runs in progress.", ["namespace", "pipeline"], registry=r
        )
        self.errors = Counter(
            "mlcd_reconcile_errors_total",
            "Reconciles that failed, by kind (temporary, permanent, conflict, unexpected).",
            ["kind"],
            registry=r,
        )
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self.last_schedule = Gauge(
            "mlcd_last_schedule_timestamp_seconds",
            "The last time of the pipeline's schedule that passed (Unix time).",
            ["namespace", "pipeline"],
            registry=r,
        )
        self.next_schedule = Gauge(
            "mlcd_next_schedule_timestamp_seconds",
            "The next time of the pipeline's schedule (Unix time).",
            ["namespace", "pipeline"],
            registry=r,
        )
        self.rollout_phase = Gauge(
            "mlcd_rollout_phase",
            "1 for the phase the pipeline's last rollout is in, 0 for the others.",
            ["namespace", "pipeline", "phase"],
            registry=r,
        )
        self.rollout_weight = Gauge(
            "mlcd_rollout_canary_weight",
            "Percent of traffic the rollout's candidate receives now.",
            ["namespace", "pipeline"],
            registry=r,
        )
        self.rollout_failed_checks = Gauge(
            "mlcd_rollout_failed_checks",
            "Failed analyses the rollout has counted.",
            ["namespace", "pipeline"],
            registry=r,
        )
        self.analyses = Counter(
            "mlcd_rollout_analyses_total",
            "Rollout analyses, by metric and verdict (pass, fail, inconclusive).",
            ["namespace", "pipeline", "metric", "verdict"],
            registry=r,
        )
        self.decisions = Histogram(
            "mlcd_rollout_decision_seconds",
            "From the start of an analysis (its queries) to its decision carried out.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.reconciles = Histogram(
            "mlcd_reconcile_duration_seconds",
            "How long one reconcile took.",
            registry=r,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)

    def started(self, namespace: str, pipeline: str, trigger: str) -> None:
        self.runs_started.labels(namespace, pipeline, trigger).inc()
        for result in _RESULTS:
            self.runs.labels(namespace, pipeline, trigger, result)
        for verdict in _VERDICTS:
            self.gate.labels(namespace, pipeline, verdict)

    def finished(self, namespace: str, pipeline: str, record: RunRecord) -> None:
        self.runs.labels(namespace, pipeline, record.trigger, record.result).inc()
        for stage, seconds in record.timings.items():
            self.stage_seconds.labels(stage).observe(seconds)
        if record.gate is not None:
            verdict = "passed" if record.gate.passed else "failed"
            self.gate.labels(namespace, pipeline, verdict).inc()
        if record.result == "promoted":
            finished = record.finished_at or dt.datetime.now(dt.UTC).isoformat()
            when = dt.datetime.fromisoformat(finished.replace("Z", "+00:00"))
            self.last_success.labels(namespace, pipeline).set(when.timestamp())

    def observe(self, namespace: str, pipeline: str, status: ModelPipelineStatus) -> None:
        self.active.labels(namespace, pipeline).set(len(status.active_runs))
        if status.serving is not None:
            self.serving_version.labels(namespace, pipeline).set(float(status.serving.version))
            for name, value in status.serving.metrics.items():
                self.serving_metric.labels(namespace, pipeline, name).set(value)
        # From the status too, so a restarted operator reports what it knew before.
        promoted = [
            when
            for run in status.runs
            if run.result == "promoted" and (when := _timestamp(run.finished_at)) is not None
        ]
        if promoted:
            self.last_success.labels(namespace, pipeline).set(max(promoted))
        rollout = status.rollout
        if rollout is not None:
            for phase in PHASES:
                self.rollout_phase.labels(namespace, pipeline, phase).set(
                    1.0 if phase == rollout.phase else 0.0
                )
            self.rollout_weight.labels(namespace, pipeline).set(rollout.canary_weight)
            self.rollout_failed_checks.labels(namespace, pipeline).set(rollout.failed_checks)
        for gauge, text in (
            (self.last_schedule, status.last_schedule_time),
            (self.next_schedule, status.next_schedule_time),
        ):
            if (when := _timestamp(text)) is not None:
                gauge.labels(namespace, pipeline).set(when)

    def analysed(self, namespace: str, pipeline: str, record: RecordAnalysis) -> None:
        """One analysis carried out: its verdicts by metric, and how long deciding took."""
        for result in record.analysis.results:
            self.analyses.labels(namespace, pipeline, result.metric, result.verdict).inc()
        began = _timestamp(record.analysis.at)
        if began is not None:
            self.decisions.observe(max(0.0, dt.datetime.now(dt.UTC).timestamp() - began))

    def forget(self, namespace: str, pipeline: str) -> None:
        for gauge in (
            self.active,
            self.serving_version,
            self.last_success,
            self.last_schedule,
            self.next_schedule,
            self.rollout_weight,
            self.rollout_failed_checks,
        ):
            try:
                gauge.remove(namespace, pipeline)
            except KeyError:
                continue
        # A deleted pipeline's last rollout no longer fires MlcdRolloutRolledBack.
        for phase in PHASES:
            try:
                self.rollout_phase.remove(namespace, pipeline, phase)
            except KeyError:
                continue
