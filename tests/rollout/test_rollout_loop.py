"""Whole rollouts decided by the real Prometheus: the domain's table, the HAProxy router and real
model servers under a bounded load on loopback, driven by a small control loop."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator

import pytest

from mlcd.domain.rollout import SetWeights
from mlcd.domain.spec import Rollout
from mlcd.metrics.prometheus import PrometheusProvider
from mlcd.ports import PipelineKey
from mlcd.processes import free_port
from mlcd.serving.router.haproxy import LocalRouter
from mlcd.serving.router.replay import Replay
from rollout.driver import Driver, summary
from rollout.servers import MODEL, ModelServer, samples, serve
from testenv.prometheus import PrometheusAPI

# Short intervals: Prometheus scrapes every second in the test stack.
BASE = {"interval": "3s", "minSamples": 10, "failureThreshold": 1, "progressDeadline": "30s"}
CHECKS = [{"name": "success-rate", "min": 0.99}, {"name": "latency-p99", "max": 1.0}]


@pytest.fixture(scope="module")
def twin(models: pathlib.Path) -> Iterator[ModelServer]:
    """Version 3, the stable model's twin, ready to shadow version 1."""
    yield from serve(models, "3", "twin", MLCD_SERVING_SHADOW_OF=str(models / "pointer-1.json"))


@pytest.fixture(scope="module")
def erring(models: pathlib.Path) -> Iterator[ModelServer]:
    """Version 3 answering 5 % of its requests with an error."""
    yield from serve(models, "3", "erring", MLCD_SERVING_FAULTS="error=0.05,seed=3")


@pytest.fixture(scope="module")
def contrary(models: pathlib.Path) -> Iterator[ModelServer]:
    """Version 3 answering 30 % of its requests wrong, shadowing version 1."""
    yield from serve(
        models,
        "3",
        "contrary",
        MLCD_SERVING_FAULTS="wrong=0.3,seed=4",
        MLCD_SERVING_SHADOW_OF=str(models / "pointer-1.json"),
    )


@pytest.fixture
def drive(
    tmp_path: pathlib.Path, prometheus: PrometheusAPI, stable: ModelServer
) -> Iterator[object]:
    routers: list[tuple[LocalRouter, PipelineKey]] = []
    drivers: list[Driver] = []

    def make(name: str, candidate: ModelServer, rollout: dict, url: str | None = None) -> Driver:
        key = PipelineKey("team-r", name)
        router = LocalRouter(tmp_path / "home", targets_dir=prometheus.targets_dir)
        routers.append((router, key))
        provider = PrometheusProvider(url or prometheus.url, timeout=2, retries=1, backoff=0.1)
        spec = Rollout.model_validate({**BASE, **rollout})
        driver = Driver(key, spec, router, provider, stable, candidate)
        driver.begin()
        prometheus.wait_for(f'up{{job="mlcd-router",mlcd_pipeline="{name}"}} == 1')
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver._serve_stable("1")  # the session's stable server serves version 1 again
        driver.provider.close()
    for router, key in routers:
        router.finalize(key)


def _five_xx(driver: Driver) -> dict[str, int]:
    stats = driver.router.stats(driver.key)
    return {role: int(row["hrsp_5xx"] or 0) for role, row in stats.items()}


def test_a_healthy_candidate_is_shadowed_stepped_and_promoted(drive, twin: ModelServer) -> None:
    rollout = {"shadow": {"minRequests": 20, "maxDisagreement": 0.01}, "steps": [50, 100]}
    driver = drive("healthy", twin, {**rollout, "metrics": CHECKS})
    with Replay(
        driver.router.url(driver.key) or "", MODEL, samples(), rate=30, seconds=120
    ) as load:
        state = driver.run({"Promoted", "RolledBack", "Failed", "Halted"}, timeout=90)
    assert state.phase == "Promoted", (state.reason, summary(state))
    assert set(load.statuses) == {200}, load.statuses
    assert [(s.step, s.weight, s.mirror) for s in state.steps] == [
        (0, 0, True),
        (1, 50, False),
        (2, 100, False),
    ]
    shadow = {r.metric: r for r in state.steps[0].analyses[-1].results}
    assert shadow["disagreement"].value == 0.0 and (shadow["disagreement"].samples or 0) >= 20
    for step in state.steps[1:]:
        final = {r.metric: r for r in step.analyses[-1].results}
        assert final["success-rate"].value == 1.0 and final["success-rate"].verdict == "pass"
        assert (final["requests"].samples or 0) >= 10
        assert 'server="team-r.healthy.candidate"' in final["success-rate"].query
    assert driver.events()[-1] == "RolloutPromoted"
    assert driver.router.routes(driver.key).candidate is False  # type: ignore[union-attr]


