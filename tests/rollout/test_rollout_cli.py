"""Rollouts through ``mlcd run``, as a user runs them on one machine: the numpy test trainer
trains each new model in seconds, the real HAProxy router splits the traffic between real KServe
model servers, and Prometheus decides — the embedded one ``mlcd run`` starts and keeps, or one
of yours (``MLCD_PROMETHEUS_URL``).

The tests share one machine (one ``MLCD_HOME``), as a user's laptop is shared by their runs:
its first run serves a model at once, and each test rolls a new model out next to whatever
serves then, so every test starts from "a model serves, no rollout in progress". The last test
stops everything with ``mlcd down``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from helpers import ROLLOUT, Clients, CliResult, mlcd, rollout_pipeline, wait_for, write_spec
from mlcd.control.local import StatusFile
from mlcd.domain.rollout import RolloutState
from mlcd.domain.spec import duration_seconds
from mlcd.domain.status import ModelPipelineStatus
from mlcd.metrics.embedded import EmbeddedPrometheus
from mlcd.ports import PipelineKey
from mlcd.processes import alive, free_port
from mlcd.serving.local import LocalServing
from mlcd.serving.router.haproxy import LocalRouter
from mlcd.serving.router.replay import infer_body

NAME, MODEL = "canary", "digits"
KEY = PipelineKey("default", NAME)
INTERVAL = duration_seconds(ROLLOUT["interval"])


@dataclass
class Background:
    """``mlcd run`` in a process of its own, as a user leaves it running in a terminal."""

    proc: subprocess.Popen[bytes]
    out: pathlib.Path
    err: pathlib.Path

    def wait(self, timeout: float = 240) -> CliResult:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"mlcd run still running after {timeout}s:\n{self.stderr}"
            ) from None
        return CliResult(self.proc.returncode, self.out.read_text(), self.stderr)

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Machine:
    home: pathlib.Path
    folder: pathlib.Path
    dataset: pathlib.Path
    #: The first run's result: the model served at once.
    first: CliResult | None = None
    started: list[Background] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        # The embedded Prometheus unless a test names its own.
        return {
            "MLCD_HOME": str(self.home),
            "MLCD_SERVING_PORT": "0",
            "MLCD_PROMETHEUS_URL": "",
            "MLCD_PROMETHEUS_TARGETS": "",
            "MLCD_CANDIDATE_FAULTS": "",
        }

    def spec(self, label: str, **changes: Any) -> pathlib.Path:
        """The pipeline with the tests' rollout changed as given."""
        resource = rollout_pipeline(str(self.dataset), NAME, **changes)
        return write_spec(self.folder / f"{label}.yaml", resource)

    def run(self, spec: pathlib.Path, **env: str) -> CliResult:
        return mlcd("run", str(spec), "--output", "json", env={**self.env, **env}, timeout=300)

    def start(self, spec: pathlib.Path, **env: str) -> Background:
        label = spec.stem
        out, err = self.folder / f"{label}.out", self.folder / f"{label}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlcd.cli", "run", str(spec), "--output", "json"],
                stdout=stdout,
                stderr=stderr,
                env={**os.environ, **self.env, **env},
            )
        background = Background(proc, out, err)
        self.started.append(background)
        return background

    def mlcd(self, *args: str, **env: str) -> CliResult:
        return mlcd(*args, env={**self.env, **env}, timeout=300)

    def status(self) -> ModelPipelineStatus:
        return StatusFile(self.home).load(KEY.namespace, KEY.name)

    def live(self, run: Background) -> RolloutState | None:
        """The rollout of the run ``run`` is doing, while that run is in progress."""
        if run.proc.poll() is not None:
            raise AssertionError(f"mlcd run ended ({run.proc.returncode}):\n{run.stderr}")
        status = self.status()
        rollout = status.rollout
        if rollout is None or rollout.run not in {r.id for r in status.active_runs}:
            return None
        return rollout

    def wait_phase(self, run: Background, phase: str, timeout: float = 180) -> RolloutState:
        def check() -> RolloutState | None:
            rollout = self.live(run)
            return rollout if rollout is not None and rollout.phase == phase else None

        state: RolloutState = wait_for(f"the rollout {phase}", check, timeout)
        return state

    @property
    def serving(self) -> LocalServing:
        return LocalServing(self.home)

    @property
    def router(self) -> LocalRouter:
        return LocalRouter(self.home)

    def stable(self) -> tuple[int, str]:
        """The stable server's pid and the version it reports serving."""
        server = self.serving.server(KEY)
        view = self.serving.status(KEY, MODEL)
        assert server is not None and view.ready and view.ref is not None, view.reason
        return server.pid, view.ref.version

    def url(self) -> str:
        url = self.router.url(KEY)
        assert url is not None, "the router does not run"
        return url

    def counters(self) -> dict[str, Counter[str]]:
        """HAProxy's counters of the split backend, by role (stable, candidate, BACKEND)."""
        fields = ("hrsp_2xx", "hrsp_5xx", "econ", "eresp", "wretr", "wredis")
        return {
            role: Counter({f: int(row.get(f) or 0) for f in fields})
            for role, row in self.router.stats(KEY).items()
        }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from mnist_trainer.dataset import write

    path = tmp_path_factory.mktemp("data") / "digits.npz"
    write(path)
    return path


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, dataset: pathlib.Path) -> Iterator[Machine]:
    """One machine whose first run served a model at once; everything stopped afterwards."""
    root = tmp_path_factory.mktemp("machine")
    specs = root / "specs"
    specs.mkdir()
    machine = Machine(root / "home", specs, dataset)
    try:
        machine.first = machine.run(machine.spec("first"))
        assert machine.first.code == 0, machine.first.stderr
        yield machine
    finally:
        for run in machine.started:
            run.stop()
        machine.mlcd("down")
        EmbeddedPrometheus(machine.home).stop()


