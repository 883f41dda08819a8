"""The care-action contract downstream consumers rely on: what is published on `care-actions`
and POSTed to webhooks carries priority, reason (the change and its explanation), due time,
kind, owner or queue, channel and coupon details, and validates against the published schema."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta

import orjson

from tests.support import ROOT
from tierflow_common.contract import CARE_ACTION_TYPE, CareActionData
from tierflow_common.contract.events import CareActionKind, CarePriorityClass
from tierflow_notifier.adapters.playbooks_file import load_playbook
from tierflow_notifier.adapters.webhooks import action_cloudevent
from tierflow_notifier.domain.playbooks import ACTION_KINDS, DEFAULT_CLASS, plan_actions
from tierflow_notifier.domain.pressure import Decision, Reachability
from tierflow_notifier.service_layer.actions import ActionWriter, _event

PLAYBOOK = load_playbook(ROOT / "config" / "notifier.yaml")
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _rows(dimension: str, from_label: str | None, to_label: str) -> list[dict[str, object]]:
    writer = ActionWriter(playbook=PLAYBOOK, care_actions_topic="care-actions", endpoints=[])
    planned = plan_actions(
        PLAYBOOK,
        trigger_event_id="chg-1",
        dimension=dimension,
        from_label=from_label,
        to_label=to_label,
        change_reason="no purchase for 2 x the customer's rhythm",
        customer_id="c-1",
        explanation={"rule": "at_risk", "days_quiet": 190},
    )
    return [
        writer._row(p, Decision(None, NOW, "email"), Reachability(tier="VIP"), NOW) for p in planned
    ]


def test_the_contract_names_every_kind_and_class_the_notifier_uses() -> None:
    assert set(typing.get_args(CareActionKind)) == set(ACTION_KINDS)
    assert set(typing.get_args(CarePriorityClass)) == set(DEFAULT_CLASS.values())


def test_published_and_webhook_actions_carry_the_whole_contract() -> None:
    rows = {r["rule_id"]: r for r in _rows("lifecycle", "active", "at_risk")}
    # The personal revisit follows the care loop (care_contact), not the lifecycle itself.
    rows |= {r["rule_id"]: r for r in _rows("care_contact", "none", "revisit_due")}
    coupon_row, revisit_row = rows["at-risk-winback-coupon"], rows["at-risk-personal-revisit"]

    coupon = CareActionData.model_validate(_event(coupon_row).data)
    assert coupon.kind == "coupon"
    assert coupon.priority_class == "marketing"
    assert coupon.reason.startswith("lifecycle: active → at_risk (no purchase for 2 x")
    assert coupon.explanation["change"] == {"rule": "at_risk", "days_quiet": 190}
    assert coupon.channel == "email"
    assert coupon.details.coupon is not None
    assert (str(coupon.details.coupon.value), coupon.details.coupon.currency) == ("50.00", "USD")
    assert coupon.details.coupon.expires_at == NOW + timedelta(days=30)

    revisit = CareActionData.model_validate(_event(revisit_row).data)
    assert (revisit.kind, revisit.priority, revisit.owner) == ("revisit", 1, "queue:care-team")
    assert revisit.due_at == NOW + timedelta(days=3)
    assert revisit.details.coupon is None

    # The webhook body is a CloudEvent whose data is the same contract, field for field.
    body = orjson.loads(orjson.dumps(action_cloudevent(coupon_row)))
    assert body["type"] == CARE_ACTION_TYPE
    assert set(body["data"]) == set(CareActionData.model_fields)
    assert CareActionData.model_validate(body["data"]) == coupon
