"""The servers a benchmark run needs: embedded PostgreSQL and Tansu in a temp dir, fresh databases
and topic sets, and the services as processes whose CPU time and peak RSS are sampled."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tierflow_common.db.migrate import upgrade_head
from tierflow_common.embedded import EmbeddedPostgres, EmbeddedTansu, free_port
from tierflow_common.embedded.process import spawn, stop_process, tail
from tierflow_common.kafka import ensure_topics, wait_for_broker
from tierflow_common.keys import create_key_sync
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 12  # the TOPIC_PARTITIONS default: what a fresh `make run` creates


def _cpu_of(procs: list[psutil.Process]) -> float:
    """CPU seconds of `procs` (a process first, then its children), with the children the first
    already reaped; 0 once the first is gone."""
    total = 0.0
    for i, proc in enumerate(procs):
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            if i == 0:
                return 0.0
            continue
        total += t.user + t.system
        if i == 0:
            total += t.children_user + t.children_system
    return total


def _rss_of(procs: list[psutil.Process]) -> int:
    """RSS of `procs` (as _cpu_of: 0 once the first is gone)."""
    total = 0
    for i, proc in enumerate(procs):
        try:
            total += int(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            if i == 0:
                return 0
            continue
    return total


def _tree_of(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU seconds of a process, its live children and the children it already reaped."""
    return 0.0 if pid is None else _cpu_of(_tree_of(pid))


def tree_rss(pid: int | None) -> int:
    return 0 if pid is None else _rss_of(_tree_of(pid))


class Sampled:
    """Peak RSS sampled every 100 ms and CPU seconds of one process and its children since
    `start()`. The children are looked up once a second: finding them reads every process's
    /proc entry, and doing that at every sample (twice, for three services) cost this process
    a quarter of a core during the e2e runs, taken from the services it measures."""

    CHILDREN_EVERY_S = 1.0

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self._proc = psutil.Process(pid)
        self._children: list[psutil.Process] = []
        self._children_at = float("-inf")
        self._cpu0 = self._tree_cpu()
        self._cpu_last = self._cpu0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[psutil.Process]:
        now = time.monotonic()
        if now - self._children_at >= self.CHILDREN_EVERY_S:
            try:
                self._children = self._proc.children(recursive=True)
            except psutil.NoSuchProcess:
                self._children = []
            self._children_at = now
        return [self._proc, *self._children]

    def _tree_cpu(self) -> float:
        return _cpu_of(self._tree())

    def _tree_rss(self) -> int:
        return _rss_of(self._tree())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._tree_rss())
            cpu = self._tree_cpu()
            if cpu > 0:
                self._cpu_last = cpu
            self._stop.wait(0.1)

    def cpu_seconds(self) -> float:
        cpu = self._tree_cpu()
        if cpu > 0:
            self._cpu_last = cpu
        return self._cpu_last - self._cpu0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)


class ServiceProc:
    """One tierflow service (or the trivial app) as an OS process, as `make run` starts it."""

    def __init__(
        self, name: str, module: str, env: Mapping[str, str], log_dir: Path, port_var: str
    ) -> None:
        self.name = name
        self.module = module
        self.port = free_port()
        self.env = {**os.environ, **env, port_var: str(self.port), "LOG_LEVEL": "WARNING"}
        self.log_file = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampled: Sampled | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.proc = spawn(
            [sys.executable, "-m", self.module], log_file=self.log_file, env=self.env, cwd=ROOT
        )
        self.sampled = Sampled(self.proc.pid)

    def wait_ready(self, timeout: float = 60.0, path: str = "/readyz") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{tail(self.log_file, 40)}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout:.0f}s:\n{tail(self.log_file, 40)}")

    def usage(self) -> dict[str, float]:
        """CPU seconds since start and peak RSS (MiB) so far."""
        s = self.sampled
        if s is None:
            return {"cpu_s": 0.0, "peak_rss_mib": 0.0}
        return {"cpu_s": round(s.cpu_seconds(), 3), "peak_rss_mib": round(s.peak_rss / 2**20, 1)}

    def stop(self) -> dict[str, float]:
        used = self.usage()
        if self.sampled is not None:
            self.sampled.close()
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 20)
            self.proc = None
        return used


