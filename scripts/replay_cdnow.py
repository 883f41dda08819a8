"""Replay the CDNOW master log through the ingest API and prove the classifier got it exactly.

Run: ``.venv/bin/python scripts/replay_cdnow.py [--limit N]`` (``--limit`` keeps only the first N
customers of the log, for a quick check). The full run writes ``docs/cdnow-replay.md``.

The CDNOW master log (69,659 purchases by 23,570 customers, 1997-01 to 1998-06) ships inside the
``lifetimes`` package; it is located with ``importlib.util.find_spec`` so that the archived package
itself is never imported. Everything runs on fresh servers in a temp dir: embedded PostgreSQL,
the Tansu broker, and the ingest and classifier as separate processes (the classifier in
``CLASSIFIER_CLOCK=event_time``, so "now" is the replayed time and time-driven transitions happen
as they would have). The expected results are computed independently from the file with
``Decimal``; nothing the pipeline reports is trusted without comparing it to the log. RFM and
ABC, relative to the population, are checked against the classifier's final population
statistics, recomputed here for every customer.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson
import psutil
from aiokafka import TopicPartition
from pydantic import SecretStr
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tierflow_classifier.adapters.population_store import load_with_progress
from tierflow_classifier.adapters.repository import read_watermark, state_from_row
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.classify import Outside, compose_version, variables_at
from tierflow_classifier.domain.population import PopulationStats, population_dimensions
from tierflow_classifier.domain.population_review import judge_at
from tierflow_classifier.domain.rules import decide
from tierflow_common.auth import Role
from tierflow_common.db.engine import create_engine
from tierflow_common.db.migrate import upgrade_head
from tierflow_common.db.raw import raw_connection
from tierflow_common.db.tables import (
    churn_models,
    classification_changes,
    consumer_offsets,
    customer_labels,
    customers,
    processed_events,
)
from tierflow_common.embedded import EmbeddedPostgres, EmbeddedTansu, free_port
from tierflow_common.embedded.process import spawn, stop_process, tail
from tierflow_common.kafka import ensure_topics, make_consumer, wait_for_broker
from tierflow_common.keys import create_key_sync
from tierflow_common.outbox import backlog
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cdnow-replay.md"
RULES_FILE = ROOT / "config" / "classifier.yaml"
RULES_VERSION = load_rules(RULES_FILE).version
SOURCE = "cdnow"
PARTITIONS = 6
GROUP_ID = "tierflow-classifier"
CLASSIFIER_PRODUCER = "classifier"  # the outbox producer name the classifier relays
TIER_CHANGED_TYPE = b"tierflow.tier.changed"
SAMPLE_SIZE = 50
SAMPLE_SEED = 19970101
UPLOAD_CHUNK_LINES = 500
MAX_UPLOAD_ATTEMPTS = 20


# The log --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    line: int  # 1-based line number in CDNOW_master.txt (line 1 is the header)
    customer: str
    day: str  # YYYYMMDD
    quantity: int
    amount: Decimal


@dataclass(frozen=True)
class LogFacts:
    customers: int
    purchases: int
    spend: Decimal
    cds: int
    zero_amount_rows: int
    same_day_rows: int  # rows sharing (customer, day) with another row
    first_day: str
    last_day: str


def locate_log() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the lifetimes package is not installed (it is a dev dependency: uv sync)")
    for location in spec.submodule_search_locations:
        path = Path(location) / "datasets" / "CDNOW_master.txt"
        if path.is_file():
            return path
    raise SystemExit("lifetimes/datasets/CDNOW_master.txt not found")


def read_log(path: Path, limit: int | None = None) -> list[Row]:
    """Every purchase row, or those of the first `limit` customers in file order."""
    rows: list[Row] = []
    kept: set[str] = set()
    with path.open(encoding="ascii") as f:
        for number, text in enumerate(f, start=1):
            parts = text.split()
            if number == 1 and parts and not parts[0].isdigit():
                continue  # the header line
            if not parts:
                continue
            if len(parts) != 4:
                raise ValueError(f"{path}:{number}: expected 4 fields, got {text!r}")
            customer, day, quantity, amount = parts
            if customer not in kept:
                if limit is not None and len(kept) >= limit:
                    continue
                kept.add(customer)
            datetime.strptime(day, "%Y%m%d")  # validates the format; the value is not kept
            row = Row(number, customer, day, int(quantity), Decimal(amount))
            if row.amount < 0:
                raise ValueError(f"{path}:{number}: negative amount {amount}")
            rows.append(row)
    return rows


def expected_totals(rows: Iterable[Row]) -> dict[str, tuple[int, Decimal]]:
    """(purchases, spend) per customer, straight from the log."""
    totals: dict[str, tuple[int, Decimal]] = {}
    for r in rows:
        count, spend = totals.get(r.customer, (0, Decimal(0)))
        totals[r.customer] = (count + 1, spend + r.amount)
    return totals


def log_facts(rows: Sequence[Row]) -> LogFacts:
    per_day: dict[tuple[str, str], int] = {}
    for r in rows:
        per_day[(r.customer, r.day)] = per_day.get((r.customer, r.day), 0) + 1
    days = [r.day for r in rows]
    return LogFacts(
        customers=len({r.customer for r in rows}),
        purchases=len(rows),
        spend=sum((r.amount for r in rows), Decimal(0)),
        cds=sum(r.quantity for r in rows),
        zero_amount_rows=sum(1 for r in rows if r.amount == 0),
        same_day_rows=sum(n for n in per_day.values() if n > 1),
        first_day=min(days, default=""),
        last_day=max(days, default=""),
    )


def event_line(row: Row) -> bytes:
    # The line number is what makes a row unique: the log repeats (customer, day, amount).
    event_id = f"{SOURCE}-{row.line}"
    day = f"{row.day[:4]}-{row.day[4:6]}-{row.day[6:]}"
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": SOURCE,
            "type": "purchase",
            "subject": row.customer,
            "time": f"{day}T12:00:00+00:00",
            "data": {"order_id": event_id, "amount": format(row.amount, "f"), "currency": "USD"},
        }
    )


async def ndjson(rows: Sequence[Row], start: int) -> AsyncIterator[bytes]:
    """The upload body from row `start` on, built lazily so memory stays at one chunk."""
    for i in range(start, len(rows), UPLOAD_CHUNK_LINES):
        yield b"".join(event_line(r) + b"\n" for r in rows[i : i + UPLOAD_CHUNK_LINES])


# Servers and services -------------------------------------------------------------------------


class Service:
    """One tierflow service as an OS process, started the way `make run` starts it."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**os.environ, **env, f"{name.upper()}_PORT": str(self.port)}
        self.log_file = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = spawn(
            [sys.executable, "-m", f"tierflow_{self.name}"],
            log_file=self.log_file,
            env=self.env,
            cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{tail(self.log_file, 40)}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout:.0f}s:\n{tail(self.log_file, 40)}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, 30)
            self.proc = None


