"""DATABASE_URL with libpq's TLS parameters (sslmode, sslrootcert): the services' engine and
the migrations connect over TLS and verify the server's certificate.

The embedded PostgreSQL has no TLS (its wheel is built without OpenSSL), so the listener is a
TLS-terminating proxy before it (tests/tls_support.py) that answers PostgreSQL's SSLRequest
and relays to the session's server; asyncpg's TLS negotiation and verification are real.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import text

from tests.support import Servers, unique
from tests.tls_support import Pki, TlsProxy, make_pki, postgres_tls_proxy
from tierflow_common.db.engine import create_engine
from tierflow_common.db.migrate import upgrade_head_async
from tierflow_common.settings import DatabaseSettings

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class TlsPostgres:
    proxy: TlsProxy
    pki: Pki
    database: str

    def settings(self, query: str, *, host: str = "127.0.0.1") -> DatabaseSettings:
        return DatabaseSettings(
            database_url=f"postgresql://postgres@{host}:{self.proxy.port}/{self.database}?{query}"
        )


@pytest.fixture(scope="module")
def tls_postgres(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsPostgres]:
    pki = make_pki(tmp_path_factory.mktemp("pg-pki"))  # a certificate for 127.0.0.1 only
    database = unique("tls")
    servers.create_database(database)
    proxy = postgres_tls_proxy(servers.postgres_admin_url, pki)
    proxy.start()
    try:
        yield TlsPostgres(proxy, pki, database)
    finally:
        proxy.stop()


async def answers(settings: DatabaseSettings) -> bool:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            return bool((await conn.execute(text("SELECT 1"))).scalar_one() == 1)
    finally:
        await engine.dispose()


async def test_verify_full_with_sslrootcert_migrates_and_serves_over_tls(
    tls_postgres: TlsPostgres,
) -> None:
    settings = tls_postgres.settings(f"sslmode=verify-full&sslrootcert={tls_postgres.pki.ca_file}")
    before = tls_postgres.proxy.handshakes
    # What `tierflow migrate` does (alembic), then what every service's engine does.
    await upgrade_head_async(settings)
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            heads = await conn.execute(text("SELECT count(*) FROM alembic_version"))
            assert heads.scalar_one() >= 1
    finally:
        await engine.dispose()
    assert tls_postgres.proxy.handshakes >= before + 2
    assert tls_postgres.proxy.plaintext == 0


async def test_a_server_certificate_the_ca_did_not_sign_is_refused(
    tls_postgres: TlsPostgres,
) -> None:
    settings = tls_postgres.settings(
        f"sslmode=verify-full&sslrootcert={tls_postgres.pki.other_ca_file}"
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await answers(settings)


async def test_verify_full_checks_the_host_name_and_verify_ca_does_not(
    tls_postgres: TlsPostgres,
) -> None:
    root = f"sslrootcert={tls_postgres.pki.ca_file}"
    by_name = tls_postgres.settings(f"sslmode=verify-full&{root}", host="localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="localhost"):
        await answers(by_name)
    assert await answers(tls_postgres.settings(f"sslmode=verify-ca&{root}", host="localhost"))


async def test_sslmode_is_honoured_both_ways(tls_postgres: TlsPostgres) -> None:
    handshakes, plaintext = tls_postgres.proxy.handshakes, tls_postgres.proxy.plaintext
    assert await answers(tls_postgres.settings("sslmode=require"))
    assert tls_postgres.proxy.handshakes > handshakes
    assert await answers(tls_postgres.settings("sslmode=disable"))
    assert tls_postgres.proxy.plaintext > plaintext
