"""Keys with roles and the audit log on a real PostgreSQL: the migration makes every existing key
an ingest key, the key cache serves roles and follows revocations, an audit row written while
the table is unavailable is written once it is back."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from tests.integration.helpers import database_at, eventually
from tests.support import Servers, unique
from tierflow_common.audit import AuditCall, AuditLog, read_audit
from tierflow_common.auth import ALL_ROLES, Principal, Role
from tierflow_common.db.engine import create_engine
from tierflow_common.db.migrate import upgrade_head_async
from tierflow_common.db.tables import api_keys, audit_log
from tierflow_common.keys import KeyCache, create_key, find_key, hash_key, revoke_key
from tierflow_common.settings import DatabaseSettings


async def test_keys_made_before_roles_existed_become_ingest_keys(servers: Servers) -> None:
    database = await database_at(servers, "0008_ledger_partitions")
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO api_keys (key_id, name, key_hash, sources) "
                    "VALUES ('old1', 'shop from before', :hash, ARRAY['shop'])"
                ),
                {"hash": hash_key("tf_old1_secret")},
            )
        await upgrade_head_async(database)
        async with engine.connect() as conn:
            found = await find_key(conn, "tf_old1_secret")
        assert found == Principal("old1", "shop from before", frozenset({Role.INGEST}), ("shop",))
    finally:
        await engine.dispose()


async def test_the_cache_serves_roles_and_follows_revocations(database: DatabaseSettings) -> None:
    engine = create_engine(database)
    try:
        async with engine.begin() as conn:
            dash_id, dash = await create_key(conn, name="dashboard", roles=[Role.READ])
            dev_id, dev = await create_key(conn, name="dev", roles=ALL_ROLES, sources=["*"])
        cache = KeyCache(engine, refresh_s=0.05)
        await cache.first_load()
        assert cache.lookup(dash) == Principal(dash_id, "dashboard", frozenset({Role.READ}), ())
        assert cache.lookup(dev) == Principal(dev_id, "dev", ALL_ROLES, ("*",))
        assert cache.lookup("tf_nope_nope") is None
        task = asyncio.create_task(cache.run())
        try:
            async with engine.begin() as conn:
                assert await revoke_key(conn, dash_id)

            async def dashboard() -> Principal | None:
                return cache.lookup(dash)

            await eventually(dashboard, lambda p: p is None, timeout=5, what="revoked")
            assert cache.lookup(dev) is not None
        finally:
            # Wait for the refresh loop to end before the engine goes: cancelled mid-refresh, it
            # would hand its connection back to the disposed pool, never to be closed.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await engine.dispose()


async def test_the_database_refuses_roles_it_does_not_know(database: DatabaseSettings) -> None:
    engine = create_engine(database)
    try:
        for roles in (["superuser"], []):
            with pytest.raises(IntegrityError, match="ck_api_keys_roles"):
                async with engine.begin() as conn:
                    await conn.execute(
                        insert(api_keys).values(
                            key_id=unique("k"),
                            name="x",
                            key_hash=hash_key(unique("tf")),
                            sources=[],
                            roles=roles,
                        )
                    )
    finally:
        await engine.dispose()


async def test_an_audit_row_survives_the_table_being_away(database: DatabaseSettings) -> None:
    engine = create_engine(database)
    log = AuditLog(engine, service="notifier")
    call = AuditCall(
        key_id="k1",
        key_name="care agent",
        role="operate",
        method="POST",
        route="/v1/actions/{action_id}/complete",
        target={"action_id": "a-1"},
    )
    try:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE audit_log RENAME TO audit_log_away"))
        await log.record(call, 200)  # the insert fails: kept, and retried
        assert log.pending == 1
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE audit_log_away RENAME TO audit_log"))

        async def rows() -> list[dict[str, object]]:
            async with engine.connect() as conn:
                return await read_audit(conn, key_id="k1")

        (row,) = await eventually(rows, lambda r: len(r) == 1, timeout=15, what="late row")
        assert (row["route"], row["target"], row["status"], row["service"]) == (
            "/v1/actions/{action_id}/complete",
            {"action_id": "a-1"},
            200,
            "notifier",
        )
        assert log.pending == 0
        async with engine.connect() as conn:
            assert await conn.scalar(select(audit_log.c.key_name)) == "care agent"
    finally:
        await engine.dispose()


def test_the_keys_commands_take_roles_and_refuse_what_makes_no_sense(servers: Servers) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from tierflow_common.cli import app as cli  # noqa: PLC0415
    from tierflow_common.db.migrate import upgrade_head  # noqa: PLC0415

    database = DatabaseSettings(database_url=servers.create_database(unique("cli_keys")))
    upgrade_head(database)
    runner = CliRunner(env={"DATABASE_URL": database.database_url.get_secret_value()})

    def keys(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["keys", *args])
        return result.exit_code, result.output

    assert keys("create", "--name", "shop", "--source", "shop")[1].startswith("key id: ")
    code, out = keys("create", "--name", "care desk", "--role", "read", "--role", "operate")
    assert code == 0
    assert "roles: operate, read" in out
    refused = {
        ("--name", "x"): "an ingest key needs at least one source",
        ("--name", "x", "--role", "ingest"): "an ingest key needs at least one source",
        ("--name", "x", "--role", "read", "--source", "shop"): "sources only apply to ingest",
        ("--name", "x", "--role", "root"): "--role 'root': not one of admin, ingest, operate",
    }
    for args, message in refused.items():
        code, out = keys("create", *args)
        assert code == 2, args
        assert message in out, out
    code, out = keys("list")
    assert code == 0
    lines = sorted(line.split()[2:4] for line in out.splitlines())
    assert lines == [["ingest", "shop"], ["operate,read", "-"]]
