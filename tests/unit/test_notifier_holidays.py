"""Holiday care and the satisfaction survey as pure scheduling rules (hypothesis for the
calendar arithmetic), and the playbook file's errors for them (file, line, column, field)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow_common.config_file import ConfigProblems
from tierflow_notifier.adapters.playbooks_file import load_playbook
from tierflow_notifier.domain.playbooks import (
    ActionSpec,
    CareCompletedTrigger,
    Holiday,
    HolidayTrigger,
    Rule,
)
from tierflow_notifier.domain.schedules import (
    CustomerFacts,
    care_completed_entry,
    fire,
    holiday_entry,
    next_holiday,
)

ZONES = ["UTC", "Asia/Shanghai", "America/New_York", "Europe/London", "Pacific/Kiritimati"]
MESSAGE = ActionSpec(kind="care_message", priority=4, priority_class="marketing")
CALENDAR = (Holiday("new-year", 1, 1), Holiday("leap", 2, 29), Holiday("once", 3, 8, 2027))
T0 = datetime(2026, 12, 31, 15, 0, tzinfo=UTC)

yearly = st.lists(
    st.builds(
        lambda m, d, n: Holiday(f"h{n}", m, d),
        st.integers(1, 12),
        st.integers(1, 28),
        st.integers(0, 99),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda h: h.name,
)


def _day_of(h: Holiday, year: int) -> date:
    if h.year is not None:
        return date(h.year, h.month, h.day)
    try:
        return date(year, h.month, h.day)
    except ValueError:
        return date(year, 2, 28)


@settings(max_examples=300, deadline=None)
@given(yearly, st.sampled_from(ZONES), st.integers(0, 3 * 365 * 24), st.integers(0, 23))
def test_the_next_holiday_is_the_first_one_after_in_the_customers_zone(
    holidays: list[Holiday], zone: str, hours: int, hour: int
) -> None:
    after = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hours)
    at = time(hour, 0)
    found = next_holiday(tuple(holidays), at, zone, after)
    assert found is not None, "a yearly calendar always has a next day"
    when, holiday, day = found
    assert when > after
    assert when - after <= timedelta(days=367)
    local = when.astimezone(ZoneInfo(zone))
    assert local.date() == day == _day_of(holiday, day.year)
    # No holiday moment of the calendar falls strictly between `after` and the one found.
    year = after.astimezone(ZoneInfo(zone)).year
    for h in holidays:
        for y in (year, year + 1):
            moment = datetime.combine(_day_of(h, y), at, tzinfo=ZoneInfo(zone)).astimezone(UTC)
            assert not after < moment < when, (h, moment, when)


def test_a_yearly_29_february_is_the_28th_and_a_one_off_day_comes_once() -> None:
    rule = Rule("holiday", HolidayTrigger(time(9, 0), CALENDAR), MESSAGE)
    facts = CustomerFacts(timezone="Asia/Shanghai")
    entry = holiday_entry(rule, "c1", "Asia/Shanghai", T0)
    assert entry is not None
    # 1 January 09:00 in Shanghai is 01:00 UTC (after T0 = 31 Dec 15:00 UTC).
    assert entry.due_at == datetime(2027, 1, 1, 1, 0, tzinfo=UTC)
    seen: list[tuple[str, date]] = []
    for _ in range(5):
        assert entry is not None
        action, nxt = fire(entry, rule, facts, entry.due_at)
        assert action is not None
        again, _ = fire(entry, rule, facts, entry.due_at + timedelta(hours=1))
        assert again is not None
        assert again.action_id == action.action_id
        assert action.not_before == entry.due_at
        assert action.context == {"holiday": entry.ref}
        seen.append((str(entry.ref), date.fromisoformat(action.explanation["date"])))
        entry = nxt
    assert seen == [
        ("new-year", date(2027, 1, 1)),
        ("leap", date(2027, 2, 28)),
        ("once", date(2027, 3, 8)),
        ("new-year", date(2028, 1, 1)),
        ("leap", date(2028, 2, 29)),
    ]
    only_once = Rule("once", HolidayTrigger(time(9, 0), (CALENDAR[2],)), MESSAGE)
    assert holiday_entry(only_once, "c1", "UTC", datetime(2027, 3, 9, tzinfo=UTC)) is None


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["complaint_resolved", "revisit_done", "complaint"]),
    st.text(alphabet="abc-123", min_size=1, max_size=12),
    st.integers(1, 96),
)
def test_a_survey_follows_each_resolved_complaint_or_done_task_once(
    kind: str, reference: str, hours: int
) -> None:
    trigger = CareCompletedTrigger(
        timedelta(hours=hours), frozenset({"complaint_resolved", "revisit_done"})
    )
    survey = Rule("survey", trigger, MESSAGE)
    entry = care_completed_entry(survey, "c1", kind, reference, T0)
    if kind == "complaint":
        assert entry is None  # a complaint being raised is no completion
        return
    assert entry is not None
    assert entry.due_at == T0 + timedelta(hours=hours)
    action, nxt = fire(entry, survey, CustomerFacts(), entry.due_at)
    assert action is not None
    assert nxt is None
    again = care_completed_entry(survey, "c1", kind, reference, T0 + timedelta(days=1))
    assert again is not None
    assert again.schedule_id == entry.schedule_id
    refired, _ = fire(again, survey, CustomerFacts(), again.due_at)
    assert refired is not None
    assert refired.action_id == action.action_id
    about = "complaint_id" if kind == "complaint_resolved" else "completed_action_id"
    assert action.context == {about: reference}
    assert action.explanation["trigger"] == "care_completed"


PLAYBOOK = """playbook_version: x
holidays:
  - {name: new-year, date: "01-01"}
