"""`apply(state, event) -> (state, changes)`: the whole classification step, pure.

Every update is a merge of facts keyed by event time (sums, min/max, per-id records, per-field
latest value), so replaying the same events in any order yields the same state.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from msgspec.structs import replace

from tierflow_classifier.domain import overrides
from tierflow_classifier.domain.classify import (
    NOTHING,
    Outside,
    classify,
    effective_version,
    labelled_version,
)
from tierflow_classifier.domain.customer_features import Complaint, MonthBucket, ProfileField
from tierflow_classifier.domain.features import month_key
from tierflow_classifier.domain.model import (
    Change,
    CustomerEvent,
    CustomerState,
    Feedback,
    Interaction,
    Override,
    ProfilePatch,
    Purchase,
    Refund,
    evolve,
)
from tierflow_classifier.domain.purchase_days import with_purchase, with_satisfaction
from tierflow_classifier.domain.rules import RuleSet
from tierflow_classifier.exceptions import UnprocessableEvent

VALUE_TIER = "value_tier"


def to_base_currency(amount: Decimal, currency: str, rules: RuleSet) -> Decimal:
    rate = rules.rates.get(currency)
    if rate is None:
        raise UnprocessableEvent(
            f"no exchange rate for {currency} to {rules.base_currency} in rule set {rules.version}",
            field="data.currency",
        )
    return amount * rate


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or a < b else a


def _earlier(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or a > b else a


def _with_month(
    months: Mapping[str, MonthBucket], t: datetime, spend: Decimal, orders: int
) -> dict[str, MonthBucket]:
    key = month_key(t)
    bucket = months.get(key)
    out = dict(months)
    out[key] = (
        MonthBucket(spend, orders)
        if bucket is None
        else MonthBucket(bucket.spend + spend, bucket.orders + orders)
    )
    return out


def already_applied(state: CustomerState | None, event: CustomerEvent) -> bool:
    """A purchase or refund this state already holds, known by its natural key: the order id
    (per customer) of a purchase, the cause of a refund among its order's refunds. A resend the
    ledger no longer remembers (older than its window) is recognised by this; `apply` leaves
    the state as it is and reports no change."""
    if state is None:
        return False
    match event:
        case Purchase():
            return event.order_id in state.features.orders
        case Refund():
            return event.meta.cause in state.features.refund_causes.get(event.order_id, ())
    return False


def _apply_purchase(state: CustomerState, e: Purchase, rules: RuleSet) -> CustomerState:
    amount = to_base_currency(e.amount, e.currency, rules)
    t = e.meta.time
    f = state.features
    # Order amounts, so a refund can be checked against what the order cost; also the natural
    # key: a purchase of an order already here is the same purchase again (already_applied).
    orders = dict(f.orders)
    orders[e.order_id] = amount
    features = replace(
        f,
        months=_with_month(f.months, t, amount, 1),
        # The churn fit's history: same-day orders are one purchase (domain/purchase_days.py).
        purchase_days=with_purchase(f.purchase_days, t, amount),
        orders=orders,
        discounted_purchases=f.discounted_purchases + 1 if e.discounted else f.discounted_purchases,
    )
    recent = tuple(sorted({*state.recent_purchases, t}, reverse=True)[:2])
    return evolve(
        state,
        recent_purchases=recent,
        purchases_lifetime=state.purchases_lifetime + 1,
        net_spend_lifetime=state.net_spend_lifetime + amount,
        first_purchase_at=t if state.first_purchase_at is None else min(state.first_purchase_at, t),
        last_purchase_at=t if state.last_purchase_at is None else max(state.last_purchase_at, t),
        features=features,
    )


def _apply_refund(state: CustomerState, e: Refund, rules: RuleSet) -> CustomerState:
    amount = to_base_currency(e.amount, e.currency, rules)
    f = state.features
    already = f.refunded_orders.get(e.order_id, Decimal(0))
    policy = rules.refunds
    cost = f.orders.get(e.order_id)
    if cost is None:
        if policy.unknown_order == "dead_letter":
            raise UnprocessableEvent(
                f"refund for unknown order {e.order_id!r} (policy refunds.unknown_order)",
                field="data.order_id",
            )
    elif policy.over_refund == "dead_letter" and already + amount > cost:
        raise UnprocessableEvent(
            f"refunds of order {e.order_id!r} would total {already + amount:f} "
            f"{rules.base_currency}, more than its {cost:f} "
            "(policy refunds.over_refund)",
            field="data.amount",
        )
    refunded = dict(f.refunded_orders)
    refunded[e.order_id] = already + amount
    # An order may be refunded in parts: each refund event is known by its cause (a sorted set,
    # so the state does not depend on the order refunds arrive in).
    causes = dict(f.refund_causes)
    causes[e.order_id] = tuple(sorted({*causes.get(e.order_id, ()), e.meta.cause}))
    features = replace(
        f,
        months=_with_month(f.months, e.meta.time, -amount, 0),
        refunded_orders=refunded,
        refund_causes=causes,
    )
    return evolve(
        state,
        features=features,
        refunds_lifetime=state.refunds_lifetime + 1,
        refunded_lifetime=state.refunded_lifetime + amount,
        net_spend_lifetime=state.net_spend_lifetime - amount,
    )


def _apply_interaction(state: CustomerState, e: Interaction) -> CustomerState:
    f = state.features
    t = e.meta.time
    kinds = dict(f.interactions)
    kinds[e.kind] = kinds.get(e.kind, 0) + 1
    changes: dict[str, Any] = {
        "interactions": kinds,
        "last_interaction_at": _later(f.last_interaction_at, t),
    }
    if e.complaint_id is not None and e.kind in ("complaint", "complaint_resolved"):
        complaints = dict(f.complaints)
        record = complaints.get(e.complaint_id, Complaint())
        if e.kind == "complaint":
            record = replace(record, opened_at=_earlier(record.opened_at, t))
        else:
            record = replace(record, resolved_at=_earlier(record.resolved_at, t))
        complaints[e.complaint_id] = record
        changes["complaints"] = complaints
    if e.kind == "referral":
        changes["referrals"] = f.referrals + 1
    if e.kind == "revisit_done":
        # A completed care revisit or follow-up (the notifier reports it): the last-contact fact
        # rules read (days_since_contact, the last_contact_at timer anchor).
        changes["last_contact_at"] = _later(f.last_contact_at, t)
    return evolve(state, features=replace(f, **changes))


def _apply_feedback(state: CustomerState, e: Feedback) -> CustomerState:
    f = state.features
    changes: dict[str, Any] = {}
    if e.satisfaction is not None:
        changes["satisfaction_count"] = f.satisfaction_count + 1
        changes["satisfaction_sum"] = f.satisfaction_sum + e.satisfaction
        changes["satisfaction_log"] = with_satisfaction(
            f.satisfaction_log, e.meta.time, e.meta.cause, e.satisfaction
        )
        # Latest by event time; the event id breaks ties so delivery order never matters.
        latest = f.satisfaction_latest_at
        mine = (e.meta.time, e.meta.cause)
        if latest is None or (latest, f.satisfaction_latest_cause) < mine:
            changes["satisfaction_latest"] = e.satisfaction
            changes["satisfaction_latest_at"] = e.meta.time
            changes["satisfaction_latest_cause"] = e.meta.cause
    if e.nps is not None:
        changes["nps_count"] = f.nps_count + 1
        changes["nps_sum"] = f.nps_sum + e.nps
    return evolve(state, features=replace(f, **changes))


def _apply_profile(state: CustomerState, e: ProfilePatch) -> CustomerState:
    profile = dict(state.profile)
    t = e.meta.time
    for name, value in e.fields.items():
        current = profile.get(name)
        # Latest event time wins per field; ties break on the value so order never matters.
        if current is None or (t, repr(value)) > (current.at, repr(current.value)):
            profile[name] = ProfileField(value, t)
    return evolve(state, profile=profile)


def apply(
    state: CustomerState | None,
    event: CustomerEvent,
    rules: RuleSet,
    *,
    at: datetime | None = None,
    outside: Outside = NOTHING,
) -> tuple[CustomerState, list[Change]]:
    """Fold the event into the state, then classify at `at` (default: the event's time).

    In production `at` is the wall clock; in replay it is the event-time watermark.
    """
    if state is not None and already_applied(state, event):
        return state, []
    if isinstance(event, Override):
        return apply_override(state, event, rules, at=at or event.meta.time, outside=outside)
    current = state or CustomerState(customer_id=event.meta.customer_id)
    t = event.meta.time
    current = evolve(
        current,
        first_seen_at=t if current.first_seen_at is None else min(current.first_seen_at, t),
    )
    match event:
        case Purchase():
            updated = _apply_purchase(current, event, rules)
        case Refund():
            updated = _apply_refund(current, event, rules)
        case Interaction():
            updated = _apply_interaction(current, event)
        case Feedback():
            updated = _apply_feedback(current, event)
        case ProfilePatch():
            updated = _apply_profile(current, event)
    return classify(updated, rules, at=at or t, cause=event.meta.cause, outside=outside)


def apply_override(
    state: CustomerState | None,
    event: Override,
    rules: RuleSet,
    *,
    at: datetime,
    outside: Outside = NOTHING,
) -> tuple[CustomerState, list[Change]]:
    """Pin the event's dimension to its label from `at` (a change with cause
    `override:<override_id>` where the label moves), or end the override in force there (the
    rules decide it again at once). An override already expired at `at` (a late replay)
    changes nothing; neither does clearing a dimension that holds no override."""
    if state is None:
        raise UnprocessableEvent(
            f"no customer {event.meta.customer_id!r} to override", field="subject"
        )
    problem = overrides.override_problem(rules, event.dimension, event.label)
    if problem is not None:
        raise UnprocessableEvent(problem[1], field=f"data.{problem[0]}")
    current = state.dimensions.get(event.dimension)
    if event.label is None:
        if current is None or overrides.hold_of(current) is None:
            return state, []
        ended = overrides.cleared(current, at, event.by)
        state = evolve(state, dimensions={**state.dimensions, event.dimension: ended})
        return classify(state, rules, at=at, cause=event.meta.cause, outside=outside)
    if event.expires_at is not None and event.expires_at <= at:
        return state, []
    version = labelled_version(effective_version(rules, outside), outside)
    assignment = overrides.pinned(event, at, version)
    state = evolve(state, dimensions={**state.dimensions, event.dimension: assignment})
    # The other dimensions are judged at the same instant, as after any event.
    state, changes = classify(state, rules, at=at, cause=event.meta.cause, outside=outside)
    if current is None or current.label != assignment.label:
        changes.insert(
            0,
            Change(
                customer_id=state.customer_id,
                dimension=event.dimension,
                from_label=current.label if current else None,
                to=assignment,
                cause=f"{overrides.OVERRIDE}:{event.override_id}",
                effective_at=at,
            ),
        )
    return state, changes
