"""Due times of scheduled triggers, and what a due schedule turns into. Pure: `now` is passed in.

A schedule entry is one pending due time per (customer, rule[, complaint]). Firing it yields at
most one planned action (keyed by the period it stands for, so re-firing cannot duplicate) and
at most one follow-on entry (the next cadence period, next year's birthday).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from tierflow_notifier.domain.playbooks import (
    BirthdayTrigger,
    CadenceTrigger,
    CareCompletedTrigger,
    ComplaintTrigger,
    FirstPurchaseTrigger,
    Holiday,
    HolidayTrigger,
    PlannedAction,
    Rule,
    plan,
    stable_id,
)


@dataclass(frozen=True)
class ScheduleEntry:
    schedule_id: str
    rule_id: str
    customer_id: str
    due_at: datetime
    anchor_at: datetime
    period: int = 1
    ref: str | None = None


@dataclass(frozen=True)
class CustomerFacts:
    """What firing needs to know about the customer at that moment."""

    labels: Mapping[str, str] = field(default_factory=dict)
    birthday: date | None = None
    timezone: str = "UTC"
    resolved_complaints: frozenset[str] = frozenset()
    # Set once an earlier customer under this id was erased (the erasure's boundary): the
    # actions of this one must not share ids (and webhook-ids) with the erased one's.
    generation: str | None = None


def trigger_key(base: str, facts: CustomerFacts) -> str:
    """A scheduled trigger's key: the same as ever for a customer never erased, told apart
    from an erased predecessor's by the erasure's boundary otherwise."""
    return base if facts.generation is None else f"{base}@{facts.generation}"


def schedule_id(*parts: str) -> str:
    return stable_id("schedule|" + "|".join(parts))


def cadence_entry(rule: Rule, customer_id: str, since: datetime) -> ScheduleEntry:
    trig = rule.trigger
    assert isinstance(trig, CadenceTrigger)
    return ScheduleEntry(
        schedule_id=schedule_id("cadence", customer_id, rule.id),
        rule_id=rule.id,
        customer_id=customer_id,
        due_at=since + trig.every,
        anchor_at=since,
        period=1,
        ref=trig.label,
    )


def first_purchase_entry(
    rule: Rule, customer_id: str, first_purchase_at: datetime
) -> ScheduleEntry:
    trig = rule.trigger
    assert isinstance(trig, FirstPurchaseTrigger)
    return ScheduleEntry(
        schedule_id=schedule_id("first_purchase", customer_id, rule.id),
        rule_id=rule.id,
        customer_id=customer_id,
        due_at=first_purchase_at + trig.after,
        anchor_at=first_purchase_at,
    )


def complaint_entry(
    rule: Rule, customer_id: str, complaint_id: str, opened_at: datetime
) -> ScheduleEntry:
    trig = rule.trigger
    assert isinstance(trig, ComplaintTrigger)
    return ScheduleEntry(
        schedule_id=schedule_id("complaint", customer_id, complaint_id, rule.id),
        rule_id=rule.id,
        customer_id=customer_id,
        due_at=opened_at + trig.after,
        anchor_at=opened_at,
        ref=complaint_id,
    )


def _on_year(birthday: date, year: int) -> date:
    try:
        return birthday.replace(year=year)
    except ValueError:  # 29 February outside a leap year: celebrate on the 28th
        return date(year, 2, 28)


def _local_moment(day: date, local_time: time, zone: ZoneInfo) -> datetime:
    """`local_time` on `day` in `zone`, in UTC (a time skipped by DST moves forward with it)."""
    return datetime.combine(day, local_time, tzinfo=zone).astimezone(UTC)


def next_birthday(
    birthday: date, local_time: time, tz: str, after: datetime
) -> tuple[datetime, int]:
    """The first birthday moment (local time in `tz`) strictly after `after`, and its year."""
    zone = ZoneInfo(tz)
    year = after.astimezone(zone).year
    for y in (year, year + 1):
        at = _local_moment(_on_year(birthday, y), local_time, zone)
        if at > after:
            return at, y
    raise AssertionError("unreachable: next year's birthday is always later")


def next_holiday(
    holidays: tuple[Holiday, ...], local_time: time, tz: str, after: datetime
) -> tuple[datetime, Holiday, date] | None:
    """The first holiday moment (`local_time` in `tz`, as for birthdays) strictly after
    `after`: when, which holiday and its local date. None once only past one-off days remain.
    A yearly 29 February is kept on the 28th outside leap years, as birthdays are."""
    zone = ZoneInfo(tz)
    year = after.astimezone(zone).year
    best: tuple[datetime, Holiday, date] | None = None
    for h in holidays:
        if h.year is None:  # 2000 is a leap year: any month-day is a date in it
            days = [_on_year(date(2000, h.month, h.day), y) for y in (year, year + 1)]
        else:
            days = [date(h.year, h.month, h.day)]
        for day in days:
            at = _local_moment(day, local_time, zone)
            if at > after and (best is None or at < best[0]):
                best = (at, h, day)
    return best


def holiday_entry(rule: Rule, customer_id: str, tz: str, after: datetime) -> ScheduleEntry | None:
    """The customer's next holiday of the rule (None: the calendar has no later day)."""
    trig = rule.trigger
    assert isinstance(trig, HolidayTrigger)
    found = next_holiday(trig.holidays, trig.local_time, tz, after)
    if found is None:
        return None
    due, holiday, day = found
    return ScheduleEntry(
        schedule_id=schedule_id("holiday", customer_id, rule.id),
        rule_id=rule.id,
        customer_id=customer_id,
        due_at=due,
        anchor_at=due,
        period=day.toordinal(),
        ref=holiday.name,
    )


