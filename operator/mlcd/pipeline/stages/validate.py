"""Validate the data: readable, the declared schema, sane values, enough of each class, and
no drift against the data the serving model learned from. Bad data ends the run rejected."""

from __future__ import annotations

import zipfile

from mlcd.artifacts import open_dataset, sha256_file
from mlcd.domain import datacheck
from mlcd.domain.records import DataReport
from mlcd.pipeline.context import RunContext
from mlcd.pipeline.stages import load_npz, save_npz


def run(ctx: RunContext, train_path: str, holdout_path: str) -> bool:
    spec = ctx.pipeline.spec
    schema = spec.dataset.schema_
    with ctx.stage("validate") as outcome:
        fetched = open_dataset(spec.dataset).fetch(ctx.work_dir("validate"))
        report = DataReport(ok=False, sha256=sha256_file(fetched.path), version=fetched.version)
        try:
            x, y = load_npz(fetched.path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            problems = [f"cannot read {spec.dataset.uri} as npz with arrays x and y: {exc}"]
        else:
            problems = datacheck.sanity_problems(x, y, schema)
        drift: dict[str, float] = {}
        if not problems:
            report = report.model_copy(
                update={
                    "samples": len(y),
                    "class_counts": datacheck.class_counts(y, schema.num_classes),
                }
            )
            baseline = ctx.baseline
            if baseline is not None and baseline.data_stats:
                reference = datacheck.DataStats.model_validate(baseline.data_stats)
                current = datacheck.statistics(x, y, schema, edges=reference.edges)
                drift = datacheck.drift(current, reference)
                limit = spec.dataset.drift.max_psi
                problems += [
                    f"{name} {value:.3f} > maxPsi {limit:g} against the data of serving "
                    f"version {baseline.version}"
                    for name, value in drift.items()
                    if value > limit
                ]
            outcome["stats"] = datacheck.statistics(x, y, schema).model_dump(by_alias=True)
        report = report.model_copy(
            update={"ok": not problems, "problems": problems, "drift": drift}
        )
        outcome["data"] = report.model_dump(by_alias=True)
        if problems:
            outcome["status"] = "rejected"
            outcome["reason"] = "data rejected: " + "; ".join(problems)
            return False
        train_idx, holdout_idx = datacheck.holdout_split(
            len(y), spec.evaluation.holdout_fraction, spec.evaluation.seed
        )
        save_npz(train_path, x=x[train_idx], y=y[train_idx])
        save_npz(holdout_path, x=x[holdout_idx], y=y[holdout_idx])
        outcome["split"] = {"train": len(train_idx), "holdout": len(holdout_idx)}
        return True