def samples(dataset: pathlib.Path, count: int = 64) -> list[dict[str, Any]]:
    with np.load(dataset) as data:
        return [infer_body(x.astype(np.float32)) for x in data["x"][:count]]


def _time(text: str | None) -> dt.datetime:
    assert text is not None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _analyses(rollout: dict[str, Any]) -> list[tuple[int, int, str, dict[str, Any]]]:
    """(step, weight, verdict, {metric: result}) of every analysis of ``--output json``."""
    return [
        (step["step"], step["weight"], a["verdict"], {m["metric"]: m for m in a["metrics"]})
        for step in rollout["steps"]
        for a in step["analyses"]
    ]


def _explain(result: CliResult) -> str:
    """A failed run's story for the assertion message: its reason and every analysis."""
    try:
        out = result.json
    except ValueError:
        return f"exit {result.code}:\n{result.stderr[-3000:]}"
    lines = [f"exit {result.code}: {out.get('result')}: {out.get('reason')}"]
    for step, weight, verdict, metrics in _analyses(out.get("rollout") or {"steps": []}):
        values = ", ".join(f"{k}={m['value']} ({m['reason']})" for k, m in metrics.items())
        lines.append(f"  step {step} at {weight}%: {verdict}: {values}")
    return "\n".join(lines)


def _detached(machine: Machine) -> None:
    """The rollout left no trace in the routes: no candidate, no weight, no mirror, and no
    candidate server."""
    routes = machine.router.routes(KEY)
    assert routes is not None and (routes.candidate, routes.canary_weight, routes.mirror) == (
        False,
        0,
        False,
    )
    assert machine.serving.server(KEY, "candidate") is None


# -- the tests ------------------------------------------------------------------------------------


def test_without_a_router_a_rollout_is_refused_naming_the_field(
    tmp_path: pathlib.Path, dataset: pathlib.Path
) -> None:
    spec = write_spec(tmp_path / "mp.yaml", rollout_pipeline(str(dataset), NAME))
    env = {"MLCD_HOME": str(tmp_path / "home"), "MLCD_SERVING_PORT": "0"}
    result = mlcd("run", str(spec), env={**env, "MLCD_HAPROXY": str(tmp_path / "no-haproxy")})
    assert result.code == 2, result.stderr
    assert "spec.serving.rollout: a progressive rollout needs a traffic router" in result.stderr
    assert not (tmp_path / "home" / "runs").exists()  # nothing started