rules:
  - id: greeting
    when: {holiday: {at: "10:00", names: [new-year, diwali]}}
    action: {kind: care_message, priority: 4}
"""


@pytest.mark.parametrize(
    ("text", "token", "where", "message"),
    [
        (PLAYBOOK, "diwali", "rules.0.when.holiday.names.1", "'diwali' is not in `holidays:`"),
        (
            PLAYBOOK.replace('"01-01"', '"13-40"'),
            '"13-40"',
            "holidays.0.date",
            "not a calendar day",
        ),
        (
            PLAYBOOK.replace('holidays:\n  - {name: new-year, date: "01-01"}\n', ""),
            "{at:",
            "rules.0.when.holiday",
            "no `holidays:` calendar",
        ),
        (
            PLAYBOOK.replace(
                "{kind: care_message, priority: 4}",
                "{kind: escalation, priority: 0, on_cap: defer}",
            ),
            "{kind: escalation",
            "rules.0.action",
            "never capped",
        ),
        (
            PLAYBOOK.replace(
                '{holiday: {at: "10:00", names: [new-year, diwali]}}',
                "{care_completed: {after: 1d, of: [purchase]}}",
            ),
            "purchase",
            "rules.0.when.care_completed.of.0",
            "complaint_resolved",
        ),
    ],
)
def test_holiday_and_survey_errors_name_line_column_and_field(
    tmp_path: Path, text: str, token: str, where: str, message: str
) -> None:
    """The problem points at the offending value: its line and column in the file."""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigProblems) as info:
        load_playbook(path)
    problem = next(p for p in info.value.problems if p.location == where)
    assert message in problem.message
    line = next(i for i, row in enumerate(text.splitlines(), 1) if token in row)
    column = text.splitlines()[line - 1].index(token) + 1
    assert (problem.line, problem.column) == (line, column)
    assert f"{path}:{line}" in str(info.value)


def test_the_shipped_playbook_has_holidays_and_the_survey() -> None:
    playbook = load_playbook(Path(__file__).resolve().parents[2] / "config" / "notifier.yaml")
    greeting = playbook.rule("holiday-greeting")
    assert greeting is not None
    assert isinstance(greeting.trigger, HolidayTrigger)
    assert {h.name for h in greeting.trigger.holidays} >= {"new-year", "christmas"}
    survey = playbook.rule("satisfaction-survey")
    assert survey is not None
    assert isinstance(survey.trigger, CareCompletedTrigger)
    assert survey.trigger.on == {"complaint_resolved", "revisit_done"}
    assert survey.action.cap_outcome == "defer"
