"""Runs start on demand, on schedule (CronJob's semantics, on a clock the test moves) and when
new data lands in MinIO — each exactly once."""

from __future__ import annotations

import base64
import io
import json
import pathlib
import time

from kubernetes import client

from helpers import mlcd, softmax_pipeline, wait_for
from mlcd.processes import alive, start_time


def test_on_demand_runs_start_once_per_trigger(
    start_operator, pipelines, digits_file, mlcd_cluster
):
    start_operator()
    pipelines.create(softmax_pipeline(str(digits_file)))
    time.sleep(3)
    assert pipelines.status("digits").get("runs", []) == []  # no trigger, no run
    kube = ["--kubeconfig", str(mlcd_cluster.kubeconfig), "-n", pipelines.namespace]
    assert mlcd("trigger", "digits", *kube).code == 0
    [first] = pipelines.wait_runs("digits", 1)
    assert (first["trigger"], first["result"]) == ("manual", "promoted")
    assert mlcd("trigger", "digits", *kube).code == 0
    runs = pipelines.wait_runs("digits", 2)
    assert runs[1]["trigger"] == "manual" and runs[1]["id"] != first["id"]
    time.sleep(3)
    assert len(pipelines.status("digits")["runs"]) == 2

    listed = mlcd("get", *kube)
    assert listed.code == 0
    assert "digits" in listed.stdout and "Ready" in listed.stdout
    described = mlcd("describe", "digits", *kube)
    assert described.code == 0
    assert "Promoted" in described.stdout and first["id"] in described.stdout
    missing = mlcd("trigger", "nope", *kube)
    assert missing.code == 1 and "not found" in missing.stderr


def test_schedule_forbid_replace_suspend_and_outage(
    start_operator, pipelines, digits_file, tmp_path
):
    clock = tmp_path / "clock"
    clock.write_text("2030-01-01T00:00:30Z")
    start_operator(env={"MLCD_CLOCK_FILE": str(clock)})
    resource = softmax_pipeline(
        str(digits_file), schedule="*/10 * * * *", concurrencyPolicy="Forbid"
    )
    # Trials that never end keep a run active for as long as the test needs.
    resource["spec"]["trainer"]["args"].append("--fault=sleep")
    pipelines.create(resource)

    # Created years "ago" on this clock: the outage fires one run, the latest due.
    def active() -> list:
        return pipelines.status("digits").get("activeRuns", [])

    [run] = wait_for("the scheduled run", active, timeout=60)
    assert run["id"] == "digits-s20300101000000" and run["trigger"] == "schedule"
    status = pipelines.status("digits")
    assert status["lastScheduleTime"] == "2030-01-01T00:00:00Z"
    assert status["nextScheduleTime"] == "2030-01-01T00:10:00Z"

    # Forbid: the next time comes while the run is active; it is skipped.
    clock.write_text("2030-01-01T00:10:05Z")
    wait_for(
        "the skip",
        lambda: pipelines.status("digits").get("lastScheduleTime") == "2030-01-01T00:10:00Z",
        timeout=30,
    )
    assert [r["id"] for r in active()] == ["digits-s20300101000000"]
    assert "RunSkipped" in pipelines.reasons("digits")

    # Replace: the active run is cancelled and recorded; the new one starts.
    pipelines.patch("digits", {"spec": {"concurrencyPolicy": "Replace"}})
    clock.write_text("2030-01-01T00:20:05Z")
    wait_for(
        "the replacement",
        lambda: [r["id"] for r in active()] == ["digits-s20300101002000"],
        timeout=60,
    )
    replaced = pipelines.status("digits")["runs"][-1]
    assert replaced["id"] == "digits-s20300101000000" and replaced["result"] == "cancelled"
    assert "replaced by run digits-s20300101002000" in replaced["reason"]

    # Suspended: time passes, nothing fires, and no next run is announced.
    pipelines.patch("digits", {"spec": {"suspend": True}})
    wait_for("suspension", lambda: "nextScheduleTime" not in pipelines.status("digits"), timeout=30)
    clock.write_text("2030-01-01T00:40:05Z")
    time.sleep(4)
    status = pipelines.status("digits")
    assert status["lastScheduleTime"] == "2030-01-01T00:20:00Z"
    assert [r["id"] for r in status["activeRuns"]] == ["digits-s20300101002000"]

    # A time zone moves the schedule: 09:00 in Tokyo is 00:00 UTC.
    pipelines.patch(
        "digits", {"spec": {"suspend": False, "schedule": "0 9 * * *", "timeZone": "Asia/Tokyo"}}
    )
    wait_for(
        "the Tokyo schedule",
        lambda: pipelines.status("digits").get("nextScheduleTime") == "2030-01-02T00:00:00Z",
        timeout=30,
    )

    # Deleting the pipeline stops its run: every process of it has ended by the time the
    # finalizer lets the object go.
    state = tmp_path / "state" / "runs" / pipelines.namespace
    [run_dir] = [d for d in state.glob("*/*") if d.name == "digits-s20300101002000"]
    wait_for("its trials", lambda: len(list((run_dir / "procs").glob("*.pgid"))) >= 2)
    processes = _processes(run_dir)
    assert len(processes) >= 2  # the run's process and its trials
    assert all(alive(pid, started) for pid, started in processes)
    pipelines.delete("digits")
    wait_for("the pipeline to be gone", lambda: not _exists(pipelines, "digits"), timeout=60)
    assert [p for p in processes if alive(*p)] == []
    assert run_dir.exists()  # what the run wrote is kept