def care_completed_entry(
    rule: Rule, customer_id: str, kind: str, reference: str, at: datetime
) -> ScheduleEntry | None:
    """`after` a completed complaint or care task (`kind`, `reference`: the complaint or the
    completed action); None if the rule does not follow that kind."""
    trig = rule.trigger
    assert isinstance(trig, CareCompletedTrigger)
    if kind not in trig.on:
        return None
    ref = f"{kind}:{reference}"
    return ScheduleEntry(
        schedule_id=schedule_id("care_completed", customer_id, ref, rule.id),
        rule_id=rule.id,
        customer_id=customer_id,
        due_at=at + trig.after,
        anchor_at=at,
        ref=ref,
    )


def birthday_entry(
    rule: Rule, customer_id: str, birthday: date, tz: str, after: datetime
) -> ScheduleEntry:
    trig = rule.trigger
    assert isinstance(trig, BirthdayTrigger)
    due, year = next_birthday(birthday, trig.local_time, tz, after)
    return ScheduleEntry(
        schedule_id=schedule_id("birthday", customer_id, rule.id),
        rule_id=rule.id,
        customer_id=customer_id,
        due_at=due,
        anchor_at=due,
        period=year,
        ref=birthday.isoformat(),
    )


def fire(
    entry: ScheduleEntry, rule: Rule, facts: CustomerFacts, now: datetime
) -> tuple[PlannedAction | None, ScheduleEntry | None]:
    """The action a due entry stands for (None if no longer relevant) and its next entry."""
    action, nxt = _fire(entry, rule, facts, now)
    if action is not None and action.not_before is not None:
        explained = {**action.explanation, "scheduled_for": _iso(action.not_before)}
        action = replace(action, explanation=explained)
    return action, nxt


