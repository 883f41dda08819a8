"""The notifier's fast decoding of classification changes agrees with the reference path (the
CloudEvents binding and the pydantic contract): whatever it accepts, the reference accepts with
the same values; whatever it is not sure of goes the reference way, so poison is reported with
the same field and reason. And a batch of changes that trigger nothing touches no table."""

from __future__ import annotations

import string
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.support import ROOT
from tierflow_common.consumer import Record
from tierflow_common.contract import (
    CLASSIFICATION_CHANGED_TYPE,
    CLASSIFICATIONS_CHANGED_TYPE,
    CUSTOMER_ERASED_TYPE,
    ClassificationChangedData,
    EmittedEvent,
    decode_record,
    encode_event,
)
from tierflow_common.contract.kafka_binding import (
    encode_event_with_sdk,
    parse_instant,
    plain_event_id,
)
from tierflow_common.exceptions import PoisonRecord
from tierflow_notifier.adapters.changes import (
    Erasure,
    _fast_v2,
    decode_change,
    decode_change_reference,
    decode_changes,
    decode_changes_reference,
    fast_change_data,
)
from tierflow_notifier.adapters.playbooks_file import load_playbook
from tierflow_notifier.domain.queue import Scores
from tierflow_notifier.service_layer.actions import ActionWriter
from tierflow_notifier.service_layer.handler import NotifierHandler, label_dimensions

AT = datetime(2026, 12, 1, 7, 46, 48, 514510, tzinfo=UTC)


def change_data(**overrides: Any) -> dict[str, Any]:
    """What the classifier publishes: the contract model dumped to JSON by alias."""
    data = ClassificationChangedData(
        customer_id="c-1",
        dimension="value_tier",
        from_label=None,
        to_label="regular",
        reason="purchases_lifetime >= 1  [purchases_lifetime=1]",
        explanation={"expression": "purchases_lifetime >= 1", "inputs": {"x": 1.0}},
        cause="event:shop/o-1",
        effective_at=AT,
        rule_set_version="2026.11-dimensions.1",
    ).model_dump(mode="json", by_alias=True)
    data.update(overrides)
    return data


def record(
    data: Any,
    *,
    headers: list[tuple[str, bytes]] | None = None,
    value: bytes | None = None,
    type_: str = CLASSIFICATION_CHANGED_TYPE,
) -> Record:
    event = EmittedEvent(
        id="6f77a5b3-459b-5a2e-99f7-465cf68b605d",
        type=type_,
        source="tierflow/classifier",
        subject="c-1",
        time=AT,
        data={},
    )
    encoded = encode_event(event)
    raw = orjson.dumps(data) if value is None else value
    hs = encoded.headers if headers is None else headers
    return ConsumerRecord(
        "changes", 0, 0, 0, 0, encoded.key, raw, None, len(encoded.key), len(raw), tuple(hs)
    )


def reference(data: Any) -> ClassificationChangedData | None:
    try:
        return ClassificationChangedData.model_validate(data)
    except ValidationError:
        return None


def assert_same(fast: Any, ref: ClassificationChangedData) -> None:
    assert fast.customer_id == ref.customer_id
    assert fast.dimension == ref.dimension
    assert fast.from_label == ref.from_label
    assert fast.to_label == ref.to_label
    assert fast.reason == ref.reason
    assert fast.explanation == ref.explanation
    assert fast.effective_at == ref.effective_at
    assert fast.effective_at.utcoffset() == ref.effective_at.utcoffset()


# --- the data: never accepted where pydantic refuses, same values where both accept --------

texts = st.text(st.characters(codec="utf-8"), max_size=30)
ints = st.integers(-(2**63), 2**63 - 1)  # what JSON (orjson) carries
ids = st.one_of(
    st.text(string.printable, max_size=210),
    st.text(st.characters(codec="utf-8"), max_size=210),
    st.just(""),
    st.just(" c-1"),
    st.just("c-1 "),
    st.just("c\n1"),
    st.just("c\x1f1"),
    st.just("x" * 201),
)
instants = st.one_of(
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,7})?"
        r"(Z|z|[+-][0-9]{2}:[0-9]{2})?",
        fullmatch=True,
    ),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # naive: pydantic takes it, we defer
    texts,
    ints,
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
field_values = {
    "customer_id": ids | json_values,
    "dimension": texts | json_values,
    "from": st.none() | texts | json_values,
    "to": texts | json_values,
    "reason": texts | json_values,
    "explanation": st.dictionaries(texts, json_values, max_size=3) | json_values,
    "cause": texts | json_values,
    "effective_at": instants | json_values,
    "rule_set_version": texts | json_values,
    "from_label": texts,  # populate_by_name: pydantic also takes the field names
    "to_label": texts,
    "extra": texts,
}


