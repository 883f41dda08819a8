"""The public event contract: what upstream systems send and what tierflow publishes.

This package is the single place the contract lives; services import it, never copy it.
"""

from tierflow_common.contract.events import (
    CARE_ACTION_TYPE,
    CLASSIFICATION_CHANGED_TYPE,
    CLASSIFICATIONS_CHANGED_TYPE,
    CUSTOMER_ERASED_TYPE,
    TIER_CHANGED_TYPE,
    CareActionData,
    ClassificationChangedData,
    ClassificationsChangedData,
    CustomerErasedData,
    CustomerErasedEvent,
    CustomerEvent,
    EventType,
    PurchaseData,
    PurchaseEvent,
    parse_customer_event,
)
from tierflow_common.contract.kafka_binding import (
    EmittedEvent,
    decode_record,
    encode_event,
)

__all__ = [
    "CARE_ACTION_TYPE",
    "CLASSIFICATIONS_CHANGED_TYPE",
    "CLASSIFICATION_CHANGED_TYPE",
    "CUSTOMER_ERASED_TYPE",
    "TIER_CHANGED_TYPE",
    "CareActionData",
    "ClassificationChangedData",
    "ClassificationsChangedData",
    "CustomerErasedData",
    "CustomerErasedEvent",
    "CustomerEvent",
    "EmittedEvent",
    "EventType",
    "PurchaseData",
    "PurchaseEvent",
    "decode_record",
    "encode_event",
    "parse_customer_event",
]
