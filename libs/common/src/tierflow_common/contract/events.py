"""CloudEvents 1.0 models for every event tierflow accepts or emits.

Amounts are `Decimal` end to end and travel as decimal strings, never floats.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from tierflow_common.contract.customer_events import (
    EVENT_MODELS,
    EVENT_TYPES,
    CloudEventEnvelope,
    CurrencyCode,
    CustomerErasedEvent,
    CustomerEvent,
    CustomerId,
    DecimalString,
    ErasureData,
    EventType,
    FeedbackData,
    FeedbackEvent,
    InteractionData,
    InteractionEvent,
    NonNegativeAmount,
    ProfileData,
    ProfileEvent,
    PurchaseData,
    PurchaseEvent,
    RefundData,
    RefundEvent,
)

CLASSIFICATION_CHANGED_TYPE = "tierflow.classification.changed"
# Version 2 of `customer-classification-changed`: one record per customer and cause, holding
# every dimension that cause changed (version 1: one record per dimension change).
CLASSIFICATIONS_CHANGED_TYPE = "tierflow.classification.changed.v2"
TIER_CHANGED_TYPE = "tierflow.tier.changed"
CARE_ACTION_TYPE = "tierflow.care_action.created"
# On `customer-classification-changed`: the customer was erased; downstream systems erase too.
CUSTOMER_ERASED_TYPE = "tierflow.customer.erased"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_CUSTOMER_EVENT: TypeAdapter[CustomerEvent] = TypeAdapter(CustomerEvent)


def parse_customer_event(obj: Any) -> CustomerEvent:
    """Validate a decoded JSON object as a customer event (raises pydantic.ValidationError)."""
    return _CUSTOMER_EVENT.validate_python(obj)


def customer_event_json_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    return _CUSTOMER_EVENT.json_schema(ref_template=ref_template)


def customer_event_openapi_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema, component schemas) with references into an OpenAPI document's components."""
    schema = customer_event_json_schema("#/components/schemas/{model}")
    return schema, schema.pop("$defs", {})


class ChangeScores(_Strict):
    """The customer's churn risk and value as the classifier knew them when the change was
    made (the churn model in force); null where the customer is not scored."""

    churn_probability: float | None = Field(
        default=None, ge=0.0, le=1.0, description="P(no purchase within the churn horizon)"
    )
    clv: float | None = Field(
        default=None, description="Expected discounted spend over the CLV horizon (base currency)"
    )
    value_at_risk: float | None = Field(default=None, description="clv x churn_probability")


class ClassificationChangedData(_Strict):
    """One dimension of one customer moved from one label to another."""

    customer_id: CustomerId
    dimension: str
    from_label: str | None = Field(alias="from", description="null for the first assignment")
    to_label: str = Field(alias="to")
    reason: str = Field(description="Human-readable explanation of the rule that matched")
    explanation: dict[str, Any] = Field(
        default_factory=dict, description="Rule id, feature values and thresholds involved"
    )
    cause: str = Field(
        description="Why it changed: 'event:<source>/<id>' (that event), 'time:<instant>' (a "
        "deadline passed), 'rule_set_activated:<version>/<activation>' (an activation put a new "
        "rule set in force), 'rules:<version>' (a new churn model under the same rule set), "
        "'population:<version>' (a new population snapshot moved a population-relative "
        "class), 'override:<override_id>' (a manual override), 'override_expired:<id>' / "
        "'override_cleared:<id>' (its end)"
    )
    effective_at: datetime
    rule_set_version: str

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class DimensionChange(_Strict):
    """One dimension's move within a `ClassificationsChangedData` record."""

    change_id: str = Field(
        description="Stable id of this change (per cause, customer and dimension): the id its "
        "own record had in version 1, and the CloudEvents id of its `customer-tier-changed` "
        "record for the value tier"
    )
    dimension: str
    from_label: str | None = Field(alias="from", description="null for the first assignment")
    to_label: str = Field(alias="to")
    reason: str = Field(description="Human-readable explanation of the rule that matched")
    explanation: dict[str, Any] = Field(
        default_factory=dict, description="Rule id, feature values and thresholds involved"
    )
    rule_set_version: str

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ClassificationsChangedData(_Strict):
    """Every dimension of one customer that one cause moved, at one instant (the data of a
    `tierflow.classification.changed.v2` record on `customer-classification-changed`)."""

    customer_id: CustomerId
    cause: str = Field(
        description="Why they changed: 'event:<source>/<id>' (that event), 'time:<instant>' (a "
        "deadline passed), 'rule_set_activated:<version>/<activation>' (an activation put a new "
        "rule set in force), 'rules:<version>' (a new churn model under the same rule set), "
        "'population:<version>' (a new population snapshot moved a population-relative "
        "class), 'override:<override_id>' (a manual override), 'override_expired:<id>' / "
        "'override_cleared:<id>' (its end)"
    )
    effective_at: datetime
    changes: list[DimensionChange] = Field(min_length=1)
    scores: ChangeScores | None = Field(
        default=None,
        description="The customer's churn risk and value when these changes were made (the "
        "churn model in force); null when no model scores the customer",
    )

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    def dimension_changes(self) -> list[tuple[str, ClassificationChangedData]]:
        """(change id, the version-1 view) of each change: what a consumer written for one
        record per change acts on."""
        return [
            (
                c.change_id,
                ClassificationChangedData(
                    customer_id=self.customer_id,
                    dimension=c.dimension,
                    from_label=c.from_label,
                    to_label=c.to_label,
                    reason=c.reason,
                    explanation=c.explanation,
                    cause=self.cause,
                    effective_at=self.effective_at,
                    rule_set_version=c.rule_set_version,
                ),
            )
            for c in self.changes
        ]


