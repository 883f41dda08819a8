"""Pure validation of incoming events: every rejection names the field and the reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from tierflow_common.contract import CustomerEvent, parse_customer_event
from tierflow_common.contract.attributes import MAX_EXTENSIONS, too_many_extensions
from tierflow_common.contract.events import EVENT_TYPES

KNOWN_TYPES = EVENT_TYPES
# The same item validator as `parse_customer_event`, applied to a whole batch in one call.
_BATCH: TypeAdapter[list[CustomerEvent]] = TypeAdapter(list[CustomerEvent])


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str
    code: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason, "code": self.code}


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(body)"


def _without_tag(loc: tuple[int | str, ...], tag: object) -> tuple[int | str, ...]:
    # Discriminated-union errors start with the tag ("purchase", "data", ...): users know no tag.
    return loc[1:] if loc and loc[0] == tag else loc


def _field_error(err: ErrorDetails, tag: object) -> FieldError:
    return FieldError(_path(_without_tag(tuple(err["loc"]), tag)), err["msg"], err["type"])


def validate_event(
    obj: Any, *, now: datetime, max_future_skew: timedelta, min_year: int = 1970
) -> CustomerEvent | list[FieldError]:
    """Return the parsed event, or the list of what is wrong with it."""
    if not isinstance(obj, dict):
        return [FieldError("(body)", "an event must be a JSON object", "type_error")]
    event_type = obj.get("type")
    if event_type not in KNOWN_TYPES:
        if event_type is None:
            reason, code = "required: the event type, one of", "missing"
        elif isinstance(event_type, str):
            reason, code = f"unknown event type {event_type!r}; expected one of", "unknown_type"
        else:
            reason, code = "the event type is a string, one of", "string_type"
        return [FieldError("type", f"{reason} {', '.join(KNOWN_TYPES)}", code)]
    try:
        event = parse_customer_event(obj)
    except ValidationError as exc:
        return [_field_error(err, event_type) for err in exc.errors(include_url=False)]
    return check_time(event, now=now, max_future_skew=max_future_skew, min_year=min_year)


def check_time(
    event: CustomerEvent, *, now: datetime, max_future_skew: timedelta, min_year: int = 1970
) -> CustomerEvent | list[FieldError]:
    """A valid event's time must be neither too far ahead of `now` nor before `min_year`; and
    it carries at most MAX_EXTENSIONS extension attributes (counted here, on the path every
    event takes, so the contract runs no code for an event without extensions)."""
    over = too_many_extensions(event.__pydantic_extra__)
    if over is not None:
        return [
            FieldError(
                over,
                f"more than {MAX_EXTENSIONS} extension attributes (tierflow's limit)",
                "too_many_extensions",
            )
        ]
    if event.time > now + max_future_skew:
        return [
            FieldError(
                "time",
                f"event time {event.time.isoformat()} is more than "
                f"{max_future_skew.total_seconds():.0f}s in the future",
                "time_in_future",
            )
        ]
    if event.time.year < min_year:
        return [
            FieldError(
                "time",
                f"event time {event.time.isoformat()} is before {min_year}",
                "time_too_old",
            )
        ]
    return event


def validate_events(
    objs: list[Any], *, now: datetime, max_future_skew: timedelta, min_year: int = 1970
) -> list[CustomerEvent | list[FieldError]]:
    """`validate_event` of each item, in order (the same results, a test checks).

    The common batch, every item a valid event, is validated in one call; a batch with any
    invalid item is validated again item by item, so each rejection is reported exactly as
    `validate_event` reports it.
    """
    try:
        events = _BATCH.validate_python(objs)
    except ValidationError:
        return [
            validate_event(obj, now=now, max_future_skew=max_future_skew, min_year=min_year)
            for obj in objs
        ]
    return [
        check_time(event, now=now, max_future_skew=max_future_skew, min_year=min_year)
        for event in events
    ]