class Stack:
    """PostgreSQL, Tansu, ingest and classifier on free ports under one temp dir."""

    def __init__(self, *, keep: bool = False) -> None:
        self.keep = keep
        self.dir = Path(tempfile.mkdtemp(prefix="tierflow-cdnow-"))
        # As root, PostgreSQL runs as an unprivileged user that must reach its data dir.
        self.dir.chmod(0o755)
        self.log_dir = self.dir / "log"
        self.postgres = EmbeddedPostgres(
            self.dir / "pgdata", port=free_port(), log_file=self.log_dir / "postgres.log"
        )
        self.tansu = EmbeddedTansu(port=free_port(), log_file=self.log_dir / "tansu.log")
        self.topics = TopicSettings(partitions=PARTITIONS)
        self.kafka = KafkaSettings()
        self.database = DatabaseSettings()
        self.api_key = ""
        self.services: dict[str, Service] = {}

    def start(self) -> None:
        self.postgres.start()
        self.tansu.start()
        self.kafka = KafkaSettings(bootstrap_servers=self.tansu.bootstrap_servers)
        self.database = DatabaseSettings(database_url=SecretStr(self.postgres.url))
        asyncio.run(wait_for_broker(self.kafka))
        upgrade_head(self.database)
        asyncio.run(ensure_topics(self.kafka, self.topics))
        # Sends the log through the ingest and reads the classifier's answers.
        _, self.api_key = create_key_sync(
            self.database, name="cdnow-replay", sources=["*"], roles={Role.INGEST, Role.READ}
        )
        env = {
            "DATABASE_URL": self.postgres.url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "CLASSIFIER_CLOCK": "event_time",
            "CLASSIFIER_RULES_FILE": str(RULES_FILE),
            "CLASSIFIER_GROUP_ID": GROUP_ID,
            "LOG_LEVEL": os.environ.get("REPLAY_LOG_LEVEL", "WARNING"),
            "TOPIC_CUSTOMER_EVENTS": self.topics.customer_events,
            "TOPIC_CLASSIFICATION_CHANGED": self.topics.classification_changed,
            "TOPIC_TIER_CHANGED": self.topics.tier_changed,
            "TOPIC_CARE_ACTIONS": self.topics.care_actions,
            "TOPIC_CLASSIFIER_DLQ": self.topics.classifier_dlq,
            "TOPIC_NOTIFIER_DLQ": self.topics.notifier_dlq,
            "TOPIC_PARTITIONS": str(PARTITIONS),
            # The log is from 1997-98: keep its ledger and receipts (windows of 100 years), so
            # the resend pass is checked against them, not only against the order ids.
            "CLASSIFIER_LEDGER_RETENTION_DAYS": "36500",
            "INGEST_RECEIPT_RETENTION_DAYS": "36500",
        }
        # Spawned from the main thread on purpose: children die with the thread that forked
        # them (PR_SET_PDEATHSIG), and this thread lives as long as the replay.
        for name in ("ingest", "classifier"):
            self.services[name] = Service(name, env, self.log_dir)
            self.services[name].start()
        for svc in self.services.values():
            svc.wait_ready()

    def url(self, service: str) -> str:
        return self.services[service].url

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {svc.name} ({svc.log_file}) ---\n{tail(svc.log_file, 20)}"
            for svc in self.services.values()
        )

    def close(self) -> None:
        # Services first (they commit their batch), then the broker, then PostgreSQL.
        for svc in reversed(list(self.services.values())):
            try:
                svc.stop()
            except Exception as exc:  # keep tearing down the rest
                print(f"stopping {svc.name} failed: {exc}", file=sys.stderr)
        self.tansu.stop()
        self.postgres.stop()
        if self.keep:
            print(f"kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# Observing the pipeline -----------------------------------------------------------------------


@dataclass
class Upload:
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    attempts: int = 0
    seconds: float = 0.0
    errors: list[Any] = field(default_factory=list)


async def upload(http: httpx.AsyncClient, url: str, key: str, rows: Sequence[Row]) -> Upload:
    """POST the rows as one NDJSON stream; on 503 resume from `resend_from_line`."""
    result = Upload()
    start = 0
    began = time.monotonic()
    while True:
        result.attempts += 1
        resp = await http.post(
            url + "/v1/events:bulk",
            content=ndjson(rows, start),
            headers={"content-type": "application/x-ndjson", "authorization": f"Bearer {key}"},
        )
        if resp.status_code not in (200, 503):
            raise RuntimeError(f"bulk upload answered {resp.status_code}: {resp.text[:500]}")
        body = resp.json()
        result.accepted += int(body["accepted"])
        result.duplicates += int(body["duplicates"])
        result.rejected += int(body["rejected"])
        result.errors.extend(body["errors"])
        resend = body.get("resend_from_line")
        if resp.status_code == 200 or resend is None:
            result.lines = start + int(body["lines"])
            break
        if result.attempts >= MAX_UPLOAD_ATTEMPTS:
            raise RuntimeError(f"bulk upload still failing after {result.attempts} attempts")
        start += int(resend) - 1
        await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
    result.seconds = time.monotonic() - began
    return result


async def log_end_offsets(
    kafka: KafkaSettings, topic: str, timeout: float = 30.0
) -> dict[int, int]:
    """The true end offset of every partition of a topic.

    Tansu answers ListOffsets(latest) with the base offset of the last record batch + 1, short of
    the end whenever that batch holds several records; the high watermark in its Fetch answers is
    right. So: seek a fresh consumer just before the reported end, fetch once, read the watermark.
    """
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        listed = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(int(listed[tp]) - 1, 0))
        deadline = time.monotonic() + timeout
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: no fetch answer in {timeout:.0f}s")
            await consumer.getmany(timeout_ms=100, max_records=1)
        return {tp.partition: int(consumer.highwater(tp)) for tp in tps}
    finally:
        await consumer.stop()


