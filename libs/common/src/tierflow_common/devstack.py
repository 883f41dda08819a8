"""`tierflow run`: the whole pipeline on one machine, embedded servers unless URLs are given.

Starts PostgreSQL and Tansu (only when DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS are unset), applies
migrations, creates topics, starts the three services and restarts any that crash. Ctrl-C or
SIGTERM stops services first (they finish their batch and commit), then the broker, then the
database, so nothing is left running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tierflow_common.db.migrate import upgrade_head
from tierflow_common.embedded import EmbeddedPostgres, EmbeddedTansu
from tierflow_common.embedded.process import spawn, stop_process, tail
from tierflow_common.kafka import ensure_topics, wait_for_broker
from tierflow_common.settings import (
    ClassifierHttpSettings,
    DatabaseSettings,
    EmbeddedSettings,
    IngestHttpSettings,
    KafkaSettings,
    NotifierHttpSettings,
    TopicSettings,
)

SERVICES = ("ingest", "classifier", "notifier")
_MAX_RESTARTS_PER_MINUTE = 5


def say(message: str) -> None:
    print(f"tierflow | {message}", flush=True)


@dataclass
class _Service:
    name: str
    url: str
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


class DevStack:
    def __init__(self, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd or Path.cwd()
        self.embedded = EmbeddedSettings(_env_file=None)
        self.var = (self.cwd / self.embedded.var_dir).resolve()
        self.postgres: EmbeddedPostgres | None = None
        self.tansu: EmbeddedTansu | None = None
        self.services: list[_Service] = []
        self._stop = threading.Event()
        self.dev_key: str | None = None

    # -- start -----------------------------------------------------------------------------
    def start(self) -> None:
        (self.var / "log").mkdir(parents=True, exist_ok=True)
        if not self.env.get("DATABASE_URL"):
            self.postgres = EmbeddedPostgres(
                self.var / "pgdata",
                port=self.embedded.embedded_postgres_port,
                log_file=self.var / "log" / "postgres.log",
            )
            self.postgres.start()
            self.env["DATABASE_URL"] = self.postgres.url
            say(
                f"PostgreSQL (embedded) on 127.0.0.1:{self.postgres.port}, "
                f"data in {self.postgres.data_dir}"
            )
        else:
            say("PostgreSQL: using DATABASE_URL")
        if not self.env.get("KAFKA_BOOTSTRAP_SERVERS"):
            self.tansu = EmbeddedTansu(
                port=self.embedded.embedded_kafka_port,
                log_file=self.var / "log" / "tansu.log",
                binary=self.embedded.tansu_bin,
            )
            self.tansu.start()
            self.env["KAFKA_BOOTSTRAP_SERVERS"] = self.tansu.bootstrap_servers
            say(f"Kafka-protocol broker (embedded Tansu) on {self.tansu.bootstrap_servers}")
        else:
            say(f"Kafka: using KAFKA_BOOTSTRAP_SERVERS={self.env['KAFKA_BOOTSTRAP_SERVERS']}")
        self._prepare()
        urls = self._service_urls()
        self.env.setdefault("NOTIFIER_INGEST_URL", urls["ingest"])
        for name, url in urls.items():
            svc = _Service(name, url, self.var / "log" / f"{name}.log")
            self.services.append(svc)
            self._spawn(svc)
        self._wait_ready()

    def _prepare(self) -> None:
        os.environ.update(
            {k: v for k, v in self.env.items() if k in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
        )
        db = DatabaseSettings()
        kafka = KafkaSettings()
        topics = TopicSettings()
        upgrade_head(db)
        say("migrations applied (alembic head)")
        if self.postgres is not None:
            self.dev_key = self._development_key(db)
            if not self.env.get("NOTIFIER_INGEST_API_KEY"):
                # Completed care tasks are reported back through the ingest, like any source.
                self.env["NOTIFIER_INGEST_API_KEY"] = self._stored_key(
                    db, "notifier-api-key", "notifier (tierflow run)", ["tierflow/notifier"]
                )

        async def topics_ready() -> list[str]:
            await wait_for_broker(kafka)
            return await ensure_topics(kafka, topics)

        created = asyncio.run(topics_ready())
        say(
            f"topics ready ({topics.partitions} partitions): {', '.join(topics.all_topics())}"
            + (f" — created {len(created)}" if created else "")
        )

    def _development_key(self, db: DatabaseSettings) -> str:
        """A key for every source, kept in var/ so the quick start works across restarts."""
        return self._stored_key(db, "dev-api-key", "development (tierflow run)", ["*"])

    def _stored_key(self, db: DatabaseSettings, file: str, name: str, sources: list[str]) -> str:
        from tierflow_common.keys import create_key_sync, key_is_active_sync  # noqa: PLC0415

        path = self.var / file
        if path.exists():
            key = path.read_text().strip()
            if key and key_is_active_sync(db, key):
                return key
        _, key = create_key_sync(db, name=name, sources=sources)
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key

    def _service_urls(self) -> dict[str, str]:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            hosts = {
                "ingest": IngestHttpSettings(),
                "classifier": ClassifierHttpSettings(),
                "notifier": NotifierHttpSettings(),
            }
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return {name: f"http://{h.host}:{h.port}" for name, h in hosts.items()}

    def _spawn(self, svc: _Service) -> None:
        svc.proc = spawn(
            [sys.executable, "-m", f"tierflow_{svc.name}"],
            log_file=svc.log_file,
            env=self.env,
            cwd=self.cwd,
        )

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        pending = {s.name: s for s in self.services}
        while pending and time.monotonic() < deadline and not self._stop.is_set():
            for name, svc in list(pending.items()):
                if svc.proc is not None and svc.proc.poll() is not None:
                    raise RuntimeError(f"{name} exited during start-up:\n{tail(svc.log_file)}")
                if _http_ok(svc.url + "/readyz"):
                    say(f"{name:<10} ready on {svc.url}  (log: {svc.log_file})")
                    del pending[name]
            time.sleep(0.2)
        if pending:
            raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(pending)}")

    # -- supervise -------------------------------------------------------------------------
    def supervise(self) -> None:
        """Block until asked to stop, restarting services that die (at most 5 a minute)."""
        while not self._stop.wait(0.5):
            for svc in self.services:
                if svc.proc is None or svc.proc.poll() is None:
                    continue
                now = time.monotonic()
                svc.restarts = [t for t in svc.restarts if now - t < 60] + [now]
                if len(svc.restarts) > _MAX_RESTARTS_PER_MINUTE:
                    say(f"{svc.name} keeps crashing; stopping everything. Last log lines:")
                    print(tail(svc.log_file), flush=True)
                    return
                say(f"{svc.name} exited with {svc.proc.returncode}; restarting")
                self._spawn(svc)

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        procs = [s for s in self.services if s.proc is not None]
        for svc in procs:
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGTERM)
        for svc in procs:
            assert svc.proc is not None
            code = stop_process(svc.proc, signal.SIGTERM, 20)
            # uvicorn re-raises SIGTERM after its graceful shutdown, hence -15 is clean too.
            how = "cleanly" if code in (0, -signal.SIGTERM) else f"with exit code {code}"
            say(f"{svc.name} stopped {how}")
        if self.tansu is not None:
            self.tansu.stop()
            say("broker stopped")
        if self.postgres is not None:
            self.postgres.stop()
            say("PostgreSQL stopped")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own loopback URL
            return bool(resp.status == 200)
    except OSError:
        return False


def run_stack() -> int:
    stack = DevStack()

    def on_signal(signum: int, _frame: object) -> None:
        stack.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        ingest = next(s.url for s in stack.services if s.name == "ingest")
        classifier = next(s.url for s in stack.services if s.name == "classifier")
        key_file = stack.var / "dev-api-key"
        if stack.dev_key:
            say(f"development API key (any source): {stack.dev_key}  (saved in {key_file})")
        say("pipeline up. Try:")
        auth = f'-H "authorization: Bearer $(cat {key_file})" ' if stack.dev_key else ""
        print(
            f"""
  curl -s -X POST {ingest}/v1/events {auth}\\
    -H 'content-type: application/cloudevents+json' \\
    -d '{{"specversion":"1.0","id":"order-1","source":"shop","type":"purchase",
         "subject":"c-1","time":"2025-11-20T10:00:00Z",
         "data":{{"order_id":"1","amount":"129.90","currency":"USD"}}}}'
  curl -s {classifier}/v1/customers/c-1

  Ctrl-C stops everything.
""",
            flush=True,
        )
        stack.supervise()
        return 0
    except Exception as exc:
        say(f"start-up failed: {exc}")
        return 1
    finally:
        say("stopping…")
        stack.stop()
        say("all stopped")