def _fire(
    entry: ScheduleEntry, rule: Rule, facts: CustomerFacts, now: datetime
) -> tuple[PlannedAction | None, ScheduleEntry | None]:
    trig = rule.trigger
    cid = entry.customer_id
    if isinstance(trig, CadenceTrigger):
        if facts.labels.get(trig.dimension) != trig.label:
            return None, None  # left the label: the cadence ends
        # After downtime, fire once for the latest elapsed period rather than a burst of them.
        elapsed = int((now - entry.anchor_at) / trig.every)
        period = max(entry.period, elapsed)
        key = trigger_key(
            f"cadence:{cid}:{trig.dimension}={trig.label}:{entry.anchor_at.isoformat()}:{period}",
            facts,
        )
        action = plan(
            rule,
            trigger_key=key,
            customer_id=cid,
            reason=(
                f"{trig.dimension} {trig.label} since {entry.anchor_at:%Y-%m-%d}: "
                f"periodic revisit #{period} (every {_span(trig.every)})"
            ),
            explanation={"trigger": "cadence", "period": period, "every": _span(trig.every)},
            not_before=entry.anchor_at + trig.every * period,
        )
        nxt = replace(entry, period=period + 1, due_at=entry.anchor_at + trig.every * (period + 1))
        return action, nxt
    if isinstance(trig, FirstPurchaseTrigger):
        return plan(
            rule,
            trigger_key=trigger_key(f"first_purchase:{cid}", facts),
            customer_id=cid,
            reason=(
                f"first purchase {entry.anchor_at:%Y-%m-%d}: follow-up after {_span(trig.after)}"
            ),
            explanation={"trigger": "first_purchase", "first_purchase_at": _iso(entry.anchor_at)},
            not_before=entry.due_at,
        ), None
    if isinstance(trig, BirthdayTrigger):
        if facts.birthday is None:
            return None, None
        action = plan(
            rule,
            trigger_key=trigger_key(f"birthday:{cid}:{entry.period}", facts),
            customer_id=cid,
            reason=f"birthday {facts.birthday:%m-%d} ({entry.period})",
            explanation={"trigger": "birthday", "year": entry.period},
            not_before=entry.due_at,
        )
        return action, birthday_entry(rule, cid, facts.birthday, facts.timezone, entry.due_at)
    if isinstance(trig, HolidayTrigger):
        day = date.fromordinal(entry.period)
        action = plan(
            rule,
            trigger_key=trigger_key(f"holiday:{cid}:{entry.ref}:{day.isoformat()}", facts),
            customer_id=cid,
            reason=f"holiday {entry.ref} ({day.isoformat()}, {facts.timezone})",
            explanation={"trigger": "holiday", "holiday": entry.ref, "date": day.isoformat()},
            not_before=entry.due_at,
            context={"holiday": entry.ref or ""},
        )
        return action, holiday_entry(rule, cid, facts.timezone, entry.due_at)
    if isinstance(trig, CareCompletedTrigger):
        kind, _, reference = (entry.ref or "").partition(":")
        about = "complaint_id" if kind == "complaint_resolved" else "completed_action_id"
        return plan(
            rule,
            trigger_key=trigger_key(f"care_completed:{cid}:{entry.ref}", facts),
            customer_id=cid,
            reason=f"{kind.replace('_', ' ')} {entry.anchor_at:%Y-%m-%d}: "
            f"follow-up after {_span(trig.after)}",
            explanation={"trigger": "care_completed", "on": kind, about: reference},
            not_before=entry.due_at,
            context={about: reference},
        ), None
    if isinstance(trig, ComplaintTrigger):
        complaint = entry.ref or ""
        if complaint in facts.resolved_complaints:
            return None, None
        return plan(
            rule,
            trigger_key=trigger_key(f"complaint:{cid}:{complaint}", facts),
            customer_id=cid,
            reason=(
                f"complaint {complaint} open since {entry.anchor_at:%Y-%m-%d %H:%M} UTC, "
                f"unresolved after {_span(trig.after)}"
            ),
            explanation={
                "trigger": "complaint_sla",
                "complaint_id": complaint,
                "opened_at": _iso(entry.anchor_at),
                "deadline": _span(trig.after),
            },
            not_before=entry.due_at,
            context={"complaint_id": complaint},
        ), None
    return None, None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{delta.total_seconds():g}s"
