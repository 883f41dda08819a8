"""Ingest metrics (Prometheus)."""

from prometheus_client import Counter, Gauge, Histogram

ACCEPTED = Counter("tierflow_ingest_accepted_total", "Events acknowledged by the broker")
DUPLICATES = Counter(
    "tierflow_ingest_duplicates_total", "Accepted events whose (source, id) was accepted before"
)
REJECTED = Counter("tierflow_ingest_rejected_total", "Events or requests rejected", ["reason"])
PUBLISH_SECONDS = Histogram(
    "tierflow_ingest_publish_seconds",
    "Time from request validated to broker acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IN_FLIGHT = Gauge("tierflow_ingest_in_flight", "Events awaiting broker acknowledgement")
LOOP_LAG = Gauge(
    "tierflow_ingest_loop_lag_seconds",
    "How late the event loop runs a timer, averaged over ~0.5 s (INGEST_SHED_LOOP_LAG_MS)",
)
