"""The fault scenarios' world: a fresh database and topics, the ingest and several classifier
processes in one consumer group (tests/support.ServiceProcess), optionally notifier processes in
one group delivering to a webhook receiver that records every delivery (tests/chaos/care.py),
events sent through the ingest (only those it acknowledged count), and the final judgement —
the oracle's expectations against PostgreSQL, the change topics through the log checker, stored
offsets that never went backwards, the care actions the receiver accepted — as one
ScenarioResult, also written to var/chaos/<run>.json under `make chaos`."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from aiokafka import TopicPartition
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.access import api_key, bearer
from tests.chaos.care import implied_ids, judge_actions, write_playbook
from tests.chaos.log_checker import LoggedChange, check, from_records
from tests.chaos.oracle import Expected, care_actions, fold, is_subsequence
from tests.notifier_support import ThreadedReceiver, WebhookReceiver, webhooks_env
from tests.support import (
    ROOT,
    Servers,
    ServiceProcess,
    isolated_topics,
    read_to_end,
    unique,
)
from tierflow_classifier.adapters.rules_file import load_rules
from tierflow_classifier.domain.classify import silent_first
from tierflow_common.contract import EmittedEvent
from tierflow_common.db.engine import create_engine
from tierflow_common.db.migrate import upgrade_head_async
from tierflow_common.db.tables import care_deliveries, consumer_offsets, customers, outbox
from tierflow_common.dead_letters import dead_letters
from tierflow_common.kafka import ensure_topics
from tierflow_common.settings import DatabaseSettings, KafkaSettings, TopicSettings
from tierflow_common.topic_reader import log_ends, reader
from tierflow_notifier.domain.playbooks import Playbook

RULES = load_rules(ROOT / "config" / "classifier.yaml")
# Dimensions whose first assignment to their default label is not published as a change.
SILENT_DEFAULTS = {d.name: d.default for d in RULES.dimensions if silent_first(d, d.default)}
PARTITIONS = 6
# TIERFLOW_CHAOS_SERVICES_FROM=<checkout>: the services (and their rules file) run from another
# checkout's source, e.g. a worktree of the commit before a fix, to show that a scenario fails
# there; the judging (migrations, oracle, checks) stays this tree's. Unset: this tree.
SERVICES_ROOT = Path(os.environ.get("TIERFLOW_CHAOS_SERVICES_FROM") or ROOT)


def services_from() -> dict[str, str]:
    """The environment that makes a service process import SERVICES_ROOT's packages (ahead of
    the venv's editable installs of this tree)."""
    if SERVICES_ROOT == ROOT:
        return {}
    sources = [SERVICES_ROOT / "libs" / "common" / "src"]
    sources += sorted((SERVICES_ROOT / "services").glob("*/src"))
    return {"PYTHONPATH": os.pathsep.join(str(p) for p in sources)}


# Every decrease of a stored offset, noted in the writer's own transaction (so a write the
# fence refused, rolled back, leaves no note). Observation only: nothing reads it but the test.
REGRESSIONS = [
    "CREATE TABLE chaos_offset_regressions (topic text, partition int, old bigint, new bigint)",
    """CREATE FUNCTION chaos_note_regression() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         INSERT INTO chaos_offset_regressions
           VALUES (NEW.topic, NEW.partition, OLD.next_offset, NEW.next_offset);
         RETURN NEW;
       END $$""",
    """CREATE TRIGGER chaos_offset_regressions BEFORE UPDATE ON consumer_offsets FOR EACH ROW
       WHEN (NEW.next_offset < OLD.next_offset) EXECUTE FUNCTION chaos_note_regression()""",
]


