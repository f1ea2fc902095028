"""What mlcd's orchestration costs: ``mlcd run`` on the example against a bare script doing the
same compute (the same trials with the same parameters, epochs, workers and data) with no
orchestration, in one run.

    .venv/bin/python benchmarks/loop_overhead.py [--set KEY=VALUE ...]

Runs each side ``--repeat`` times (5), alternating, and prints the wall-time ratio (goal <= 1.10;
the median of the back-to-back pairs' ratios), the example's holdout accuracy and wall time,
the orchestrator's peak RSS (the CLI, the kfp.local runner and its component processes;
trainer processes and the model server excluded, the server reported on its own) and the CPU
time each kind of process used. For each pair it prints where the seconds went: each stage of
mlcd beside the bare script's, the start, the gaps between stages (kfp.local starting the next
component) and the end, and the CPU every other process took while trainers ran.

Both sides are measured the same way: the sampler that reads the processes' memory and CPU
runs during the bare script too (its own CPU is printed), so its cost is on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

from mlcd.domain.datacheck import holdout_split
from mlcd.specfile import load

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mnist" / "modelpipeline.yaml"


class RssSampler:
    """Peak RSS of a process tree, split into orchestration, trainers and the model server."""

    #: Seconds between samples: often enough for peaks of stages that last seconds, seldom
    #: enough that reading every process's /proc files stays a small load.
    INTERVAL = 0.25

    def __init__(self, root_pid: int, home: pathlib.Path) -> None:
        self.root = root_pid
        # Other runs may share the machine: a process is this run's if it points into home.
        self.home = str(home)
        self.ours: dict[int, bool] = {}
        self.peak = {"orchestrator": 0, "trainers": 0, "server": 0}
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds last seen)
        self.program: dict[int, str] = {}  # pid -> what it is, for the report
        # CPU seconds of each non-trainer program while a trainer runs (it takes their cores).
        self.beside_trainers: dict[str, float] = {}
        self.trainer_seconds = 0.0  # wall seconds during which a trainer ran
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.own_cpu = 0.0  # CPU seconds the sampling itself took (its thread)

    @staticmethod
    def name(argv: list[str]) -> str:
        """What a process of the run is: the CLI, the runner, a component (by its function),
        the model server, a trainer."""
        text = " ".join(argv)
        if "mlcd.cli" in text:
            return "mlcd CLI"
        if "mlcd.engines.runner" in text:
            return "kfp.local runner"
        if "mlcd.serving.modelserver" in text:
            return "model server"
        if "--function_to_execute" in argv:
            return "component " + argv[argv.index("--function_to_execute") + 1]
        if argv and argv[0].endswith("sh") and "executor_main" in text:
            return "component shell"
        return " ".join(argv[:3])[-60:]

    @staticmethod
    def kind(argv: list[str]) -> str:
        # The program and its module only: a component's arguments mention the trainer too.
        program = " ".join(argv[:3])
        if "mlcd.serving.modelserver" in program:
            return "server"
        if any(name in program for name in ("mnist_trainer", "torchrun", "torch.distributed")):
            return "trainers"
        return "orchestrator"

    def _run(self) -> None:
        started = time.thread_time()
        try:
            self._sample()
        finally:
            self.own_cpu = time.thread_time() - started

    def _sample(self) -> None:
        last = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            step, last = now - last, now
            training = False
            before = {pid: seconds for pid, (_, seconds) in self.cpu.items()}
            totals = dict.fromkeys(self.peak, 0)
            try:
                root = psutil.Process(self.root)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                procs = []
            # The runner, the server and the trainers live in sessions of their own: they are
            # this run's when their command line or environment points into its home.
            for proc in psutil.process_iter():
                if proc.pid not in self.ours:
                    try:
                        text = " ".join([*proc.cmdline(), *proc.environ().values()])
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    self.ours[proc.pid] = self.home in text
                if self.ours[proc.pid]:
                    procs.append(proc)
            seen = set()
            for proc in procs:
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                try:
                    # Known by its first sight: a process that has exited has no command line.
                    if proc.pid in self.cpu:
                        kind = self.cpu[proc.pid][0]
                    elif argv := proc.cmdline():
                        kind = self.kind(argv)
                        self.program[proc.pid] = self.name(argv)
                    else:
                        continue
                    totals[kind] += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = (kind, times.user + times.system)
                    training = training or kind == "trainers"
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            for key, value in totals.items():
                self.peak[key] = max(self.peak[key], value)
            if training:
                self.trainer_seconds += step
                for pid, (kind, seconds) in self.cpu.items():
                    if kind != "trainers":
                        spent = seconds - before.get(pid, seconds)
                        name = self.program.get(pid, "?")
                        self.beside_trainers[name] = self.beside_trainers.get(name, 0.0) + spent
            self.stop.wait(self.INTERVAL)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time by kind, as last sampled (a process's last interval may be missed)."""
        out = dict.fromkeys(self.peak, 0.0)
        for kind, seconds in self.cpu.values():
            out[kind] += seconds
        return out

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def run_mlcd(home: pathlib.Path, data: pathlib.Path, sets: list[str]) -> dict:
    env = {**os.environ, "MLCD_HOME": str(home), "MLCD_SERVING_PORT": "0"}
    args = [
        sys.executable,
        "-m",
        "mlcd.cli",
        "run",
        str(EXAMPLE),
        "--output",
        "json",
        "--set",
        f"dataset.uri={data}",
    ]
    for item in sets:
        args += ["--set", item]
    started = time.monotonic()
    started_at = time.time()
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with RssSampler(proc.pid, home) as rss:
        out, err = proc.communicate()
    wall = time.monotonic() - started
    ended_at = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"mlcd run failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out)
    run_dir = home / "runs" / "default" / result["pipeline"].split("/")[1] / result["run"]
    tune = json.loads((run_dir / "stages" / "tune.json").read_text())
    subprocess.run(
        [sys.executable, "-m", "mlcd.cli", "down"], env=env, check=True, capture_output=True
    )
    return {
        "wall": wall,
        "result": result,
        "trials": tune["trials"],
        "rss": rss.peak,
        "cpu": rss.cpu_seconds(),
        "beside_trainers": rss.beside_trainers,
        "trainer_seconds": rss.trainer_seconds,
        "phases": phases(run_dir, started_at, ended_at),
        "trial_seconds": sum(float(t.get("seconds") or 0) for t in tune["trials"]),
        "sampler_cpu": rss.own_cpu,
    }


