"""One analysis of a rollout: its checks as resolved PromQL queries, the verdict of each, the
outcome. Pure: the queries are run by the observer, their answers come back as data."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import Field

from mlcd.domain.spec import (
    BUILTIN_METRICS,
    MAX_QUERY,
    TEMPLATE_VARIABLES,
    Model,
    Rollout,
    RolloutMetric,
    duration_seconds,
)

# -- templates -------------------------------------------------------------------------------------

#: What a degradation trigger's query may name: the serving model, not a candidate.
DEGRADATION_VARIABLES = ("stable", "namespace", "interval")

_TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class TemplateError(ValueError):
    pass


def template_names(template: str) -> list[str]:
    """The variables a query names, in order; ``{{ x }}`` with an unknown x included."""
    return _TEMPLATE.findall(template)


def unknown_variables(template: str, allowed: Sequence[str] = TEMPLATE_VARIABLES) -> list[str]:
    return [name for name in template_names(template) if name not in allowed]


def resolve(template: str, values: Mapping[str, str]) -> str:
    """Fills ``{{ name }}`` in; an unknown name raises :class:`TemplateError`."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise TemplateError(f"unknown variable {{{{ {name} }}}} in {template!r}")
        return values[name]

    return _TEMPLATE.sub(fill, template)


@dataclass(frozen=True)
class Builtins:
    """Query templates of the router's own metrics, in the same variables as a user's query.

    ``requests`` counts the candidate's answers in the window (the samples of every verdict);
    ``success_rate`` is their share without a server error; ``latency_p99`` in seconds. The
    shadow ones measure mirrored requests: how many, the share whose predicted class differs
    from the stable model's, and the candidate's p99 latency on them."""

    requests: str
    success_rate: str
    latency_p99: str
    shadow_requests: str
    shadow_disagreement: str
    shadow_latency_p99: str


@dataclass(frozen=True)
class Targets:
    """What ``{{ canary }}`` and ``{{ stable }}`` stand for, as the router names them in its
    metrics, and the router's built-in queries."""

    namespace: str
    canary: str
    stable: str
    builtins: Builtins


QueryRole = Literal["value", "stable", "samples"]


@dataclass(frozen=True)
class PlannedQuery:
    """One query an analysis needs; the observer runs ``query`` and reports by that text."""

    metric: str
    role: QueryRole
    query: str


@dataclass(frozen=True)
class _Check:
    """One thing an analysis judges, before its queries are resolved."""

    metric: str
    template: str
    min: float | None = None
    max: float | None = None
    relative: bool = False
    max_increase: float | None = None
    dry_run: bool = False
    samples_template: str = ""
    min_samples: int = 0


SAMPLES = "requests"


def _checks(shadowing: bool, rollout: Rollout, builtins: Builtins) -> list[_Check]:
    if shadowing:
        shadow = rollout.shadow
        if shadow is None:  # the spec lost its shadow mid-phase: judge requests only
            return [_requests(builtins.shadow_requests, 1)]
        samples = builtins.shadow_requests
        checks = [
            _requests(samples, shadow.min_requests),
            _Check(
                "disagreement",
                builtins.shadow_disagreement,
                max=shadow.max_disagreement,
                samples_template=samples,
                min_samples=shadow.min_requests,
            ),
        ]
        if shadow.max_latency_p99 is not None:
            checks.append(
                _Check(
                    "latency-p99",
                    builtins.shadow_latency_p99,
                    max=duration_seconds(shadow.max_latency_p99),
                    samples_template=samples,
                    min_samples=shadow.min_requests,
                )
            )
        return checks
    samples = builtins.requests
    checks = [_requests(samples, rollout.min_samples)]
    for metric in rollout.metrics:
        checks.append(
            _Check(
                metric.name,
                _template_of(metric, builtins),
                min=metric.min,
                max=metric.max,
                relative=metric.relative_to == "stable",
                max_increase=metric.max_increase,
                dry_run=metric.dry_run,
                samples_template=samples,
                min_samples=rollout.min_samples,
            )
        )
    return checks