@dataclass
class World:
    database: DatabaseSettings
    topics: TopicSettings
    kafka: KafkaSettings
    engine: AsyncEngine
    env: dict[str, str]
    group: str
    key: str
    log_dir: Path
    ingest: ServiceProcess
    classifiers: list[ServiceProcess] = field(default_factory=list)
    acknowledged: list[EmittedEvent] = field(default_factory=list)
    # The notifiers (one group) and what they deliver to; unset in a world without them.
    notifier_env: dict[str, str] = field(default_factory=dict)
    notifier_group: str = ""
    notifiers: list[ServiceProcess] = field(default_factory=list)
    receiver: WebhookReceiver | None = None
    playbook: Playbook | None = None

    def classifier(self) -> ServiceProcess:
        svc = ServiceProcess("classifier", self.env, self.log_dir)
        self.classifiers.append(svc)
        return svc

    def notifier(self) -> ServiceProcess:
        svc = ServiceProcess("notifier", self.notifier_env, self.log_dir)
        self.notifiers.append(svc)
        return svc

    @property
    def processes(self) -> list[ServiceProcess]:
        """The consumers (classifiers, then notifiers)."""
        return [*self.classifiers, *self.notifiers]

    def owner_of(self, svc: ServiceProcess) -> str:
        """The name a process's claims leave on the stored-offset rows."""
        assert svc.proc is not None
        return f"{socket.gethostname()}/{svc.proc.pid}"


@contextmanager
def paused(*services: ServiceProcess) -> Iterator[None]:
    """The services' processes stopped (SIGSTOP) for the block, then woken (SIGCONT) whatever
    the block did: they keep their sockets and state, and answer nothing meanwhile."""
    procs = [svc.proc for svc in services if svc.proc is not None]
    for proc in procs:
        proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)


@asynccontextmanager
async def world(
    servers: Servers,
    log_dir: Path,
    *,
    classifiers: int,
    env: dict[str, str] | None = None,
    notifiers: int = 0,
    notifier_env: Mapping[str, str] | None = None,
    receiver: WebhookReceiver | None = None,
) -> AsyncIterator[World]:
    """The ingest and `classifiers` classifier processes, ready, on a fresh database/topics;
    with `notifiers` notifier processes in one group, on the scenarios' playbook
    (tests/chaos/care.py), delivering to `receiver` (a recording WebhookReceiver by default),
    served on its own thread (the test's loop may block)."""
    database = DatabaseSettings(database_url=servers.create_database(unique("chaos")))
    await upgrade_head_async(database)
    kafka = KafkaSettings(bootstrap_servers=servers.bootstrap_servers)
    topics = isolated_topics(partitions=PARTITIONS)
    await ensure_topics(kafka, topics)
    engine = create_engine(database)
    async with engine.begin() as conn:
        for statement in REGRESSIONS:
            await conn.execute(text(statement))
    group = unique("classifier")
    common = {
        "DATABASE_URL": database.database_url.get_secret_value(),
        "KAFKA_BOOTSTRAP_SERVERS": servers.bootstrap_servers,
        **topics.as_env(),
        **services_from(),
    }
    classifier_env = {
        **common,
        "CLASSIFIER_RULES_FILE": str(SERVICES_ROOT / "config" / "classifier.yaml"),
        "CLASSIFIER_GROUP_ID": group,
        "CLASSIFIER_CLOCK": "wall",
        # No population rebuild or churn fit during a scenario: CPU for the faults, and no
        # population-driven changes (the oracle judges the value tier by the events alone).
        "CLASSIFIER_POPULATION_REFRESH_S": "86400",
        "CLASSIFIER_CHURN_FIT_INTERVAL_S": "86400",
        # Small batches: many transactions, so kills and pauses fall between and inside them.
        "CONSUMER_MAX_BATCH": "50",
        **(env or {}),
    }
    key = await api_key(database, name="chaos")
    w = World(
        database,
        topics,
        kafka,
        engine,
        classifier_env,
        group,
        key,
        log_dir,
        ServiceProcess("ingest", common, log_dir),
    )
    with ExitStack() as stack:
        if notifiers:
            w.receiver = stack.enter_context(ThreadedReceiver(receiver or WebhookReceiver()))
            playbook_file, w.playbook = write_playbook(log_dir)
            w.notifier_group = unique("notifier")
            w.notifier_env = {
                **common,
                "NOTIFIER_PLAYBOOKS_FILE": str(playbook_file),
                "NOTIFIER_GROUP_ID": w.notifier_group,
                "NOTIFIER_EVENTS_GROUP_ID": unique("notifier_events"),
                "NOTIFIER_WEBHOOKS": webhooks_env(w.receiver.endpoint("chaos")),
                "NOTIFIER_DELIVERY_POLL_S": "0.1",
                # A killed notifier's leased deliveries are sent again soon (same webhook-id).
                "NOTIFIER_DELIVERY_LEASE_S": "5",
                "NOTIFIER_DELIVERY_TIMEOUT_S": "2",
                "NOTIFIER_PRUNE_INTERVAL_S": "86400",
                "CONSUMER_MAX_BATCH": "50",
                **(notifier_env or {}),
            }
        try:
            w.ingest.start(wait_ready=False)
            for _ in range(classifiers):
                w.classifier().start(wait_ready=False)
            for _ in range(notifiers):
                w.notifier().start(wait_ready=False)
            for svc in [w.ingest, *w.processes]:
                svc.wait_ready(timeout=120)
            yield w
        finally:
            for svc in [w.ingest, *w.processes]:
                if svc.proc is not None:
                    svc.proc.send_signal(signal.SIGCONT)  # a paused process cannot stop
                svc.stop()
            await engine.dispose()


