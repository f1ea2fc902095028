"""Rollouts through the operator on the real API server: a second promoted model rolls out step
by step behind the local router, analysed by the test stack's Prometheus; a kill -9 mid-rollout
changes nothing; a person steers it through the resource; a degraded serving model starts one
run, and not another within the cooldown."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import pytest

from helpers import Clients, metric_value, mlcd, rollout_pipeline, wait_for
from mlcd.ports import PipelineKey
from mlcd.processes import alive
from mlcd.serving.local import LocalServing
from mlcd.serving.router.haproxy import LocalRouter
from testenv.prometheus import PrometheusAPI

NAME = "digits"


@pytest.fixture
def env(prometheus: PrometheusAPI) -> dict[str, str]:
    """The operator analyses rollouts with the stack's Prometheus, which discovers the local
    routers and model servers through the folder they write their targets to."""
    return {
        "MLCD_PROMETHEUS_URL": prometheus.url,
        "MLCD_PROMETHEUS_TARGETS": str(prometheus.targets_dir),
    }


def key_of(pipelines: Any) -> PipelineKey:
    return PipelineKey(pipelines.namespace, NAME, pipelines.get(NAME)["metadata"]["uid"])


def kube(pipelines: Any) -> list[str]:
    """How a user points mlcd at the cluster."""
    return ["--kubeconfig", str(pipelines.cluster.kubeconfig), "-n", pipelines.namespace]


def trigger(pipelines: Any) -> None:
    result = mlcd("trigger", NAME, *kube(pipelines))
    assert result.code == 0, result.stderr


def rollout_in(pipelines: Any, phase: str, timeout: float = 180, **fields: Any) -> dict[str, Any]:
    """Waits until status.rollout is in ``phase`` (with ``fields`` as given)."""

    def check() -> dict[str, Any] | None:
        rollout: dict[str, Any] | None = pipelines.status(NAME).get("rollout")
        if rollout is None or rollout["phase"] != phase:
            return None
        return rollout if all(rollout.get(k) == v for k, v in fields.items()) else None

    found: dict[str, Any] = wait_for(f"rollout {phase} {fields}", check, timeout)
    return found


def columns(pipelines: Any) -> dict[str, str]:
    """``kubectl get mp`` as a user reads it: header -> value."""
    out = pipelines.cluster.kubectl("get", "mp", NAME, "-n", pipelines.namespace).stdout
    header, row = out.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    values = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return dict(zip(names, values, strict=True))


def test_a_second_model_rolls_out_and_a_kill_9_mid_rollout_changes_nothing(
    start_operator, pipelines, digits_file, env, tmp_path
):
    operator = start_operator(env=env)
    pipelines.create(rollout_pipeline(str(digits_file), NAME))
    trigger(pipelines)
    [first] = pipelines.wait_runs(NAME, 1)
    status = pipelines.status(NAME)
    assert first["result"] == "promoted" and "rollout" not in status  # served at once
    key = key_of(pipelines)
    state = tmp_path / "state"
    router = LocalRouter(state)
    assert status["serving"]["url"] == router.url(key)  # behind the router from the start

    trigger(pipelines)
    stepping = rollout_in(pipelines, "Progressing", step=1, canaryWeight=50)
    shown = columns(pipelines)
    assert (shown["ROLLOUT"], shown["CANARY"]) == ("Progressing", "50"), shown
    candidate = LocalServing(state).server(key, "candidate")
    proxy = router.running(key)
    assert candidate is not None and proxy is not None

    operator.kill9()
    # The status the killed operator wrote last, and the router as it left it: clients keep
    # the split while no operator runs.
    left = pipelines.status(NAME)["rollout"]
    routes = router.routes(key)
    assert left["phase"] == "Progressing"
    assert routes is not None and routes.canary_weight == left["canaryWeight"]
    operator = start_operator(env=env)
    runs = pipelines.wait_runs(NAME, 2, timeout=240)
    assert runs[1]["result"] == "promoted", runs[1]["reason"]

    rollout = pipelines.status(NAME)["rollout"]
    assert rollout["phase"] == "Promoted", rollout["reason"]
    # Resumed where it was: the same steps (step 1 not started again), the same router, no
    # second candidate, no route put right.
    assert [(s["step"], s["weight"]) for s in rollout["steps"]] == [(1, 50), (2, 100)]
    assert rollout["steps"][0]["startedAt"] == stepping["steps"][0]["startedAt"]
    assert router.running(key).pid == proxy.pid  # type: ignore[union-attr]
    assert not alive(candidate.pid)  # stopped once promoted
    reasons = pipelines.reasons(NAME)
    assert reasons.count("RolloutStarted") == 1 and "RoutesRestored" not in reasons, reasons
    assert {"RolloutProgressing", "StepPassed", "RolloutPromoted", "Promoted"} <= set(reasons)
    # Replayed traffic came back with the restarted operator: the last step was analysed on it.
    final = rollout["steps"][-1]["analyses"][-1]
    assert final["verdict"] == "pass"
    # Every analysis in status with its resolved query, value and sample count.
    canary = f"{pipelines.namespace}.{NAME}-{key.uid}.candidate"
    last = {r["metric"]: r for r in rollout["lastAnalysis"]}
    assert set(last) == {"requests", "success-rate", "latency-p99"}
    for result in last.values():
        assert canary in result["query"] and "{{" not in result["query"]
        assert result["verdict"] == "pass" and result["value"] is not None
        assert result["samples"] >= 10
    assert last["success-rate"]["value"] == 1.0

    shown = columns(pipelines)
    assert (shown["ROLLOUT"], shown["CANARY"], shown["SERVING"]) == ("Promoted", "0", "2")
    text = operator.metrics()
    labels = {"namespace": pipelines.namespace, "pipeline": NAME}
    assert metric_value(text, "mlcd_rollout_phase", phase="Promoted", **labels) == 1
    assert metric_value(text, "mlcd_rollout_phase", phase="Progressing", **labels) == 0
    assert metric_value(text, "mlcd_rollout_canary_weight", **labels) == 0
    assert metric_value(text, "mlcd_rollout_failed_checks", **labels) == 0
    passed = metric_value(
        text, "mlcd_rollout_analyses_total", metric="success-rate", verdict="pass", **labels
    )
    assert passed is not None and passed >= 1
    decided = metric_value(text, "mlcd_rollout_decision_seconds_count")
    assert decided is not None and decided >= 1


def test_a_person_pauses_resumes_promotes_rolls_back_and_aborts_through_the_resource(
    start_operator, pipelines, digits_file, env
):
    start_operator(env=env)
    # No replayed traffic: every step holds (no data) until a person decides.
    resource = rollout_pipeline(str(digits_file), NAME, traffic=None, progressDeadline="10m")
    pipelines.create(resource)
    trigger(pipelines)
    pipelines.wait_runs(NAME, 1)
    trigger(pipelines)
    rollout_in(pipelines, "Progressing", canaryWeight=50)
    steer = kube(pipelines)

    def spec_rollout() -> dict[str, Any]:
        rollout: dict[str, Any] = pipelines.get(NAME)["spec"]["serving"]["rollout"]
        return rollout

    paused = mlcd("pause", NAME, *steer)
    assert paused.code == 0 and "paused" in paused.stdout, paused.stderr
    assert pipelines.status(NAME)["rollout"]["phase"] == "Paused"
    assert spec_rollout()["pause"] is True  # level-triggered: in the spec, as kubectl sets it
    resumed = mlcd("resume", NAME, *steer)
    assert resumed.code == 0 and "resumed" in resumed.stdout, resumed.stderr
    assert pipelines.status(NAME)["rollout"]["phase"] == "Progressing"
    promoted = mlcd("promote", NAME, *steer)
    assert promoted.code == 0 and "promoted" in promoted.stdout, promoted.stderr
    runs = pipelines.wait_runs(NAME, 2)
    assert runs[1]["result"] == "promoted" and pipelines.status(NAME)["serving"]["version"] == "2"
    assert spec_rollout()["promote"] is False  # one-shot: cleared for the next rollout

    back = mlcd("rollback", NAME, "--to", "1", *steer)
    assert back.code == 0 and "version 1 serves" in back.stdout, back.stderr
    status = pipelines.status(NAME)
    assert status["serving"]["version"] == "1"
    assert (status["rollout"]["phase"], status["rollout"]["stable"]) == ("RolledBack", "1")
    assert "rollbackTo" not in spec_rollout()

    trigger(pipelines)
    rollout_in(pipelines, "Progressing", candidate="3")
    aborted = mlcd("abort", NAME, *steer)
    assert aborted.code == 0 and "rolled back" in aborted.stdout, aborted.stderr
    runs = pipelines.wait_runs(NAME, 3)
    assert runs[2]["result"] == "rejected" and "aborted" in runs[2]["reason"]
    assert pipelines.status(NAME)["serving"]["version"] == "1"
    assert spec_rollout()["abort"] is False
    reasons = set(pipelines.reasons(NAME))
    assert {"RolloutPaused", "RolloutResumed", "PromotedManually", "RolledBackTo", "Aborted"} <= (
        reasons
    )


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_sustained_degradation_starts_one_run_and_not_another_within_the_cooldown(
    start_operator, pipelines, digits_file, env, tmp_path
):
    cooldown = 40.0
    operator = start_operator(env=env)
    resource = rollout_pipeline(str(digits_file), NAME, traffic=None)
    resource["spec"]["triggers"] = {
        "onDegradation": {
            # A condition the test controls: the serving model answers client errors.
            "query": 'sum(increase(haproxy_server_http_responses_total{proxy="split",'
            'server="{{ stable }}",code="4xx"}[{{ interval }}])) > 0',
            "for": "4s",
            "cooldown": f"{cooldown:g}s",
            "interval": "3s",
        }
    }
    pipelines.create(resource)
    trigger(pipelines)
    pipelines.wait_runs(NAME, 1)
    # Runs the degradation starts are refused by the gate: each ends quickly, serving nothing.
    pipelines.patch(NAME, {"spec": {"gate": {"min": 1.01}}})
    key = key_of(pipelines)
    url = LocalRouter(tmp_path / "state").url(key)
    assert url is not None
    time.sleep(8)  # healthy: nothing starts
    assert len(pipelines.status(NAME)["runs"]) == 1

    def degradation_runs() -> list[dict[str, Any]]:
        status = pipelines.status(NAME)
        return [
            r
            for r in [*status.get("runs", []), *status.get("activeRuns", [])]
            if r["trigger"] == "degradation"
        ]

    # Requests for a model the server does not have: the stable server answers each with a
    # 404, which HAProxy counts as its 4xx.
    bad = Clients(f"{url}/v2/models/no-such-model/infer", [{"inputs": []}], rate=10)
    with bad:
        [run] = wait_for("a degradation run", degradation_runs, timeout=90)
        fired = _time(pipelines.status(NAME)["degradation"]["lastFired"])
        runs = pipelines.wait_runs(NAME, 2)
        assert runs[1]["trigger"] == "degradation" and runs[1]["result"] == "rejected"
        # Still degraded, no run in progress, but within the cooldown: nothing more starts.
        until = fired + dt.timedelta(seconds=cooldown - 4)
        while dt.datetime.now(dt.UTC) < until:
            assert [r["id"] for r in degradation_runs()] == [run["id"]]
            time.sleep(1)
        labels = {"namespace": pipelines.namespace, "pipeline": NAME, "trigger": "degradation"}
        assert metric_value(operator.metrics(), "mlcd_runs_started_total", **labels) == 1
        # Past it, the degradation that still holds starts the next one.
        later = wait_for(
            "the next degradation run",
            lambda: [r for r in degradation_runs() if r["id"] != run["id"]],
            timeout=60,
        )
    assert (_time(later[0]["startedAt"]) - fired).total_seconds() >= cooldown
    assert pipelines.reasons(NAME).count("RunStarted") == 3
