"""Builds the run's report from its stage records; it opens without Kubeflow's UI."""

from __future__ import annotations

import html
import json
from typing import Any

from mlcd.domain import numbers
from mlcd.domain.records import STAGES
from mlcd.report import charts

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9rem}td,th{padding:.25rem .6rem;border:1px solid #ddd;
text-align:left}.ok{color:#176d2c;font-weight:600}.bad{color:#b3261e;font-weight:600}
.muted{color:#777}svg{margin:.5rem 1rem .5rem 0;vertical-align:top}pre{background:#f6f6f6;
padding:.6rem;overflow:auto;font-size:.8rem}
"""


def _table(rows: list[list[Any]], head: list[str]) -> str:
    out = ["<table><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return numbers.name(value)
    return "" if value is None else str(value)


def _status(record: dict[str, Any] | None) -> str:
    if record is None:
        return '<span class="muted">not run</span>'
    status = record.get("status", "?")
    css = {"succeeded": "ok", "pending": "muted"}.get(status, "bad")
    reason = record.get("reason")
    text = f'<span class="{css}">{html.escape(status)}</span>'
    return text + (f" — {html.escape(str(reason).splitlines()[0])}" if reason else "")


def _serving(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The serve stage's outcome, as the run's record tells it: the loop serves after the
    pipeline, so no stage record of the pipeline has it."""
    if not result:
        return None
    outcome, stage = result.get("result"), result.get("stage")
    version = (result.get("model") or {}).get("version")
    if outcome == "promoted":
        return {"status": "succeeded", "reason": f"version {version} serving"}
    if stage != "serve":
        return None
    # Exported (or still "running" after export) with no reason: serving comes next.
    if outcome in ("running", "exported") and not result.get("reason"):
        return {"status": "pending", "reason": f"version {version} is served next"}
    return {"status": "failed", "reason": result.get("reason")}


def build(
    stages: dict[str, dict[str, Any] | None], title: str, result: dict[str, Any] | None = None
) -> str:
    """``stages`` maps each stage to its record (None: not run); ``result`` is the run's
    record (a RunRecord as JSON), which also tells how serving went."""
    records = {stage: stages.get(stage) for stage in STAGES}
    if records["serve"] is None:
        records["serve"] = _serving(result)
    parts = [
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style><h1>{html.escape(title)}</h1>",
    ]
    if result:
        css = {"promoted": "ok", "rejected": "bad", "failed": "bad"}.get(
            result.get("result", ""), "muted"
        )
        parts.append(
            f'<p>Result: <span class="{css}">{html.escape(str(result.get("result")))}'
            f"</span> {html.escape(str(result.get('reason') or ''))}</p>"
        )
    parts.append("<h2>Stages</h2>")
    parts.append("<table><tr><th>stage</th><th>outcome</th><th>seconds</th></tr>")
    for stage, rec in records.items():
        seconds = _fmt(rec.get("seconds")) if rec else ""
        parts.append(f"<tr><td>{stage}</td><td>{_status(rec)}</td><td>{seconds}</td></tr>")
    parts.append("</table>")

    validate = records["validate"]
    if validate and validate.get("data"):
        data = validate["data"]
        parts.append("<h2>Data</h2>")
        rows = [
            ["samples", data.get("samples")],
            ["sha256", data.get("sha256")],
            ["version", data.get("version")],
            ["class counts", ", ".join(map(str, data.get("classCounts", [])))],
        ]
        rows += [[f"drift {k}", v] for k, v in (data.get("drift") or {}).items()]
        rows += [["problem", p] for p in data.get("problems", [])]
        parts.append(_table(rows, ["", ""]))

    tune = records["tune"]
    if tune and tune.get("trials"):
        trials = tune["trials"]
        objective = tune.get("objective", {}).get("metric", "objective")
        names = sorted({k for t in trials for k in t.get("params", {})})
        parts.append(f"<h2>Tuning ({html.escape(str(tune.get('algorithm')))})</h2>")
        parts.append(f"<p>{html.escape(str(tune.get('stopReason', '')))}</p>")
        logs = {
            p.get("name")
            for p in tune.get("parameters") or []
            if p.get("distribution") == "logUniform"
        }
        chart = charts.trials(trials, names, objective, {str(n) for n in logs})
        parts.append(f'<div class="charts">{chart}</div>')
        rows = [
            [
                t["number"],
                *(t["params"].get(n) for n in names),
                t.get("value"),
                t["state"],
                t.get("seconds"),
                (t.get("reason") or "").splitlines()[0] if t.get("reason") else "",
            ]
            for t in trials
        ]
        parts.append(_table(rows, ["trial", *names, objective, "state", "seconds", "reason"]))

    train = records["train"]
    if train:
        parts.append("<h2>Training</h2>")
        parts.append(
            _table(
                [[k, v] for k, v in (train.get("params") or {}).items()]
                + [["workers", train.get("workers")]],
                ["parameter", "value"],
            )
        )
        if train.get("curves"):
            parts.append(charts.curves(train["curves"], train.get("steps")))

    evaluate = records["evaluate"]
    if evaluate and evaluate.get("metrics"):
        parts.append("<h2>Evaluation on the holdout</h2>")
        parts.append(_table([[k, v] for k, v in evaluate["metrics"].items()], ["metric", "value"]))
        if evaluate.get("parity"):
            parity = evaluate["parity"]
            parts.append(
                f"<p>ONNX parity: max |onnx − trained| = "
                f"{_fmt(numbers.number(parity['maxAbsDifference']))} "
                f"(tolerance {_fmt(numbers.number(parity['tolerance']))})</p>"
            )
        parts.append(charts.confusion(evaluate["confusion"]))
        roc = evaluate.get("roc") or {}
        if roc.get("fpr"):
            auc = numbers.number(evaluate["metrics"].get("roc-auc"))
            parts.append(charts.roc(roc["fpr"], roc["tpr"], auc))
        per_class = evaluate.get("perClass") or []
        parts.append(
            _table(
                [
                    [c["label"], c["precision"], c["recall"], c["f1"], c["support"]]
                    for c in per_class
                ],
                ["class", "precision", "recall", "f1", "support"],
            )
        )

    gate = records["gate"]
    if gate and gate.get("verdict"):
        verdict = gate["verdict"]
        css = "ok" if verdict.get("passed") else "bad"
        parts.append("<h2>Gate</h2>")
        parts.append(
            f'<p class="{css}">{"passed" if verdict.get("passed") else "refused"}: '
            f"{html.escape(str(verdict.get('reason')))}</p>"
        )
        parts.append(
            _table(
                [[c["name"], c["passed"], c["detail"]] for c in verdict.get("checks", [])],
                ["check", "passed", "detail"],
            )
        )

    export = records["export"]
    if export and export.get("model"):
        parts.append("<h2>Lineage</h2>")
        model = export["model"]
        parts.append(
            _table(
                [["version", model["version"]], ["uri", model["uri"]], ["sha256", model["sha256"]]],
                ["", ""],
            )
        )
    if result:
        parts.append(
            "<h2>Result record</h2><pre>"
            + html.escape(json.dumps(numbers.json_safe(result), indent=2, default=str))
            + "</pre>"
        )
    return "\n".join(parts)