def purchases(n: int, customers_: int, *, seed: int, tag: str) -> list[EmittedEvent]:
    """`n` purchases over `customers_` customers dated in the last two hours (no rolling
    window or time-driven transition can fall within a scenario), amounts that move tiers."""
    rnd = random.Random(seed)
    start = datetime.now(UTC) - timedelta(hours=2)
    step = timedelta(hours=1) / max(n, 1)
    return [
        EmittedEvent(
            id=f"{tag}-{i}",
            type="purchase",
            source="shop",
            subject=f"cust-{rnd.randrange(customers_):04d}",
            time=start + step * i,
            data={
                "order_id": f"{tag}-o{i}",
                "amount": f"{cents(rnd) / 100:.2f}",
                "currency": "USD",
            },
        )
        for i in range(n)
    ]


def cents(rnd: random.Random) -> int:
    """Mostly small orders, some large: customers climb regular -> important -> VIP."""
    return rnd.choice([rnd.randint(500, 30_000), rnd.randint(50_000, 250_000)])


def cloudevent(e: EmittedEvent) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": e.id,
        "source": e.source,
        "type": e.type,
        "subject": e.subject,
        "time": e.time.isoformat(),
        "data": e.data,
    }


async def send(w: World, events: Sequence[EmittedEvent], *, chunk: int = 100) -> None:
    """Post through the ingest; an item it did not accept is sent again (with a deadline)."""
    headers = {"content-type": "application/cloudevents-batch+json", **bearer(w.key)}
    async with httpx.AsyncClient(timeout=60) as client:
        for start in range(0, len(events), chunk):
            todo = list(events[start : start + chunk])
            deadline = time.monotonic() + 120
            while todo:
                assert time.monotonic() < deadline, f"ingest did not accept {len(todo)} events"
                resp = await client.post(
                    f"{w.ingest.url}/v1/events:batch",
                    json=[cloudevent(e) for e in todo],
                    headers=headers,
                )
                if resp.status_code not in (200, 503):
                    raise AssertionError(f"ingest answered {resp.status_code}: {resp.text}")
                results = resp.json().get("results") if resp.status_code != 503 else None
                if not results:
                    await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
                    continue
                again = []
                for item, event in zip(results, todo, strict=True):
                    if item["status"] == "accepted":
                        w.acknowledged.append(event)
                    elif item["status"] == "failed":
                        again.append(event)
                    else:
                        raise AssertionError(f"ingest rejected {event.id}: {item}")
                todo = again


async def consumed(w: World, group: str, topic: str) -> bool:
    """Every record of `topic` read by `group` and its offset stored."""
    async with reader(w.kafka) as consumer:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await log_ends(consumer, tps)
    async with w.engine.connect() as conn:
        rows = await conn.execute(
            select(consumer_offsets.c.partition, consumer_offsets.c.next_offset).where(
                consumer_offsets.c.group_id == group, consumer_offsets.c.topic == topic
            )
        )
        stored = {r.partition: r.next_offset for r in rows}
    return all(stored.get(tp.partition, -1) >= end for tp, end in ends.items())


