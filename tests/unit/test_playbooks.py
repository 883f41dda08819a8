"""Playbook matching, the stable action ids that make creation exactly-once, and the playbook
file's validation (every trigger kind and action type; errors name file and line)."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from tests.notifier_support import playbook_text
from tests.support import ROOT
from tierflow_common.exceptions import ConfigError
from tierflow_notifier.adapters.playbooks_file import load_playbook
from tierflow_notifier.domain.playbooks import (
    BirthdayTrigger,
    CadenceTrigger,
    ComplaintTrigger,
    FirstPurchaseTrigger,
    plan_actions,
)

PLAYBOOK = load_playbook(ROOT / "config" / "notifier.yaml")


def plan(
    from_label: str | None, to_label: str, trigger: str = "t-1", dimension: str = "value_tier"
) -> list[str]:
    return [
        a.rule_id
        for a in plan_actions(
            PLAYBOOK,
            trigger_event_id=trigger,
            dimension=dimension,
            from_label=from_label,
            to_label=to_label,
            change_reason="r",
        )
    ]


def test_wildcards_and_first_assignment() -> None:
    assert plan("important", "VIP") == ["vip-account-manager"]
    assert plan(None, "regular") == ["new-customer-onboarding"]
    assert plan("potential", "regular") == []
    assert plan("VIP", "important") == ["important-care-revisit", "downgrade-winback"]


def test_lifecycle_churn_and_problem_transitions_are_generic_dimensions() -> None:
    assert plan("active", "at_risk", dimension="lifecycle") == ["at-risk-winback-coupon"]
    # The personal revisit follows the classifier's care_contact (the care loop).
    assert plan("none", "revisit_due", dimension="care_contact") == ["at-risk-personal-revisit"]
    assert plan("revisit_due", "contacted_recently", dimension="care_contact") == []
    assert plan("low", "high", dimension="churn_risk") == ["churn-risk-high-revisit"]
    assert plan("open_complaint", "escalated", dimension="problem") == [
        "problem-customer-escalation"
    ]


def test_action_ids_are_stable_per_trigger_and_rule() -> None:
    def ids(trigger: str) -> list[str]:
        return [
            a.action_id
            for a in plan_actions(
                PLAYBOOK,
                trigger_event_id=trigger,
                dimension="value_tier",
                from_label="VIP",
                to_label="important",
                change_reason="r",
            )
        ]

    assert ids("t-1") == ids("t-1")
    assert set(ids("t-1")).isdisjoint(ids("t-2"))
    assert len(set(ids("t-1"))) == 2


def test_shipped_playbook_has_every_trigger_and_action_kind() -> None:
    triggers = {type(r.trigger).__name__ for r in PLAYBOOK.rules}
    assert triggers == {
        "ChangeTrigger",
        "CadenceTrigger",
        "FirstPurchaseTrigger",
        "BirthdayTrigger",
        "ComplaintTrigger",
        "HolidayTrigger",
        "CareCompletedTrigger",
    }
    kinds = {r.action.kind for r in PLAYBOOK.rules}
    assert kinds == {
        "revisit",
        "follow_up",
        "coupon",
        "care_message",
        "escalation",
        "account_manager_assignment",
    }
    sla = [r for r in PLAYBOOK.rules if isinstance(r.trigger, ComplaintTrigger)]
    assert sorted(r.trigger.after for r in sla if isinstance(r.trigger, ComplaintTrigger)) == [
        timedelta(hours=24),
        timedelta(hours=72),
    ]
    assert all(r.action.priority_class == "critical" for r in sla)
    vip = PLAYBOOK.rule("vip-monthly-revisit")
    assert vip is not None
    assert vip.trigger == CadenceTrigger("value_tier", "VIP", timedelta(days=30))
    assert PLAYBOOK.policy.quiet_hours is not None


def test_test_playbook_parses_short_durations(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(playbook_text(birthday_at="07:30:15", first_purchase="1.5s"))
    pb = load_playbook(path)
    first = pb.scheduled(FirstPurchaseTrigger)[0].trigger
    birthday = pb.scheduled(BirthdayTrigger)[0].trigger
    assert first == FirstPurchaseTrigger(timedelta(seconds=1.5))
    assert birthday == BirthdayTrigger(time(7, 30, 15))


@pytest.mark.parametrize(
    ("bad", "where", "message"),
    [
        ("every: 2s}", "rules.5.when.cadence.every", "expected a duration"),
        ('at: "09:00"}', "rules.7.when.birthday.at", "not a time of day"),
        ("after: 1s}}\n    action: {kind: follow_up", "rules.6.action", "staff task"),
    ],
)
def test_errors_name_file_line_and_field(
    tmp_path: Path, bad: str, where: str, message: str
) -> None:
    text = playbook_text(birthday_at="09:00")
    replacement = {
        "every: 2s}": "every: soon}",
        'at: "09:00"}': 'at: "25:99"}',
        "after: 1s}}\n    action: {kind: follow_up": (
            "after: 1s}}\n    action: {channel: sms, kind: follow_up"
        ),
    }[bad]
    assert bad in text
    broken = text.replace(bad, replacement, 1)
    path = tmp_path / "p.yaml"
    path.write_text(broken)
    with pytest.raises(ConfigError) as info:
        load_playbook(path)
    assert f"{path}:" in str(info.value)
    assert where in str(info.value)
    assert message in str(info.value)


def test_two_triggers_in_one_rule_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "playbook_version: x\nrules:\n  - id: a\n"
        "    when: {dimension: value_tier, to: VIP, first_purchase: {after: 7d}}\n"
        "    action: {kind: revisit, priority: 1}\n"
    )
    with pytest.raises(ConfigError, match=rf"{path}:4: rules.0.when: .*exactly one trigger"):
        load_playbook(path)
