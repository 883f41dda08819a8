"""The notifier's HTTP client against a real local server: a kept-alive connection reset
mid-response is one failed attempt (the server had the request), not a silent re-send — the
re-send used to go to the next idle connection, and the next, so one attempt could reach the
endpoint once per idle connection."""

from __future__ import annotations

import asyncio

import pytest

from tests.chaos.care import ChaosReceiver
from tierflow_notifier.adapters.http import HttpClient, HttpError, Post


def post(webhook_id: str) -> Post:
    return Post(headers={"webhook-id": webhook_id}, body=b"{}")


async def test_a_reset_mid_response_is_one_failed_attempt() -> None:
    receiver = ChaosReceiver(mix={"error": 1.0})
    await receiver.start()
    client = HttpClient(receiver.url, max_connections=8, timeout=5)
    try:
        # Several kept-alive connections in the pool.
        warm = await asyncio.gather(*(client.post(post(f"warm-{i}")) for i in range(4)))
        assert warm == [500] * 4
        receiver.mix = {"reset": 1.0}
        with pytest.raises(HttpError, match="mid-response"):
            await client.post(post("cut"))
        assert len(receiver.tries()["cut"]) == 1
        receiver.mix = {"error": 1.0}
        assert await client.post(post("after")) == 500  # the pool still works
    finally:
        await client.aclose()
        await receiver.stop()
