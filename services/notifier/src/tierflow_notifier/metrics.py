"""Prometheus metrics of the notifier (served on /metrics beside the shared ones)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACTIONS_CREATED = Counter(
    "tierflow_notifier_actions_created_total", "Care actions created (open)", ["kind", "rule"]
)
ACTIONS_SUPPRESSED = Counter(
    "tierflow_notifier_actions_suppressed_total",
    "Care actions recorded as suppressed, by reason (consent, channel, cap:<id>)",
    ["reason"],
)
CONTACT_POLICY = Counter(
    "tierflow_notifier_contact_policy_total",
    "Actions the contact policy moved or dropped, by rule and outcome (deferred_quiet_hours, "
    "deferred_cap, dropped_cap)",
    ["rule", "outcome"],
)
DELIVERIES = Counter(
    "tierflow_notifier_deliveries_total",
    "Delivery attempts by endpoint and outcome (delivered, failed, dead_lettered)",
    ["endpoint", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "tierflow_notifier_delivery_latency_seconds",
    "From an action's send time to the endpoint's 2xx",
    ["endpoint"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
BREAKER_OPEN = Gauge(
    "tierflow_notifier_circuit_open",
    "1 while an endpoint's circuit breaker is open (also while it probes, half-open), 0 closed",
    ["endpoint"],
)
BREAKER_OPENED = Counter(
    "tierflow_notifier_circuit_opened_total",
    "Times an endpoint's circuit breaker opened (consecutive failures reached the threshold; "
    "a failed probe re-opening it is not counted)",
    ["endpoint"],
)
OPEN_TASKS = Gauge("tierflow_notifier_open_tasks", "Open or acknowledged actions by age", ["age"])
SCHEDULES_FIRED = Counter(
    "tierflow_notifier_schedules_fired_total", "Due schedule entries processed", ["rule"]
)
SCHEDULE_LAG = Histogram(
    "tierflow_notifier_schedule_lag_seconds",
    "How late a schedule entry fired after its due time",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 30, 300),
)
