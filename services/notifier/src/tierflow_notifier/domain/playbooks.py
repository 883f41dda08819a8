"""Playbooks: which care action each trigger causes, and the stable ids that make it happen once.

Pure: no I/O, no clock. A trigger is either a classification change (value tier, lifecycle,
churn risk, any dimension) or a schedule (cadence per label, N after the first purchase,
birthday, complaint unresolved past a deadline). Every action id is uuid5(trigger key, rule id),
so however often a trigger is seen or re-planned, the same action id comes out.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal

from tierflow_notifier.domain.queue import Scores

ANY = "*"
ACTION_NAMESPACE = uuid.UUID("0b5d3e5e-7f0a-4a43-9d55-4d8e2f6c1b77")

ActionKind = Literal[
    "revisit", "follow_up", "coupon", "care_message", "escalation", "account_manager_assignment"
]
PriorityClass = Literal["critical", "service", "marketing"]
# What a capped action does: wait for the first moment the caps allow (and outside quiet
# hours), or be recorded as suppressed (`cap:<id>`). Never silently lost either way.
OnCap = Literal["defer", "drop"]
ACTION_KINDS: tuple[str, ...] = (
    "revisit",
    "follow_up",
    "coupon",
    "care_message",
    "escalation",
    "account_manager_assignment",
)
# Actions that reach the customer directly (quiet hours, consent and channel apply to these);
# the others are tasks for staff.
CUSTOMER_FACING: frozenset[str] = frozenset({"coupon", "care_message"})
DEFAULT_CLASS: Mapping[str, PriorityClass] = {
    "escalation": "critical",
    "revisit": "service",
    "follow_up": "service",
    "account_manager_assignment": "service",
    "coupon": "marketing",
    "care_message": "marketing",
}
# Service work that hits a cap still has to happen, later; marketing that does is not worth
# crowding the customer for.
DEFAULT_ON_CAP: Mapping[str, OnCap] = {"critical": "defer", "service": "defer", "marketing": "drop"}


@dataclass(frozen=True)
class ChangeTrigger:
    dimension: str
    from_label: str | None  # None matches only a first assignment; "*" matches anything
    to_label: str

    def matches(self, dimension: str, from_label: str | None, to_label: str) -> bool:
        if self.dimension not in (ANY, dimension):
            return False
        if self.from_label not in (ANY, from_label):
            return False
        return self.to_label in (ANY, to_label)


@dataclass(frozen=True)
class CadenceTrigger:
    """Every `every` while the customer holds `label` on `dimension`, from when they got it."""

    dimension: str
    label: str
    every: timedelta


@dataclass(frozen=True)
class FirstPurchaseTrigger:
    after: timedelta


@dataclass(frozen=True)
class BirthdayTrigger:
    local_time: time  # in the customer's time zone


@dataclass(frozen=True)
class ComplaintTrigger:
    """A complaint still unresolved `after` it was opened (one rule per escalation level)."""

    after: timedelta


@dataclass(frozen=True)
class Holiday:
    """A calendar day (config/notifier.yaml `holidays`): every year, or once (`year` set)."""

    name: str
    month: int
    day: int
    year: int | None = None


@dataclass(frozen=True)
class HolidayTrigger:
    """Each of `holidays` at this local time in the customer's time zone."""

    local_time: time
    holidays: tuple[Holiday, ...]


# The interactions after which care may follow up (the notifier reads them off customer-events).
CARE_COMPLETIONS = ("complaint_resolved", "revisit_done")


@dataclass(frozen=True)
class CareCompletedTrigger:
    """`after` a complaint was resolved or a care task (revisit, follow-up) was reported done:
    e.g. a satisfaction survey. Once per complaint or completed task."""

    after: timedelta
    on: frozenset[str]  # of CARE_COMPLETIONS


Trigger = (
    ChangeTrigger
    | CadenceTrigger
    | FirstPurchaseTrigger
    | BirthdayTrigger
    | ComplaintTrigger
    | HolidayTrigger
    | CareCompletedTrigger
)
ScheduledTrigger = (
    CadenceTrigger
    | FirstPurchaseTrigger
    | BirthdayTrigger
    | ComplaintTrigger
    | HolidayTrigger
    | CareCompletedTrigger
)


@dataclass(frozen=True)
class Coupon:
    value_by_tier: tuple[tuple[str, Decimal], ...]  # "*" is the fallback tier
    currency: str
    expires_in: timedelta

    def value_for(self, tier: str | None) -> Decimal | None:
        values = dict(self.value_by_tier)
        if tier is not None and tier in values:
            return values[tier]
        return values.get(ANY)


@dataclass(frozen=True)
class ActionSpec:
    kind: str
    priority: int  # 0 = most urgent
    priority_class: PriorityClass
    owner: str | None = None
    due_in: timedelta = timedelta(0)
    channel: str | None = None  # "preferred" = the customer's preferred channel
    fallback_channels: tuple[str, ...] = ()
    coupon: Coupon | None = None
    template: str | None = None
    on_cap: OnCap | None = None  # None: DEFAULT_ON_CAP of its class

    @property
    def cap_outcome(self) -> OnCap:
        return self.on_cap or DEFAULT_ON_CAP[self.priority_class]

    @property
    def customer_facing(self) -> bool:
        return self.kind in CUSTOMER_FACING


