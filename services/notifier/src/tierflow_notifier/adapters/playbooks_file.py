"""Reads and validates the playbook YAML into the pure Playbook; errors name file and line."""

from __future__ import annotations

import re
from datetime import date, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from tierflow_common.config_file import (
    ConfigProblems,
    Problem,
    load_yaml_model_with_nodes,
    position_of,
)
from tierflow_notifier.domain.playbooks import (
    DEFAULT_CLASS,
    ActionKind,
    ActionSpec,
    BirthdayTrigger,
    CadenceTrigger,
    Cap,
    CareCompletedTrigger,
    ChangeTrigger,
    ComplaintTrigger,
    ContactPolicy,
    Coupon,
    FirstPurchaseTrigger,
    Holiday,
    HolidayTrigger,
    OnCap,
    Playbook,
    PriorityClass,
    QuietHours,
    Rule,
    Trigger,
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(w|d|h|m|s)$")
_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}


def _duration(value: Any) -> timedelta:
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError("expected a duration such as 30d, 24h, 15m, 2s or 1w")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return timedelta(seconds=seconds)


def _time_of_day(value: Any) -> time:
    # Unquoted 09:00 is a YAML 1.1 base-60 integer; insist on a string to avoid that trap.
    if not isinstance(value, str):
        raise ValueError("write a time of day as a quoted string, e.g. '09:00'")
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a time of day: {value!r} (use HH:MM or HH:MM:SS)") from None


CappedClass = Literal["service", "marketing"]  # critical actions are never capped
Duration = Annotated[timedelta, BeforeValidator(_duration)]
TimeOfDay = Annotated[time, BeforeValidator(_time_of_day)]
Label = Annotated[str, Field(min_length=1)]
ChannelName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Cadence(_Model):
    dimension: Label
    label: Label
    every: Duration


class _After(_Model):
    after: Duration


class _Birthday(_Model):
    at: TimeOfDay = time(9, 0)


class _Holiday(_Model):
    at: TimeOfDay = time(9, 0)
    names: list[Label] | None = Field(
        default=None, min_length=1, description="Holidays of the calendar; default: all"
    )


class _CareCompleted(_Model):
    after: Duration
    # Not `on`: YAML 1.1 reads an unquoted on as true.
    of: list[Literal["complaint_resolved", "revisit_done"]] = Field(min_length=1)


_MONTH_DAY = re.compile(r"^(?:(\d{4})-)?(\d{2})-(\d{2})$")


def _calendar_day(value: Any) -> tuple[int | None, int, int]:
    match = _MONTH_DAY.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("write a holiday as a quoted 'MM-DD' (every year) or 'YYYY-MM-DD' (once)")
    year = int(match.group(1)) if match.group(1) else None
    month, day = int(match.group(2)), int(match.group(3))
    try:
        date(year or 2000, month, day)  # 2000: a leap year, so 02-29 is a yearly day
    except ValueError:
        raise ValueError(f"not a calendar day: {value!r}") from None
    return year, month, day