def _processes(run_dir: pathlib.Path) -> list[tuple[int, int | None]]:
    """The run's own process and its trainers' process groups, with their start times."""
    runner = json.loads((run_dir / "runner.json").read_text())
    found = [(int(runner["pid"]), runner.get("started"))]
    for marker in (run_dir / "procs").glob("*.pgid"):
        pid = int(marker.read_text())
        found.append((pid, start_time(pid)))
    return found


def _exists(pipelines, name: str) -> bool:
    try:
        pipelines.get(name)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _put(minio, key: str, data: bytes) -> str:
    result = minio.client().put_object(minio.bucket, key, io.BytesIO(data), len(data))
    return str(result.version_id)


def test_a_new_object_version_starts_exactly_one_run(start_operator, pipelines, digits_file, minio):
    core = client.CoreV1Api(pipelines.cluster.api_client())
    core.create_namespaced_secret(
        pipelines.namespace,
        {
            "metadata": {"name": "minio-creds"},
            "data": {
                "accessKey": base64.b64encode(minio.access_key.encode()).decode(),
                "secretKey": base64.b64encode(minio.secret_key.encode()).decode(),
            },
        },
    )
    key = f"{pipelines.namespace}/digits.npz"
    _put(minio, key, digits_file.read_bytes())
    start_operator()
    location = {"endpoint": minio.endpoint, "credentialsSecretRef": {"name": "minio-creds"}}
    resource = softmax_pipeline(
        "unused",
        triggers={"newData": True, "pollInterval": "1s"},
        artifacts={"uri": f"s3://{minio.bucket}/{pipelines.namespace}/models", **location},
    )
    resource["spec"]["dataset"].update(uri=f"s3://{minio.bucket}/{key}", **location)
    pipelines.create(resource)
    [first] = pipelines.wait_runs("digits", 1)
    assert first["trigger"] == "new-data" and first["result"] == "promoted"
    assert first["model"]["uri"].startswith(f"s3://{minio.bucket}/{pipelines.namespace}/models")
    time.sleep(4)  # polls find the same version: no run
    assert len(pipelines.status("digits")["runs"]) == 1

    version = _put(minio, key, digits_file.read_bytes())
    runs = pipelines.wait_runs("digits", 2)
    assert runs[1]["trigger"] == "new-data"
    assert pipelines.status("digits")["datasetVersion"] == f"version:{version}"
    time.sleep(4)
    assert len(pipelines.status("digits")["runs"]) == 2
    # The second run was judged against the first: the gate compared with version 1.
    assert runs[1]["gate"]["baselineVersion"] == "1"
    # Secrets are referenced, never copied into the status or the events.
    text = str(pipelines.get("digits")) + " ".join(e.message for e in pipelines.events("digits"))
    assert minio.secret_key not in text and minio.access_key not in text


def test_runs_beyond_the_operator_wide_limit_wait_their_turn(
    start_operator, pipelines, digits_file, mlcd_cluster
):
    start_operator("--max-active-runs=1")
    names = ("digits", "digits-b")
    for name in names:
        resource = softmax_pipeline(str(digits_file))
        resource["metadata"]["name"] = name
        pipelines.create(resource)
    kube = ["--kubeconfig", str(mlcd_cluster.kubeconfig), "-n", pipelines.namespace]
    for name in names:
        assert mlcd("trigger", name, *kube).code == 0

    waited: list[dict] = []

    def both_done() -> bool:
        statuses = [pipelines.status(name) for name in names]
        assert sum(len(s.get("activeRuns", [])) for s in statuses) <= 1
        for s in statuses:
            waited.extend(
                c
                for c in s.get("conditions", [])
                if c["type"] == "Training" and c["reason"] == "WaitingForCapacity"
            )
        return all(len(s.get("runs", [])) == 1 and not s.get("activeRuns") for s in statuses)

    wait_for("both pipelines' runs, one after the other", both_done, timeout=240, interval=0.5)
    assert waited and "runs 1 runs at most" in waited[0]["message"]
    assert any(r == "WaitingForCapacity" for n in names for r in pipelines.reasons(n))
    for name in names:
        [run] = pipelines.status(name)["runs"]
        assert (run["trigger"], run["result"]) == ("manual", "promoted")
        training = next(c for c in pipelines.status(name)["conditions"] if c["type"] == "Training")
        assert training["reason"] == "Idle"
