"""Kafka TLS / SASL settings: what the clients are given, and clear errors for bad settings."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.tls_support import KEY_PASSWORD, make_pki
from tierflow_common.exceptions import ConfigError
from tierflow_common.kafka import client_kwargs, make_admin, make_consumer, make_producer
from tierflow_common.kafka_security import ssl_context
from tierflow_common.settings import KafkaSettings


def test_plaintext_clients_get_no_tls_and_no_sasl() -> None:
    kwargs = client_kwargs(KafkaSettings(bootstrap_servers="b:9092"))
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in kwargs
    assert "sasl_mechanism" not in kwargs


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_ssl_clients_get_the_mechanism_the_login_and_a_verifying_context(
    tmp_path: Path, mechanism: str
) -> None:
    pki = make_pki(tmp_path)
    settings = KafkaSettings(
        bootstrap_servers="kafka-1:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username="tierflow",
        sasl_password="s3cret",
        ssl_cafile=pki.ca_file,
    )
    kwargs = client_kwargs(settings)
    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "tierflow"
    assert kwargs["sasl_plain_password"] == "s3cret"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname  # on by default
    # Every client of the process shares the one context, and aiokafka takes these settings.
    producer = make_producer(settings)
    consumer = make_consumer(settings, group_id=None)
    admin = make_admin(settings)
    try:
        for client in (producer.client, consumer._client, admin._client):
            assert client._ssl_context is context
            assert client._sasl_mechanism == mechanism
            assert client._sasl_plain_username == "tierflow"
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()


def test_hostname_verification_can_be_turned_off_but_the_chain_is_still_verified(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    context = ssl_context(
        KafkaSettings(security_protocol="SSL", ssl_cafile=pki.ca_file, ssl_check_hostname=False)
    )
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_sasl_without_its_credentials_is_refused_naming_the_missing_settings() -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")
    message = str(caught.value)
    assert "KAFKA_SASL_USERNAME" in message
    assert "KAFKA_SASL_PASSWORD" in message
    assert "KAFKA_SASL_MECHANISM" not in message


def test_a_key_without_its_certificate_is_refused() -> None:
    with pytest.raises(ValidationError, match="KAFKA_SSL_CERTFILE"):
        KafkaSettings(security_protocol="SSL", ssl_keyfile=Path("client.key"))


def test_an_unreadable_ca_file_names_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=f"KAFKA_SSL_CAFILE={missing}"):
        ssl_context(KafkaSettings(security_protocol="SSL", ssl_cafile=missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"KAFKA_SSL_CAFILE=.*PEM CA bundle"):
        ssl_context(KafkaSettings(security_protocol="SSL", ssl_cafile=garbage))


def test_an_encrypted_client_key_needs_its_password_and_never_prompts(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    def settings(password: str | None) -> KafkaSettings:
        return KafkaSettings(
            security_protocol="SSL",
            ssl_cafile=pki.ca_file,
            ssl_certfile=pki.client_cert,
            ssl_keyfile=pki.client_key,
            ssl_key_password=password,
        )

    assert ssl_context(settings(KEY_PASSWORD)) is not None
    for wrong in (None, "wrong"):
        with pytest.raises(ConfigError, match="KAFKA_SSL_KEY_PASSWORD"):
            ssl_context(settings(wrong))


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="tierflow",
        sasl_password="s3cret",
        ssl_key_password="k3y",
    )
    assert "s3cret" not in repr(settings)
    assert "k3y" not in repr(settings)
