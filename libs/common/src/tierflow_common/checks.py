"""Readiness checks for the two dependencies every service has."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common.db.engine import ping
from tierflow_common.exceptions import BrokerUnavailable
from tierflow_common.health import ReadinessCheck


def database_check(engine: AsyncEngine) -> ReadinessCheck:
    async def check() -> None:
        await ping(engine)

    return check


def broker_check(producer: AIOKafkaProducer) -> ReadinessCheck:
    async def check() -> None:
        # A metadata round trip proves the broker answers now, not just at start-up.
        metadata = await producer.client.fetch_all_metadata()
        if metadata is None or not metadata.brokers():
            raise BrokerUnavailable("no metadata from broker")

    return check
