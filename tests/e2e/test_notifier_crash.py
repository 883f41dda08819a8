"""SIGKILL the notifier in the middle of delivering 3,000 care actions to a real webhook
receiver: after a restart every action id reaches the receiver (none lost), no trigger got a
second action (none duplicated), and every request carried a valid signature. A request the
killed process had sent but not yet recorded is sent again with the same webhook-id, which is
what the Standard Webhooks receiver dedupes on; the test reports how many."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.e2e.conftest import Pipeline
from tests.integration.helpers import produce
from tests.notifier_support import ThreadedReceiver, WebhookReceiver, change_event, webhooks_env
from tests.support import ServiceProcess, unique
from tierflow_common.db.engine import create_engine

pytestmark = pytest.mark.e2e
ACTIONS = 3_000


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


async def test_sigkill_mid_delivery_loses_and_duplicates_no_action(
    pipeline: Pipeline, log_dir: Path
) -> None:
    pipeline.notifier.stop()  # replaced by one that delivers to our receiver
    with ThreadedReceiver(WebhookReceiver()) as receiver:
        env = {
            **pipeline.env,
            "NOTIFIER_WEBHOOKS": webhooks_env(receiver.endpoint("crm")),
            "NOTIFIER_DELIVERY_LEASE_S": "2",
            "NOTIFIER_DELIVERY_CONCURRENCY": "16",
        }
        notifier = ServiceProcess("notifier", env, log_dir)
        notifier.start()
        try:
            tag = unique("k")
            await produce(
                pipeline.kafka,
                pipeline.topics.classification_changed,
                [
                    change_event(f"{tag}-{i}", f"{tag}-{i}", "value_tier", "important", "VIP")
                    for i in range(ACTIONS)
                ],
            )
            wait_for(lambda: len(receiver.ids()) >= ACTIONS // 10, 60, "first deliveries")
            notifier.kill()
            at_kill = len(receiver.ids())
            notifier.start()
            engine = create_engine(pipeline.database)
            try:
                async with engine.connect() as conn:
                    deadline = time.monotonic() + 90
                    while time.monotonic() < deadline:
                        ids = set(
                            (
                                await conn.execute(text("SELECT action_id FROM care_actions"))
                            ).scalars()
                        )
                        if len(ids) == ACTIONS and receiver.ids() >= ids:
                            break
                        await asyncio.sleep(0.2)
                    keys = await conn.scalar(
                        text("SELECT count(DISTINCT (trigger_event_id, rule_id)) FROM care_actions")
                    )
            finally:
                await engine.dispose()
        finally:
            notifier.stop()
    assert at_kill < ACTIONS, "the kill came too late to interrupt delivery"
    assert len(ids) == ACTIONS == keys
    assert receiver.ids() == ids
    assert receiver.bad_signatures == 0
    print(f"killed after {at_kill} deliveries; re-sent webhook-ids: {receiver.duplicates()}")
