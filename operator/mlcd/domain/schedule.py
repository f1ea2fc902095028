"""Cron schedules with CronJob's semantics: time zones, a starting deadline, and at most one
missed run after an outage."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from croniter import croniter

_MAX_MISSED = 1000  # beyond this many missed times only the latest matters anyway


@dataclass(frozen=True)
class Due:
    """What the schedule says at ``now``."""

    #: The most recent scheduled time in (last, now], if any: the run to start.
    time: dt.datetime | None
    #: The time is past its starting deadline: record it, start nothing.
    too_late: bool
    #: Scheduled times in (last, now] that were skipped because a later one exists.
    missed: int
    #: The next scheduled time after ``now``.
    next_time: dt.datetime


def _zone(time_zone: str | None) -> dt.tzinfo:
    return zoneinfo.ZoneInfo(time_zone) if time_zone else dt.UTC


def due(
    schedule: str,
    now: dt.datetime,
    last: dt.datetime,
    time_zone: str | None = None,
    starting_deadline_seconds: int | None = None,
) -> Due:
    """``last`` is the last scheduled time acted on (or the resource's creation time)."""
    zone = _zone(time_zone)
    local_now = now.astimezone(zone)
    times: list[dt.datetime] = []
    it = croniter(schedule, last.astimezone(zone))
    while True:
        t = it.get_next(dt.datetime)
        if t > local_now:
            next_time = t
            break
        times.append(t)
        if len(times) > _MAX_MISSED:
            # A very long outage: jump to the last scheduled time before now.
            back = croniter(schedule, local_now).get_prev(dt.datetime)
            times = [back]
            next_time = croniter(schedule, local_now).get_next(dt.datetime)
            break
    if not times:
        return Due(None, False, 0, next_time.astimezone(dt.UTC))
    latest = times[-1].astimezone(dt.UTC)
    late = (
        starting_deadline_seconds is not None
        and (now - latest).total_seconds() > starting_deadline_seconds
    )
    return Due(latest, late, len(times) - 1, next_time.astimezone(dt.UTC))


def next_after(schedule: str, now: dt.datetime, time_zone: str | None = None) -> dt.datetime:
    zone = _zone(time_zone)
    nxt: dt.datetime = croniter(schedule, now.astimezone(zone)).get_next(dt.datetime)
    return nxt.astimezone(dt.UTC)
