"""`tierflow run`: the whole pipeline on one machine, embedded servers unless URLs are given.

Starts PostgreSQL and Tansu (only when DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS are unset), applies
migrations, creates topics, starts the services and the console, restarts any that crash. Ctrl-C or
SIGTERM stops services first (they finish their batch and commit), then the broker, then the
database, so nothing is left running.

`--classifiers N` / `--notifiers N` start N processes of that service in one consumer group
(they share the partitions). Only one can bind the service's port, so process i (from 0)
listens on the port + 10 x i — classifiers on 8081, 8091, 8101, ..., notifiers on 8082, 8092,
... — and logs to var/log/<service>-<i+1>.log beyond the first.
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

from tierflow_common.auth import ALL_ROLES, Role
from tierflow_common.db.migrate import upgrade_head
from tierflow_common.embedded import EmbeddedPostgres, EmbeddedTansu
from tierflow_common.embedded.process import spawn, stop_process, tail
from tierflow_common.kafka import ensure_topics, wait_for_broker
from tierflow_common.settings import (
    ClassifierHttpSettings,
    ConsoleHttpSettings,
    DatabaseSettings,
    EmbeddedSettings,
    IngestHttpSettings,
    KafkaSettings,
    NotifierHttpSettings,
    TopicSettings,
)

SERVICES = ("ingest", "classifier", "notifier", "console")
_MAX_RESTARTS_PER_MINUTE = 5
# Process i of a service listens on its port + PORT_STRIDE x i: the stride keeps the extra
# classifiers (8091, 8101, ...) off the notifier's port (8082) and the other way round.
PORT_STRIDE = 10


def say(message: str) -> None:
    print(f"tierflow | {message}", flush=True)


@dataclass
class _Service:
    name: str  # "classifier", or "classifier-2" for the second classifier process
    module: str  # the service it runs: "classifier"
    url: str
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)  # on top of the stack's environment
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)


class DevStack:
    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        classifiers: int = 1,
        notifiers: int = 1,
    ) -> None:
        if classifiers < 1 or notifiers < 1:
            raise ValueError("at least one classifier and one notifier process")
        self.counts = {"ingest": 1, "classifier": classifiers, "notifier": notifiers, "console": 1}
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
        hosts = self._service_hosts()
        self.env.setdefault("NOTIFIER_INGEST_URL", _url(*hosts["ingest"]))
        # The console reads the first process of each service (any of them answers the same).
        for service in ("ingest", "classifier", "notifier"):
            self.env.setdefault(f"CONSOLE_{service.upper()}_URL", _url(*hosts[service]))
        for svc in self.plan(hosts):
            self.services.append(svc)
            self._spawn(svc)
        self._wait_ready()

    def plan(self, hosts: dict[str, tuple[str, int]]) -> list[_Service]:
        """The processes to start: per service its count, process i on port + PORT_STRIDE x i
        (set through the service's own `<SERVICE>_PORT`), each with its own log file."""
        planned: list[_Service] = []
        for module, (host, port) in hosts.items():
            for i in range(self.counts[module]):
                name = module if i == 0 else f"{module}-{i + 1}"
                own = port + PORT_STRIDE * i
                planned.append(
                    _Service(
                        name,
                        module,
                        _url(host, own),
                        self.var / "log" / f"{name}.log",
                        env={f"{module.upper()}_PORT": str(own)} if i else {},
                    )
                )
        taken: dict[str, str] = {}
        for svc in planned:
            if svc.url in taken:
                raise ValueError(
                    f"{svc.name} and {taken[svc.url]} would both listen on {svc.url}: "
                    "set the services' ports further apart"
                )
            taken[svc.url] = svc.name
        return planned

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
                # Completed care tasks are reported back through the ingest, like any source:
                # with a key of its own that may only send for the notifier's source.
                self.env["NOTIFIER_INGEST_API_KEY"] = self._stored_key(
                    db,
                    "notifier-api-key",
                    "notifier (tierflow run)",
                    ["tierflow/notifier"],
                    {Role.INGEST},
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
        """A key with every role, for every source, kept in var/ so the quick start works
        across restarts."""
        return self._stored_key(db, "dev-api-key", "development (tierflow run)", ["*"], ALL_ROLES)

    def _stored_key(
        self,
        db: DatabaseSettings,
        file: str,
        name: str,
        sources: list[str],
        roles: frozenset[Role] | set[Role],
    ) -> str:
        """The key saved in var/`file` while it is active with exactly these roles and sources;
        else a new one (a saved key of an older version, e.g. without roles, is revoked)."""
        from tierflow_common.keys import create_key_sync, find_key_sync, revoke_key_sync  # noqa: PLC0415

        path = self.var / file
        if path.exists():
            key = path.read_text().strip()
            found = find_key_sync(db, key) if key else None
            if found is not None and found.roles == roles and found.sources == tuple(sources):
                return key
            if found is not None:
                revoke_key_sync(db, found.key_id)
        _, key = create_key_sync(db, name=name, sources=sources, roles=roles)
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key

    def _service_hosts(self) -> dict[str, tuple[str, int]]:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            hosts = {
                "ingest": IngestHttpSettings(),
                "classifier": ClassifierHttpSettings(),
                "notifier": NotifierHttpSettings(),
                "console": ConsoleHttpSettings(),
            }
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return {name: (h.host, h.port) for name, h in hosts.items()}

    def _spawn(self, svc: _Service) -> None:
        svc.proc = spawn(
            [sys.executable, "-m", f"tierflow_{svc.module}"],
            log_file=svc.log_file,
            env={**self.env, **svc.env},
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
                    say(f"{name:<12} ready on {svc.url}  (log: {svc.log_file})")
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


def _url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - our own loopback URL
            return bool(resp.status == 200)
    except OSError:
        return False


def run_stack(*, classifiers: int = 1, notifiers: int = 1) -> int:
    stack = DevStack(classifiers=classifiers, notifiers=notifiers)

    def on_signal(signum: int, _frame: object) -> None:
        stack.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        ingest = next(s.url for s in stack.services if s.name == "ingest")
        classifier = next(s.url for s in stack.services if s.name == "classifier")
        console = next(s.url for s in stack.services if s.name == "console")
        key_file = stack.var / "dev-api-key"
        if stack.dev_key:
            say(
                f"development API key (every role, any source): {stack.dev_key}"
                f"  (saved in {key_file})"
            )
        say("pipeline up. Try:")
        auth = f'-H "authorization: Bearer $(cat {key_file})" ' if stack.dev_key else ""
        print(
            f"""
  curl -s -X POST {ingest}/v1/events {auth}\\
    -H 'content-type: application/cloudevents+json' \\
    -d '{{"specversion":"1.0","id":"order-1","source":"shop","type":"purchase",
         "subject":"c-1","time":"2025-11-20T10:00:00Z",
         "data":{{"order_id":"1","amount":"129.90","currency":"USD"}}}}'
  curl -s {classifier}/v1/customers/c-1 {auth.strip()}

  Console: {console}  (sign in with the development API key above)

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
