"""Notifier settings (environment variables prefixed NOTIFIER_)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from standardwebhooks.webhooks import Webhook

INGEST_ENDPOINT = "@ingest"  # the pseudo-endpoint completion events are delivered to


class WebhookEndpoint(BaseModel):
    """One receiver of care actions; `secret` is a Standard Webhooks key (`whsec_` + base64)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    secret: SecretStr

    @field_validator("secret")
    @classmethod
    def _usable_secret(cls, value: SecretStr) -> SecretStr:
        try:
            Webhook(value.get_secret_value())
        except Exception as exc:
            raise ValueError("secret must be base64, optionally prefixed whsec_") from exc
        return value


class NotifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore")

    playbooks_file: Path = Path("config/notifier.yaml")
    # How soon a created or revoked API key takes effect (keys are checked in memory).
    keys_refresh_s: float = Field(default=2.0, gt=0)
    group_id: str = "tierflow-notifier"
    events_group_id: str = "tierflow-notifier-events"
    # JSON list of {"name", "url", "secret"}; empty = actions go only to the care-actions topic.
    webhooks: list[WebhookEndpoint] = []  # pydantic copies defaults: no shared list
    ingest_url: str | None = None
    ingest_api_key: SecretStr | None = None
    delivery_max_attempts: int = Field(default=15, ge=1)
    delivery_backoff_base_s: float = Field(default=1.0, gt=0)
    delivery_backoff_max_s: float = Field(default=600.0, gt=0)
    delivery_timeout_s: float = Field(default=10.0, gt=0)
    delivery_concurrency: int = Field(default=64, ge=1)
    delivery_batch: int = Field(default=500, ge=1)
    # A crashed sender's claimed deliveries are re-sent after this (receivers dedupe by id).
    delivery_lease_s: float = Field(default=30.0, gt=0)
    delivery_poll_s: float = Field(default=0.5, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    scheduler_max_sleep_s: float = Field(default=0.5, gt=0)
    scheduler_batch: int = Field(default=500, ge=1)
    # Finished care actions (done, suppressed, or a delivered coupon / care message: nothing
    # left to do) are kept this long after creation, with their deliveries, then pruned; an
    # action with a delivery still pending or dead, or a task still open, is never pruned.
    action_retention_days: int = Field(default=90, ge=1, le=100_000)
    # Contact-ledger entries are kept this long (at least the widest cap window of the
    # playbooks: the caps count them; start-up says so otherwise).
    contact_ledger_retention_days: int = Field(default=90, ge=1, le=100_000)
    # The pruning job: how often it runs, and rows deleted per short transaction.
    prune_interval_s: float = Field(default=3_600.0, gt=0)
    prune_batch: int = Field(default=1_000, ge=1, le=100_000)

    @field_validator("webhooks")
    @classmethod
    def _unique_names(cls, value: list[WebhookEndpoint]) -> list[WebhookEndpoint]:
        names = [w.name for w in value]
        if len(set(names)) != len(names):
            raise ValueError("webhook names must be unique")
        return value
