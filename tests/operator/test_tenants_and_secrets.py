"""Tenants never meet, user code never gets the operator's credentials, and a secret value
never leaves the run — on the real API server, with the operator as its ServiceAccount."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from kubernetes import client

from helpers import mlcd, softmax_pipeline, wait_for
from mlcd.processes import alive

PLANTED_ACCESS = "PLANTED-ACCESS-7f3a9e"
PLANTED_SECRET = "PLANTED-SECRET-91c2d4"


def _sleepy(pipelines: Any, kube: list[str]) -> None:
    """Starts an on-demand run whose trials never end."""
    status = pipelines.get("digits")
    args = [*status["spec"]["trainer"]["args"], "--fault=sleep"]
    pipelines.patch("digits", {"spec": {"trainer": {"args": args}}})
    assert mlcd("trigger", "digits", *kube, "-n", pipelines.namespace).code == 0
    wait_for("the run", lambda: pipelines.status("digits").get("activeRuns"), timeout=60)


def test_two_tenants_with_the_same_pipeline_never_meet(
    start_operator, mlcd_cluster, pipelines, other_tenant, digits_file, tmp_path
):
    other = other_tenant
    state = tmp_path / "state"
    # One model repository for both: their versions and records must not mix.
    shared = tmp_path / "shared-models"
    start_operator(state=state)
    for tenant in (pipelines, other):
        tenant.create(
            softmax_pipeline(
                str(digits_file), triggers={"newData": True}, artifacts={"uri": str(shared)}
            )
        )
    [a] = pipelines.wait_runs("digits", 1)
    [b] = other.wait_runs("digits", 1)
    assert a["id"] == b["id"]  # the same trigger on the same data names the same run
    assert a["result"] == b["result"] == "promoted"
    assert {a["model"]["version"], b["model"]["version"]} == {"1", "2"}  # each its own
    serving_a, serving_b = pipelines.status("digits")["serving"], other.status("digits")["serving"]
    assert serving_a["url"] != serving_b["url"]
    assert (serving_a["version"], serving_b["version"]) == (
        a["model"]["version"],
        b["model"]["version"],
    )
    for tenant, serving in ((pipelines, serving_a), (other, serving_b)):
        ready = tenant.wait_condition("digits", "Ready", timeout=30)
        assert f"version {serving['version']}" in ready["message"]
        answer = httpx.get(f"{serving['url']}/v2/models/digits/ready", timeout=5)
        assert answer.status_code == 200
    records = {p.relative_to(shared) for p in shared.glob("digits/runs/*/*/*.json")}
    assert len(records) == 2 and {r.parts[2] for r in records} == {
        pipelines.namespace,
        other.namespace,
    }
    runs = sorted(p.relative_to(state / "runs") for p in (state / "runs").glob("*/*/*"))
    assert [r.parts[0] for r in runs] == sorted([pipelines.namespace, other.namespace])

    # Deleting one tenant's pipeline stops its run and its server, and nothing of the other.
    kube = ["--kubeconfig", str(mlcd_cluster.kubeconfig)]
    _sleepy(pipelines, kube)
    _sleepy(other, kube)
    [run_a] = pipelines.status("digits")["activeRuns"]
    runner = next((state / "runs" / pipelines.namespace).glob(f"*/{run_a['id']}"))
    process = json.loads((runner / "runner.json").read_text())
    other.delete("digits")
    wait_for("the other pipeline to be gone", lambda: not _exists(other, "digits"), timeout=90)
    assert alive(process["pid"], process["started"])
    assert [r["id"] for r in pipelines.status("digits")["activeRuns"]] == [run_a["id"]]
    assert httpx.get(f"{serving_a['url']}/v2/health/ready", timeout=5).status_code == 200


def _exists(pipelines: Any, name: str) -> bool:
    try:
        pipelines.get(name)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_a_planted_secret_never_leaves_the_run(
    start_operator, pipelines, digits_file, tmp_path, mlcd_cluster
):
    core = client.CoreV1Api(pipelines.cluster.api_client())
    core.create_namespaced_secret(
        pipelines.namespace,
        {
            "metadata": {"name": "store-creds"},
            "data": {
                "accessKey": base64.b64encode(PLANTED_ACCESS.encode()).decode(),
                "secretKey": base64.b64encode(PLANTED_SECRET.encode()).decode(),
            },
        },
    )
    leak = tmp_path / "leak"
    leak.write_text(PLANTED_SECRET)
    dump = tmp_path / "trainer-env.json"
    resource = softmax_pipeline(
        str(digits_file),
        triggers={"newData": True},
        artifacts={
            "uri": str(tmp_path / "models"),
            "credentialsSecretRef": {"name": "store-creds"},
        },
    )
    trainer = resource["spec"]["trainer"]
    trainer["args"].append("--fault=leak")
    trainer["env"] = [
        {"name": "LEAK_FILE", "value": str(leak)},
        {"name": "ENV_DUMP", "value": str(dump)},
    ]
    state = tmp_path / "state"
    operator = start_operator(state=state)
    pipelines.create(resource)
    [run] = pipelines.wait_runs("digits", 1)
    assert run["result"] == "failed" and run["stage"] == "train"
    assert "[redacted]" in run["reason"]

    # The trainer saw the contract and its own variables, nothing of the operator's.
    env = json.loads(dump.read_text())
    assert {"MLCD_TRAIN_DATA", "MLCD_MODEL_DIR", "RANK", "WORLD_SIZE", "LEAK_FILE"} <= set(env)
    for name in ("KUBECONFIG", "MLCD_SECRETS_DIR", "MLCD_STATE_DIR", "AWS_SECRET_ACCESS_KEY"):
        assert name not in env, name
    assert not [k for k, v in env.items() if PLANTED_SECRET in v or PLANTED_ACCESS in v]

    # Nowhere it could be read: status, Events, the operator's log, the report, the record.
    kube = ["--kubeconfig", str(mlcd_cluster.kubeconfig), "-n", pipelines.namespace]
    seen = {
        "status": json.dumps(pipelines.status("digits")),
        "events": json.dumps([e.message for e in pipelines.events("digits")]),
        "operator log": operator.log.read_text(),
        "describe": mlcd("describe", "digits", *kube).stdout,
    }
    run_dir = next((state / "runs" / pipelines.namespace).glob(f"*/{run['id']}"))
    for path in [run_dir / "report.html", *run_dir.glob("stages/*.json"), run_dir / "result.json"]:
        seen[str(path)] = path.read_text()
    for path in (tmp_path / "models").glob("digits/runs/**/*.json"):
        seen[str(path)] = path.read_text()
    assert any("[redacted]" in text for text in seen.values())
    for where, text in seen.items():
        for planted in (PLANTED_SECRET, PLANTED_ACCESS):
            assert planted not in text, f"{planted} in {where}"

    # The run's credential files are gone with the run.
    wait_for(
        "the run's credentials to be removed",
        lambda: not list((state / "secrets" / pipelines.namespace).glob("*/*")),
        timeout=30,
    )


def test_a_replacement_operator_on_the_same_state_resumes_the_run(
    start_operator, pipelines, digits_file, tmp_path
):
    """Failover with the local engine: the new operator (another process, the same state
    volume) takes the run over where it is, and serves what it promotes."""
    state = tmp_path / "state"
    first = start_operator(state=state)
    resource = softmax_pipeline(str(digits_file), triggers={"newData": True})
    resource["spec"]["trainer"]["args"].append("--sleep=0.15")
    pipelines.create(resource)
    wait_for("a run", lambda: pipelines.status("digits").get("activeRuns"), timeout=60)
    first.kill9()
    start_operator(state=state)
    [run] = pipelines.wait_runs("digits", 1, timeout=240)
    assert run["result"] == "promoted" and run["attempt"] == 1
    assert pipelines.reasons("digits").count("RunStarted") == 1
    url = pipelines.status("digits")["serving"]["url"]
    assert httpx.get(f"{url}/v2/models/digits/ready", timeout=5).status_code == 200