class _CalendarDay(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    date: Annotated[tuple[int | None, int, int], BeforeValidator(_calendar_day)]


class _When(_Model):
    """Either a classification change (dimension / from / to) or exactly one schedule."""

    dimension: Label | None = None
    from_label: str | None = Field(default="*", alias="from")
    to_label: Label | None = Field(default=None, alias="to")
    cadence: _Cadence | None = None
    first_purchase: _After | None = None
    birthday: _Birthday | None = None
    complaint_unresolved: _After | None = None
    holiday: _Holiday | None = None
    care_completed: _CareCompleted | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> _When:
        schedules = [n for n in _SCHEDULES if getattr(self, n) is not None]
        is_change = self.dimension is not None or self.to_label is not None
        if is_change and (self.dimension is None or self.to_label is None):
            raise ValueError("a change trigger needs both `dimension` and `to`")
        if len(schedules) + is_change != 1:
            raise ValueError(
                "give exactly one trigger: dimension/from/to, cadence, first_purchase, "
                "birthday, complaint_unresolved, holiday or care_completed"
            )
        return self

    def to_trigger(self, calendar: tuple[Holiday, ...] = ()) -> Trigger:
        if self.holiday is not None:
            names = self.holiday.names
            chosen = tuple(h for h in calendar if names is None or h.name in names)
            return HolidayTrigger(self.holiday.at, chosen)
        if self.care_completed is not None:
            done = self.care_completed
            return CareCompletedTrigger(done.after, frozenset(done.of))
        if self.cadence is not None:
            c = self.cadence
            return CadenceTrigger(c.dimension, c.label, c.every)
        if self.first_purchase is not None:
            return FirstPurchaseTrigger(self.first_purchase.after)
        if self.birthday is not None:
            return BirthdayTrigger(self.birthday.at)
        if self.complaint_unresolved is not None:
            return ComplaintTrigger(self.complaint_unresolved.after)
        assert self.dimension is not None
        assert self.to_label is not None
        return ChangeTrigger(self.dimension, self.from_label, self.to_label)


class _Coupon(_Model):
    value_by_tier: dict[str, Decimal] = Field(min_length=1)
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    expires_in: Duration


class _Action(_Model):
    kind: ActionKind
    priority: int = Field(ge=0, le=9)
    priority_class: PriorityClass | None = Field(default=None, alias="class")
    owner: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    due_in: Duration | None = None
    channel: Literal["preferred"] | ChannelName | None = None
    fallback_channels: list[ChannelName] = Field(default_factory=list)
    template: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    coupon: _Coupon | None = None
    on_cap: OnCap | None = None

    @model_validator(mode="after")
    def _coupon_iff_kind(self) -> _Action:
        if (self.kind == "coupon") != (self.coupon is not None):
            raise ValueError(
                "`coupon` (value_by_tier, currency, expires_in) is required for "
                "kind coupon and only allowed there"
            )
        if self.kind not in ("coupon", "care_message") and (
            self.channel is not None or self.fallback_channels
        ):
            raise ValueError(f"kind {self.kind} is a staff task: it has no customer channel")
        if self.on_cap is not None and (self.priority_class or DEFAULT_CLASS[self.kind]) == (
            "critical"
        ):
            raise ValueError("critical actions are never capped: `on_cap` does not apply")
        return self

    def to_spec(self) -> ActionSpec:
        coupon = None
        if self.coupon is not None:
            coupon = Coupon(
                value_by_tier=tuple(sorted(self.coupon.value_by_tier.items())),
                currency=self.coupon.currency,
                expires_in=self.coupon.expires_in,
            )
        return ActionSpec(
            kind=self.kind,
            priority=self.priority,
            priority_class=self.priority_class or DEFAULT_CLASS[self.kind],
            owner=self.owner,
            due_in=self.due_in or timedelta(0),
            channel=self.channel,
            fallback_channels=tuple(self.fallback_channels),
            coupon=coupon,
            template=self.template,
            on_cap=self.on_cap,
        )


class _Rule(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    when: _When
    action: _Action


class _Cap(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    kinds: list[ActionKind] = Field(min_length=1)
    classes: list[CappedClass] = Field(default_factory=lambda: list[CappedClass](["marketing"]))
    max: int = Field(ge=1)
    per: Duration


class _QuietHours(_Model):
    start: TimeOfDay
    end: TimeOfDay

    @model_validator(mode="after")
    def _not_empty(self) -> _QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours start and end must differ")
        return self


class _Policy(_Model):
    default_timezone: str = "UTC"
    default_channel: ChannelName = "email"
    quiet_hours: _QuietHours | None = None
    caps: list[_Cap] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_zone(self) -> _Policy:
        if self.default_timezone not in available_timezones():
            raise ValueError(f"unknown IANA time zone {self.default_timezone!r}")
        return self


class _File(_Model):
    playbook_version: Annotated[str, Field(min_length=1)]
    contact_policy: _Policy = Field(default_factory=_Policy)
    holidays: list[_CalendarDay] = Field(default_factory=list)
    rules: list[_Rule]

    @model_validator(mode="after")
    def _unique_ids(self) -> _File:
        for what, ids in (
            ("rule", [r.id for r in self.rules]),
            ("cap", [c.id for c in self.contact_policy.caps]),
            ("holiday", [h.name for h in self.holidays]),
        ):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{what} ids must be unique; repeated: {', '.join(dupes)}")
        return self


_SCHEDULES = (
    "cadence",
    "first_purchase",
    "birthday",
    "complaint_unresolved",
    "holiday",
    "care_completed",
)


def _check_holidays(raw: _File, origin: str, root: yaml.Node | None) -> tuple[Holiday, ...]:
    """The calendar, and every holiday rule names days it has (else: file, line, problem)."""
    calendar = tuple(Holiday(h.name, h.date[1], h.date[2], h.date[0]) for h in raw.holidays)
    known = {h.name for h in calendar}
    problems: list[Problem] = []
    for i, rule in enumerate(raw.rules):
        holiday = rule.when.holiday
        if holiday is None:
            continue
        loc: tuple[str | int, ...] = ("rules", i, "when", "holiday")
        if not calendar:
            problems.append(_problem(root, loc, "no `holidays:` calendar in this playbook"))
        for j, name in enumerate(holiday.names or ()):
            if name not in known:
                why = f"{name!r} is not in `holidays:` ({', '.join(sorted(known)) or 'empty'})"
                problems.append(_problem(root, (*loc, "names", j), why))
    if problems:
        raise ConfigProblems(origin, problems)
    return calendar


def _problem(root: yaml.Node | None, loc: tuple[str | int, ...], message: str) -> Problem:
    line, column = position_of(root, loc)
    return Problem(line, column, ".".join(str(p) for p in loc), message)


def load_playbook(path: Path) -> Playbook:
    raw, root = load_yaml_model_with_nodes(path, _File)
    calendar = _check_holidays(raw, str(path), root)
    pol = raw.contact_policy
    policy = ContactPolicy(
        caps=tuple(
            Cap(c.id, frozenset(c.kinds), frozenset(c.classes), c.max, c.per) for c in pol.caps
        ),
        quiet_hours=QuietHours(pol.quiet_hours.start, pol.quiet_hours.end)
        if pol.quiet_hours
        else None,
        default_timezone=pol.default_timezone,
        default_channel=pol.default_channel,
    )
    return Playbook(
        version=raw.playbook_version,
        rules=tuple(Rule(r.id, r.when.to_trigger(calendar), r.action.to_spec()) for r in raw.rules),
        policy=policy,
    )