def test_errors_of_the_candidate_roll_it_back_and_only_it_failed(
    drive, erring: ModelServer
) -> None:
    driver = drive("erring", erring, {"steps": [50, 100], "metrics": CHECKS})
    with Replay(
        driver.router.url(driver.key) or "", MODEL, samples(), rate=40, seconds=120
    ) as load:
        state = driver.run({"Promoted", "RolledBack", "Failed", "Halted"}, timeout=90)
        load.stop()
    assert state.phase == "RolledBack", (state.reason, summary(state))
    assert "success-rate" in state.reason
    assert [w for _, w in driver.weights()][-1] == 0
    failed = sum(n for status, n in load.statuses.items() if status != 200)
    by_server = _five_xx(driver)
    # Every failed request is one the faulty candidate answered; the stable server and the
    # proxy answered none.
    assert failed > 0 and by_server["candidate"] == failed, (load.statuses, by_server)
    assert by_server["stable"] == 0 and by_server["BACKEND"] == failed


def test_a_wrong_predicting_candidate_is_stopped_in_shadow(drive, contrary: ModelServer) -> None:
    rollout = {"shadow": {"minRequests": 20, "maxDisagreement": 0.05}, "steps": [100]}
    driver = drive("contrary", contrary, {**rollout, "metrics": CHECKS})
    with Replay(
        driver.router.url(driver.key) or "", MODEL, samples(), rate=30, seconds=120
    ) as load:
        state = driver.run({"Promoted", "RolledBack", "Failed", "Halted"}, timeout=60)
    assert state.phase == "RolledBack", (state.reason, summary(state))
    assert "disagreement" in state.reason
    assert all(w == 0 for _, w in driver.weights())  # never any client traffic
    assert set(load.statuses) == {200}


def test_no_traffic_holds_until_the_deadline_then_rolls_back(drive, twin: ModelServer) -> None:
    driver = drive("idle", twin, {"steps": [50, 100], "progressDeadline": "8s", "metrics": CHECKS})
    state = driver.run({"Promoted", "RolledBack", "Failed", "Halted"}, timeout=60)
    assert state.phase == "RolledBack" and state.failed_checks == 0
    assert "progressDeadline" in state.reason
    held = state.steps[-1].analyses
    assert len(held) >= 2 and all(a.verdict == "inconclusive" for a in held)
    assert driver.events()[-1] == "ProgressDeadlineExceeded"


def test_prometheus_unreachable_holds_and_the_rollout_resumes_after(
    drive, prometheus: PrometheusAPI, twin: ModelServer
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    driver = drive("blind", twin, {"steps": [50, 100], "metrics": CHECKS}, url=nowhere)
    with Replay(driver.router.url(driver.key) or "", MODEL, samples(), rate=30, seconds=120):
        state = driver.run({"Progressing"}, timeout=30)
        blind_until = time.monotonic() + 10  # three intervals without Prometheus
        while time.monotonic() < blind_until:
            state = driver.step()
            time.sleep(0.25)
        assert state.phase == "Progressing" and state.step == 1 and state.failed_checks == 0
        assert {r.reason for r in state.last_analysis} == {"Prometheus unreachable"}
        driver.provider.close()
        driver.provider = PrometheusProvider(prometheus.url)
        state = driver.run({"Promoted", "RolledBack", "Failed", "Halted"}, timeout=60)
    assert state.phase == "Promoted", (state.reason, summary(state))
    assert any(isinstance(i, SetWeights) and i.canary == 100 for _, i in driver.done)
