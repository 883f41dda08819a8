"""Run a service's ASGI app under uvicorn with graceful SIGTERM handling."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from tierflow_common.settings import HttpSettings


def serve(app: FastAPI, http: HttpSettings) -> None:
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