@st.composite
def change_dicts(draw: st.DrawFn) -> dict[str, Any]:
    data = change_data()
    for name in draw(st.sets(st.sampled_from(sorted(field_values)), max_size=4)):
        data[name] = draw(field_values[name])
    for name in draw(st.sets(st.sampled_from(sorted(data)), max_size=2)):
        del data[name]
    return data


@given(change_dicts())
@example(change_data(effective_at="2026-13-01T00:00:00Z"))
@example(change_data(effective_at="2026-01-01T24:00:00Z"))
@example(change_data(effective_at="2026-01-01T00:00:00.1234567Z"))
@example(change_data(effective_at="2026-01-01T00:00:00+23:59"))
@example(change_data(explanation=None))
def test_fast_data_is_accepted_only_where_pydantic_accepts_it_and_alike(
    data: dict[str, Any],
) -> None:
    fast = fast_change_data("id-1", data)
    ref = reference(data)
    if fast is not None:
        assert ref is not None, data
        assert_same(fast, ref)


@given(
    customer_id=st.text(string.ascii_letters + string.digits + "-_.:@/ ", min_size=1, max_size=200)
    .map(str.strip)
    .filter(bool),
    from_label=st.none() | st.text(max_size=20),
    at=st.datetimes(
        min_value=datetime(1, 1, 2),  # hypothesis takes naive bounds
        timezones=st.timezones(),
    ),
    explanation=st.dictionaries(texts, json_values, max_size=3),
)
def test_what_the_classifier_publishes_takes_the_fast_path(
    customer_id: str, from_label: str | None, at: datetime, explanation: dict[str, Any]
) -> None:
    data = change_data(
        customer_id=customer_id,
        **{"from": from_label},
        effective_at=ClassificationChangedData(
            customer_id="c",
            dimension="d",
            from_label=None,
            to_label="t",
            reason="r",
            cause="c",
            effective_at=at,
            rule_set_version="v",
        ).model_dump(mode="json")["effective_at"],
        explanation=explanation,
    )
    data = orjson.loads(orjson.dumps(data))  # as it arrives
    fast = fast_change_data("id-1", data)
    ref = reference(data)
    assert ref is not None
    assert fast is not None, data
    assert_same(fast, ref)


def test_explanation_may_be_left_out_as_the_contract_allows() -> None:
    data = change_data()
    del data["explanation"]
    fast = fast_change_data("id-1", data)
    assert fast is not None
    assert fast.explanation == {}


# --- the headers: plain_event_id speaks only for records decode_record takes, with their id -


STANDARD_NAMES = ["ce_id", "ce_source", "ce_specversion", "ce_subject", "ce_time", "ce_type"]
header_names = st.sampled_from([*STANDARD_NAMES, "content-type", "ce_traceparent", "CE_ID", "x"])
header_values = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"", b"1.0", b"0.3", b"\xff", "é".encode()]),
    instants.map(lambda v: str(v).encode()),
)
standard = encode_event(
    EmittedEvent(id="e-1", type="t", source="s", subject="c", time=AT, data={})
).headers


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    headers = list(standard)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "add", "drop"]))
        if op == "drop" and headers:
            headers.pop(draw(st.integers(0, len(headers) - 1)))
        elif op == "add":
            headers.append((draw(header_names), draw(header_values)))
        elif headers:
            i = draw(st.integers(0, len(headers) - 1))
            headers[i] = (headers[i][0], draw(header_values))
    return headers


@given(header_lists())
@example([*standard[:4], ("ce_time", b"2026-13-01T00:00:00Z"), *standard[5:]])
@example([*standard, ("ce_id", b"other")])
def test_plain_event_id_speaks_only_for_records_decode_record_takes(
    headers: list[tuple[str, bytes]],
) -> None:
    event_id = plain_event_id(headers)
    if event_id is None:
        return
    attrs = decode_record(b"c", b"{}", headers)
    assert attrs["id"] == event_id