class CustomerErasedData(_Strict):
    """Everything tierflow held about a customer was erased (the data of a
    `tierflow.customer.erased` record on `customer-classification-changed`): downstream
    systems erase what they hold about that customer too."""

    customer_id: CustomerId
    cause: str = Field(
        description="What asked for it: 'api' (DELETE /v1/customers/{id}) or "
        "'event:<source>/<id>' (an upstream customer.erased event)"
    )
    erased_through: datetime = Field(
        description="Events for this customer dated at or before this instant belong to the "
        "erased customer and are dropped; later ones start a new customer under the same id"
    )
    erased_at: datetime = Field(description="When the classifier erased its own records")


CareActionKind = Literal[
    "revisit", "follow_up", "coupon", "care_message", "escalation", "account_manager_assignment"
]
CarePriorityClass = Literal["critical", "service", "marketing"]


class CouponDetails(_Strict):
    """The coupon a `coupon` action offers (value by the customer's value tier)."""

    code: str = Field(description="Unique per action, e.g. TF-1A2B3C4D5E6F")
    value: DecimalString | None = Field(
        description="Amount off, in `currency`, as a decimal string; null when the playbook "
        "offers the customer's tier none (the action is then suppressed, not delivered)"
    )
    currency: CurrencyCode
    expires_at: datetime


class CareActionDetails(BaseModel):
    """What the action is about, beyond its kind; rules may add further keys."""

    model_config = ConfigDict(extra="allow", frozen=True)

    template: str | None = Field(default=None, description="Message template (care messages)")
    tier: str | None = Field(default=None, description="The customer's value tier when created")
    complaint_id: str | None = Field(
        default=None, description="The complaint an SLA escalation is about"
    )
    coupon: CouponDetails | None = Field(default=None, description="Only for kind coupon")


class CareActionData(_Strict):
    """A care action the notifier decided on for a customer: published on `care-actions` and
    POSTed (same fields) to every webhook endpoint."""

    action_id: str = Field(description="Stable id; also the webhook-id of every delivery")
    customer_id: CustomerId
    rule_id: str = Field(description="The playbook rule that fired")
    kind: CareActionKind = Field(description="What to do")
    priority: int = Field(ge=0, description="0 = most urgent")
    priority_class: CarePriorityClass = Field(
        description="critical actions are never capped, deferred or suppressed; marketing "
        "ones are subject to caps, quiet hours and consent"
    )
    reason: str = Field(
        description="Why, in words: the change (dimension: from → to, with the classifier's "
        "reason) or the schedule (cadence, follow-up, birthday, complaint SLA)"
    )
    explanation: dict[str, Any] = Field(
        default_factory=dict,
        description="Why, as data: trigger kind and its facts (for a change: dimension, from, "
        "to and the classifier's explanation; for a schedule: when it was due)",
    )
    trigger_event_id: str = Field(
        description="The trigger's key; with rule_id unique, so an action exists at most once"
    )
    owner: str | None = Field(
        default=None, description="Person, queue or role a task is assigned to, e.g. queue:care"
    )
    channel: str | None = Field(
        default=None, description="Channel for customer-facing kinds (consent and preference)"
    )
    due_at: datetime | None = Field(default=None, description="Deadline to carry it out")
    deliver_at: datetime | None = Field(
        default=None, description="Not before (quiet hours, the scheduled time)"
    )
    details: CareActionDetails = Field(default_factory=CareActionDetails)
    created_at: datetime
    # The customer's scores as the notifier knew them when it planned the action: from the
    # change that caused it, or (scheduled actions) the latest change that carried scores.
    churn_probability: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="P(no purchase within the churn horizon); null where not scored",
    )
    clv: float | None = Field(
        default=None, description="Expected discounted spend over the CLV horizon (base currency)"
    )
    value_at_risk: float | None = Field(
        default=None,
        description="clv x churn_probability (base currency): what is at stake; the queue "
        "(GET /v1/actions) ranks by it within a priority class. null where not scored",
    )


__all__ = [
    "CARE_ACTION_TYPE",
    "CLASSIFICATIONS_CHANGED_TYPE",
    "CLASSIFICATION_CHANGED_TYPE",
    "CUSTOMER_ERASED_TYPE",
    "EVENT_MODELS",
    "EVENT_TYPES",
    "TIER_CHANGED_TYPE",
    "CareActionData",
    "CareActionDetails",
    "CareActionKind",
    "CarePriorityClass",
    "ChangeScores",
    "ClassificationChangedData",
    "ClassificationsChangedData",
    "CloudEventEnvelope",
    "CouponDetails",
    "CurrencyCode",
    "CustomerErasedData",
    "CustomerErasedEvent",
    "CustomerEvent",
    "CustomerId",
    "DecimalString",
    "DimensionChange",
    "ErasureData",
    "EventType",
    "FeedbackData",
    "FeedbackEvent",
    "InteractionData",
    "InteractionEvent",
    "NonNegativeAmount",
    "ProfileData",
    "ProfileEvent",
    "PurchaseData",
    "PurchaseEvent",
    "RefundData",
    "RefundEvent",
    "customer_event_json_schema",
    "customer_event_openapi_schema",
    "parse_customer_event",
]
