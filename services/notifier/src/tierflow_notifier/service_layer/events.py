"""Projects customer-events into what the notifier needs to know: profile (time zone, birthday,
preferred channel, consent), first purchase and complaints, and schedules what they imply
(birthday care, the first-purchase follow-up, complaint SLA escalations).

The classifier owns validation of this topic and dead-letters what is invalid; records the
notifier cannot use are skipped here, so one topic does not get two dead-letter copies.

Most of the topic is purchases, and a purchase matters here only if it may be the customer's
first: it is judged from three headers (type, subject, time), its value is never parsed, and a
customer already known to have bought earlier costs nothing further (see `KnownBuyers`).

An erased customer's events dated through the erasure are dropped (service_layer/erasure.py):
the customers a batch writes are locked against erasure and their erasures read first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.consumer import BatchOutcome, Record
from tierflow_common.contract.events import InteractionData, ProfileData
from tierflow_common.erasure import erased_through, erasure_epoch, is_erased
from tierflow_notifier.adapters import erasure as erasure_store
from tierflow_notifier.adapters import projection
from tierflow_notifier.domain.playbooks import (
    BirthdayTrigger,
    CareCompletedTrigger,
    ComplaintTrigger,
    FirstPurchaseTrigger,
    HolidayTrigger,
    Playbook,
)
from tierflow_notifier.domain.schedules import (
    ScheduleEntry,
    birthday_entry,
    care_completed_entry,
    complaint_entry,
    holiday_entry,
)
from tierflow_notifier.service_layer.erasure import SERVICE

log = structlog.get_logger(__name__)


_TYPES = {b"purchase": "purchase", b"profile": "profile", b"interaction": "interaction"}


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else bytes(raw).decode("utf-8", "replace")


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def profile_patch(data: ProfileData) -> dict[str, Any]:
    """The contact columns a profile event sets (a patch: absent fields stay as they were)."""
    patch: dict[str, Any] = {}
    given = data.model_fields_set
    for name in ("timezone", "birthday", "preferred_channel"):
        if name in given:
            patch[name] = getattr(data, name)
    if "consent" in given and data.consent is not None:
        if "marketing" in data.consent.model_fields_set:
            patch["marketing_consent"] = data.consent.marketing
        if data.consent.channels:
            patch["channel_consent"] = dict(data.consent.channels)
    return patch


@dataclass
class KnownBuyers:
    """Customers whose stored first purchase is known to be no later than a given time, so a
    purchase of theirs at or after it cannot change it (nor the follow-up it schedules).

    Filled only with what PostgreSQL already held, committed, before this process's statement
    ran: the customers whose upsert changed nothing. The stored first purchase only ever moves
    earlier, so such a bound stays true whatever happens to our own transaction, and in every
    process. A cache, bounded: forgetting a customer costs one more row in one statement."""

    limit: int = 65_536
    _first: dict[str, datetime] = field(default_factory=dict)

    def covers(self, customer: str, at: datetime) -> bool:
        known = self._first.get(customer)
        return known is not None and known <= at

    def learn(self, customers: dict[str, datetime]) -> None:
        first = self._first
        first.update(customers)
        if len(first) > self.limit:  # forget the oldest quarter
            for customer in list(islice(first, len(first) - self.limit * 3 // 4)):
                del first[customer]

    def __len__(self) -> int:
        return len(self._first)

    def clear(self) -> None:
        self._first.clear()


@dataclass
class EventsHandler:
    playbook: Playbook
    clock: Callable[[], datetime]
    known: KnownBuyers = field(default_factory=KnownBuyers)
    # The earliest due time the last call scheduled (read by the on-commit hook).
    earliest_due: datetime | None = field(default=None, init=False)
    # The erasures `known` was filled under (tierflow_common.erasure.erasure_epoch).
    _epoch: int = field(default=0, init=False)

    async def __call__(self, conn: AsyncConnection, records: Sequence[Record]) -> BatchOutcome:
        self.earliest_due = None
        outcome = BatchOutcome()
        # (kind, customer, time, profile patch or complaint id): what the batch may write.
        items: list[tuple[str, str, datetime, Any]] = []
        known = self.known
        fresh_epoch = False
        for record in records:
            raw_type = raw_subject = raw_time = None
            for name, raw in record.headers or ():
                if name == "ce_type":
                    raw_type = raw
                elif name == "ce_subject":
                    raw_subject = raw
                elif name == "ce_time":
                    raw_time = raw
            ce_type = _TYPES.get(bytes(raw_type)) if raw_type is not None else None
            customer = _text(raw_subject) or (record.key or b"").decode("utf-8", "replace")
            at = _time(_text(raw_time))
            if not customer or at is None or ce_type is None:
                outcome.duplicates += 1  # not for the notifier; counted as skipped
                continue
            if ce_type == "purchase":
                if known.covers(customer, at) and not fresh_epoch:
                    # An erasure since the cache learnt it may have made it a new customer.
                    await self._check_epoch(conn)
                    fresh_epoch = True
                if not known.covers(customer, at):
                    items.append(("purchase", customer, at, None))
                outcome.applied += 1
                continue
            try:
                data = orjson.loads(record.value or b"null")
                if ce_type == "profile":
                    patch = profile_patch(ProfileData.model_validate(data))
                    items.append(("profile", customer, at, patch))
                else:
                    inter = InteractionData.model_validate(data)
                    if inter.kind in ("complaint", "complaint_resolved") and inter.complaint_id:
                        items.append((inter.kind, customer, at, inter.complaint_id))
                    elif inter.kind == "revisit_done":  # a care task done (a survey may follow)
                        done = inter.reference_id or f"{record.partition}:{record.offset}"
                        items.append((inter.kind, customer, at, done))
            except (orjson.JSONDecodeError, ValidationError):
                log.debug("customer_event_skipped", offset=record.offset, type=ce_type)
                outcome.duplicates += 1
                continue
            outcome.applied += 1
        if not items:
            return outcome
        customers = {item[1] for item in items}
        await erasure_store.lock_shared(conn, customers)
        erased = await erased_through(conn, SERVICE, customers)
        earliest: dict[str, datetime] = {}
        profiles: dict[str, dict[str, Any]] = {}
        complaints: list[tuple[str, str, str, datetime]] = []  # (kind, customer, id, at)
        for kind, customer, at, payload in items:
            if erased and is_erased(erased, customer, at):
                outcome.applied -= 1
                outcome.duplicates += 1  # the erased customer's: never projected again
            elif kind == "purchase":
                if customer not in earliest or at < earliest[customer]:
                    earliest[customer] = at
            elif kind == "profile":
                profiles.setdefault(customer, {}).update(payload)
            else:
                complaints.append((kind, customer, payload, at))
        now = self.clock()
        await self._profiles(conn, profiles, now)
        await self._first_purchases(conn, earliest)
        await self._complaints(conn, complaints)
        await self._care_completed(conn, complaints)
        return outcome

    async def _check_epoch(self, conn: AsyncConnection) -> None:
        epoch = await erasure_epoch(conn, SERVICE)
        if epoch != self._epoch:
            self.known.clear()
            self._epoch = epoch

    async def _schedule(
        self, conn: AsyncConnection, entries: Sequence[ScheduleEntry], merge: projection.Merge
    ) -> None:
        if not entries:
            return
        await projection.upsert_schedules(conn, entries, merge)
        self._note_due(min(e.due_at for e in entries))

    def _note_due(self, due: datetime) -> None:
        if self.earliest_due is None or due < self.earliest_due:
            self.earliest_due = due

    async def _profiles(
        self, conn: AsyncConnection, profiles: dict[str, dict[str, Any]], now: datetime
    ) -> None:
        for customer, patch in sorted(profiles.items()):
            if patch:
                await projection.patch_profile(conn, customer, patch)
        # Holidays are for customers with a profile (the purchase path stays a header read),
        # in its time zone: (re)planned at every profile change.
        await self._holidays(conn, list(profiles), now, "replace")
        rules = self.playbook.scheduled(BirthdayTrigger)
        touched = [c for c, p in profiles.items() if "birthday" in p or "timezone" in p]
        if not rules or not touched:
            return
        default_tz = self.playbook.policy.default_timezone
        entries = [
            birthday_entry(
                rule, row["customer_id"], row["birthday"], row["timezone"] or default_tz, now
            )
            for row in await projection.customers_with_birthday(conn, touched)
            for rule in rules
        ]
        await self._schedule(conn, entries, "replace")

    async def _holidays(
        self,
        conn: AsyncConnection,
        customers: Sequence[str],
        now: datetime,
        merge: projection.Merge,
    ) -> None:
        """Each customer's next holiday of every holiday rule, in their time zone."""
        rules = self.playbook.scheduled(HolidayTrigger)
        if not rules or not customers:
            return
        contacts = await projection.load_contacts(conn, customers)
        default_tz = self.playbook.policy.default_timezone
        entries = [
            entry
            for customer in sorted(set(customers))
            for rule in rules
            if (
                entry := holiday_entry(
                    rule,
                    customer,
                    (contacts.get(customer) or {}).get("timezone") or default_tz,
                    now,
                )
            )
            is not None
        ]
        await self._schedule(conn, entries, merge)

    async def _first_purchases(self, conn: AsyncConnection, earliest: dict[str, datetime]) -> None:
        if not earliest:
            return
        rules = self.playbook.scheduled(FirstPurchaseTrigger)
        # Their follow-ups are scheduled by the same statement (first_purchase_entry's entries).
        changed = await projection.note_first_purchases(conn, earliest, rules)
        # Unchanged: PostgreSQL already held an earlier (or the same) first purchase.
        self.known.learn({c: t for c, t in earliest.items() if c not in changed})
        if changed and rules:
            self._note_due(
                min(changed.values())
                + min(r.trigger.after for r in rules if isinstance(r.trigger, FirstPurchaseTrigger))
            )

    async def _complaints(
        self, conn: AsyncConnection, complaints: list[tuple[str, str, str, datetime]]
    ) -> None:
        rules = self.playbook.scheduled(ComplaintTrigger)
        for kind, customer, complaint_id, at in complaints:
            if kind == "revisit_done":
                continue
            if kind == "complaint_resolved":
                await projection.resolve_complaint(conn, customer, complaint_id, at)
            elif await projection.open_complaint(conn, customer, complaint_id, at):
                entries: list[ScheduleEntry] = [
                    complaint_entry(r, customer, complaint_id, at) for r in rules
                ]
                await self._schedule(conn, entries, "keep")

    async def _care_completed(
        self, conn: AsyncConnection, completions: list[tuple[str, str, str, datetime]]
    ) -> None:
        """Schedule what follows a resolved complaint or a completed care task (a survey),
        once per complaint or task ("keep": a replayed report plans nothing new)."""
        rules = self.playbook.scheduled(CareCompletedTrigger)
        entries = [
            entry
            for kind, customer, reference, at in completions
            for rule in rules
            if (entry := care_completed_entry(rule, customer, kind, reference, at)) is not None
        ]
        await self._schedule(conn, entries, "keep")