def phases(run_dir: pathlib.Path, started_at: float, ended_at: float) -> dict[str, float]:
    """Where the wall time of ``mlcd run`` went: each stage (from its own record), the start
    (command to first stage), the gaps between stages (kfp.local starting the next component)
    and the end (the last stage to the command's exit: serving and the report)."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    marks = [e for e in events if e["kind"] in ("stage-start", "stage-end")]
    out: dict[str, float] = {}
    if not marks:
        return out
    out["start"] = marks[0]["ts"] - started_at
    gaps, open_at = 0.0, None
    for event in marks:
        if event["kind"] == "stage-start":
            if open_at is not None:
                gaps += event["ts"] - open_at
            open_at = None
        else:
            out[event["stage"]] = float(event.get("seconds") or 0.0)
            open_at = event["ts"]
    out["between stages"] = gaps
    out["end"] = ended_at - marks[-1]["ts"]
    return out


def bare_loop(
    data: pathlib.Path, trials: list[dict], sets: list[str], work: pathlib.Path
) -> tuple[float, dict[str, float]]:
    """The same compute as the pipeline, written as one plain script would do it."""
    pipeline, _ = load(EXAMPLE, [f"dataset.uri={data}", *sets])
    spec = pipeline.spec
    tuning = spec.tuning
    assert tuning is not None
    started = time.monotonic()
    with np.load(data) as arrays:
        x, y = arrays["x"], arrays["y"]
    train, holdout = holdout_split(len(y), spec.evaluation.holdout_fraction, spec.evaluation.seed)
    fit, val = holdout_split(len(train), tuning.validation_fraction, tuning.seed)
    xt, yt = x[train], y[train]
    paths = {name: work / f"{name}.npz" for name in ("train", "holdout", "fit", "val")}
    np.savez(paths["train"], x=xt, y=yt)
    np.savez(paths["holdout"], x=x[holdout], y=y[holdout])
    np.savez(paths["fit"], x=xt[fit], y=yt[fit])
    np.savez(paths["val"], x=xt[val], y=yt[val])
    cpus = os.cpu_count() or 1
    python = str(pathlib.Path(sys.executable))
    base = [python, "-m", "mnist_trainer", *spec.trainer.args]

    def env(threads: int, **extra: str) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": str(threads), **extra}

    pending = [
        [*base, *tuning.trial_args, *(f"--{k}={v}" for k, v in t["params"].items())] for t in trials
    ]
    threads = max(1, cpus // tuning.parallel_trials)
    running: list[subprocess.Popen] = []
    began: dict[int, float] = {}
    trial_seconds = 0.0  # each trial process's own wall time, summed
    while pending or running:
        while pending and len(running) < tuning.parallel_trials:
            running.append(
                subprocess.Popen(
                    pending.pop(0),
                    stdout=subprocess.DEVNULL,
                    env=env(
                        threads,
                        MLCD_STAGE="trial",
                        MLCD_TRAIN_DATA=str(paths["fit"]),
                        MLCD_VALIDATION_DATA=str(paths["val"]),
                        MLCD_MODEL_DIR=str(work),
                    ),
                )
            )
            began[running[-1].pid] = time.monotonic()
        while all(p.poll() is None for p in running):  # a slot frees when any trial ends
            time.sleep(0.05)
        for p in running:
            if p.poll() is not None:
                trial_seconds += time.monotonic() - began[p.pid]
        running = [p for p in running if p.poll() is None]
    spent = {"tune": time.monotonic() - started, "trials": trial_seconds}
    best = max((t for t in trials if t["value"] is not None), key=lambda t: t["value"])
    model_dir = work / "model"
    workers = spec.trainer.workers
    torchrun = pathlib.Path(sys.executable).parent / "torchrun"
    subprocess.run(
        [
            str(torchrun),
            "--nnodes=1",
            f"--nproc-per-node={workers}",
            "--master-addr=127.0.0.1",
            "--master-port=29533",
            "--no-python",
            *base,
            *(f"--{k}={v}" for k, v in best["params"].items()),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        env=env(
            max(1, cpus // workers),
            MLCD_STAGE="train",
            MLCD_TRAIN_DATA=str(paths["train"]),
            MLCD_MODEL_DIR=str(model_dir),
        ),
    )
    spent["train"] = time.monotonic() - started - spent["tune"]
    subprocess.run(
        base,
        check=True,
        env=env(
            1,
            MLCD_STAGE="evaluate",
            MLCD_MODEL_DIR=str(model_dir),
            MLCD_EVAL_DATA=str(paths["holdout"]),
            MLCD_PREDICTIONS_PATH=str(work / "pred.npy"),
        ),
    )
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"))
    outputs = session.run(None, {"input": x[holdout].astype(np.float32)})[0]
    accuracy = float((outputs.argmax(1) == y[holdout]).mean())
    spent["evaluate"] = time.monotonic() - started - spent["tune"] - spent["train"]
    print(f"  bare script holdout accuracy {accuracy:.4f}")
    return time.monotonic() - started, spent


def run_bare(
    data: pathlib.Path, trials: list[dict], sets: list[str], work: pathlib.Path
) -> tuple[float, dict[str, float]]:
    """The bare script under the same sampler as ``mlcd run`` (its processes are this one's
    children, and their environment points into ``work``)."""
    work.mkdir()
    with RssSampler(os.getpid(), work) as rss:
        bare, spent = bare_loop(data, trials, sets, work)
    spent["sampler_cpu"] = rss.own_cpu
    return bare, spent


def where_it_went(measured: dict, bare: float, bare_spent: dict[str, float]) -> None:
    """One pair: each part of mlcd's wall time beside the bare script's, and the CPU the
    other processes took while trainers ran (cores the trainers did not get)."""
    spent = measured["phases"]
    wall = measured["wall"]
    print(f"  where the seconds went      mlcd     bare   (wall {wall:.1f} / {bare:.1f} s)")
    rows = [
        ("start (command to 1st stage)", spent.get("start"), None),
        ("validate", spent.get("validate"), None),
        ("tune (bare: with the split)", spent.get("tune"), bare_spent.get("tune")),
        ("  trial processes (summed)", measured.get("trial_seconds"), bare_spent.get("trials")),
        ("train", spent.get("train"), bare_spent.get("train")),
        ("evaluate", spent.get("evaluate"), bare_spent.get("evaluate")),
        ("gate + export", (spent.get("gate") or 0) + (spent.get("export") or 0), None),
        ("between stages (kfp.local)", spent.get("between stages"), None),
        ("end (report, serving, exit)", spent.get("end"), None),
        ("(CPU of the sampler itself)", measured.get("sampler_cpu"), bare_spent.get("sampler_cpu")),
    ]
    for name, mine, theirs in rows:
        left = f"{mine:8.1f}" if mine is not None else "       -"
        right = f"{theirs:8.1f}" if theirs is not None else "       -"
        print(f"    {name:<28}{left} {right}")
    beside = sorted(measured["beside_trainers"].items(), key=lambda kv: -kv[1])
    print(
        f"  CPU of other processes while trainers ran ({measured['trainer_seconds']:.0f} s): "
        + (
            ", ".join(f"{name} {seconds:.1f} s" for name, seconds in beside if seconds >= 0.05)
            or "none"
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs of each, alternating; the medians are compared"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlcd-bench-") as tmp:
        work = pathlib.Path(tmp)
        from mnist_trainer.dataset import write

        data = work / "mnist.npz"
        write(data)
        walls, bares, runs = [], [], []
        trials: list[dict] = []
        for i in range(args.repeat):
            # Which side goes first alternates (after the first pair, whose trials the bare
            # script needs): a machine growing busier or quieter favours neither.
            first_bare = i % 2 == 1
            if first_bare:
                print(f"bare script, same trials and training ({i + 1}/{args.repeat}) ...")
                bare, bare_spent = run_bare(data, trials, args.sets, work / f"bare-{i}")
            print(f"mlcd run on the example ({i + 1}/{args.repeat}) ...", flush=True)
            measured = run_mlcd(work / f"home-{i}", data, args.sets)
            runs.append(measured)
            walls.append(measured["wall"])
            if first_bare and [t["params"] for t in trials] != [
                t["params"] for t in measured["trials"]
            ]:
                print("  (note: this run's trials differ from those the bare script ran)")
            trials = measured["trials"]  # the seeded search gives the same ones each run
            print(f"  {measured['wall']:.1f} s", flush=True)
            if not first_bare:
                print(f"bare script, same trials and training ({i + 1}/{args.repeat}) ...")
                bare, bare_spent = run_bare(data, trials, args.sets, work / f"bare-{i}")
            bares.append(bare)
            print(f"  {bare:.1f} s   pair ratio {measured['wall'] / bare:.3f}", flush=True)
            where_it_went(measured, bare, bare_spent)
    measured = runs[-1]
    measured["wall"] = statistics.median(walls)
    bare = statistics.median(bares)
    # Each pair runs back to back, so its ratio is what drift in the machine's speed spoils
    # least: the median of the pairs' ratios is the figure.
    ratio = statistics.median(w / b for w, b in zip(walls, bares, strict=True))
    result = measured["result"]
    mib = 1024 * 1024
    print()
    print(
        f"mlcd run wall time        {measured['wall']:8.1f} s  ({result['result']}, "
        f"holdout accuracy {result['metrics']['accuracy']:.4f})"
    )
    print(f"bare script wall time     {bare:8.1f} s")
    print(f"ratio mlcd / bare         {ratio:8.3f}   (goal <= 1.10; the median of the pairs)")
    print(
        "each pair (mlcd / bare)   "
        + "  ".join(f"{w:.1f}/{b:.1f}={w / b:.3f}" for w, b in zip(walls, bares, strict=True))
    )
    print(
        "stage times               "
        + "  ".join(f"{k} {v:.1f}s" for k, v in result["timings"].items())
    )
    print(
        f"orchestrator peak RSS     {measured['rss']['orchestrator'] / mib:8.0f} MiB "
        "(CLI + kfp.local runner + component processes)"
    )
    print(f"trainer processes peak    {measured['rss']['trainers'] / mib:8.0f} MiB (excluded)")
    print(f"model server RSS          {measured['rss']['server'] / mib:8.0f} MiB (excluded)")
    cpu = measured["cpu"]
    print(
        f"CPU time                  orchestrator {cpu['orchestrator']:.1f} s, trainers "
        f"{cpu['trainers']:.1f} s, model server {cpu['server']:.1f} s"
    )


if __name__ == "__main__":
    main()
