"""Schedules with CronJob's semantics, on an explicit clock."""

from __future__ import annotations

import datetime as dt

import pytest

from mlcd.domain.schedule import due, next_after

UTC = dt.UTC


def t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "last", "now", "tz", "deadline", "expected", "too_late", "missed", "next_time"),
    [
        # Nothing due yet.
        (
            "0 3 * * *",
            "2026-11-23 03:00",
            "2026-11-23 12:00",
            None,
            None,
            None,
            False,
            0,
            "2026-11-24 03:00",
        ),
        # Exactly one due.
        (
            "0 3 * * *",
            "2026-11-22 03:00",
            "2026-11-23 03:00:30",
            None,
            None,
            "2026-11-23 03:00",
            False,
            0,
            "2026-11-24 03:00",
        ),
        # A three-day outage fires one run, the latest, and counts the others as missed.
        (
            "0 3 * * *",
            "2026-11-20 03:00",
            "2026-11-23 12:00",
            None,
            None,
            "2026-11-23 03:00",
            False,
            2,
            "2026-11-24 03:00",
        ),
        # Past its starting deadline: recorded, not started.
        (
            "0 3 * * *",
            "2026-11-22 03:00",
            "2026-11-23 03:10",
            None,
            300,
            "2026-11-23 03:00",
            True,
            0,
            "2026-11-24 03:00",
        ),
        # Within the deadline.
        (
            "0 3 * * *",
            "2026-11-22 03:00",
            "2026-11-23 03:04",
            None,
            300,
            "2026-11-23 03:00",
            False,
            0,
            "2026-11-24 03:00",
        ),
        # 03:00 in Tokyo is 18:00 UTC the day before.
        (
            "0 3 * * *",
            "2026-11-22 12:00",
            "2026-11-22 18:00:05",
            "Asia/Tokyo",
            None,
            "2026-11-22 18:00",
            False,
            0,
            "2026-11-23 18:00",
        ),
        (
            "0 3 * * *",
            "2026-11-22 12:00",
            "2026-11-22 17:59",
            "Asia/Tokyo",
            None,
            None,
            False,
            0,
            "2026-11-22 18:00",
        ),
        # Every minute, an hour of outage: one run.
        (
            "* * * * *",
            "2026-11-23 10:00",
            "2026-11-23 11:00:10",
            None,
            None,
            "2026-11-23 11:00",
            False,
            59,
            "2026-11-23 11:01",
        ),
        # Macros.
        (
            "@hourly",
            "2026-11-23 10:00",
            "2026-11-23 11:00:01",
            None,
            None,
            "2026-11-23 11:00",
            False,
            0,
            "2026-11-23 12:00",
        ),
    ],
)
def test_due(cron, last, now, tz, deadline, expected, too_late, missed, next_time):
    result = due(cron, t(now), t(last), tz, deadline)
    assert result.time == (t(expected) if expected else None)
    assert result.too_late is too_late
    assert result.missed == missed
    assert result.next_time == t(next_time)


def test_a_year_long_outage_still_fires_only_the_latest():
    result = due("* * * * *", t("2026-11-23 12:00:30"), t("2025-11-23 00:00"))
    assert result.time == t("2026-11-23 12:00")
    assert result.next_time == t("2026-11-23 12:01")


def test_daylight_saving_is_the_zone_s_business():
    # 02:30 does not exist in Berlin on 2026-03-29; croniter moves it, CronJob-like.
    nxt = next_after("30 2 * * *", t("2026-03-28 12:00"), "Europe/Berlin")
    assert nxt.tzinfo is not None
    assert nxt > t("2026-03-28 12:00")
