"""`python -m bench.webhook_receiver --port P --secret whsec_...`: a fast local webhook receiver.

A separate process (so its CPU is not the notifier's), on uvloop with httptools parsing, that:
- verifies the Standard Webhooks signature of every request (or of 1 in `--verify-every`),
  answering 401 to a bad one;
- answers `status` (200 by default; `POST /control {"status": 500}` switches it, e.g. for an
  outage) and records, for every 2xx-answered request, its webhook-id, arrival time and latency
  (arrival - the action's `created_at` in the body: created → delivered);
- reports on `GET /stats?since=&until=` (wall-clock epoch seconds; latency percentiles of the
  first deliveries that arrived in that window) and lists the webhook-ids on `GET /ids`.

Duplicates are 2xx-answered requests whose webhook-id was already accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httptools
import httpx
import numpy as np
import orjson
import uvloop
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tierflow_common.embedded import free_port
from tierflow_common.embedded.process import spawn, stop_process, tail


class State:
    def __init__(self, secret: str, verify_every: int, status: int) -> None:
        self.webhook = Webhook(secret)
        self.verify_every = max(1, verify_every)
        self.status = status
        self.requests = 0
        self.verified = 0
        self.bad_signatures = 0
        self.refused = 0  # answered non-2xx on purpose (status switched)
        self.duplicates = 0
        self.ids: dict[str, int] = {}  # webhook-id -> index into arrivals/latencies
        self.arrivals: list[float] = []
        self.latencies: list[float] = []

    def hook(self, headers: dict[bytes, bytes], body: bytes) -> int:
        self.requests += 1
        now = time.time()
        if self.requests % self.verify_every == 0:
            self.verified += 1
            try:
                self.webhook.verify(body, {k.decode(): v.decode() for k, v in headers.items()})
            except WebhookVerificationError:
                self.bad_signatures += 1
                return 401
        if not 200 <= self.status < 300:
            self.refused += 1
            return self.status
        wid = headers.get(b"webhook-id", b"").decode()
        if wid in self.ids:
            self.duplicates += 1
            return self.status
        self.ids[wid] = len(self.arrivals)
        self.arrivals.append(now)
        try:
            created = orjson.loads(body)["data"]["created_at"]
            latency = now - datetime.fromisoformat(created).timestamp()
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            latency = float("nan")
        self.latencies.append(latency)
        return self.status

    def stats(self, since: float | None, until: float | None) -> dict[str, Any]:
        arrivals = np.asarray(self.arrivals, dtype=float)
        lat = np.asarray(self.latencies, dtype=float)
        mask = np.ones(len(arrivals), dtype=bool)
        if since is not None:
            mask &= arrivals >= since
        if until is not None:
            mask &= arrivals < until
        window = lat[mask]
        window = window[np.isfinite(window)] * 1000
        pct = (
            {f"p{q:g}": round(float(np.percentile(window, q)), 1) for q in (50, 90, 95, 99, 99.9)}
            | {"max": round(float(window.max()), 1), "mean": round(float(window.mean()), 1)}
            if window.size
            else {}
        )
        return {
            "status": self.status,
            "requests": self.requests,
            "verified": self.verified,
            "bad_signatures": self.bad_signatures,
            "refused": self.refused,
            "unique": len(self.ids),
            "duplicates": self.duplicates,
            "first_at": float(arrivals.min()) if arrivals.size else None,
            "last_at": float(arrivals.max()) if arrivals.size else None,
            "in_window": int(mask.sum()),
            "latency_ms": pct,
        }


class _Conn(asyncio.Protocol):
    """One keep-alive connection; httptools calls the on_* methods as bytes arrive."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._reply(400, b"")
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        parts = urlsplit(self.url.decode())
        body = b"".join(self.body)
        if method == b"GET" and parts.path == "/stats":
            q = parse_qs(parts.query)
            since = float(q["since"][0]) if "since" in q else None
            until = float(q["until"][0]) if "until" in q else None
            self._reply(200, orjson.dumps(self.state.stats(since, until)))
        elif method == b"GET" and parts.path == "/ids":
            self._reply(200, orjson.dumps(list(self.state.ids)))
        elif method == b"POST" and parts.path == "/control":
            self.state.status = int(orjson.loads(body)["status"])
            self._reply(200, b"{}")
        elif method == b"GET" and parts.path == "/healthz":
            self._reply(200, b"{}")
        elif method == b"POST":
            self._reply(self.state.hook(self.headers, body), b"")
        else:
            self._reply(405, b"")

    def _reply(self, status: int, body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )


async def serve(port: int, state: State) -> None:
    loop = asyncio.get_running_loop()
    factory: Callable[[], _Conn] = lambda: _Conn(state)  # noqa: E731
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class Receiver:
    """The receiver as a child process, and a client for its control and report endpoints."""

    def __init__(self, log_dir: Path, *, verify_every: int = 1, status: int = 200) -> None:
        self.port = free_port()
        self.secret = new_secret()
        self.log_file = log_dir / f"webhook-receiver-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._args = ["--verify-every", str(verify_every), "--status", str(status)]
        self._http = httpx.Client(timeout=30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self, name: str) -> dict[str, str]:
        return {"name": name, "url": f"{self.base_url}/hooks", "secret": self.secret}

    def start(self, timeout: float = 20.0) -> None:
        cmd = [sys.executable, "-m", "bench.webhook_receiver", "--port", str(self.port)]
        self.proc = spawn(
            [*cmd, "--secret", self.secret, *self._args],
            log_file=self.log_file,
            env=None,
            cwd=Path(__file__).resolve().parent.parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"webhook receiver exited:\n{tail(self.log_file, 30)}")
            try:
                if self._http.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"webhook receiver not up in {timeout:.0f}s")

    def stats(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
        result: dict[str, Any] = self._http.get(self.base_url + "/stats", params=params).json()
        return result

    def ids(self) -> set[str]:
        return set(self._http.get(self.base_url + "/ids").json())

    def set_status(self, status: int) -> None:
        self._http.post(self.base_url + "/control", json={"status": status}).raise_for_status()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        self._http.close()
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 10)
            self.proc = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--verify-every", type=int, default=1, help="verify 1 in N signatures")
    parser.add_argument("--status", type=int, default=200, help="answer this (until /control)")
    args = parser.parse_args(argv)
    state = State(args.secret, args.verify_every, args.status)
    uvloop.run(serve(args.port, state))


if __name__ == "__main__":
    main()