@dataclass
class Progress:
    lag: int
    outbox: int
    due: int
    watermark: datetime | None
    population_at: datetime | None = None  # the instant the current population is "as of"
    population_swept: bool = False  # every customer re-evaluated against it
    model_at: datetime | None = None  # the instant the current churn model's data is "as of"
    stale: int = 0  # customers not yet re-evaluated with the current rule set and churn model

    @property
    def population_current(self) -> bool:
        """The population is as of the watermark and every customer was swept against it."""
        return self.watermark is None or (
            self.population_at == self.watermark and self.population_swept
        )

    @property
    def model_current(self) -> bool:
        """The churn model was fitted at the watermark and every customer scored with it."""
        return self.watermark is None or (self.model_at == self.watermark and self.stale == 0)

    @property
    def drained(self) -> bool:
        return (
            self.lag == 0
            and self.outbox == 0
            and self.due == 0
            and self.population_current
            and self.model_current
        )


async def progress(engine: AsyncEngine, kafka: KafkaSettings, topic: str) -> Progress:
    end = await log_end_offsets(kafka, topic)
    async with engine.connect() as conn:
        stored = {
            int(r.partition): int(r.next_offset)
            for r in await conn.execute(
                select(consumer_offsets.c.partition, consumer_offsets.c.next_offset).where(
                    consumer_offsets.c.group_id == GROUP_ID, consumer_offsets.c.topic == topic
                )
            )
        }
        pending = await backlog(await raw_connection(conn), CLASSIFIER_PRODUCER)
        watermark = await read_watermark(conn)
        model = (
            await conn.execute(
                select(churn_models.c.version, churn_models.c.data_as_of).where(
                    churn_models.c.is_current
                )
            )
        ).first()
        version = compose_version(RULES_VERSION, model.version if model is not None else None)
        stale = int(
            await conn.scalar(
                select(func.count())
                .select_from(customers)
                .where(customers.c.rule_set_version != version)
            )
            or 0
        )
        due = 0
        if watermark is not None:
            # Reviews the scheduler still owes at the replayed "now" (time-driven changes).
            due = int(
                await conn.scalar(
                    select(func.count())
                    .select_from(customers)
                    .where(customers.c.next_review_at <= watermark)
                )
                or 0
            )
    lag = sum(max(e - stored.get(p, 0), 0) for p, e in end.items())
    stats, sweep = await load_with_progress(engine)
    return Progress(
        lag,
        int(pending or 0),
        due,
        watermark,
        stats.computed_at if stats is not None else None,
        sweep is not None and sweep.done,
        model.data_as_of if model is not None else None,
        stale,
    )


async def wait_drained(
    engine: AsyncEngine, kafka: KafkaSettings, topic: str, timeout: float
) -> tuple[bool, float, Progress]:
    """Wait until every record is applied, every review fired, the population statistics and
    the churn model are as of the final watermark with every customer re-evaluated against
    them, and every change relayed.

    Two consecutive quiet polls are required, because a review transaction that is about to
    commit is invisible for an instant between "nothing due" and "outbox filled".
    """
    began = time.monotonic()
    quiet = 0
    while True:
        state = await progress(engine, kafka, topic)
        quiet = quiet + 1 if state.drained else 0
        if quiet >= 2:
            return True, time.monotonic() - began, state
        if time.monotonic() - began > timeout:
            return False, time.monotonic() - began, state
        await asyncio.sleep(0.25)


@dataclass
class Snapshot:
    totals: dict[str, tuple[int, Decimal]]
    value_tier: dict[str, str]  # customers.value_tier
    tier_labels: dict[str, str]  # customer_labels, dimension value_tier
    labels_digest: str  # every (customer, dimension, label, since)
    labels_rows: int
    labels_per_dimension: dict[str, int]  # rows in customer_labels (the label history's head)
    state_per_dimension: dict[str, int]  # customers whose state holds a label on the dimension
    changes: int
    tier_change_ids: set[str]  # change ids of value_tier changes in the history
    ledger: int
    watermark: datetime | None