def _requests(template: str, least: int) -> _Check:
    # Too few requests is no verdict yet (inconclusive), never a failure of the candidate.
    return _Check(SAMPLES, template, samples_template=template, min_samples=least)


def _template_of(metric: RolloutMetric, builtins: Builtins) -> str:
    if metric.query is not None:
        return metric.query
    if metric.name == "success-rate":
        return builtins.success_rate
    if metric.name == "latency-p99":
        return builtins.latency_p99
    raise TemplateError(f"metric {metric.name!r} has no query and is not one of {BUILTIN_METRICS}")


def _values(targets: Targets, interval: str, *, for_stable: bool = False) -> dict[str, str]:
    return {
        "canary": targets.stable if for_stable else targets.canary,
        "stable": targets.stable,
        "namespace": targets.namespace,
        "interval": interval,
    }


# -- verdicts --------------------------------------------------------------------------------------


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def verdict(
    value: float | None,
    *,
    min: float | None = None,
    max: float | None = None,
    samples: float | None = None,
    min_samples: int = 0,
    stable: float | None = None,
    max_increase: float | None = None,
    relative: bool = False,
    error: str | None = None,
) -> Judgement:
    """Pass, fail or inconclusive, with the reason. No data, too few requests and an error are
    inconclusive: none of them is ever a pass. A NaN is no data."""
    if error is not None:
        return Judgement(Verdict.INCONCLUSIVE, f"query failed: {error}")
    if min_samples > 0:
        count = _number(samples)
        if count is None:
            return Judgement(Verdict.INCONCLUSIVE, "no requests in the interval")
        if count < min_samples:
            return Judgement(
                Verdict.INCONCLUSIVE,
                f"{_fmt(count)} requests, fewer than the {min_samples} a verdict needs",
            )
    number = _number(value)
    if number is None:
        return Judgement(Verdict.INCONCLUSIVE, "no data")
    if min is not None and number < min:
        return Judgement(Verdict.FAIL, f"{_fmt(number)} < min {_fmt(min)}")
    if max is not None and number > max:
        return Judgement(Verdict.FAIL, f"{_fmt(number)} > max {_fmt(max)}")
    if relative:
        base = _number(stable)
        if base is None:
            return Judgement(Verdict.INCONCLUSIVE, "no data for the stable model")
        increase = number - base
        allowed = max_increase or 0.0
        if increase > allowed:
            return Judgement(
                Verdict.FAIL,
                f"{_fmt(number)} exceeds stable {_fmt(base)} by {_fmt(increase)} "
                f"> maxIncrease {_fmt(allowed)}",
            )
        return Judgement(
            Verdict.PASS, f"{_fmt(number)} vs stable {_fmt(base)} (+{_fmt(increase)} allowed)"
        )
    bounds = [f">= {_fmt(min)}"] if min is not None else []
    bounds += [f"<= {_fmt(max)}"] if max is not None else []
    return Judgement(Verdict.PASS, " ".join([_fmt(number), " and ".join(bounds)]).strip())


# -- what an analysis records -------------------------------------------------------------------

MAX_REASON = 1024

VerdictName = Literal["pass", "fail", "inconclusive"]


class AnalysisResult(Model):
    """One metric of one analysis, with the numbers behind its verdict."""

    metric: str = Field(max_length=128, description="The metric (requests: the sample count).")
    query: str = Field(default="", max_length=MAX_QUERY, description="The query, resolved.")
    value: float | None = Field(default=None, description="Its value; none: no data.")
    stable_value: float | None = Field(
        default=None, description="The stable model's value (relativeTo: stable)."
    )
    samples: float | None = Field(
        default=None, description="Requests the candidate answered in the interval."
    )
    verdict: VerdictName = Field(description="pass, fail or inconclusive.")
    reason: str = Field(default="", max_length=MAX_REASON, description="Why, with the numbers.")
    dry_run: bool = Field(default=False, description="Recorded only; not acted on.")


