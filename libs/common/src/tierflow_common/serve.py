"""Run a service's ASGI app under uvicorn with graceful SIGTERM handling."""

from __future__ import annotations

import asyncio
import gc
from typing import Literal

import structlog
import uvicorn
from fastapi import FastAPI

from tierflow_common.exceptions import ConfigError
from tierflow_common.kafka_security import check_broker_security
from tierflow_common.settings import HttpSettings, KafkaSettings

log = structlog.get_logger(__name__)

EventLoop = Literal["uvloop", "asyncio"]
# The loop of a service that must answer, promptly, more clients than it can serve (the ingest;
# its trivial-endpoint baseline in the bench uses it too). uvloop (libuv) accepts one connection
# per loop iteration: with each iteration a batch request's CPU work long, hundreds of clients
# waited unseen in the kernel's accept queue — where no admission bound or shedding can answer
# them — and got 200 after 20-27 s instead of a quick 503 (the overload scenario, 10x: 328
# queued, none refused). asyncio's loop accepts every waiting connection at each wake-up (the
# same scenario: 391 of 442 requests refused with Retry-After, slowest answer 1.7 s). It costs some
# CPU per request on the single-event path (docs/benchmarks.md); consumers keep uvloop.
ADMISSION_LOOP: EventLoop = "asyncio"


def settle_garbage_collector() -> None:
    """Move everything alive after start-up (modules, schemas, compiled rules) out of the
    collector's sight and collect the young generation less often. A service allocates many
    short-lived objects per record; with the defaults, the full collections they trigger walk
    every long-lived object again and again — measured at about 40% of the classifier's CPU
    per event (bench, docs/benchmarks.md). A young collection walks whatever the batch in
    flight holds (~12 ms for a classifier batch), however many objects were allocated since
    the last: at 20,000 allocations between them they still took ~10% of the classifier's
    CPU; at 100,000 its dense drain went from 0.54 to 0.47 CPU-s per 1,000 events, peak RSS
    unchanged (reference counting frees the garbage; only cycles wait for a collection)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 20, 20)


def check_kafka_settings(kafka: KafkaSettings) -> None:
    """Exit (code 2) with one log line naming the setting when the broker refuses the TLS or
    SASL settings: the clients would otherwise retry that as an outage, forever."""
    try:
        asyncio.run(check_broker_security(kafka))
    except ConfigError as exc:
        log.error("kafka_settings_refused", error=str(exc))
        raise SystemExit(2) from None


def serve(
    app: FastAPI,
    http: HttpSettings,
    kafka: KafkaSettings | None = None,
    *,
    loop: EventLoop = "uvloop",
) -> None:
    check_kafka_settings(kafka or KafkaSettings())
    settle_garbage_collector()
    uvicorn.run(
        app,
        host=http.host,
        port=http.port,
        loop=loop,
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=15,
    )
