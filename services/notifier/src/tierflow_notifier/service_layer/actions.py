"""Create planned actions exactly once, under the contact-pressure ledger, inside the caller's
transaction: the action rows, their ledger entries, their webhook deliveries and their
`care-actions` outbox records commit (or vanish) together."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.contract import CARE_ACTION_TYPE, EmittedEvent
from tierflow_common.trace_context import TraceContext
from tierflow_notifier.adapters import projection, repository
from tierflow_notifier.adapters.webhooks import action_payload
from tierflow_notifier.domain.playbooks import PlannedAction, Playbook
from tierflow_notifier.domain.pressure import Candidate, Decision, Reachability, decide_all
from tierflow_notifier.metrics import ACTIONS_CREATED, ACTIONS_SUPPRESSED, CONTACT_POLICY

SOURCE = "tierflow/notifier"


@dataclass
class Tally:
    """What a write did; applied to the metrics only once its transaction committed."""

    created: Counter[tuple[str, str]] = field(default_factory=Counter)
    suppressed: Counter[str] = field(default_factory=Counter)
    # (rule, outcome): deferred_quiet_hours, deferred_cap, dropped_cap (policy_outcome).
    policy: Counter[tuple[str, str]] = field(default_factory=Counter)
    duplicates: int = 0

    def add(self, other: Tally) -> None:
        self.created.update(other.created)
        self.suppressed.update(other.suppressed)
        self.policy.update(other.policy)
        self.duplicates += other.duplicates

    @property
    def total_created(self) -> int:
        return sum(self.created.values()) + sum(self.suppressed.values())

    def publish(self) -> None:
        for (kind, rule), n in self.created.items():
            ACTIONS_CREATED.labels(kind=kind, rule=rule).inc(n)
        for reason, n in self.suppressed.items():
            ACTIONS_SUPPRESSED.labels(reason=reason).inc(n)
        for (rule, outcome), n in self.policy.items():
            CONTACT_POLICY.labels(rule=rule, outcome=outcome).inc(n)


def policy_outcome(row: dict[str, Any]) -> str | None:
    """What the contact policy did to a created action row, for CONTACT_POLICY (None: it goes
    out when planned)."""
    if row["status"] == "suppressed":
        reason = str(row["suppressed_reason"])
        return "dropped_cap" if reason.startswith("cap:") else None
    deferred = row["explanation"].get("deferred")
    if not deferred:
        return None
    return "deferred_quiet_hours" if deferred["by"] == "quiet_hours" else "deferred_cap"


@dataclass
class WriteResult:
    emit: list[tuple[str, EmittedEvent]] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)


@dataclass
class Decided:
    """Planned actions not created before, each with the contact policy's decision, and the
    customers' reachability the decisions read."""

    new: list[PlannedAction]
    decisions: list[Decision]
    reach: dict[str, Reachability]


async def decide_planned(
    conn: AsyncConnection, playbook: Playbook, unique: Sequence[PlannedAction], now: datetime
) -> Decided:
    """What the contact policy decides for planned actions (distinct ids) at `now`: against
    the customers' stored consent, channels and time zone and their contact ledger over the
    widest cap window; actions that exist already are left out. Creating them (ActionWriter,
    with the customers locked first) and a what-if count of them (the classifier's simulation)
    both decide here."""
    customers = sorted({p.customer_id for p in unique})
    widest = max((cap.window for cap in playbook.policy.caps), default=timedelta(0))
    inputs = await repository.decision_inputs(
        conn, [p.action_id for p in unique], customers, now - widest
    )
    new = [p for p in unique if p.action_id not in inputs.existing]
    reach = {c: projection.reachability(row) for c, row in inputs.contacts.items()}
    decisions = (
        decide_all(
            playbook.policy,
            [Candidate(p.customer_id, p.rule.action, p.not_before) for p in new],
            reach,
            inputs.ledger,
            now=now,
        )
        if new
        else []
    )
    return Decided(new, decisions, reach)


