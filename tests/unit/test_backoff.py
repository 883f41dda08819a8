"""Retry loops wait longer after each failure, never longer than the cap, and start over after
a success."""

from __future__ import annotations

from tierflow_common.backoff import Backoff


async def test_delays_double_up_to_the_cap_and_reset_after_success() -> None:
    backoff = Backoff(first=0.001, cap=0.005)
    seen = []
    for _ in range(5):
        seen.append(backoff.delay)
        await backoff.wait()
    assert seen == [0.001, 0.002, 0.004, 0.005, 0.005]
    backoff.reset()
    assert backoff.delay == 0.001