class Analysis(Model):
    """One interval's analysis: the verdict of every metric and the outcome."""

    at: str = Field(max_length=64, description="When (RFC 3339).")
    verdict: VerdictName = Field(description="pass, fail or inconclusive, over every metric.")
    results: list[AnalysisResult] = Field(
        default_factory=list, max_length=64, description="Every metric's verdict."
    )


@dataclass(frozen=True)
class QueryResult:
    """One query's answer: a number, no data (None), or an error (never a pass)."""

    value: float | None = None
    error: str | None = None


# -- the analysis of one interval ----------------------------------------------------------------


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def analyse(
    rollout: Rollout,
    targets: Targets,
    results: Mapping[str, QueryResult] | None,
    now: dt.datetime,
    prometheus_online: bool = True,
    shadowing: bool = False,
) -> Analysis:
    """Every check of the phase (shadowing or a step) judged from the query results."""
    values = _values(targets, rollout.interval)
    out: list[AnalysisResult] = []
    for check in _checks(shadowing, rollout, targets.builtins):
        query = resolve(check.template, values)
        if not prometheus_online or results is None:
            out.append(
                AnalysisResult(
                    metric=check.metric,
                    query=query,
                    verdict="inconclusive",
                    reason="Prometheus unreachable",
                    dry_run=check.dry_run,
                )
            )
            continue
        got = results.get(query, QueryResult(error="not queried"))
        stable = QueryResult()
        if check.relative:
            stable_query = resolve(
                check.template, _values(targets, rollout.interval, for_stable=True)
            )
            stable = results.get(stable_query, QueryResult(error="not queried"))
        samples = QueryResult()
        if check.samples_template:
            samples = results.get(
                resolve(check.samples_template, values), QueryResult(error="not queried")
            )
        error = got.error or stable.error or samples.error
        judged = verdict(
            got.value,
            min=check.min,
            max=check.max,
            samples=samples.value,
            min_samples=check.min_samples,
            stable=stable.value,
            max_increase=check.max_increase,
            relative=check.relative,
            error=error,
        )
        out.append(
            AnalysisResult(
                metric=check.metric,
                query=query,
                value=_number(got.value),
                stable_value=_number(stable.value) if check.relative else None,
                samples=_number(samples.value if check.samples_template else got.value),
                verdict=judged.verdict.value,
                reason=judged.reason[:MAX_REASON],
                dry_run=check.dry_run,
            )
        )
    return Analysis(at=iso(now), verdict=overall(out).value, results=out)


def overall(results: Sequence[AnalysisResult]) -> Verdict:
    """Any failure fails; else anything inconclusive holds; dry runs count for nothing. An
    analysis with nothing to judge is inconclusive: nothing is never a pass."""
    acting = [r for r in results if not r.dry_run]
    if any(r.verdict == "fail" for r in acting):
        return Verdict.FAIL
    if not acting or any(r.verdict == "inconclusive" for r in acting):
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


def planned_queries(rollout: Rollout, targets: Targets, shadowing: bool) -> list[PlannedQuery]:
    """The resolved queries an analysis needs, each distinct text once."""
    planned: list[PlannedQuery] = []
    values = _values(targets, rollout.interval)
    for check in _checks(shadowing, rollout, targets.builtins):
        planned.append(PlannedQuery(check.metric, "value", resolve(check.template, values)))
        if check.relative:
            stable = resolve(check.template, _values(targets, rollout.interval, for_stable=True))
            planned.append(PlannedQuery(check.metric, "stable", stable))
        if check.samples_template:
            samples = resolve(check.samples_template, values)
            planned.append(PlannedQuery(check.metric, "samples", samples))
    unique: dict[str, PlannedQuery] = {}
    for query in planned:
        unique.setdefault(query.query, query)
    return list(unique.values())
