"""Contact pressure: consent, channel, quiet hours and caps decide whether and when an action
goes out. Pure: the ledger history and `now` are passed in.

Guarantees (property-tested): a cap is never exceeded in any window of its length, whatever the
order of candidates; a critical action (escalation) is never suppressed or deferred; a deferred
customer-facing action never lands in the customer's quiet hours; a capped action whose rule
says `on_cap: defer` is deferred to the first moment the caps (and quiet hours) allow, never
suppressed by a cap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from tierflow_notifier.domain.playbooks import ActionSpec, Cap, ContactPolicy, QuietHours

PREFERRED = "preferred"


@dataclass(frozen=True)
class Reachability:
    """What the notifier knows about how (and whether) a customer may be contacted."""

    timezone: str | None = None
    preferred_channel: str | None = None
    marketing_consent: bool | None = None  # None = never stated
    channel_consent: Mapping[str, bool] = field(default_factory=dict)
    tier: str | None = None


@dataclass(frozen=True)
class Contact:
    """One ledger entry: an action that reached (or will reach) the customer at `at`."""

    kind: str
    priority_class: str
    at: datetime


@dataclass(frozen=True)
class Decision:
    suppressed_reason: str | None
    deliver_at: datetime
    channel: str | None
    # Why it goes out later than it could have: "quiet_hours" or "cap:<id>" (None: on time).
    deferred_by: str | None = None

    @property
    def suppressed(self) -> bool:
        return self.suppressed_reason is not None


@dataclass(frozen=True)
class Candidate:
    customer_id: str
    spec: ActionSpec
    not_before: datetime | None = None


def resolve_channel(spec: ActionSpec, reach: Reachability, policy: ContactPolicy) -> str | None:
    """The first channel, in the rule's order of preference, the customer has not refused."""
    wanted = spec.channel or PREFERRED
    if wanted == PREFERRED:
        first = [reach.preferred_channel] if reach.preferred_channel else []
        order = [*first, *spec.fallback_channels, policy.default_channel]
    else:
        order = [wanted, *spec.fallback_channels]
    for channel in order:
        if reach.channel_consent.get(channel, True):
            return channel
    return None


def quiet_until(moment: datetime, tz: str, quiet: QuietHours | None) -> datetime:
    """`moment` if it is outside quiet hours in `tz`, else the end of those quiet hours."""
    if quiet is None:
        return moment
    zone = ZoneInfo(tz)
    for _ in range(4):  # more than one step only around DST transitions
        local = moment.astimezone(zone)
        if not quiet.contains(local.time()):
            return moment
        end_day = local.date()
        if quiet.start > quiet.end and local.time() >= quiet.start:
            end_day += timedelta(days=1)
        end = datetime.combine(end_day, quiet.end, tzinfo=zone).astimezone(UTC)
        moment = end if end > moment else moment + timedelta(minutes=30)
    return moment


def blocking_cap(
    policy: ContactPolicy, history: Sequence[Contact], kind: str, priority_class: str, at: datetime
) -> Cap | None:
    """The first cap one more contact at `at` would break.

    Counting (at - window, at + window) rather than only the past is what makes the cap hold in
    every window, also when deferred contacts sit in the future.
    """
    for cap in policy.caps:
        if not cap.applies(kind, priority_class):
            continue
        lo, hi = at - cap.window, at + cap.window
        used = sum(1 for c in history if cap.applies(c.kind, c.priority_class) and lo < c.at < hi)
        if used >= cap.max_count:
            return cap
    return None


def first_allowed(
    policy: ContactPolicy,
    history: Sequence[Contact],
    spec: ActionSpec,
    at: datetime,
    quiet: Callable[[datetime], datetime],
) -> datetime:
    """The earliest moment from `at` that `quiet` leaves as it is and no cap blocks.

    A cap can only unblock when a counted contact leaves the window, so the candidates are
    `at` and each contact's time plus its cap's window; after the last of them no contact is
    in any window, so the search always ends."""
    caps = [cap for cap in policy.caps if cap.applies(spec.kind, spec.priority_class)]
    frees = sorted(
        {
            c.at + cap.window
            for cap in caps
            for c in history
            if cap.applies(c.kind, c.priority_class) and c.at + cap.window > at
        }
    )
    for candidate in (at, *frees):
        moment = quiet(candidate)
        if blocking_cap(policy, history, spec.kind, spec.priority_class, moment) is None:
            return moment
    raise AssertionError("unreachable: past every contact's window no cap blocks")


def decide(
    policy: ContactPolicy,
    spec: ActionSpec,
    reach: Reachability,
    history: Sequence[Contact],
    *,
    now: datetime,
    not_before: datetime | None = None,
) -> Decision:
    deliver_at = max(now, not_before) if not_before is not None else now
    channel: str | None = None
    deferred_by: str | None = None
    if spec.priority_class == "critical":
        # Escalations reach staff whatever marketing caps, quiet hours or consent say.
        return Decision(None, deliver_at, spec.channel if spec.customer_facing else None)
    if spec.customer_facing:
        if spec.priority_class == "marketing" and reach.marketing_consent is False:
            return Decision("consent_withdrawn", deliver_at, None)
        channel = resolve_channel(spec, reach, policy)
        if channel is None:
            return Decision("no_consented_channel", deliver_at, None)
        tz = reach.timezone or policy.default_timezone
        wanted = deliver_at
        deliver_at = quiet_until(deliver_at, tz, policy.quiet_hours)
        deferred_by = "quiet_hours" if deliver_at != wanted else None
    cap = blocking_cap(policy, history, spec.kind, spec.priority_class, deliver_at)
    if cap is None:
        return Decision(None, deliver_at, channel, deferred_by)
    if spec.cap_outcome == "drop":
        return Decision(f"cap:{cap.id}", deliver_at, channel)
    zone = reach.timezone or policy.default_timezone
    quiet = policy.quiet_hours if spec.customer_facing else None
    later = first_allowed(policy, history, spec, deliver_at, lambda m: quiet_until(m, zone, quiet))
    return Decision(None, later, channel, f"cap:{cap.id}")


def decide_all(
    policy: ContactPolicy,
    candidates: Sequence[Candidate],
    reach: Mapping[str, Reachability],
    history: Mapping[str, Sequence[Contact]],
    *,
    now: datetime,
) -> list[Decision]:
    """Decide a burst in priority order (the most urgent takes a contested cap slot first);
    decisions come back in the input order. `history` is not modified."""
    ledger = {cid: list(entries) for cid, entries in history.items()}
    order = sorted(range(len(candidates)), key=lambda i: candidates[i].spec.priority)
    out: dict[int, Decision] = {}
    for i in order:
        cand = candidates[i]
        mine = ledger.setdefault(cand.customer_id, [])
        decision = decide(
            policy,
            cand.spec,
            reach.get(cand.customer_id, Reachability()),
            mine,
            now=now,
            not_before=cand.not_before,
        )
        if not decision.suppressed:
            mine.append(Contact(cand.spec.kind, cand.spec.priority_class, decision.deliver_at))
        out[i] = decision
    return [out[i] for i in range(len(candidates))]
