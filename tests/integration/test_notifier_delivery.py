"""Webhook delivery isolation and the dead-letter state: a failing endpoint and a slow one
delay nothing else; dead deliveries are listed and, once the endpoint is healthy again, an
operator retry delivers each action exactly once per webhook-id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from tests.integration.helpers import eventually
from tests.notifier_support import (
    Harness,
    WebhookReceiver,
    change_event,
    playbook_text,
    start_harness,
    write_playbook,
)
from tests.support import plain_producer, unique
from tierflow_common.cli import app as cli
from tierflow_common.contract import encode_event
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration
ACTIONS = 40


async def tierflow(*args: str, url: str, key: str) -> Result:
    """The `tierflow` CLI, in a thread (it blocks; the notifier serves on this loop), sending
    `key` (TIERFLOW_API_KEY)."""
    runner = CliRunner(env={"TIERFLOW_API_KEY": key})
    return await asyncio.to_thread(runner.invoke, cli, [*args, "--url", url])


def output(result: Result) -> list[str]:
    """The command's own lines (the in-process notifier's log lines share stdout)."""
    return [ln for ln in result.stdout.splitlines() if ln and not ln.startswith("20")]


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


@pytest.fixture
async def harness(
    stack: AsyncExitStack,
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    tmp_path: Path,
) -> Harness:
    return await start_harness(
        stack,
        kafka=kafka_settings,
        database=database,
        topics=topics,
        playbook=write_playbook(tmp_path / "p.yaml", playbook_text(cadence="7d")),
        receivers={
            "good": WebhookReceiver(),
            "bad": WebhookReceiver(status=500),
            "slow": WebhookReceiver(delay=1.0),
        },
        delivery_concurrency=8,
        breaker_cooldown_s=0.02,
    )


async def test_bad_and_slow_endpoints_block_nothing_and_dead_ones_can_be_retried(
    harness: Harness, stack: AsyncExitStack
) -> None:
    good, bad, slow = (harness.receivers[n] for n in ("good", "bad", "slow"))
    tag = unique("c")
    await harness.changes(
        [
            change_event(f"vip-{i}", f"{tag}-{i}", "value_tier", "important", "VIP")
            for i in range(ACTIONS)
        ]
    )
    rows = await eventually(
        lambda: harness.rows("customer_id LIKE :t", t=f"{tag}-%"), lambda r: len(r) == ACTIONS
    )
    expected = {r["action_id"] for r in rows}

    async def good_ids() -> set[str]:
        return good.ids()

    await eventually(good_ids, lambda ids: ids == expected, timeout=10)
    # The slow endpoint (1 s per request, 8 at a time) is still busy: it held nobody up.
    assert len(slow.ids()) < ACTIONS

    async def dead() -> list[dict[str, Any]]:
        resp = await harness.client.get(
            "/v1/deliveries", params={"state": "dead", "endpoint": "bad", "limit": 1000}
        )
        items: list[dict[str, Any]] = resp.json()["items"]
        return items

    dead_rows = await eventually(dead, lambda d: len(d) == ACTIONS, timeout=30)
    assert {d["action_id"] for d in dead_rows} == expected
    assert all(d["attempts"] == 3 and d["last_error"] == "HTTP 500" for d in dead_rows)
    assert bad.attempts >= 3 * ACTIONS
    assert not bad.ids()

    delivered = (
        await harness.client.get(
            "/v1/deliveries", params={"state": "delivered", "endpoint": "good"}
        )
    ).json()["items"]
    not_dead = await harness.client.post(f"/v1/deliveries/{delivered[0]['delivery_id']}/retry")
    assert not_dead.status_code == 409

    # The operator's view and retry, by CLI (it talks to the notifier API over HTTP).
    url = await harness.serve_http(stack)
    key = harness.client.headers["authorization"].removeprefix("Bearer ")
    listed = await tierflow(
        "deliveries", "list", "--state", "dead", "--endpoint", "bad", url=url, key=key
    )
    assert listed.exit_code == 0, listed.output
    assert {line.split()[0] for line in output(listed)} == {d["delivery_id"] for d in dead_rows}
    assert all("HTTP 500" in line for line in output(listed))
    bad.status = 200
    one = await tierflow("deliveries", "retry", dead_rows[0]["delivery_id"], url=url, key=key)
    assert one.exit_code == 0, one.output
    again = await tierflow("deliveries", "retry", dead_rows[0]["delivery_id"], url=url, key=key)
    assert again.exit_code == 1  # no longer dead: nothing to retry
    assert "not dead" in again.output
    rest = await tierflow("deliveries", "retry", "--endpoint", "bad", url=url, key=key)
    assert output(rest) == [f"retried {ACTIONS - 1} dead deliveries"]

    async def bad_ids() -> set[str]:
        return bad.ids()

    await eventually(bad_ids, lambda ids: ids == expected, timeout=15)
    await eventually(lambda: slow_ids(slow), lambda ids: ids == expected, timeout=20)
    for receiver in (good, bad, slow):
        assert receiver.duplicates() == 0
        assert receiver.bad_signatures == 0
    metrics = (await harness.client.get("/metrics")).text
    assert 'tierflow_notifier_deliveries_total{endpoint="bad",outcome="dead_lettered"}' in metrics


async def slow_ids(receiver: WebhookReceiver) -> set[str]:
    return receiver.ids()


OUTAGE_S = 15.0
RATE = 20  # actions/s, steady, before, during and after the outage


@pytest.fixture
async def outage(
    stack: AsyncExitStack,
    kafka_settings: KafkaSettings,
    database: DatabaseSettings,
    topics: TopicSettings,
    tmp_path: Path,
) -> Harness:
    # The production policy, scaled down: 15 attempts, backoff doubling to a cap, a breaker.
    return await start_harness(
        stack,
        kafka=kafka_settings,
        database=database,
        topics=topics,
        playbook=write_playbook(tmp_path / "p.yaml", playbook_text(cadence="7d")),
        receivers={"good": WebhookReceiver(), "flaky": WebhookReceiver(status=500)},
        delivery_max_attempts=15,
        delivery_backoff_base_s=0.5,
        delivery_backoff_max_s=30.0,
        breaker_failures=5,
        breaker_cooldown_s=2.0,
    )


async def test_an_endpoint_down_delays_nothing_else_and_then_gets_every_action_once(
    outage: Harness,
) -> None:
    good, flaky = outage.receivers["good"], outage.receivers["flaky"]
    tag = unique("o")
    producer = plain_producer(outage.kafka)
    await producer.start()
    sent: list[str] = []
    recovered_at = 0.0
    refused = 0
    try:
        start = time.monotonic()
        while time.monotonic() - start < OUTAGE_S + 3:
            if not recovered_at and time.monotonic() - start >= OUTAGE_S:
                flaky.status = 200  # healthy again, with a backlog of OUTAGE_S x RATE actions
                recovered_at = time.time()
                refused = flaky.attempts
            i = len(sent)
            rec = encode_event(change_event(f"{tag}-{i}", f"{tag}-{i}", "value_tier", "x", "VIP"))
            await producer.send_and_wait(
                outage.topics.classification_changed, rec.value, key=rec.key, headers=rec.headers
            )
            sent.append(f"{tag}-{i}")
            await asyncio.sleep(max(0.0, start + len(sent) / RATE - time.monotonic()))
    finally:
        await producer.stop()
    rows = await eventually(
        lambda: outage.rows("customer_id LIKE :t", t=f"{tag}-%"),
        lambda r: len(r) == len(sent),
    )
    expected = {r["action_id"] for r in rows}

    async def ids(receiver: WebhookReceiver) -> set[str]:
        return receiver.ids()

    await eventually(lambda: ids(good), lambda got: got == expected, timeout=10)
    # While `flaky` failed, `good` got each action as fast as before: nothing waited for it.
    lags = sorted(
        good.accepted[r["action_id"]][0].at - r["created_at"].timestamp()
        for r in rows
        if r["created_at"].timestamp() < recovered_at
    )
    assert len(lags) >= OUTAGE_S * RATE * 0.8
    assert lags[int(len(lags) * 0.99)] < 2.0, lags[-10:]
    # It was tried during the outage (answered 500), but the open breaker spared most attempts.
    assert 0 < refused < len(lags) / 2
    # Healthy again: the backlog is released at the first successful probe, not after each
    # delivery's backoff (which grew during the outage), and arrives once per webhook-id.
    await eventually(lambda: ids(flaky), lambda got: got == expected, timeout=15)
    drained = max(flaky.accepted[a][0].at for a in expected) - recovered_at
    assert drained < 10.0, drained
    for receiver in (good, flaky):
        assert receiver.duplicates() == 0
        assert receiver.bad_signatures == 0
    dead = await outage.client.get("/v1/deliveries", params={"state": "dead"})
    assert dead.json()["items"] == []
