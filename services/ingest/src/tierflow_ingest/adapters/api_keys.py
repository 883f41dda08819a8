"""The in-memory copy of active API keys the ingest authenticates against."""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_common.db.tables import api_keys
from tierflow_common.keys import hash_key
from tierflow_ingest.domain.access import ApiKey

log = structlog.get_logger(__name__)


class KeyCache:
    """Active keys by hash, refreshed every few seconds: a new or revoked key takes effect within
    one refresh, and a brief database outage does not stop ingestion."""

    def __init__(self, engine: AsyncEngine, *, refresh_s: float) -> None:
        self._engine = engine
        self._refresh_s = refresh_s
        self._keys: dict[bytes, ApiKey] = {}
        self.loaded = False

    def lookup(self, key: str) -> ApiKey | None:
        return self._keys.get(hash_key(key))

    async def refresh(self) -> None:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(
                    api_keys.c.key_id, api_keys.c.name, api_keys.c.key_hash, api_keys.c.sources
                ).where(api_keys.c.revoked_at.is_(None))
            )
            self._keys = {
                bytes(r.key_hash): ApiKey(r.key_id, r.name, frozenset(r.sources)) for r in rows
            }
        self.loaded = True

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("api_keys_refresh_failed", error=str(exc))
            await asyncio.sleep(self._refresh_s)