def service(name: str, env: Mapping[str, str], log_dir: Path) -> ServiceProc:
    return ServiceProc(name, f"tierflow_{name}", env, log_dir, f"{name.upper()}_PORT")


@dataclass
class Scenario:
    """A fresh database and a fresh topic set: what one measured phase runs on."""

    tag: str
    database: DatabaseSettings
    topics: TopicSettings
    env: dict[str, str]
    api_key: str | None = None

    @property
    def dsn(self) -> str:
        """Plain libpq URL for asyncpg."""
        return self.database.async_url().replace("postgresql+asyncpg://", "postgresql://")


def _api_key(database: DatabaseSettings) -> str:
    """An ingest API key for source `bench`."""
    return create_key_sync(database, name="bench", sources=["bench"])[1]


class Stack:
    """Embedded PostgreSQL + Tansu on free ports under a temp dir; removed by `close()`."""

    def __init__(self, postgres_settings: Mapping[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tierflow-bench-"))
        self.dir.chmod(0o755)  # PostgreSQL runs as an unprivileged user when we are root
        self.log_dir = self.dir / "log"
        self.log_dir.mkdir()
        self.postgres = EmbeddedPostgres(
            self.dir / "pgdata",
            port=free_port(),
            log_file=self.log_dir / "postgres.log",
            settings=postgres_settings,
        )
        self.tansu = EmbeddedTansu(port=free_port(), log_file=self.log_dir / "tansu.log")
        self.kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")
        self.services: list[ServiceProc] = []

    def start(self) -> None:
        self.postgres.start()
        self.tansu.start()
        self.kafka = KafkaSettings(bootstrap_servers=self.tansu.bootstrap_servers)
        asyncio.run(wait_for_broker(self.kafka))

    def scenario(self, tag: str) -> Scenario:
        name = f"bench_{tag}_{uuid.uuid4().hex[:6]}"
        database = DatabaseSettings(database_url=self.postgres.create_database(name))
        upgrade_head(database)
        suffix = f"{tag}-{uuid.uuid4().hex[:6]}"
        topics = TopicSettings(
            customer_events=f"customer-events-{suffix}",
            classification_changed=f"customer-classification-changed-{suffix}",
            tier_changed=f"customer-tier-changed-{suffix}",
            care_actions=f"care-actions-{suffix}",
            classifier_dlq=f"customer-events.classifier.dlq-{suffix}",
            notifier_dlq=f"customer-classification-changed.notifier.dlq-{suffix}",
            partitions=PARTITIONS,
        )
        asyncio.run(ensure_topics(self.kafka, topics))
        env = {
            "DATABASE_URL": database.database_url.get_secret_value(),
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "CLASSIFIER_RULES_FILE": str(ROOT / "config" / "classifier.yaml"),
            "NOTIFIER_PLAYBOOKS_FILE": str(ROOT / "config" / "notifier.yaml"),
            "CLASSIFIER_GROUP_ID": f"bench-classifier-{suffix}",
            "NOTIFIER_GROUP_ID": f"bench-notifier-{suffix}",
            **topics.as_env(),
        }
        return Scenario(tag, database, topics, env, _api_key(database))

    def start_service(self, name: str, scenario: Scenario) -> ServiceProc:
        svc = service(name, scenario.env, self.log_dir)
        self.services.append(svc)
        svc.start()
        return svc

    def stop_service(self, svc: ServiceProc) -> dict[str, float]:
        used = svc.stop()
        if svc in self.services:
            self.services.remove(svc)
        return used

    def server_cpu_s_per_1k(self, before: dict[str, float], server: str, items: int) -> float:
        """A server's CPU seconds per 1,000 items since `before` (an `infra_cpu()`)."""
        return round((self.infra_cpu()[server] - before[server]) / max(items, 1) * 1000, 4)

    def infra_cpu(self) -> dict[str, float]:
        return {
            "postgres": tree_cpu_seconds(self.postgres.pid),
            "tansu": tree_cpu_seconds(self.tansu.pid),
        }

    def close(self) -> None:
        for svc in list(self.services):
            try:
                svc.stop()
            except Exception as exc:  # keep tearing down the rest
                print(f"bench | stopping {svc.name} failed: {exc}", file=sys.stderr)
        self.services.clear()
        self.tansu.stop()
        self.postgres.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
