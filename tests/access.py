"""API keys for tests: a key with the roles a test needs, and in-process clients that send one.

The one place tests make keys: `api_key` / `api_key_sync` store a real key (hashed, in the test's
database) and return it; `bearer` is the header that sends it; `app_client` runs an app's
lifespan in this process with a client that sends a key with the roles given (every role unless
told), the key made before the app first reads its keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from tierflow_common.auth import ALL_ROLES, Role
from tierflow_common.db.engine import create_engine
from tierflow_common.keys import create_key, create_key_sync
from tierflow_common.settings import DatabaseSettings


def _sources(roles: Collection[Role], sources: Sequence[str]) -> Sequence[str]:
    return sources or (["*"] if Role.INGEST in roles else [])


async def api_key(
    database: DatabaseSettings,
    roles: Collection[Role] = ALL_ROLES,
    *,
    sources: Sequence[str] = (),
    name: str = "test",
) -> str:
    """A new active key with `roles` (an ingest key for any source unless `sources`)."""
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            _, key = await create_key(
                conn, name=name, roles=roles, sources=_sources(roles, sources)
            )
    finally:
        await engine.dispose()
    return key


def api_key_sync(
    database: DatabaseSettings,
    roles: Collection[Role] = ALL_ROLES,
    *,
    sources: Sequence[str] = (),
    name: str = "test",
) -> str:
    """`api_key` outside an event loop (fixtures of tests that run servers as processes)."""
    return create_key_sync(database, name=name, roles=roles, sources=_sources(roles, sources))[1]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@asynccontextmanager
async def app_client(
    app: FastAPI,
    database: DatabaseSettings,
    *,
    base_url: str,
    roles: Collection[Role] = ALL_ROLES,
) -> AsyncIterator[httpx.AsyncClient]:
    """`app` running in this process (its lifespan: consumers, schedulers, API), with a client
    on its API that sends a key with `roles`."""
    key = await api_key(database, roles, name=f"test client ({', '.join(sorted(roles))})")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url=base_url, headers=bearer(key)
        ) as client:
            yield client
