"""TLS and SASL for the Kafka clients: the one SSL context, and a start-up check of both.

aiokafka reports a certificate or login the broker refuses only as "Unable to bootstrap", and
the services retry that as a broker outage, forever. So before a service (or `tierflow topics`,
`tierflow run`) starts its clients, one connection to a bootstrap server does the TLS handshake
and the SASL login, and a refusal becomes a ConfigError naming the setting to fix.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from pathlib import Path

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from tierflow_common.exceptions import ConfigError
from tierflow_common.settings import KafkaSettings

# OpenSSL's verify codes for a certificate that is valid but names another host / IP address.
_NAME_MISMATCH = {62, 64}


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """The client SSL context of these settings, built once per process and shared by every
    client (reading the CA bundle and key again per connection would cost a file read and a
    parse each time)."""
    password = settings.ssl_key_password
    return _context(
        settings.ssl_cafile,
        settings.ssl_certfile,
        settings.ssl_keyfile,
        password.get_secret_value() if password is not None else None,
        settings.ssl_check_hostname,
    )


@functools.cache
def _context(
    cafile: Path | None,
    certfile: Path | None,
    keyfile: Path | None,
    key_password: str | None,
    check_hostname: bool,
) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"KAFKA_SSL_CAFILE={cafile}: cannot read it as a PEM CA bundle: {_reason(exc)}"
        ) from None
    # Only the name check can be turned off; the chain is always verified.
    context.check_hostname = check_hostname
    if certfile is not None:
        try:
            # A callable, also when no password is set: with none, OpenSSL would prompt for
            # an encrypted key's password on the terminal and the service would hang there.
            context.load_cert_chain(certfile, keyfile, password=lambda: key_password or "")
        except (OSError, ssl.SSLError) as exc:
            key = keyfile or "unset (the key is in the certificate file)"
            raise ConfigError(
                f"KAFKA_SSL_CERTFILE={certfile}, KAFKA_SSL_KEYFILE={key}: cannot load the client "
                f"certificate and key: {_reason(exc)} (is the key the certificate's, and "
                "KAFKA_SSL_KEY_PASSWORD the key's password?)"
            ) from None
    return context


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)


async def check_broker_security(settings: KafkaSettings) -> None:
    """Raise ConfigError if a bootstrap broker refuses these TLS / SASL settings.

    Returns quietly when TLS and SASL are off, once one broker accepted the handshake and the
    login, and when no broker accepts a TCP connection (an outage, which the clients wait out;
    not a setting to fix)."""
    if not (settings.uses_tls or settings.uses_sasl):
        return
    for host, port, _ in collect_hosts(settings.bootstrap_servers, randomize=False):
        where = f"{host}:{port}"
        timeout = settings.request_timeout_ms / 1000
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            continue
        try:
            if settings.uses_tls:
                await _handshake(settings, writer, host, where, timeout)
        finally:
            writer.close()
        if await _login(settings, host, port, where):
            return


async def _handshake(
    settings: KafkaSettings, writer: asyncio.StreamWriter, host: str, where: str, timeout: float
) -> None:
    """A TLS handshake on a connection the broker accepted: what fails here is the setting."""
    try:
        await writer.start_tls(
            ssl_context(settings), server_hostname=host, ssl_handshake_timeout=timeout
        )
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(_untrusted(settings, where, exc)) from None
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        reason = "no answer" if isinstance(exc, TimeoutError) else _reason(exc)
        raise ConfigError(
            f"KAFKA_SECURITY_PROTOCOL={settings.security_protocol}: the TLS handshake with the "
            f"broker {where} failed ({reason}); does that listener speak TLS?"
        ) from None


async def _login(settings: KafkaSettings, host: str, port: int, where: str) -> bool:
    """aiokafka's own connection (API versions, then the SASL login): True if the broker took
    it, False if it went away; ConfigError if it refused the client certificate or login."""
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    try:
        conn = await create_conn(
            host,
            port,
            client_id=settings.client_id,
            request_timeout_ms=settings.request_timeout_ms,
            ssl_context=ssl_context(settings) if settings.uses_tls else None,
            security_protocol=settings.security_protocol,
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=password,
        )
    except UnsupportedSaslMechanismError as exc:
        raise ConfigError(
            f"KAFKA_SASL_MECHANISM={settings.sasl_mechanism}: the broker {where} does not "
            f"offer it ({exc})"
        ) from None
    except (SaslAuthenticationFailed, IllegalSaslStateError, KeyError, ValueError) as exc:
        # aiokafka's SCRAM client fails with KeyError / ValueError on a server-final
        # message that carries an error instead of the server's signature.
        why = "no server signature in its answer" if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(
            f"KAFKA_SASL_USERNAME={settings.sasl_username}, KAFKA_SASL_PASSWORD: the broker "
            f"{where} refused the {settings.sasl_mechanism} login ({why}): unknown user or "
            "wrong password"
        ) from None
    except (OSError, TimeoutError, KafkaError) as exc:
        if settings.uses_tls and _closed(exc):
            # Right after a good handshake: TLS 1.3 rejects a client certificate then (the
            # alert reaches aiokafka as a closed connection), and some brokers hang up on a
            # SASL mechanism they do not offer.
            sasl = (
                f", or it does not offer KAFKA_SASL_MECHANISM={settings.sasl_mechanism}"
                if settings.uses_sasl
                else ""
            )
            raise ConfigError(
                f"the broker {where} closed the connection right after the TLS handshake: it "
                "requires a client certificate or refuses the one sent (KAFKA_SSL_CERTFILE, "
                f"KAFKA_SSL_KEYFILE){sasl}"
            ) from None
        return False
    conn.close()
    return True


def _closed(exc: BaseException) -> bool:
    return isinstance(exc, KafkaConnectionError) and "closed" in str(exc)


def _untrusted(settings: KafkaSettings, where: str, exc: ssl.SSLCertVerificationError) -> str:
    if exc.verify_code in _NAME_MISMATCH:
        return (
            f"KAFKA_SSL_CHECK_HOSTNAME: the broker {where} presented a certificate that is not "
            f"for that name ({exc.verify_message}); list the brokers in "
            "KAFKA_BOOTSTRAP_SERVERS by a name their certificate carries (or, not advised, set "
            "KAFKA_SSL_CHECK_HOSTNAME=false)"
        )
    cafile = settings.ssl_cafile or "unset (the system's CA bundle)"
    return (
        f"KAFKA_SSL_CAFILE={cafile}: the certificate of the broker {where} is not signed by "
        f"this CA ({exc.verify_message})"
    )
