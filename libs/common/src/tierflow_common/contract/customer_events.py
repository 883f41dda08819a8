"""Every event type upstream systems send, as CloudEvents 1.0 with a typed `data`.

Amounts are `Decimal` end to end and travel as decimal strings. The original amount and currency
are kept; conversion to the base currency happens in the classifier, with its rate table.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from tierflow_common.contract.attributes import (
    DataSchemaUri,
    ExtensionName,
    ExtensionValue,
    JsonMediaType,
    extensions_json_schema,
)

DecimalString = Annotated[
    Decimal,
    Field(max_digits=24, decimal_places=6),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
]
NonNegativeAmount = Annotated[DecimalString, Field(ge=0)]
CurrencyCode = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, upper case", examples=["USD"])
]
CustomerId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")]

# Review deadlines and ledger weeks lie years after an event: a time near the end of the
# calendar (9999-12-31) would overflow them, and such a record would crash the classifier
# every time it is read. Refused here, so the ingest answers 422 and a record written straight
# to the topic is dead-lettered with this reason.
LATEST_EVENT_TIME = datetime(9000, 1, 1, tzinfo=UTC)


def _before_latest(t: datetime) -> datetime:
    if t >= LATEST_EVENT_TIME:
        raise ValueError(f"must be before {LATEST_EVENT_TIME:%Y-%m-%d}")
    return t


EventTime = Annotated[AwareDatetime, AfterValidator(_before_latest)]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
Channel = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9_-]{0,39}$",
        description="Lower-case channel name, e.g. online, store, phone, app, email, sms",
        examples=["online"],
    ),
]

InteractionKind = Literal[
    "visit",
    "inquiry",
    "support_contact",
    "complaint",
    "complaint_resolved",
    "referral",
    "email_open",
    "message_click",
    "trial_start",
    "login",
    "revisit_done",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PurchaseItem(_Strict):
    sku: ShortText
    category: ShortText | None = None
    quantity: int = Field(ge=1, le=1_000_000)
    unit_price: NonNegativeAmount


class PurchaseData(_Strict):
    """A completed order. `amount` is what the customer paid, in `currency`."""

    order_id: ShortText
    amount: NonNegativeAmount = Field(
        description="Decimal string (preferred) or JSON number; never negative",
        examples=["129.90"],
    )
    currency: CurrencyCode
    items: list[PurchaseItem] | None = Field(default=None, max_length=1_000)
    discount_amount: NonNegativeAmount | None = Field(
        default=None, description="Discount granted on this order, in `currency`"
    )
    coupon_code: ShortText | None = None
    channel: Channel | None = None


class RefundData(_Strict):
    """Money returned for an order; net spend = purchases - refunds."""

    order_id: ShortText
    amount: NonNegativeAmount
    currency: CurrencyCode
    reason: Annotated[str, Field(max_length=2_000)] | None = None


class InteractionData(_Strict):
    """A touch point that is not a sale: visits, support, complaints, referrals, revisits."""

    kind: InteractionKind
    channel: Channel | None = None
    note: Annotated[str, Field(max_length=2_000)] | None = None
    complaint_id: ShortText | None = Field(
        default=None, description="Required for complaint and complaint_resolved"
    )
    referred_customer_id: CustomerId | None = Field(
        default=None, description="Required for referral: the customer who was referred"
    )
    reference_id: ShortText | None = Field(
        default=None, description="Related order, ticket or care action"
    )

    @model_validator(mode="after")
    def _references(self) -> InteractionData:
        if self.kind in ("complaint", "complaint_resolved") and self.complaint_id is None:
            raise ValueError(f"complaint_id is required for kind {self.kind!r}")
        if self.kind == "referral" and self.referred_customer_id is None:
            raise ValueError("referred_customer_id is required for kind 'referral'")
        return self


class FeedbackData(_Strict):
    """Satisfaction on a 1-5 scale (CSAT) and/or a 0-10 Net Promoter score."""

    satisfaction: int | None = Field(default=None, ge=1, le=5, description="CSAT, 1 = very bad")
    nps: int | None = Field(default=None, ge=0, le=10, description="Net Promoter answer, 0-10")
    comment: Annotated[str, Field(max_length=5_000)] | None = None
    reference_id: ShortText | None = Field(default=None, description="Order or ticket it is about")

    @model_validator(mode="after")
    def _some_score(self) -> FeedbackData:
        if self.satisfaction is None and self.nps is None:
            raise ValueError("give satisfaction (1-5) or nps (0-10)")
        return self


class Region(_Strict):
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
    province: ShortText | None = Field(default=None, description="Province or state")
    city: ShortText | None = None


class Contacts(_Strict):
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)] | None = (
        None
    )
    phone: Annotated[str, Field(pattern=r"^\+?[0-9][0-9 ()-]{5,24}$")] | None = None


class Consent(_Strict):
    marketing: bool | None = None
    channels: dict[Channel, bool] | None = Field(
        default=None, description="Per-channel consent, e.g. {'email': true, 'sms': false}"
    )


class ProfileData(_Strict):
    """A patch: only the fields present change; later profile events patch earlier ones."""

    name: ShortText | None = None
    contacts: Contacts | None = None
    region: Region | None = None
    industry: ShortText | None = None
    company_size: Literal["1-9", "10-49", "50-249", "250-999", "1000+"] | None = None
    birthday: date | None = None
    timezone: str | None = Field(default=None, description="IANA zone, e.g. Asia/Shanghai")
    preferred_channel: Channel | None = None
    tags: list[ShortText] | None = Field(default=None, max_length=100)
    consent: Consent | None = None

    @field_validator("birthday")
    @classmethod
    def _past_birthday(cls, value: date | None) -> date | None:
        if value is not None and value > date.today():
            raise ValueError("birthday is in the future")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None and value not in _zones():
            # Not the value: this reason is logged when a consumer dead-letters the record.
            raise ValueError("unknown IANA time zone (e.g. Asia/Shanghai)")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> ProfileData:
        if not self.model_fields_set:
            raise ValueError("a profile event must set at least one field")
        return self


_ZONES: set[str] = set()


def _zones() -> set[str]:
    if not _ZONES:
        _ZONES.update(available_timezones())
    return _ZONES


class CloudEventEnvelope(BaseModel):
    """CloudEvents 1.0 structured-mode attributes shared by every accepted event, and any
    extension attributes (contract/attributes.py: names, value types, limits)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[ExtensionName, ExtensionValue] = Field(init=False)

    specversion: Literal["1.0"]
    id: Annotated[
        str,
        Field(
            min_length=1,
            max_length=256,
            description="Unique per source: (source, id) is the idempotency key",
        ),
    ]
    source: Annotated[
        str, Field(min_length=1, max_length=256, description="The upstream system sending it")
    ]
    subject: CustomerId = Field(description="The customer id")
    time: EventTime = Field(description="When it happened, RFC 3339 with an offset")
    datacontenttype: JsonMediaType | None = None
    dataschema: DataSchemaUri | None = None

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        return extensions_json_schema(schema)


