"""A customer's stored features and profile: the facts its events leave, typed. Pure.

Each field is a merge of facts keyed by event time or by id (domain/apply.py writes them, and
nothing else does), so any delivery order gives the same value. What the rules read is derived
from these in domain/features.py.

Stored as the `customers.features` JSON object under these field names (adapters/
repository.py); a field at its default is left out, amounts are decimal strings and instants
ISO 8601. Rows written before this type have the same shape and decode as they are; the
`open_complaints` count they also hold is derived from `complaints` now, and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec


class MonthBucket(msgspec.Struct, frozen=True):
    """Spend (net of refunds, base currency) and orders of one calendar month (UTC)."""

    spend: Decimal
    orders: int


class Complaint(msgspec.Struct, frozen=True, omit_defaults=True):
    """When a complaint was opened and resolved (the earliest of each event); a resolution
    may arrive before its complaint, so either may be missing."""

    opened_at: datetime | None = None
    resolved_at: datetime | None = None


class CustomerFeatures(msgspec.Struct, frozen=True, omit_defaults=True):
    # Monthly buckets by "YYYY-MM": rolling windows are sums over them (features.window_sums).
    months: dict[str, MonthBucket] = {}
    # Spend per UTC day with a purchase ("YYYY-MM-DD"): the churn fit's history
    # (domain/purchase_days.py).
    purchase_days: dict[str, Decimal] = {}
    # What each order cost (base currency): a refund is checked against it, and an order id
    # here is the purchase's natural key (apply.already_applied).
    orders: dict[str, Decimal] = {}
    refunded_orders: dict[str, Decimal] = {}
    # Each order's refunds, known by their cause, sorted (a refund's natural key).
    refund_causes: dict[str, tuple[str, ...]] = {}
    discounted_purchases: int = 0
    interactions: dict[str, int] = {}  # count per interaction kind
    last_interaction_at: datetime | None = None
    complaints: dict[str, Complaint] = {}
    referrals: int = 0
    # The last completed care revisit or follow-up (the notifier reports it).
    last_contact_at: datetime | None = None
    satisfaction_count: int = 0
    satisfaction_sum: int = 0
    # Each survey answer's score by "<instant>|<cause>" (two answers at one instant stay two).
    satisfaction_log: dict[str, int] = {}
    # The latest answer by event time; its cause breaks ties, so delivery order never matters.
    satisfaction_latest: int | None = None
    satisfaction_latest_at: datetime | None = None
    satisfaction_latest_cause: str = ""
    nps_count: int = 0
    nps_sum: int = 0

    def open_since(self) -> list[datetime]:
        """When each complaint still open was opened (one resolved before it was known to be
        opened is not open)."""
        return [
            c.opened_at
            for c in self.complaints.values()
            if c.opened_at is not None and c.resolved_at is None
        ]

    @property
    def open_complaints(self) -> int:
        return len(self.open_since())

    def interactions_of(self, *kinds: str) -> int:
        return sum(self.interactions.get(k, 0) for k in kinds)


NO_FEATURES = CustomerFeatures()


class ProfileField(msgspec.Struct, frozen=True):
    """A profile field's latest value (as the event sent it: any JSON value) and the event
    time it was set at (the latest wins; domain/apply.py). Stored as {"value", "at"}."""

    value: Any
    at: datetime


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CustomerFeatures)
# One per member, of the member's own type: for readers of a member alone (the population
# statistics read `months`, the churn fit the dated history).
_member_decoders = {
    f.name: msgspec.json.Decoder(f.type) for f in msgspec.structs.fields(CustomerFeatures)
}
_profile_decoder = msgspec.json.Decoder(dict[str, ProfileField])


def encode_features(features: CustomerFeatures) -> bytes:
    return _encoder.encode(features)


def decode_features(stored: bytes | str) -> CustomerFeatures:
    """The stored JSON object (as text) as typed features."""
    return _decoder.decode(stored)


def decode_member(name: str, stored: bytes | str | None) -> Any:
    """One member of the stored object alone, read as text, as its field's type (SQL NULL,
    where the row has none: the field's default)."""
    if stored is None:
        return getattr(CustomerFeatures(), name)
    return _member_decoders[name].decode(stored)


def encode_profile(profile: Mapping[str, ProfileField]) -> bytes:
    return _encoder.encode(profile)


def decode_profile(stored: bytes | str) -> dict[str, ProfileField]:
    """The stored `customers.profile` object (as text) as typed fields."""
    return _profile_decoder.decode(stored)