@dataclass(frozen=True)
class Rule:
    id: str
    trigger: Trigger
    action: ActionSpec

    # Kept for callers written against the change-only playbook.
    @property
    def kind(self) -> str:
        return self.action.kind

    @property
    def priority(self) -> int:
        return self.action.priority


@dataclass(frozen=True)
class Cap:
    """At most `max_count` actions of `kinds` in `classes` per customer in any `window`."""

    id: str
    kinds: frozenset[str]
    classes: frozenset[str]
    max_count: int
    window: timedelta

    def applies(self, kind: str, priority_class: str) -> bool:
        return kind in self.kinds and priority_class in self.classes


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # wraps past midnight


@dataclass(frozen=True)
class ContactPolicy:
    caps: tuple[Cap, ...] = ()
    quiet_hours: QuietHours | None = None
    default_timezone: str = "UTC"
    default_channel: str = "email"


@dataclass(frozen=True)
class Playbook:
    version: str
    rules: tuple[Rule, ...]
    policy: ContactPolicy = field(default_factory=ContactPolicy)

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def scheduled(self, kind: type[ScheduledTrigger]) -> list[Rule]:
        return [r for r in self.rules if isinstance(r.trigger, kind)]

    @cached_property
    def _change_rules(self) -> tuple[dict[str, tuple[Rule, ...]], tuple[Rule, ...]]:
        change = [r for r in self.rules if isinstance(r.trigger, ChangeTrigger)]
        anywhere = tuple(r for r in change if _dimension(r) == ANY)
        named = {_dimension(r) for r in change} - {ANY}
        by_dimension = {
            d: tuple(r for r in change if _dimension(r) in (ANY, d)) for d in sorted(named)
        }
        return by_dimension, anywhere

    def change_rules(self, dimension: str) -> tuple[Rule, ...]:
        """The change-triggered rules that may match a change of `dimension`, in playbook
        order (empty: no change of this dimension can cause an action)."""
        by_dimension, anywhere = self._change_rules
        return by_dimension.get(dimension, anywhere)

    @cached_property
    def cadence_dimensions(self) -> frozenset[str]:
        """Dimensions some cadence follows (their current label decides whether it fires)."""
        return frozenset(
            r.trigger.dimension for r in self.rules if isinstance(r.trigger, CadenceTrigger)
        )


def _dimension(rule: Rule) -> str:
    trigger = rule.trigger
    assert isinstance(trigger, ChangeTrigger)
    return trigger.dimension


_NAMESPACE_BYTES = ACTION_NAMESPACE.bytes


def stable_id(name: str) -> str:
    """`str(uuid.uuid5(ACTION_NAMESPACE, name))`, without building a UUID object (a third of
    the cost): the same SHA-1, version and variant bits, and text (a test compares them)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])  # noqa: S324 - uuid5 is SHA-1 by definition
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def action_id_for(trigger_key: str, rule_id: str) -> str:
    return stable_id(f"{trigger_key}|{rule_id}")


@dataclass(frozen=True)
class PlannedAction:
    """An action to create unless its id exists: the trigger key is its idempotency key."""

    action_id: str
    trigger_key: str
    rule: Rule
    customer_id: str
    reason: str
    explanation: Mapping[str, Any] = field(default_factory=dict)
    not_before: datetime | None = None  # a scheduled action is never sent before its due time
    context: Mapping[str, str] = field(default_factory=dict)  # e.g. complaint_id
    scores: Scores | None = None  # the customer's, on the change that caused it

    @property
    def rule_id(self) -> str:
        return self.rule.id

    @property
    def kind(self) -> str:
        return self.rule.action.kind

    @property
    def priority(self) -> int:
        return self.rule.action.priority


def plan(
    rule: Rule,
    *,
    trigger_key: str,
    customer_id: str,
    reason: str,
    explanation: Mapping[str, Any] | None = None,
    not_before: datetime | None = None,
    context: Mapping[str, str] | None = None,
    scores: Scores | None = None,
) -> PlannedAction:
    return PlannedAction(
        action_id=action_id_for(trigger_key, rule.id),
        trigger_key=trigger_key,
        rule=rule,
        customer_id=customer_id,
        reason=reason,
        explanation=dict(explanation or {}),
        not_before=not_before,
        context=dict(context or {}),
        scores=scores,
    )


def plan_actions(
    playbook: Playbook,
    *,
    trigger_event_id: str,
    dimension: str,
    from_label: str | None,
    to_label: str,
    change_reason: str,
    customer_id: str = "",
    explanation: Mapping[str, Any] | None = None,
    scores: Scores | None = None,
) -> list[PlannedAction]:
    """Actions for one classification change, keyed by the change event's id."""
    matching = [
        rule
        for rule in playbook.change_rules(dimension)
        if isinstance(rule.trigger, ChangeTrigger)
        and rule.trigger.matches(dimension, from_label, to_label)
    ]
    if not matching:
        return []
    reason = f"{dimension}: {from_label or '(none)'} → {to_label} ({change_reason})"
    return [
        plan(
            rule,
            trigger_key=trigger_event_id,
            customer_id=customer_id,
            reason=reason,
            explanation={
                "trigger": "classification_change",
                "dimension": dimension,
                "from": from_label,
                "to": to_label,
                "change": dict(explanation or {}),
            },
            scores=scores,
        )
        for rule in matching
    ]
