"""The three services as processes on a broker reachable only over mutual TLS and a database
reached with `sslmode=verify-full`: every producer and consumer they run (ingest publisher,
classifier and notifier consumers, outbox relays) connects through TLS, every database
connection too, and an event travels the whole pipeline."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.access import api_key_sync, bearer
from tests.support import ROOT, Servers, ServiceProcess, isolated_topics, read_topic, unique
from tests.tls_support import KEY_PASSWORD, make_pki, postgres_tls_proxy, tls_broker
from tierflow_common.db.migrate import upgrade_head
from tierflow_common.kafka import ensure_topics
from tierflow_common.settings import DatabaseSettings, KafkaSettings

pytestmark = pytest.mark.e2e


async def test_an_event_crosses_the_pipeline_over_mutual_tls(
    servers: Servers, tmp_path: Path, log_dir: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    name = unique("tls")
    plain = DatabaseSettings(database_url=servers.create_database(name))
    await asyncio.to_thread(upgrade_head, plain)
    key = await asyncio.to_thread(api_key_sync, plain, name="tls")
    topics = isolated_topics()
    postgres = postgres_tls_proxy(servers.postgres_admin_url, pki)
    database_url = (
        f"postgresql://postgres@127.0.0.1:{postgres.port}/{name}"
        f"?sslmode=verify-full&sslrootcert={pki.ca_file}"
    )
    postgres.start()
    with tls_broker(tmp_path, pki, require_client_cert=True) as broker:
        tls_env = {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(pki.ca_file),
            "KAFKA_SSL_CERTFILE": str(pki.client_cert),
            "KAFKA_SSL_KEYFILE": str(pki.client_key),
            "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
        }
        kafka = KafkaSettings.model_validate(
            {k.removeprefix("KAFKA_").lower(): v for k, v in tls_env.items()}
        )
        await ensure_topics(kafka, topics)
        env = {
            **tls_env,
            "DATABASE_URL": database_url,
            "CLASSIFIER_RULES_FILE": str(ROOT / "config" / "classifier.yaml"),
            "NOTIFIER_PLAYBOOKS_FILE": str(ROOT / "config" / "notifier.yaml"),
            "CLASSIFIER_GROUP_ID": unique("classifier"),
            "NOTIFIER_GROUP_ID": unique("notifier"),
            **topics.as_env(),
        }
        services = [ServiceProcess(n, env, log_dir) for n in ("ingest", "classifier", "notifier")]
        try:
            for svc in services:
                svc.start(wait_ready=False)
            # Ready means: producer connected, partitions assigned — all through TLS.
            for svc in services:
                await asyncio.to_thread(svc.wait_ready)
            ingest, classifier, notifier = services
            event = {
                "specversion": "1.0",
                "id": "order-tls-1",
                "source": "shop",
                "type": "purchase",
                "subject": "tls-customer-1",
                "time": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
                "data": {"order_id": "1", "amount": "129.90", "currency": "USD"},
            }
            async with httpx.AsyncClient(timeout=5, headers=bearer(key)) as client:
                resp = await client.post(
                    f"{ingest.url}/v1/events",
                    json=event,
                    headers={"content-type": "application/cloudevents+json"},
                )
                assert resp.status_code == 202, resp.text
                (change,) = await read_topic(kafka, topics.tier_changed, expect=1, timeout=20)
                assert change["key"] == b"tls-customer-1"
                assert change["event"]["data"]["to"] == "regular"
                deadline = time.monotonic() + 20
                actions: list[dict[str, object]] = []
                while not actions and time.monotonic() < deadline:
                    listed = await client.get(
                        f"{notifier.url}/v1/actions", params={"customer": "tls-customer-1"}
                    )
                    assert listed.status_code == 200, listed.text
                    actions = listed.json()["items"]
                    await asyncio.sleep(0.1)
                assert [a["rule_id"] for a in actions] == ["new-customer-onboarding"]
                got = await client.get(f"{classifier.url}/v1/customers/tls-customer-1")
                assert got.status_code == 200
        finally:
            for svc in services:
                svc.stop()
            postgres.stop()
        assert broker.proxy.handshakes >= 6  # at least a producer and a consumer per service
        assert postgres.handshakes >= 3  # at least a connection per service
        assert postgres.plaintext == 0