async def snapshot(engine: AsyncEngine) -> Snapshot:
    totals: dict[str, tuple[int, Decimal]] = {}
    value_tier: dict[str, str] = {}
    tier_labels: dict[str, str] = {}
    per_dimension: dict[str, int] = {}
    digest = hashlib.sha256()
    rows = 0
    async with engine.connect() as conn:
        result = await conn.stream(
            select(
                customers.c.customer_id,
                customers.c.purchases_lifetime,
                customers.c.net_spend_lifetime,
                customers.c.value_tier,
            ).execution_options(yield_per=5_000)
        )
        async for r in result:
            totals[r.customer_id] = (int(r.purchases_lifetime), Decimal(r.net_spend_lifetime))
            value_tier[r.customer_id] = r.value_tier
        labels = await conn.stream(
            select(customer_labels)
            .order_by(customer_labels.c.customer_id, customer_labels.c.dimension)
            .execution_options(yield_per=5_000)
        )
        async for r in labels:
            rows += 1
            per_dimension[r.dimension] = per_dimension.get(r.dimension, 0) + 1
            digest.update(
                f"{r.customer_id}\x1f{r.dimension}\x1f{r.label}\x1f{r.since.isoformat()}\n".encode()
            )
            if r.dimension == "value_tier":
                tier_labels[r.customer_id] = r.label
        # The state holds every dimension's label (the API shows it); a first assignment to a
        # dimension's default label need not be a recorded change.
        state_per_dimension = {
            str(r.d): int(r.n)
            for r in await conn.execute(
                text(
                    "SELECT d, count(*) AS n FROM customers, jsonb_object_keys(dimensions) AS d "
                    "GROUP BY d"
                )
            )
        }
        changes = await conn.scalar(select(func.count()).select_from(classification_changes))
        tier_change_ids = set(
            (
                await conn.scalars(
                    select(classification_changes.c.change_id).where(
                        classification_changes.c.dimension == "value_tier"
                    )
                )
            ).all()
        )
        ledger = await conn.scalar(select(func.count()).select_from(processed_events))
        watermark = await read_watermark(conn)
    return Snapshot(
        totals,
        value_tier,
        tier_labels,
        digest.hexdigest(),
        rows,
        per_dimension,
        state_per_dimension,
        int(changes or 0),
        tier_change_ids,
        int(ledger or 0),
        watermark,
    )


@dataclass
class TierStream:
    records: int = 0
    ids: set[str] = field(default_factory=set)  # distinct CloudEvents ids (= change ids)
    last: dict[str, str] = field(default_factory=dict)
    broken_chains: list[str] = field(default_factory=list)  # `from` != the previous `to`
    malformed: int = 0  # wrong ce_type, or key != data.customer_id


async def read_tier_changed(kafka: KafkaSettings, topic: str, timeout: float) -> TierStream:
    """The whole topic from the beginning, in batches; per customer only the last `to` is kept."""
    ends = await log_end_offsets(kafka, topic)
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    out = TierStream()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        remaining = {tp for tp in tps if ends[tp.partition] > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to its end in {timeout:.0f}s")
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=5_000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < ends[tp.partition]:
                        _take(out, r)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp.partition]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


def _take(out: TierStream, record: Any) -> None:
    out.records += 1
    headers = {k: bytes(v) for k, v in record.headers}
    event_id = headers.get("ce_id", b"").decode()
    if event_id in out.ids:
        return  # an at-least-once redelivery: consumers dedupe by id
    out.ids.add(event_id)
    customer = record.key.decode() if record.key is not None else ""
    data = orjson.loads(record.value)
    if headers.get("ce_type") != TIER_CHANGED_TYPE or data.get("customer_id") != customer:
        out.malformed += 1
    if data.get("from") != out.last.get(customer):
        out.broken_chains.append(customer)
    out.last[customer] = data["to"]


async def api_sample(
    http: httpx.AsyncClient, url: str, ids: Sequence[str]
) -> dict[str, tuple[int, Decimal, str] | None]:
    """(purchases, spend, value tier) per customer as GET /v1/customers/{id} answers."""
    out: dict[str, tuple[int, Decimal, str] | None] = {}
    for cid in ids:
        resp = await http.get(f"{url}/v1/customers/{cid}")
        if resp.status_code != 200:
            out[cid] = None
            continue
        body = resp.json()
        out[cid] = (
            int(body["features"]["purchases_lifetime"]),
            Decimal(body["features"]["net_spend_lifetime"]),
            body["dimensions"].get("value_tier", {}).get("label", ""),
        )
    return out


@dataclass(frozen=True)
class Fidelity:
    """How far the replay clock ran ahead of the purchases it applied."""

    events_with_changes: int  # purchase events that changed at least one label
    late_events: int  # ... of which classified at a "now" later than their own time
    late_first_purchases: int  # customers first labelled after their first purchase's time
    max_lag_days: float
    time_changes: int  # changes caused by time alone (review deadlines)