def _example(type_: str, data: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {
        "json_schema_extra": {
            "examples": [
                {
                    "specversion": "1.0",
                    "id": event_id,
                    "source": "shop",
                    "type": type_,
                    "subject": "customer-42",
                    "time": "2025-11-20T10:00:00Z",
                    "data": data,
                }
            ]
        }
    }


class PurchaseEvent(CloudEventEnvelope):
    model_config = ConfigDict(
        **_example(  # type: ignore[typeddict-item]
            "purchase",
            {
                "order_id": "1001",
                "amount": "129.90",
                "currency": "USD",
                "items": [
                    {"sku": "TEA-01", "category": "tea", "quantity": 2, "unit_price": "69.95"}
                ],
                "discount_amount": "10.00",
                "coupon_code": "WELCOME10",
                "channel": "online",
            },
            "order-1001",
        )
    )
    type: Literal["purchase"]
    data: PurchaseData


class RefundEvent(CloudEventEnvelope):
    model_config = ConfigDict(
        **_example(  # type: ignore[typeddict-item]
            "refund",
            {"order_id": "1001", "amount": "69.95", "currency": "USD", "reason": "damaged"},
            "refund-1001-1",
        )
    )
    type: Literal["refund"]
    data: RefundData


class InteractionEvent(CloudEventEnvelope):
    model_config = ConfigDict(
        **_example(  # type: ignore[typeddict-item]
            "interaction",
            {"kind": "complaint", "channel": "phone", "complaint_id": "T-77", "note": "late"},
            "desk-T-77-open",
        )
    )
    type: Literal["interaction"]
    data: InteractionData


class FeedbackEvent(CloudEventEnvelope):
    model_config = ConfigDict(
        **_example(  # type: ignore[typeddict-item]
            "feedback",
            {"satisfaction": 4, "comment": "quick delivery", "reference_id": "1001"},
            "survey-991",
        )
    )
    type: Literal["feedback"]
    data: FeedbackData


class ProfileEvent(CloudEventEnvelope):
    model_config = ConfigDict(
        **_example(  # type: ignore[typeddict-item]
            "profile",
            {
                "name": "Li Wei",
                "region": {"country": "CN", "province": "Zhejiang", "city": "Hangzhou"},
                "birthday": "1990-05-17",
                "timezone": "Asia/Shanghai",
                "consent": {"marketing": True, "channels": {"email": True, "sms": False}},
            },
            "crm-profile-42-7",
        )
    )
    type: Literal["profile"]
    data: ProfileData


class ErasureData(_Strict):
    """A request to erase everything tierflow holds about the customer (the `subject`).

    Events for that customer dated at or before this event's `time` belong to the erased
    customer and are dropped wherever they arrive later; events dated after it start a new
    customer under the same id."""

    reference_id: ShortText | None = Field(
        default=None, description="The erasure request's case or ticket id (no personal data)"
    )


class CustomerErasedEvent(CloudEventEnvelope):
    model_config = ConfigDict(
        **_example(  # type: ignore[typeddict-item]
            "customer.erased", {"reference_id": "gdpr-2025-118"}, "crm-erasure-118"
        )
    )
    type: Literal["customer.erased"]
    data: ErasureData


CustomerEvent = Annotated[
    PurchaseEvent
    | RefundEvent
    | InteractionEvent
    | FeedbackEvent
    | ProfileEvent
    | CustomerErasedEvent,
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[str, ...] = (
    "purchase",
    "refund",
    "interaction",
    "feedback",
    "profile",
    "customer.erased",
)
EVENT_MODELS: dict[str, type[CloudEventEnvelope]] = {
    "purchase": PurchaseEvent,
    "refund": RefundEvent,
    "interaction": InteractionEvent,
    "feedback": FeedbackEvent,
    "profile": ProfileEvent,
    "customer.erased": CustomerErasedEvent,
}
EventType = Literal["purchase", "refund", "interaction", "feedback", "profile", "customer.erased"]


# Operators' manual overrides travel on the customer-events topic too (ordered with the
# customer's other events, replayable), but only the classifier's API writes them: they are not
# part of `CustomerEvent`, the union the ingest accepts from upstream systems.
OVERRIDE_TYPE = "classification.override"
Reason = Annotated[str, Field(min_length=1, max_length=500)]


class OverrideData(_Strict):
    """Pin one dimension of the customer (the `subject`) to a label until `expires_at`, or
    (`label` null) clear the override in force on that dimension."""

    dimension: ShortText
    label: ShortText | None = Field(description="The label to pin; null clears the override")
    reason: Reason = Field(description="Why, as the operator gave it")
    expires_at: AwareDatetime | None = Field(
        default=None, description="When the rules take the dimension back; null: never"
    )
    override_id: ShortText = Field(description="This override's (or clearing's) own id")
    by: ShortText = Field(description="Name of the API key that asked for it")


class OverrideEvent(CloudEventEnvelope):
    model_config = ConfigDict(
        **_example(  # type: ignore[typeddict-item]
            OVERRIDE_TYPE,
            {
                "dimension": "value_tier",
                "label": "VIP",
                "reason": "key account, contract renewal pending",
                "expires_at": "2025-12-31T00:00:00Z",
                "override_id": "ovr-3f2a",
                "by": "ops console (alice)",
            },
            "override-3f2a",
        )
    )
    type: Literal["classification.override"]
    data: OverrideData


# Every record the customer-events topic carries: what upstream systems send, and overrides.
CustomerTopicEvent = Annotated[
    PurchaseEvent
    | RefundEvent
    | InteractionEvent
    | FeedbackEvent
    | ProfileEvent
    | CustomerErasedEvent
    | OverrideEvent,
    Field(discriminator="type"),
]

_TOPIC_EVENT: TypeAdapter[CustomerTopicEvent] = TypeAdapter(CustomerTopicEvent)


def parse_topic_event(obj: Any) -> CustomerTopicEvent:
    """Validate a decoded customer-events record (raises pydantic.ValidationError): the one
    decoder of that topic, used by its consumer (the classifier)."""
    return _TOPIC_EVENT.validate_python(obj)
