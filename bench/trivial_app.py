"""The baseline HTTP service: a FastAPI endpoint that reads the body and answers 202, served by
the same uvicorn set-up as the ingest (its event loop, httptools). `python -m bench.trivial_app`
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tierflow_common.serve import ADMISSION_LOOP, serve
from tierflow_common.settings import HttpSettings

app = FastAPI(title="trivial")


@app.post("/v1/events")
async def accept(request: Request) -> Response:
    await request.body()
    return JSONResponse({"status": "accepted"}, status_code=202)


@app.get("/readyz")
async def ready() -> dict[str, str]:
    return {"status": "ready"}


if __name__ == "__main__":
    serve(
        app,
        HttpSettings(host="127.0.0.1", port=int(os.environ["TRIVIAL_PORT"])),
        loop=ADMISSION_LOOP,
    )
