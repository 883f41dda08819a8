"""Configuration files fail start-up with the file, the line and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_classification import ROOT
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_common.exceptions import ConfigError
from tierflow_notifier.adapters.playbooks_file import load_playbook


def test_shipped_configuration_is_valid() -> None:
    assert load_rules(ROOT / "config" / "classifier.yaml").dimensions
    assert load_playbook(ROOT / "config" / "notifier.yaml").rules


def write_rules(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    text = (ROOT / "config" / "classifier.yaml").read_text()
    assert old in text
    changed = text.replace(old, new, 1)
    path = tmp_path / "rules.yaml"
    path.write_text(changed)
    line = next(i for i, ln in enumerate(changed.splitlines(), 1) if new.strip() in ln)
    return path, line


@pytest.mark.parametrize(
    ("old", "new", "field", "needle"),
    [
        (
            '"spend_window >= vip_spend && orders_window >= vip_orders"',
            '"spend_window >= && orders_window"',
            "dimensions.value_tier.rules.0.when",
            "invalid CEL",
        ),
        (
            '"spend_window >= important_spend"',
            '"spend_windw >= important_spend"',
            "dimensions.value_tier.rules.1.when",
            "unknown name(s) spend_windw",
        ),
        (
            '"orders_window >= high_frequency_orders"',
            '"orders_window * 2 >= high_frequency_orders"',
            "dimensions.behaviour.rules.0.when",
            "float * int",
        ),
        (
            '"purchases_lifetime >= 1"}',
            '"purchases_lifetime + 1.0"}',
            "dimensions.value_tier.rules.2.when",
            "must evaluate to true or false",
        ),
        (
            "anchor: first_purchase_at,",
            "anchor: birthday,",
            "timers.onboarding_over.anchor",
            "anchor must be one of",
        ),
    ],
)
def test_bad_rules_report_file_line_and_reason(
    tmp_path: Path, old: str, new: str, field: str, needle: str
) -> None:
    path, line = write_rules(tmp_path, old, new)
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    message = str(info.value)
    assert f"{path}:{line}: {field}" in message
    assert needle in message


def test_broken_yaml_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("playbook_version: x\nrules:\n  - id: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: invalid YAML"):
        load_playbook(path)


def test_unknown_action_kind_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "playbook_version: x\nrules:\n  - id: a\n    when: {dimension: value_tier, to: VIP}\n"
        "    action: {kind: fax, priority: 1}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_playbook(path)
    assert f"{path}:5: rules.0.action.kind" in str(info.value)
