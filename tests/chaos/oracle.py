"""The oracle of the fault scenarios: what the pipeline must end with, from the events alone.

`fold` runs over the events the ingest acknowledged (202), deduplicated by (source, id) and in
the order they were acknowledged, and gives every customer's expected state and the value-tier
labels it passes through. It reuses the classifier's pure domain code (`to_domain`, `apply`)
because that code *is* the specification of a feature or a label; it is still an independent
check of what the faults attack: it runs in one process, one event at a time, with no broker,
no database, no batching, no ledger, no stored offsets, no outbox and no rebalances — so an
event lost, applied twice or applied by a fenced-out zombie shows as a difference.

Judged at each event's own time (the pipeline judges on the wall clock): the scenarios send
events dated in the last hours, where no rolling window or time-driven transition can tell the
two apart. The pipeline classifies once per batch per customer, so it may skip intermediate
labels; what it publishes must be a subsequence of `tiers[customer]` ending at its last label.

`care_actions` runs the fold's value-tier changes through the notifier's own pure planner
(`plan_actions`): which playbook rule fires for which change. The pipeline may skip
intermediate labels, so it is exact for rules that fire on a label a customer reaches at most
once and keeps (the scenarios' playbook, tests/chaos/care.py: "to VIP", with purchases only):
every subsequence ending at the fold's last label fires them as often as the fold's path does.
Scheduled (time-driven) rules are left out of the scenarios' playbook, as the population
refresh is left out of the classifier's run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from aiokafka.structs import ConsumerRecord

from tierflow_classifier.domain.apply import VALUE_TIER, apply
from tierflow_classifier.domain.erasure import EraseRequest
from tierflow_classifier.domain.model import CustomerState
from tierflow_classifier.domain.rules import RuleSet
from tierflow_classifier.exceptions import UnprocessableEvent
from tierflow_classifier.service_layer.handler import to_domain
from tierflow_common.contract import EmittedEvent, encode_event
from tierflow_common.exceptions import PoisonRecord
from tierflow_notifier.domain.playbooks import ChangeTrigger, Playbook, plan_actions


@dataclass(frozen=True)
class ExpectedCustomer:
    purchases: int
    net_spend: Decimal
    tier: str | None


@dataclass
class Expected:
    """The fold's result: per customer state and tier path, and which events it rejected."""

    states: dict[str, CustomerState] = field(default_factory=dict)
    tiers: dict[str, list[str]] = field(default_factory=dict)
    # (from, to) of every value-tier change, per customer, in order
    tier_changes: dict[str, list[tuple[str | None, str]]] = field(default_factory=dict)
    applied: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # event id -> reason

    def customer(self, cid: str) -> ExpectedCustomer:
        state = self.states[cid]
        path = self.tiers.get(cid)
        return ExpectedCustomer(
            state.purchases_lifetime, state.net_spend_lifetime, path[-1] if path else None
        )


def as_record(event: EmittedEvent) -> ConsumerRecord[bytes, bytes]:
    """The event as the classifier receives it (the contract's Kafka binding)."""
    rec = encode_event(event)
    headers = [(k, bytes(v)) for k, v in rec.headers]
    return ConsumerRecord("oracle", 0, 0, 0, 0, rec.key, rec.value, None, 0, 0, headers)


def fold(acknowledged: Iterable[EmittedEvent], rules: RuleSet) -> Expected:
    """Apply each unique acknowledged event once, in order, to an in-memory state."""
    out = Expected()
    seen: set[tuple[str, str]] = set()
    for event in acknowledged:
        if (event.source, event.id) in seen:
            continue
        seen.add((event.source, event.id))
        try:
            domain = to_domain(as_record(event))
            if isinstance(domain, EraseRequest):  # the scenarios send none; not modelled here
                raise PoisonRecord("erasure is not folded", field="type")
            state, changes = apply(out.states.get(event.subject), domain, rules, at=event.time)
        except (PoisonRecord, UnprocessableEvent) as exc:
            out.rejected[event.id] = str(exc)
            continue
        out.states[event.subject] = state
        out.applied += 1
        for change in changes:
            if change.dimension == VALUE_TIER:
                out.tiers.setdefault(event.subject, []).append(change.to.label)
                out.tier_changes.setdefault(event.subject, []).append(
                    (change.from_label, change.to.label)
                )
    return out


ActionKey = tuple[str, str]  # (customer, rule id)


def care_actions(expected: Expected, playbook: Playbook) -> Counter[ActionKey]:
    """How many care actions of each (customer, rule) the fold's value-tier changes cause,
    by the notifier's planner. A playbook with a rule on any other dimension, or a scheduled
    one, cannot be judged this way (refused)."""
    for rule in playbook.rules:
        trigger = rule.trigger
        if not (isinstance(trigger, ChangeTrigger) and trigger.dimension == VALUE_TIER):
            raise ValueError(f"rule {rule.id}: the oracle judges value-tier change rules only")
    out: Counter[ActionKey] = Counter()
    for cid, changes in expected.tier_changes.items():
        for i, (from_label, to_label) in enumerate(changes):
            planned = plan_actions(
                playbook,
                trigger_event_id=f"oracle-{cid}-{i}",
                dimension=VALUE_TIER,
                from_label=from_label,
                to_label=to_label,
                change_reason="oracle",
                customer_id=cid,
            )
            out.update((cid, p.rule_id) for p in planned)
    return out


def is_subsequence(published: list[str], path: list[str]) -> bool:
    """Each published label in the fold's path, in order (skipping labels is allowed)."""
    it = iter(path)
    return all(label in it for label in published)