async def fidelity(engine: AsyncEngine, rows: Sequence[Row]) -> Fidelity:
    # A change's effective_at is the "now" its event was classified at; in a faithful replay
    # that is the event's own time.
    times = {f"{SOURCE}-{r.line}": _event_time(r) for r in rows}
    late = late_first = changed = 0
    max_lag = 0.0
    async with engine.connect() as conn:
        result = await conn.stream(
            select(
                classification_changes.c.cause,
                func.min(classification_changes.c.effective_at).label("at"),
                func.bool_or(classification_changes.c.from_label.is_(None)).label("first"),
            )
            .where(classification_changes.c.cause.like(f"event:{SOURCE}/%"))
            .group_by(classification_changes.c.cause)
            .execution_options(yield_per=5_000)
        )
        async for r in result:
            changed += 1
            lag = (r.at - times[r.cause.split("/", 1)[1]]).total_seconds() / 86_400
            if lag > 0:
                late += 1
                late_first += bool(r.first)
                max_lag = max(max_lag, lag)
        time_changes = await conn.scalar(
            select(func.count())
            .select_from(classification_changes)
            .where(classification_changes.c.cause.like("time:%"))
        )
    return Fidelity(changed, late, late_first, max_lag, int(time_changes or 0))


def _event_time(row: Row) -> datetime:
    return datetime.strptime(row.day, "%Y%m%d").replace(hour=12, tzinfo=UTC)


# Checks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def _examples(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return f"{shown}, ... ({len(items)} in all)" if len(items) > n else shown


def _mismatches(want: dict[str, Any], got: dict[str, Any], what: Callable[[Any], Any]) -> list[str]:
    return [
        f"{c}: log {what(want[c])} != pipeline {what(got[c])}"
        for c in sorted(want)
        if c in got and what(want[c]) != what(got[c])
    ]


def upload_checks(label: str, up: Upload, n: int, *, resend: bool) -> list[Check]:
    want_dup = n if resend else 0
    ok = (
        up.lines == n
        and up.accepted == n
        and up.rejected == 0
        # A 503 retry legitimately reports the re-sent part of the failed chunk as duplicates.
        and (up.duplicates == want_dup or (not resend and up.attempts > 1))
    )
    errors = f"; first errors: {orjson.dumps(up.errors[:3]).decode()}" if up.errors else ""
    return [
        Check(
            f"{label}: bulk answer",
            ok,
            f"{up.lines:,} lines, {up.accepted:,} accepted, {up.duplicates:,} duplicates, "
            f"{up.rejected:,} rejected in {up.attempts} request(s) "
            f"(expected {n:,} accepted, {want_dup:,} duplicates, 0 rejected){errors}",
        )
    ]


def state_checks(
    expected: dict[str, tuple[int, Decimal]], snap: Snapshot, tiers: TierStream, events: int
) -> list[Check]:
    got = snap.totals
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    count_diff = _mismatches(expected, got, lambda t: t[0])
    spend_diff = _mismatches(expected, got, lambda t: t[1])
    tier_vs_labels = [
        f"{c}: customers.value_tier {snap.value_tier[c]!r} != customer_labels "
        f"{snap.tier_labels.get(c)!r}"
        for c in sorted(snap.value_tier)
        if snap.value_tier[c] != snap.tier_labels.get(c)
    ]
    no_change = sorted(set(got) - set(tiers.last))
    last_diff = [
        f"{c}: last tier-changed {tiers.last[c]!r} != current {snap.value_tier[c]!r}"
        for c in sorted(tiers.last)
        if c in snap.value_tier and tiers.last[c] != snap.value_tier[c]
    ]
    strangers = sorted(set(tiers.last) - set(got))
    total_spend = sum((t[1] for t in got.values()), Decimal(0))
    total_count = sum(t[0] for t in got.values())
    dimensions = load_rules(RULES_FILE).dimensions
    incomplete = {
        d.name: snap.state_per_dimension.get(d.name, 0)
        for d in dimensions
        if snap.state_per_dimension.get(d.name, 0) != len(got)
    }
    return [
        Check(
            "every customer present",
            not missing and not extra,
            f"{len(got):,} customers in the `customers` table, {len(expected):,} in the log"
            + (f"; missing: {_examples(missing)}" if missing else "")
            + (f"; not in the log: {_examples(extra)}" if extra else ""),
        ),
        Check(
            "purchases_lifetime equal for every customer",
            not count_diff and not missing,
            f"{total_count:,} purchases in total"
            + (f"; differ: {_examples(count_diff)}" if count_diff else ""),
        ),
        Check(
            "net_spend_lifetime equal for every customer (Decimal)",
            not spend_diff and not missing,
            f"{total_spend:,} USD in total"
            + (f"; differ: {_examples(spend_diff)}" if spend_diff else ""),
        ),
        Check(
            "event-id ledger holds every event once",
            snap.ledger == events,
            f"{snap.ledger:,} rows in `processed_events`, {events:,} events sent",
        ),
        Check(
            "value tier: `customers` column = `customer_labels`",
            not tier_vs_labels,
            "agree for every customer" if not tier_vs_labels else _examples(tier_vs_labels),
        ),
        Check(
            "every dimension labels every customer",
            not incomplete and bool(dimensions),
            f"{len(dimensions)} dimensions x {len(got):,} customers"
            + (f"; incomplete: {incomplete}" if incomplete else ""),
        ),
        Check(
            "last `customer-tier-changed` record = current value tier, for every customer",
            not last_diff and not no_change and not strangers,
            f"{tiers.records:,} records ({len(tiers.ids):,} distinct ids) for "
            f"{len(tiers.last):,} customers"
            + (f"; differ: {_examples(last_diff)}" if last_diff else "")
            + (f"; customers without a record: {_examples(no_change)}" if no_change else "")
            + (f"; records of unknown customers: {_examples(strangers)}" if strangers else ""),
        ),
        Check(
            "`customer-tier-changed` = the value-tier history (same change ids)",
            tiers.ids == snap.tier_change_ids,
            f"{len(snap.tier_change_ids):,} value-tier changes recorded, "
            f"{len(tiers.ids):,} distinct ids published"
            + (
                f"; unpublished: {_examples(sorted(snap.tier_change_ids - tiers.ids))}"
                if snap.tier_change_ids - tiers.ids
                else ""
            )
            + (
                f"; not in the history: {_examples(sorted(tiers.ids - snap.tier_change_ids))}"
                if tiers.ids - snap.tier_change_ids
                else ""
            ),
        ),
        Check(
            "`customer-tier-changed` chains: each `from` = the previous `to`, well-formed",
            not tiers.broken_chains and tiers.malformed == 0,
            f"{len(tiers.broken_chains)} broken, {tiers.malformed} malformed"
            + (f"; e.g. {_examples(tiers.broken_chains)}" if tiers.broken_chains else ""),
        ),
    ]


