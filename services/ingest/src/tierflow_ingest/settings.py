"""Ingest settings (environment variables prefixed INGEST_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    max_batch_events: int = Field(default=1_000, ge=1)
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1_024)
    # Bounds memory: events waiting for a broker ack beyond this get 503 instead of queueing.
    max_in_flight: int = Field(default=20_000, ge=1)
    # Bounds memory and latency under overload: POSTs to /v1/events and /v1/events:batch being
    # read, checked or published at once; one more is answered 503 before its body is read.
    max_concurrent_requests: int = Field(default=128, ge=1)
    # ... and while the event loop lags more than this (the CPU is the bottleneck), every new
    # request is refused that way too; 0 turns it off.
    shed_loop_lag_ms: float = Field(default=500.0, ge=0)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    # Events before this year are data errors (a backfill of 1990s orders still passes).
    min_event_year: int = Field(default=1970, ge=1)
    retry_after_s: int = Field(default=5, ge=1)
    auth_required: bool = True
    keys_refresh_s: float = Field(default=2.0, gt=0)
    # Per API key; 0 disables. Batch and single requests over it get 429, bulk uploads are paced.
    rate_limit_events_per_s: float = Field(default=100_000, ge=0)
    rate_limit_burst: float = Field(default=200_000, ge=1)
    bulk_chunk_events: int = Field(default=2_000, ge=1)
    bulk_max_line_bytes: int = Field(default=1024 * 1024, ge=1_024)
    bulk_max_reported_errors: int = Field(default=1_000, ge=0)
    # Receipts (what reports a resend as `duplicate`) are kept for events whose time is at most
    # this old; an older event is answered `duplicate: null` (no receipt kept, cannot say).
    receipt_retention_days: int = Field(default=30, ge=1, le=100_000)
