"""`/`: is everything up, is anything behind, what flows, and how the customers are spread."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from prometheus_client.parser import text_string_to_metric_families

from tierflow_common.auth import Principal, Role, requires
from tierflow_console.adapters import charts
from tierflow_console.adapters.services import ServiceError
from tierflow_console.entrypoints.context import Console
from tierflow_console.entrypoints.web_auth import api_key_of

Reader = Annotated[Principal, requires(Role.READ)]


def build_overview(console: Console) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    topics = console.topics

    @router.get("/", response_class=HTMLResponse)
    async def overview(request: Request, principal: Reader) -> HTMLResponse:
        key = api_key_of(request)
        health, backlog, (now, history, dist_error) = await asyncio.gather(
            asyncio.gather(*(c.health() for c in console.services.all())),
            _outbox_backlog(console, key),
            _distribution(console, key),
        )
        window = console.window
        latest = window.latest
        lag_rows = sorted((g, t, p, lag) for (g, t, p), lag in latest.lag.items()) if latest else []
        flows = {
            "events in": topics.customer_events,
            "changes out": topics.classification_changed,
            "tier changes": topics.tier_changed,
            "care actions": topics.care_actions,
        }
        rates = {name: window.current_rate(topic) for name, topic in flows.items()}
        dead = {
            t: (latest.ends.get(t) if latest else None)
            for t in (topics.classifier_dlq, topics.notifier_dlq)
        }
        return console.pages.render(
            request,
            "overview.html",
            principal,
            title="Overview",
            health=health,
            lag_rows=lag_rows,
            lag_total={g: sum(r[3] for r in lag_rows if r[0] == g) for g in window.groups()},
            lag_chart=charts.time_series(
                "Consumer lag, last hour (records behind)", window.lag_by_group(), y_title="records"
            ),
            rate_chart=charts.time_series(
                "Throughput, last hour (records per second)",
                {name: window.rate(topic) for name, topic in flows.items()},
                y_title="per second",
            ),
            rates=rates,
            dead=dead,
            backlog=backlog,
            sample_error=console.sampler.last_error,
            sampled_at=latest.at if latest else None,
            now_bars=[charts.bars(f"{dim} — now", labels) for dim, labels in now.items()],
            history_charts=history,
            distribution_error=dist_error,
        )

    return router


async def _outbox_backlog(console: Console, key: str) -> dict[str, float]:
    """Rows each service's outbox has not published yet, from its own /metrics."""
    texts = await asyncio.gather(
        *(c.metrics_text(key) for c in (console.services.classifier, console.services.notifier))
    )
    backlog: dict[str, float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name == "tierflow_outbox_backlog":
                for sample in family.samples:
                    producer = sample.labels.get("producer", "outbox")
                    backlog[producer] = backlog.get(producer, 0) + sample.value
    return backlog


async def _distribution(
    console: Console, key: str
) -> tuple[dict[str, dict[str, int]], list[Any], str | None]:
    classifier = console.services.classifier
    try:
        now, history = await asyncio.gather(
            classifier.get("/v1/stats/distribution", key),
            classifier.get("/v1/stats/distribution/history", key),
        )
    except ServiceError as exc:
        return {}, [], f"{exc.title}: {exc.detail}"
    snapshots = history.get("snapshots", []) if isinstance(history, dict) else []
    times = [datetime.fromisoformat(s["at"]) for s in snapshots]
    charts_by_dimension = []
    for dimension in now:
        labels: list[str] = sorted(
            {lab for s in snapshots for lab in s["dimensions"].get(dimension, {})}
        )
        counts = {
            label: [int(s["dimensions"].get(dimension, {}).get(label, 0)) for s in snapshots]
            for label in labels
        }
        charts_by_dimension.append(charts.stacked_area(f"{dimension} — over time", times, counts))
    return now, charts_by_dimension, None