def test_both_encodings_of_an_event_have_plain_headers() -> None:
    event = EmittedEvent(id="e-1", type="t", source="s", subject="c", time=AT, data={"a": 1})
    assert plain_event_id(encode_event(event).headers) == "e-1"
    assert plain_event_id(encode_event_with_sdk(event).headers) == "e-1"


def test_a_shapely_time_that_is_no_instant_is_poison_not_an_error() -> None:
    headers = [(k, b"2026-13-01T00:00:00Z" if k == "ce_time" else v) for k, v in standard]
    assert parse_instant("2026-13-01T00:00:00Z") is None
    with pytest.raises(PoisonRecord) as info:
        decode_record(b"c", b"{}", headers)
    assert info.value.field == "headers"


# --- whole records: the same change, or the same poison -------------------------------------


def outcome(decode: Any, rec: Record) -> Any:
    try:
        change = decode(rec)
    except PoisonRecord as exc:
        return ("poison", exc.field, exc.reason)
    return ("change", change)


@given(change_dicts(), st.one_of(st.none(), header_lists()))
@example(change_data(), None)
@example({}, None)
def test_decode_change_gives_what_the_reference_gives(
    data: dict[str, Any], headers: list[tuple[str, bytes]] | None
) -> None:
    rec = record(data, headers=headers)
    assert outcome(decode_change, rec) == outcome(decode_change_reference, rec)


@pytest.mark.parametrize("value", [None, b"", b"not json", b"[]", b"null"])
def test_undecodable_values_are_the_same_poison(value: bytes | None) -> None:
    rec = record({}, value=value or b"")
    if value is None:
        rec = ConsumerRecord("changes", 0, 0, 0, 0, b"c", None, None, 1, 0, rec.headers)
    fast, ref = outcome(decode_change, rec), outcome(decode_change_reference, rec)
    assert fast == ref
    assert fast[0] == "poison"
    assert fast[1]  # the field is named


def test_a_change_without_ce_id_is_poison_not_given_a_random_id() -> None:
    # The SDK would make one up, and every redelivered copy would create its actions anew.
    headers = [(k, v) for k, v in standard if k != "ce_id"]
    for decode in (decode_change, decode_change_reference):
        with pytest.raises(PoisonRecord) as info:
            decode(record(change_data(), headers=headers))
        assert info.value.field == "headers.ce_id"


# --- the handler: changes that trigger nothing are nearly free ------------------------------

PLAYBOOK = load_playbook(ROOT / "config" / "notifier.yaml")


class NoDatabase:
    """Fails the test if the handler touches the database."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the handler used the connection ({name})")


def test_labels_kept_are_the_tier_and_what_cadences_follow() -> None:
    # value_tier: the VIP / important cadences; care_contact: the at-risk revisit cadence.
    assert label_dimensions(PLAYBOOK) == {"value_tier", "care_contact"}


async def test_a_batch_that_triggers_nothing_writes_nothing_but_dead_letters_poison() -> None:
    handler = NotifierHandler(
        playbook=PLAYBOOK,
        writer=ActionWriter(playbook=PLAYBOOK, care_actions_topic="care-actions", endpoints=[]),
        clock=lambda: AT,
    )
    quiet = [
        record(change_data(dimension="lifecycle", to="new")),
        record(change_data(dimension="behaviour", to="low_frequency")),
        record(change_data(dimension="needs", to="product_focused")),
    ]
    poison = record(change_data(dimension="needs", effective_at="soon"))
    outcome = await handler(NoDatabase(), [*quiet, poison])  # type: ignore[arg-type]
    assert outcome.emit == []
    assert [(d.field, d.record) for d in outcome.dead] == [("data.effective_at", poison)]
    assert outcome.dead[0].reason.startswith("data.effective_at: ")
    assert (handler.enqueued, handler.delivering, handler.earliest_due) == (True, False, None)


# --- contract version 2: one record per customer and cause ----------------------------------


def v2_data(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A version-2 record's data made of version-1 change dicts (their shared fields taken
    from the first), as the classifier's change_records builds it."""
    first = items[0] if items else change_data()
    return {
        "customer_id": first.get("customer_id", "c-1"),
        "cause": first.get("cause", "event:shop/o-1"),
        "effective_at": first.get("effective_at", "2026-12-01T07:46:48.514510Z"),
        "changes": [
            {
                "change_id": f"chg-{i}",
                **{
                    k: v
                    for k, v in item.items()
                    if k not in ("customer_id", "cause", "effective_at")
                },
            }
            for i, item in enumerate(items)
        ],
    }