def test_the_first_model_is_served_at_once_behind_the_router(machine: Machine) -> None:
    assert machine.first is not None
    out = machine.first.json
    assert out["result"] == "promoted" and out["rollout"] is None  # nothing to compare with
    # Clients keep the router's address through every rollout to come.
    assert out["serving"]["url"] == machine.url()
    assert machine.stable()[1] == out["model"]["version"]


def test_a_healthy_candidate_is_shadowed_stepped_and_promoted(machine: Machine) -> None:
    """Under replayed traffic, analysed by the embedded Prometheus that mlcd run starts and
    keeps running after it returns."""
    pid, version = machine.stable()
    spec = machine.spec("healthy", shadow={"minRequests": 20, "maxDisagreement": 0.05})
    result = machine.run(spec)
    assert result.code == 0, _explain(result)
    out = result.json
    new = out["model"]["version"]
    assert new != version
    assert (out["result"], out["serving"]["version"]) == ("promoted", new)
    rollout = out["rollout"]
    assert (rollout["phase"], rollout["result"]) == ("Promoted", "promoted"), rollout["reason"]
    assert [(s["step"], s["weight"], s["mirror"]) for s in rollout["steps"]] == [
        (0, 0, True),
        (1, 50, False),
        (2, 100, False),
    ]
    analyses = _analyses(rollout)
    # Every step ended with a passing analysis; every analysis kept its values and sample
    # counts (an inconclusive one, while the first scrapes came in, says why).
    for step in (0, 1, 2):
        assert [a[2] for a in analyses if a[0] == step][-1] == "pass", analyses
    for _, _, verdict, metrics in analyses:
        for metric in metrics.values():
            assert metric["query"] and "{{" not in metric["query"]
            assert metric["reason"]
            if verdict == "pass":
                assert metric["value"] is not None and metric["samples"] is not None
    shadow = [m for s, _, v, m in analyses if s == 0 and v == "pass"][-1]
    assert shadow["disagreement"]["value"] == 0.0  # the same model, answer for answer
    assert shadow["requests"]["samples"] >= 20
    assert 'mlcd_server="default.canary.candidate"' in shadow["disagreement"]["query"]
    for step in (1, 2):
        final = [m for s, _, v, m in analyses if s == step and v == "pass"][-1]
        assert final["success-rate"]["value"] == 1.0
        assert final["requests"]["samples"] >= 10
        assert 'server="default.canary.candidate"' in final["success-rate"]["query"]
        assert final["latency-p99"]["value"] < 1.0
    # Promoted in place: the same stable server now serves the new version; the candidate is
    # gone from the routes and its server stopped.
    assert machine.stable() == (pid, new)
    _detached(machine)
    # The embedded Prometheus decided, and keeps running for the next rollout.
    prometheus = EmbeddedPrometheus(machine.home)
    assert prometheus.url() is not None
    assert (prometheus.targets_dir / "default.canary.json").is_file()

    # `mlcd status` shows the rollout: its phase, weights and last analysis.
    status = machine.mlcd("status", NAME, "--output", "json")
    assert status.code == 0, status.stderr
    [row] = status.json
    assert row["serving"]["version"] == new and row["url"] == machine.url()
    shown = row["rollout"]
    assert (shown["phase"], shown["candidate"], shown["canaryWeight"]) == ("Promoted", new, 0)
    assert {r["metric"] for r in shown["lastAnalysis"]} == {
        "requests",
        "success-rate",
        "latency-p99",
    }
    assert row["router"] == {"canaryWeight": 0, "mirror": False}
    text = machine.mlcd("status", NAME)
    assert "rollout Promoted" in text.stdout and "success-rate = 1" in text.stdout, text.stdout


