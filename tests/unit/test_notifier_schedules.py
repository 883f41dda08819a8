"""Due times of scheduled triggers, stable ids when re-fired, backoff and the circuit breaker."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow_notifier.domain.delivery import CircuitBreaker, backoff_delay
from tierflow_notifier.domain.playbooks import (
    DEFAULT_CLASS,
    ActionSpec,
    BirthdayTrigger,
    CadenceTrigger,
    ComplaintTrigger,
    FirstPurchaseTrigger,
    Rule,
)
from tierflow_notifier.domain.schedules import (
    CustomerFacts,
    birthday_entry,
    cadence_entry,
    complaint_entry,
    fire,
    first_purchase_entry,
    next_birthday,
)

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def rule(rule_id: str, trigger: object, kind: str = "revisit") -> Rule:
    spec = ActionSpec(kind=kind, priority=2, priority_class=DEFAULT_CLASS[kind])
    return Rule(rule_id, trigger, spec)  # type: ignore[arg-type]


VIP = rule("vip-revisit", CadenceTrigger("value_tier", "VIP", timedelta(days=30)))


def test_cadence_fires_each_period_once_and_stops_when_the_label_goes() -> None:
    entry = cadence_entry(VIP, "c1", T0)
    assert entry.due_at == T0 + timedelta(days=30)
    facts = CustomerFacts(labels={"value_tier": "VIP"})
    a1, nxt = fire(entry, VIP, facts, entry.due_at)
    again, _ = fire(entry, VIP, facts, entry.due_at + timedelta(seconds=1))
    assert a1 is not None
    assert again is not None
    assert a1.action_id == again.action_id  # re-firing a period cannot duplicate
    assert nxt is not None
    assert nxt.period == 2
    assert nxt.due_at == T0 + timedelta(days=60)
    a2, _ = fire(nxt, VIP, facts, nxt.due_at)
    assert a2 is not None
    assert a2.action_id != a1.action_id
    gone, none = fire(nxt, VIP, CustomerFacts(labels={"value_tier": "important"}), nxt.due_at)
    assert gone is None
    assert none is None


def test_cadence_after_downtime_fires_once_for_the_latest_period() -> None:
    entry = cadence_entry(VIP, "c1", T0)
    late = T0 + timedelta(days=95)
    action, nxt = fire(entry, VIP, CustomerFacts(labels={"value_tier": "VIP"}), late)
    assert action is not None
    assert action.explanation["period"] == 3
    assert nxt is not None
    assert nxt.due_at == T0 + timedelta(days=120)


def test_first_purchase_follow_up_is_once_per_customer() -> None:
    r = rule("follow", FirstPurchaseTrigger(timedelta(days=7)), "follow_up")
    early = first_purchase_entry(r, "c1", T0)
    later = first_purchase_entry(r, "c1", T0 + timedelta(days=1))
    assert early.schedule_id == later.schedule_id
    a, nxt = fire(early, r, CustomerFacts(), early.due_at)
    b, _ = fire(later, r, CustomerFacts(), later.due_at)
    assert a is not None
    assert b is not None
    assert a.action_id == b.action_id
    assert nxt is None


def test_complaint_escalation_is_skipped_once_resolved() -> None:
    r = rule("sla", ComplaintTrigger(timedelta(hours=24)), "escalation")
    entry = complaint_entry(r, "c1", "T-1", T0)
    assert entry.due_at == T0 + timedelta(hours=24)
    action, _ = fire(entry, r, CustomerFacts(), entry.due_at)
    assert action is not None
    assert action.context == {"complaint_id": "T-1"}
    skipped, _ = fire(entry, r, CustomerFacts(resolved_complaints=frozenset({"T-1"})), T0)
    assert skipped is None


def test_birthday_in_the_customer_zone_and_on_28_february_outside_leap_years() -> None:
    due, year = next_birthday(date(1990, 5, 17), time(9), "Asia/Shanghai", T0)
    assert (due, year) == (datetime(2026, 5, 17, 1, 0, tzinfo=UTC), 2026)
    leap, year = next_birthday(date(1992, 2, 29), time(9), "UTC", T0)
    assert (leap.date(), year) == (date(2026, 2, 28), 2026)
    r = rule("bday", BirthdayTrigger(time(9)), "care_message")
    entry = birthday_entry(r, "c1", date(1990, 5, 17), "UTC", T0)
    facts = CustomerFacts(birthday=date(1990, 5, 17))
    action, nxt = fire(entry, r, facts, entry.due_at)
    assert action is not None
    assert nxt is not None
    assert nxt.period == 2027


@settings(max_examples=200, deadline=None)
@given(st.dates(date(1900, 1, 1), date(2020, 12, 31)), st.integers(0, 3 * 365 * 24))
def test_next_birthday_is_always_later_and_within_a_year(born: date, hours: int) -> None:
    after = T0 + timedelta(hours=hours)
    due, _ = next_birthday(born, time(9), "America/New_York", after)
    assert after < due <= after + timedelta(days=367)
    assert due.astimezone(ZoneInfo("America/New_York")).time() == time(9)


@given(st.integers(1, 30), st.floats(0, 1))
def test_backoff_is_exponential_capped_and_never_immediate(attempt: int, r: float) -> None:
    delay = backoff_delay(attempt, base=1.0, cap=600.0, rand=lambda: r)
    ceiling = min(600.0, 2.0 ** (attempt - 1))
    assert ceiling / 2 <= delay <= ceiling


def test_circuit_breaker_opens_probes_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert not breaker.allow()
    assert breaker.seconds_until_probe() == 10.0
    now[0] = 10.0
    assert breaker.allow()
    assert breaker.state == "half_open"
    breaker.record_failure()  # the probe failed: open again
    assert not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow()
    assert breaker.failures == 0
