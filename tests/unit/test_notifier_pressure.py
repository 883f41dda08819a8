"""Contact pressure as pure functions, with properties that must hold for any input: caps are
never exceeded in any window, escalations are never suppressed or deferred, quiet hours hold in
every time zone, withdrawn consent suppresses marketing."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow_notifier.domain.playbooks import (
    DEFAULT_CLASS,
    ActionSpec,
    Cap,
    ContactPolicy,
    QuietHours,
)
from tierflow_notifier.domain.pressure import (
    Candidate,
    Reachability,
    decide,
    decide_all,
    quiet_until,
    resolve_channel,
)

NOW = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
ZONES = sorted(available_timezones())
KINDS = ["coupon", "care_message", "escalation", "revisit"]
POLICY = ContactPolicy(
    caps=(
        Cap("coupon-30d", frozenset({"coupon"}), frozenset({"marketing"}), 1, timedelta(days=30)),
        Cap(
            "messages-week",
            frozenset({"coupon", "care_message"}),
            frozenset({"marketing"}),
            3,
            timedelta(days=7),
        ),
        Cap("tasks-day", frozenset({"revisit"}), frozenset({"service"}), 2, timedelta(days=1)),
    ),
    quiet_hours=QuietHours(time(21, 0), time(8, 0)),
)


def spec(kind: str, priority: int = 3) -> ActionSpec:
    return ActionSpec(kind=kind, priority=priority, priority_class=DEFAULT_CLASS[kind])


candidates = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(KINDS),
        st.integers(0, 9),
        st.integers(0, 40 * 24 * 3600),  # not_before offset: up to 40 days ahead
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(candidates, st.sampled_from(ZONES))
def test_caps_hold_in_every_window_and_escalations_always_pass(
    items: list[tuple[str, str, int, int]], zone: str
) -> None:
    cands = [Candidate(c, spec(k, p), NOW + timedelta(seconds=off)) for c, k, p, off in items]
    reach = {"a": Reachability(timezone=zone), "b": Reachability(timezone="UTC")}
    decisions = decide_all(POLICY, cands, reach, {}, now=NOW)
    kept: dict[str, list[tuple[str, datetime]]] = {}
    for cand, d in zip(cands, decisions, strict=True):
        if cand.spec.kind == "escalation":
            assert not d.suppressed
            assert d.deliver_at == cand.not_before  # never deferred
        if not d.suppressed:
            kept.setdefault(cand.customer_id, []).append((cand.spec.kind, d.deliver_at))
    for entries in kept.values():
        for cap in POLICY.caps:
            times = sorted(
                t for k, t in entries if k in cap.kinds and DEFAULT_CLASS[k] in cap.classes
            )
            # Any window of the cap's length starting at a kept contact holds at most max_count.
            for i, start in enumerate(times):
                inside = [t for t in times[i:] if t < start + cap.window]
                assert len(inside) <= cap.max_count, (cap.id, times)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.integers(0, 366 * 24 * 60),
    st.integers(0, 23),
    st.integers(0, 23),
)
def test_quiet_hours_are_respected_in_any_time_zone(
    zone: str, minute: int, start_h: int, end_h: int
) -> None:
    if start_h == end_h:
        return
    quiet = QuietHours(time(start_h, 0), time(end_h, 0))
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute)
    result = quiet_until(moment, zone, quiet)
    assert result >= moment
    assert not quiet.contains(result.astimezone(ZoneInfo(zone)).time())
    assert result - moment <= timedelta(hours=26)  # at most the quiet span (+ a DST hour)
    if not quiet.contains(moment.astimezone(ZoneInfo(zone)).time()):
        assert result == moment


def test_withdrawn_consent_suppresses_marketing_but_not_tasks() -> None:
    reach = Reachability(marketing_consent=False)
    assert decide(POLICY, spec("coupon"), reach, [], now=NOW).suppressed_reason == (
        "consent_withdrawn"
    )
    assert not decide(POLICY, spec("revisit"), reach, [], now=NOW).suppressed
    assert not decide(POLICY, spec("escalation"), reach, [], now=NOW).suppressed


def test_channel_follows_preference_and_per_channel_consent() -> None:
    message = spec("care_message")
    assert resolve_channel(message, Reachability(preferred_channel="sms"), POLICY) == "sms"
    refused = Reachability(preferred_channel="sms", channel_consent={"sms": False})
    assert resolve_channel(message, refused, POLICY) == "email"  # the policy default
    nothing = Reachability(channel_consent={"email": False})
    assert decide(POLICY, message, nothing, [], now=NOW).suppressed_reason == (
        "no_consented_channel"
    )


def test_higher_priority_takes_the_contested_cap_slot() -> None:
    low, high = spec("coupon", priority=5), spec("coupon", priority=1)
    reach = {"a": Reachability(timezone="UTC")}
    first, second = decide_all(
        POLICY, [Candidate("a", low), Candidate("a", high)], reach, {}, now=NOW
    )
    assert first.suppressed_reason == "cap:coupon-30d"
    assert not second.suppressed


def test_a_deferred_message_waits_for_the_end_of_quiet_hours() -> None:
    night = datetime(2026, 3, 28, 22, 30, tzinfo=ZoneInfo("Asia/Shanghai")).astimezone(UTC)
    d = decide(POLICY, spec("care_message"), Reachability(timezone="Asia/Shanghai"), [], now=night)
    assert d.deliver_at == datetime(2026, 3, 29, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
