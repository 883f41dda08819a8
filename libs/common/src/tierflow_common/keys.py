"""API keys: generated here, stored only as SHA-256 hashes, each with its roles
(tierflow_common.auth) and, for `ingest` keys, the sources it may send for.

Keys carry 256 random bits, so a fast hash is as safe as a slow KDF and keeps authentication
cheap. Used by every service (`KeyCache`), the CLI (`tierflow keys ...`) and `tierflow run`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tierflow_common.auth import Principal, Role
from tierflow_common.db.engine import create_engine
from tierflow_common.db.tables import api_keys
from tierflow_common.settings import DatabaseSettings

KEY_PREFIX = "tf"
T = TypeVar("T")
log = structlog.get_logger(__name__)
_ROLE_NAMES = frozenset(Role)


def new_key() -> tuple[str, str]:
    """A fresh (key_id, secret key). The key embeds its id so operators can tell keys apart."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_roles(roles: Collection[Role | str] | None, sources: Sequence[str]) -> frozenset[Role]:
    """The roles a new key gets. No roles given means an `ingest` key (as every key was before
    roles existed). Sources belong to `ingest` keys: one needs them, the others take none."""
    given = frozenset(Role(r) for r in roles) if roles else frozenset({Role.INGEST})
    if Role.INGEST in given and not sources:
        raise ValueError("an ingest key needs at least one source (--source; '*' = any)")
    if sources and Role.INGEST not in given:
        raise ValueError("sources only apply to ingest keys: add --role ingest or drop --source")
    return given


def _principal(row: Any) -> Principal:
    # A role this version does not know (a newer one wrote it) grants nothing here.
    roles = frozenset(Role(r) for r in row.roles if r in _ROLE_NAMES)
    return Principal(row.key_id, row.name, roles, tuple(sorted(row.sources)))


async def create_key(
    conn: AsyncConnection,
    *,
    name: str,
    sources: Sequence[str] = (),
    roles: Collection[Role | str] | None = None,
) -> tuple[str, str]:
    granted = key_roles(roles, sources)
    key_id, key = new_key()
    await conn.execute(
        insert(api_keys).values(
            key_id=key_id,
            name=name,
            key_hash=hash_key(key),
            sources=sorted(set(sources)),
            roles=[str(r) for r in sorted(granted)],
        )
    )
    return key_id, key


async def revoke_key(conn: AsyncConnection, key_id: str) -> bool:
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now().astimezone())
    )
    return bool(result.rowcount)


async def find_key(conn: AsyncConnection, key: str) -> Principal | None:
    """The active key `key` is, or None (unknown or revoked)."""
    rows = await conn.execute(
        select(api_keys.c.key_id, api_keys.c.name, api_keys.c.sources, api_keys.c.roles).where(
            api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None)
        )
    )
    row = rows.first()
    return _principal(row) if row is not None else None


async def list_keys(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(
        select(
            api_keys.c.key_id,
            api_keys.c.name,
            api_keys.c.roles,
            api_keys.c.sources,
            api_keys.c.created_at,
            api_keys.c.revoked_at,
        ).order_by(api_keys.c.created_at)
    )
    return [dict(r._mapping) for r in rows]


class KeyCache:
    """Active keys by hash, refreshed every few seconds: a lookup is one SHA-256 and a dict
    lookup (no database round trip on a request), a new or revoked key takes effect within
    one refresh, and a brief database outage does not stop the APIs."""

    def __init__(self, engine: AsyncEngine, *, refresh_s: float) -> None:
        self._engine = engine
        self._refresh_s = refresh_s
        self._keys: dict[bytes, Principal] = {}
        self.loaded = False

    def lookup(self, key: str) -> Principal | None:
        return self._keys.get(hash_key(key))

    async def refresh(self) -> None:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(
                    api_keys.c.key_id,
                    api_keys.c.name,
                    api_keys.c.key_hash,
                    api_keys.c.sources,
                    api_keys.c.roles,
                ).where(api_keys.c.revoked_at.is_(None))
            )
            self._keys = {bytes(r.key_hash): _principal(r) for r in rows}
        self.loaded = True

    async def first_load(self) -> None:
        """One refresh before the API serves (if the database is away, `run` retries)."""
        try:
            await self.refresh()
        except Exception as exc:
            log.warning("api_keys_refresh_failed", error=str(exc))

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("api_keys_refresh_failed", error=str(exc))
            await asyncio.sleep(self._refresh_s)

    async def ready(self) -> None:
        """Readiness check: the keys were read at least once."""
        if not self.loaded:
            raise RuntimeError("API keys not loaded yet")


def _in_transaction(db: DatabaseSettings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = create_engine(db)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def create_key_sync(
    db: DatabaseSettings,
    *,
    name: str,
    sources: Sequence[str] = (),
    roles: Collection[Role | str] | None = None,
) -> tuple[str, str]:
    return _in_transaction(
        db, lambda conn: create_key(conn, name=name, sources=sources, roles=roles)
    )


def revoke_key_sync(db: DatabaseSettings, key_id: str) -> bool:
    return _in_transaction(db, lambda conn: revoke_key(conn, key_id))


def list_keys_sync(db: DatabaseSettings) -> list[dict[str, Any]]:
    return _in_transaction(db, list_keys)


def find_key_sync(db: DatabaseSettings, key: str) -> Principal | None:
    return _in_transaction(db, lambda conn: find_key(conn, key))