def test_a_candidate_answering_errors_is_rolled_back_and_only_it_failed(
    machine: Machine, dataset: pathlib.Path
) -> None:
    pid, version = machine.stable()
    before = machine.counters()
    run = machine.start(machine.spec("erring"), MLCD_CANDIDATE_FAULTS="error=0.05,seed=5")
    endpoint = f"{machine.url()}/v2/models/{MODEL}/infer"
    with Clients(endpoint, samples(dataset)) as clients:
        result = run.wait()
    assert result.code == 3, _explain(result)  # the run's model was refused: rejected
    out = result.json
    rollout = out["rollout"]
    assert (out["result"], rollout["phase"]) == ("rejected", "RolledBack")
    assert "success-rate" in rollout["reason"]
    # Weights back at 0 within 2 intervals of the candidate's first traffic.
    state = machine.status().rollout
    assert state is not None and state.finished_at is not None
    live = [s for s in state.steps if s.step >= 1]
    assert sum(len(s.analyses) for s in live) <= 2, [s.analyses for s in live]
    took = (_time(state.finished_at) - _time(live[0].started_at)).total_seconds()
    assert took <= 2 * INTERVAL + 2, took
    _detached(machine)
    # Every failed request is one the faulty candidate answered: what the clients saw (the
    # candidate's share of their requests is small, so at 5 % they may see none; the replayed
    # traffic sees the rest) is its own error; HAProxy counted every 5xx on the candidate, none
    # on the stable server and none of its own (no refused connection, no broken answer, no
    # retry).
    assert {status for status, _ in clients.failed} <= {500}, clients.failed
    assert all("injected fault" in body for _, body in clients.failed), clients.failed
    after = machine.counters()
    delta = {role: after[role] - before.get(role, Counter()) for role in after}
    assert delta["candidate"]["hrsp_5xx"] >= max(1, len(clients.failed)), delta
    assert delta["BACKEND"]["hrsp_5xx"] == delta["candidate"]["hrsp_5xx"], delta
    assert delta["stable"]["hrsp_5xx"] == 0, delta
    for role in ("stable", "candidate", "BACKEND"):
        assert all(delta[role][f] == 0 for f in ("econ", "eresp", "wretr", "wredis")), delta
    # The stable server was never touched: the same process, the same version.
    assert machine.stable() == (pid, version)


def test_a_slow_candidate_is_rolled_back(machine: Machine) -> None:
    pid, version = machine.stable()
    spec = machine.spec(
        "slow",
        minSamples=5,
        metrics=[{"name": "success-rate", "min": 0.99}, {"name": "latency-p99", "max": 0.5}],
    )
    result = machine.run(spec, MLCD_CANDIDATE_FAULTS="slow=1,delay=1s")
    assert result.code == 3, _explain(result)
    rollout = result.json["rollout"]
    assert rollout["phase"] == "RolledBack" and "latency-p99" in rollout["reason"]
    failed = [m for _, _, v, m in _analyses(rollout) if v == "fail"]
    assert failed and failed[-1]["latency-p99"]["value"] > 0.5
    assert failed[-1]["latency-p99"]["verdict"] == "fail"
    _detached(machine)
    assert machine.stable() == (pid, version)


def test_a_wrong_predicting_candidate_is_stopped_in_shadow(machine: Machine) -> None:
    pid, version = machine.stable()
    before = machine.counters()
    spec = machine.spec("wrong", shadow={"minRequests": 20, "maxDisagreement": 0.1})
    result = machine.run(spec, MLCD_CANDIDATE_FAULTS="wrong=0.5,seed=2")
    assert result.code == 3, _explain(result)
    rollout = result.json["rollout"]
    assert rollout["phase"] == "RolledBack" and "disagreement" in rollout["reason"]
    assert [(s["step"], s["weight"]) for s in rollout["steps"]] == [(0, 0)]
    failed = [m for _, _, v, m in _analyses(rollout) if v == "fail"]
    assert failed[-1]["disagreement"]["value"] > 0.1
    # No client ever got one of its answers: it only saw mirrored copies.
    after = machine.counters()
    assert after["candidate"]["hrsp_2xx"] == before["candidate"]["hrsp_2xx"]
    assert after["candidate"]["hrsp_5xx"] == before["candidate"]["hrsp_5xx"]
    _detached(machine)
    assert machine.stable() == (pid, version)


