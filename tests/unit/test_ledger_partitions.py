"""The pure part of the ledgers' partitioning: weeks, the horizon, coverage and a round's plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from tierflow_common.db.ledger_partitions import (
    GRACE,
    WEEK,
    Coverage,
    Partition,
    horizon,
    partition_name,
    plan,
    week_start,
)

NOW = datetime(2026, 12, 1, 7, 30, tzinfo=UTC)  # a Tuesday
MONDAY = datetime(2026, 11, 30, tzinfo=UTC)
DAYS_30 = timedelta(days=30)


def weekly(table: str, start: datetime, n: int) -> list[Partition]:
    weeks = [start + k * WEEK for k in range(n)]
    return [Partition(partition_name(table, w), w, w + WEEK) for w in weeks]


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)))
def test_a_week_starts_on_monday_at_midnight_utc_and_holds_its_time(t: datetime) -> None:
    t = t.replace(tzinfo=UTC)
    w = week_start(t)
    assert w <= t < w + WEEK
    assert (w.weekday(), w.hour, w.minute, w.second, w.microsecond) == (0, 0, 0, 0, 0)


def test_a_week_is_the_same_whatever_offset_the_time_is_written_with() -> None:
    late_sunday_utc = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)
    monday_in_beijing = late_sunday_utc.astimezone(timezone(timedelta(hours=8)))
    assert week_start(monday_in_beijing) == week_start(late_sunday_utc) == MONDAY


def test_the_horizon_is_the_start_of_the_week_holding_now_minus_retention() -> None:
    assert horizon(NOW, DAYS_30) == datetime(2026, 10, 26, tzinfo=UTC)  # 31 Oct is in that week
    assert partition_name("processed_events", MONDAY) == "processed_events_w20261130"


def test_coverage_merges_adjacent_partitions_and_leaves_gaps() -> None:
    legacy = Partition("t_legacy", None, MONDAY)
    far = Partition(
        "t_w20270104", datetime(2027, 1, 4, tzinfo=UTC), datetime(2027, 1, 11, tzinfo=UTC)
    )
    coverage = Coverage([*weekly("t", MONDAY, 2), legacy, far])
    assert coverage.covers(datetime(1997, 1, 1, tzinfo=UTC))  # legacy: from MINVALUE
    assert coverage.covers_span(datetime(1997, 1, 1, tzinfo=UTC), MONDAY + 2 * WEEK - GRACE)
    assert not coverage.covers(MONDAY + 2 * WEEK)  # the gap before the far week
    assert not coverage.covers_span(MONDAY, datetime(2027, 1, 5, tzinfo=UTC))
    assert coverage.covers_week(datetime(2027, 1, 4, tzinfo=UTC))
    assert not coverage.overlaps_week(MONDAY + 2 * WEEK)
    pending = Partition("t_w20261214", MONDAY + 2 * WEEK, MONDAY + 3 * WEEK, detach_pending=True)
    assert not Coverage([pending]).covers(MONDAY + 2 * WEEK)  # being detached: not for inserts


def test_a_round_creates_the_current_and_next_weeks_that_are_missing() -> None:
    existing = weekly("t", MONDAY, 1)
    p = plan(existing, now=NOW, retention=DAYS_30, ahead_weeks=2)
    assert p.create == [MONDAY + WEEK, MONDAY + 2 * WEEK]
    assert p.drop == []


def test_a_round_drops_the_weeks_that_ended_before_the_window_and_keeps_the_rest() -> None:
    existing = weekly("t", datetime(2026, 10, 12, tzinfo=UTC), 8)  # 12 Oct .. 7 Dec
    p = plan(existing, now=NOW, retention=DAYS_30, ahead_weeks=0)
    # now - 30 days - 1 h = 31 Oct 06:30: the weeks of 12 and 19 Oct ended before it; the week
    # of 26 Oct (the horizon's) still holds times within the window.
    assert [x.name for x in p.drop] == ["t_w20261012", "t_w20261019"]
    assert horizon(NOW, DAYS_30) == datetime(2026, 10, 26, tzinfo=UTC)


def test_a_week_that_left_the_window_within_the_grace_is_kept_an_hour_longer() -> None:
    week = weekly("t", datetime(2026, 10, 19, tzinfo=UTC), 1)  # ends Mon 26 Oct 00:00
    just_after = datetime(2026, 11, 25, 0, 30, tzinfo=UTC)  # 30 days and 30 minutes later
    assert plan(week, now=just_after, retention=DAYS_30, ahead_weeks=0).drop == []
    later = just_after + GRACE
    assert plan(week, now=later, retention=DAYS_30, ahead_weeks=0).drop == week


def test_the_legacy_partition_goes_once_its_end_left_the_window() -> None:
    legacy = [Partition("t_legacy", None, MONDAY)]
    assert plan(legacy, now=NOW, retention=DAYS_30, ahead_weeks=0).drop == []
    month_later = MONDAY + DAYS_30 + GRACE
    assert plan(legacy, now=month_later, retention=DAYS_30, ahead_weeks=0).drop == legacy
