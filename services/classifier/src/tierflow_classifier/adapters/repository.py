"""Customer state, event ledger and change history in PostgreSQL (SQLAlchemy Core, asyncpg)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
import orjson
from sqlalchemy import case, delete, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tierflow_classifier.domain.change_ids import ChangeRecord, change_records_of, new_changes
from tierflow_classifier.domain.customer_features import (
    CustomerFeatures,
    ProfileField,
    decode_features,
    decode_profile,
    encode_features,
    encode_profile,
)
from tierflow_classifier.domain.model import (
    Assignment,
    Change,
    CustomerState,
    assemble,
    field_names,
)
from tierflow_classifier.domain.rules import NO_RULE_MATCHED, default_rule, rule_reason
from tierflow_classifier.settings import ClassifierSettings
from tierflow_common.db.ledger_partitions import (
    LedgerPartitionMissing,
    LedgerPartitions,
    is_missing_partition,
)
from tierflow_common.db.raw import raw_connection
from tierflow_common.db.tables import (
    classifier_clock,
    customers,
    processed_events,
)

VALUE_TIER = "value_tier"


_ASSIGNMENT_FIELDS = field_names(Assignment)

# A dimension's default decision ("no rule matched") is stored as its label and instant alone:
# its rule and reason are the domain's (default_rule, NO_RULE_MATCHED), its explanation implied
# by its rule set (most of a new customer's dimensions hold one; whole, they were half the row
# and took it over PostgreSQL's 2 kB TOAST threshold, so every write of it was compressed).


def _assignments_from_json(
    stored: Mapping[str, dict[str, Any]], row_version: str
) -> dict[str, Assignment]:
    """A state's stored assignments (name -> the object _dimensions_json writes), each built
    on the decoded dict itself as its `__dict__`, without the frozen __init__ or a copy (a
    state holds one per dimension: this is most of loading it). The assignments of one
    classification share an instant, parsed once. The dicts are the decoder's own: nothing
    else holds them. What the row leaves out is filled in: a default label's rule, reason
    and (empty) explanation, and the rule-set version where it is the row's, `row_version`
    (or that plus a stored "+…" suffix)."""
    instants: dict[str, datetime] = {}
    out: dict[str, Assignment] = {}
    for name, d in stored.items():
        text = d["since"]
        since = instants.get(text)
        if since is None:
            since = instants[text] = _instant(text)
        d["since"] = since
        if "reason" not in d:
            if "rule" not in d:
                d["rule"] = default_rule(name)
                d["reason"] = NO_RULE_MATCHED
            else:  # a matched rule's, implied by its explanation
                why = d["explanation"]
                d["reason"] = rule_reason(why["expression"], why["inputs"])
        if "explanation" not in d or d["explanation"] is None:
            d["explanation"] = {}  # a default label's, implied by its rule set
        version = d.get("rule_set_version")
        if version is None:
            d["rule_set_version"] = row_version
        elif version[:1] == "+":
            d["rule_set_version"] = row_version + version
        if d.keys() != _ASSIGNMENT_FIELDS:  # a set comparison: names, not only their count
            raise ValueError(f"stored assignment {name!r} has fields {sorted(d)}")
        a = object.__new__(Assignment)
        object.__setattr__(a, "__dict__", d)
        out[name] = a
    return out


_instant = datetime.fromisoformat
T = TypeVar("T")


# Sent through asyncpg itself: through SQLAlchemy's text() the four arrays of a batch cost
# about 1% of the classifier's CPU in parameter processing alone.
_CLAIM = (
    "INSERT INTO processed_events (source, event_id, customer_id, event_time) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) "
    "ON CONFLICT DO NOTHING RETURNING source, event_id"
)

# One per engine (= database): the cache of which weeks have a partition, shared by every
# claim in the process and by the maintenance task the bootstrap starts.
_LEDGERS: weakref.WeakKeyDictionary[Any, LedgerPartitions] = weakref.WeakKeyDictionary()


def processed_events_ledger(
    engine: AsyncEngine, *, retention_days: int | None = None
) -> LedgerPartitions:
    """The ledger's partitions in this engine's database. The bootstrap passes the retention
    setting (and runs the returned object's maintenance, `run()`); a claim on an engine the
    bootstrap did not register reads the setting from the environment."""
    ledger = _LEDGERS.get(engine.sync_engine)
    wanted = None if retention_days is None else timedelta(days=retention_days)
    if ledger is None or (wanted is not None and ledger.retention != wanted):
        days = retention_days or ClassifierSettings().ledger_retention_days
        ledger = LedgerPartitions(engine, "processed_events", retention=timedelta(days=days))
        _LEDGERS[engine.sync_engine] = ledger
    return ledger


async def claim_events(
    conn: AsyncConnection, keys: Sequence[tuple[str, str, str, datetime]]
) -> set[tuple[str, str]]:
    """Enter (source, event_id, customer_id, event_time) in the ledger; return the (source,
    event_id) of the events to apply: those that were new, and those older than the ledger's
    window, which it no longer remembers (for them the customer's state is the guard: a
    purchase or refund is known by its order id; see domain/apply.py).

    A key already present belongs to an event applied before: the caller skips it. One
    statement with array parameters, so its text (and plan) is the same for every batch; a
    week without a partition yet gets one first, in its own short transaction.
    """
    if not keys:
        return set()
    ledger = processed_events_ledger(conn.engine)
    times = [k[3] for k in keys]
    horizon = await ledger.prepare(times)
    beyond: set[tuple[str, str]] = set()
    if min(times) < horizon:
        beyond = {(k[0], k[1]) for k in keys if k[3] < horizon}
        keys = [k for k in keys if k[3] >= horizon]
        if not keys:
            return beyond
    raw = await raw_connection(conn)
    try:
        rows = await raw.fetch(
            _CLAIM,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [k[3] for k in keys],
        )
    except Exception as exc:  # asyncpg's own: the statement bypasses SQLAlchemy
        if not is_missing_partition(exc):
            raise
        ledger.forget()  # dropped behind this process's back: look again on the retry
        raise LedgerPartitionMissing(str(exc)) from exc
    return {(r[0], r[1]) for r in rows} | beyond


async def release_events(conn: AsyncConnection, keys: Iterable[tuple[str, str]]) -> None:
    """Forget ledger entries of events that were dead-lettered, so a fixed resend applies
    (whatever their time: every partition is searched; dead letters are rare)."""
    keys = list(keys)
    if keys:
        await conn.execute(
            delete(processed_events).where(
                tuple_(processed_events.c.source, processed_events.c.event_id).in_(keys)
            )
        )


async def lock_customers(conn: AsyncConnection, customer_ids: Sequence[str]) -> None:
    """Serialise writers per customer (also for customers without a row yet), deadlock-free."""
    await conn.execute(
        text(
            "SELECT pg_advisory_xact_lock(k) FROM ("
            " SELECT DISTINCT hashtextextended(x, 0) AS k FROM unnest(CAST(:ids AS text[])) AS x"
            " ORDER BY k) AS keys"
        ),
        {"ids": list(customer_ids)},
    )


_LOAD = (
    "SELECT customer_id, purchases_lifetime, net_spend_lifetime, refunds_lifetime, "
    "refunded_lifetime, features::text AS features, profile::text AS profile, first_seen_at, "
    "recent_purchases, next_review_at, rule_set_version, first_purchase_at, last_purchase_at, "
    "dimensions::text AS dimensions, churn_probability FROM customers "
    "WHERE customer_id = ANY($1::text[])"
)


async def load_states(
    conn: AsyncConnection, customer_ids: Sequence[str]
) -> dict[str, CustomerState]:
    raw = await raw_connection(conn)
    rows = await raw.fetch(_LOAD, list(customer_ids))
    return {r["customer_id"]: _raw_to_state(r) for r in rows}


def _raw_to_state(row: Any) -> CustomerState:
    """A row whose JSONB columns were read as text (decoded here, with orjson)."""
    return state_from_row(row, orjson.loads)


def _as_is(value: Any) -> Any:
    return value


def _typed(stored: Any, decode: Callable[[str | bytes], T], kind: Any) -> T:
    """A typed JSONB column (features, profile): read as text (load_states) by its decoder,
    or converted where the driver decoded it already (a SQLAlchemy row of the whole table)."""
    if isinstance(stored, str | bytes):
        return decode(stored)
    converted: T = msgspec.convert(stored, kind)
    return converted


def state_from_row(row: Any, json: Callable[[Any], Any] = _as_is) -> CustomerState:
    """A customer's state from its `customers` row, as either driver returns it (a
    SQLAlchemy row's `_mapping`, an asyncpg record); `json` decodes its JSONB columns when
    they came as text."""
    return assemble(
        CustomerState,
        customer_id=row["customer_id"],
        purchases_lifetime=row["purchases_lifetime"],
        net_spend_lifetime=Decimal(row["net_spend_lifetime"]),
        refunds_lifetime=row["refunds_lifetime"],
        refunded_lifetime=Decimal(row["refunded_lifetime"]),
        features=_typed(row["features"], decode_features, CustomerFeatures),
        profile=_typed(row["profile"], decode_profile, dict[str, ProfileField]),
        first_seen_at=row["first_seen_at"],
        recent_purchases=tuple(row["recent_purchases"] or ()),
        next_review_at=row["next_review_at"],
        rule_set_version=row["rule_set_version"],
        first_purchase_at=row["first_purchase_at"],
        last_purchase_at=row["last_purchase_at"],
        dimensions=_assignments_from_json(json(row["dimensions"]), row["rule_set_version"]),
        churn_probability=row["churn_probability"],
    )


# One statement per batch with one array per column (recent_purchases, at most two instants,
# as two columns), so the text and plan are the same for every batch. `dimensions` is merged
# into the stored object (jsonb ||): a customer loaded in the same transaction sends only the
# assignments that changed (save_states), a new one all of them.
_SAVE = (
    "INSERT INTO customers (customer_id, purchases_lifetime, net_spend_lifetime, "
    "refunds_lifetime, refunded_lifetime, features, profile, first_seen_at, recent_purchases, "
    "next_review_at, rule_set_version, first_purchase_at, last_purchase_at, dimensions, "
    "value_tier, churn_probability) "
    "SELECT u.id, u.n, u.spend, u.refunds, u.refunded, u.features::jsonb, u.profile::jsonb, "
    "u.seen, array_remove(ARRAY[u.r0, u.r1], NULL), u.review, u.version, u.first_p, u.last_p, "
    "u.dims::jsonb, u.tier, u.churn FROM unnest($1::text[], $2::bigint[], $3::numeric[], "
    "$4::bigint[], $5::numeric[], $6::text[], $7::text[], $8::timestamptz[], "
    "$9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::text[], "
    "$13::timestamptz[], $14::timestamptz[], $15::text[], $16::text[], $17::float8[]) "
    "AS u(id, n, spend, refunds, refunded, features, profile, seen, r0, r1, review, version, "
    "first_p, last_p, dims, tier, churn) "
    "ON CONFLICT (customer_id) DO UPDATE SET "
    "purchases_lifetime = excluded.purchases_lifetime, "
    "net_spend_lifetime = excluded.net_spend_lifetime, "
    "refunds_lifetime = excluded.refunds_lifetime, "
    "refunded_lifetime = excluded.refunded_lifetime, features = excluded.features, "
    "profile = excluded.profile, first_seen_at = excluded.first_seen_at, "
    "recent_purchases = excluded.recent_purchases, next_review_at = excluded.next_review_at, "
    "rule_set_version = excluded.rule_set_version, "
    "first_purchase_at = excluded.first_purchase_at, "
    "last_purchase_at = excluded.last_purchase_at, value_tier = excluded.value_tier, "
    "dimensions = customers.dimensions || excluded.dimensions, "
    "churn_probability = excluded.churn_probability, updated_at = now()"
)


def _dimensions_json(s: CustomerState, stored: Mapping[str, Assignment] | None = None) -> str:
    """The row's `dimensions`, as short as _assignments_from_json can read back: a default
    label's explanation (the list of the dimension's rules, none of which matched) is implied
    by its rule set and left out, and so are its rule and reason when they are the
    dimension's default ones (the API shows them again, entrypoints/api.py); a matched rule's
    reason is left out where its explanation implies it (rules.rule_reason); an assignment's
    rule-set version is left out where it is the row's, and is only its "+pop<n>" suffix
    where it is the row's plus the population it was judged by (versions are content ids,
    `rs_…`, never beginning with "+"). `stored`: the assignments the row
    holds (as loaded, under the same row version); those still in the state, unchanged (the
    same objects), are left out too."""
    row_version = s.rule_set_version
    row_prefix = row_version + "+"
    dims: dict[str, Any] = {}
    for name, a in s.dimensions.items():
        if stored is not None and stored.get(name) is a:
            continue
        why = a.explanation
        if (not why or (len(why) == 1 and "evaluated" in why)) and a.rule.endswith(".default"):
            if a.reason == NO_RULE_MATCHED and a.rule == default_rule(name):
                d: dict[str, Any] = {"label": a.label, "since": a.since}
            else:
                d = {"label": a.label, "since": a.since, "rule": a.rule, "reason": a.reason}
        else:
            d = {"label": a.label, "since": a.since, "rule": a.rule, "explanation": a.explanation}
            if not _reason_implied(a):
                d["reason"] = a.reason
        version = a.rule_set_version
        if version != row_version:
            if version.startswith(row_prefix):
                version = version[len(row_version) :]  # the population it was judged by
            elif version[:1] == "+":
                raise ValueError(f"a rule-set version cannot begin with '+': {version!r}")
            d["rule_set_version"] = version
        dims[name] = d
    # "Z" for UTC: 5 bytes less per instant, and both readers (fromisoformat, ::timestamptz)
    # take it.
    return orjson.dumps(dims, option=orjson.OPT_UTC_Z).decode()


def _reason_implied(a: Assignment) -> bool:
    """Whether the assignment's reason is its explanation's rule_reason, read back from JSON as
    it was written: inputs of JSON scalars only (a tuple comes back a list, a NaN null)."""
    why = a.explanation
    expression, inputs = why.get("expression"), why.get("inputs")
    if not isinstance(expression, str) or not isinstance(inputs, dict) or len(why) != 2:
        return False
    for value in inputs.values():
        if type(value) is float:
            if not math.isfinite(value):
                return False
        elif value is not None and type(value) not in (str, int, bool):
            return False
    return a.reason == rule_reason(expression, inputs)


# customers' columns in the order of state_record(): for COPY (bench/timelag.py) and saves.
STATE_COLUMNS = (
    "customer_id",
    "purchases_lifetime",
    "net_spend_lifetime",
    "refunds_lifetime",
    "refunded_lifetime",
    "features",
    "profile",
    "first_seen_at",
    "recent_purchases",
    "next_review_at",
    "rule_set_version",
    "first_purchase_at",
    "last_purchase_at",
    "dimensions",
    "value_tier",
    "churn_probability",
)


def state_record(
    s: CustomerState, stored: Mapping[str, Assignment] | None = None
) -> tuple[Any, ...]:
    """A customer's row as stored, JSONB columns as JSON text (STATE_COLUMNS order);
    `stored`: the assignments the row holds, left out of `dimensions` where unchanged."""
    return (
        s.customer_id,
        s.purchases_lifetime,
        s.net_spend_lifetime,
        s.refunds_lifetime,
        s.refunded_lifetime,
        encode_features(s.features).decode(),
        encode_profile(s.profile).decode(),
        s.first_seen_at,
        list(s.recent_purchases),
        s.next_review_at,
        s.rule_set_version,
        s.first_purchase_at,
        s.last_purchase_at,
        _dimensions_json(s, stored),
        s.dimensions[VALUE_TIER].label if VALUE_TIER in s.dimensions else "",
        s.churn_probability,
    )


def _stored_assignments(
    s: CustomerState, stored: Mapping[str, CustomerState] | None
) -> Mapping[str, Assignment] | None:
    """What the row of `s` holds as loaded (None: not loaded, write it whole)."""
    before = stored.get(s.customer_id) if stored else None
    if before is None or before.rule_set_version != s.rule_set_version:
        # The row's assignments left unsent would be read under the new version.
        return None
    if not before.dimensions.keys() <= s.dimensions.keys():
        raise ValueError(f"a saved state dropped assignments: {s.customer_id}")
    return before.dimensions


async def save_states(
    conn: AsyncConnection,
    states: Sequence[CustomerState],
    stored: Mapping[str, CustomerState] | None = None,
) -> None:
    """Upsert `states`. `stored`: the rows as loaded in this transaction (under the
    customers' locks): a customer found there sends only its changed assignments (the rest
    of its row is written whole). Assignments are never removed from a state, so the merge
    leaves the row equal to the state; a state that dropped one is refused."""
    if not states:
        return
    records = [state_record(s, _stored_assignments(s, stored)) for s in states]
    columns = list(zip(*records, strict=True))
    recent: list[list[datetime]] = [r[8] for r in records]
    raw = await raw_connection(conn)
    await raw.execute(
        _SAVE,
        *columns[:8],
        [r[0] if r else None for r in recent],
        [r[1] if len(r) > 1 else None for r in recent],
        *columns[9:],
    )


_LABELS = (
    "INSERT INTO customer_labels (customer_id, dimension, label, since) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) "
    "ON CONFLICT (customer_id, dimension) DO UPDATE "
    "SET label = excluded.label, since = excluded.since"
)
# The change ids already recorded for the (customer, cause) pairs of a batch: a change id is
# recorded once, ever, and one cause may move a customer again (another dimension, the same
# instant) in a later transaction. Under the customers' locks, so nothing slips in between.
_RECORDED = (
    "SELECT e->>'change_id' FROM classification_records AS r "
    "JOIN unnest($1::text[], $2::text[]) AS k(customer_id, cause) "
    "ON r.customer_id = k.customer_id AND r.cause = k.cause "
    "CROSS JOIN LATERAL jsonb_array_elements(r.changes) AS e"
)
_HISTORY = (
    "INSERT INTO classification_records (record_id, customer_id, cause, effective_at, changes) "
    "SELECT u.id, u.customer_id, u.cause, u.at, u.changes::jsonb FROM unnest($1::text[], "
    "$2::text[], $3::text[], $4::timestamptz[], $5::text[]) "
    "AS u(id, customer_id, cause, at, changes) "
    "ON CONFLICT (record_id) DO NOTHING RETURNING record_id"
)


async def record_changes(
    conn: AsyncConnection, changes: Sequence[tuple[str, Change]]
) -> list[ChangeRecord]:
    """Store (change_id, change) pairs in the history, one row per record (a cause's changes
    to one customer at one instant), and the latest label per dimension.

    Returns the records actually stored: a change id already in the history (the same cause,
    customer and dimension computed again) is a duplicate, kept out of the history and off
    the wire, so one logical change is published once.
    """
    if not changes:
        return []
    latest: dict[tuple[str, str], Change] = {}
    for _, c in changes:
        latest[(c.customer_id, c.dimension)] = c
    raw = await raw_connection(conn)
    last = list(latest.values())
    await raw.execute(
        _LABELS,
        [c.customer_id for c in last],
        [c.dimension for c in last],
        [c.to.label for c in last],
        [c.effective_at for c in last],
    )
    asked = list({(c.customer_id, c.cause) for _, c in changes})
    known = {r[0] for r in await raw.fetch(_RECORDED, [a[0] for a in asked], [a[1] for a in asked])}
    records = change_records_of(new_changes(changes, known))
    rows = await raw.fetch(
        _HISTORY,
        [r.record_id for r in records],
        [r.customer_id for r in records],
        [r.cause for r in records],
        [r.effective_at for r in records],
        [orjson.dumps(r.body, default=dict).decode() for r in records],
    )
    stored = {row["record_id"] for row in rows}
    return [r for r in records if r.record_id in stored]


async def get_state(conn: AsyncConnection, customer_id: str) -> CustomerState | None:
    row = (
        await conn.execute(select(customers).where(customers.c.customer_id == customer_id))
    ).first()
    return state_from_row(row._mapping) if row is not None else None


async def due_customers(conn: AsyncConnection, now: datetime, limit: int) -> list[str]:
    rows = await conn.execute(
        select(customers.c.customer_id)
        .where(customers.c.next_review_at <= now)
        .order_by(customers.c.next_review_at)
        .limit(limit)
    )
    return [r.customer_id for r in rows]


async def next_deadline(conn: AsyncConnection) -> datetime | None:
    value: datetime | None = await conn.scalar(select(func.min(customers.c.next_review_at)))
    return value


async def read_watermark(conn: AsyncConnection) -> datetime | None:
    """Replay's "now": the slowest partition's latest event time (a partition's events are in
    order, so no event still to come on any partition is older than this). Unknown (None)
    while an assigned partition has had no event applied yet: the partitions read so far may
    all be at the end of the log while others have not started."""
    value: datetime | None = await conn.scalar(
        select(
            case(
                (
                    func.count() == func.count(classifier_clock.c.watermark),
                    func.min(classifier_clock.c.watermark),
                ),
                else_=None,
            )
        )
    )
    return value


async def register_partitions(conn: AsyncConnection, names: Sequence[str]) -> list[str]:
    """Register assigned partitions (no watermark yet where new); return those still unread."""
    if names:
        await conn.execute(
            pg_insert(classifier_clock)
            .values([{"name": n, "watermark": None} for n in names])
            .on_conflict_do_nothing(index_elements=["name"])
        )
    rows = await conn.scalars(
        select(classifier_clock.c.name).where(
            classifier_clock.c.name.in_(list(names)), classifier_clock.c.watermark.is_(None)
        )
    )
    return list(rows)


async def forget_unread_partitions(conn: AsyncConnection, names: Sequence[str]) -> None:
    """Partitions read to their end without an event to apply (empty, or only duplicates and
    dead letters) stop holding the watermark back."""
    await conn.execute(
        delete(classifier_clock).where(
            classifier_clock.c.name.in_(list(names)), classifier_clock.c.watermark.is_(None)
        )
    )


def partition_name(topic: str, partition: int) -> str:
    """The `classifier_clock` row of an input partition."""
    return f"{topic}:{partition}"


async def advance_watermark(conn: AsyncConnection, partition: str, to: datetime) -> None:
    stmt = pg_insert(classifier_clock).values(name=partition, watermark=to)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "watermark": func.greatest(classifier_clock.c.watermark, stmt.excluded.watermark)
            },
        )
    )


async def versions_after(conn: AsyncConnection, after: str, limit: int) -> list[tuple[str, str]]:
    """The next `limit` customers in id order after `after`, with the version each was last
    classified by: a walk over the primary key, so each page costs the same however many
    customers before it are already current (a `version != …` scan re-read them every time)."""
    rows = await conn.execute(
        select(customers.c.customer_id, customers.c.rule_set_version)
        .where(customers.c.customer_id > after)
        .order_by(customers.c.customer_id)
        .limit(limit)
    )
    return [(r.customer_id, r.rule_set_version) for r in rows]


async def count_customers(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(customers))).scalar_one())


async def customer_at(conn: AsyncConnection, position: int) -> str:
    """The id of the customer at `position` (0-based) in id order: where to split a walk."""
    row = await conn.execute(
        select(customers.c.customer_id).order_by(customers.c.customer_id).offset(position).limit(1)
    )
    return str(row.scalar_one())