def test_without_traffic_it_holds_until_the_deadline_then_rolls_back(machine: Machine) -> None:
    """As a user sees it in the terminal: a bar per step with the analysis' values, and the
    summary."""
    pid, version = machine.stable()
    spec = machine.spec("idle", traffic=None, progressDeadline="8s")
    result = mlcd("run", str(spec), env=machine.env, timeout=300)
    assert result.code == 3, result.stderr
    state = machine.status().rollout
    assert state is not None and state.phase == "RolledBack", state
    assert "progressDeadline" in state.reason
    assert re.search(r"step 1 +50% .* inconclusive: requests=", result.stderr), result.stderr
    assert re.search(r"serve .* refused: rollout: no conclusive", result.stderr), result.stderr
    assert re.search(r"rollout +│ RolledBack \(50%\): no conclusive", result.stdout), result.stdout
    assert state.failed_checks == 0  # holding is not failing
    held = [a for s in state.steps for a in s.analyses]
    assert len(held) >= 2 and {a.verdict for a in held} == {"inconclusive"}
    assert (_time(state.finished_at) - _time(held[0].at)).total_seconds() >= 8
    _detached(machine)
    assert machine.stable() == (pid, version)


def test_without_traffic_and_on_failure_pause_it_halts_then_mlcd_abort_aborts(
    machine: Machine,
) -> None:
    pid, version = machine.stable()
    spec = machine.spec("halted", traffic=None, progressDeadline="8s", onFailure="pause")
    run = machine.start(spec)
    halted = machine.wait_phase(run, "Halted")
    assert halted.failed_checks == 0 and "progressDeadline" in halted.reason
    assert run.proc.poll() is None  # a person decides; the run waits for them
    # From another process, while `mlcd run` still drives the pipeline.
    abort = machine.mlcd("abort", NAME)
    assert abort.code == 0, abort.stderr
    assert "rolled back" in abort.stdout
    result = run.wait()
    assert result.code == 3, _explain(result)
    rollout = result.json["rollout"]
    assert rollout["phase"] == "RolledBack" and "aborted" in rollout["reason"]
    _detached(machine)
    assert machine.stable() == (pid, version)
    assert "abort" not in json.loads(
        (StatusFile(machine.home).folder(KEY.namespace, KEY.name) / "controls.json").read_text()
    )


def test_on_failure_pause_halts_mlcd_promote_promotes_and_rollback_to_serves_version_1(
    machine: Machine,
) -> None:
    pid, _ = machine.stable()
    spec = machine.spec("paused", onFailure="pause")
    run = machine.start(spec, MLCD_CANDIDATE_FAULTS="error=0.5,seed=1")
    halted = machine.wait_phase(run, "Halted")
    assert halted.failed_checks == 1 and "success-rate" in halted.reason
    routes = machine.router.routes(KEY)
    assert routes is not None and routes.canary_weight == 50  # held where it failed
    promote = machine.mlcd("promote", NAME)
    assert promote.code == 0, promote.stderr
    result = run.wait()
    assert result.code == 0, _explain(result)
    out = result.json
    new = out["model"]["version"]
    assert (out["result"], out["rollout"]["phase"]) == ("promoted", "Promoted")
    assert "promoted by request" in out["rollout"]["reason"]
    assert machine.stable() == (pid, new)
    _detached(machine)

    # After the run returned, the command drives the pipeline itself.
    rollback = machine.mlcd("rollback", NAME, "--to", "1")
    assert rollback.code == 0, rollback.stderr
    assert "version 1 serves" in rollback.stdout
    assert machine.stable() == (pid, "1")
    assert machine.status().serving.version == "1"  # type: ignore[union-attr]
    state = machine.status().rollout
    assert state is not None and (state.phase, state.stable) == ("RolledBack", "1")
    controls = StatusFile(machine.home).folder(KEY.namespace, KEY.name) / "controls.json"
    assert "rollbackTo" not in json.loads(controls.read_text())  # it pins nothing afterwards
    response = httpx.post(
        f"{machine.url()}/v2/models/{MODEL}/infer", json=samples(machine.dataset, 1)[0]
    )
    assert response.status_code == 200