@dataclass
class PopulationReport:
    stats: PopulationStats | None
    customers: int  # customers checked
    unscored: dict[str, int]  # dimension -> customers still `unscored`
    differ: list[str]  # (customer, dimension) whose label is not the final population's
    population_changes: int  # changes caused by a new population (cause population:<version>)


async def population_report(engine: AsyncEngine) -> PopulationReport:
    """Every customer's RFM and ABC labels against the labels the final population statistics
    give at the final watermark (or at the customer's own latest instant, if its partition ran
    ahead of the slowest one), recomputed here with the classifier's own rules."""
    rules = load_rules(RULES_FILE)
    dims = population_dimensions(rules)
    stats, _ = await load_with_progress(engine)
    unscored = {d.name: 0 for d in dims}
    differ: list[str] = []
    checked = 0
    async with engine.connect() as conn:
        watermark = await read_watermark(conn)
        result = await conn.stream(select(customers).execution_options(yield_per=2_000))
        async for row in result:
            state = state_from_row(row._mapping)
            checked += 1
            want: dict[str, str] = {}
            if stats is not None and watermark is not None:
                at = judge_at(state, watermark)  # a customer ahead of it: its own time
                variables, _, context = variables_at(state, rules, at, Outside(stats))
                want = {d.name: decide(d, variables, context).label for d in dims}
            for d in dims:
                got = state.dimensions[d.name].label if d.name in state.dimensions else None
                if got in (None, d.default):
                    unscored[d.name] += 1
                if got != want.get(d.name):
                    differ.append(f"{state.customer_id}/{d.name}: {got!r} != {want.get(d.name)!r}")
        population_changes = await conn.scalar(
            select(func.count())
            .select_from(classification_changes)
            .where(classification_changes.c.cause.like("population:%"))
        )
    return PopulationReport(stats, checked, unscored, differ, int(population_changes or 0))


def population_check(report: PopulationReport, watermark: datetime | None) -> Check:
    stats = report.stats
    ok = (
        stats is not None
        and stats.computed_at == watermark
        and not any(report.unscored.values())
        and not report.differ
    )
    if stats is None:
        return Check("RFM and ABC scored against the final population", False, "no population")
    unscored = ", ".join(f"{d} {n:,}" for d, n in report.unscored.items())
    return Check(
        "RFM and ABC scored against the final population, for every customer",
        ok,
        f"population version {stats.version} as of {stats.computed_at} (watermark {watermark}) "
        f"over {stats.customers:,} customers; {report.customers:,} customers checked, unscored: "
        f"{unscored}; {len(report.differ):,} labels differ from the final population's"
        + (f" ({_examples(report.differ)})" if report.differ else ""),
    )


def sample_ids(expected: dict[str, tuple[int, Decimal]]) -> list[str]:
    """A fixed random sample plus the extremes (top spender, most purchases, zero spend)."""
    ids = sorted(expected)
    picked = set(random.Random(SAMPLE_SEED).sample(ids, min(SAMPLE_SIZE, len(ids))))
    if ids:
        picked.add(max(ids, key=lambda c: expected[c][1]))
        picked.add(max(ids, key=lambda c: expected[c][0]))
        zero = [c for c in ids if expected[c][1] == 0]
        if zero:
            picked.add(zero[0])
    return sorted(picked)


def api_check(
    expected: dict[str, tuple[int, Decimal]],
    snap: Snapshot,
    answers: dict[str, tuple[int, Decimal, str] | None],
) -> Check:
    wrong = []
    for cid, got in answers.items():
        want = (*expected[cid], snap.value_tier.get(cid))
        if got != want:
            wrong.append(f"{cid}: API {got} != log/DB {want}")
    return Check(
        "GET /v1/customers/{id} spot check (purchases, spend, value tier)",
        not wrong,
        f"{len(answers)} customers checked"
        + (f"; differ: {_examples(wrong)}" if wrong else ", all equal"),
    )


# The run --------------------------------------------------------------------------------------


@dataclass
class Result:
    facts: LogFacts
    checks: list[Check] = field(default_factory=list)
    timings: list[tuple[str, str]] = field(default_factory=list)
    distribution: dict[str, dict[str, int]] = field(default_factory=dict)
    rule_set_version: str = ""
    tier_records: int = 0
    changes: int = 0
    watermark: datetime | None = None
    fidelity: Fidelity | None = None
    population: PopulationReport | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


