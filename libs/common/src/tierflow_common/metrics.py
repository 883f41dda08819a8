"""Prometheus metrics shared by every service (each service adds its own beside these)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OUTBOX_PUBLISHED = Counter(
    "tierflow_outbox_published_total", "Outbox records acknowledged by the broker", ["producer"]
)
OUTBOX_BACKLOG = Gauge(
    "tierflow_outbox_backlog",
    "Outbox rows not yet published, as the producer's elected relay last measured them "
    "(0 in the processes that are not its relay)",
    ["producer"],
)
CONSUMED = Counter(
    "tierflow_consumer_records_total", "Records consumed and committed", ["group", "outcome"]
)
DEAD_LETTERED = Counter(
    "tierflow_dead_lettered_total", "Records sent to a dead-letter topic", ["group", "reason"]
)
BATCH_SECONDS = Histogram(
    "tierflow_consumer_batch_seconds",
    "Time to apply and commit one consumed batch",
    ["group"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LOG_LOSS = Counter(
    "tierflow_consumer_log_loss_total",
    "Times a consumer found a partition's log ending before the offset it had stored: the "
    "broker lost records (an in-memory broker restarted); the partition is read again from "
    "its start, and the outputs published from the lost records are gone from the broker too",
    ["group", "topic", "partition"],
)
ASSIGNED_PARTITIONS = Gauge(
    "tierflow_consumer_assigned_partitions", "Partitions assigned to this consumer", ["group"]
)
ROWS_PRUNED = Counter(
    "tierflow_rows_pruned_total",
    "Rows deleted because they outlived their retention setting (or ledger weeks dropped)",
    ["table"],
)