def test_prometheus_down_mid_rollout_holds_and_the_rollout_resumes_when_it_returns(
    machine: Machine, tmp_path: pathlib.Path
) -> None:
    """With a Prometheus of yours (MLCD_PROMETHEUS_URL): stopped mid-rollout, started again."""
    yours = EmbeddedPrometheus(tmp_path, port=free_port())
    url = yours.ensure()
    try:
        env = {"MLCD_PROMETHEUS_URL": url, "MLCD_PROMETHEUS_TARGETS": str(yours.targets_dir)}
        spec = machine.spec("blind", steps=[25, 50, 100], progressDeadline="60s")
        run = machine.start(spec, **env)
        machine.wait_phase(run, "Progressing")
        yours.stop()

        def held() -> RolloutState | None:
            state = machine.live(run)
            assert state is not None and state.phase == "Progressing", state
            blind = [
                a
                for a in state.steps[-1].analyses
                if {r.reason for r in a.results} == {"Prometheus unreachable"}
            ]
            return state if len(blind) >= 2 else None

        state = wait_for("two analyses without Prometheus", held, timeout=60)
        assert state.failed_checks == 0 and "Prometheus unreachable" in state.reason
        routes = machine.router.routes(KEY)
        assert routes is not None and routes.canary_weight == state.canary_weight > 0
        shown = machine.mlcd("status", NAME, "--output", "json").json[0]["rollout"]
        assert "Prometheus unreachable" in shown["reason"]
        yours.ensure()  # back, on the same port, with its data
        result = run.wait()
    finally:
        yours.stop()
    assert result.code == 0, _explain(result)
    rollout = result.json["rollout"]
    assert rollout["phase"] == "Promoted", rollout["reason"]
    assert [s["weight"] for s in rollout["steps"]] == [25, 50, 100]
    _detached(machine)


def test_ctrl_c_mid_rollout_stops_the_candidate_and_leaves_the_stable_model(
    machine: Machine,
) -> None:
    pid, version = machine.stable()
    run = machine.start(machine.spec("interrupted", steps=[20, 40, 60, 80, 100]))
    state = machine.wait_phase(run, "Progressing")
    candidate = machine.serving.server(KEY, "candidate")
    assert candidate is not None and state.canary_weight > 0
    run.proc.send_signal(signal.SIGINT)
    result = run.wait(timeout=60)
    assert result.code == 130, _explain(result)
    assert result.json["result"] == "cancelled"
    assert not alive(candidate.pid)
    _detached(machine)
    assert machine.stable() == (pid, version)
    state = machine.status().rollout
    assert state is not None and state.phase == "RolledBack"


def test_mlcd_down_stops_the_servers_the_router_and_the_embedded_prometheus(
    machine: Machine,
) -> None:
    prometheus = EmbeddedPrometheus(machine.home)
    prometheus.ensure()  # started by the first rollout; started here when run alone
    processes = [
        machine.serving.server(KEY).pid,  # type: ignore[union-attr]
        machine.router.running(KEY).pid,  # type: ignore[union-attr]
        prometheus.pid(),
    ]
    down = machine.mlcd("down")
    assert down.code == 0, down.stderr
    for what in ("router", "model server", "embedded Prometheus"):
        assert f"stopped the {what}" in down.stdout, down.stdout
    assert [p for p in processes if p is not None and alive(p)] == []
    assert machine.router.pipelines() == []
    assert not (prometheus.targets_dir / "default.canary.json").exists()
    assert machine.mlcd("down").stdout == ""  # nothing left to stop
