"""Kafka over TLS against a real TLS listener (tests/tls_support.py): the clients made by
tierflow_common.kafka produce and consume through it with a client certificate, librdkafka
does too (a client we did not write), and settings the listener refuses stop start-up at once
with a message naming the setting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from tests.support import ServiceProcess, isolated_topics, read_topic
from tests.tls_support import KEY_PASSWORD, Pki, TlsBroker, make_pki, tls_broker
from tierflow_common.cli import app as cli
from tierflow_common.exceptions import ConfigError
from tierflow_common.kafka import ensure_topics, make_producer, wait_for_broker
from tierflow_common.kafka_security import check_broker_security
from tierflow_common.settings import KafkaSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsBroker]:
    """Mutual TLS: the listener also requires a client certificate signed by the CA."""
    with tls_broker(tmp_path_factory.mktemp("tls"), pki, require_client_cert=True) as b:
        yield b


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsBroker]:
    """TLS, then a SASL login the broker insists on before any other request."""
    with tls_broker(
        tmp_path_factory.mktemp("sasl"), pki, require_client_cert=False, authentication=True
    ) as b:
        yield b


def tls_settings(broker: TlsBroker, pki: Pki, **changes: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap_servers,
        "security_protocol": "SSL",
        "ssl_cafile": pki.ca_file,
        "ssl_certfile": pki.client_cert,
        "ssl_keyfile": pki.client_key,
        "ssl_key_password": KEY_PASSWORD,
        **changes,
    }
    return KafkaSettings.model_validate(values)


async def test_records_are_produced_and_consumed_through_tls(broker: TlsBroker, pki: Pki) -> None:
    kafka = tls_settings(broker, pki)
    topics = isolated_topics()
    handshakes_before = broker.proxy.handshakes
    await ensure_topics(kafka, topics)
    producer = make_producer(kafka)
    await producer.start()
    try:
        # The broker advertises only the TLS listener: no client can reach it any other way.
        advertised = {(b.host, b.port) for b in producer.client.cluster.brokers()}
        assert advertised == {("127.0.0.1", broker.proxy.port)}
        for i in range(20):
            await producer.send_and_wait(
                topics.customer_events, key=f"c-{i}".encode(), value=f"v-{i}".encode()
            )
    finally:
        await producer.stop()
    got = await read_topic(kafka, topics.customer_events, expect=20)
    assert sorted(r["value"] for r in got) == sorted(f"v-{i}".encode() for i in range(20))
    assert broker.proxy.handshakes > handshakes_before


async def test_librdkafka_writes_through_the_same_listener_and_we_read_it(
    broker: TlsBroker, pki: Pki
) -> None:
    kafka = tls_settings(broker, pki)
    topics = isolated_topics()
    await ensure_topics(kafka, topics)
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "security.protocol": "SSL",
            "ssl.ca.location": str(pki.ca_file),
            "ssl.certificate.location": str(pki.client_cert),
            "ssl.key.location": str(pki.client_key),
            "ssl.key.password": KEY_PASSWORD,
            "enable.idempotence": False,
            "acks": "all",
        }
    )
    errors: list[object] = []
    for i in range(10):
        producer.produce(
            topics.customer_events,
            key=f"k-{i}",
            value=f"librdkafka-{i}",
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
    left = await asyncio.to_thread(producer.flush, 30)
    assert left == 0, "librdkafka did not deliver through the TLS listener"
    assert errors == []
    got = await read_topic(kafka, topics.customer_events, expect=10)
    assert sorted(r["value"] for r in got) == sorted(f"librdkafka-{i}".encode() for i in range(10))


async def test_a_wrong_ca_fails_at_once_naming_the_setting(broker: TlsBroker, pki: Pki) -> None:
    kafka = tls_settings(broker, pki, ssl_cafile=pki.other_ca_file)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"KAFKA_SSL_CAFILE={pki.other_ca_file}") as caught:
        # What `tierflow run` and `tierflow topics` do first: no 30-second wait for a broker.
        await wait_for_broker(kafka, timeout=30)
    assert time.monotonic() - started < 10
    assert "not signed by this CA" in str(caught.value)
    with pytest.raises(ConfigError, match="KAFKA_SSL_CAFILE"):
        await ensure_topics(kafka, isolated_topics())


def test_tierflow_topics_with_a_wrong_ca_says_which_setting(broker: TlsBroker, pki: Pki) -> None:
    result = CliRunner().invoke(
        cli,
        ["topics"],
        env={
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(pki.other_ca_file),
        },
    )
    assert result.exit_code == 2, result.output
    assert f"error: KAFKA_SSL_CAFILE={pki.other_ca_file}" in result.output
    assert "Traceback" not in result.output


def test_a_service_with_a_wrong_ca_exits_at_start_up_naming_the_setting(
    broker: TlsBroker, pki: Pki, log_dir: Path
) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(pki.other_ca_file),
        "KAFKA_SSL_CERTFILE": str(pki.client_cert),
        "KAFKA_SSL_KEYFILE": str(pki.client_key),
        "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
    }
    service = ServiceProcess("ingest", env, log_dir)
    service.start(wait_ready=False)
    assert service.proc is not None
    deadline = time.monotonic() + 60
    while service.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    code = service.proc.poll()
    service.stop()
    assert code == 2, f"ingest did not stop at start-up:\n{service.log()}"
    log = service.log()
    assert "kafka_settings_refused" in log
    assert f"KAFKA_SSL_CAFILE={pki.other_ca_file}" in log
    assert "Traceback" not in log


async def test_hostname_verification_is_on_by_default(broker: TlsBroker, pki: Pki) -> None:
    # The broker's certificate is for 127.0.0.1, not for "localhost".
    by_name = broker.bootstrap_servers.replace("127.0.0.1", "localhost")
    with pytest.raises(ConfigError, match="KAFKA_SSL_CHECK_HOSTNAME"):
        await check_broker_security(tls_settings(broker, pki, bootstrap_servers=by_name))
    await wait_for_broker(
        tls_settings(broker, pki, bootstrap_servers=by_name, ssl_check_hostname=False)
    )


async def test_a_missing_client_certificate_names_the_setting(broker: TlsBroker, pki: Pki) -> None:
    kafka = tls_settings(broker, pki, ssl_certfile=None, ssl_keyfile=None)
    with pytest.raises(ConfigError, match="KAFKA_SSL_CERTFILE"):
        await check_broker_security(kafka)


async def test_tls_to_a_listener_without_tls_names_the_protocol(
    broker: TlsBroker, pki: Pki
) -> None:
    # The broker's own plaintext port, behind the proxy: it never answers a TLS hello.
    kafka = tls_settings(
        broker, pki, bootstrap_servers=broker.tansu.bootstrap_servers, request_timeout_ms=1_000
    )
    with pytest.raises(ConfigError, match=r"KAFKA_SECURITY_PROTOCOL=SSL.*does that listener speak"):
        await check_broker_security(kafka)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_a_scram_login_the_broker_refuses_names_the_credentials(
    sasl_broker: TlsBroker, pki: Pki, mechanism: str
) -> None:
    """Tansu 0.6 keeps SCRAM users only in the storage this broker runs in memory, and
    refuses every request before a login, so no user can be created on it: this checks that
    the clients log in with the mechanism over TLS and that a refusal is reported clearly
    (a successful SCRAM login is not tested here)."""
    kafka = KafkaSettings(
        bootstrap_servers=sasl_broker.bootstrap_servers,
        security_protocol="SASL_SSL",
        ssl_cafile=pki.ca_file,
        sasl_mechanism=mechanism,
        sasl_username="tierflow",
        sasl_password="not-a-user-here",
    )
    with pytest.raises(ConfigError, match="KAFKA_SASL_USERNAME=tierflow, KAFKA_SASL_PASSWORD"):
        await wait_for_broker(kafka)


async def test_a_sasl_mechanism_the_broker_lacks_names_the_setting(
    sasl_broker: TlsBroker, pki: Pki
) -> None:
    kafka = KafkaSettings(
        bootstrap_servers=sasl_broker.bootstrap_servers,
        security_protocol="SASL_SSL",
        ssl_cafile=pki.ca_file,
        sasl_mechanism="PLAIN",
        sasl_username="tierflow",
        sasl_password="pw",
    )
    with pytest.raises(ConfigError, match="KAFKA_SASL_MECHANISM=PLAIN"):
        await check_broker_security(kafka)