def v2_record(data: Any) -> Record:
    return record(data, type_=CLASSIFICATIONS_CHANGED_TYPE)


@given(st.lists(change_dicts(), min_size=0, max_size=4))
@example([change_data(), change_data(dimension="lifecycle", to="new")])
@example([])
def test_version_2_records_decode_as_the_reference_decodes_them(
    items: list[dict[str, Any]],
) -> None:
    rec = v2_record(v2_data(items))
    assert outcome(decode_changes, rec) == outcome(decode_changes_reference, rec)


def test_a_version_2_record_gives_each_of_its_changes_with_its_own_id() -> None:
    data = v2_data([change_data(), change_data(dimension="lifecycle", to="new", reason="x")])
    changes = decode_changes(v2_record(data))
    assert isinstance(changes, list)
    assert [(c.event_id, c.dimension, c.to_label) for c in changes] == [
        ("chg-0", "value_tier", "regular"),
        ("chg-1", "lifecycle", "new"),
    ]
    assert changes == decode_changes_reference(v2_record(data))
    # A version-1 record is one change, as before.
    assert decode_changes(record(change_data())) == [decode_change(record(change_data()))]


def test_a_version_2_record_without_changes_is_poison_naming_the_field() -> None:
    with pytest.raises(PoisonRecord) as caught:
        decode_changes(v2_record(v2_data([])))
    assert caught.value.field == "data.changes"


def test_an_erasure_record_decodes_as_an_erasure_and_a_broken_one_is_poison() -> None:
    data = {
        "customer_id": "c-1",
        "cause": "api",
        "erased_through": "2026-01-02T03:04:05Z",
        "erased_at": "2026-01-02T03:04:06Z",
    }
    got = decode_changes(record(data, type_=CUSTOMER_ERASED_TYPE))
    assert got == Erasure(
        "6f77a5b3-459b-5a2e-99f7-465cf68b605d", "c-1", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    with pytest.raises(PoisonRecord) as caught:
        decode_changes(record({**data, "customer_id": ""}, type_=CUSTOMER_ERASED_TYPE))
    assert caught.value.field == "data.customer_id"


score_values = (
    st.none()
    | st.floats(allow_nan=True, allow_infinity=False)
    | st.integers(-2, 2)
    | st.just("0.5")
)
scores_dicts = st.none() | st.dictionaries(
    st.sampled_from(["churn_probability", "clv", "value_at_risk", "other"]), score_values
)


@given(st.lists(change_dicts(), min_size=1, max_size=3), scores_dicts)
@example([change_data()], {"churn_probability": 0.25, "clv": 400.0, "value_at_risk": 100.0})
@example([change_data()], {"churn_probability": 1.5})
def test_the_scores_of_a_version_2_record_decode_as_the_reference_decodes_them(
    items: list[dict[str, Any]], scores: dict[str, Any] | None
) -> None:
    data = {**v2_data(items), "scores": scores}
    if any(isinstance(v, float) and v != v for v in (scores or {}).values()):
        return  # NaN is no JSON: no producer can write it
    rec = v2_record(data)
    assert outcome(decode_changes, rec) == outcome(decode_changes_reference, rec)


def test_each_change_of_a_version_2_record_carries_the_records_scores() -> None:
    data = {
        **v2_data([change_data(), change_data(dimension="lifecycle", to="new")]),
        "scores": {"churn_probability": 0.25, "clv": 400.0, "value_at_risk": 100.0},
    }
    changes = decode_changes(v2_record(data))
    assert isinstance(changes, list)
    assert {c.scores for c in changes} == {Scores(0.25, 400.0, 100.0)}


@given(
    st.floats(0.0, 1.0),
    st.floats(0.0, 1e7, allow_nan=False),
    st.sampled_from([None, "clv-unknown"]),
)
def test_scores_as_the_classifier_writes_them_take_the_fast_path(
    probability: float, clv: float, variant: str | None
) -> None:
    scores: dict[str, Any] = {
        "churn_probability": probability,
        "clv": clv,
        "value_at_risk": clv * probability,
    }
    if variant:
        scores["clv"] = None
    data = orjson.loads(orjson.dumps({**v2_data([change_data()]), "scores": scores}))
    fast = _fast_v2(data)
    assert fast is not None, data
    assert fast == decode_changes_reference(v2_record(data))
    assert fast[0].scores == Scores(probability, scores["clv"], scores["value_at_risk"])
