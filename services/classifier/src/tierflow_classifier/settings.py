"""Classifier settings (environment variables prefixed CLASSIFIER_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClassifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLASSIFIER_", extra="ignore")

    # Seeds the rule set of an empty database; after that the database's activation is in
    # force (`tierflow rules ...`, POST /v1/rules:activate).
    rules_file: Path = Path("config/classifier.yaml")
    # How soon a created or revoked API key takes effect (keys are checked in memory).
    keys_refresh_s: float = Field(default=2.0, gt=0)
    # How often each process looks for a new rule-set activation (in force within this long).
    rules_poll_s: float = Field(default=1.0, gt=0)
    # Processes a what-if simulation is split over (they run niced, below the consumer).
    simulation_workers: int = Field(default=2, ge=1, le=64)
    group_id: str = "tierflow-classifier"
    # Transactions applied at once, each over its own partitions of a polled batch: while one
    # waits on PostgreSQL another classifies (the consumer's lanes, tierflow_common/lanes.py).
    batch_lanes: int = Field(default=2, ge=1, le=8)
    # wall: production. event_time: replay/backtest, "now" is the latest event time applied.
    clock: Literal["wall", "event_time"] = "wall"
    # Small rounds keep the event loop (consumer fetches, heartbeats, relay) responsive.
    review_batch: int = Field(default=200, ge=1)
    review_poll_s: float = Field(default=0.2, gt=0)
    reevaluate_batch: int = Field(default=500, ge=1)
    # A new rule set or churn model re-evaluates every customer in the background at most
    # this fast, so it leaves the event stream most of the process.
    reevaluate_per_s: float = Field(default=1_000.0, gt=0)
    # RFM quintiles and ABC cut points are rebuilt from quantile sketches this often (wall
    # clock); customers whose RFM/ABC label a new version changes are then re-classified.
    population_refresh_s: float = Field(default=600.0, gt=0)
    # Event-time clock (replay): rebuilt whenever the watermark advanced this many days, and
    # once the watermark has stood still for population_settle_s (the log is drained).
    population_refresh_event_days: float = Field(default=7.0, gt=0)
    population_settle_s: float = Field(default=3.0, gt=0)
    # How often each process looks at the clock and for a population version the elected
    # process published (it loads a new one within this long).
    population_poll_s: float = Field(default=1.0, gt=0)
    # Customers re-evaluated per transaction after a new population version.
    population_sweep_batch: int = Field(default=500, ge=1)
    # The churn model is refitted on the store's own history this often (and by API/CLI).
    churn_fit_interval_s: float = Field(default=86_400.0, gt=0)
    # How soon a model another process (the elected one, the CLI, the API) fitted is used: a
    # version read this often.
    churn_reload_s: float = Field(default=1.0, gt=0)
    # The event-id ledger remembers events whose time is at most this old (weekly partitions,
    # dropped past it). An older resend is still kept from counting twice by its order id
    # (purchases, refunds); interactions and feedback that old would count again.
    ledger_retention_days: int = Field(default=30, ge=1, le=100_000)
    # Change history (`classification_changes`, what GET .../history and ?as_of= answer from)
    # is kept this long after it was recorded, then pruned (adapters/retention.py).
    change_retention_days: int = Field(default=365, ge=1, le=100_000)
    # The pruning job: how often it runs, and rows deleted per short transaction.
    prune_interval_s: float = Field(default=3_600.0, gt=0)
    prune_batch: int = Field(default=1_000, ge=1, le=100_000)
    # The console's distribution-over-time: the elected process stores how many customers hold
    # each label this often, and keeps the snapshots this long.
    distribution_snapshot_s: float = Field(default=60.0, gt=0)
    distribution_retention_days: int = Field(default=30, ge=1, le=100_000)
    # A manual override is answered 202 once the broker acknowledged its event; 503 after this.
    override_publish_timeout_s: float = Field(default=10.0, gt=0)
