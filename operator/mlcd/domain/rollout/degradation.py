"""The degradation trigger (``triggers.onDegradation``) as a pure debounce."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from mlcd.domain.rollout.analysis import Targets, iso, parse_time, resolve
from mlcd.domain.spec import Degradation, Model, duration_seconds

# -- the degradation trigger -----------------------------------------------------------------------


class DegradationWatch(Model):
    """What the degradation trigger remembers between evaluations (kept in status)."""

    since: str | None = Field(
        default=None, max_length=64, description="Since when the condition has held."
    )
    last_fired: str | None = Field(
        default=None, max_length=64, description="When it last started a run."
    )


def degradation_query(trigger: Degradation, targets: Targets) -> str:
    """The trigger's query with the serving model's names filled in."""
    values = {"stable": targets.stable, "namespace": targets.namespace}
    values["interval"] = trigger.interval
    return resolve(trigger.query, values)


def watch_degradation(
    watch: DegradationWatch,
    trigger: Degradation,
    holds: bool | None,
    run_active: bool,
    now: dt.datetime,
) -> tuple[DegradationWatch, bool]:
    """One evaluation of ``triggers.onDegradation``: the new memory, and whether to start a run.

    ``holds`` is whether the query returned a sample (an alert's expression holds), or None when
    it could not be evaluated (Prometheus down, a query error): that is no evidence either way,
    so nothing changes and nothing fires. A run starts when the condition has held for ``for``,
    no run is in flight, and the last one started at least ``cooldown`` ago; after it, the
    condition must hold for ``for`` again."""
    if holds is None:
        return watch, False
    if not holds:
        return watch.model_copy(update={"since": None}), False
    since = parse_time(watch.since) if watch.since else now
    held = now - since >= dt.timedelta(seconds=duration_seconds(trigger.for_))
    cooled = watch.last_fired is None or now - parse_time(watch.last_fired) >= dt.timedelta(
        seconds=duration_seconds(trigger.cooldown)
    )
    if held and cooled and not run_active:
        return DegradationWatch(since=None, last_fired=iso(now)), True
    return watch.model_copy(update={"since": iso(since)}), False
