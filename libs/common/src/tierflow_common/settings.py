"""Typed settings read from the environment. Nothing is read at import time: call the classes.

Variable names are public (README configuration table); every class lists its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_KAFKA_PORT = 9092
EMBEDDED_POSTGRES_PORT = 54329
EMBEDDED_KAFKA_BOOTSTRAP = f"127.0.0.1:{EMBEDDED_KAFKA_PORT}"
EMBEDDED_DATABASE_URL = f"postgresql+asyncpg://postgres@127.0.0.1:{EMBEDDED_POSTGRES_PORT}/tierflow"
MetricsAccess = Literal["open", "loopback", "key"]


class KafkaSettings(BaseSettings):
    """Connection to the Kafka-protocol broker (embedded Tansu or Apache Kafka).

    The clients themselves (TLS context, SASL) are made by tierflow_common.kafka."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = EMBEDDED_KAFKA_BOOTSTRAP
    client_id: str = "tierflow"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # TLS (SSL, SASL_SSL): the CA bundle that signs the brokers' certificates (unset: the
    # system's), and a client certificate and key for brokers that require one (mutual TLS).
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    request_timeout_ms: int = Field(default=10_000, ge=1_000)
    # Linger trades a little latency for much larger produce batches under load.
    linger_ms: int = Field(default=2, ge=0)
    # aiokafka's default (500 ms) lets a broker hold an idle fetch that long: a latency floor.
    fetch_max_wait_ms: int = Field(default=20, ge=0)

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @model_validator(mode="after")
    def _complete(self) -> KafkaSettings:
        if self.uses_sasl:
            missing = [
                f"KAFKA_{name.upper()}"
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs "
                    f"{', '.join(missing)} set"
                )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("KAFKA_SSL_KEYFILE is set but KAFKA_SSL_CERTFILE is not")
        return self


class DatabaseSettings(BaseSettings):
    """PostgreSQL connection (embedded server or an external cluster)."""

    model_config = SettingsConfigDict(extra="ignore")

    database_url: SecretStr = Field(default=SecretStr(EMBEDDED_DATABASE_URL))
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    db_echo: bool = False

    def async_url(self) -> str:
        """The URL with the asyncpg driver, whatever scheme the operator wrote."""
        url = self.database_url.get_secret_value()
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return url


class TopicSettings(BaseSettings):
    """Topic names and shape. Names are public contracts; change them only deliberately."""

    model_config = SettingsConfigDict(env_prefix="TOPIC_", extra="ignore")

    customer_events: str = "customer-events"
    classification_changed: str = "customer-classification-changed"
    tier_changed: str = "customer-tier-changed"
    care_actions: str = "care-actions"
    classifier_dlq: str = "customer-events.classifier.dlq"
    notifier_dlq: str = "customer-classification-changed.notifier.dlq"
    partitions: int = Field(default=12, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    def as_env(self) -> dict[str, str]:
        """The environment variables that give a service process these topic settings."""
        return {f"TOPIC_{name.upper()}": str(value) for name, value in self.model_dump().items()}

    def all_topics(self) -> list[str]:
        return [
            self.customer_events,
            self.classification_changed,
            self.tier_changed,
            self.care_actions,
            self.classifier_dlq,
            self.notifier_dlq,
        ]


class LogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOG_", extra="ignore")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"


class MetricsSettings(BaseSettings):
    """Who may read a service's `/metrics`: `open` (anyone), `loopback` (callers on 127.0.0.1
    or ::1; others need a `read` key), `key` (only callers with a `read` key)."""

    model_config = SettingsConfigDict(env_prefix="METRICS_", extra="ignore")

    access: MetricsAccess = "loopback"


class HttpSettings(BaseSettings):
    """Where a service's HTTP API listens. Each service reads its own prefix."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    port: int


class IngestHttpSettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")
    port: int = 8080


class ClassifierHttpSettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="CLASSIFIER_", extra="ignore")
    port: int = 8081


class NotifierHttpSettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore")
    port: int = 8082


class ConsoleHttpSettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore")
    port: int = 8083


class ConsumerSettings(BaseSettings):
    """How a stateful consumer batches work."""

    model_config = SettingsConfigDict(env_prefix="CONSUMER_", extra="ignore")

    # 1,000: a classifier batch of 2,000 first purchases held about 72 MB of Python objects at
    # its peak, 1,000 about 35 MB, at the same cost per event (tracemalloc, one process).
    max_batch: int = Field(default=1_000, ge=1)
    poll_timeout_ms: int = Field(default=100, ge=1)
    # After a poll that returned less than a full batch, wait this long for more before
    # applying it: at a moderate rate, one transaction (offsets, statements, outbox, relay
    # round) per ~20 ms of records instead of per few records. A latency for CPU trade.
    linger_ms: int = Field(default=20, ge=0)
    # Bytes fetched ahead per partition: a few batches' worth, not the whole backlog, so the
    # buffered records of a long backlog do not grow the process (aiokafka's default is 1 MiB;
    # tierflow's plain consumers use 4 MiB).
    max_partition_fetch_bytes: int = Field(default=512 * 1024, ge=64 * 1024)
    outbox_batch: int = Field(default=2_000, ge=1)
    outbox_poll_ms: int = Field(default=200, ge=10)


class EmbeddedSettings(BaseSettings):
    """Where `tierflow run` keeps the embedded servers' data and logs."""

    model_config = SettingsConfigDict(env_prefix="TIERFLOW_", extra="ignore")

    var_dir: Path = Path("var")
    embedded_postgres_port: int = EMBEDDED_POSTGRES_PORT
    embedded_kafka_port: int = EMBEDDED_KAFKA_PORT
    tansu_bin: Path | None = None
