"""Run a service's ASGI app under uvicorn with graceful SIGTERM handling."""

from __future__ import annotations

import gc

import uvicorn
from fastapi import FastAPI

from tierflow_common.settings import HttpSettings


def settle_garbage_collector() -> None:
    """Move everything alive after start-up (modules, schemas, compiled rules) out of the
    collector's sight and collect the young generation less often. A service allocates many
    short-lived objects per record; with the defaults, the full collections they trigger walk
    every long-lived object again and again — measured at about 40% of the classifier's CPU
    per event (bench, docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def serve(app: FastAPI, http: HttpSettings) -> None:
    settle_garbage_collector()
    uvicorn.run(
        app,
        host=http.host,
        port=http.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=15,
    )
