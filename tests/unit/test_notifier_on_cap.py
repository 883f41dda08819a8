"""`on_cap: defer | drop`, as pure rules with properties for any ledger: a deferred action goes
out at the first moment the caps and quiet hours allow (never earlier, never later), a dropped
one is recorded as suppressed by the cap, and nothing capped is lost silently."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow_notifier.domain.playbooks import ActionSpec, Cap, ContactPolicy, QuietHours
from tierflow_notifier.domain.pressure import (
    Contact,
    Reachability,
    blocking_cap,
    decide,
    quiet_until,
)
from tierflow_notifier.service_layer.actions import policy_outcome

NOW = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
QUIET = QuietHours(time(21, 0), time(8, 0))
POLICY = ContactPolicy(
    caps=(
        Cap(
            "messages-week",
            frozenset({"care_message"}),
            frozenset({"marketing", "service"}),
            2,
            timedelta(days=7),
        ),
        Cap("tasks-day", frozenset({"revisit"}), frozenset({"service"}), 1, timedelta(days=1)),
    ),
    quiet_hours=QUIET,
)
SURVEY = ActionSpec(kind="care_message", priority=3, priority_class="service")  # defers
PROMO = ActionSpec(kind="care_message", priority=3, priority_class="marketing")  # drops
REVISIT = ActionSpec(kind="revisit", priority=2, priority_class="service")

ledgers = st.lists(
    st.tuples(
        st.sampled_from(["care_message", "revisit"]),
        st.sampled_from(["marketing", "service"]),
        st.integers(-10 * 24 * 60, 10 * 24 * 60),  # minutes around now
    ),
    max_size=12,
)


def history(items: list[tuple[str, str, int]]) -> list[Contact]:
    return [Contact(k, c, NOW + timedelta(minutes=m)) for k, c, m in items]


def allowed(spec: ActionSpec, ledger: list[Contact], at: datetime, zone: str) -> bool:
    if spec.customer_facing and QUIET.contains(at.astimezone(ZoneInfo(zone)).time()):
        return False
    return blocking_cap(POLICY, ledger, spec.kind, spec.priority_class, at) is None


@settings(max_examples=300, deadline=None)
@given(
    ledgers,
    st.sampled_from([SURVEY, REVISIT]),
    st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York"]),
)
def test_a_deferred_action_goes_out_at_the_first_allowed_moment(
    items: list[tuple[str, str, int]], spec: ActionSpec, zone: str
) -> None:
    ledger = history(items)
    d = decide(POLICY, spec, Reachability(timezone=zone), ledger, now=NOW)
    assert not d.suppressed, "a deferring rule is never suppressed by a cap"
    assert d.deliver_at >= NOW
    assert allowed(spec, ledger, d.deliver_at, zone)
    # No earlier moment would have done (checked on a 30-minute grid and just before it).
    wanted = quiet_until(NOW, zone, QUIET) if spec.customer_facing else NOW
    moment = wanted
    while moment < d.deliver_at - timedelta(seconds=1):
        assert not allowed(spec, ledger, moment, zone), (moment, d)
        moment += timedelta(minutes=30)
    if d.deliver_at > wanted:
        assert d.deferred_by is not None
        assert d.deferred_by == "quiet_hours" or d.deferred_by.startswith("cap:")
    else:
        assert d.deferred_by is None


@settings(max_examples=200, deadline=None)
@given(ledgers)
def test_a_dropping_rule_is_suppressed_by_the_cap_it_hits_and_kept_otherwise(
    items: list[tuple[str, str, int]],
) -> None:
    ledger = history(items)
    d = decide(POLICY, PROMO, Reachability(timezone="UTC"), ledger, now=NOW)
    at = quiet_until(NOW, "UTC", QUIET)
    cap = blocking_cap(POLICY, ledger, "care_message", "marketing", at)
    if cap is None:
        assert not d.suppressed
        assert d.deliver_at == at
    else:
        assert d.suppressed_reason == f"cap:{cap.id}"


def test_the_rule_decides_not_the_class() -> None:
    full = history([("care_message", "service", -60), ("care_message", "service", -30)])
    drop = ActionSpec(kind="care_message", priority=3, priority_class="service", on_cap="drop")
    defer = ActionSpec(kind="care_message", priority=3, priority_class="marketing", on_cap="defer")
    reach = Reachability(timezone="UTC")
    assert decide(POLICY, drop, reach, full, now=NOW).suppressed_reason == "cap:messages-week"
    later = decide(POLICY, defer, reach, full, now=NOW)
    assert not later.suppressed
    assert later.deferred_by == "cap:messages-week"
    # The first contact leaves the 7-day window a week after it was made: 11:00 UTC.
    assert later.deliver_at == NOW - timedelta(minutes=60) + timedelta(days=7)


def test_each_deferral_and_drop_is_counted_by_its_outcome() -> None:
    """What CONTACT_POLICY counts for a created row (the ActionWriter records explanation and
    status from the decision)."""
    deferred = {"status": "open", "explanation": {"deferred": {"by": "quiet_hours"}}}
    capped = {"status": "open", "explanation": {"deferred": {"by": "cap:messages-week"}}}
    dropped = {"status": "suppressed", "suppressed_reason": "cap:messages-week", "explanation": {}}
    refused = {"status": "suppressed", "suppressed_reason": "consent_withdrawn", "explanation": {}}
    on_time = {"status": "open", "explanation": {}}
    assert [policy_outcome(r) for r in (deferred, capped, dropped, refused, on_time)] == [
        "deferred_quiet_hours",
        "deferred_cap",
        "dropped_cap",
        None,  # counted by tierflow_notifier_actions_suppressed_total{reason}
        None,
    ]
    night = datetime(2026, 3, 28, 22, 30, tzinfo=UTC)
    d = decide(POLICY, PROMO, Reachability(timezone="UTC"), [], now=night)
    assert d.deferred_by == "quiet_hours"
    assert d.deliver_at == datetime(2026, 3, 29, 8, 0, tzinfo=UTC)