async def drained(w: World, *, deliveries: bool = True) -> bool:
    """Every record of the input read and its offset stored, and the outbox relayed; with
    notifiers, also every change read by them and (`deliveries`) no delivery left pending."""
    if not await consumed(w, w.group, w.topics.customer_events):
        return False
    async with w.engine.connect() as conn:
        if await conn.scalar(select(func.count()).select_from(outbox)):
            return False
        if (
            w.notifiers
            and deliveries
            and await conn.scalar(
                select(func.count())
                .select_from(care_deliveries)
                .where(care_deliveries.c.state == "pending")
            )
        ):
            return False
    return not w.notifiers or await consumed(w, w.notifier_group, w.topics.classification_changed)


def drain_bound(events: int) -> float:
    """A drain timeout for `events` still to apply: a slow machine's rate (a few hundred new
    customers' events a second per classifier), never under 300 s."""
    return max(300.0, events / 200)


async def wait_drained(w: World, timeout: float) -> float:
    """Seconds until drained (fails past `timeout`)."""
    began = time.monotonic()
    while not await drained(w):
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not drained in {timeout}s")
        await asyncio.sleep(0.5)
    return time.monotonic() - began


@dataclass(repr=False)
class ScenarioResult:
    name: str
    acknowledged: int = 0
    lost: int = 0
    counted_twice: int = 0
    duplicate_changes: int = 0
    conflicting_ids: int = 0
    reordered: int = 0
    gaps: int = 0
    tier_mismatches: int = 0
    offset_regressions: int = 0
    dead_lettered_expected: int = 0
    dead_lettered_unexpected: int = 0
    fenced_writes: int = 0
    faults: int = 0  # processes killed, restarted or paused
    # Care actions (scenarios with notifiers; tests/chaos/care.py says what each counts).
    actions_expected: int = 0
    actions_delivered: int = 0
    duplicate_actions: int = 0
    missing_actions: int = 0
    unexpected_actions: int = 0
    redeliveries: int = 0  # the same webhook-id accepted again: allowed
    recovery_s: float = 0.0
    peak_rss_mib: float | None = None  # the ingest's, where the scenario samples it (overload)
    events_per_s: float | None = None  # drain throughput, where measured (poison vs clean)
    notes: list[str] = field(default_factory=list)

    FAILURES = (
        "lost",
        "counted_twice",
        "duplicate_changes",
        "conflicting_ids",
        "reordered",
        "gaps",
        "tier_mismatches",
        "offset_regressions",
        "dead_lettered_unexpected",
        "duplicate_actions",
        "missing_actions",
        "unexpected_actions",
    )

    @property
    def passed(self) -> bool:
        return not any(getattr(self, f) for f in self.FAILURES)

    def __str__(self) -> str:
        bad = {f: getattr(self, f) for f in self.FAILURES if getattr(self, f)}
        return f"{self.name}: {bad or 'passed'} notes={self.notes[:10]}"

    __repr__ = __str__


