"""Tune: Katib's algorithms on Optuna's samplers (and scikit-optimize for bayesianoptimization),
trials run as real processes, ``parallelTrials`` at a time."""

from __future__ import annotations

import csv
import json
import math
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from mlcd.domain import numbers, search
from mlcd.domain.datacheck import holdout_split
from mlcd.domain.records import TrialRecord
from mlcd.domain.spec import Parameter, Tuning, duration_seconds
from mlcd.errors import StageFailed
from mlcd.pipeline.context import RunContext
from mlcd.pipeline.stages import cpus, load_npz, save_npz
from mlcd.pipeline.trainer import ProcessGroups, run_trainer

Params = dict[str, search.ParamValue]


class Suggester(Protocol):
    def ask(self) -> tuple[Any, Params]: ...

    def tell(self, handle: Any, value: float | None) -> None: ...


class OptunaSuggester:
    def __init__(self, tuning: Tuning) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.params = tuning.parameters
        self.study = optuna.create_study(
            direction=tuning.objective.type, sampler=self._sampler(tuning)
        )

    def _sampler(self, tuning: Tuning) -> Any:
        from optuna import samplers

        seed = tuning.seed
        startup = max(1, min(10, tuning.max_trials // 3))
        match tuning.algorithm:
            case "random":
                return samplers.RandomSampler(seed=seed)
            case "grid":
                space = {p.name: search.grid_values(p) for p in tuning.parameters}
                return samplers.GridSampler(space, seed=seed)
            case "tpe":
                return samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
            case "multivariate-tpe":
                return samplers.TPESampler(
                    seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True
                )
            case "cmaes":
                return samplers.CmaEsSampler(seed=seed, n_startup_trials=startup)
            case "sobol":
                return samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
        raise ValueError(f"no Optuna sampler for {tuning.algorithm}")

    def ask(self) -> tuple[Any, Params]:
        trial = self.study.ask()
        return trial, {p.name: self._suggest(trial, p) for p in self.params}

    @staticmethod
    def _suggest(trial: Any, p: Parameter) -> search.ParamValue:
        log = p.distribution == "logUniform"
        if p.type == "double":
            step = None if log else p.step
            return float(trial.suggest_float(p.name, p.min, p.max, step=step, log=log))
        if p.type == "int":
            step = 1 if log else int(p.step or 1)
            return int(
                trial.suggest_int(p.name, int(p.min or 0), int(p.max or 0), step=step, log=log)
            )
        choices = [search.typed(p, v) for v in p.values or []]
        return search.typed(p, trial.suggest_categorical(p.name, choices))

    def tell(self, handle: Any, value: float | None) -> None:
        import optuna

        if value is None:
            self.study.tell(handle, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(handle, value)


class SkoptSuggester:
    """Katib's bayesianoptimization is scikit-optimize's Gaussian-process optimizer."""

    def __init__(self, tuning: Tuning) -> None:
        from skopt import Optimizer
        from skopt.space import Categorical, Integer, Real

        dims: list[Any] = []
        for p in tuning.parameters:
            prior = "log-uniform" if p.distribution == "logUniform" else "uniform"
            if p.type == "double":
                dims.append(Real(p.min, p.max, prior=prior, name=p.name))
            elif p.type == "int":
                dims.append(Integer(int(p.min or 0), int(p.max or 0), prior=prior, name=p.name))
            else:
                dims.append(Categorical([search.typed(p, v) for v in p.values or []], name=p.name))
        self.params = tuning.parameters
        self.sign = -1.0 if tuning.objective.type == "maximize" else 1.0
        self.optimizer = Optimizer(
            dims,
            base_estimator="GP",
            acq_func="gp_hedge",
            n_initial_points=max(1, min(10, tuning.max_trials // 3)),
            random_state=tuning.seed,
        )
        self.lock = threading.Lock()

    def ask(self) -> tuple[Any, Params]:
        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            point = self.optimizer.ask()
        return point, {p.name: search.typed(p, v) for p, v in zip(self.params, point, strict=True)}

    def tell(self, handle: Any, value: float | None) -> None:
        if value is None:
            return
        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.optimizer.tell(handle, self.sign * value)


def make_suggester(tuning: Tuning) -> Suggester:
    if tuning.algorithm == "bayesianoptimization":
        return SkoptSuggester(tuning)
    return OptunaSuggester(tuning)


class Tuner:
    def __init__(self, ctx: RunContext, tuning: Tuning, train: str, validation: str) -> None:
        self.ctx, self.tuning = ctx, tuning
        self.train, self.validation = train, validation
        self.spec = ctx.pipeline.spec
        self.work = ctx.work_dir("tune")
        self.groups = ProcessGroups(ctx.dir / "procs")
        self.cancel = threading.Event()
        self.threads = max(1, cpus() // tuning.parallel_trials)

    def trial(self, number: int, params: Params) -> TrialRecord:
        objective = self.tuning.objective
        self.ctx.events.emit("trial-start", number=number, params=params)
        folder = self.work / f"trial-{number}"
        folder.mkdir(exist_ok=True)
        env = {
            "MLCD_STAGE": "trial",
            "MLCD_TRAIN_DATA": self.train,
            "MLCD_VALIDATION_DATA": self.validation,
            "MLCD_MODEL_DIR": str(folder),
            "MLCD_METRICS_FILE": str(folder / "metrics.json"),
            "MLCD_RUN_ID": self.ctx.run_id,
            "MLCD_TRIAL_ID": f"{self.ctx.run_id}-{number}",
            "MLCD_SEED": str(self.tuning.seed + number),
        }
        args = [*self.tuning.trial_args, *search.trainer_args(params)]
        result = run_trainer(
            self.spec.trainer,
            args=args,
            env=env,
            log_path=self.work / f"trial-{number}.log",
            groups=self.groups,
            timeout=duration_seconds(self.tuning.trial_timeout),
            threads=self.threads,
            cancel=self.cancel,
        )
        record = TrialRecord(
            number=number, params=params, state="failed", seconds=round(result.seconds, 2)
        )
        if not result.ok:
            record = record.model_copy(
                update={
                    "reason": result.failure(),
                    "state": "pruned" if result.cancelled else "failed",
                }
            )
        elif objective.metric not in result.metrics.curves:
            tail = "\n".join(result.stderr_tail[-5:])
            record = record.model_copy(
                update={
                    "reason": f"printed no {objective.metric}"
                    + (f"; stderr:\n{tail}" if tail else "")
                }
            )
        else:
            value = result.metrics.curves[objective.metric].reduce(search.strategy(objective))
            if not math.isfinite(value):
                reason = f"{objective.metric} is {numbers.name(value)}: not a value to rank"
                record = record.model_copy(update={"reason": reason})
            else:
                record = record.model_copy(update={"state": "succeeded", "value": value})
        self.ctx.events.emit(
            "trial-end",
            number=number,
            state=record.state,
            value=record.value,
            reason=record.reason,
            seconds=record.seconds,
        )
        return record

    def search(self) -> tuple[list[TrialRecord], str]:
        tuning = self.tuning
        suggester = make_suggester(tuning)
        budget = tuning.max_trials
        if tuning.algorithm == "grid":
            budget = min(budget, search.grid_size(tuning.parameters))
        trials: list[TrialRecord] = []
        failed, started, best = 0, 0, None
        stop_reason = f"maxTrials {budget} reached"
        running: dict[Future[TrialRecord], Any] = {}
        with self.groups.handling_signals(), ThreadPoolExecutor(tuning.parallel_trials) as pool:
            try:
                while True:
                    while (
                        not self.cancel.is_set()
                        and stop_reason.startswith("maxTrials")
                        and len(running) < tuning.parallel_trials
                        and started < budget
                    ):
                        handle, params = suggester.ask()
                        running[pool.submit(self.trial, started, params)] = handle
                        started += 1
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        handle = running.pop(future)
                        record = future.result()
                        trials.append(record)
                        suggester.tell(
                            handle, record.value if record.state == "succeeded" else None
                        )
                        if record.state == "failed":
                            failed += 1
                            if failed > tuning.max_failed_trials:
                                stop_reason = (
                                    f"{failed} trials failed, more than "
                                    f"maxFailedTrials {tuning.max_failed_trials}"
                                )
                                self.cancel.set()
                        elif record.value is not None:
                            if search.is_better(record.value, best, tuning.objective):
                                best = record.value
                            if search.goal_reached(
                                record.value, tuning.objective
                            ) and stop_reason.startswith("maxTrials"):
                                stop_reason = (
                                    f"goal {tuning.objective.goal} reached by trial {record.number}"
                                )
            except BaseException:
                self.cancel.set()
                raise
        trials.sort(key=lambda t: t.number)
        return trials, stop_reason


def best_trial(trials: list[TrialRecord], tuning: Tuning) -> TrialRecord | None:
    best: TrialRecord | None = None
    for trial in trials:
        if (
            trial.state == "succeeded"
            and trial.value is not None
            and search.is_better(trial.value, best.value if best else None, tuning.objective)
        ):
            best = trial
    return best


def write_trials(ctx: RunContext, trials: list[TrialRecord], tuning: Tuning) -> None:
    folder = ctx.work_dir("tune")
    names = [p.name for p in tuning.parameters]
    with (folder / "trials.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", *names, tuning.objective.metric, "state", "seconds", "reason"])
        for t in trials:
            writer.writerow(
                [
                    t.number,
                    *(t.params.get(n) for n in names),
                    t.value,
                    t.state,
                    t.seconds,
                    (t.reason or "").splitlines()[0] if t.reason else "",
                ]
            )


def run(ctx: RunContext, train_path: str) -> str:
    """Returns the best parameters as JSON (``{}`` when the spec has no tuning)."""
    tuning = ctx.pipeline.spec.tuning
    with ctx.stage("tune") as outcome:
        if tuning is None:
            outcome["skipped"] = True
            return "{}"
        started = time.time()
        x, y = load_npz(train_path)
        fit_idx, val_idx = holdout_split(len(y), tuning.validation_fraction, tuning.seed)
        work = ctx.work_dir("tune")
        save_npz(work / "trial-train.npz", x=x[fit_idx], y=y[fit_idx])
        save_npz(work / "trial-validation.npz", x=x[val_idx], y=y[val_idx])
        tuner = Tuner(
            ctx, tuning, str(work / "trial-train.npz"), str(work / "trial-validation.npz")
        )
        trials, stop_reason = tuner.search()
        write_trials(ctx, trials, tuning)
        best = best_trial(trials, tuning)
        outcome.update(
            trials=[t.model_dump(by_alias=True) for t in trials],
            objective=tuning.objective.model_dump(by_alias=True),
            algorithm=tuning.algorithm,
            parameters=[p.model_dump(by_alias=True, exclude_none=True) for p in tuning.parameters],
            stopReason=stop_reason,
            best=best.model_dump(by_alias=True) if best else None,
            searchSeconds=round(time.time() - started, 2),
        )
        failures = [t for t in trials if t.state == "failed"]
        if len(failures) > tuning.max_failed_trials:
            last = failures[-1]
            raise StageFailed(f"tuning failed: {stop_reason}; trial {last.number} {last.reason}")
        if best is None:
            raise StageFailed(f"tuning failed: no trial succeeded ({stop_reason})")
        return json.dumps(best.params)
