"""A small HTTP/1.1 client for one origin: keep-alive connections, a connection bound, timeouts,
responses parsed by httptools (the parser uvicorn uses), http and https.

Why not httpx: at thousands of webhook POSTs per second httpx/httpcore spent most of the
notifier's CPU in its connection pool (every request scans every pooled connection and asks
each socket whether it is readable), capping delivery near 300 actions/s on this machine. A
webhook sender needs one thing — POST these bytes, tell me the status — so this does exactly
that, at a fraction of the cost per request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from tierflow_common.trace_context import TraceContext


class HttpError(Exception):
    """The request got no HTTP response (connection refused, reset, timed out, bad reply)."""


class _Closed(HttpError):
    """The peer closed the connection cleanly (FIN) without a byte of response: what an idle
    keep-alive connection the server had already closed looks like."""


@dataclass(frozen=True)
class Post:
    """One POST of `body` with `headers` (host and content-length are added)."""

    headers: Mapping[str, str]
    body: bytes


def with_trace(post: Post, trace: TraceContext | None) -> Post:
    """`post` with the W3C `traceparent` (and `tracestate`) headers of `trace`."""
    if trace is None:
        return post
    return Post(headers={**post.headers, **trace.carrier()}, body=post.body)


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.status = 0
        self.closed = False
        self.answered = False  # a byte of response to the current request arrived

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"bad HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.status and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, False))  # body delimited by the close
        if exc is None and not self.answered:
            self._fail(_Closed("connection closed by peer"))
        else:  # reset, or closed mid-response: the server had the request
            self._fail(HttpError(f"connection lost mid-response: {exc or 'closed by peer'}"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, self.parser.should_keep_alive()))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, data: bytes) -> tuple[int, bool]:
        assert self.transport is not None
        self.status = 0
        self.answered = False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """POSTs to one URL over keep-alive connections. The caller bounds how many requests are
    in flight (one connection each); at most `max_connections` idle ones are kept."""

    def __init__(self, url: str, *, max_connections: int, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rsplit("@", 1)[-1]
        self._head = f"POST {target} HTTP/1.1\r\nhost: {host}\r\n".encode("latin-1")
        self._timeout = timeout
        self._keep = max_connections
        self._idle: list[_Conn] = []

    async def post(self, request: Post) -> int:
        """Send it; return the response status (raises HttpError if there was none)."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
        data = b"".join(
            (
                self._head,
                extra.encode("latin-1"),
                b"content-length: %d\r\n\r\n" % len(request.body),
                request.body,
            )
        )
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            try:
                return await self._exchange(conn, data)
            except _Closed:
                # A kept-alive connection the server had already closed: once more, on a
                # fresh one. Only then (a reset or a cut-off answer means the server had the
                # request: a failed attempt, retried with backoff), and only once: each
                # attempt reaches the endpoint at most twice, not once per idle connection.
                break
        return await self._exchange(await self._connect(), data)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                _, conn = await loop.create_connection(_Conn, self._host, self._port, ssl=self._ssl)
        except (OSError, TimeoutError) as exc:
            raise HttpError(f"connect to {self._host}:{self._port} failed: {exc!r}") from exc
        return conn

    async def _exchange(self, conn: _Conn, data: bytes) -> int:
        try:
            async with asyncio.timeout(self._timeout):
                status, keep_alive = await conn.request(data)
        except TimeoutError as exc:
            conn.close()
            raise HttpError(f"no response within {self._timeout:g}s") from exc
        except BaseException:
            conn.close()
            raise
        if keep_alive and not conn.closed and len(self._idle) < self._keep:
            self._idle.append(conn)
        else:
            conn.close()
        return status

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
