"""What only the operator can know is reported in a condition, once; a stale status is never
written over; spec changes mid-run and deletion behave as documented."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import time

import httpx
import pytest

from helpers import mlcd, softmax_pipeline, wait_for

OPERATOR_ONLY = [
    (
        {"dataset": {"credentialsSecretRef": {"name": "nope"}}},
        "SpecValid",
        "InvalidSpec",
        "spec.dataset.credentialsSecretRef.name: secret 'nope' not found in namespace",
    ),
    (
        {"artifacts": {"uri": "s3://models/x", "credentialsSecretRef": {"name": "gone"}}},
        "SpecValid",
        "InvalidSpec",
        "spec.artifacts.credentialsSecretRef.name: secret 'gone'",
    ),
    (
        {"engine": "kubeflow"},
        "SpecValid",
        "InvalidSpec",
        "spec.engine: engine 'kubeflow' is not available in this operator",
    ),
    (
        {"dataset": {"uri": "data/digits.npz"}},
        "SpecValid",
        "InvalidSpec",
        "spec.dataset.uri: 'data/digits.npz' must be s3://bucket/key or an absolute path",
    ),
    (
        {
            "dataset": {"uri": "s3://data/d.npz", "endpoint": "http://127.0.0.1:9"},
            "triggers": {"newData": True},
        },
        "Degraded",
        "DatasetUnavailable",
        "spec.dataset.uri: checking s3://data/d.npz: object store unreachable",
    ),
    (
        {"dataset": {"uri": "/nowhere/digits.npz"}, "triggers": {"newData": True}},
        "Degraded",
        "DatasetUnavailable",
        "spec.dataset.uri: dataset /nowhere/digits.npz does not exist",
    ),
]


def _merge(spec: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            _merge(spec[key], value)
        else:
            spec[key] = value
    return spec


def test_problems_only_the_operator_can_know(start_operator, pipelines, digits_file, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")  # the operator's environment is inherited
    start_operator(env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    names = []
    for i, (extra, ctype, reason, words) in enumerate(OPERATOR_ONLY):
        resource = softmax_pipeline(str(digits_file))
        resource["metadata"]["name"] = f"bad-{i}"
        _merge(resource["spec"], json.loads(json.dumps(extra)))
        pipelines.create(resource)
        names.append((f"bad-{i}", ctype, reason, words))
    for name, ctype, reason, words in names:
        condition = pipelines.wait_condition(
            name, ctype, "False" if ctype == "SpecValid" else "True", timeout=60
        )
        assert condition["reason"] == reason, (name, condition)
        assert words in condition["message"], (name, condition["message"])
        if ctype == "SpecValid":
            assert pipelines.status(name)["phase"] == "Invalid"
        assert pipelines.status(name).get("runs", []) == []
    # Reported once; nothing is retried in a loop and nothing is rewritten.
    versions = {n: pipelines.settled_version(n) for n, *_ in names}
    time.sleep(5)
    for name, _, reason, _ in names:
        assert pipelines.get(name)["metadata"]["resourceVersion"] == versions[name]
        assert pipelines.reasons(name).count(reason) == 1, pipelines.reasons(name)

    # Fixing the spec clears the condition and lets the pipeline run.
    pipelines.patch("bad-2", {"spec": {"engine": "local"}})
    pipelines.wait_condition("bad-2", "SpecValid", "True", timeout=60)
    assert pipelines.status("bad-2")["phase"] == "Pending"


def test_a_stale_status_write_is_retried_and_loses_nothing(
    mlcd_cluster, pipelines, digits_file, operator_kubeconfig, tmp_path, monkeypatch
):
    from mlcd.k8s.handlers import reconcile
    from mlcd.k8s.operator import build_memo
    from mlcd.settings import OperatorSettings

    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig))
    resource = softmax_pipeline(str(digits_file))
    resource["metadata"]["annotations"] = {"mlcd.io/trigger": "now"}
    resource["spec"]["trainer"]["args"].append("--fault=sleep")
    stale = pipelines.create(resource)
    # Meanwhile, another reconcile recorded a finished run (the object moves on).
    earlier = {
        "id": "digits-earlier",
        "trigger": "manual",
        "result": "rejected",
        "reason": "gate: accuracy 0.5 < min 0.8",
    }
    fresh = pipelines.get("digits")
    fresh["status"] = {"runs": [earlier]}
    pipelines.api.replace_namespaced_custom_object_status(
        "mlcd.io", "v1alpha1", pipelines.namespace, "modelpipelines", "digits", fresh
    )

    memo = build_memo(
        OperatorSettings(state_dir=tmp_path / "state", kubeconfig=str(operator_kubeconfig))
    )
    import logging

    posted = []
    memo.post = lambda body, notice: posted.append(notice.reason)
    try:
        reconcile(stale, memo, logging.getLogger("test"))
        assert posted == ["RunStarted"]
        status = pipelines.status("digits")
        assert [r["id"] for r in status["runs"]] == ["digits-earlier"]
        assert [r["trigger"] for r in status["activeRuns"]] == ["manual"]
        assert status["handledTrigger"] == "now"
        conflicts = memo.metrics.errors.labels("conflict")._value.get()
        assert conflicts == 1
    finally:
        from mlcd.engines.local import LocalEngine

        LocalEngine(tmp_path / "state").cancel_everything(grace=5.0)
        pipelines.delete("digits")  # no operator ran: no finalizer holds it


def test_spec_changes_apply_to_the_next_run_and_deletion_keeps_artifacts(
    start_operator, pipelines, digits_file, mlcd_cluster, tmp_path
):
    state = tmp_path / "state"
    start_operator(state=state)
    resource = softmax_pipeline(str(digits_file), triggers={"newData": True})
    resource["spec"]["trainer"]["args"].append("--sleep=0.2")
    pipelines.create(resource)
    wait_for("a run", lambda: pipelines.status("digits").get("activeRuns"), timeout=60)
    pipelines.patch("digits", {"spec": {"gate": {"min": 0.5}}})
    generation = pipelines.get("digits")["metadata"]["generation"]
    wait_for(
        "the new generation observed",
        lambda: pipelines.status("digits").get("observedGeneration") == generation,
    )
    [first] = pipelines.wait_runs("digits", 1)
    assert first["gate"]["min"] == 0.8  # the run kept the spec it started with
    kube = ["--kubeconfig", str(mlcd_cluster.kubeconfig), "-n", pipelines.namespace]
    assert mlcd("trigger", "digits", *kube).code == 0
    second = pipelines.wait_runs("digits", 2)[1]
    assert second["gate"]["min"] == 0.5

    url = pipelines.status("digits")["serving"]["url"]
    assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200

    # Ready is what the server reports, not what was recorded: a dead server is not Ready.
    [server] = (state / "serving" / pipelines.namespace).glob("*/server.json")
    os.killpg(json.loads(server.read_text())["pid"], signal.SIGKILL)
    down = pipelines.wait_condition("digits", "Ready", "False", timeout=60)
    assert down["reason"] == "ServerNotReady", down
    assert "ServerNotReady" in pipelines.reasons("digits")
    pipelines.delete("digits")

    def gone() -> bool:
        try:
            pipelines.get("digits")
        except Exception:
            return True
        return False

    wait_for("the finalizer to let the object go", gone, timeout=60)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/v2/health/ready", timeout=2)
    models = pathlib.Path(state / "models" / pipelines.namespace / "digits")
    assert sorted(p.name for p in models.iterdir() if p.name.isdigit()) == ["1", "2"]
