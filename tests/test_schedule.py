"""Cron-style planning schedules and when the master plans."""

from __future__ import annotations

from datetime import datetime

import pytest

from facedex.config import ManagerSettings, Settings
from facedex.manager.master import Master
from facedex.manager.schedule import Schedule


def test_schedule_fields() -> None:
    sunday_midnight = Schedule("0 0 * * 0")
    assert sunday_midnight.matches(datetime(2026, 11, 29, 0, 0))  # a Sunday
    assert not sunday_midnight.matches(datetime(2026, 11, 29, 0, 1))
    assert not sunday_midnight.matches(datetime(2026, 11, 30, 0, 0))  # Monday
    every_15 = Schedule("*/15 9-17 * 1,6 1-5")
    assert every_15.matches(datetime(2026, 6, 1, 9, 45))  # Monday in June
    assert not every_15.matches(datetime(2026, 6, 1, 9, 46))
    assert not every_15.matches(datetime(2026, 6, 1, 18, 0))
    assert not every_15.matches(datetime(2026, 7, 1, 9, 0))
    assert Schedule("5/20 * * * *").fields[0] == frozenset({5, 25, 45})
    for bad in ("* * * *", "60 * * * *", "* * 0 * *", "*/0 * * * *", "mon * * * *", "* * * * 7"):
        with pytest.raises(ValueError):
            Schedule(bad)


def master(**indexing: object) -> Master:
    settings = Settings(indexing=ManagerSettings(**indexing))
    return Master(settings, None, None, None, None, "test")  # type: ignore[arg-type]


def test_due_by_period_and_by_schedule() -> None:
    by_period = master(planning_period_s=600)
    assert by_period.due(now=10_000, last=9_300) and not by_period.due(now=10_000, last=9_500)
    by_schedule = master(planning_period_s=1, planning_schedule="30 * * * *")
    at = datetime(2026, 11, 25, 10, 30, 20).timestamp()
    assert by_schedule.due(at, last=at - 3600)
    assert not by_schedule.due(at, last=at - 10)  # already ran in this minute
    assert not by_schedule.due(at + 60, last=at - 3600)  # 10:31 does not match, whatever the period says