async def judge(
    w: World,
    name: str,
    *,
    recovery_s: float = 0.0,
    injected: frozenset[str] = frozenset(),
    faults: int = 0,
    rewound: Mapping[int, int] | None = None,
    peak_rss_mib: float | None = None,
    events_per_s: float | None = None,
) -> ScenarioResult:
    """The oracle against the database, the change topics and the dead-letter topic (which
    must hold exactly the events the oracle rejects plus the `injected` poison ids, once each,
    with their reason); written under `make chaos`. `rewound`: input partition -> the offset
    stored when the broker lost its log; one decrease from it (the consumer starting the new
    log) is not a regression."""
    expected: Expected = fold(w.acknowledged, RULES)
    result = ScenarioResult(name, acknowledged=len({e.id for e in w.acknowledged}))
    result.recovery_s = round(recovery_s, 2)
    result.faults = faults
    result.peak_rss_mib = peak_rss_mib
    result.events_per_s = events_per_s
    async with w.engine.connect() as conn:
        rows = await conn.execute(
            select(
                customers.c.customer_id,
                customers.c.purchases_lifetime,
                customers.c.net_spend_lifetime,
                customers.c.value_tier,
            )
        )
        got = {
            r.customer_id: (r.purchases_lifetime, Decimal(r.net_spend_lifetime), r.value_tier)
            for r in rows
        }
        allowed = dict(rewound or {})
        for r in await conn.execute(text("SELECT * FROM chaos_offset_regressions")):
            if r.topic == w.topics.customer_events and allowed.get(r.partition) == r.old:
                del allowed[r.partition]
            else:
                result.offset_regressions += 1
    for cid in expected.states:
        want = expected.customer(cid)
        purchases_, _, tier = got.get(cid, (0, Decimal(0), None))
        result.lost += max(want.purchases - purchases_, 0)
        result.counted_twice += max(purchases_ - want.purchases, 0)
        if (purchases_, got.get(cid, (0, Decimal(0)))[1]) != (want.purchases, want.net_spend):
            result.notes.append(f"{cid}: {got.get(cid)} != {want}")
        if tier != want.tier:
            result.tier_mismatches += 1
    result.counted_twice += sum(p for cid, (p, _, _) in got.items() if cid not in expected.states)
    published: dict[str, list[LoggedChange]] = {}
    for topic in (w.topics.classification_changed, w.topics.tier_changed):
        published[topic] = from_records(await read_to_end(w.kafka, topic))
        verdict = check(published[topic], SILENT_DEFAULTS)
        result.duplicate_changes += len(verdict.duplicate_changes)
        result.conflicting_ids += len(verdict.conflicting)
        result.reordered += len(verdict.reordered)
        result.gaps += len(verdict.gaps)
        result.notes += [f"{topic} {k}: {why}" for k, why in list(verdict.breaks.items())[:3]]
        for (cid, dimension), chain in verdict.chains.items():
            if dimension != "value_tier":
                continue
            path = expected.tiers.get(cid, [])
            if not is_subsequence(chain, path) or chain[-1:] != path[-1:]:
                result.tier_mismatches += 1
                result.notes.append(f"{cid}: published {chain}, oracle {path}")
    want_dead = set(expected.rejected) | injected
    seen_dead: set[str] = set()
    for d in await dead_letters(w.topics.classifier_dlq, limit=10**9, kafka=w.kafka):
        event_id = d.headers.get("ce_id", "")
        if (
            event_id in want_dead
            and event_id not in seen_dead
            and d.reason
            and d.source_topic == w.topics.customer_events
        ):
            result.dead_lettered_expected += 1
            seen_dead.add(event_id)
        else:
            result.dead_lettered_unexpected += 1
            result.notes.append(f"dead letter {event_id or '(no id)'}: {d.reason}")
    result.lost += len(want_dead - seen_dead)
    if w.receiver is not None and w.playbook is not None:
        # The notifiers read customer-classification-changed (the tier topic is its legacy twin).
        implied = implied_ids(published[w.topics.classification_changed], w.playbook)
        actions = judge_actions(w.receiver, care_actions(expected, w.playbook), implied)
        result.actions_expected = actions.expected
        result.actions_delivered = actions.delivered
        result.duplicate_actions = actions.duplicate
        result.missing_actions = actions.missing
        result.unexpected_actions = actions.unexpected
        result.redeliveries = actions.redeliveries
        result.notes += actions.notes[:5]
        for d in await dead_letters(w.topics.notifier_dlq, limit=10**9, kafka=w.kafka):
            result.dead_lettered_unexpected += 1
            result.notes.append(f"notifier dead letter {d.headers.get('ce_id', '')}: {d.reason}")
    for svc in w.processes:
        result.fenced_writes += svc.log().count("offset_write_fenced")
    record(result)
    return result


def record(result: ScenarioResult) -> None:
    """Under `make chaos` (TIERFLOW_CHAOS_RUN set): add the result to var/chaos/<run>.json."""
    run = os.environ.get("TIERFLOW_CHAOS_RUN")
    if not run:
        return
    path = ROOT / "var" / "chaos" / f"{run}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = (
        json.loads(path.read_text()) if path.exists() else {"run": run, "scenarios": []}
    )
    report["scenarios"].append(
        {**asdict(result), "notes": result.notes[:20], "passed": result.passed}
    )
    path.write_text(json.dumps(report, indent=2) + "\n")
