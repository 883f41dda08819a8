"""Projects customer-events into what the notifier needs to know: profile (time zone, birthday,
preferred channel, consent), first purchase and complaints, and schedules what they imply
(birthday care, the first-purchase follow-up, complaint SLA escalations).

The classifier owns validation of this topic and dead-letters what is invalid; records the
notifier cannot use are skipped here, so one topic does not get two dead-letter copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from tierflow_common.consumer import BatchOutcome, Record
from tierflow_common.contract.events import InteractionData, ProfileData
from tierflow_notifier.adapters import projection
from tierflow_notifier.domain.playbooks import (
    BirthdayTrigger,
    ComplaintTrigger,
    FirstPurchaseTrigger,
    Playbook,
)
from tierflow_notifier.domain.schedules import (
    ScheduleEntry,
    birthday_entry,
    complaint_entry,
    first_purchase_entry,
)

log = structlog.get_logger(__name__)


def _headers(record: Record) -> dict[str, str]:
    return {k: bytes(v).decode("utf-8", "replace") for k, v in (record.headers or ())}


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
class EventsHandler:
    playbook: Playbook
    clock: Callable[[], datetime]

    async def __call__(self, conn: AsyncConnection, records: Sequence[Record]) -> BatchOutcome:
        outcome = BatchOutcome()
        earliest: dict[str, datetime] = {}
        profiles: dict[str, dict[str, Any]] = {}
        complaints: list[tuple[str, str, str, datetime]] = []  # (kind, customer, id, at)
        for record in records:
            headers = _headers(record)
            ce_type = headers.get("ce_type")
            customer = headers.get("ce_subject") or (record.key or b"").decode("utf-8", "replace")
            at = _time(headers.get("ce_time"))
            if not customer or at is None or ce_type not in ("purchase", "profile", "interaction"):
                outcome.duplicates += 1  # not for the notifier; counted as skipped
                continue
            if ce_type == "purchase":
                if customer not in earliest or at < earliest[customer]:
                    earliest[customer] = at
                outcome.applied += 1
                continue
            try:
                data = orjson.loads(record.value or b"null")
                if ce_type == "profile":
                    profiles.setdefault(customer, {}).update(
                        profile_patch(ProfileData.model_validate(data))
                    )
                else:
                    inter = InteractionData.model_validate(data)
                    if inter.kind in ("complaint", "complaint_resolved") and inter.complaint_id:
                        complaints.append((inter.kind, customer, inter.complaint_id, at))
            except (orjson.JSONDecodeError, ValidationError):
                log.debug("customer_event_skipped", offset=record.offset, type=ce_type)
                outcome.duplicates += 1
                continue
            outcome.applied += 1
        now = self.clock()
        await self._profiles(conn, profiles, now)
        await self._first_purchases(conn, earliest)
        await self._complaints(conn, complaints)
        return outcome

    async def _profiles(
        self, conn: AsyncConnection, profiles: dict[str, dict[str, Any]], now: datetime
    ) -> None:
        for customer, patch in sorted(profiles.items()):
            if patch:
                await projection.patch_profile(conn, customer, patch)
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
        await projection.upsert_schedules(conn, entries, "replace")

    async def _first_purchases(self, conn: AsyncConnection, earliest: dict[str, datetime]) -> None:
        rules = self.playbook.scheduled(FirstPurchaseTrigger)
        changed = await projection.note_first_purchases(conn, earliest)
        entries = [first_purchase_entry(r, c, t) for c, t in changed.items() for r in rules]
        await projection.upsert_schedules(conn, entries, "earlier")

    async def _complaints(
        self, conn: AsyncConnection, complaints: list[tuple[str, str, str, datetime]]
    ) -> None:
        rules = self.playbook.scheduled(ComplaintTrigger)
        for kind, customer, complaint_id, at in complaints:
            if kind == "complaint_resolved":
                await projection.resolve_complaint(conn, customer, complaint_id, at)
            elif await projection.open_complaint(conn, customer, complaint_id, at):
                entries: list[ScheduleEntry] = [
                    complaint_entry(r, customer, complaint_id, at) for r in rules
                ]
                await projection.upsert_schedules(conn, entries, "keep")
