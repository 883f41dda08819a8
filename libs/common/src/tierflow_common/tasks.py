"""Shutting down a service's background tasks."""

from __future__ import annotations

import asyncio
from contextlib import suppress

import structlog


async def finish(task: asyncio.Task[None], *, timeout: float) -> None:
    """Wait for a task that was asked to stop; cancel it past `timeout`; log, never raise, its
    failure — the service is shutting down and the failure was already its own to report."""
    done, _ = await asyncio.wait([task], timeout=timeout)
    if not done:
        task.cancel()
    with suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:
            structlog.get_logger(__name__).exception("task_failed_during_shutdown")