async def replay(stack: Stack, rows: Sequence[Row], result: Result, timeout: float) -> None:
    expected = expected_totals(rows)
    n = len(rows)
    topics = stack.topics
    engine = create_engine(stack.database)
    ingest, classifier = stack.url("ingest"), stack.url("classifier")
    try:
        async with (
            httpx.AsyncClient(
                timeout=httpx.Timeout(timeout, connect=10),
                headers={"authorization": f"Bearer {stack.api_key}"},
            ) as http,
        ):
            rules = (await http.get(classifier + "/v1/rules")).json()
            result.rule_set_version = str(rules["version"])

            # Pass 1: the whole log, oldest first.
            first = await upload(http, ingest, stack.api_key, rows)
            drained, drain_s, state = await wait_drained(
                engine, stack.kafka, topics.customer_events, timeout
            )
            total_s = first.seconds + drain_s
            result.timings += [
                (
                    "ingest: NDJSON upload",
                    f"{first.seconds:.1f} s, {n / first.seconds:,.0f} lines/s",
                ),
                ("classifier: drain after the upload ended", f"{drain_s:.1f} s"),
                (
                    "end to end (upload start to everything applied and relayed)",
                    f"{total_s:.1f} s, {n / total_s:,.0f} events/s",
                ),
            ]
            result.checks += upload_checks("pass 1", first, n, resend=False)
            result.checks.append(
                Check(
                    "pass 1: classifier drained",
                    drained,
                    f"in {drain_s:.1f} s after the upload; lag {state.lag}, outbox {state.outbox}, "
                    f"reviews due {state.due}, watermark {state.watermark}, churn model as of "
                    f"{state.model_at}, customers not yet scored by it {state.stale}",
                )
            )
            before = await snapshot(engine)
            tiers_before = await read_tier_changed(stack.kafka, topics.tier_changed, timeout)
            result.checks += state_checks(expected, before, tiers_before, n)
            dlq = sum((await log_end_offsets(stack.kafka, topics.classifier_dlq)).values())
            result.checks.append(
                Check("no dead letters", dlq == 0, f"{dlq} records on {topics.classifier_dlq}")
            )
            answers = await api_sample(http, classifier, sample_ids(expected))
            result.checks.append(api_check(expected, before, answers))
            result.population = await population_report(engine)
            result.checks.append(population_check(result.population, before.watermark))

            # Pass 2: the same log again must change nothing.
            second = await upload(http, ingest, stack.api_key, rows)
            drained2, drain2_s, state2 = await wait_drained(
                engine, stack.kafka, topics.customer_events, timeout
            )
            result.timings += [
                (
                    "resend: NDJSON upload (all duplicates)",
                    f"{second.seconds:.1f} s, {n / second.seconds:,.0f} lines/s",
                ),
                ("resend: classifier drain after the upload ended", f"{drain2_s:.1f} s"),
            ]
            result.checks += upload_checks("resend", second, n, resend=True)
            sent = sum((await log_end_offsets(stack.kafka, topics.customer_events)).values())
            result.checks.append(
                Check(
                    "resend: classifier consumed the resent records",
                    drained2 and sent == first.accepted + second.accepted,
                    f"{sent:,} records on {topics.customer_events}, all consumed: {drained2} "
                    f"(lag {state2.lag}, outbox {state2.outbox}, reviews due {state2.due})",
                )
            )
            after = await snapshot(engine)
            tiers_after = await read_tier_changed(stack.kafka, topics.tier_changed, timeout)
            same_totals = after.totals == before.totals
            result.checks += [
                Check(
                    "resend: totals unchanged",
                    same_totals and after.totals == expected,
                    "identical to pass 1 and to the log" if same_totals else "totals changed",
                ),
                Check(
                    "resend: labels unchanged (every dimension, label and since)",
                    after.labels_digest == before.labels_digest,
                    f"{after.labels_rows:,} label rows, sha256 {after.labels_digest[:16]}... "
                    f"(pass 1: {before.labels_rows:,}, {before.labels_digest[:16]}...)",
                ),
                Check(
                    "resend: history and ledger unchanged",
                    after.changes == before.changes and after.ledger == before.ledger,
                    f"{after.changes:,} classification changes (pass 1: {before.changes:,}), "
                    f"{after.ledger:,} ledger rows (pass 1: {before.ledger:,})",
                ),
                Check(
                    "resend: `customer-tier-changed` unchanged",
                    tiers_after.records == tiers_before.records
                    and tiers_after.last == tiers_before.last,
                    f"{tiers_after.records:,} records (pass 1: {tiers_before.records:,})",
                ),
            ]
            result.fidelity = await fidelity(engine, rows)
            result.distribution = (await http.get(classifier + "/v1/stats/distribution")).json()
            result.tier_records = tiers_after.records
            result.changes = after.changes
            result.watermark = after.watermark
    finally:
        await engine.dispose()


