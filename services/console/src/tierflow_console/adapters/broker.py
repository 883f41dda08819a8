"""The broker as the console sees it: lag, end offsets, dead letters, redrive and topic search,
each one call of tierflow_common.operations (the same functions `tierflow lag|tail|dlq` use)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common import operations
from tierflow_common.settings import KafkaSettings, TopicSettings


@dataclass(frozen=True)
class Broker:
    kafka: KafkaSettings
    topics: TopicSettings
    engine: AsyncEngine  # the console's own (its key cache's): sampling opens no engine

    async def lag(self) -> Mapping[tuple[str, str, int], int]:
        rows = await operations.consumer_lag(
            kafka=self.kafka, topics=self.topics, engine=self.engine
        )
        return {(r.group, r.topic, r.partition): r.lag for r in rows}

    async def ends(self) -> Mapping[str, int]:
        return (await operations.topic_ends(kafka=self.kafka, topics=self.topics)).ends

    async def dead_letters(
        self, topic: str, *, limit: int, after: str | None = None
    ) -> Sequence[operations.DeadLetter]:
        return await operations.dead_letters(topic, limit=limit, after=after, kafka=self.kafka)

    async def redrive(
        self, topic: str, *, partition: int | None, offset: int | None, everything: bool
    ) -> int:
        result = await operations.redrive(
            topic, partition=partition, offset=offset, all=everything, kafka=self.kafka
        )
        return result.sent

    async def search(
        self,
        topic: str,
        *,
        key: str | None,
        event_id: str | None,
        type: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
    ) -> Sequence[operations.TopicRecord]:
        return await operations.search_topic(
            topic,
            key=key,
            event_id=event_id,
            type=type,
            since=since,
            until=until,
            limit=limit,
            kafka=self.kafka,
        )
