"""Classification-change records off `customer-classification-changed`, decoded for the
notifier.

The contract is `ClassificationChangedData` (pydantic) behind `decode_record` (the CloudEvents
binding); that path stays the reference and says why a record is poison. The common record —
standard headers, the contract's keys exactly, plain strings, an RFC 3339 time — is decoded here
with orjson and a few type checks instead, ~5x cheaper; it is accepted only where the reference
accepts it and gives the same values (tests/unit/test_notifier_change_decoding.py checks both
directions with hypothesis). Anything the fast path is not sure of goes the reference way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from tierflow_common.consumer import Record
from tierflow_common.contract import (
    CLASSIFICATIONS_CHANGED_TYPE,
    CUSTOMER_ERASED_TYPE,
    ClassificationChangedData,
    ClassificationsChangedData,
    CustomerErasedData,
    decode_record,
)
from tierflow_common.contract.kafka_binding import parse_instant, plain_event_id
from tierflow_common.exceptions import PoisonRecord
from tierflow_notifier.domain.queue import Scores


@dataclass(slots=True)
class Change:
    """One decoded change: the fields the notifier acts on."""

    event_id: str
    customer_id: str
    dimension: str
    from_label: str | None
    to_label: str
    reason: str
    explanation: dict[str, Any]
    effective_at: datetime
    # The customer's churn risk and value on the record (version 2), for the action queue.
    scores: Scores | None = None


@dataclass(frozen=True, slots=True)
class Erasure:
    """A `tierflow.customer.erased` record: erase the customer (its events dated through
    `erased_through` are the erased customer's)."""

    event_id: str
    customer_id: str
    erased_through: datetime


_KEYS = 9  # customer_id, dimension, from, to, reason, explanation, cause, effective_at,
# rule_set_version; explanation may be left out (it defaults to {})
_MAX_CUSTOMER_ID = 200  # CustomerId's max_length


def _plain_customer_id(value: object) -> bool:
    """Within CustomerId (1-200 characters, no whitespace at either end, no line break) for
    sure: printable ASCII, no space at either end. Anything else is for pydantic to judge."""
    return (
        type(value) is str
        and 0 < len(value) <= _MAX_CUSTOMER_ID
        and value.isascii()
        and value.isprintable()
        and value[0] != " "
        and value[-1] != " "
    )


def fast_change_data(event_id: str, data: object) -> Change | None:
    """`data` as `ClassificationChangedData` would validate it, or None when not plainly valid
    (pydantic decides then: it may accept what this refuses, never the other way round)."""
    if type(data) is not dict:
        return None
    try:
        customer_id = data["customer_id"]
        dimension = data["dimension"]
        from_label = data["from"]
        to_label = data["to"]
        reason = data["reason"]
        cause = data["cause"]
        at = data["effective_at"]
        version = data["rule_set_version"]
    except KeyError:
        return None
    size = len(data)
    if size == _KEYS:
        explanation = data.get("explanation")
        if type(explanation) is not dict:  # also: a ninth key that is not `explanation`
            return None
    elif size == _KEYS - 1:
        explanation = {}
    else:
        return None
    if not (
        type(dimension) is str
        and type(to_label) is str
        and type(reason) is str
        and type(cause) is str
        and type(version) is str
        and (from_label is None or type(from_label) is str)
        and type(at) is str
        and _plain_customer_id(customer_id)
    ):
        return None
    effective_at = parse_instant(at)
    if effective_at is None:
        return None
    return Change(
        event_id=event_id,
        customer_id=customer_id,
        dimension=dimension,
        from_label=from_label,
        to_label=to_label,
        reason=reason,
        explanation=explanation,
        effective_at=effective_at,
    )


_Model = TypeVar("_Model", bound=BaseModel)


def _validated(record: Record, model: type[_Model]) -> tuple[str, _Model]:
    """(ce_id, data as `model`) through the CloudEvents binding and pydantic; PoisonRecord
    naming the field and the reason otherwise."""
    attrs = decode_record(record.key, record.value, record.headers)
    event_id = attrs.get("id")
    # The SDK makes up a random id for a record without one: the action ids derive from it,
    # so a redelivered copy would create its actions again. No ce_id header: poison.
    stated = any(name == "ce_id" and raw for name, raw in record.headers or ())
    if not stated or not isinstance(event_id, str) or not event_id:
        raise PoisonRecord("missing ce_id", field="headers.ce_id")
    try:
        return event_id, model.model_validate(attrs["data"])
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field_ = "data." + ".".join(str(p) for p in first["loc"])
        raise PoisonRecord(f"{field_}: {first['msg']}", field=field_) from exc


def decode_change_reference(record: Record) -> Change:
    """Through the CloudEvents binding and the pydantic contract: the reference, and the only
    path that explains a poison record (PoisonRecord with the field and the reason)."""
    event_id, data = _validated(record, ClassificationChangedData)
    return Change(
        event_id=event_id,
        customer_id=data.customer_id,
        dimension=data.dimension,
        from_label=data.from_label,
        to_label=data.to_label,
        reason=data.reason,
        explanation=data.explanation,
        effective_at=data.effective_at,
    )


def decode_change(record: Record) -> Change:
    """The record's change; raises PoisonRecord (field, reason) for what cannot be one."""
    value = record.value
    event_id = plain_event_id(record.headers) if value is not None else None
    if value is not None and event_id is not None:
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            data = None
        fast = fast_change_data(event_id, data)
        if fast is not None:
            return fast
    return decode_change_reference(record)


# --- version 2: one record per customer and cause, holding every dimension it changed ------

_V2_TYPE = CLASSIFICATIONS_CHANGED_TYPE.encode()
_V2_KEYS = frozenset({"customer_id", "cause", "effective_at", "changes"})
_V2_ITEM_KEYS = frozenset({"change_id", "dimension", "from", "to", "reason", "rule_set_version"})


def _record_type(record: Record) -> bytes | None:
    for name, value in record.headers or ():
        if name == "ce_type":
            return bytes(value)
    return None


_ERASED_TYPE = CUSTOMER_ERASED_TYPE.encode()


def decode_changes(record: Record) -> list[Change] | Erasure:
    """The changes of a record of either version of `customer-classification-changed`: one
    for version 1, all of its changes for version 2 (each with its own change id, which the
    care actions it triggers derive from, as version 1's record id); or the erasure a
    `tierflow.customer.erased` record asks for. PoisonRecord as for `decode_change`."""
    kind = _record_type(record)
    if kind == _ERASED_TYPE:
        return decode_erasure(record)
    if kind != _V2_TYPE:
        return [decode_change(record)]
    value = record.value
    if value is not None and plain_event_id(record.headers) is not None:
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            data = None
        fast = _fast_v2(data)
        if fast is not None:
            return fast
    return decode_changes_reference(record)


def _fast_v2(data: object) -> list[Change] | None:
    """Version 2's data as ClassificationsChangedData would validate it, each change through
    `fast_change_data`; None when anything is not plainly valid (pydantic decides then)."""
    if type(data) is not dict or not (_V2_KEYS <= data.keys() <= _V2_KEYS | {"scores"}):
        return None
    scores: Scores | None = None
    raw_scores = data.get("scores")
    if raw_scores is not None:
        scores = _fast_scores(raw_scores)
        if scores is None:
            return None
    items = data["changes"]
    if type(items) is not list or not items:
        return None
    out: list[Change] = []
    for item in items:
        if type(item) is not dict or not (
            _V2_ITEM_KEYS <= item.keys() <= _V2_ITEM_KEYS | {"explanation"}
        ):
            return None
        change_id = item["change_id"]
        if type(change_id) is not str or not change_id:
            return None
        v1 = {k: v for k, v in item.items() if k != "change_id"}
        v1["customer_id"] = data["customer_id"]
        v1["cause"] = data["cause"]
        v1["effective_at"] = data["effective_at"]
        change = fast_change_data(change_id, v1)
        if change is None:
            return None
        change.scores = scores
        out.append(change)
    return out


_SCORE_KEYS = frozenset({"churn_probability", "clv", "value_at_risk"})


def _plain_number(value: object) -> bool:
    return value is None or (type(value) is float and math.isfinite(value))


def _fast_scores(data: object) -> Scores | None:
    """`scores` as ChangeScores would validate it, for sure (finite floats or nulls, the
    probability within 0..1, no other key), or None (pydantic decides then)."""
    if type(data) is not dict or not data.keys() <= _SCORE_KEYS:
        return None
    p, clv, risk = data.get("churn_probability"), data.get("clv"), data.get("value_at_risk")
    if not (_plain_number(p) and _plain_number(clv) and _plain_number(risk)):
        return None
    if p is not None and not 0.0 <= p <= 1.0:
        return None
    return Scores.of(p, clv, risk) or Scores()


def decode_changes_reference(record: Record) -> list[Change]:
    """Version 2 through the CloudEvents binding and the pydantic contract (the reference)."""
    _, data = _validated(record, ClassificationsChangedData)
    s = data.scores
    scores = None if s is None else Scores.of(s.churn_probability, s.clv, s.value_at_risk)
    if s is not None and scores is None:
        scores = Scores()
    return [
        Change(
            event_id=change_id,
            customer_id=c.customer_id,
            dimension=c.dimension,
            from_label=c.from_label,
            to_label=c.to_label,
            reason=c.reason,
            explanation=c.explanation,
            effective_at=c.effective_at,
            scores=scores,
        )
        for change_id, c in data.dimension_changes()
    ]


def decode_erasure(record: Record) -> Erasure:
    """A `tierflow.customer.erased` record through the binding and the contract (rare: no
    fast path)."""
    event_id, data = _validated(record, CustomerErasedData)
    return Erasure(event_id, data.customer_id, data.erased_through)