def machine() -> str:
    model = ""
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores{f' ({model})' if model else ''}, {memory:.1f} GiB memory, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def render(result: Result, *, command: str, log_path: Path, wall_s: float) -> str:
    f = result.facts
    verdict = "PASS" if result.passed else "FAIL"
    lines = [
        "# CDNOW replay",
        "",
        "Generated by `scripts/replay_cdnow.py`; do not edit by hand.",
        "",
        "A real public transaction log, the CDNOW master log (Fader & Hardie), replayed",
        "through the ingest API (`POST /v1/events:bulk`) into a classifier running with",
        "`CLASSIFIER_CLOCK=event_time`, then sent a second time. Every expected figure is",
        "computed from the file with `Decimal`, independently of the pipeline.",
        "",
        "## What was run",
        "",
        f"- Command: `{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {wall_s:.0f} s in all)",
        f"- Machine: {machine()}",
        f"- Rule set: `{result.rule_set_version}` (`config/classifier.yaml`)",
        f"- Log: `{log_path.name}` from the `lifetimes` package: {f.purchases:,} purchases by "
        f"{f.customers:,} customers, {f.first_day} to {f.last_day}, {f.spend:,} USD in all, "
        f"{f.cds:,} CDs; {f.zero_amount_rows:,} rows of 0.00 USD; {f.same_day_rows:,} rows share "
        "a customer and a day with another row",
        "- Events: one `purchase` per row, oldest day first; `id` = `order_id` = "
        f"`{SOURCE}-<line number>`, source `{SOURCE}`, subject = the customer id as written in "
        "the log, `time` = the day at 12:00 UTC, amount in USD as a decimal string (CD counts "
        "are not part of the contract and are not sent)",
        f"- Servers: embedded PostgreSQL and Tansu in a temp dir, topics with {PARTITIONS} "
        "partitions, ingest and classifier as separate processes with their default settings",
        "",
        f"## Verification: {verdict}",
        "",
        "| check | result | details |",
        "|---|---|---|",
    ]
    for c in result.checks:
        detail = c.detail.replace("|", "\\|")
        lines.append(f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {detail} |")
    lines += [
        "",
        f"{result.changes:,} classification changes recorded, {result.tier_records:,} records on "
        f"`customer-tier-changed`; final event-time watermark {result.watermark}.",
        "",
        *_fidelity_section(result.fidelity),
        *_population_section(result.population),
        "## Timings",
        "",
        "| phase | time |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in result.timings),
        "",
        "## Labels after the replay",
        "",
        f'`GET /v1/stats/distribution` at the end of the replay: the replayed "now" is the '
        f"slowest partition's last event time, {result.watermark}, so time-driven labels such "
        "as `lifecycle` are as of that instant.",
        "",
        "| dimension | label | customers | share |",
        "|---|---|---:|---:|",
    ]
    for dimension, counts in result.distribution.items():
        total = sum(counts.values()) or 1
        for label, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"| {dimension} | {label} | {count:,} | {100 * count / total:.1f} % |")
    return "\n".join(lines) + "\n"


def _fidelity_section(fid: Fidelity | None) -> list[str]:
    if fid is None:
        return []
    return [
        "## Replay clock (diagnostic, not one of the checks above)",
        "",
        f"Of the {fid.events_with_changes:,} purchase events that changed a label, "
        f'**{fid.late_events:,}** were classified at a replayed "now" later than their own '
        f"time (by up to {fid.max_lag_days:,.0f} days), {fid.late_first_purchases:,} of them "
        "customers' first purchases; "
        f"{fid.time_changes:,} changes were caused by time alone. In a faithful replay the first "
        "number is 0: each event is judged at its own time and the review scheduler fires "
        "deadlines only up to the slowest partition's watermark, so no deadline fires before a "
        "customer's earlier purchases are read.",
        "",
    ]


def _population_section(report: PopulationReport | None) -> list[str]:
    if report is None or report.stats is None:
        return []
    s = report.stats

    def cuts(values: tuple[float, ...]) -> str:
        return " / ".join(f"{v:,.2f}" for v in values)

    return [
        "## Population statistics (RFM, ABC)",
        "",
        "Rebuilt from KLL sketches whenever the replay watermark advanced by "
        "`CLASSIFIER_POPULATION_REFRESH_EVENT_DAYS` (default 7 days) and once more when it "
        "stopped moving; after each version the customers whose RFM or ABC label it changes "
        "are re-classified (cause `population:<version>`).",
        "",
        f"- Final version {s.version}, as of {s.computed_at}, over {s.customers:,} customers "
        "who bought",
        f"- Recency quintile cuts (days since the last purchase): {cuts(s.recency_cuts)}",
        f"- Frequency quintile cuts (orders in the rolling 12 months): {cuts(s.frequency_cuts)}",
        f"- Monetary quintile cuts (USD in the rolling 12 months): {cuts(s.monetary_cuts)}",
        f"- ABC: A from {s.abc_a_min_spend:,.2f} USD, B from {s.abc_b_min_spend:,.2f} USD "
        "of rolling spend",
        f"- {report.population_changes:,} label changes caused by a new population",
        "",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--limit", type=int, help="replay only the first N customers' rows")
    parser.add_argument(
        "--report",
        type=Path,
        help=f"where to write the report (default: {DOC.relative_to(ROOT)} for a full run, "
        "none with --limit)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="longest wait for each phase, in seconds"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (data and logs)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    log_path = locate_log()
    rows = read_log(log_path, args.limit)
    # Sorted by day; the stable sort keeps file order (line number) within a day.
    rows.sort(key=lambda r: r.day)
    result = Result(log_facts(rows))
    print(
        f"replaying {result.facts.purchases:,} purchases of {result.facts.customers:,} customers "
        f"from {log_path}",
        flush=True,
    )
    stack = Stack(keep=args.keep)
    try:
        stack.start()
        asyncio.run(replay(stack, rows, result, args.timeout))
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        if not result.passed:
            print(stack.log_tails(), file=sys.stderr)
        stack.close()
    command = ".venv/bin/python scripts/replay_cdnow.py" + (
        f" --limit {args.limit}" if args.limit is not None else ""
    )
    report = render(result, command=command, log_path=log_path, wall_s=time.monotonic() - began)
    print(report)
    target: Path | None = args.report or (DOC if args.limit is None else None)
    if target is not None:
        target.write_text(report)
        print(f"wrote {target}")
    return 0 if result.passed else 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C, so the servers are stopped in order.
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