@dataclass
class ActionWriter:
    playbook: Playbook
    care_actions_topic: str
    endpoints: Sequence[str]

    async def write(
        self,
        conn: AsyncConnection,
        planned: Sequence[PlannedAction],
        now: datetime,
        traces: Mapping[str, TraceContext] | None = None,
    ) -> WriteResult:
        """`traces`: each customer's trace context (of the change that caused its actions),
        kept with the action (its deliveries send it) and on its care-actions record."""
        result = WriteResult()
        traces = traces or {}
        unique = list({p.action_id: p for p in planned}.values())
        result.tally.duplicates = len(planned) - len(unique)
        if not unique:
            return result
        await repository.lock_customers(conn, sorted({p.customer_id for p in unique}))
        decided = await decide_planned(conn, self.playbook, unique, now)
        new, decisions, reach = decided.new, decided.decisions, decided.reach
        result.tally.duplicates += len(unique) - len(new)
        if not new:
            return result
        rows = [
            self._row(p, d, reach.get(p.customer_id), now, traces.get(p.customer_id))
            for p, d in zip(new, decisions, strict=True)
        ]
        # Ledger entries and deliveries for every action that reaches the customer; the
        # statement keeps only those of the actions it actually creates.
        ledger_rows: list[dict[str, Any]] = []
        deliveries: list[dict[str, Any]] = []
        for row in rows:
            if row["status"] == "suppressed":
                continue
            ledger_rows.append(
                {
                    "action_id": row["action_id"],
                    "customer_id": row["customer_id"],
                    "kind": row["kind"],
                    "priority_class": row["priority_class"],
                    "channel": row["channel"],
                    "at": row["deliver_at"],
                }
            )
            deliveries += [
                repository.delivery_row(row["action_id"], ep, row["priority"], row["deliver_at"])
                for ep in self.endpoints
            ]
        created = await repository.create_actions(conn, rows, ledger_rows, deliveries)
        result.tally.duplicates += len(new) - len(created)
        for row in rows:
            if row["action_id"] not in created:
                continue
            outcome = policy_outcome(row)
            if outcome is not None:
                result.tally.policy[(row["rule_id"], outcome)] += 1
            if row["status"] == "suppressed":
                result.tally.suppressed[row["suppressed_reason"]] += 1
                continue
            result.tally.created[(row["kind"], row["rule_id"])] += 1
            result.emit.append(
                (self.care_actions_topic, _event(row, traces.get(row["customer_id"])))
            )
        return result

    def _row(
        self,
        p: PlannedAction,
        decision: Decision,
        reach: Reachability | None,
        now: datetime,
        trace: TraceContext | None = None,
    ) -> dict[str, Any]:
        spec = p.rule.action
        details: dict[str, Any] = {}
        suppressed = decision.suppressed_reason
        explanation = dict(p.explanation)
        if decision.deferred_by is not None:
            # Why it waits: the first moment quiet hours and the caps allow (pressure.py).
            explanation["deferred"] = {"by": decision.deferred_by, "until": _iso(decision)}
        if spec.template:
            details["template"] = spec.template
        if p.context:
            details.update(p.context)
        tier = reach.tier if reach else None
        if tier:
            details["tier"] = tier
        if spec.coupon is not None:
            value = spec.coupon.value_for(tier)
            if value is None and suppressed is None:
                suppressed = "coupon_not_offered_for_tier"
            details["coupon"] = {
                "code": "TF-" + p.action_id.replace("-", "")[:12].upper(),
                "value": None if value is None else format(value, "f"),
                "currency": spec.coupon.currency,
                "expires_at": (decision.deliver_at + spec.coupon.expires_in).isoformat(),
            }
        return {
            "action_id": p.action_id,
            "trigger_event_id": p.trigger_key,
            "rule_id": p.rule.id,
            "customer_id": p.customer_id,
            "kind": spec.kind,
            "priority": spec.priority,
            "priority_class": spec.priority_class,
            "reason": p.reason,
            "status": "suppressed" if suppressed else "open",
            "suppressed_reason": suppressed,
            "owner": spec.owner,
            "channel": decision.channel,
            "deliver_at": decision.deliver_at,
            "due_at": decision.deliver_at + spec.due_in,
            "explanation": explanation,
            "details": details,
            "created_at": now,
            "churn_probability": p.scores.churn_probability if p.scores else None,
            "clv": p.scores.clv if p.scores else None,
            "value_at_risk": p.scores.value_at_risk if p.scores else None,
            "trace_context": trace.carrier() if trace else None,
        }


def _iso(decision: Decision) -> str:
    return decision.deliver_at.astimezone(UTC).isoformat()


def _event(row: dict[str, Any], trace: TraceContext | None = None) -> EmittedEvent:
    # The CareActionData contract, built directly (the webhook body's data is the same dict);
    # tests/unit/test_care_action_contract.py validates it against the model.
    data = action_payload(row)
    return EmittedEvent(
        id=row["action_id"],
        type=CARE_ACTION_TYPE,
        source=SOURCE,
        subject=row["customer_id"],
        time=row["created_at"],
        data=data,
        trace=trace,
    )
