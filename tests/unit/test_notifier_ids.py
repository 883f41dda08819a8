"""The notifier's stable ids (actions, deliveries, schedule entries) are uuid5 in its namespace:
the fast construction gives exactly the text `uuid.uuid5` gives, so ids made before and after it
agree (an action created before an upgrade is recognised after it)."""

from __future__ import annotations

import uuid

from hypothesis import example, given
from hypothesis import strategies as st

from tierflow_notifier.adapters.repository import delivery_id_for
from tierflow_notifier.domain.playbooks import ACTION_NAMESPACE, action_id_for, stable_id
from tierflow_notifier.domain.schedules import schedule_id


@given(st.text())
@example("")
@example("6f77a5b3-459b-5a2e-99f7-465cf68b605d|new-customer-onboarding")
@example("é∑\U0001f600")
def test_stable_id_is_uuid5_in_the_action_namespace(name: str) -> None:
    assert stable_id(name) == str(uuid.uuid5(ACTION_NAMESPACE, name))


def test_each_kind_of_id_keeps_its_recipe() -> None:
    assert action_id_for("chg-1", "vip") == str(uuid.uuid5(ACTION_NAMESPACE, "chg-1|vip"))
    assert delivery_id_for("a-1", "crm") == str(uuid.uuid5(ACTION_NAMESPACE, "delivery|a-1|crm"))
    assert schedule_id("cadence", "c-1", "r") == str(
        uuid.uuid5(ACTION_NAMESPACE, "schedule|cadence|c-1|r")
    )
