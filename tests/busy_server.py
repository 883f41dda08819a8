"""A server shaped like the ingest under load: at most `ADMITTED` requests in at once, the next
ones answered 503 before any work; each admitted one takes CPU in steps over several loop
iterations (as the ingest parses, validates and sends a batch), then waits (the broker's acks).
Served by `tierflow_common.serve.serve` on the event loop named by `BUSY_SERVER_LOOP`.
`python -m tests.busy_server` (port in `BUSY_SERVER_PORT`)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import cast

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from tierflow_common.serve import EventLoop, serve
from tierflow_common.settings import HttpSettings

STEPS = 10  # a request's CPU comes in steps, each in a loop iteration of its own
STEP_S = 0.01
WAIT_S = 0.3  # then its wait, during which the loop is free
ADMITTED = 8  # requests let in at once; the next ones are answered 503 before any work

app = FastAPI()
inside = 0


@app.post("/work")
async def work() -> PlainTextResponse:
    global inside
    if inside >= ADMITTED:
        return PlainTextResponse("busy", status_code=503)
    inside += 1
    for _ in range(STEPS):
        until = time.perf_counter() + STEP_S
        while time.perf_counter() < until:
            pass
        await asyncio.sleep(0)
    await asyncio.sleep(WAIT_S)
    inside -= 1
    return PlainTextResponse("done")


@app.get("/readyz")
async def ready() -> PlainTextResponse:
    return PlainTextResponse("ready")


if __name__ == "__main__":
    serve(
        app,
        HttpSettings(host="127.0.0.1", port=int(os.environ["BUSY_SERVER_PORT"])),
        loop=cast(EventLoop, os.environ["BUSY_SERVER_LOOP"]),
    )
